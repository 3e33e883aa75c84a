"""Units in worker processes (``run.workers``): a `concurrent.futures.ProcessPoolExecutor` with the
``spawn`` start method, each worker a fresh Python with its own single-threaded XLA.

Why: on the 2-core CPU one XLA process barely uses the second core, while two single-threaded
processes, one member each, did 10 ResNet-10-1 members in 0.78x the time of one process with both
cores (benchmarks/ensemble_members.py measures it: the ``workers`` mode). A unit's work does not
change: the same program runs with one thread instead of two.

The pool knows nothing about protocols: `submit` runs any picklable function in a worker. The data a
task needs is staged once per dataset as an ``.npz`` in a temporary folder (`stage`), which each worker
loads once (`load_data`, no pickles). Workers record their units into the output folder themselves
(the store is safe for several processes, see store.py), so a run resumes as before. Each worker
dies with its parent (``PR_SET_PDEATHSIG``): a SIGKILL of the command leaves no orphan training; a
Ctrl-C stops the parent, which terminates them (units in flight are lost, finished ones recorded).

This module imports no jax: a worker sets its XLA flags before jax starts (`_initialize`).
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import tempfile

import numpy as np

SINGLE_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
_FIELDS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_DATA: dict = {}  # in a worker: staged path -> Dataset


def worker_count(requested: int) -> int:
    """``run.workers``: 0 = one per core, else the number asked for (1 = in this process)."""
    return (os.cpu_count() or 1) if requested == 0 else max(1, int(requested))


def _initialize() -> None:
    """In each worker, before anything imports jax's backend: die with the parent, leave Ctrl-C to
    it, one XLA device with one thread, the shared compilation cache."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent terminates its workers on exit
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_FLAG)]
    os.environ["XLA_FLAGS"] = " ".join([*flags, *SINGLE_THREAD_FLAGS])
    from ntk_vs_nn.engine.host import enable_compile_cache

    enable_compile_cache()


def load_data(path: str):
    """The `Dataset` staged at ``path`` by `Pool.stage` (loaded once per worker)."""
    if path not in _DATA:
        from ntk_vs_nn.data import Dataset

        with np.load(path, allow_pickle=False) as z:
            got = z["pixels"] if "pixels" in z.files else np.zeros(0)
            pixels = tuple(float(v) for v in got) if got.size else None
            _DATA[path] = Dataset(str(z["name"]), *(z[k] for k in _FIELDS), int(z["num_classes"]), pixels)
    return _DATA[path]


class Pool:
    """N spawned worker processes; a context manager that shuts them down (terminates them if the
    block raised, e.g. on Ctrl-C)."""

    def __init__(self, n: int):
        self.n = n
        self._ex = cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_initialize)
        self._dir = tempfile.mkdtemp(prefix="ntk_vs_nn-data-")
        self._staged: dict[int, tuple[object, str]] = {}

    def stage(self, data) -> str:
        """The path of ``data`` (a `Dataset`) as an .npz the workers read; written once per object."""
        got = self._staged.get(id(data))
        if got is not None and got[0] is data:
            return got[1]
        path = os.path.join(self._dir, f"data-{len(self._staged)}.npz")
        arrays = {k: getattr(data, k) for k in _FIELDS}
        pixels = np.asarray(data.pixels if data.pixels is not None else [], np.float64)
        np.savez(path, name=np.asarray(data.name), num_classes=np.asarray(data.num_classes), pixels=pixels, **arrays)
        self._staged[id(data)] = (data, path)  # the reference keeps id() unique while staged
        return path

    def submit(self, fn, *args) -> cf.Future:
        return self._ex.submit(fn, *args)

    def close(self, terminate: bool = False) -> None:
        if terminate:  # Ctrl-C or an error: stop the units in flight now
            for p in list(getattr(self._ex, "_processes", {}).values()):
                p.terminate()
        self._ex.shutdown(wait=not terminate, cancel_futures=True)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(terminate=exc_type is not None)
        return False


def results(futures) -> list:
    """Every future's result, in order; a worker that died (killed, out of memory) is one
    `UserError` line saying the finished units are recorded."""
    from ntk_vs_nn.config import UserError

    try:
        return [f.result() for f in futures]
    except cf.process.BrokenProcessPool:
        raise UserError(
            "a worker process died (killed or out of memory); finished units are recorded, "
            "rerun the same command to resume (or set run.workers=1)"
        ) from None

"""Where the rows of a table run: ``--executor local`` (default) or ``--executor ray``.

A table is a grid of independent rows, one per (model, family); each row is
`protocols.run_row`, which trains the row's missing units and appends one record per finished unit
to the output folder's store (store.py). The store is the only thing rows share, and it is safe
for several processes: appends hold an exclusive ``fcntl`` lock and are fsynced, predictions and
checkpoints are written under per-process temporary names and renamed into place.

local  the rows one after another in this process.
ray    one Ray task per row on a local Ray instance or an existing cluster (``--ray-address`` or
       ``RAY_ADDRESS``; ``auto`` joins the cluster started on this machine by ``ray start``). A
       task whose worker process dies (killed, out of memory, a lost node) is retried up to
       ``--ray-max-retries`` times; the retry resumes from the store, so units recorded before the
       crash are loaded, never trained again. An error inside a row (bad input, a bug) is not
       retried and stops the command with its message. Every node must see the output folder at
       the same path (a shared filesystem on a multi-node cluster).

Ray is an optional extra (``pip install -e .[ray]``); without it ``--executor ray`` is one error
line and exit code 2.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Callable

from ntk_vs_nn.config import UserError
from ntk_vs_nn.engine.host import enable_compile_cache
from ntk_vs_nn.logs import to_stderr
from ntk_vs_nn.protocols import run_row
from ntk_vs_nn.store import Store

EXECUTORS = ("local", "ray")


def import_ray():
    """The ray module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install -e '.[ray]' (or: pip install ray)") from None
    return ray


def run_rows(
    rows: list[tuple[str, str]],
    cfg,
    data,
    out: str,
    log: Callable[[str], None] = lambda s: None,
    executor: str = "local",
    ray_address: str | None = None,
    max_retries: int = 3,
    cpus_per_task: float = 1.0,
    row_fn: Callable | None = None,
    pool=None,
) -> None:
    """Run ``row_fn(family, model, cfg, data, store, log)`` (default `protocols.run_row`) for
    every ``(family, model)`` of ``rows``, all appending to the store in ``out``; ``pool``: the
    `workers.Pool` the local rows train their units in (``run.workers``)."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if executor == "ray":
        return _run_ray(rows, cfg, data, out, log, ray_address, max_retries, cpus_per_task, row_fn)
    row_fn = row_fn or run_row
    store = Store(out)
    for family, model in rows:
        row_fn(family, model, cfg, data, store, log, **({"pool": pool} if pool is not None else {}))


def _task(family, model, cfg, data, out, row_fn):
    """One row inside a Ray worker: its own store handle and provenance (host, device)."""
    log = to_stderr()  # Ray forwards the worker's stderr to the driver
    enable_compile_cache()
    (row_fn or run_row)(family, model, cfg, data, Store(out), log)  # the worker's own provenance
    return family, model


def _run_ray(rows, cfg, data, out, log, address, max_retries, cpus_per_task, row_fn):
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kw = {} if address else {"include_dashboard": False}
        try:
            with warnings.catch_warnings():  # jax warns about any fork; Ray's fork is an exec of its daemons
                warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
                ray.init(address=address, log_to_driver=True, logging_level="ERROR", **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot reach the Ray cluster at {address!r}: {str(e).splitlines()[0]}") from None
        started = True
    try:
        out_abs = os.path.abspath(out)
        data_ref = ray.put(data)  # one copy in the object store, shared by every task on a node
        task = ray.remote(max_retries=max_retries, retry_exceptions=False, num_cpus=cpus_per_task)(_task)
        pending = {task.options(name=f"{f} {m}").remote(f, m, cfg, data_ref, out_abs, row_fn): (f, m) for f, m in rows}
        log(f"ray: {len(pending)} row(s) as tasks on {ray.cluster_resources().get('CPU', 0):g} CPU(s)")
        t0 = time.perf_counter()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            family, model = pending.pop(done[0])
            try:
                ray.get(done[0])
            except ray.exceptions.RayError as e:
                for ref in pending:
                    ray.cancel(ref, force=True)
                cause = getattr(e, "cause", None)
                if isinstance(cause, UserError):
                    raise UserError(str(cause)) from None
                if isinstance(e, ray.exceptions.RayTaskError):
                    raise  # a bug inside the row: its traceback
                raise UserError(  # the worker died on every try (killed, out of memory, node lost)
                    f"row [{family} {model}] failed {max_retries + 1} time(s): {type(e).__name__}; "
                    "finished units are recorded, rerun the same command to resume"
                ) from None
            log(f"ray: row [{family} {model}] done ({time.perf_counter() - t0:.1f} s)")
    finally:
        if started:
            ray.shutdown()

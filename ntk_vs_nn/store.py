"""The append-only results store of one output folder.

``OUT/records.jsonl`` gets one JSON line per finished unit of work (a member, an ensemble, a
train-sum model, a student); tables and messages are derived from these lines only. A unit's
predictions (train / val / test logits) go to ``OUT/units/<config_hash>/<family>/<model>/`` as a
.npz written to a temporary name and renamed, *before* its record is appended, so a record always
points at complete predictions and a rerun of the same command skips finished units. Appends hold
an exclusive `fcntl` lock and are fsynced: concurrent writers never interleave lines.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import threading
from importlib import metadata

import numpy as np

from ntk_vs_nn.config import UserError
from ntk_vs_nn.logs import LOG

_SAFE = re.compile(r"[^A-Za-z0-9._-]")

# Set by the command line's SIGINT handler. Ctrl-C normally raises KeyboardInterrupt at once, but
# library code that catches BaseException could swallow it; the store raises it again after the next
# record, so an interrupted run still stops at a unit boundary (a defence, not an observed failure).
INTERRUPTED = threading.Event()


def _safe(part) -> str:
    return _SAFE.sub("_", str(part))


def _is_writer() -> bool:
    """False on processes other than 0 of a multi-host run (`sharding.maybe_initialize_distributed`):
    every process trains its share of the members, process 0 alone writes the store."""
    if not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    import jax

    return jax.process_index() == 0


class Store:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, "records.jsonl")
        self.writer = _is_writer()
        self._prov = None

    @staticmethod
    def prepare(out_dir: str) -> "Store":
        """Create ``out_dir`` (or fail with a UserError if it cannot be written)."""
        try:
            os.makedirs(out_dir, exist_ok=True)
            probe = os.path.join(out_dir, f".write-probe-{os.getpid()}")
            with open(probe, "w") as f:
                f.write("")
            os.remove(probe)
        except OSError as e:
            raise UserError(f"output folder {out_dir!r} is not writable ({e.strerror})") from None
        return Store(out_dir)

    @property
    def provenance(self) -> dict:
        """`provenance()` of this process, computed once per store handle."""
        if self._prov is None:
            self._prov = provenance()
        return self._prov

    def record(self, record: dict) -> dict:
        """Append ``record`` (which names its ``unit`` and ``config_hash``) with the date and this
        process's provenance; return it as stored."""
        rec = {**record, "date": now(), **self.provenance}
        self.append(rec)
        return rec

    def done(self, hashes) -> dict[str, dict]:
        """{unit: record} of the records made under any of ``hashes`` (a config's hash and its older
        forms); a later record of a unit replaces an earlier one."""
        hashes = {hashes} if isinstance(hashes, str) else set(hashes)
        return {r["unit"]: r for r in self.records() if r.get("config_hash") in hashes}

    def records(self) -> list[dict]:
        """All well-formed records; a corrupt line (e.g. a write cut by a crash) is skipped."""
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return self._parse(f)

    def records_since(self, offset: int) -> tuple[list[dict], int]:
        """``(records, next offset)``: the well-formed records of the whole lines appended after byte
        ``offset`` (0: from the start), and where the next read starts. A last line without its newline
        (another process is writing it) is left for the next read; corrupt lines are skipped as in `records`."""
        try:
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1
        return self._parse(data[:end].splitlines()), offset + end

    def _parse(self, lines) -> list[dict]:
        """The records of ``lines`` (str or bytes), each corrupt one skipped and counted in one warning."""
        out, bad = [], 0
        for line in lines:
            try:
                rec = json.loads(line)
                if isinstance(rec, dict) and "unit" in rec:
                    out.append(rec)
                else:
                    bad += 1
            except (json.JSONDecodeError, UnicodeDecodeError):
                bad += 1
        if bad:
            LOG.warning(f"warning: {self.path}: skipped {bad} corrupt line(s)")
        return out

    def append(self, record: dict) -> None:
        if not self.writer:
            return
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0, os.SEEK_END)
                if f.tell():  # a line cut short by a crash must not swallow this record
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt

    # -- predictions of a unit -------------------------------------------------------------
    def unit_path(self, unit: str) -> str:
        return os.path.join(self.out_dir, "units", *(_safe(p) for p in unit.split("/"))) + ".npz"

    def save_predictions(self, unit: str, arrays: dict) -> None:
        if not self.writer:
            return
        path = self.unit_path(unit)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)

    def snapshot_path(self, unit: str) -> str | None:
        """Where a unit part-way through its training keeps its progress (`engine.resume`); None where
        this process does not write (a multi-host run resumes no unit part-way: its processes must agree)."""
        if not self.writer or os.environ.get("JAX_COORDINATOR_ADDRESS"):
            return None
        return self.unit_path(unit)[: -len(".npz")] + ".partial.npz"

    def checkpoint_path(self, unit: str) -> str:
        return self.unit_path(unit)[: -len(".npz")] + ".ckpt"

    def save_checkpoint(self, unit: str, params) -> None:
        """The unit's trained params as an orbax checkpoint (tensorstore arrays: no pickle)."""
        if not self.writer:
            return
        import jax
        import orbax.checkpoint as ocp

        path = os.path.abspath(self.checkpoint_path(unit))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Our own temporary folder per process, renamed into place: two runs writing the same
        # unit never share a folder orbax is writing (a shared path hung a concurrent test in CI).
        tmp = f"{path}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        kw = {}
        if os.environ.get("JAX_COORDINATOR_ADDRESS"):  # multi-host: process 0 saves alone, no global barrier
            kw["multiprocessing_options"] = ocp.options.MultiprocessingOptions(primary_host=0, active_processes={0})
            params = jax.tree.map(np.asarray, params)
        with ocp.StandardCheckpointer(**kw) as ckpt:
            ckpt.save(tmp, params)
        try:
            os.rename(tmp, path)
        except OSError:  # an older checkpoint (or another writer's) is there: replace it
            aside = f"{path}.old-{os.getpid()}"
            try:
                os.rename(path, aside)
                os.rename(tmp, path)
            except OSError:
                pass  # another writer won the race: same unit, same params
            shutil.rmtree(aside, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)

    def load_predictions(self, unit: str) -> dict | None:
        """The saved arrays of ``unit``, or None when missing or unreadable (then it retrains)."""
        path = self.unit_path(unit)
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except Exception:  # noqa: BLE001 - OSError, ValueError, zipfile.BadZipFile...: a damaged file
            return None


def load_checkpoint(path: str):
    """Restore params saved by `Store.save_checkpoint` (as numpy-backed jax arrays)."""
    import orbax.checkpoint as ocp

    if not os.path.isdir(path):
        raise UserError(f"checkpoint {path!r}: not found")
    try:
        with ocp.StandardCheckpointer() as ckpt:
            return ckpt.restore(os.path.abspath(path))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for damaged files
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path!r} is unreadable ({first}); retrain the unit") from None


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def unit_id(config_hash: str, family: str, model: str, protocol: str, member) -> str:
    return f"{config_hash}/{family}/{model}/{protocol}-{member}"


def _git_sha() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")


# The checkout's HEAD (and whether tracked files differ from it) when this process loaded the suite.
# The code that runs is the code imported then: a commit made while a long run goes on must not
# relabel the records written after it (one run's records once named three commits that way).
LOADED_GIT_SHA = _git_sha()


def provenance() -> dict:
    """Versions, device, git SHA (as loaded: `LOADED_GIT_SHA`) and host of this process."""
    import jax

    versions = {"python": platform.python_version()}
    for pkg in ("ntk_vs_nn", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    dev = jax.devices()[0]
    return {
        "versions": versions,
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')} x{jax.device_count()}",
        "git_sha": LOADED_GIT_SHA,
        "host": platform.node(),
        **({"xla_flags": os.environ["XLA_FLAGS"]} if os.environ.get("XLA_FLAGS") else {}),
    }


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

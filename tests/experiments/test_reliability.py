"""Guarantees: resume after SIGKILL or Ctrl-C, reproducibility, corrupt files, unwritable output,
divergence and out-of-memory cells, concurrent writers, safe checkpoints."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from ntk_vs_nn.cli import main
from ntk_vs_nn.store import Store, load_checkpoint

SMOKE = ["--preset", "smoke", "--set", "data.n_train=160", "--set", "data.n_test=100"]
TRAINED = ("single", "train_sum", "kd", "sd")  # units that train (ensembles are derived)


def cli(*argv, **kw):
    return subprocess.run([sys.executable, "-m", "ntk_vs_nn", *argv], capture_output=True, text=True, timeout=300, **kw)


def records(out):
    with open(os.path.join(out, "records.jsonl")) as f:
        return [json.loads(line) for line in f]


def table(out, which="nn"):
    return pd.read_csv(os.path.join(out, f"table_{which}.csv")).drop(columns=["wall_s"])


def wait_for_records(out, proc, n, timeout=240):
    path = os.path.join(out, "records.jsonl")
    t0 = time.time()
    while time.time() - t0 < timeout:
        if os.path.exists(path) and sum(1 for _ in open(path)) >= n:
            return
        assert proc.poll() is None, "run finished before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError("no records appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted smoke run of table nn (4 epochs, so an interruption has time to land)."""
    out = str(tmp_path_factory.mktemp("ref"))
    proc = cli("table", "nn", *SMOKE, "--set", "train.epochs=4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def child_pids(pid):
    """The processes ``pid`` started (its workers), from /proc."""
    pids = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            pids |= {int(p) for p in f.read().split()}
    return pids


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    "sig,workers", [(signal.SIGKILL, 1), (signal.SIGINT, 1), (signal.SIGKILL, 2), (signal.SIGINT, 2)]
)
def test_killed_run_resumes_without_retraining_and_matches(reference, tmp_path, sig, workers):
    """A run killed mid-way (SIGKILL or Ctrl-C), in this process or with run.workers=2 (its workers
    die with it), resumes without retraining a recorded unit, and its table equals the
    uninterrupted in-process reference bit for bit (worker-trained units included)."""
    out = str(tmp_path / "run")
    argv = [sys.executable, "-m", "ntk_vs_nn", "table", "nn", *SMOKE, "--set", "train.epochs=4", "--out", out]
    argv += ["--set", f"run.workers={workers}"]
    # SIG_DFL in the child: a test run from a background job inherits SIGINT ignored (the shell's rule
    # for `&`), and Python then leaves Ctrl-C ignored, as the user of such a shell asked
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_records(out, proc, 1)
    kids = child_pids(proc.pid) if workers > 1 else set()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "rerun the same command to resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    if workers > 1:
        assert kids, "no worker processes were running"
        t0 = time.time()
        while any(alive(k) for k in kids) and time.time() - t0 < 30:
            time.sleep(0.1)
        assert not any(alive(k) for k in kids), "a worker outlived its killed parent"
    n_before = len([r for r in records(out) if r["protocol"] in TRAINED])
    assert 1 <= n_before < 7  # 3 singles + train-sum + KD + 2 SD: the kill landed mid-run
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    units = [r["unit"] for r in records(out) if r["protocol"] in TRAINED]
    assert len(units) == len(set(units)) == 7  # every unit trained exactly once
    pd.testing.assert_frame_equal(table(out), table(reference))


def test_same_config_same_tables(reference, tmp_path):
    out = str(tmp_path / "again")
    proc = cli("table", "nn", *SMOKE, "--set", "train.epochs=4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    pd.testing.assert_frame_equal(table(out), table(reference))
    # and a different seed gives different members
    other = str(tmp_path / "seed1")
    assert cli("table", "nn", *SMOKE, "--set", "train.epochs=4", "--set", "run.seed=1", "--out", other).returncode == 0
    assert not table(other)["acc_mean"].equals(table(reference)["acc_mean"])


def test_corrupt_store_line_and_unit_file_are_survived(reference, tmp_path):
    out = str(tmp_path / "copy")
    subprocess.run(["cp", "-r", reference, out], check=True)
    store = Store(out)
    victim = next(r for r in records(out) if r["protocol"] == "single" and r["member"] == 1)["unit"]
    with open(os.path.join(out, "records.jsonl"), "a") as f:
        f.write('{"unit": "half a line, cut by a cra')  # a write cut short, no newline
    with open(store.unit_path(victim), "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    n = len(open(os.path.join(out, "records.jsonl")).readlines())
    proc = cli("table", "nn", *SMOKE, "--set", "train.epochs=4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "corrupt line" in proc.stderr
    new = [json.loads(line) for line in open(os.path.join(out, "records.jsonl")).readlines()[n:]]
    retrained = [r["unit"] for r in new if r["protocol"] in TRAINED]
    assert retrained == [victim]  # only the unit whose predictions were unreadable
    pd.testing.assert_frame_equal(table(out), table(reference))


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = cli("table", "nn", *SMOKE, "--out", str(blocker / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "not writable" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_divergence_is_recorded_and_the_run_goes_on(tmp_path):
    out = str(tmp_path / "div")
    proc = cli(
        "table",
        "nn",
        *SMOKE,
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.lr=1e12",
        "--set",
        "model.norm=none",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(os.path.join(out, "table_nn.csv"))
    status = df.set_index("protocol").status
    assert status["single"] == "diverged" and status["train_sum"] == "diverged"
    assert status["kd"] == "skipped" and status["sd"] == "skipped"  # no teacher to distil
    assert "diverged" in open(os.path.join(out, "table_nn.md")).read()
    verdicts = pd.read_csv(os.path.join(out, "messages.csv")).verdict
    assert set(verdicts) == {"inconclusive"}


def test_out_of_memory_is_recorded_as_oom(tmp_path, monkeypatch):
    from ntk_vs_nn.engine import trainer as engine

    real_fit = engine.Trainer.fit

    def fit(self, *a, **kw):
        if "_sum" in self.family.name:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 12.0GiB")
        return real_fit(self, *a, **kw)

    monkeypatch.setattr(engine.Trainer, "fit", fit)
    out = str(tmp_path / "oom")
    assert main(["table", "nn", *SMOKE, "--set", "train.epochs=1", "--out", out]) == 0
    df = pd.read_csv(os.path.join(out, "table_nn.csv")).set_index("protocol")
    assert df.loc["train_sum", "status"] == "oom"
    assert df.loc["single", "status"] == "ok" and df.loc["kd", "status"] == "ok"
    assert "| oom |" in open(os.path.join(out, "table_nn.md")).read()


def test_checkpoint_restores_the_trained_member(reference):
    import jax

    from ntk_vs_nn.config import Config
    from ntk_vs_nn.config.presets import from_dict
    from ntk_vs_nn.data import load_dataset
    from ntk_vs_nn.families import make_family

    cfg = from_dict(json.load(open(os.path.join(reference, "config.json"))))
    assert isinstance(cfg, Config)
    rec = next(r for r in records(reference) if r["protocol"] == "single" and r["member"] == 2)
    store = Store(reference)
    params = load_checkpoint(store.checkpoint_path(rec["unit"]))
    data = load_dataset(cfg.dataset, cfg.data, cfg.run.seed)
    fam = make_family("nn", rec["model"], data.num_classes, data.spatial_ndim, cfg)
    logits = np.asarray(jax.jit(fam.apply)({"params": params, "state": {}}, data.x_test))
    np.testing.assert_allclose(logits, store.load_predictions(rec["unit"])["test"], rtol=1e-5, atol=1e-5)


def test_two_runs_into_one_folder_do_not_corrupt_it(tmp_path):
    out = str(tmp_path / "shared")
    argv = [sys.executable, "-m", "ntk_vs_nn", "table", "nn", *SMOKE, "--set", "train.epochs=1", "--out", out]
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        p.communicate(timeout=300)  # read stderr while waiting: a full pipe must not block a child
    assert [p.returncode for p in procs] == [0, 0]
    lines = open(os.path.join(out, "records.jsonl")).read().splitlines()
    assert all(json.loads(line)["unit"] for line in lines)  # every line whole
    df = pd.read_csv(os.path.join(out, "table_nn.csv"))
    assert (df.status == "ok").all()


def _append_many(out, worker):
    store = Store(out)
    for i in range(200):
        store.append({"unit": f"w{worker}/{i}", "payload": "x" * 5000})


def test_concurrent_appends_never_interleave(tmp_path):
    out = str(tmp_path)
    procs = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(out, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    recs = Store(out).records()
    assert len(recs) == 800 and len({r["unit"] for r in recs}) == 800


def test_corrupt_checkpoint_is_one_clear_error(reference, tmp_path):
    import shutil

    from ntk_vs_nn.config import UserError

    rec = next(r for r in records(reference) if r["protocol"] == "kd")
    src = Store(reference).checkpoint_path(rec["unit"])
    broken = str(tmp_path / "broken.ckpt")
    shutil.copytree(src, broken)
    for root, _, files in os.walk(broken):  # damage every data file, keep the layout
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                size = os.path.getsize(path)
                f.truncate(max(size // 3, 1))
    with pytest.raises(UserError, match="unreadable"):
        load_checkpoint(broken)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(str(tmp_path / "nothing.ckpt"))


def test_an_interrupt_swallowed_by_a_library_still_stops_at_the_next_unit(tmp_path, monkeypatch):
    """SIGINT sets results.INTERRUPTED; if the KeyboardInterrupt were swallowed by library code, the
    store raises it again right after the next record."""
    from ntk_vs_nn import store as results

    store = results.Store(str(tmp_path))
    store.append({"unit": "a"})
    monkeypatch.setattr(results, "INTERRUPTED", __import__("threading").Event())
    results.INTERRUPTED.set()
    with pytest.raises(KeyboardInterrupt):
        store.append({"unit": "b"})
    assert [r["unit"] for r in store.records()] == ["a", "b"]  # the record is kept, then it stops

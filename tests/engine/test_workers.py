"""run.workers: the units of a row trained in worker processes equal the units trained here, bit for
bit (every protocol: singles, the train-sum model, KD and SD students), and are recorded alike."""

import dataclasses

import numpy as np
import pytest

from ntk_vs_nn.cli import main
from ntk_vs_nn.engine import workers
from ntk_vs_nn.protocols import run_row
from ntk_vs_nn.store import Store

TRAINED = ("single", "train_sum", "kd", "sd")


@pytest.fixture(scope="module")
def pool():
    with workers.Pool(2) as p:
        yield p


def _row(tmp_path, name, family, cfg, data, pool=None):
    store = Store(str(tmp_path / name))
    run_row(family, "SimpleCNN-3-1", cfg, data, store, pool=pool)
    return store, {r["unit"]: r for r in store.records()}


@pytest.mark.parametrize(
    "family,kd_inputs,extra",
    [("nn", "auto", {}), ("ntk", "auto", {}), ("nn", "augment_mixup", {}),
     ("nn", "auto", {"kd_student": "BE3-SimpleCNN-3-1", "kd_perturb": "confods"}),
     ("ntk", "auto", {"kd_perturb": "ods"})],
)  # fmt: skip
def test_worker_units_equal_in_process_units_bit_for_bit(tmp_path, tiny_cfg, tiny_data, pool, family, kd_inputs, extra):
    """augment_mixup: online-teacher students (shift + noise, then mixup), the teacher loaded from its
    checkpoint in the worker; a BatchEnsemble KD student distilled member-wise on ConfODS inputs; ntk
    students on ODS inputs (the ntk teachers' input gradients)."""
    protocol = dataclasses.replace(tiny_cfg.protocol, kd_students=2, kd_inputs=kd_inputs, **extra)
    cfg = dataclasses.replace(tiny_cfg, protocol=protocol)
    here, recs_here = _row(tmp_path, "here", family, cfg, tiny_data)
    there, recs_there = _row(tmp_path, "there", family, cfg, tiny_data, pool)
    assert set(recs_here) == set(recs_there)
    trained = [u for u, r in recs_here.items() if r["protocol"] in TRAINED]
    assert sorted({recs_here[u]["protocol"] for u in trained}) == sorted(TRAINED)
    for u in trained:
        a, b = recs_here[u], recs_there[u]
        assert a["status"] == b["status"] == "ok"
        assert a["metrics"] == b["metrics"]  # accuracy, loss, ECE, fidelity: every number
        pa, pb = here.load_predictions(u), there.load_predictions(u)
        for split in pa:
            np.testing.assert_array_equal(pa[split], pb[split])
        assert b["host"] and b["versions"]  # the worker's own provenance
    # the derived units (ensembles of the workers' members) too
    for u, r in recs_here.items():
        if r["protocol"] in ("ensemble", "sd_ensemble"):
            assert recs_there[u]["metrics"] == r["metrics"]


def test_a_rerun_with_workers_trains_nothing(tmp_path, tiny_cfg, tiny_data, pool):
    store, first = _row(tmp_path, "again", "nn", tiny_cfg, tiny_data, pool)
    _, second = _row(tmp_path, "again", "nn", tiny_cfg, tiny_data, pool)
    assert len(store.records()) == len(first) == len(second)


def test_worker_count_and_bad_settings(capsys, tmp_path):
    assert workers.worker_count(0) >= 1 and workers.worker_count(3) == 3 and workers.worker_count(1) == 1
    out = str(tmp_path / "bad")
    assert main(["table", "nn", "--preset", "smoke", "--set", "run.workers=-1", "--out", out]) == 2
    assert "run.workers must be >= 0" in capsys.readouterr().err
    argv = ["table", "nn", "--preset", "smoke", "--set", "run.workers=2", "--executor", "ray", "--out", out]
    assert main(argv) == 2
    assert "use run.workers=1" in capsys.readouterr().err
    argv = ["table", "nn", "--preset", "smoke", "--set", "run.workers=2", "--set", "run.members=vmap", "--out", out]
    assert main(argv) == 2
    assert "needs run.members=sequential" in capsys.readouterr().err


def test_compile_cache_can_be_turned_off_and_survives_an_unwritable_home(monkeypatch):
    from ntk_vs_nn.engine import host

    for off in ("off", "", "0"):
        monkeypatch.setenv(host.CACHE_ENV, off)
        assert host.compile_cache_dir() is None and host.enable_compile_cache() is None
    monkeypatch.setenv(host.CACHE_ENV, "/proc/no-such-dir/xla")  # cannot be created
    assert host.enable_compile_cache() is None

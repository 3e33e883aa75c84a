"""--executor local|ray: table rows as Ray tasks on a local 2-CPU cluster give the local tables;
a worker killed mid-row is retried and no unit is recorded twice; without Ray the option is one
error line (exit 2). The Ray tests skip when Ray is not installed (pip install -e '.[ray]')."""

import builtins
import os
import sys
import warnings

import pandas as pd
import pytest

from ntk_vs_nn.cli import main
from ntk_vs_nn.store import Store

SMOKE = ["--preset", "smoke", "--set", "data.n_train=160", "--set", "data.n_test=100", "--set", "train.epochs=1"]
TWO_ROWS = ["--set", "table.nn_models=SimpleCNN-3-1,SimpleCNN-2-1"]
TRAINED = ("single", "train_sum", "kd", "sd")


def table(out, which="nn"):
    return pd.read_csv(os.path.join(out, f"table_{which}.csv")).drop(columns=["wall_s"])


# -- without ray -----------------------------------------------------------------------------------------
def test_executor_ray_without_ray_is_one_error_line(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    out = tmp_path / "out"
    assert main(["table", "nn", *SMOKE, "--executor", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "pip install" in err[0] and "[ray]" in err[0]
    assert not out.exists()  # nothing written


def test_unknown_executor_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["table", "nn", *SMOKE, "--executor", "slurm", "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "slurm" in err[0]


def test_local_executor_runs_every_row_in_order(tiny_cfg, tiny_data, tmp_path):
    from ntk_vs_nn.experiments.executors import run_rows

    seen = []
    run_rows(
        [("nn", "A"), ("ntk", "A"), ("nn", "B")],
        tiny_cfg,
        tiny_data,
        str(tmp_path),
        row_fn=lambda f, m, cfg, data, store, log: seen.append((f, m, store.out_dir, "git_sha" in store.provenance)),
    )
    assert seen == [(f, m, str(tmp_path), True) for f, m in [("nn", "A"), ("ntk", "A"), ("nn", "B")]]


# -- with a local Ray cluster of 2 CPUs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    with warnings.catch_warnings():  # jax warns about any fork; Ray's is an exec of its daemons
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_two_rows(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("local"))
    assert main(["table", "nn", *SMOKE, *TWO_ROWS, "--out", out]) == 0
    return out


def test_ray_table_equals_local_table(ray_cluster, local_two_rows, tmp_path):
    out = str(tmp_path / "ray")
    assert main(["table", "nn", *SMOKE, *TWO_ROWS, "--executor", "ray", "--out", out]) == 0
    units = [r["unit"] for r in Store(out).records() if r["protocol"] in TRAINED]
    assert len(units) == len(set(units)) == 2 * 7  # 2 rows x (3 singles + train-sum + KD + 2 SD)
    pd.testing.assert_frame_equal(table(out), table(local_two_rows))
    assert {r["model"] for r in Store(out).records()} == {"SimpleCNN-3-1", "SimpleCNN-2-1"}
    # a second run over the same folder trains nothing: every unit is already recorded
    n = len(Store(out).records())
    assert main(["table", "nn", *SMOKE, *TWO_ROWS, "--executor", "ray", "--out", out]) == 0
    assert [r for r in Store(out).records()[n:] if r["protocol"] in TRAINED] == []


def crash_once_row(family, model, cfg, data, store, log):
    """run_row whose worker process dies (os._exit) right after its first recorded unit, on the
    first attempt only: the marker file remembers that attempt across processes."""
    import os

    from ntk_vs_nn.protocols import run_row

    marker = os.path.join(store.out_dir, f"crashed-{family}-{model}")
    real_append = store.append

    def append(record):
        real_append(record)
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)  # a killed worker: no exception, no cleanup

    store.append = append
    run_row(family, model, cfg, data, store, log)


def test_killed_worker_is_retried_and_no_unit_is_recorded_twice(ray_cluster, local_two_rows, tmp_path):
    from ntk_vs_nn.config import apply_overrides
    from ntk_vs_nn.config.presets import get_preset
    from ntk_vs_nn.data import load_dataset
    from ntk_vs_nn.experiments.executors import run_rows

    cfg = apply_overrides(get_preset("smoke"), [s for s in SMOKE[2:] if s != "--set"])
    data = load_dataset(cfg.dataset, cfg.data, cfg.run.seed)
    out = str(tmp_path / "crash")
    os.makedirs(out)
    run_rows([("nn", "SimpleCNN-3-1")], cfg, data, out, executor="ray", max_retries=2, row_fn=crash_once_row)
    assert os.path.exists(os.path.join(out, "crashed-nn-SimpleCNN-3-1"))  # the first attempt died
    recs = Store(out).records()
    units = [r["unit"] for r in recs if r["protocol"] in TRAINED]
    assert len(units) == len(set(units)) == 7  # all trained, none twice
    first = recs[0]
    assert first["protocol"] == "single" and first["member"] == 0  # recorded before the crash, kept
    # the same numbers as the uninterrupted local run of that row
    local = {r["unit"]: r["metrics"]["acc"] for r in Store(local_two_rows).records() if r["protocol"] in TRAINED}
    for r in recs:
        if r["protocol"] in TRAINED:
            assert r["metrics"]["acc"] == local[r["unit"]]


def test_worker_dying_on_every_try_is_one_clear_error(ray_cluster, tmp_path, tiny_cfg, tiny_data):
    from ntk_vs_nn.config import UserError
    from ntk_vs_nn.experiments.executors import run_rows

    def always_dies(*a, **kw):
        import os

        os._exit(3)

    with pytest.raises(UserError, match="failed 2 time"):
        run_rows([("nn", "X")], tiny_cfg, tiny_data, str(tmp_path), executor="ray", max_retries=1, row_fn=always_dies)

"""Shared fixtures: a tiny synthetic dataset and a tiny config, small enough for a 2-core CPU."""

import dataclasses
import os
import tempfile

# The guard against a test that reads a dataset installed on the machine (a system Fashion-MNIST, a CIFAR
# archive, a tensorflow-datasets build): every real-data location points at one empty folder, for this
# process and every process it starts (the CLI, workers). A test that needs real-format files writes its
# own (tests/data/test_images.py); the presets the tests run use generated data (``synthetic:fashion_mnist``).
# Set before anything imports tensorflow-datasets, which reads TFDS_DATA_DIR at import.
NO_DATASETS = tempfile.mkdtemp(prefix="ntk_vs_nn-no-datasets-")
DATA_ENV = ("NTK_VS_NN_FASHION_MNIST", "NTK_VS_NN_CIFAR_DIR", "TFDS_DATA_DIR")
os.environ.update(dict.fromkeys(DATA_ENV, NO_DATASETS))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ntk_vs_nn.config import Config  # noqa: E402
from ntk_vs_nn.data import Dataset  # noqa: E402
from ntk_vs_nn.engine.host import enable_compile_cache  # noqa: E402

# Many tests compile the same small programs (a fresh trainer each): the persistent cache loads them
# (the CLI and every worker process use the same one; NTK_VS_NN_XLA_CACHE=off turns it off)
enable_compile_cache()

N_TRAIN, N_VAL, N_TEST = 48, 16, 32
LENGTH, NUM_CLASSES = 12, 3


def make_tiny_dataset(seed: int = 0) -> Dataset:
    """1-D signals (N, 12, 1); the label is the tercile of the signal's mean, so a conv net with a
    global mean pool can learn it. Classes are balanced over the pooled samples."""
    rs = np.random.RandomState(seed)
    n = N_TRAIN + N_VAL + N_TEST
    x = rs.randn(n, LENGTH, 1).astype(np.float32)
    x += rs.randn(n, 1, 1).astype(np.float32)  # a per-sample offset that carries the label
    score = x.mean(axis=(1, 2))
    cuts = np.quantile(score, [1 / 3, 2 / 3])
    y = np.digitize(score, cuts).astype(np.int32)
    a, b = N_TRAIN, N_TRAIN + N_VAL
    return Dataset(
        name="tiny",
        x_train=x[:a],
        y_train=y[:a],
        x_val=x[a:b],
        y_val=y[a:b],
        x_test=x[b:],
        y_test=y[b:],
        num_classes=NUM_CLASSES,
    )


def make_tiny_config(**train_overrides) -> Config:
    cfg = Config()
    train = dataclasses.replace(
        cfg.train,
        epochs=2,
        batch_size=16,
        eval_batch_size=64,
        lr=1e-2,
        schedule="constant",
        **train_overrides,
    )
    return dataclasses.replace(
        cfg,
        preset="test",
        dataset="tiny",
        data=dataclasses.replace(cfg.data, n_train=N_TRAIN + N_VAL, n_test=N_TEST),
        train=train,
        protocol=dataclasses.replace(cfg.protocol, members=3),
        run=dataclasses.replace(cfg.run, progress=False, members="sequential"),
    )


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    return make_tiny_dataset()


@pytest.fixture(scope="session")
def tiny_cfg() -> Config:
    return make_tiny_config()


def rel_err(a, b) -> float:
    """max |a - b| / max |b| in float64; the shapes must match (the kernel and backend cross-checks)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def theory_outputs(out: str) -> dict:
    """The written outputs of a gaussian or channels run folder (what a resume must leave as they are)."""
    return {n: open(os.path.join(out, n)).read() for n in ("table.md", "table.csv", "summary.md", "claims.csv")}


def store_before_student_units(src: str, dst: str) -> list:
    """A copy of run folder ``src`` at ``dst`` as a store recorded before students were units would be: no
    unit files, only the records that are not a student's (protocol ``single``); returns those records."""
    import json
    import shutil

    from ntk_vs_nn.store import Store

    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, "units"))
    kept = [r for r in Store(dst).records() if r.get("protocol") != "single"]
    with open(os.path.join(dst, "records.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    return kept


@pytest.fixture()
def x64():
    """float64 for exact cross-checks, with most XLA optimisations off: the programs are tiny, so compiling
    dominates (used by name, or for a whole module by ``pytestmark = pytest.mark.usefixtures("x64")``)."""
    import jax

    fast = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    with jax.enable_x64(True):
        yield
    jax.config.update("jax_disable_most_optimizations", fast)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """`make test` runs pytest-xdist with ``--dist loadgroup``: each test module is one group, run by one
    worker, so its module-scoped fixtures are built once, except the modules that set
    ``SPREAD_OVER_WORKERS = True`` (many slow independent cases, no module fixture): their tests are shared
    among the workers, so that no one file holds the run's tail."""
    for item in items:
        if not getattr(item.module, "SPREAD_OVER_WORKERS", False):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))

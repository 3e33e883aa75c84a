"""A unit's training resumed part-way (`engine.resume.EpochSnapshot`) is the uninterrupted training, bit for
bit: the single member's epochs, the train-sum model's split step, a linearised (ntk) member with momentum,
a cosine schedule and per-epoch augmentation; a snapshot that does not fit is ignored; a Row clears it."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ntk_vs_nn.engine.resume import EpochSnapshot
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family, summed

MODEL, K, EPOCHS, STOP = "SimpleCNN-3-1", 3, 4, 2


class Stopped(Exception):
    pass


class StopAfter(EpochSnapshot):
    """Saves every epoch, then stops the run (as a killed process would) once ``stop`` epochs are saved."""

    def __init__(self, path, stop):
        super().__init__(path, every_s=0.0)
        self.stop = stop

    def save(self, done, epochs, carry, losses, force=False):
        super().save(done, epochs, carry, losses, force)
        if done == self.stop:
            raise Stopped


def _noisy(key, xb):
    return xb + 0.3 * jax.random.normal(key, xb.shape)


def _case(tiny_cfg, family, summed_l):
    cfg = dataclasses.replace(
        tiny_cfg.train, epochs=EPOCHS, batch_size=16, lr=1e-2, optimizer="sgd", momentum=0.9, schedule="cosine"
    )
    fam = make_family(family, MODEL, K, 1, tiny_cfg)
    fam = summed(fam, summed_l) if summed_l else fam

    def trainer():  # a fresh trainer each time: a new process compiles anew
        return Trainer(fam, cfg, 48, augment=_noisy, sum_step="split")

    return trainer


def _counted(trainer):
    """The trainer, counting the epochs it runs (its data order is drawn once per epoch)."""
    calls = []
    order = trainer._order
    trainer._order = lambda keys, e, n: calls.append(e) or order(keys, e, n)
    return trainer, calls


@pytest.mark.parametrize("family,summed_l", [("nn", 0), ("ntk", 0), ("nn", 3)], ids=["single", "ntk", "split-sum"])
def test_a_resumed_training_is_the_uninterrupted_one_bit_for_bit(tiny_cfg, tiny_data, tmp_path, family, summed_l):
    make = _case(tiny_cfg, family, summed_l)
    x, y = tiny_data.x_train, tiny_data.y_train
    keys = ([jax.random.key(7)], [jax.random.key(8)])
    whole = make().fit(*keys, x, y, mode="sequential")
    path = str(tmp_path / "unit.partial.npz")
    with pytest.raises(Stopped):
        make().fit(*keys, x, y, mode="sequential", snapshots=[StopAfter(path, STOP)])
    trainer, epochs_run = _counted(make())
    resumed = trainer.fit(*keys, x, y, mode="sequential", snapshots=[EpochSnapshot(path, every_s=1e9)])
    assert epochs_run == list(range(STOP, EPOCHS))  # it started from the saved epoch, not from 0
    for a, b in zip(jax.tree.leaves(whole.variables[0]["params"]), jax.tree.leaves(resumed.variables[0]["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(whole.losses, resumed.losses)
    with np.load(path) as f:  # the last epoch is saved whatever the interval: a unit killed before its record
        assert int(f["meta"][0]) == EPOCHS  # is written then costs no training


def test_a_snapshot_that_does_not_fit_is_ignored(tiny_cfg, tiny_data, tmp_path):
    make = _case(tiny_cfg, "nn", 0)
    x, y = tiny_data.x_train, tiny_data.y_train
    keys = ([jax.random.key(7)], [jax.random.key(8)])
    path = str(tmp_path / "unit.partial.npz")
    with pytest.raises(Stopped):
        make().fit(*keys, x, y, mode="sequential", snapshots=[StopAfter(path, STOP)])
    longer = dataclasses.replace(make().cfg, epochs=EPOCHS + 1)  # another budget: the saved epoch means else
    fam = make().family
    trainer, epochs_run = _counted(Trainer(fam, longer, 48, augment=_noisy))
    trainer.fit(*keys, x, y, mode="sequential", snapshots=[EpochSnapshot(path)])
    assert epochs_run == list(range(EPOCHS + 1))
    with open(path, "wb") as f:  # a damaged file
        f.write(b"not an npz")
    assert EpochSnapshot(path).load({"w": jnp.zeros(3)}, EPOCHS) is None
    other = {"w": jnp.zeros(4)}  # another shape
    EpochSnapshot(path).save(1, EPOCHS, {"w": jnp.ones(3)}, np.zeros(1), force=True)
    assert EpochSnapshot(path).load(other, EPOCHS) is None


def test_bfloat16_leaves_survive_the_round_trip(tmp_path):
    path = str(tmp_path / "s.npz")
    carry = {"a": jnp.arange(5, dtype=jnp.bfloat16) / 3, "b": (jnp.ones((2, 2)), jnp.int32(7))}
    EpochSnapshot(path).save(2, 9, carry, np.arange(2.0), force=True)
    done, got, losses = EpochSnapshot(path).load(jax.tree.map(jnp.zeros_like, carry), 9)
    assert done == 2 and losses.tolist() == [0.0, 1.0]
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(got)):
        assert a.dtype == b.dtype
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert np.dtype(ml_dtypes.bfloat16) == got["a"].dtype


def test_a_row_resumes_its_unit_and_clears_the_snapshot_once_recorded(tiny_cfg, tiny_data, tmp_path, monkeypatch):
    """The protocol path: `Row` gives each unit its snapshot under units/ and removes it after the record."""
    import os

    from ntk_vs_nn.protocols import Row, execution
    from ntk_vs_nn.store import Store

    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, epochs=EPOCHS))
    row = Row("nn", MODEL, cfg, tiny_data, Store.prepare(str(tmp_path)))
    unit = ("single", 0)
    path = row.store.snapshot_path(row._unit(*unit))
    monkeypatch.setattr(execution, "EpochSnapshot", lambda p, every_s: StopAfter(p, STOP))
    with pytest.raises(Stopped):
        row.single(1)
    assert os.path.exists(path) and row._done(*unit) is None
    monkeypatch.undo()
    row = Row("nn", MODEL, cfg, tiny_data, Store.prepare(str(tmp_path)))
    trainer, epochs_run = _counted(row.trainer_for("teacher"))
    row.trainer_for = lambda kind: trainer
    row.single(1)
    assert epochs_run == list(range(STOP, EPOCHS))
    assert row._done(*unit) is not None and not os.path.exists(path)

"""Input transformations (crop + flip, shift + noise, mixup) and the online teacher of `Trainer`:
deterministic per key, identical across member-execution modes, online = fixed on untransformed
inputs, and under mixup the target is the teacher on the mixed input."""

import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_vs_nn import rng
from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.config import UserError
from ntk_vs_nn.data import transforms
from ntk_vs_nn.engine import steps
from ntk_vs_nn.engine.losses import distill_loss, ensemble_logits
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family

MODEL = "SimpleCNN-3-1"


# -- the transformations ----------------------------------------------------------------------------
def test_shift_noise_is_deterministic_per_key_and_shifts_by_whole_positions():
    x = jnp.asarray(np.random.RandomState(0).randn(16, 20, 1), jnp.float32)
    a = transforms.shift_noise(jax.random.key(1), x, max_shift=3, noise=0.0)
    np.testing.assert_array_equal(a, transforms.shift_noise(jax.random.key(1), x, max_shift=3, noise=0.0))
    assert not np.array_equal(a, transforms.shift_noise(jax.random.key(2), x, max_shift=3, noise=0.0))
    xs, out = np.asarray(x)[..., 0], np.asarray(a)[..., 0]
    padded = np.pad(xs, ((0, 0), (3, 3)))
    for i in range(16):  # each row is one window of the zero-padded signal, offset 0..6
        assert any(np.array_equal(out[i], padded[i, o : o + 20]) for o in range(7)), i
    offsets = {int(np.argmax([np.array_equal(out[i], padded[i, o : o + 20]) for o in range(7)])) for i in range(16)}
    assert len(offsets) > 1
    noisy = transforms.shift_noise(jax.random.key(1), x, max_shift=0, noise=0.5)
    assert 0.4 < float(jnp.std(noisy - x)) < 0.6


def test_crop_without_flip_never_mirrors_and_crop_flip_does():
    img = np.arange(2 * 6 * 6).reshape(2, 6, 6, 1).astype(np.float32) + 1
    x = jnp.asarray(np.repeat(img, 32, 0))
    crop = np.asarray(transforms.crop_flip(jax.random.key(3), x, pad=0, flip=False))
    np.testing.assert_array_equal(crop, np.asarray(x))  # pad 0, no flip: the identity
    flipped = np.asarray(transforms.crop_flip(jax.random.key(3), x, pad=0, flip=True))
    mirrored = [np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, np.asarray(x))]
    assert 0 < sum(mirrored) < len(mirrored)


def test_crop_pad_is_4_for_32_pixels_and_2_for_28_and_bad_augments_are_user_errors():
    assert transforms.crop_pad_for(32) == 4 and transforms.crop_pad_for(28) == 2
    aug = transforms.make_augment("crop", 2, 28)
    assert aug.keywords == {"pad": 2, "flip": False}
    with pytest.raises(UserError, match="1-D"):
        transforms.make_augment("shift_noise", 2, 28)
    with pytest.raises(UserError, match="2-D"):
        transforms.make_augment("crop_flip", 1, 40)
    with pytest.raises(UserError, match="one of"):
        transforms.make_augment("rotate", 2, 28)


def test_mixup_mixes_inputs_with_one_lambda_and_a_permutation():
    x = jnp.asarray(np.random.RandomState(1).randn(10, 4), jnp.float32)
    xm, perm, lam = transforms.mixup(jax.random.key(4), x, 1.0)
    assert sorted(np.asarray(perm).tolist()) == list(range(10)) and 0 < float(lam) < 1
    np.testing.assert_allclose(xm, lam * x + (1 - lam) * x[perm], rtol=1e-6)
    xm2, perm2, lam2 = transforms.mixup(jax.random.key(4), x, 1.0)
    np.testing.assert_array_equal(xm, xm2)


def test_distill_loss_with_mixup_mixes_the_two_cross_entropies():
    rs = np.random.RandomState(2)
    logits, teacher = jnp.asarray(rs.randn(6, 3)), jnp.asarray(rs.randn(6, 3))
    ya, yb = jnp.asarray(rs.randint(0, 3, 6)), jnp.asarray(rs.randint(0, 3, 6))
    lam = 0.3
    want = lam * distill_loss(logits, ya, teacher, 0.0, 1.0) + (1 - lam) * distill_loss(logits, yb, teacher, 0.0, 1.0)
    np.testing.assert_allclose(distill_loss(logits, ya, teacher, 0.0, 1.0, (yb, lam)), want, rtol=1e-6)
    kd = distill_loss(logits, ya, teacher, 1.0, 2.0)  # the KL term does not see the labels
    np.testing.assert_allclose(distill_loss(logits, ya, teacher, 1.0, 2.0, (yb, lam)), kd, rtol=1e-6)


@pytest.mark.parametrize("rule", ["logits", "probs"])
def test_ensemble_logits_is_metrics_combine(rule):
    outs = [np.random.RandomState(i).randn(5, 4).astype(np.float32) * 3 for i in range(3)]
    got = ensemble_logits([jnp.asarray(o) for o in outs], rule)
    np.testing.assert_allclose(got, metrics.combine(outs, rule), rtol=1e-5, atol=1e-5)


# -- the online teacher ------------------------------------------------------------------------------
def _keys(tag, m, seed=0):
    root = rng.root_key(seed)
    return [rng.member_key(root, tag, i) for i in range(m)]


def _teachers(tiny_data, cfg, fam, n=3):
    trainer = Trainer(fam, cfg, len(tiny_data.x_train))
    return trainer.fit(_keys("init", n), _keys("data", n), tiny_data.x_train, tiny_data.y_train, mode="sequential")


def _flat(res):
    return [np.asarray(jax.flatten_util.ravel_pytree(v["params"])[0]) for v in res.variables]


@pytest.mark.parametrize("family", ["nn", "ntk"])
def test_online_teacher_on_untransformed_inputs_equals_fixed_targets(x64, tiny_data, tiny_cfg, family):
    """KD of an ensemble of 3 and SD of one member, float64: the students' params trained against
    the teacher evaluated in every step match those trained against targets computed once (1e-6)."""
    data = tiny_data._replace(x_train=tiny_data.x_train.astype(np.float64))
    cfg = dataclasses.replace(tiny_cfg.train, epochs=2)
    fam = make_family(family, MODEL, data.num_classes, data.spatial_ndim, tiny_cfg)
    teach = _teachers(data, cfg, fam)
    plain = Trainer(fam, cfg, len(data.x_train))
    members = [plain.predict(v, data.x_train) for v in teach.variables]
    fixed_targets = np.stack([metrics.combine(members, "probs"), members[1]])
    fixed = plain.fit(_keys("kd", 2), _keys("kd_data", 2), data.x_train, data.y_train, fixed_targets, 0.9, 4.0)
    online = Trainer(fam, cfg, len(data.x_train), teacher=fam, teacher_rule="probs")
    on = online.fit(_keys("kd", 2), _keys("kd_data", 2), data.x_train, data.y_train,
                    [teach.variables, [teach.variables[1]]], 0.9, 4.0)  # fmt: skip
    for a, b in zip(_flat(fixed), _flat(on)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    wrong = plain.fit(_keys("kd", 1), _keys("kd_data", 1), data.x_train, data.y_train, fixed_targets[1:], 0.9, 4.0)
    assert np.abs(_flat(wrong)[0] - _flat(on)[0]).max() > 1e-3  # the check can tell teachers apart


def test_mixup_target_is_the_teacher_on_the_mixed_input(tiny_data, tiny_cfg, monkeypatch):
    """Capture the loss's teacher logits inside one step: under mixup they equal the teacher applied
    to the mixed batch, and differ from the mix of its outputs on the two inputs."""
    cfg = dataclasses.replace(tiny_cfg.train, epochs=1, batch_size=len(tiny_data.x_train) // 2)
    fam = make_family("nn", MODEL, tiny_data.num_classes, tiny_data.spatial_ndim, tiny_cfg)
    teacher = _teachers(tiny_data, cfg, fam, n=1).variables[0]
    seen = []
    real = distill_loss

    def spy(logits, labels, teacher_logits, alpha, tau, mix=None, kd_logits=None):
        jax.debug.callback(lambda *a: seen.append([np.asarray(v) for v in a]), teacher_logits, labels, mix[0], mix[1])
        return real(logits, labels, teacher_logits, alpha, tau, mix, kd_logits)

    monkeypatch.setattr(steps, "distill_loss", spy)  # where the compiled step looks it up
    student = Trainer(fam, cfg, len(tiny_data.x_train), mixup=1.0, teacher=fam)
    dk = _keys("kd_data", 1)
    student.fit(_keys("kd", 1), dk, tiny_data.x_train, tiny_data.y_train, [[teacher]], 0.9, 4.0)
    jax.effects_barrier()
    assert len(seen) == student.steps
    # rebuild step 0's batch from the trainer's own order and keys
    idx = np.asarray(student._order(dk, 0, len(tiny_data.x_train)))[0, 0]
    key = jax.random.fold_in(steps._augment_key(dk[0], 0), 0)
    xb = jnp.asarray(tiny_data.x_train[idx])
    xm, perm, lam = transforms.mixup(jax.random.fold_in(key, rng.STEP_TAGS["mixup"]), xb, 1.0)
    t_logits, labels, labels_b, lam_seen = seen[0]
    np.testing.assert_array_equal(labels, tiny_data.y_train[idx])
    np.testing.assert_array_equal(labels_b, tiny_data.y_train[idx][np.asarray(perm)])
    np.testing.assert_allclose(lam_seen, lam, rtol=1e-6)
    on_mixed = np.asarray(fam.apply(teacher, xm))
    np.testing.assert_allclose(t_logits, on_mixed, rtol=1e-4, atol=1e-4)
    outs = np.asarray(fam.apply(teacher, xb))
    mixed_outputs = float(lam) * outs + (1 - float(lam)) * outs[np.asarray(perm)]
    assert np.abs(t_logits - mixed_outputs).max() > 1e-2


@pytest.mark.parametrize("augment", ["shift_noise", "mixup"])
def test_transformed_students_are_identical_across_member_modes(tiny_data, tiny_cfg, augment):
    """Online-teacher students with shift + noise or mixup: sequential, unrolled and vmap train the
    same params (each member's transformation keyed by its own data key, epoch and step)."""
    cfg = dataclasses.replace(tiny_cfg.train, epochs=2)
    fam = make_family("nn", MODEL, tiny_data.num_classes, tiny_data.spatial_ndim, tiny_cfg)
    teach = _teachers(tiny_data, cfg, fam, n=2).variables
    kw = dict(augment=transforms.make_augment("shift_noise", 1, 12)) if augment == "shift_noise" else dict(mixup=0.4)
    t = Trainer(fam, cfg, len(tiny_data.x_train), teacher=fam, **kw)
    x, y = tiny_data.x_train, tiny_data.y_train
    args = (_keys("sd", 2), _keys("sd_data", 2), x, y, [[teach[0]], [teach[1]]], 0.9, 4.0)
    seq = _flat(t.fit(*args, mode="sequential"))
    plain = _flat(Trainer(fam, cfg, len(tiny_data.x_train), teacher=fam).fit(*args, mode="sequential"))
    assert np.abs(seq[0] - plain[0]).max() > 1e-4  # the transformation changed training
    for mode in ("unrolled", "vmap"):
        for a, b in zip(seq, _flat(t.fit(*args, mode=mode))):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    again = _flat(t.fit(*args, mode="sequential"))
    np.testing.assert_array_equal(seq[0], again[0])


def test_mixup_without_an_online_teacher_is_refused(tiny_data, tiny_cfg):
    fam = make_family("nn", MODEL, tiny_data.num_classes, tiny_data.spatial_ndim, tiny_cfg)
    t = Trainer(fam, tiny_cfg.train, len(tiny_data.x_train), mixup=0.5)
    targets = np.zeros((1, len(tiny_data.x_train), tiny_data.num_classes), np.float32)
    with pytest.raises(ValueError, match="mixup"):
        t.fit(_keys("kd", 1), _keys("kd_data", 1), tiny_data.x_train, tiny_data.y_train, targets, 0.9, 4.0)


# -- the protocols: students' inputs and their teachers ------------------------------------------------
def _run(tmp_path, cfg, data, family="nn", sets=()):
    from ntk_vs_nn.config import apply_overrides
    from ntk_vs_nn.protocols import run_row
    from ntk_vs_nn.store import Store

    store = Store(str(tmp_path / "store"))
    run_row(family, MODEL, apply_overrides(cfg, list(sets)), data, store)
    return store


def test_configs_differing_in_kd_inputs_share_their_teachers_in_one_store(tmp_path, tiny_cfg, tiny_data):
    """kd_inputs=clean, then mixup, into one store: the second run trains only its students (the
    singles and the train-sum model are found under the teachers' hash), and its students differ."""
    store = _run(tmp_path, tiny_cfg, tiny_data, sets=["protocol.kd_inputs=clean"])
    first = store.records()
    store = _run(tmp_path, tiny_cfg, tiny_data, sets=["protocol.kd_inputs=mixup"])
    new = store.records()[len(first) :]
    assert {r["protocol"] for r in new} == {"kd", "sd", "sd_ensemble"}
    kd = [r for r in store.records() if r["protocol"] == "kd"]
    assert len(kd) == 2 and kd[0]["config_hash"] != kd[1]["config_hash"]
    assert kd[0]["metrics"]["final_loss"] != kd[1]["metrics"]["final_loss"]
    singles = [r for r in store.records() if r["protocol"] == "single"]
    assert len(singles) == tiny_cfg.protocol.members and singles[0]["config_hash"] == tiny_cfg.teacher_hash()


def test_kd_inputs_resolve_to_transformations_and_teacher_modes(tmp_path, tiny_cfg, tiny_data):
    from ntk_vs_nn.config import apply_overrides
    from ntk_vs_nn.protocols import Row
    from ntk_vs_nn.store import Store

    store = Store(str(tmp_path / "r"))

    def row(*sets, family="nn"):
        return Row(family, MODEL, apply_overrides(tiny_cfg, list(sets)), tiny_data, store)

    r = row()  # no transformation anywhere: fixed targets, the teachers' own trainer
    assert (r.student_augment, r.student_mixup, r.online) == (None, 0.0, False)
    r = row("protocol.kd_inputs=augment")  # 1-D data: shift + noise by default, online teacher
    assert r.student_augment.func is transforms.shift_noise and r.online and r.augment is None
    assert row("protocol.kd_inputs=augment", "protocol.teacher=fixed").online is False
    r = row("train.augment=shift_noise")  # auto: students as the teachers, online
    assert r.augment is not None and r.student_augment is r.augment and r.online
    r = row("protocol.kd_inputs=mixup", "protocol.kd_mixup=0.3", family="ntk")
    assert r.student_mixup == 0.3 and r.student_augment is None and r.online
    assert r.student_trainer().teacher is r.fam
    with pytest.raises(UserError, match="teacher=online"):
        row("protocol.kd_inputs=mixup", "protocol.teacher=fixed")
    with pytest.raises(UserError, match="checkpoints"):
        row("protocol.kd_inputs=mixup", "run.checkpoints=false")
    with pytest.raises(UserError, match="2-D images"):
        row("train.augment=crop_flip")
    with pytest.raises(UserError, match="clean points"):
        row("protocol.kd_inputs=mixup", "kernel.backend=function", family="ntk")


@pytest.mark.parametrize("family", ["ntk", "gp"])
def test_online_teacher_variables_are_the_trained_singles_with_their_state(tmp_path, tiny_cfg, tiny_data, family):
    """An online teacher is rebuilt from a single's checkpoint (params) and its init key (the ntk
    anchor, gp's frozen layers): it equals the single as trained, and gives its recorded outputs."""
    from ntk_vs_nn.config import apply_overrides
    from ntk_vs_nn.protocols import Row
    from ntk_vs_nn.store import Store

    cfg = apply_overrides(tiny_cfg, ["protocol.members=2", "train.epochs=1"])
    row = Row(family, MODEL, cfg, tiny_data, Store(str(tmp_path / "s")))
    preds = row.single()
    root = rng.root_key(cfg.run.seed)
    fit = row.trainer.fit([rng.member_key(root, "init", i) for i in range(2)],
                          [rng.member_key(root, "data", i) for i in range(2)], tiny_data.x_train, tiny_data.y_train,
                          mode="sequential")  # fmt: skip
    for v, t, p in zip(fit.variables, row.teacher_variables([0, 1]), preds):
        for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(t)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_allclose(row.trainer.predict(t, tiny_data.x_train), p["train"], rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(fit.variables[0]) == jax.tree.structure(row.teacher_variables([0])[0])

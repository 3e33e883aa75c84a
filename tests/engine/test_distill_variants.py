"""Distillation from an ensemble as Nam et al. (2021) do it: the KD term on a perturbed input (the CE
term on the clean one), member-wise BatchEnsemble students, fast weights at half the learning rate."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntk_vs_nn import rng
from ntk_vs_nn.config import TrainConfig
from ntk_vs_nn.engine import steps
from ntk_vs_nn.engine import trainer as tr
from ntk_vs_nn.engine.losses import ensemble_logits
from ntk_vs_nn.engine.perturb import perturb
from ntk_vs_nn.families import network
from ntk_vs_nn.models import build_model

N, K, ALPHA, TAU = 16, 10, 0.7, 4.0
SCALE, OFFSET = 0.3, 0.2  # pixel space p = x * SCALE + OFFSET


@pytest.fixture(scope="module")
def data():
    x = jax.random.uniform(jax.random.key(0), (N, 8, 8, 1))
    x = (x - OFFSET) / SCALE  # standardised images whose pixels are in [0, 1]
    y = jnp.arange(N) % K
    return x, y


def _fam(name):
    return network(build_model(name, K, 2, norm="none"))


def _kl(t, s):
    lt, ls = jax.nn.log_softmax(t / TAU), jax.nn.log_softmax(s / TAU)
    return jnp.sum(jnp.exp(lt) * (lt - ls), -1)


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.broadcast_to(y, logits.shape[:-1]))


def _first_step(student, teachers, kind, memberwise, data, rule="probs"):
    """The trainer's loss of its first step (lr 0: the init params) and what it should be by hand."""
    x, y = data
    cfg = TrainConfig(optimizer="sgd", momentum=0.0, schedule="constant", lr=0.0, epochs=1, batch_size=N)
    fn = functools.partial(perturb, kind, tau=TAU, eta=0.05, scale=SCALE, offset=OFFSET, clip=(0.0, 1.0))
    t = tr.Trainer(student, cfg, N, teacher=_fam("PlainCNN-1-1"), teacher_rule=rule, perturb=fn, memberwise=memberwise)
    k_init, k_data = jax.random.key(5), jax.random.key(6)
    got = t.fit([k_init], [k_data], x, y, [teachers], ALPHA, TAU, mode="sequential").losses[0, 0]
    # by hand: the batch order and the step's perturbation key, as the trainer draws them
    ib = t._order([k_data], 0, N)[0, 0]
    xb, yb = x[ib], y[ib]
    key = jax.random.fold_in(jax.random.fold_in(steps._augment_key(k_data, 0), 0), rng.STEP_TAGS["perturb"])
    tfam = _fam("PlainCNN-1-1")
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *teachers)
    x_t = fn(key, xb, tfam.apply, stacked)
    outs = [tfam.apply(v, x_t) for v in teachers]
    v = student.init(k_init, x[:1])
    return float(got), (xb, yb, x_t, outs, v)


def test_the_kd_term_is_on_the_perturbed_input_and_the_ce_term_on_the_clean_one(data):
    tfam = _fam("PlainCNN-1-1")
    teachers = [tfam.init(jax.random.key(i), data[0][:1]) for i in (1, 2)]
    student = _fam("PlainCNN-1-1")
    got, (xb, yb, x_t, outs, v) = _first_step(student, teachers, "gaussian", False, data)
    assert not np.allclose(x_t, xb)
    ens = ensemble_logits(outs, "probs")
    expected = jnp.mean((1 - ALPHA) * _ce(student.apply(v, xb), yb) + ALPHA * TAU**2 * _kl(ens, student.apply(v, x_t)))
    assert got == pytest.approx(float(expected), rel=1e-5)
    # the bugs this catches: CE on the perturbed input, the student's KD term on the clean one
    wrong_ce = jnp.mean((1 - ALPHA) * _ce(student.apply(v, x_t), yb) + ALPHA * TAU**2 * _kl(ens, student.apply(v, x_t)))
    wrong_kd = jnp.mean((1 - ALPHA) * _ce(student.apply(v, xb), yb) + ALPHA * TAU**2 * _kl(ens, student.apply(v, xb)))
    assert abs(got - float(wrong_ce)) > 1e-4 and abs(got - float(wrong_kd)) > 1e-4


@pytest.mark.parametrize("kind", ["ods", "confods"])
def test_a_batchensemble_student_learns_member_i_from_teacher_i(data, kind):
    tfam = _fam("PlainCNN-1-1")
    teachers = [tfam.init(jax.random.key(i), data[0][:1]) for i in (1, 2)]
    student = _fam("BE2-PlainCNN-1-1")
    assert student.members == 2
    got, (xb, yb, x_t, outs, v) = _first_step(student, teachers, kind, True, data)
    clean, pert = student.apply_members(v, xb), student.apply_members(v, x_t)
    assert clean.shape == (2, N, K)
    member_ce = (1 - ALPHA) * _ce(clean, yb)
    expected = jnp.mean(member_ce + ALPHA * TAU**2 * _kl(jnp.stack(outs), pert))
    assert got == pytest.approx(float(expected), rel=1e-5)
    swapped = jnp.mean(member_ce + ALPHA * TAU**2 * _kl(jnp.stack(outs[::-1]), pert))
    assert abs(got - float(swapped)) > 1e-5
    # not member-wise: every member learns from the ensemble
    got_ens, _ = _first_step(student, teachers, kind, False, data)
    ens = ensemble_logits(outs, "probs")
    assert got_ens == pytest.approx(float(jnp.mean(member_ce + ALPHA * TAU**2 * _kl(ens, pert))), rel=1e-5)


def test_fast_weights_train_at_half_the_learning_rate_without_weight_decay(data):
    x, y = data
    fam = _fam("BE2-PlainCNN-1-1")
    lr, wd = 0.1, 0.01
    sgd = dict(optimizer="sgd", momentum=0.0, schedule="constant", epochs=1, batch_size=N)
    cfg = TrainConfig(lr=lr, weight_decay=wd, **sgd)
    t = tr.Trainer(fam, cfg, N)
    assert t.full_batch  # one step on the whole set in its order
    key = jax.random.key(3)
    after = t.fit([key], [key], x, y, mode="sequential").variables[0]["params"]
    v = fam.init(key, x[:1])
    grads = jax.grad(lambda p: jnp.mean(_ce(fam.apply_members({"params": p, "state": {}}, x), y)))(v["params"])
    paths = {jax.tree_util.keystr(k): a for k, a in jax.tree_util.tree_flatten_with_path(v["params"])[0]}
    new = {jax.tree_util.keystr(k): a for k, a in jax.tree_util.tree_flatten_with_path(after)[0]}
    g = {jax.tree_util.keystr(k): a for k, a in jax.tree_util.tree_flatten_with_path(grads)[0]}
    fast = [p for p in paths if "fast_in" in p or "fast_out" in p]
    assert fast and len(fast) < len(paths)
    for p in paths:
        if p in fast:
            np.testing.assert_allclose(new[p] - paths[p], -0.5 * lr * g[p], rtol=1e-4, atol=1e-6)
        else:
            np.testing.assert_allclose(new[p] - paths[p], -lr * (g[p] + wd * paths[p]), rtol=1e-4, atol=1e-6)


def test_perturbed_or_memberwise_distillation_needs_an_online_teacher():
    cfg = TrainConfig(epochs=1)
    with pytest.raises(ValueError, match="online teacher"):
        tr.Trainer(_fam("PlainCNN-1-1"), cfg, 8, perturb=lambda *a: a[1])
    with pytest.raises(ValueError, match="BatchEnsemble"):
        tr.Trainer(_fam("PlainCNN-1-1"), cfg, 8, teacher=_fam("PlainCNN-1-1"), memberwise=True)

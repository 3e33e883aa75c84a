"""The input perturbations of Nam et al. 2021 (`ntk_vs_nn.engine.perturb`): the ODS direction is the normalised
pixel-space gradient of <w, softmax(T(x) / tau)>, ConfODS scales it by the confidence, the Gaussian step is N(0, 1)
in pixel space, clipping and eta = 0 behave, the chosen teacher is honoured, and jit and keys are deterministic."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_vs_nn.config import UserError
from ntk_vs_nn.engine import perturb as pt

K, M, TAU = 4, 3, 2.0


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(K)(jnp.tanh(nn.Dense(16)(x)))


class ConvNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(4, (3, 3))(x))
        return nn.Dense(K)(x.reshape(x.shape[0], -1))


def teachers(model: nn.Module, x: jax.Array, seed: int = 0):
    """M teachers with different params, stacked on a leading axis."""
    return jax.vmap(lambda k: model.init(k, x[:1]))(jax.random.split(jax.random.key(seed), M))


def teacher(params, m: int):
    return jax.tree.map(lambda a: a[m], params)


def signals(n: int = 6, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.RandomState(seed).randn(n, 10, 1), jnp.float32)


def images(n: int = 6, seed: int = 0) -> jax.Array:
    """Normalised images whose pixels (x * 0.25 + 0.5) lie in [0.05, 0.95]."""
    p = np.random.RandomState(seed).uniform(0.05, 0.95, (n, 8, 8, 1))
    return jnp.asarray((p - 0.5) / 0.25, jnp.float32)


def pixels(x, scale=0.25, offset=0.5):
    return np.asarray(x) * scale + offset


def reference_direction(key, x, apply, params_m, scale, offset):
    """The normalised pixel-space gradient, one example at a time, and the input-space gradient."""
    w = np.asarray(pt.ods_weights(key, x.shape[0], K))
    g_in = []
    for b in range(x.shape[0]):
        f = lambda xe: jnp.dot(w[b], jax.nn.softmax(apply(params_m, xe[None])[0] / TAU))
        g_in.append(np.asarray(jax.grad(f)(x[b]), np.float64))
    g_in = np.stack(g_in)
    g_px = g_in / np.broadcast_to(np.asarray(scale, np.float64), g_in.shape)  # dx/dp = 1/scale
    d = np.prod(x.shape[1:])

    def normalise(g):
        return g * np.sqrt(d) / np.linalg.norm(g.reshape(len(g), -1), axis=1).reshape((-1,) + (1,) * (g.ndim - 1))

    return normalise(g_px), normalise(g_in)


# -- the ODS direction ------------------------------------------------------------------------------
def test_ods_direction_is_the_normalised_per_example_gradient_in_pixel_space():
    x = signals()
    model = MLP()
    params = teacher(teachers(model, x), 1)
    key = jax.random.key(5)
    direction, max_prob = pt.ods_direction(key, x, model.apply, params, TAU)
    want, _ = reference_direction(key, x, model.apply, params, 1.0, 0.0)
    np.testing.assert_allclose(direction, want, rtol=1e-4, atol=1e-5)
    probs = jax.nn.softmax(model.apply(params, x) / TAU)
    np.testing.assert_allclose(max_prob, np.max(probs, axis=-1), rtol=1e-6)
    # a per-position scale: the pixel-space gradient is the input-space one divided by it (chain rule)
    scale = jnp.asarray(np.linspace(0.2, 2.0, 10).reshape(10, 1), jnp.float32)
    offset = 0.3
    direction, _ = pt.ods_direction(key, x, model.apply, params, TAU, scale, offset)
    want_px, want_in = reference_direction(key, x, model.apply, params, scale, offset)
    np.testing.assert_allclose(direction, want_px, rtol=1e-4, atol=1e-5)
    assert not np.allclose(direction, want_in, rtol=1e-2, atol=1e-2)  # not the input-space gradient


def test_ods_direction_has_norm_sqrt_d_per_example_and_a_zero_gradient_is_not_nan():
    x = images()
    model = ConvNet()
    params = teacher(teachers(model, x), 0)
    direction, _ = pt.ods_direction(jax.random.key(1), x, model.apply, params, TAU, 0.25, 0.5)
    norms = np.linalg.norm(np.asarray(direction, np.float64).reshape(6, -1), axis=1)
    np.testing.assert_allclose(norms, np.sqrt(64), rtol=1e-4)
    zero = jax.tree.map(jnp.zeros_like, params)  # constant logits: the gradient is exactly 0
    direction, max_prob = pt.ods_direction(jax.random.key(1), x, model.apply, zero, TAU, 0.25, 0.5)
    assert np.all(np.isfinite(direction)) and np.all(np.asarray(direction) == 0)
    np.testing.assert_allclose(max_prob, 1 / K, rtol=1e-6)


# -- perturb --------------------------------------------------------------------------------------------
def test_confods_step_is_the_ods_step_times_the_chosen_teachers_confidence():
    x = images()
    model = ConvNet()
    params = teachers(model, x)
    kw = dict(tau=TAU, eta=0.1, scale=0.25, offset=0.5)
    for seed in range(4):
        key = jax.random.key(seed)
        ods = pixels(pt.perturb("ods", key, x, model.apply, params, **kw)) - pixels(x)
        conf = pixels(pt.perturb("confods", key, x, model.apply, params, **kw)) - pixels(x)
        k_m, k_w, _ = pt.perturb_keys(key)
        m = int(pt.choose_teacher(k_m, M))
        _, max_prob = pt.ods_direction(k_w, x, model.apply, teacher(params, m), TAU, 0.25, 0.5)
        assert np.all(np.asarray(max_prob) < 0.999)  # a factor that changes the step
        np.testing.assert_allclose(conf, ods * np.asarray(max_prob)[:, None, None, None], rtol=1e-3, atol=1e-6)


def test_gaussian_step_is_standard_normal_in_pixel_space_and_clipped():
    x = images(n=32)
    model = ConvNet()
    params = teachers(model, x)
    eta = 0.05
    out = pt.perturb("gaussian", jax.random.key(0), x, model.apply, params, tau=TAU, eta=eta, scale=0.25, offset=0.5)
    z = (np.asarray(out) - np.asarray(x)) * 0.25 / eta
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1
    out = pt.perturb(
        "gaussian", jax.random.key(0), x, model.apply, params, tau=TAU, eta=0.5, scale=0.25, offset=0.5, clip=(0, 1)
    )
    p = pixels(out)
    assert p.min() >= -1e-6 and p.max() <= 1 + 1e-6
    assert np.mean(np.isclose(p, 0, atol=1e-6)) > 0.05 and np.mean(np.isclose(p, 1, atol=1e-6)) > 0.05


@pytest.mark.parametrize("kind", ["ods", "confods"])
def test_ods_kinds_clip_in_pixel_space_and_eta_zero_is_the_identity(kind):
    x = images()
    model = ConvNet()
    params = teachers(model, x)
    kw = dict(tau=TAU, scale=0.25, offset=0.5)
    p = pixels(pt.perturb(kind, jax.random.key(2), x, model.apply, params, eta=1.0, clip=(0.0, 1.0), **kw))
    assert p.min() >= -1e-6 and p.max() <= 1 + 1e-6
    assert np.any(np.isclose(p, 0, atol=1e-6)) and np.any(np.isclose(p, 1, atol=1e-6))
    for k in pt.KINDS:
        out = pt.perturb(k, jax.random.key(2), x, model.apply, params, eta=0.0, clip=(0.0, 1.0), **kw)
        np.testing.assert_allclose(out, x, rtol=1e-5, atol=1e-5)


def test_keys_are_deterministic_and_choose_different_teachers_and_weights():
    x = signals()
    model = MLP()
    params = teachers(model, x)
    kw = dict(tau=TAU, eta=0.1)
    a = pt.perturb("ods", jax.random.key(0), x, model.apply, params, **kw)
    np.testing.assert_array_equal(a, pt.perturb("ods", jax.random.key(0), x, model.apply, params, **kw))
    assert not np.allclose(a, pt.perturb("ods", jax.random.key(1), x, model.apply, params, **kw))
    streams = [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in pt.perturb_keys(jax.random.key(0))]
    assert len(set(streams)) == 3  # m, w and the noise are independent streams
    chosen = {int(pt.choose_teacher(pt.perturb_keys(jax.random.key(s))[0], M)) for s in range(20)}
    assert len(chosen) > 1 and chosen <= set(range(M))
    w = [np.asarray(pt.ods_weights(pt.perturb_keys(jax.random.key(s))[1], 6, K)) for s in range(2)]
    assert not np.allclose(w[0], w[1]) and np.all(np.abs(w[0]) <= 1) and w[0].min() < 0 < w[0].max()
    g = [np.asarray(pt.perturb("gaussian", jax.random.key(s), x, model.apply, params, **kw)) for s in (0, 0, 1)]
    np.testing.assert_array_equal(g[0], g[1])
    assert not np.allclose(g[0], g[2])


def test_perturb_uses_the_chosen_teacher():
    x = signals()
    model = MLP()
    params = teachers(model, x)
    eta, scale, offset = 0.1, 0.5, 0.2
    seen = set()
    for seed in range(8):
        key = jax.random.key(seed)
        out = pt.perturb("ods", key, x, model.apply, params, tau=TAU, eta=eta, scale=scale, offset=offset)
        step = (np.asarray(out) * scale + offset - (np.asarray(x) * scale + offset)) / eta
        k_m, k_w, _ = pt.perturb_keys(key)
        m = int(pt.choose_teacher(k_m, M))
        seen.add(m)
        dirs = [
            np.asarray(pt.ods_direction(k_w, x, model.apply, teacher(params, j), TAU, scale, offset)[0])
            for j in range(M)
        ]
        np.testing.assert_allclose(step, dirs[m], rtol=1e-3, atol=1e-4)
        for j in range(M):
            if j != m:
                assert not np.allclose(step, dirs[j], rtol=1e-2, atol=1e-2), (seed, m, j)
    assert len(seen) > 1


@pytest.mark.parametrize("kind", pt.KINDS)
def test_jitted_perturb_equals_eager(kind):
    x = images()
    model = ConvNet()
    params = teachers(model, x)
    scale = jnp.full((1,), 0.25, jnp.float32)  # arrays broadcastable to x are traced arguments
    kw = dict(tau=TAU, eta=0.05, scale=scale, offset=0.5, clip=(0.0, 1.0))
    eager = pt.perturb(kind, jax.random.key(3), x, model.apply, params, **kw)
    jitted = jax.jit(pt.perturb, static_argnames=("kind", "teacher_apply"))
    np.testing.assert_allclose(
        jitted(kind, jax.random.key(3), x, model.apply, params, **kw), eager, rtol=1e-5, atol=1e-5
    )
    bound = jax.jit(functools.partial(pt.perturb, kind, teacher_apply=model.apply))
    out = bound(jax.random.key(3), x, teacher_params=params, **kw)
    np.testing.assert_allclose(out, eager, rtol=1e-5, atol=1e-5)


def test_unknown_kind_is_a_user_error_listing_the_kinds():
    x = signals()
    with pytest.raises(UserError, match="none, gaussian, ods, confods"):
        pt.perturb("fgsm", jax.random.key(0), x, MLP().apply, teachers(MLP(), x), tau=1.0, eta=0.1)

"""Multi-view data generator, smoothed ReLU and the theory's learner (ntk_vs_nn.multiview)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_vs_nn import multiview as mv

# Small enough to sample fast, large enough for tight statistics; n_other * patches fit in P.
GEN_CFG = mv.MultiViewConfig(k=10, d=100, P=12, n_train=4000, n_test=100)


@pytest.fixture(scope="module")
def generated():
    """Noise-free and noisy draws from the same key (the noise is added last, so signals match)."""
    cfg0 = dataclasses.replace(GEN_CFG, sigma_p=0.0)
    kf, ks = jax.random.split(jax.random.key(0))
    feats = mv.make_features(kf, GEN_CFG)
    clean = mv.sample(ks, cfg0, feats, GEN_CFG.n_train, GEN_CFG.mu)
    noisy = mv.sample(ks, GEN_CFG, feats, GEN_CFG.n_train, GEN_CFG.mu)
    return feats, clean, noisy


def _recovered_weights(x, feats):
    """Per-feature weight read off the inputs: sum over patches of <x_p, v_{j,l}> (exact without noise)."""
    return np.asarray(jnp.einsum("npd,jld->njl", x, feats))


def test_features_orthonormal():
    feats = mv.make_features(jax.random.key(3), mv.MultiViewConfig())
    f = np.asarray(feats).reshape(-1, 400)
    assert f.shape == (20, 400)
    np.testing.assert_allclose(f @ f.T, np.eye(20), atol=1e-5)


def test_shapes_and_dtypes(generated):
    _, clean, _ = generated
    n, cfg = GEN_CFG.n_train, GEN_CFG
    assert clean["x"].shape == (n, cfg.P, cfg.d) and clean["x"].dtype == jnp.float32
    assert clean["y"].shape == (n,) and clean["is_single_view"].dtype == jnp.bool_
    view, sv = np.asarray(clean["view"]), np.asarray(clean["is_single_view"])
    assert np.all(view[~sv] == -1) and set(np.unique(view[sv])) == {0, 1}


def test_single_view_fraction_matches_mu(generated):
    _, clean, _ = generated
    frac, n, mu = float(np.mean(clean["is_single_view"])), GEN_CFG.n_train, GEN_CFG.mu
    assert abs(frac - mu) < 4 * np.sqrt(mu * (1 - mu) / n), frac


def test_recorded_weights_are_what_is_in_x(generated):
    feats, clean, _ = generated
    np.testing.assert_allclose(_recovered_weights(clean["x"], feats), np.asarray(clean["weights"]), atol=1e-4)


def test_own_other_and_weak_weights(generated):
    feats, clean, _ = generated
    w = _recovered_weights(clean["x"], feats)  # (n, k, 2)
    y, sv, view = (np.asarray(clean[k]) for k in ("y", "is_single_view", "view"))
    n, cfg, tol = len(y), GEN_CFG, 1e-4
    own = w[np.arange(n), y]  # (n, 2)
    other = w.copy()
    other[np.arange(n), y] = 0.0
    # multi-view: both own features in [1, 1.5]; other-class features in (0, 0.4], n_other of them
    assert np.all(own[~sv] >= cfg.own_low - tol) and np.all(own[~sv] <= cfg.own_high + tol)
    o_mv = other[~sv].reshape(int((~sv).sum()), -1)
    assert np.all(o_mv <= cfg.other_high + tol)
    assert np.all((o_mv > tol).sum(axis=1) == cfg.n_other)
    # single-view: the strong view in [1, 1.5], the weak one exactly rho, other-class features at gamma
    strong = own[sv, view[sv]]
    weak = own[sv, 1 - view[sv]]
    assert np.all(strong >= cfg.own_low - tol) and np.all(strong <= cfg.own_high + tol)
    np.testing.assert_allclose(weak, cfg.rho, atol=tol)
    o_sv = other[sv].reshape(int(sv.sum()), -1)
    np.testing.assert_allclose(o_sv[o_sv > tol], cfg.gamma, atol=tol)
    assert np.all((o_sv > tol).sum(axis=1) == cfg.n_other)


def test_feature_patches_are_disjoint_and_counted(generated):
    feats, clean, _ = generated
    per_patch = np.abs(np.asarray(jnp.einsum("npd,jld->npjl", clean["x"], feats))) > 1e-5
    n_feat_in_patch = per_patch.reshape(per_patch.shape[0], GEN_CFG.P, -1).sum(axis=2)
    assert n_feat_in_patch.max() == 1  # no patch mixes two features
    expected = (2 + GEN_CFG.n_other) * GEN_CFG.patches_per_feature
    assert np.all(n_feat_in_patch.sum(axis=1) == expected)


def test_patch_noise_std(generated):
    _, clean, noisy = generated
    noise = np.asarray(noisy["x"] - clean["x"])
    assert abs(noise.std() - 1 / np.sqrt(GEN_CFG.d)) < 0.02 / np.sqrt(GEN_CFG.d)


VARRHO, Q = 0.1, 3


def _reference(z):
    if z <= 0:
        return 0.0
    if z <= VARRHO:
        return z**Q / (Q * VARRHO ** (Q - 1))
    return z - (1 - 1 / Q) * VARRHO


def test_smoothed_relu_piecewise_values():
    zs = np.array([-1.0, -0.01, 0.0, 0.02, 0.05, 0.1, 0.1001, 0.5, 3.0], dtype=np.float32)
    got = np.asarray(mv.smoothed_relu(jnp.asarray(zs), VARRHO, Q))
    np.testing.assert_allclose(got, [_reference(float(z)) for z in zs], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("point", [0.0, VARRHO])
def test_smoothed_relu_is_c1(point):
    f = lambda z: mv.smoothed_relu(z, VARRHO, Q)
    g = jax.grad(f)
    eps = 1e-4
    left, right = float(f(point - eps)), float(f(point + eps))
    assert abs(left - right) < 1e-3  # value continuous
    gl, gr = float(g(jnp.float32(point - eps))), float(g(jnp.float32(point + eps)))
    assert abs(gl - gr) < 1e-2  # derivative continuous
    assert float(g(jnp.float32(VARRHO / 2))) == pytest.approx((0.5) ** (Q - 1), rel=1e-5)
    assert float(g(jnp.float32(2.0))) == pytest.approx(1.0)


def test_kd_loss_matches_formula():
    cfg = mv.MultiViewConfig(k=3, d=20, P=8, m=2)
    kf, ks, kw = jax.random.split(jax.random.key(5), 3)
    data = mv.sample(ks, cfg, mv.make_features(kf, cfg), 16, cfg.mu)
    W = mv.init(kw, cfg) * 20
    ce = mv.loss(W, data["x"], data["y"], cfg)
    own = mv.logits(W, data["x"], cfg)
    assert float(mv.loss(W, data["x"], data["y"], cfg, own, alpha=0.0, tau=3.0)) == pytest.approx(float(ce), rel=1e-5)
    assert float(mv.loss(W, data["x"], data["y"], cfg, own, alpha=1.0, tau=3.0)) == pytest.approx(0.0, abs=1e-5)
    # against the formula, with a teacher that differs from the student
    teacher = own[:, ::-1] * 2.0
    a, tau = 0.3, 3.0
    pt = np.asarray(jax.nn.softmax(teacher / tau))
    log_ps = np.asarray(jax.nn.log_softmax(own / tau))
    kl = float(np.mean(np.sum(pt * (np.log(pt) - log_ps), axis=1)))
    want = (1 - a) * float(ce) + a * tau**2 * kl
    assert kl > 1e-3
    assert float(mv.loss(W, data["x"], data["y"], cfg, teacher, alpha=a, tau=tau)) == pytest.approx(want, rel=1e-4)


def test_tiny_run_learns_a_view_per_class_and_classifies_multi_view():
    cfg = mv.MultiViewConfig(k=3, d=60, P=8, n_train=200, n_test=400, steps=300, sigma0=0.05)
    kf, ktr, kte, kw = jax.random.split(jax.random.key(0), 4)
    feats = mv.make_features(kf, cfg)
    tr = mv.sample(ktr, cfg, feats, cfg.n_train, cfg.mu)
    te = mv.sample(kte, cfg, feats, cfg.n_test, cfg.mu)
    init_views, _ = mv.learned_views(mv.init(kw, cfg), feats)
    W = mv.train(kw, cfg, tr)
    views, winner = mv.learned_views(W, feats)
    assert views.shape == (3, 2) and winner.shape == (3,)
    assert float(jnp.abs(init_views).max()) < 0.25
    assert float(views.max(axis=1).min()) > 0.5  # every class learned at least one view
    np.testing.assert_array_equal(np.asarray(winner), np.asarray(jnp.argmax(views, axis=1)))
    pred = jnp.argmax(mv.logits(W, te["x"], cfg), axis=1)
    mv_acc = float((pred == te["y"])[~te["is_single_view"]].mean())
    assert mv_acc > 0.95, mv_acc

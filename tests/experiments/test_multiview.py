"""Multi-view data generator, smoothed ReLU, the theory's learner and its kernel contrast on the shared
engine (cross-checked against plain GD), the experiment end to end (store, resume, write)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.config import UserError
from ntk_vs_nn.data import multiview as dmv
from ntk_vs_nn.engine.losses import distill_loss
from ntk_vs_nn.engine.optim import lambda_max
from ntk_vs_nn.experiments import multiview as mv
from ntk_vs_nn.experiments import run_experiment
from ntk_vs_nn.models import multiview as mmv
from ntk_vs_nn.protocols import units as punits
from ntk_vs_nn.report import multiview as rmv
from ntk_vs_nn.store import Store, unit_id

# Small enough to sample fast, large enough for tight statistics; (2 + n_other) * patches fit in P.
GEN_CFG = dmv.MultiViewData(k=10, d=100, P=12, n_train=4000, n_test=100)


@pytest.fixture(scope="module")
def generated():
    """Noise-free and noisy draws from the same key (the noise is added last, so signals match)."""
    cfg0 = dataclasses.replace(GEN_CFG, noise=0.0, feature_noise=0.0)
    kf, ks = jax.random.split(jax.random.key(0))
    feats = dmv.make_features(kf, GEN_CFG)
    clean = dmv.sample(ks, cfg0, feats, GEN_CFG.n_train, GEN_CFG.mu)
    noisy = dmv.sample(ks, GEN_CFG, feats, GEN_CFG.n_train, GEN_CFG.mu)
    return feats, clean, noisy


def _recovered_weights(x, feats):
    """Per-feature weight read off the inputs: sum over patches of <x_p, v_{j,l}> (exact without noise)."""
    return np.asarray(jnp.einsum("npd,jld->njl", x, feats))


def test_features_orthonormal():
    cfg = dmv.MultiViewData()
    f = np.asarray(dmv.make_features(jax.random.key(3), cfg)).reshape(-1, cfg.d)
    assert f.shape == (2 * cfg.k, cfg.d)
    np.testing.assert_allclose(f @ f.T, np.eye(2 * cfg.k), atol=1e-5)


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
    # the strong view of single-view samples is a fair coin
    view = np.asarray(clean["view"])[np.asarray(clean["is_single_view"])]
    assert abs(view.mean() - 0.5) < 4 * np.sqrt(0.25 / len(view))


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
    # multi-view: both own features in [own_low, own_high]; n_other other-class features in [0.2, 0.4]
    assert np.all(own[~sv] >= cfg.own_low - tol) and np.all(own[~sv] <= cfg.own_high + tol)
    assert own[~sv].max() > cfg.own_high - 0.05 and own[~sv].min() < cfg.own_low + 0.05  # the range is used
    o_mv = other[~sv].reshape(int((~sv).sum()), -1)
    present = o_mv[o_mv > tol]
    assert present.min() >= cfg.other_low - tol and present.max() <= cfg.other_high + tol
    assert np.all((o_mv > tol).sum(axis=1) == cfg.n_other)
    # single-view: the strong view in range, the weak one exactly rho, other-class features at gamma
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
    np.testing.assert_array_equal(n_feat_in_patch == 1, np.asarray(clean["feature_patch"]))


def test_patch_noise_levels(generated):
    _, clean, noisy = generated
    noise = np.asarray(noisy["x"] - clean["x"])
    fp = np.asarray(clean["feature_patch"])
    d = GEN_CFG.d
    for mask, norm in ((fp, GEN_CFG.feature_noise), (~fp, GEN_CFG.noise)):
        std = noise[mask].std()
        assert abs(std - norm / np.sqrt(d)) < 0.02 * norm / np.sqrt(d), (std, norm)


def _reference(z, varrho, q):
    if z <= 0:
        return 0.0
    if z <= varrho:
        return z**q / (q * varrho ** (q - 1))
    return z - (1 - 1 / q) * varrho


@pytest.mark.parametrize("varrho,q", [(0.1, 3), (4.0, 3), (1.0, 4)])
def test_smoothed_relu_piecewise_values(varrho, q):
    zs = np.array([-1.0, -0.01, 0.0, 0.2, 0.5, 1.0, 1.001, 5.0, 30.0], dtype=np.float32) * varrho
    got = np.asarray(mmv.smoothed_relu(jnp.asarray(zs), varrho, q))
    np.testing.assert_allclose(got, [_reference(float(z), varrho, q) for z in zs], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("varrho,q", [(0.1, 3), (4.0, 3), (1.0, 4)])
@pytest.mark.parametrize("where", [0.0, 1.0])  # the thresholds 0 and varrho
def test_smoothed_relu_is_c1(varrho, q, where):
    point = where * varrho
    f = lambda z: mmv.smoothed_relu(z, varrho, q)  # noqa: E731
    g = jax.grad(f)
    eps = 1e-4 * varrho
    left, right = float(f(jnp.float32(point - eps))), float(f(jnp.float32(point + eps)))
    assert abs(left - right) < 1e-3 * varrho  # value continuous
    gl, gr = float(g(jnp.float32(point - eps))), float(g(jnp.float32(point + eps)))
    assert abs(gl - gr) < 1e-2  # derivative continuous
    assert float(g(jnp.float32(varrho / 2))) == pytest.approx(0.5 ** (q - 1), rel=1e-5)  # (z/varrho)^(q-1)
    assert float(g(jnp.float32(3 * varrho))) == pytest.approx(1.0)


@pytest.mark.parametrize("varrho,q", [(0.1, 3), (4.0, 3), (1.0, 4)])
def test_smoothed_relu_grad_is_its_derivative(varrho, q):
    zs = jnp.asarray((np.linspace(-0.5, 2.5, 61) + 0.0123) * varrho, jnp.float32)  # off the kinks
    want = jax.vmap(jax.grad(lambda z: mmv.smoothed_relu(z, varrho, q)))(zs)
    np.testing.assert_allclose(mmv.smoothed_relu_grad(zs, varrho, q), want, rtol=1e-5, atol=1e-7)
    at = mmv.smoothed_relu_grad(jnp.asarray([0.0, varrho], jnp.float32), varrho, q)
    np.testing.assert_allclose(at, [0.0, 1.0])  # the C^1 derivative at the thresholds


def _cfg(data=None, learner=None, **protocol):
    """A MultiViewConfig from section overrides (data / learner dicts, protocol keywords)."""
    base = mv.MultiViewConfig()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, **(data or {})),
        learner=dataclasses.replace(base.learner, **(learner or {})),
        protocol=dataclasses.replace(base.protocol, **protocol),
    )


def _logits(cfg, W, x):
    return mv.learner_family("nn", cfg).apply({"params": {"W": W}, "state": {}}, x)


def test_kd_loss_matches_formula():
    cfg = _cfg(dict(k=3, d=20, P=8, n_other=2), dict(m=2, varrho=0.1))
    kf, ks, kw = jax.random.split(jax.random.key(5), 3)
    data = dmv.sample(ks, cfg.data, dmv.make_features(kf, cfg.data), 16, cfg.data.mu)
    x, y = data["x"], data["y"]
    W = mmv.PatchNet(3, 2, 0.1, 3, cfg.learner.sigma0).draw(kw, x)["W"] * 20
    loss = jax.jit(lambda W, t, a, tau: distill_loss(_logits(cfg, W, x), y, t, a, tau))  # the engine's loss
    own = jax.jit(lambda W: _logits(cfg, W, x))(W)
    ce = optax.softmax_cross_entropy_with_integer_labels(own, y).mean()
    assert float(loss(W, own, 0.0, 3.0)) == pytest.approx(float(ce), rel=1e-5)
    assert float(loss(W, own, 1.0, 3.0)) == pytest.approx(0.0, abs=1e-5)
    teacher = own[:, ::-1] * 2.0
    a, tau = 0.3, 3.0
    pt = np.asarray(jax.nn.softmax(teacher / tau))
    log_ps = np.asarray(jax.nn.log_softmax(own / tau))
    kl = float(np.mean(np.sum(pt * (np.log(pt) - log_ps), axis=1)))
    want = (1 - a) * float(ce) + a * tau**2 * kl
    assert kl > 1e-3
    assert float(loss(W, teacher, a, tau)) == pytest.approx(want, rel=1e-4)


TINY = _cfg(dict(k=3, d=30, P=8, n_train=150, n_test=600, n_other=2), dict(steps=400))


@pytest.fixture(scope="module")
def tiny():
    data = dmv.draw_data(TINY.data, 0)
    trainer = mv._trainer("nn", TINY, {})
    model, _ = mv.fit_one(trainer, jax.random.key(0), data["train"]["x"], data["train"]["y"])
    return data, model["params"]["W"]


def test_tiny_run_learns_a_view_per_class_and_classifies_multi_view(tiny):
    data, W = tiny
    feats, te = data["features"], data["test"]
    W0 = mv.learner_family("nn", TINY).init(jax.random.key(0), te["x"][:1])["params"]["W"]
    init_views, _ = mv.learned_views(W0, feats)
    views, winner = mv.learned_views(W, feats)
    assert views.shape == (3, 2) and winner.shape == (3,)
    thr = mv.view_threshold(TINY)
    assert float(jnp.abs(init_views).max()) < 0.1 * thr  # started far below the threshold
    assert float(views.max(axis=1).min()) >= thr  # every class learned at least one view
    np.testing.assert_array_equal(np.asarray(winner), np.asarray(jnp.argmax(views, axis=1)))
    pred = jnp.argmax(_logits(TINY, W, te["x"]), axis=1)
    mv_acc = float((pred == te["y"])[~te["is_single_view"]].mean())
    assert mv_acc > 0.95, mv_acc


def test_ntk_is_the_linearisation_and_gp_starts_at_zero(tiny):
    data, _ = tiny
    x = data["train"]["x"][:20]
    ntk, gp = mv.learner_family("ntk", TINY), mv.learner_family("gp", TINY)
    W0 = mv.learner_family("nn", TINY).init(jax.random.key(1), x)["params"]["W"]
    v = ntk.init(jax.random.key(1), x)
    np.testing.assert_allclose(ntk.apply(v, x), _logits(TINY, W0, x), rtol=1e-5)
    delta = 0.01 * jax.random.normal(jax.random.key(2), W0.shape)
    lin = ntk.apply({"params": {"W": W0 + delta}, "state": v["state"]}, x)
    f0, df = jax.jvp(lambda W: _logits(TINY, W, x), (W0,), (delta,))
    np.testing.assert_allclose(lin, f0 + df, rtol=1e-4, atol=1e-6)
    g = gp.init(jax.random.key(1), x)
    assert g["state"]["frozen"]["features"].shape == (TINY.learner.gp_width, TINY.data.d)
    np.testing.assert_array_equal(gp.apply(g, x), 0.0)


def _features(g, x, cfg):
    U = g["state"]["frozen"]["features"]
    return mmv.smoothed_relu(jnp.einsum("npd,rd->npr", x, U), cfg.learner.varrho, cfg.learner.q).sum(axis=1)


def test_lambda_max_matches_eigh_for_gp(tiny):
    data, _ = tiny
    x = data["train"]["x"]
    gp = mv.learner_family("gp", TINY)
    g = gp.init(jax.random.key(3), x[:1])
    phi = _features(g, x, TINY)
    lam = float(lambda_max(gp, g, x, iters=200))
    want = float(np.linalg.eigvalsh(np.asarray(phi.T @ phi, np.float64) / phi.shape[0])[-1])
    assert lam == pytest.approx(want, rel=1e-3)


# -- the shared engine against plain GD (the loop the learner had before it used the engine) ------------
XC = _cfg(dict(k=3, d=12, P=6, n_train=40, n_test=40, n_other=2), dict(m=2, steps=25, gp_width=32))


def _reference_gd(f, p0, x, y, lr, steps, teacher=None, alpha=0.0, tau=1.0):
    """``steps`` steps of p <- p - lr grad L(p), L = mean CE (or the distillation loss), on the full batch."""

    def loss(p):
        s = f(p, x)
        if teacher is None:
            return optax.softmax_cross_entropy_with_integer_labels(s, y).mean()
        ce = optax.softmax_cross_entropy_with_integer_labels(s, y)
        lt, ls = jax.nn.log_softmax(teacher / tau), jax.nn.log_softmax(s / tau)
        return jnp.mean((1 - alpha) * ce + alpha * tau**2 * jnp.sum(jnp.exp(lt) * (lt - ls), -1))

    step = jax.jit(lambda p: p - lr * jax.grad(loss)(p))
    for _ in range(steps):
        p0 = step(p0)
    return p0


def _reference_heavy_ball(f, p0, x, y, lr, momentum, steps):
    """``steps`` heavy-ball steps on mean CE: v <- momentum v + grad L(p), p <- p - lr v (optax.sgd's trace)."""
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(f(p, x), y).mean()  # noqa: E731
    step = jax.jit(lambda p, v: (p - lr * (momentum * v + jax.grad(loss)(p)), momentum * v + jax.grad(loss)(p)))
    v = jnp.zeros_like(p0)
    for _ in range(steps):
        p0, v = step(p0, v)
    return p0


def test_kernel_rows_train_with_their_momentum_and_steps():
    """``learner.kernel_momentum`` and ``kernel_steps`` reach ntk and gp (not nn): gp's head equals heavy-ball
    GD at 1 / lambda_max for ``kernel_steps`` steps, and differs from plain GD for ``learner.steps``."""
    cfg = dataclasses.replace(XC, learner=dataclasses.replace(XC.learner, kernel_momentum=0.9, kernel_steps=40))
    assert mv._trainer("nn", cfg, {}).cfg.epochs == cfg.learner.steps == 25
    assert mv._trainer("nn", cfg, {}).cfg.momentum == 0.0 and mv._trainer("ntk", cfg, {}).cfg.momentum == 0.9
    data = dmv.draw_data(cfg.data, 1)
    x, y, key = data["train"]["x"], data["train"]["y"], jax.random.key(4)
    trainer = mv._trainer("gp", cfg, {})
    got, _ = mv.fit_one(trainer, key, x, y)
    v0 = trainer.family.init(key, x[:1])
    phi = _features(v0, x, cfg)
    lam = np.linalg.eigvalsh(np.asarray(phi.T @ phi, np.float64) / len(x))[-1]
    f = lambda A, x: _features(v0, x, cfg) @ A.T  # noqa: E731
    A0 = jnp.zeros((3, cfg.learner.gp_width))
    want = _reference_heavy_ball(f, A0, x, y, 1 / lam, 0.9, 40)
    np.testing.assert_allclose(got["params"]["head"]["kernel"], want, rtol=2e-3, atol=1e-6)
    plain = _reference_gd(f, A0, x, y, 1 / lam, 25)
    assert float(jnp.abs(want - plain).max()) > 100 * float(jnp.abs(got["params"]["head"]["kernel"] - want).max())


def test_kernel_budget_at_neutral_keeps_the_hash():
    """kernel_momentum = 0 and kernel_steps = 0 (or = steps) are today's plain GD: the hash (and so every
    recorded unit's name) is unchanged; any other value changes it, as do the nets' own settings."""
    base = mv.default()
    same = [["learner.kernel_momentum=0"], ["learner.kernel_steps=0"], ["learner.kernel_steps=1500"],
            ["protocol.draws=4"]]  # fmt: skip
    for sets in same:
        cfg = mv.EXPERIMENT.configure("default", sets)
        assert cfg.science_hash() == base.science_hash() and cfg.science_hash(0.2, False) == base.science_hash(
            0.2, False
        )
    other = [["learner.kernel_momentum=0.9"], ["learner.kernel_steps=4000"], ["learner.steps=1000"],
             ["learner.steps=1000", "learner.kernel_steps=1500"]]  # fmt: skip
    hashes = {mv.EXPERIMENT.configure("default", sets).science_hash() for sets in other}
    assert len(hashes) == len(other) and base.science_hash() not in hashes


def test_draw_d_is_the_run_of_seed_plus_d():
    """Data draw d trains exactly the units (names, data, inits) of ``--set protocol.seed=SEED+d``; the
    main point runs on every draw, the sweep on draw 0 only."""
    cfg = mv.EXPERIMENT.configure("smoke", ["protocol.draws=3", "protocol.seed=7"])
    runs = cfg.runs()
    assert [(dc.protocol.seed, mu) for dc, mu, *_ in runs] == [(7, 0.1), (8, 0.1), (9, 0.1), (7, 0.1), (7, 0.2)]
    for d in range(3):
        alone = mv.EXPERIMENT.configure("smoke", [f"protocol.seed={7 + d}"])
        dc = runs[d][0]
        assert dc.science_hash() == alone.science_hash() and dc.protocol.seed == alone.protocol.seed
        assert mv.units(dc, 0.1, *runs[d][2:]) == mv.units(alone, 0.1, *alone.points()[0][1:])
    assert len({mv.units(dc, 0.1, *rest)[0][0] for dc, _, *rest in runs[:3]}) == 3  # three different hashes
    one = mv.EXPERIMENT.configure("smoke")
    assert [(dc, mu) for dc, mu, *_ in one.runs()] == [(one, mu) for mu, *_ in one.points()]


@pytest.mark.parametrize("family", ["nn", "nn-kd", "ntk", "gp"])
def test_shared_engine_equals_plain_gradient_descent(family):
    data = dmv.draw_data(XC.data, 1)
    x, y = data["train"]["x"], data["train"]["y"]
    name, lp, key = family.split("-")[0], XC.learner, jax.random.key(4)
    teacher = 3.0 * jax.random.normal(jax.random.key(5), (len(y), XC.data.k)) if family == "nn-kd" else None
    trainer = mv._trainer(name, XC, {})
    got, _ = mv.fit_one(trainer, key, x, y, teacher, 0.5 if teacher is not None else 0.0, 4.0)
    v0 = trainer.family.init(key, x[:1])
    relu = lambda z: mmv.smoothed_relu(z, lp.varrho, lp.q)  # noqa: E731
    if name == "gp":  # a linear model on the frozen features, its step 1 / lambda_max of phi^T phi / n
        phi = _features(v0, x, XC)
        lam = np.linalg.eigvalsh(np.asarray(phi.T @ phi, np.float64) / len(x))[-1]
        A = _reference_gd(lambda A, x: _features(v0, x, XC) @ A.T, jnp.zeros((3, lp.gp_width)), x, y, 1 / lam, lp.steps)
        np.testing.assert_allclose(got["params"]["head"]["kernel"], A, rtol=2e-3, atol=1e-6)
        return
    W0 = v0["params"]["W"]
    f = lambda W, x: relu(jnp.einsum("npd,jrd->npjr", x, W)).sum(axis=(1, 3))  # noqa: E731
    lr = lp.lr
    if name == "ntk":  # F(W0) + sum ReLU~'(<w0, x_p>) <w - w0, x_p>; step 1 / lambda_max of J^T J / n
        gate = mmv.smoothed_relu_grad(jnp.einsum("npd,jrd->npjr", x, W0), lp.varrho, lp.q)
        f0 = f(W0, x)
        f = lambda W, x: f0 + jnp.einsum("npjr,npjr->nj", gate, jnp.einsum("npd,jrd->npjr", x, W - W0))  # noqa: E731
        J = np.asarray(jax.jacrev(lambda W: f(W, x))(W0), np.float64).reshape(len(x) * 3, -1)
        lr = 1 / np.linalg.eigvalsh(J.T @ J / len(x))[-1]
    want = _reference_gd(f, W0, x, y, lr, lp.steps, teacher, 0.5, 4.0)
    assert float(jnp.abs(want - W0).max()) > 1e-3  # it moved
    np.testing.assert_allclose(got["params"]["W"], want, rtol=2e-3, atol=1e-6)


# -- statements and claims: d with a bootstrap interval over the models and their test errors -------------
CLAIM = mv.ClaimSection()


def model(protocol, member, k_sv, n_sv=100, k_mv=0, n_mv=900, mu=0.1, family="nn") -> dict:
    """One `models_frame` row with k_mv / k_sv errors on n_mv multi-view / n_sv single-view test points."""
    e_mv, e_sv = k_mv / n_mv, k_sv / n_sv
    err = (1 - mu) * e_mv + mu * e_sv
    var = (1 - mu) ** 2 * e_mv * (1 - e_mv) / n_mv + mu**2 * e_sv * (1 - e_sv) / n_sv
    return {"family": family, "protocol": protocol, "member": member, "seconds": 1.0, "train_acc_pct": 100.0,
            "err_mv_pct": 100 * e_mv, "err_sv_pct": 100 * e_sv, "n_mv": n_mv, "n_sv": n_sv, "error_pct": 100 * err,
            "error_mu": err / mu, "se_mu": np.sqrt(var) / mu}  # fmt: skip


def family(single, ensemble, kd, sd, **kw) -> pd.DataFrame:
    """single / sd: lists of k_sv per member; ensemble / kd: one k_sv each."""
    rows = [model("single", i, k, **kw) for i, k in enumerate(single)]
    rows += [model("ensemble", -1, ensemble, **kw), model("kd", -1, kd, **kw)]
    rows += [model("sd", i, k, **kw) for i, k in enumerate(sd)]
    return pd.DataFrame(rows)


def test_family_draws_match_a_naive_loop():
    """The draw order of `family_draws`' docstring, re-implemented one draw at a time: unit blocks
    (pairs single i / SD i, the unpaired singles, the ensemble, KD) from one default_rng(seed), then
    per protocol its mean model's binomial test resample (all k_mv draws, then all k_sv)."""
    fm = family([10, 30, 50], 2, 7, [20, 40], k_mv=3)
    fm.loc[fm.protocol == "single", "err_mv_pct"] = [100 * 3 / 900, 100 * 9 / 900, 0.0]  # varied k_mv
    n_boot, seed, mu = 300, 5, 0.1
    got = rmv.family_draws(fm, mu, n_boot, seed)
    rng = np.random.default_rng(seed)
    counts = {p: np.rint(np.stack([g.err_mv_pct / 100 * 900, g.err_sv_pct / 100 * 100], 1)) for p, g in
              fm.groupby("protocol")}  # fmt: skip
    drawn = {p: [[] for _ in range(n_boot)] for p in counts}
    for rows, names in (((0, 1), ("single", "sd")), ((2,), ("single",)), ((0,), ("ensemble",)), ((0,), ("kd",))):
        for b in range(n_boot):
            idx = rng.integers(0, len(rows), size=len(rows))
            for name in names:
                drawn[name][b] += [counts[name][rows[i]] for i in idx]
    for p in rmv.PROTOCOLS:
        rates = [np.mean(drawn[p][b], axis=0) / [900, 100] for b in range(n_boot)]
        k_mv = [rng.binomial(900, r[0]) for r in rates]
        k_sv = [rng.binomial(100, r[1]) for r in rates]
        want = [((1 - mu) * a / 900 + mu * c / 100) / mu for a, c in zip(k_mv, k_sv)]
        assert got[p][0] == pytest.approx(fm[fm.protocol == p].error_mu.mean())
        np.testing.assert_allclose(got[p][1], want, rtol=0, atol=1e-12)


def test_statement_verdicts_by_hand():
    """error / mu = k_sv / 100 here (no multi-view errors). Ensemble with 0 errors: every draw is 0,
    d = 0.01 - 0 exactly, holds. One error (0.01 mu, which the old mean +- 2 SE rule called holds):
    Bin(100, 0.01) draws 0 with probability 0.37 and <= 3 with 0.98, so the interval of 0.01 - k / 100
    is [about -0.02, 0.01]: inconclusive. 50 errors fail. Singles at exactly 0.5 mu on 10^6 points:
    the interval of min(0.51 - e, e - 0.49) is 0.01 - O(0.002), holds; on 100 points it straddles 0;
    at 0.3 mu it fails."""
    agg = lambda fm: rmv.aggregate(fm, 0.1, CLAIM).set_index("protocol")  # noqa: E731
    a = agg(family([50, 50, 50], 0, 1, [50, 20]))
    assert (a.loc["ensemble", "d"], a.loc["ensemble", "ci_low"], a.loc["ensemble", "ci_high"]) == (
        pytest.approx(0.01),) * 3  # fmt: skip
    assert a.loc["ensemble", "verdict"] == "holds"
    assert a.loc["kd", "d"] == pytest.approx(0.0) and a.loc["kd", "ci_high"] == pytest.approx(0.01)
    assert -0.03 - 1e-9 <= a.loc["kd", "ci_low"] <= -0.01 and a.loc["kd", "verdict"] == "inconclusive"
    assert a.loc["single", "verdict"] == "inconclusive" and a.loc["single", "ci_low"] < 0 < a.loc["single", "ci_high"]
    assert a.loc["sd", "d"] == pytest.approx(0.26 - 0.35) and a.loc["sd", "verdict"] in ("fails", "inconclusive")
    assert agg(family([50, 50], 50, 0, [50])).loc["ensemble", "verdict"] == "fails"
    big = agg(family([500000] * 3, 0, 0, [500000], n_sv=10**6)).loc["single"]
    assert big.d == pytest.approx(0.01) and 0.005 < big.ci_low < big.ci_high <= 0.01 + 1e-9 and big.verdict == "holds"
    assert agg(family([30, 30], 0, 0, [30])).loc["single", "verdict"] == "fails"  # 0.3 mu: d = -0.19 -+ ~0.09


def _interval(boot, level=0.95):
    return np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])


def test_family_draws_over_data_draws_carry_the_spread_between_draws():
    """Two data draws whose models err a lot differently (singles at 0.2 and 0.8 mu): the interval over
    the draws is far wider than either draw's own and contains both draws' means; the point estimate is
    the mean of the draws' means; the ensemble of each draw is resampled with its own draw's models."""
    d0 = family([20, 22, 18], 1, 5, [21, 19]).assign(draw=0)
    d1 = family([80, 78, 82], 3, 40, [79, 81]).assign(draw=1)
    both = rmv.family_draws(pd.concat([d0, d1], ignore_index=True), 0.1, 2000, 3)
    alone = [rmv.family_draws(d, 0.1, 2000, 3) for d in (d0, d1)]
    lo, hi = _interval(both["single"][1])
    for a in alone:
        a_lo, a_hi = _interval(a["single"][1])
        assert hi - lo > 3 * (a_hi - a_lo)
        assert lo <= a["single"][0] <= hi
    assert both["single"][0] == pytest.approx((alone[0]["single"][0] + alone[1]["single"][0]) / 2)
    assert set(both) == set(rmv.PROTOCOLS) and all(len(v[1]) == 2000 and np.isfinite(v[1]).all() for v in both.values())
    # about a quarter of the draws pick draw 0 twice: the single's draws cluster near 0.2, 0.5 and 0.8 mu
    near = [np.mean(np.abs(both["single"][1] - c) < 0.1) for c in (0.2, 0.5, 0.8)]
    assert all(0.18 < f < 0.32 for f in near[::2]) and 0.4 < near[1] < 0.6


def test_family_draws_of_one_data_draw_are_the_old_ones():
    """draws = 1: a ``draw`` column with one value changes nothing (the same numbers, the same stream)."""
    fm = family([10, 30, 50], 2, 7, [20, 40], k_mv=3)
    old, new = rmv.one_draw(fm, 0.1, 500, 5), rmv.family_draws(fm.assign(draw=0), 0.1, 500, 5)
    assert old.keys() == new.keys()
    for p in old:
        assert old[p][0] == new[p][0] and np.array_equal(old[p][1], new[p][1])


def test_family_draws_over_data_draws_follow_their_documented_order():
    """The order of `family_draws`' docstring: the picks, then slot by slot each draw's `one_draw` on the
    same stream, each protocol the mean over its slots (a protocol missing from a draw skips its slots)."""
    parts = [family([10 + 5 * d, 30], 2 + d, 7, [20 + d]).assign(draw=d) for d in range(3)]
    parts[2] = parts[2][parts[2].protocol != "kd"]
    n_boot, seed, mu = 200, 9, 0.1
    got = rmv.family_draws(pd.concat(parts, ignore_index=True), mu, n_boot, seed)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, 3, size=(n_boot, 3))
    slots = [[rmv.one_draw(g, mu, n_boot, rng) for g in parts] for _ in range(3)]
    for p in rmv.PROTOCOLS:
        want = [np.mean([slots[s][pick[b, s]][p][1][b] for s in range(3) if p in slots[s][pick[b, s]]]
                        or [np.nan]) for b in range(n_boot)]  # fmt: skip
        np.testing.assert_allclose(got[p][1], want, rtol=0, atol=1e-12)
    assert got["kd"][0] == pytest.approx(np.mean([parts[d][parts[d].protocol == "kd"].error_mu.mean() for d in (0, 1)]))


@pytest.mark.parametrize("kd,verdict", [(0, "holds"), (30, "fails"), (15, "inconclusive")])
def test_kd_claim_flips_with_its_interval(kd, verdict):
    """nn: d = (single - KD) - (single - ensemble) / 2 >= 0 with singles at 0.3 mu and the ensemble at
    0: KD at 0 gives d = 0.15 (interval 0.15 -+ ~0.09 from the singles' Bin(100, 0.3)), KD at 0.3
    gives -0.15, KD at 0.15 gives 0, whose interval straddles 0."""
    cf = rmv.claim_frame(family([30, 30, 30], 0, kd, [30, 30]), 0.1, CLAIM).set_index("claim")
    r = cf.loc["KD recovers at least half of the ensemble's gain"]
    assert r.d == pytest.approx(0.3 - kd / 100 - 0.15) and r.verdict == verdict and not r.strict


def test_sd_claim_pairs_each_student_with_its_teacher():
    """SD student i equals single i (errors 0.2 and 0.8 mu on 10^6 points): resampled as pairs, every
    draw of single - SD is ~0 (test noise ~0.001), so the interval is narrow; resampling the two groups
    independently would swing it by +-0.3. Kernel families test "SD is not better" (>= 0)."""
    fm = family([200000, 800000], 0, 0, [200000, 800000], n_sv=10**6)
    r = rmv.claim_frame(fm, 0.1, CLAIM).set_index("claim").loc["SD is better than a single model"]
    assert r.d == pytest.approx(0.0) and r.ci_high - r.ci_low < 0.01 and r.verdict == "inconclusive"
    for sd, verdict in ((0, "holds"), (60, "fails")):
        cf = rmv.claim_frame(family([30, 30], 0, 0, [sd, sd]), 0.1, CLAIM).set_index("claim")
        assert cf.loc["SD is better than a single model", "verdict"] == verdict
    kern = rmv.claim_frame(family([30, 30], 0, 0, [60, 60], family="gp"), 0.1, CLAIM)
    assert dict(zip(kern.claim, kern.verdict))["SD is not better than a single model"] == "holds"


def test_claim_settings_are_not_in_the_science_hash():
    base = mv.default()
    other = dataclasses.replace(base, claim=mv.ClaimSection(n_boot=500, level=0.9, boot_seed=2))
    assert other.science_hash() == base.science_hash() == "990527b1b18a"  # results/multiview's students
    assert other.science_hash(students=False) == "82b4a915a7a4"  # and its singles
    with pytest.raises(UserError, match="claim.n_boot"):
        mv.EXPERIMENT.configure("smoke", ["claim.n_boot=10"])


# -- the experiment: bad input, end to end, resume, write from the records ----------------------------------
@pytest.mark.parametrize(
    "sets,message",
    [
        (["bogus=1"], "unknown key 'bogus'"),
        (["learner.steps=abc"], "learner.steps: cannot parse"),
        (["learner.steps=1.5"], "learner.steps: expected an integer"),
        (["data.mu=2"], "mu must be in [0, 1]"),
        (["protocol.families=nn,cnn"], "unknown family 'cnn'"),
        (["sweep.mus=0.1,x"], "sweep.mus: expected comma-separated numbers"),
        (["sweep.mus=0.1,'x'"], "sweep.mus: expected comma-separated numbers"),
        (["protocol.seeds"], "expects key=value"),
        (["protocol.draws=0"], "protocol.draws must be >= 1"),
        (["learner.kernel_momentum=1"], "learner.kernel_momentum must be in [0, 1)"),
        (["learner.kernel_steps=-1"], "learner.kernel_steps >= 0"),
    ],
)
def test_bad_input_is_a_user_error_before_anything_is_written(tmp_path, sets, message):
    out = tmp_path / "out"
    with pytest.raises(UserError) as e:
        run_experiment("multiview", "smoke", sets, str(out))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not out.exists()  # nothing written


def test_command_line_reports_bad_input_in_one_line_exit_2(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    args = ["run", "multiview", "--out", str(tmp_path / "o"), "--set", "nope=3"]
    r = subprocess.run([sys.executable, "-m", "ntk_vs_nn", *args], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown key 'nope'" in r.stderr, r.stderr


def test_sweep_mus_parse_as_numbers():
    cfg = mv.EXPERIMENT.configure("smoke", ["sweep.mus=0.05,0.1", "protocol.families=nn,gp"])
    assert cfg.sweep.mus == (0.05, 0.1) and cfg.protocol.families == ("nn", "gp")
    assert mv.EXPERIMENT.configure("smoke", ["sweep.mus=0.3"]).sweep.mus == (0.3,)
    assert mv.EXPERIMENT.configure("smoke", ["sweep.mus=()"]).sweep.mus == ()


OUTPUTS = ("table.md", "table.csv", "models.csv", "lottery.md", "lottery.csv", "sweep.csv", "summary.md", "claims.csv")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mv") / "smoke"
    written = run_experiment("multiview", "smoke", [], str(out))
    return out, written


def test_smoke_run_writes_every_output(smoke_run):
    out, written = smoke_run
    assert set(OUTPUTS) | {"config.json", "sweep.png", "records.jsonl"} <= set(os.listdir(out))
    table = pd.read_csv(out / "table.csv")
    assert set(table.family) == {"nn", "ntk", "gp"} and set(table.protocol) == set(rmv.PROTOCOLS)
    assert set(table.verdict) <= {"holds", "fails", "inconclusive"} and (table.ci_low <= table.ci_high).all()
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims.family) == {"nn", "ntk", "gp"} and len(claims) == 6
    assert {"d", "ci_low", "ci_high", "verdict"} <= set(claims.columns)
    sweep = pd.read_csv(out / "sweep.csv")
    assert sorted(sweep.mu.unique()) == [0.1, 0.2]
    meta = json.loads((out / "config.json").read_text())
    assert meta["experiment"] == "multiview" and meta["data"]["k"] == 3 and meta["protocol"]["seeds"] == 2
    lottery = pd.read_csv(out / "lottery.csv")
    assert set(lottery.family) == {"nn", "ntk"} and len(lottery[lottery.protocol == "single"]) == 2 * 2 * 3
    summary = (out / "summary.md").read_text()
    assert "Training time" in summary and "ntk-vs-nn run multiview --preset smoke" in summary
    assert written.text == (out / "table.md").read_text() and len(written.verdicts) == 4 + 6
    # every trained model is a unit: main point 3 x (2 singles + ensemble + KD + SD); the sweep at
    # mu = 0.1 is the main point's nn units, mu = 0.2 adds 5 more
    recs = Store(str(out)).records()
    assert len(recs) == 3 * 5 + 5 and len({r["unit"] for r in recs}) == len(recs)
    assert all(r["config_hash"] and r["git_sha"] and r["date"] for r in recs)
    assert all(os.path.exists(out / r["predictions"]) for r in recs)  # saved before the record that names them


def test_more_data_draws_extend_a_run(smoke_run, tmp_path):
    """A finished one-draw folder rerun with ``protocol.draws=2`` trains draw 1's main point only (draw 0
    and the sweep are loaded), names its units by seed 1's hash with the numbers of a run of
    ``protocol.seed=1``; models.csv gains a draw column, draws.csv the per-draw breakdown, and the
    verdicts' intervals resample the draws."""
    out = tmp_path / "mv"
    shutil.copytree(smoke_run[0], out)
    before = Store(str(out)).records()
    run_experiment("multiview", "smoke", ["protocol.draws=2"], str(out))
    recs = Store(str(out)).records()
    assert recs[: len(before)] == before and len(recs) == len(before) + 3 * 5
    seed1 = mv.EXPERIMENT.configure("smoke", ["protocol.seed=1"])
    assert {r["config_hash"] for r in recs[len(before) :]} == {seed1.science_hash(), seed1.science_hash(students=False)}
    alone = tmp_path / "seed1"
    run_experiment("multiview", "smoke", ["protocol.seed=1", "protocol.families=nn", "sweep.mus=()"], str(alone))
    new = {r["unit"]: r for r in recs[len(before) :]}
    for r in Store(str(alone)).records():
        assert (r["error_mu"], r["train_acc_pct"]) == (new[r["unit"]]["error_mu"], new[r["unit"]]["train_acc_pct"])
    models, draws = pd.read_csv(out / "models.csv"), pd.read_csv(out / "draws.csv")
    assert sorted(models.draw.unique()) == [0, 1] and len(models) == 2 * 3 * 5
    assert sorted(draws.seed.unique()) == [0, 1] and len(draws) == 2 * 3 * 4
    assert set(draws.columns) >= {"draw", "family", "protocol", "error_mu", "train_acc_pct"}
    summary = (out / "summary.md").read_text()
    assert "## Data draws" in summary and "--set protocol.draws=2" in summary and "the 2 data draws" in summary
    single = pd.read_csv(out / "table.csv").set_index(["family", "protocol"]).loc[("nn", "single")]
    assert single.n_models == 4 and single.error_mu == pytest.approx(draws.set_index(["family", "protocol"]).loc[
        ("nn", "single")].error_mu.mean())  # fmt: skip


def test_rerun_trains_and_records_nothing_new(smoke_run):
    out, _ = smoke_run
    before = (out / "records.jsonl").read_text()
    run_experiment("multiview", "smoke", [], str(out))
    assert (out / "records.jsonl").read_text() == before


# -- the shared unit path (protocols.units): names, resume, ensemble and distillation targets --------------
def test_unit_names_are_the_stores_recorded_before_the_shared_path():
    """`units` names through `protocols.units.unit_name` (no model segment: one learner per family): the
    very names a store recorded by multiview's own loop holds, so such stores resume."""
    cfg = mv.EXPERIMENT.configure("smoke")
    h, hs = cfg.science_hash(0.1, students=False), cfg.science_hash(0.1)
    want = [f"{h}/nn/single-0", f"{h}/nn/single-1", f"{h}/nn/ensemble-L2", f"{hs}/nn/kd-L2", f"{hs}/nn/sd-0"]
    assert [u for u, *_ in mv.units(cfg, 0.1, ("nn",), 2, 1)] == want
    assert punits.unit_name("abc", "nn", "single", 3, "ResNet-8-1") == unit_id("abc", "nn", "ResNet-8-1", "single", 3)


def test_units_finished_saved_then_recorded(tmp_path):
    ledger = punits.Units(Store(str(tmp_path)), "h")
    preds = {"train": np.ones((3, 2), np.float32), "test": np.zeros((2, 2), np.float32)}
    calls = []
    train = lambda: calls.append(1) or (preds, {"config_hash": "h", "x": 1})  # noqa: E731
    rec, got, trained = ledger.train_unless_recorded(["h/a/single-0", "old/a/single-0"], train)
    assert trained and rec["predictions"] == os.path.join("units", "h", "a", "single-0.npz") and got is preds
    again = punits.Units(Store(str(tmp_path)), "h")  # a rerun: loaded, not retrained
    rec2, got2, trained2 = again.train_unless_recorded(["h/a/single-0"], train)
    assert not trained2 and calls == [1] and rec2 == rec and np.array_equal(got2["train"], preds["train"])
    again.save_and_record("h/a/single-1", None, {"config_hash": "h", "status": "oom"})
    again.save_and_record("h/a/single-2", None, {"config_hash": "h", "status": "diverged"})
    assert again.finished(["h/a/single-1"]) is None and again.finished(["h/a/single-2"])[1] is None
    assert again.finished(["h/a/nope", "h/a/single-0"])[0] == rec  # an older form after the name


def test_ensemble_and_distillation_targets():
    rs = np.random.RandomState(0)
    singles = [{"train": rs.randn(5, 3).astype(np.float32), "test": rs.randn(4, 3)} for _ in range(3)]
    ens = punits.ensemble_of(singles)
    assert set(ens) == {"train", "test"}
    np.testing.assert_allclose(ens["test"], np.mean([s["test"] for s in singles], 0))
    kd = punits.distill_teacher("kd", singles)
    assert kd.dtype == np.float32 and np.array_equal(kd, ens["train"].astype(np.float32))
    assert np.array_equal(punits.distill_teacher("kd", singles, ensemble=ens), kd)
    assert np.array_equal(punits.distill_teacher("sd", singles, 2), singles[2]["train"])
    y = rs.randint(0, 3, 4)
    by_size = punits.accuracy_by_size([s["test"] for s in singles], y)
    assert len(by_size) == 3 and by_size[0] == metrics.accuracy(singles[0]["test"], y)
    assert by_size[-1] == metrics.accuracy(ens["test"], y)


def test_a_run_cut_short_resumes_with_the_same_numbers(smoke_run, tmp_path):
    """Killed after nn's KD student: the rerun loads the recorded units and trains the rest, to the records
    of the uninterrupted run (times aside)."""
    out = tmp_path / "mv"
    shutil.copytree(smoke_run[0], out)
    recs = Store(str(out)).records()
    with open(out / "records.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs[:4])
    run_experiment("multiview", "smoke", [], str(out))
    again = Store(str(out)).records()
    strip = lambda r: {k: v for k, v in r.items() if k not in ("date", "seconds")}  # noqa: E731
    assert again[:4] == recs[:4] and [strip(r) for r in again[4:]] == [strip(r) for r in recs[4:]]

"""Multi-view data generator, smoothed ReLU, the theory's learner and its kernel contrast, the CLI."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from ntk_vs_nn.experiments import multiview as mv
from ntk_vs_nn.experiments import multiview_report as mr

# Small enough to sample fast, large enough for tight statistics; (2 + n_other) * patches fit in P.
GEN_CFG = mv.MultiViewConfig(k=10, d=100, P=12, n_train=4000, n_test=100)


@pytest.fixture(scope="module")
def generated():
    """Noise-free and noisy draws from the same key (the noise is added last, so signals match)."""
    cfg0 = dataclasses.replace(GEN_CFG, noise=0.0, feature_noise=0.0)
    kf, ks = jax.random.split(jax.random.key(0))
    feats = mv.make_features(kf, GEN_CFG)
    clean = mv.sample(ks, cfg0, feats, GEN_CFG.n_train, GEN_CFG.mu)
    noisy = mv.sample(ks, GEN_CFG, feats, GEN_CFG.n_train, GEN_CFG.mu)
    return feats, clean, noisy


def _recovered_weights(x, feats):
    """Per-feature weight read off the inputs: sum over patches of <x_p, v_{j,l}> (exact without noise)."""
    return np.asarray(jnp.einsum("npd,jld->njl", x, feats))


def test_features_orthonormal():
    cfg = mv.MultiViewConfig()
    f = np.asarray(mv.make_features(jax.random.key(3), cfg)).reshape(-1, cfg.d)
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
    got = np.asarray(mv.smoothed_relu(jnp.asarray(zs), varrho, q))
    np.testing.assert_allclose(got, [_reference(float(z), varrho, q) for z in zs], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("varrho,q", [(0.1, 3), (4.0, 3), (1.0, 4)])
@pytest.mark.parametrize("where", [0.0, 1.0])  # the thresholds 0 and varrho
def test_smoothed_relu_is_c1(varrho, q, where):
    point = where * varrho
    f = lambda z: mv.smoothed_relu(z, varrho, q)  # noqa: E731
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
    want = jax.vmap(jax.grad(lambda z: mv.smoothed_relu(z, varrho, q)))(zs)
    np.testing.assert_allclose(mv.smoothed_relu_grad(zs, varrho, q), want, rtol=1e-5, atol=1e-7)
    at = mv.smoothed_relu_grad(jnp.asarray([0.0, varrho], jnp.float32), varrho, q)
    np.testing.assert_allclose(at, [0.0, 1.0])  # the C^1 derivative at the thresholds


def test_kd_loss_matches_formula():
    cfg = mv.MultiViewConfig(k=3, d=20, P=8, m=2, n_other=2, varrho=0.1)
    kf, ks, kw = jax.random.split(jax.random.key(5), 3)
    data = mv.sample(ks, cfg, mv.make_features(kf, cfg), 16, cfg.mu)
    W = mv.init(kw, cfg) * 20
    loss = jax.jit(mv.loss, static_argnames=("cfg",))  # one compile instead of op-by-op dispatch
    ce = loss(W, data["x"], data["y"], cfg)
    own = jax.jit(mv.logits, static_argnames=("cfg",))(W, data["x"], cfg)
    assert float(loss(W, data["x"], data["y"], cfg, own, alpha=0.0, tau=3.0)) == pytest.approx(float(ce), rel=1e-5)
    assert float(loss(W, data["x"], data["y"], cfg, own, alpha=1.0, tau=3.0)) == pytest.approx(0.0, abs=1e-5)
    teacher = own[:, ::-1] * 2.0
    a, tau = 0.3, 3.0
    pt = np.asarray(jax.nn.softmax(teacher / tau))
    log_ps = np.asarray(jax.nn.log_softmax(own / tau))
    kl = float(np.mean(np.sum(pt * (np.log(pt) - log_ps), axis=1)))
    want = (1 - a) * float(ce) + a * tau**2 * kl
    assert kl > 1e-3
    assert float(loss(W, data["x"], data["y"], cfg, teacher, alpha=a, tau=tau)) == pytest.approx(want, rel=1e-4)


TINY = mv.MultiViewConfig(k=3, d=30, P=8, n_train=150, n_test=600, n_other=2, steps=400)


@pytest.fixture(scope="module")
def tiny():
    data = mr.draw_data(TINY, 0)
    return data, mv.fit("nn", jax.random.key(0), TINY, data["train"]["x"], data["train"]["y"])


def test_tiny_run_learns_a_view_per_class_and_classifies_multi_view(tiny):
    data, (W, _) = tiny
    feats, te = data["features"], data["test"]
    init_views, _ = mv.learned_views(mv.init(jax.random.key(0), TINY), feats)
    views, winner = mv.learned_views(W, feats)
    assert views.shape == (3, 2) and winner.shape == (3,)
    thr = mv.view_threshold(TINY)
    assert float(jnp.abs(init_views).max()) < 0.1 * thr  # started far below the threshold
    assert float(views.max(axis=1).min()) >= thr  # every class learned at least one view
    np.testing.assert_array_equal(np.asarray(winner), np.asarray(jnp.argmax(views, axis=1)))
    pred = jnp.argmax(mv.logits(W, te["x"], TINY), axis=1)
    mv_acc = float((pred == te["y"])[~te["is_single_view"]].mean())
    assert mv_acc > 0.95, mv_acc


def test_ntk_is_the_linearisation_and_gp_starts_at_zero(tiny):
    data, _ = tiny
    x = data["train"]["x"][:20]
    W0 = mv.init(jax.random.key(1), TINY)
    params, frozen = mv.family_init("ntk", jax.random.key(1), TINY)
    np.testing.assert_allclose(mv.predict("ntk", (params, frozen), x, TINY), mv.logits(W0, x, TINY), rtol=1e-5)
    delta = 0.01 * jax.random.normal(jax.random.key(2), W0.shape)
    lin = mv.predict("ntk", (W0 + delta, W0), x, TINY)
    f0, df = jax.jvp(lambda W: mv.logits(W, x, TINY), (W0,), (delta,))
    np.testing.assert_allclose(lin, f0 + df, rtol=1e-4, atol=1e-6)
    A, U = mv.family_init("gp", jax.random.key(1), TINY)
    assert U.shape == (TINY.gp_width, TINY.d)
    np.testing.assert_array_equal(mv.predict("gp", (A, U), x, TINY), 0.0)


def test_lambda_max_matches_eigh_for_gp(tiny):
    data, _ = tiny
    A, U = mv.family_init("gp", jax.random.key(3), TINY)
    phi = mv.represent("gp", U, data["train"]["x"], TINY)
    lam = float(mv.lambda_max("gp", A, U, phi, TINY, iters=200))
    want = float(np.linalg.eigvalsh(np.asarray(phi.T @ phi, np.float64) / phi.shape[0])[-1])
    assert lam == pytest.approx(want, rel=1e-3)


def test_aggregate_verdicts():
    rows = []
    for protocol, errs in (("single", [0.5, 0.52, 0.48]), ("ensemble", [0.05]), ("kd", [0.0]), ("sd", [0.3])):
        for i, e in enumerate(errs):
            rows.append({"family": "nn", "protocol": protocol, "member": i, "error_mu": e, "se_mu": 0.01,
                         "err_mv_pct": 0.0, "err_sv_pct": 100 * e / 2, "seconds": 1.0})  # fmt: skip
    agg = mr.aggregate(pd.DataFrame(rows)).set_index("protocol")
    assert agg.loc["single", "error_mu"] == pytest.approx(0.5)
    assert agg.loc["single", "error_mu_se"] == pytest.approx(np.sqrt(0.02**2 / 3 + 0.01**2))
    assert dict(agg.verdict) == {"single": "holds", "ensemble": "fails", "kd": "holds", "sd": "fails"}


def _run_cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "ntk_vs_nn.experiments.multiview", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize(
    "sets,message",
    [
        (["bogus=1"], "unknown key 'bogus'"),
        (["steps=abc"], "steps: cannot parse"),
        (["steps=1.5"], "steps: expected an integer"),
        (["mu=2"], "mu must be in [0, 1]"),
        (["families=nn,cnn"], "unknown family 'cnn'"),
        (["sweep_mus=0.1,x"], "sweep_mus: expected comma-separated numbers"),
        (["seeds"], "expects key=value"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, sets, message):
    out = tmp_path / "out"
    code = mr.main(["--out", str(out), *[a for s in sets for a in ("--set", s)]])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()  # nothing written


def test_module_entry_point_reports_bad_input(tmp_path):
    r = _run_cli("--out", str(tmp_path / "o"), "--set", "nope=3")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "unknown key 'nope'" in r.stderr


@pytest.mark.slow
def test_cli_writes_every_output(tmp_path):
    out = tmp_path / "mv"  # n_train = n_test: one compiled predict per family
    sets = "k=3 d=20 P=8 n_train=60 n_test=60 n_other=2 steps=30 gp_width=16 seeds=2 sd_students=1"
    sets += " sweep_mus=0.1,0.2 sweep_seeds=2 sweep_sd_students=1"
    assert mr.main(["--out", str(out), "--set", *sets.split()]) == 0
    names = {"table.md", "table.csv", "models.csv", "lottery.md", "lottery.csv", "sweep.csv", "sweep.png"}
    assert names | {"config.json", "summary.md"} <= set(os.listdir(out))
    table = pd.read_csv(out / "table.csv")
    assert set(table.family) == {"nn", "ntk", "gp"} and set(table.protocol) == set(mr.PROTOCOLS)
    assert set(table.verdict) <= {"holds", "fails"}
    sweep = pd.read_csv(out / "sweep.csv")
    assert sorted(sweep.mu.unique()) == [0.1, 0.2]
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["k"] == 3 and meta["spec"]["seeds"] == 2 and meta["wall_s"] > 0
    lottery = pd.read_csv(out / "lottery.csv")
    assert set(lottery.family) == {"nn", "ntk"} and len(lottery[lottery.protocol == "single"]) == 2 * 2 * 3
    assert "Wall time" in (out / "summary.md").read_text()

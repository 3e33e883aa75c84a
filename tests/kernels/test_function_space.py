"""The function-space backend equals weight-space training where both are exact.

The gp family (only the Dense head trains) is linear in its params and its NTK is exactly
(φφ^T + 1) ⊗ I_k, so the traced kernel the backend uses is exact for it: full-batch gradient
descent of the gp family's weights with step η (optax.sgd) on cross-entropy, on the KD loss, on MSE,
and for a train-sum of members, must give the same train and test outputs as `function_space`
(float64, relative 1e-8). The ntk family's traced kernel is only an approximation (off-diagonal
output blocks dropped), so for it we check the kernel equals the nn NTK and the protocol runs.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import rel_err

from ntk_vs_nn.config import KernelConfig
from ntk_vs_nn.engine.losses import distill_loss
from ntk_vs_nn.families import last_layer, linearized, network, summed
from ntk_vs_nn.kernels import function_space
from ntk_vs_nn.kernels.api import empirical_ntk_fn
from ntk_vs_nn.kernels.function_space import FunctionTrainer, solve
from ntk_vs_nn.kernels.predict import kernel_ridge
from ntk_vs_nn.models import build_model

MODEL, STEPS, TOL = "SimpleCNN-3-1", 40, 1e-8


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def weight_space(fam, key, x_tr, x_te, loss_fn, eta, steps, grad_scale=1.0):
    """Full-batch SGD of a family's params (each gradient times ``grad_scale``: a train-sum's
    ``protocol.sum_grad``); outputs on train and test after ``steps`` steps."""
    v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), fam.init(key, x_tr[:1]))
    opt = optax.chain(optax.scale(grad_scale), optax.sgd(eta))
    state = opt.init(v["params"])

    @jax.jit
    def step(p, s):
        g = jax.grad(lambda q: loss_fn(fam.apply({"params": q, "state": v["state"]}, x_tr)))(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s

    p = v["params"]
    for _ in range(steps):
        p, state = step(p, state)
    out = lambda x: np.asarray(fam.apply({"params": p, "state": v["state"]}, x))  # noqa: E731
    return out(x_tr), out(x_te), fam.apply(v, x_tr), fam.apply(v, x_te)


def gp_kernel(module, key, x_tr, x_te):
    from ntk_vs_nn.kernels.empirical import head_features

    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), module.init(key, x_tr[:1])["params"])
    p_tr = np.asarray(head_features(module, params, x_tr), np.float64)
    p_te = np.asarray(head_features(module, params, x_te), np.float64)
    return p_tr @ p_tr.T + 1, p_te @ p_tr.T + 1


@pytest.fixture(scope="module")
def setup(x64, tiny_data):
    d = tiny_data
    module = build_model(MODEL, d.num_classes, 1)
    x_tr, x_te = jnp.asarray(d.x_train, jnp.float64), jnp.asarray(d.x_test, jnp.float64)
    return module, x_tr, x_te, jnp.asarray(d.y_train)


def kc(solver, eta_scale, k_tt, n):
    """A KernelConfig whose normalised step gives the plain step eta = eta_scale."""
    lam = function_space._lambda_max(k_tt)
    return KernelConfig(backend="function", solver=solver, lr=eta_scale * lam / n, steps=STEPS)


@pytest.mark.parametrize("case", ["xent", "kd", "mse"])
def test_gp_weight_space_equals_function_space(setup, case):
    module, x_tr, x_te, y = setup
    fam, key, k = last_layer(network(module)), jax.random.key(3), 3
    n, eta = len(x_tr), 0.5
    k_tt, k_te = gp_kernel(module, key, x_tr, x_te)
    teacher = np.asarray(jax.random.normal(jax.random.key(9), (n, k)), np.float64) * 3
    alpha, tau = (0.7, 2.0) if case == "kd" else (0.0, 1.0)
    if case == "mse":
        onehot = jax.nn.one_hot(y, k, dtype=jnp.float64)
        loss_fn = lambda f: 0.5 * jnp.mean(jnp.sum((f - onehot) ** 2, -1))  # noqa: E731
    else:
        loss_fn = lambda f: distill_loss(f, y, jnp.asarray(teacher), alpha, tau)  # noqa: E731
    w_tr, w_te, f0_tr, f0_te = weight_space(fam, key, x_tr, x_te, loss_fn, eta, STEPS)
    f_tr, f_te, losses, _ = solve(
        k_tt,
        k_te,
        np.asarray(f0_tr),
        np.asarray(f0_te),
        np.asarray(y),
        teacher if case == "kd" else None,
        alpha,
        tau,
        kc("mse" if case == "mse" else "xent", eta, k_tt, n),
    )
    assert rel_err(f_tr, w_tr) < TOL and rel_err(f_te, w_te) < TOL
    # the check has teeth: a step count off by one, or no training, is far off
    assert rel_err(f_te, np.asarray(f0_te)) > 1e-3
    if case != "mse":
        assert np.isfinite(losses).all() and losses[-1] < losses[0]


@pytest.mark.parametrize("sum_grad", ["member", "joint"])
def test_train_sum_kernel_is_the_scaled_sum_of_member_kernels(setup, tiny_data, tiny_cfg, sum_grad):
    """Weight-space joint training of G = mean of 3 gp members = function space with c² s·ΣΘ_l: s = L
    (sum_grad=member, each member's gradient scaled to a single's: the mean kernel), 1 (joint: c²ΣΘ_l)."""
    module, x_tr, x_te, y = setup
    L, n, eta = 3, len(x_tr), 0.5
    factor = 1 / L if sum_grad == "member" else 1 / L**2
    key = jax.random.key(5)
    fam = summed(last_layer(network(module)), L, "mean")
    loss_fn = lambda f: distill_loss(f, y, jnp.zeros((n, 3)), 0.0, 1.0)  # noqa: E731
    cfg = dataclasses.replace(tiny_cfg, kernel=KernelConfig(backend="function", steps=STEPS),
                              protocol=dataclasses.replace(tiny_cfg.protocol, sum_grad=sum_grad))  # fmt: skip
    w_tr, w_te, f0_tr, f0_te = weight_space(fam, key, x_tr, x_te, loss_fn, eta, STEPS, cfg.sum_grad_scale(L))
    trainer = FunctionTrainer("gp", MODEL, cfg, tiny_data, n_sum=L)
    k_tt, k_ot, g0_tr, g0_ot = trainer._sum_kernel(key)
    assert rel_err(g0_tr, f0_tr) < 1e-6  # the sum's outputs at init (float32 kernels in the trainer)
    refs = [gp_kernel(module, jax.random.fold_in(key, i), x_tr, x_te) for i in range(L)]
    assert rel_err(k_tt, factor * sum(r[0] for r in refs)) < 1e-6
    f_tr, f_te, _, _ = solve(
        factor * sum(r[0] for r in refs),
        factor * sum(r[1] for r in refs),
        np.asarray(f0_tr),
        np.asarray(f0_te),
        np.asarray(y),
        None,
        0.0,
        1.0,
        kc("xent", eta, factor * sum(r[0] for r in refs), n),
    )
    assert rel_err(f_tr, w_tr) < TOL and rel_err(f_te, w_te) < TOL


def test_trainer_kernels_and_offsets(tiny_data, tiny_cfg):
    """ntk and ntk_prime share the nn NTK at W0 (computed once); ntk starts at f(W0), ntk′ at 0."""
    cfg = dataclasses.replace(tiny_cfg, kernel=KernelConfig(backend="function", solver="xent", steps=20))
    function_space._CACHE.clear()
    key = jax.random.key(11)
    ntk = FunctionTrainer("ntk", MODEL, cfg, tiny_data)._member(key)
    assert len(function_space._CACHE) == 1
    prime = FunctionTrainer("ntk_prime", MODEL, cfg, tiny_data)._member(key)
    assert len(function_space._CACHE) == 1  # reused, not recomputed
    module = build_model(MODEL, tiny_data.num_classes, 1)
    params = module.init(key, tiny_data.x_train[:1])["params"]
    f = lambda p, x: module.apply({"params": p}, x)  # noqa: E731
    ref = empirical_ntk_fn(f, vmap_axes=None)(tiny_data.x_train, None, params)  # whole batch, jacrev, untiled
    assert rel_err(ntk[0], ref) < 1e-5 and np.array_equal(ntk[0], prime[0])
    assert rel_err(ntk[2], f(params, tiny_data.x_train)) < 1e-5
    assert not prime[2].any() and not prime[3].any()
    res = FunctionTrainer("ntk", MODEL, cfg, tiny_data).fit([key], [key], tiny_data.x_train, tiny_data.y_train)
    preds = res.variables[0]["preds"]
    assert {s: p.shape for s, p in preds.items()} == {
        "train": (len(tiny_data.x_train), 3),
        "val": (len(tiny_data.x_val), 3),
        "test": (len(tiny_data.x_test), 3),
    }
    assert res.losses[0, -1] < res.losses[0, 0]


def test_ridge_is_kernel_ridge_from_f0(setup):
    """f = f0 + Θ(·, X)(Θ + r·mean(diag Θ)·I)^{-1}(Y − f0(X)), via kernels.kernel_ridge on Y − f0."""
    from ntk_vs_nn.kernels.predict import kernel_ridge

    module, x_tr, x_te, y = setup
    k_tt, k_te = gp_kernel(module, jax.random.key(3), x_tr, x_te)
    rs = np.random.RandomState(0)
    f0_tr, f0_te = rs.randn(len(x_tr), 3), rs.randn(len(x_te), 3)
    onehot = np.eye(3)[np.asarray(y)]
    cfg = KernelConfig(backend="function", solver="ridge", ridge=0.1)
    f_tr, f_te, _, _ = solve(k_tt, k_te, f0_tr, f0_te, np.asarray(y), None, 0.0, 1.0, cfg)
    r_tr, r_te = kernel_ridge(k_tt, onehot - f0_tr, k_te, ridge=0.1 * np.mean(np.diag(k_tt)))
    assert rel_err(f_tr, f0_tr + r_tr) < TOL and rel_err(f_te, f0_te + r_te) < TOL


def test_mse_auto_steps_picks_the_best_validation_time(setup, tiny_data):
    """kernel.steps = 0: the training time of the grid with the best validation accuracy (first on ties)."""
    module, x_tr, x_te, y = setup
    d = tiny_data
    x_ot = jnp.concatenate([jnp.asarray(d.x_val, jnp.float64), x_te])
    k_tt, k_ot = gp_kernel(module, jax.random.key(3), x_tr, x_ot)
    f0_tr, f0_ot = np.zeros((len(x_tr), 3)), np.zeros((len(x_ot), 3))
    args = (k_tt, k_ot, f0_tr, f0_ot, np.asarray(y), None, 0.0, 1.0)
    auto = solve(*args, KernelConfig(backend="function", solver="mse", steps=0), d.y_val)
    nv = len(d.y_val)
    scores = {}
    for s in function_space.AUTO_STEPS:
        _, f_ot, _, _ = solve(*args, KernelConfig(backend="function", solver="mse", steps=s))
        scores[s] = np.mean(np.argmax(f_ot[:nv], -1) == d.y_val)
    assert auto[3] == max(scores, key=lambda s: (scores[s], -s))
    assert len(set(scores.values())) > 1  # the grid matters on this problem


def test_infinite_width_row_is_one_deterministic_member(tmp_path, tiny_data, tiny_cfg):
    """ntk_inf: one member solved on the stax kernel; the other protocols are recorded as skipped."""
    from ntk_vs_nn.kernels import infinite, nt_compat
    from ntk_vs_nn.protocols import run_row
    from ntk_vs_nn.store import Store

    if not nt_compat.available():
        pytest.skip("neural-tangents not installed (make install-nt)")
    cfg = dataclasses.replace(tiny_cfg, kernel=KernelConfig(backend="weights", solver="ridge"))
    store = Store.prepare(str(tmp_path))
    run_row("ntk_inf", MODEL, cfg, tiny_data, store)
    recs = {(r["protocol"], str(r["member"])): r for r in store.records()}
    assert recs[("single", "0")]["status"] == "ok" and recs[("single", "0")]["backend"] == "function"
    assert ("single", "1") not in recs
    assert recs[("ensemble", "all")]["metrics"]["acc"] == recs[("single", "0")]["metrics"]["acc"]
    assert all(recs[(p, "0")]["status"] == "skipped" for p in ("train_sum", "kd", "sd"))
    # the prediction is kernel ridge on the infinite-width kernel from f0 = 0
    k_tt, k_ot = infinite.infinite_kernels(
        MODEL, 3, 1, tiny_data.x_train, np.concatenate([tiny_data.x_val, tiny_data.x_test]), kind="ntk"
    )
    reg = cfg.kernel.ridge * np.mean(np.diag(k_tt))
    a = np.linalg.solve(k_tt + reg * np.eye(len(k_tt)), np.eye(3)[tiny_data.y_train])
    test = (k_ot @ a)[len(tiny_data.x_val) :]
    acc = 100 * np.mean(np.argmax(test, -1) == tiny_data.y_test)
    assert recs[("single", "0")]["metrics"]["acc"] == pytest.approx(acc)


@pytest.mark.parametrize("solver", ["xent", "mse"])
def test_absolute_lr_units_replay_weight_space_gd_with_the_same_learning_rate(setup, solver):
    """kernel.lr_units=absolute: kernel.lr is the weight-space learning rate itself (no λ_max scaling)."""
    module, x_tr, x_te, y = setup
    fam, key, k = last_layer(network(module)), jax.random.key(5), 3
    eta = 0.3
    k_tt, k_te = gp_kernel(module, key, x_tr, x_te)
    onehot = jax.nn.one_hot(y, k, dtype=jnp.float64)
    if solver == "mse":
        loss_fn = lambda f: 0.5 * jnp.mean(jnp.sum((f - onehot) ** 2, -1))  # noqa: E731
    else:
        loss_fn = lambda f: distill_loss(f, y, jnp.zeros((len(y), k), jnp.float64), 0.0, 1.0)  # noqa: E731
    w_tr, w_te, f0_tr, f0_te = weight_space(fam, key, x_tr, x_te, loss_fn, eta, STEPS)
    cfg = KernelConfig(backend="function", solver=solver, lr=eta, lr_units="absolute", steps=STEPS)
    f_tr, f_te, _, _ = solve(k_tt, k_te, np.asarray(f0_tr), np.asarray(f0_te), np.asarray(y), None, 0.0, 1.0, cfg)
    assert rel_err(f_tr, w_tr) < TOL and rel_err(f_te, w_te) < TOL
    # with the default units the same number is a different step (lr · n / λ_max): not equal
    other = solve(k_tt, k_te, np.asarray(f0_tr), np.asarray(f0_te), np.asarray(y), None, 0.0, 1.0,
                  KernelConfig(backend="function", solver=solver, lr=eta, steps=STEPS))  # fmt: skip
    assert rel_err(other[1], w_te) > 1e-3


def test_infinite_rows_share_one_stax_pass(tmp_path, tiny_data, tiny_cfg, monkeypatch):
    """ntk_inf and nngp_inf of a table come from one infinite_kernels call (kind=("ntk", "nngp")),
    and each row gets its own kind's kernel."""
    from ntk_vs_nn.kernels import infinite, nt_compat
    from ntk_vs_nn.protocols import run_row
    from ntk_vs_nn.store import Store

    if not nt_compat.available():
        pytest.skip("neural-tangents not installed (make install-nt)")
    calls, real = [], infinite.infinite_kernels
    monkeypatch.setattr(infinite, "infinite_kernels", lambda *a, **kw: calls.append(kw["kind"]) or real(*a, **kw))
    monkeypatch.setattr(function_space, "_CACHE", {})
    cfg = dataclasses.replace(tiny_cfg, kernel=KernelConfig(backend="weights", solver="ridge"))
    store = Store.prepare(str(tmp_path))
    for fam in ("ntk_inf", "nngp_inf"):
        run_row(fam, MODEL, cfg, tiny_data, store)
    assert calls == [("ntk", "nngp")]
    x_ot = np.concatenate([tiny_data.x_val, tiny_data.x_test])
    for fam, kind in (("ntk_inf", "ntk"), ("nngp_inf", "nngp")):
        k_tt, k_ot = real(MODEL, 3, 1, tiny_data.x_train, x_ot, kind=kind)
        reg = cfg.kernel.ridge * np.mean(np.diag(k_tt))
        a = np.linalg.solve(k_tt + reg * np.eye(len(k_tt)), np.eye(3)[tiny_data.y_train])
        acc = 100 * np.mean(np.argmax((k_ot @ a)[len(tiny_data.x_val) :], -1) == tiny_data.y_test)
        rec = next(r for r in store.records() if r["family"] == fam and r["protocol"] == "single")
        assert rec["metrics"]["acc"] == pytest.approx(acc)


# ----------------------------------------------------------------------- the full kernel (trace=false)


def full_ntk(module, params, x_tr, x_te):
    """Reference full NTK blocks from explicit per-example Jacobians (float64): (n, n, k, k), (m, n, k, k)."""
    f = lambda p, x: module.apply({"params": p}, x)  # noqa: E731

    def jac(x):
        leaves = jax.tree.leaves(jax.vmap(lambda xi: jax.jacrev(lambda p: f(p, xi[None])[0])(params))(x))
        return jnp.concatenate([a.reshape(a.shape[:2] + (-1,)) for a in leaves], -1)  # (B, k, P)

    j_tr, j_te = jac(x_tr), jac(x_te)
    return np.asarray(jnp.einsum("iap,jbp->ijab", j_tr, j_tr)), np.asarray(jnp.einsum("iap,jbp->ijab", j_te, j_tr))


@pytest.mark.parametrize("case", ["xent", "kd", "mse", "ridge"])
@pytest.mark.parametrize("offset", [True, False], ids=["ntk", "ntk_prime"])
def test_full_ntk_function_space_equals_weight_space_gd(setup, case, offset):
    """The linearised net trained by full-batch GD in weight space = `solve` on the full NTK, with
    Θ(test, train) applied as J_test (J_trainᵀ a) (`_jacobian_operator`), in float64. The traced
    kernel, on the same problem, is far off (the check can tell the two apart)."""
    module, x_tr, x_te, y = setup
    fam, key, k, n, eta = linearized(network(module), offset), jax.random.key(7), 3, len(x_tr), 0.3
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), module.init(key, x_tr[:1])["params"])
    teacher = np.asarray(jax.random.normal(jax.random.key(9), (n, k)), np.float64) * 3
    alpha, tau = (0.7, 2.0) if case == "kd" else (0.0, 1.0)
    onehot = jax.nn.one_hot(y, k, dtype=jnp.float64)
    if case in ("mse", "ridge"):
        loss_fn = lambda f: 0.5 * jnp.mean(jnp.sum((f - onehot) ** 2, -1))  # noqa: E731
    else:
        loss_fn = lambda f: distill_loss(f, y, jnp.asarray(teacher), alpha, tau)  # noqa: E731
    w_tr, w_te, f0_tr, f0_te = weight_space(fam, key, x_tr, x_te, loss_fn, eta, STEPS)
    k4_tt, k4_te = full_ntk(module, params, x_tr, x_te)
    if case == "ridge":  # no weight-space counterpart: kernel ridge from f0 on the explicit full kernel
        reg = 1e-3 * np.mean(np.einsum("iiaa->ia", k4_tt))
        d_tr, d_te = kernel_ridge(k4_tt, np.asarray(onehot) - np.asarray(f0_tr), k4_te, ridge=reg)
        w_tr, w_te = np.asarray(f0_tr) + d_tr, np.asarray(f0_te) + d_te
    f = lambda p, x: module.apply({"params": p}, x)  # noqa: E731
    op = function_space._jacobian_operator(f, params, np.asarray(x_tr), np.asarray(x_te), bs=7)
    a = np.asarray(jax.random.normal(jax.random.key(2), (n, k)), np.float64)
    assert rel_err(op(a), np.einsum("ijab,jb->ia", k4_te, a)) < 1e-10  # chunks of 7: padding tested
    solver = "ridge" if case == "ridge" else "mse" if case == "mse" else "xent"
    cfg = KernelConfig(backend="function", solver=solver, lr=eta, lr_units="absolute", steps=STEPS, ridge=1e-3)
    args = (np.asarray(f0_tr), np.asarray(f0_te), np.asarray(y), teacher if case == "kd" else None, alpha, tau, cfg)
    f_tr, f_te, _, _ = solve(k4_tt, op, *args)
    assert rel_err(f_tr, w_tr) < TOL and rel_err(f_te, w_te) < TOL
    assert np.abs(f_te - np.asarray(f0_te)).max() > 1e-2 * np.abs(f_te).max()  # it trained
    flat = k4_tt.transpose(0, 2, 1, 3).reshape(n * k, n * k)  # the flattened layout, an explicit test kernel
    g_tr, g_te, _, _ = solve(flat, k4_te, *args)
    assert rel_err(g_tr, f_tr) < 1e-10 and rel_err(g_te, f_te) < 1e-10
    traced = solve(np.einsum("ijaa->ij", k4_tt) / k, np.einsum("ijaa->ij", k4_te) / k, *args)
    assert rel_err(traced[1], w_te) > 1e-2


def test_full_kernel_trainer_members_sum_and_spill(tiny_data, tiny_cfg, monkeypatch):
    """FunctionTrainer with kernel.trace=false: the member kernel is the full NTK flattened, reused by
    ntk′ (one computation); spilled to disk it gives the same predictions; the train-sum of L members
    (float32 kernels) = weight-space GD of the summed linearised nets (float64) to float32 rounding."""
    monkeypatch.setattr(function_space, "_CACHE", {})
    d, k, L = tiny_data, 3, 3
    kcfg = KernelConfig(backend="function", solver="xent", lr=0.3, lr_units="absolute", steps=STEPS, trace=False)
    cfg = dataclasses.replace(tiny_cfg, kernel=kcfg)
    key = jax.random.key(4)
    module = build_model(MODEL, k, 1)
    params = module.init(key, d.x_train[:1])["params"]
    ref_tt, _ = full_ntk(module, params, jnp.asarray(d.x_train), jnp.asarray(d.x_test))
    k_tt, other, _, _ = FunctionTrainer("ntk", MODEL, cfg, d)._member(key)
    n = len(d.x_train)
    assert k_tt.shape == (n * k, n * k) and rel_err(k_tt, ref_tt.transpose(0, 2, 1, 3).reshape(n * k, n * k)) < 1e-5
    FunctionTrainer("ntk_prime", MODEL, cfg, d)._member(key)
    assert len(function_space._CACHE) == 1
    fit = lambda fam, **kw: FunctionTrainer(fam, MODEL, cfg, d, **kw).fit([key], [key], None, d.y_train)  # noqa: E731
    in_memory = fit("ntk").variables[0]["preds"]
    monkeypatch.setattr(function_space, "_CACHE", {})
    monkeypatch.setattr(function_space, "SPILL_BYTES", 0)
    spilled_kernel = FunctionTrainer("ntk", MODEL, cfg, d)._member(key)[0]
    assert isinstance(spilled_kernel, np.memmap)
    spilled = fit("ntk").variables[0]["preds"]
    for s in in_memory:
        np.testing.assert_array_equal(spilled[s], in_memory[s])
    with jax.enable_x64(True):
        fam = summed(linearized(network(module)), L, "mean")
        x_tr, x_te = jnp.asarray(d.x_train, jnp.float64), jnp.asarray(d.x_test, jnp.float64)
        loss_fn = lambda f: distill_loss(f, d.y_train, jnp.zeros((n, k)), 0.0, 1.0)  # noqa: E731
        w_tr, w_te, _, _ = weight_space(fam, key, x_tr, x_te, loss_fn, 0.3, STEPS, cfg.sum_grad_scale(L))
    preds = fit("ntk", n_sum=L).variables[0]["preds"]
    assert rel_err(preds["train"], w_tr) < 1e-4 and rel_err(preds["test"], w_te) < 1e-4
    traced = dataclasses.replace(cfg, kernel=dataclasses.replace(kcfg, trace=True))
    off = FunctionTrainer("ntk", MODEL, traced, d, n_sum=L).fit([key], [key], None, d.y_train).variables[0]["preds"]
    assert rel_err(off["test"], w_te) > 1e-2


def test_full_kernel_nt_backend_equals_ours(tiny_data, tiny_cfg, monkeypatch):
    """kernel.backend=nt with kernel.trace=false (neural-tangents' full kernels, Θ(other, train) an
    explicit array) gives the predictions of our backend (Θ(other, train) as J_other J_trainᵀ)."""
    from ntk_vs_nn.kernels import nt_compat

    if not nt_compat.available():
        pytest.skip("neural-tangents not installed (make install-nt)")
    monkeypatch.setattr(function_space, "_CACHE", {})
    key, preds = jax.random.key(6), {}
    for backend in ("function", "nt"):
        kcfg = KernelConfig(backend=backend, solver="xent", lr=0.3, lr_units="absolute", steps=STEPS, trace=False)
        cfg = dataclasses.replace(tiny_cfg, kernel=kcfg)
        trainer = FunctionTrainer("ntk", MODEL, cfg, tiny_data)
        assert trainer.full and trainer.kind == ("nt" if backend == "nt" else "ntk")
        preds[backend] = trainer.fit([key], [key], None, tiny_data.y_train).variables[0]["preds"]
    for s in ("train", "val", "test"):
        assert rel_err(preds["nt"][s], preds["function"][s]) < 1e-4


@pytest.mark.parametrize("family", ["ntk", "gp"])
def test_row_gradient_descent_equals_function_space_on_the_exact_kernel(tiny_data, tiny_cfg, tmp_path, family,
                                                                       monkeypatch):  # fmt: skip
    """The kernel rows' default, end to end through `protocols.Row`'s trainers: weight-space gradient
    descent on the linearised model (kernel.optimizer=sgd, full batch, constant step, no momentum) equals
    gradient descent in function space on the exact kernel (the full NTK, kernel.trace=false; gp's is exact
    traced) with the same step (kernel.lr_units=absolute), for a single, the train-sum model of L = 3
    (sum_grad=member: its kernel is the mean of the members') and a KD student of fixed targets."""
    from ntk_vs_nn.protocols import Row
    from ntk_vs_nn.store import Store

    monkeypatch.setattr(function_space, "_CACHE", {})
    d, eta, L, n = tiny_data, 0.5, 3, len(tiny_data.x_train)
    train = dataclasses.replace(tiny_cfg.train, epochs=STEPS, batch_size=n, lr=eta, momentum=0.0, schedule="constant")
    protocol = dataclasses.replace(tiny_cfg.protocol, members=L, kd_inputs="clean", kd_alpha=0.7, kd_tau=2.0)
    base = dataclasses.replace(tiny_cfg, train=train, protocol=protocol)
    weights = dataclasses.replace(base, kernel=KernelConfig(optimizer="sgd", weights_lr_units="absolute", momentum=0.0))
    funcs = dataclasses.replace(base, kernel=KernelConfig(backend="function", solver="xent", lr=eta,
                                                          lr_units="absolute", steps=STEPS, trace=False))  # fmt: skip
    w_row = Row(family, MODEL, weights, d, Store.prepare(str(tmp_path / "w")))
    f_row = Row(family, MODEL, funcs, d, Store.prepare(str(tmp_path / "f")))
    assert w_row.trainer.cfg.optimizer == "sgd" and w_row.trainer.full_batch
    key, dkey = jax.random.key(21), jax.random.key(22)
    teacher = np.asarray(jax.random.normal(jax.random.key(9), (1, n, 3)), np.float32) * 3

    def preds(row, kind, **kw):
        trainer = row.trainer_for(kind)
        v = trainer.fit([key], [dkey], d.x_train, d.y_train, mode="sequential", **kw).variables[0]
        if hasattr(trainer, "predict_splits"):
            return trainer.predict_splits(v, d)["test"]
        return trainer.predict(v, d.x_test)

    for kind, kw in [("teacher", {}), ("sum", {}), ("student", dict(teachers=teacher, alpha=0.7, tau=2.0))]:
        w, f = preds(w_row, kind, **kw), preds(f_row, kind, **kw)
        assert rel_err(f, w) < 1e-4, (kind, rel_err(f, w))
    # teeth: the sum's kernel at the older scale (sum_grad=joint: c² Σ Θ_l) is another trajectory
    joint = dataclasses.replace(funcs, protocol=dataclasses.replace(protocol, sum_grad="joint"))
    j_row = Row(family, MODEL, joint, d, Store.prepare(str(tmp_path / "j")))
    assert rel_err(preds(j_row, "sum"), preds(w_row, "sum")) > 1e-3


@pytest.mark.parametrize("family", ["ntk", "gp"])
def test_kernel_step_in_lambda_units_is_the_top_eigenvalue_of_the_explicit_kernel(tiny_data, tiny_cfg, tmp_path,
                                                                                   family):  # fmt: skip
    """kernel.weights_lr_units=lambda_max (the default with gradient descent): the row's step is
    kernel.weights_lr / lambda_max(J^T J / n), lambda_max by power iteration (jvp, vjp) = the top
    eigenvalue of the explicit Jacobian's J J^T / n (every parameter the descent moves), for every unit.
    A gp row's J is its head's features; an ntk row's the linearised net's Jacobian at W0."""
    from ntk_vs_nn import rng
    from ntk_vs_nn.protocols import Row
    from ntk_vs_nn.store import Store

    cfg = dataclasses.replace(tiny_cfg, kernel=KernelConfig(weights_lr=0.5))
    row = Row(family, MODEL, cfg, tiny_data, Store.prepare(str(tmp_path / "s")))
    x = jnp.asarray(tiny_data.x_train)  # 48 points: all of them (< Row.LAMBDA_POINTS)
    v = row.fam.init(rng.member_key(row.root, "init", 0), x[:1])
    jac = jax.jacrev(lambda p: row.fam.apply({"params": p, "state": v["state"]}, x).reshape(-1))(v["params"])
    j = np.concatenate([np.asarray(a, np.float64).reshape(a.shape[0], -1) for a in jax.tree.leaves(jac)], 1)
    top = float(np.linalg.eigvalsh(j @ j.T / len(x))[-1])
    lam = row.kernel_lambda()  # 31 power-iteration steps approach it from below: within 2 % (a unit of step)
    assert 0.98 * top < lam < top * (1 + 1e-5)
    assert row.trainer.cfg.lr == pytest.approx(0.5 / lam, rel=1e-6) and row.trainer.cfg.optimizer == "sgd"
    assert row.trainer_for("sum").cfg.lr == row.trainer.cfg.lr == row.train_cfg(student=True).lr

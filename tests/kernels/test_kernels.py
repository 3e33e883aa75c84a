"""Empirical kernels and function-space predictors, cross-checked in float64 on a tiny SimpleCNN.

1. Every NTK implementation, through the path the function-space backend uses (`batch` of
   `empirical_ntk_fn`, host memory), equals an explicit reference J J^T (ravel_pytree +
   jax.jacobian), full and traced (= mean of the diagonal), non-square, per-example or whole-batch,
   tiled (tile 4 with remainders, symmetric path mirrored), and train_test's two blocks (the training
   Jacobians kept in memory or on disk).
2. The ntk family's NTK at any params is the nn family's at W0; the gp family's is width·NNGP + 1.
3. Weight space = function space: the ntk family trained by optax.sgd on MSE / cross-entropy
   matches gradient_descent_mse / gradient_descent_xent with the full empirical NTK to 1e-8
   (relative); the nonlinear net trained alike does not, so the check has teeth.
4. Closed forms: the eigen formula = the explicit recursion; gradient flow at t = inf = kernel
   ridge at ridge 0, which interpolates; head_features feeds the head; the NNGP kernel is PSD.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import rel_err
from jax.flatten_util import ravel_pytree

import ntk_vs_nn.kernels as nt
from ntk_vs_nn.families import last_layer, linearized, network
from ntk_vs_nn.kernels.empirical import family_ntk_fn, head_features, nngp_fn
from ntk_vs_nn.kernels.predict import gradient_descent_mse, gradient_descent_xent, kernel_ridge
from ntk_vs_nn.models import build_model

MODEL, K, N_TRAIN, N_TEST, STEPS = "SimpleCNN-3-1", 3, 8, 4, 30
TOL = 1e-8  # relative (max-abs over max-abs) agreement of exact identities in float64
EXACT = 1e-12  # two float64 computations of the same kernel
IMPLEMENTATIONS = list(nt.NtkImplementation)


def f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.fixture(scope="module", autouse=True)
def x64():
    # float64 for exact comparisons; fewer XLA passes: these programs are tiny, compiling dominates
    fast = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    with jax.enable_x64(True), jax.numpy_rank_promotion("raise"):
        yield
    jax.config.update("jax_disable_most_optimizations", fast)


@pytest.fixture(scope="module")
def net(x64):
    """Module, f(params, x), float64 params, inputs x (12, 8, 1) and the reference Θ(x, x) (12, 12, k, k)."""
    module = build_model(MODEL, K, 1)
    x = jax.random.normal(jax.random.key(1), (12, 8, 1), jnp.float64)
    params = f64(module.init(jax.random.key(0), x[:1])["params"])
    f = lambda p, xb: module.apply({"params": p}, xb)
    flat, unravel = ravel_pytree(params)
    jac = jax.jit(jax.jacobian(lambda q: f(unravel(q), x).reshape(-1)))(flat)  # one explicit J: (12 k, P)
    ref = np.asarray(jac @ jac.T).reshape(len(x), K, len(x), K).transpose(0, 2, 1, 3)
    return module, f, params, x, ref


@pytest.fixture(scope="module")
def problem(net):
    """Training problem and its full / traced NTK at W0 (nn family)."""
    module, _, _, x, _ = net
    nn_fam = network(module)
    v0 = f64(nn_fam.init(jax.random.key(0), x[:1]))
    x_train, x_test = x[:N_TRAIN], x[N_TRAIN : N_TRAIN + N_TEST]
    y = np.asarray(jax.nn.one_hot(jnp.arange(N_TRAIN) % K, K), np.float64)
    full = family_ntk_fn(nn_fam, v0, trace_axes=())
    k_tt, k_st = np.asarray(full(x_train)), np.asarray(full(x_test, x_train))
    lam_max = np.linalg.eigvalsh(k_tt.transpose(0, 2, 1, 3).reshape(N_TRAIN * K, -1))[-1]
    return dict(
        module=module,
        nn=nn_fam,
        v0=v0,
        ntk_fn=full,
        x_train=x_train,
        x_test=x_test,
        y=y,
        k_tt=k_tt,
        k_st=k_st,
        kt_tt=np.einsum("ijaa->ij", k_tt) / K,  # traced = mean of the diagonal (tested below)
        kt_st=np.einsum("ijaa->ij", k_st) / K,
        fx_train_0=np.asarray(nn_fam.apply(v0, x_train)),
        fx_test_0=np.asarray(nn_fam.apply(v0, x_test)),
        lr=float(N_TRAIN / lam_max),  # ηλ_max/n = 1: stable, and the outputs move by O(1)
    )


def diag_mean(kern):
    return np.einsum("ijaa->ij", kern) / K


def suite_ntk(f, trace_axes, impl, tile, vmap_axes=0, **kw):
    """The kernel API as the function-space backend calls it: batch(empirical_ntk_fn(...)) in host memory."""
    fn = nt.empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=vmap_axes, implementation=impl)
    return nt.batch(fn, tile, store_on_device=False, **kw)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_ntk_matches_explicit_jacobian(net, impl):
    _, f, params, x, ref = net
    x1, x2, ref12 = x[:6], x[6:10], ref[:6, 6:10]  # non-square, distinct: ignoring x2 or swapping axes shows
    k12 = suite_ntk(f, (), impl, 4)(x1, x2, params)
    assert isinstance(k12, np.ndarray) and k12.shape == (6, 4, K, K) and k12.dtype == np.float64
    assert rel_err(k12, ref12) < EXACT
    # traced = the MEAN of the k diagonal entries (a sum would be off by a factor k = 3)
    traced = suite_ntk(f, (-1,), impl, 4)(x1, x2, params)
    assert traced.shape == (6, 4)
    assert rel_err(traced, diag_mean(ref12)) < EXACT and rel_err(traced, diag_mean(k12)) < EXACT
    # each tile differentiated as one batch (vmap_axes=None): the same for independent examples
    batch = suite_ntk(f, (), impl, 4, vmap_axes=None)
    if impl == nt.NtkImplementation.STRUCTURED_DERIVATIVES:  # it needs independent examples
        with pytest.raises(ValueError, match="STRUCTURED_DERIVATIVES does not apply"):
            batch(x1, x2, params)
    else:
        assert rel_err(batch(x1, x2, params), ref12) < EXACT


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_tiling_matches_untiled(net, impl):
    _, f, params, x, ref = net
    x1, x2 = x[:10], x[3:10]  # 10 = 2·4 + 2 and 7 = 4 + 3 with tile_size 4: remainders on both sides
    full, traced = suite_ntk(f, (), impl, 4), suite_ntk(f, (-1,), impl, 4)
    assert rel_err(full(x1, x2, params), ref[:10, 3:10]) < EXACT
    assert rel_err(traced(x1, x2, params), diag_mean(ref[:10, 3:10])) < EXACT
    # symmetric path: only the upper tiles are computed, the lower ones mirrored
    assert rel_err(full(x1, None, params), ref[:10, :10]) < EXACT
    assert rel_err(traced(x1, None, params), diag_mean(ref[:10, :10])) < EXACT


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("cache_bytes", [8 << 30, 0])  # 0: every kept Jacobian tile goes to disk
def test_train_test_blocks_share_the_training_jacobian(net, impl, cache_bytes):
    _, f, params, x, ref = net
    x_train, x_test = x[:7], x[7:12]  # 7 = 4 + 3 training rows, 5 = 4 + 1 test rows with tile_size 4
    for trace_axes, view in [((), lambda a: a), ((-1,), diag_mean)]:
        fn = suite_ntk(f, trace_axes, impl, 4, cache_bytes=cache_bytes)
        k_tt, k_st = fn.train_test(x_train, x_test, params)
        assert rel_err(k_tt, view(ref[:7, :7])) < EXACT
        assert rel_err(k_st, view(ref[7:12, :7])) < EXACT


def test_ntk_family_kernel_is_nn_kernel_at_init(problem):
    p = problem
    ntk_fam = linearized(p["nn"])
    v = f64(ntk_fam.init(jax.random.key(0), p["x_train"][:1]))
    assert rel_err(ravel_pytree(v["state"]["anchor"])[0], ravel_pytree(p["v0"]["params"])[0]) == 0.0
    moved = jax.tree.map(lambda a: a + 0.3 * jnp.sign(a), v["params"])  # far from W0
    k_ntk = family_ntk_fn(ntk_fam, v, trace_axes=())(p["x_test"], p["x_train"], params=moved)
    assert rel_err(k_ntk, p["k_st"]) < EXACT
    k_nn_moved = p["ntk_fn"](p["x_test"], p["x_train"], params=moved)
    assert rel_err(k_nn_moved, p["k_st"]) > 1e-2  # the net's own kernel does move


def test_gp_family_kernel_is_width_times_nngp_plus_one(problem):
    p = problem
    gp = last_layer(p["nn"])
    v = f64(gp.init(jax.random.key(0), p["x_train"][:1]))
    params = {**v["state"]["frozen"], **v["params"]}
    phi = lambda x: head_features(p["module"], params, x)
    width = phi(p["x_train"]).shape[-1]
    k_gp = family_ntk_fn(gp, v, trace_axes=())(p["x_train"], p["x_test"])  # (n1, n2, k, k)
    k_nngp = nngp_fn(phi, tile_size=3)(p["x_train"], p["x_test"])
    assert rel_err(k_gp, np.einsum("ij,ab->ijab", width * k_nngp + 1.0, np.eye(K))) < EXACT


def test_head_features_and_nngp_kernel(net):
    module, f, params, x, _ = net
    phi = head_features(module, params, x)
    assert phi.shape == (len(x), 32)
    out = phi @ params["head"]["kernel"] + params["head"]["bias"][None]
    assert rel_err(out, f(params, x)) < EXACT
    kern = nngp_fn(lambda z: head_features(module, params, z), tile_size=5)(x)
    assert rel_err(kern, np.asarray(phi @ phi.T) / 32) < EXACT
    assert np.max(np.abs(kern - kern.T)) <= 1e-14 * np.max(np.abs(kern))
    assert np.linalg.eigvalsh(kern).min() >= -1e-12 * np.abs(kern).max()


def train_weight_space(fam, variables, loss, x_train, y, x_test, lr, steps):
    """Full-batch GD with optax.sgd; returns the train and test outputs."""
    apply = lambda params, x: fam.apply({"params": params, "state": variables["state"]}, x)
    opt = optax.sgd(lr)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda q: loss(apply(q, x_train), y))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = variables["params"], opt.init(variables["params"])
    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return np.asarray(apply(params, x_train)), np.asarray(apply(params, x_test))


def mse(fx, y):
    return 0.5 * jnp.sum((fx - y) ** 2) / len(y)


def xent(fx, y):
    return optax.softmax_cross_entropy(fx, y).mean()


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_weight_space_equals_function_space(problem, loss):
    p = problem
    if loss == "mse":
        predict = gradient_descent_mse(p["k_tt"], p["y"], p["lr"], n_steps=STEPS)
        fx_train, fx_test = predict(p["fx_train_0"], p["fx_test_0"], p["k_st"])
    else:
        fx_train, fx_test = gradient_descent_xent(
            p["k_tt"], p["y"], p["k_st"], p["fx_train_0"], p["fx_test_0"], 4 * p["lr"], STEPS
        )
    lr = p["lr"] if loss == "mse" else 4 * p["lr"]
    args = ({"mse": mse, "xent": xent}[loss], p["x_train"], p["y"], p["x_test"], lr, STEPS)
    ntk_fam = linearized(p["nn"])
    lin_train, lin_test = train_weight_space(ntk_fam, f64(ntk_fam.init(jax.random.key(0), p["x_train"][:1])), *args)
    assert rel_err(lin_train, fx_train) < TOL and rel_err(lin_test, fx_test) < TOL
    assert rel_err(fx_train, p["fx_train_0"]) > 0.1  # training moved the outputs
    nn_train, nn_test = train_weight_space(p["nn"], p["v0"], *args)
    assert min(rel_err(nn_train, fx_train), rel_err(nn_test, fx_test)) > 100 * TOL  # the net is not linear


@pytest.mark.parametrize("kernel", ["full", "traced"])
def test_gd_mse_closed_form_equals_recursion(problem, kernel):
    p = problem
    k_tt, k_st = (p["k_tt"], p["k_st"]) if kernel == "full" else (p["kt_tt"], p["kt_st"])
    predict = gradient_descent_mse(k_tt, p["y"], p["lr"], n_steps=STEPS)
    fx_train, fx_test = predict(p["fx_train_0"], p["fx_test_0"], k_st)
    f_tr, f_te = p["fx_train_0"].copy(), p["fx_test_0"].copy()
    apply_k = (lambda kern, r: np.einsum("ijab,jb->ia", kern, r)) if kernel == "full" else np.matmul  # or ⊗ I_k
    for _ in range(STEPS):  # f <- f - (η/n) Θ(·, X_train) (f_train - y)
        r = f_tr - p["y"]
        f_tr, f_te = f_tr - p["lr"] / N_TRAIN * apply_k(k_tt, r), f_te - p["lr"] / N_TRAIN * apply_k(k_st, r)
    assert rel_err(fx_train, f_tr) < TOL and rel_err(fx_test, f_te) < TOL
    # gradient flow: many small steps approach it (O(η) error), 2 big steps do not
    args = (p["fx_train_0"], p["fx_test_0"], k_st)
    flow = gradient_descent_mse(k_tt, p["y"], p["lr"], t=2.0)(*args)[1]
    fine = gradient_descent_mse(k_tt, p["y"], p["lr"] / 1000, n_steps=2000)(*args)[1]
    coarse = gradient_descent_mse(k_tt, p["y"], p["lr"], n_steps=2)(*args)[1]
    assert rel_err(fine, flow) < 1e-3 and rel_err(coarse, flow) > 1e-2  # seen: 7e-5 and 0.08


@pytest.mark.parametrize("kernel", ["full", "traced"])
def test_kernel_ridge_interpolates_and_is_the_flow_limit(problem, kernel):
    p = problem
    k_tt, k_st = (p["k_tt"], p["k_st"]) if kernel == "full" else (p["kt_tt"], p["kt_st"])
    fx_train, fx_test = kernel_ridge(k_tt, p["y"], k_st, ridge=0.0)
    assert rel_err(fx_train, p["y"]) < TOL
    zeros_tr, zeros_te = np.zeros_like(p["y"]), np.zeros((N_TEST, K))
    for t in [np.inf, 1e6 * STEPS]:
        flow = gradient_descent_mse(k_tt, p["y"], p["lr"], t=t)(zeros_tr, zeros_te, k_st)
        assert rel_err(flow[0], fx_train) < TOL and rel_err(flow[1], fx_test) < TOL
    # a ridge that matters does not interpolate: the check above can fail
    big = np.linalg.eigvalsh(k_tt.transpose(0, 2, 1, 3).reshape(N_TRAIN * K, -1) if kernel == "full" else k_tt)[-1]
    assert rel_err(kernel_ridge(k_tt, p["y"], k_st, ridge=0.1 * big)[0], p["y"]) > 1e-3

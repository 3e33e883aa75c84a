"""Cross-checks against neural-tangents 0.6.5 (`ntk_vs_nn.kernels.nt`, `.infinite`, `.nt_compat`), marker ``nt``.

Skipped when neural-tangents is not installed (``make install-nt``); ``scripts/test_nt.sh`` installs
it and sets NTK_VS_NN_REQUIRE_NT=1, which turns a failed import into a failure instead of a skip.

1. Empirical NTK: ours (every implementation, through the path the function-space backend uses:
   `batch(empirical_ntk_fn(...), tile)` in host memory, tiles that do not divide n, x2 given,
   x2=None and train_test) equals neural-tangents' JACOBIAN_CONTRACTION and NTK_VECTOR_PRODUCTS,
   full and traced, on an MLP, SimpleCNN-3-1 and ResNet-10-1 (1-D), float64, to 1e-10 relative
   (max-abs difference over max-abs value; observed ~1e-15).
2. The stax network of `infinite_kernel_fn` *is* our Flax network: with the Flax weights copied in,
   its outputs equal the Flax model's to 1e-12 (GroupNorm at init = stax LayerNorm; strides,
   padding, shortcuts, head), it has the same weights, and neural-tangents' empirical NTK of it equals
   ours w.r.t. the same (non-normalisation) weights to 1e-10.
3. Infinite width vs Monte Carlo over our own wide Flax nets: SimpleCNN-3-16 (256/512 channels), mean
   over 4 inits of our NNGP (`nngp_fn` of `head_features`) and traced empirical NTK, within 6 % of
   `infinite_kernels` (observed 2-3 %; the error shrinks with width: 8-14 % at w=1, 4-8 % at w=4).
   ResNet-10-8 NNGP over 16 inits within 8 % (observed 2.3 %; its stem keeps 16 channels at any w).
   The checks have teeth: the NTK-parameterised kernel is off by a factor ~500, the kernel without
   normalisation by ~100 % (asserted > 90 % and > 20 %).
4. API: shapes, symmetry, PSD, padding-independence of the batching, one pass for both kinds;
   ResNet-34 is refused as not expressible; a missing install is one UserError line.
"""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from flax import traverse_util

import ntk_vs_nn.kernels as api
from ntk_vs_nn.config import UserError
from ntk_vs_nn.kernels import infinite, nt_compat
from ntk_vs_nn.kernels import nt as nt_backend
from ntk_vs_nn.kernels.empirical import head_features, nngp_fn
from ntk_vs_nn.models import build_model

try:
    nt_compat.import_neural_tangents()
    NT_ERROR = None
except UserError as e:
    NT_ERROR = str(e)
    if os.environ.get("NTK_VS_NN_REQUIRE_NT"):
        raise
needs_nt = pytest.mark.skipif(NT_ERROR is not None, reason=f"neural-tangents not importable: {NT_ERROR}")

K = 3
EXACT = 1e-10  # two float64 computations of the same quantity


def f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = x.reshape(len(x), -1)
        for width in (16, 16):
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(K, name="head")(h)


def suite_ntk(f, trace_axes=(-1,), implementation="auto", tile=3):
    """Our empirical NTK as the function-space backend computes it: batch(empirical_ntk_fn(...)), host memory."""
    fn = api.empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, implementation=implementation)
    return api.batch(fn, tile, store_on_device=False)


def _network(name):
    return MLP() if name == "MLP" else build_model(name, K, 1)


# ------------------------------------------------------------------------- 1. empirical NTK


@pytest.mark.parametrize("name", ["MLP", "SimpleCNN-3-1", "ResNet-10-1"])
@pytest.mark.parametrize("trace_axes", [(), (-1,)], ids=["full", "traced"])
@pytest.mark.nt
@needs_nt
def test_empirical_ntk_equals_neural_tangents(x64, name, trace_axes):
    module = _network(name)
    x = jax.random.normal(jax.random.key(1), (7, 8, 1), jnp.float64)
    params = f64(jax.jit(module.init)(jax.random.key(0), x[:1])["params"])
    f = lambda p, xb: module.apply({"params": p}, xb)
    x1, x2 = x[:4], x[4:]
    calls = {"x1x2": (x1, x2), "xx": (x, None), "x2x2": (x2, None)}  # Θ(x2, x2): train_test's first block
    theirs = {
        impl: {c: np.asarray(nt_backend.nt_empirical_ntk_fn(f, trace_axes, impl)(*a, params)) for c, a in calls.items()}
        for impl in ("jacobian_contraction", "ntk_vector_products")
    }
    assert theirs["jacobian_contraction"]["x1x2"].dtype == np.float64
    for c in calls:
        assert rel_err(theirs["ntk_vector_products"][c], theirs["jacobian_contraction"][c]) < EXACT
    for impl in api.NtkImplementation:  # tiles of 3: 4 = 3 + 1, 7 = 3 + 3 + 1
        ours = suite_ntk(f, trace_axes, impl)
        k12, kxx = ours(x1, x2, params), ours(x, None, params)
        k22, k12_tt = ours.train_test(x2, x1, params)  # (Θ(x2, x2), Θ(x1, x2))
        assert k12.shape == ((4, 3) if trace_axes else (4, 3, K, K))
        for their_impl, ref in theirs.items():
            for got, c in ((k12, "x1x2"), (kxx, "xx"), (k22, "x2x2"), (k12_tt, "x1x2")):
                assert rel_err(got, ref[c]) < EXACT, (impl, their_impl, c)
    if name == "ResNet-10-1":
        return
    # neural-tangents differentiating the batch as a whole (vmap_axes=None) gives the same kernel
    whole_batch = nt_backend.nt_empirical_ntk_fn(f, trace_axes, "jacobian_contraction", vmap_axes=None)
    assert rel_err(whole_batch(x1, x2, params), theirs["jacobian_contraction"]["x1x2"]) < EXACT


@pytest.mark.parametrize("trace_axes", [(), (-1,)], ids=["full", "traced"])
@pytest.mark.nt
@needs_nt
def test_nt_train_test_in_tiles_equals_one_call(x64, trace_axes):
    """The nt backend's tiled path (nt.batch, tiles that do not divide n, padded rows cropped)
    gives the one-call kernels; and equals our train_test."""
    module = _network("SimpleCNN-3-1")
    x = jax.random.normal(jax.random.key(2), (12, 8, 1), jnp.float64)
    params = f64(jax.jit(module.init)(jax.random.key(0), x[:1])["params"])
    f = lambda p, xb: module.apply({"params": p}, xb)  # noqa: E731
    x_tr, x_ot = x[:7], x[7:]
    fn = nt_backend.nt_empirical_ntk_fn(f, trace_axes)
    k_tt, k_ot = nt_backend.nt_train_test(fn, x_tr, x_ot, params, tile_size=3)
    assert k_tt.shape[:2] == (7, 7) and k_ot.shape[:2] == (5, 7)
    assert rel_err(k_tt, fn(x_tr, None, params)) < EXACT and rel_err(k_ot, fn(x_ot, x_tr, params)) < EXACT
    ours_tt, ours_ot = suite_ntk(f, trace_axes).train_test(x_tr, x_ot, params)
    assert rel_err(k_tt, ours_tt) < EXACT and rel_err(k_ot, ours_ot) < EXACT


@pytest.mark.nt
@needs_nt
def test_unsupported_nt_implementation_is_refused():
    nt = nt_compat.import_neural_tangents()
    for impl in ("structured_derivatives", nt.NtkImplementation.STRUCTURED_DERIVATIVES, nt.NtkImplementation.AUTO):
        with pytest.raises(UserError):
            nt_backend.nt_empirical_ntk_fn(lambda p, x: x, (), impl)


@pytest.mark.nt
@needs_nt
def test_compat_layer_leaves_jax_unchanged():
    import jax.core
    import jax.interpreters.ad

    nt = nt_compat.import_neural_tangents()
    assert nt.__version__ == nt_compat.NT_VERSION and nt_compat.available()
    if tuple(int(v) for v in jax.__version__.split(".")[:2]) >= (0, 7):  # names removed from jax itself
        assert not any(hasattr(jax.core, n) for n in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive"))
        assert not hasattr(jax.interpreters.ad, "zeros_like_p") and "jax.util" not in sys.modules
    with pytest.raises(ImportError, match="tensorflow"):
        nt.experimental.empirical_ntk_fn_tf  # noqa: B018 - the stub raises on access


# ------------------------------------------------------------- 2. stax network = Flax network


def _flax_layers_in_call_order(module, params, x):
    """The param dicts of the Conv / Dense layers of a Flax net, in the order they are called."""
    paths = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense)):
            paths.append(context.module.scope.path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda p: module.apply({"params": p}, x), params)  # records while tracing
    layers = []
    for path in paths:
        d = params
        for key in path:
            d = d[key]
        layers.append(d)
    return layers


def _stax_params_from_flax(stax_params, flax_layers):
    """stax params (nested tuples of (W, b)) with each W replaced by the Flax kernel of that shape.

    Matching is by shape, in call order: within a projection block the stax order is (main conv,
    main conv, shortcut) and Flax calls the 1x1 shortcut first, so the shape tells them apart.
    """
    unused = list(flax_layers)

    def fill(p):
        if isinstance(p, tuple) and len(p) == 2 and hasattr(p[0], "shape"):
            w, b = p
            for i, layer in enumerate(unused):
                if layer["kernel"].shape == w.shape:
                    unused.pop(i)
                    return layer["kernel"], None if b is None else layer["bias"].reshape(b.shape)
            raise AssertionError(f"no Flax layer with a kernel of shape {w.shape}")
        if isinstance(p, (tuple, list)):
            return type(p)(fill(q) for q in p)
        return p

    out = fill(stax_params)
    assert not unused, [layer["kernel"].shape for layer in unused]
    return out


def _split_norm_params(params):
    flat = traverse_util.flatten_dict(params)
    is_norm = {k: any(part.startswith("Norm_") for part in k) for k in flat}
    weights = traverse_util.unflatten_dict({k: v for k, v in flat.items() if not is_norm[k]})
    norms = traverse_util.unflatten_dict({k: v for k, v in flat.items() if is_norm[k]})
    return weights, norms


@pytest.mark.parametrize(
    "name, ndim, norm",
    [
        ("SimpleCNN-3-1", 1, "layer"),
        ("SimpleCNN-4-1", 2, "none"),
        ("ResNet-16-1", 1, "layer"),  # identity blocks and strided projections
        ("ResNet-10-2", 1, "layer"),  # a projection (16 -> 32 channels) in the first stage too
    ],
)
@pytest.mark.nt
@needs_nt
def test_stax_network_is_our_flax_network(x64, name, ndim, norm):
    shape = (5, 12, 1) if ndim == 1 else (5, 9, 9, 2)
    x = jax.random.normal(jax.random.key(1), shape, jnp.float64)
    module = build_model(name, K, ndim, norm=norm)
    params = f64(jax.jit(module.init)(jax.random.key(0), x[:1])["params"])  # jitted: eager ops are slow
    init_fn, apply_fn, _ = infinite.infinite_kernel_fn(name, K, ndim, norm=norm)
    _, stax_shapes = jax.eval_shape(lambda key: init_fn(key, x.shape), jax.random.key(2))
    stax_params = _stax_params_from_flax(stax_shapes, _flax_layers_in_call_order(module, params, x))
    ours = jax.jit(module.apply)({"params": params}, x)
    assert rel_err(jax.jit(apply_fn)(stax_params, x), ours) < 1e-12  # (GroupNorm at init: scale 1, offset 0)
    weights, norms = _split_norm_params(params)
    size = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))
    assert size(stax_shapes) == size(weights)
    # the empirical NTK of the stax net (neural-tangents) = ours w.r.t. the same weights
    f = lambda w, xb: module.apply({"params": _merge(w, norms)}, xb)
    mine = suite_ntk(f, (-1,), tile=2)(x[:3], x[3:], weights)
    theirs = nt_backend.nt_empirical_ntk_fn(apply_fn, (-1,))(x[:3], x[3:], stax_params)
    assert rel_err(mine, theirs) < EXACT


def _merge(a, b):
    flat = {**traverse_util.flatten_dict(a), **traverse_util.flatten_dict(b)}
    return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------ 3. infinite width, Monte Carlo


def _monte_carlo(name, x, seeds, ntk=True):
    """Mean over inits of our NNGP (head features / width) and traced empirical NTK, float32."""
    module = build_model(name, K, 1)
    f = lambda p, xb: module.apply({"params": p}, xb)
    init = jax.jit(module.init)  # one compile for every seed
    features = jax.jit(lambda p, xb: head_features(module, p, xb))
    ntk_fn = suite_ntk(f, (-1,), tile=256)
    nngps, ntks = [], []
    for s in range(seeds):
        params = init(jax.random.key(s), x[:1])["params"]
        phi = np.asarray(features(params, x), np.float64)
        nngps.append(phi @ phi.T / phi.shape[-1])
        if s == 0:  # = our nngp_fn
            assert rel_err(nngp_fn(lambda xb: features(params, xb))(x), nngps[0]) < 1e-6
        if ntk:
            ntks.append(ntk_fn(x, None, params))
    return np.mean(nngps, 0), (np.mean(ntks, 0) if ntk else None)


@pytest.mark.nt
@needs_nt
def test_infinite_kernels_match_monte_carlo_simplecnn():
    name, tol = "SimpleCNN-3-16", 0.06
    x = np.random.RandomState(0).randn(6, 8, 1).astype(np.float32)
    nngp_mc, ntk_mc = _monte_carlo(name, x, seeds=4)
    inf = infinite.infinite_kernels(name, K, 1, x, None, kind=("nngp", "ntk"), batch_size=3)
    assert rel_err(nngp_mc, inf["nngp"][0]) < tol
    assert rel_err(ntk_mc, inf["ntk"][0]) < tol
    # teeth: other conventions are far outside the tolerance
    ntk_param = infinite.infinite_kernels(name, K, 1, x, kind="ntk", parameterization="ntk")[0]
    assert rel_err(ntk_mc, ntk_param) > 0.9
    no_norm = infinite.infinite_kernels(name, K, 1, x, kind=("nngp", "ntk"), norm="none")
    assert rel_err(nngp_mc, no_norm["nngp"][0]) > 0.2 and rel_err(ntk_mc, no_norm["ntk"][0]) > 0.2


@pytest.mark.nt
@needs_nt
def test_infinite_nngp_matches_monte_carlo_resnet():
    name = "ResNet-10-8"
    x = np.random.RandomState(0).randn(6, 8, 1).astype(np.float32)
    nngp_mc, _ = _monte_carlo(name, x, seeds=16, ntk=False)
    nngp_inf, _ = infinite.infinite_kernels(name, K, 1, x, kind="nngp")
    assert rel_err(nngp_mc, nngp_inf) < 0.08


# ------------------------------------------------------------------------------------ 4. API


@pytest.mark.nt
@needs_nt
def test_infinite_kernels_api():
    rs = np.random.RandomState(0)
    x_train, x_test = rs.randn(7, 10, 1), rs.randn(3, 10, 1)
    k_tt, k_st = infinite.infinite_kernels("SimpleCNN-3-1", K, 1, x_train, x_test, kind="ntk", batch_size=4)
    assert k_tt.shape == (7, 7) and k_st.shape == (3, 7) and k_tt.dtype == np.float64
    assert rel_err(k_tt, k_tt.T) < 1e-12 and np.linalg.eigvalsh(k_tt).min() > 0
    # padding to a multiple of the batch does not change anything; kinds from one pass or two agree
    both = infinite.infinite_kernels("SimpleCNN-3-1", K, 1, x_train, x_test, kind=("ntk", "nngp"), batch_size=5)
    assert rel_err(both["ntk"][0], k_tt) < 1e-12 and rel_err(both["ntk"][1], k_st) < 1e-12
    nngp_tt, nngp_st = infinite.infinite_kernels("SimpleCNN-3-1", K, 1, x_train, x_test, kind="nngp")
    assert rel_err(both["nngp"][0], nngp_tt) < 1e-12 and rel_err(both["nngp"][1], nngp_st) < 1e-12
    # the other-train block equals the train rows of the same inputs
    _, k_again = infinite.infinite_kernels("SimpleCNN-3-1", K, 1, x_train, x_train[:2], kind="ntk", batch_size=4)
    assert rel_err(k_again, k_tt[:2]) < 1e-12
    assert infinite.infinite_kernels("ResNet-10-1", K, 1, x_train, kind="nngp", batch_size=7)[1] is None
    empty = infinite.infinite_kernels("SimpleCNN-3-1", K, 1, x_train, x_test[:0], kind=("ntk", "nngp"))
    assert empty["nngp"][1].shape == (0, 7) and rel_err(empty["ntk"][0], k_tt) < 1e-12
    with pytest.raises(UserError, match="not expressible"):
        infinite.infinite_kernel_fn("ResNet-34", K, 2)
    with pytest.raises(UserError):
        infinite.infinite_kernels("SimpleCNN-3-1", K, 2, x_train)  # 1-D inputs, 2-D model
    with pytest.raises(UserError):
        infinite.infinite_kernels("SimpleCNN-3-1", K, 1, x_train, kind="gp")


def test_supports():
    assert infinite.supports("SimpleCNN-4-1") and infinite.supports("ResNet-10-1", norm="group")
    assert not infinite.supports("ResNet-34") and not infinite.supports("ResNet-34-2")
    assert not infinite.supports("VGG-11") and not infinite.supports("SimpleCNN-3-1", norm="batch")


def test_missing_neural_tangents_is_one_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "neural_tangents", None)  # as if not installed
    with pytest.raises(UserError, match="make install-nt") as info:
        nt_compat.import_neural_tangents()
    assert "\n" not in str(info.value)
    assert not nt_compat.available()

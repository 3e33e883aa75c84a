"""`ntk_vs_nn.kernels` (the NT-compatible API) against neural-tangents 0.6.5 itself, marker ``nt``.

neural-tangents is imported through `ntk_vs_nn.kernels.nt_compat` (skipped when not installed; with
NTK_VS_NN_REQUIRE_NT=1 a failed import fails). Its JACOBIAN_CONTRACTION and NTK_VECTOR_PRODUCTS run
on this jax (its STRUCTURED_DERIVATIVES and AUTO do not), so every one of our four implementations is
compared with its JACOBIAN_CONTRACTION, float64, 1e-10 relative, over: a Flax MLP, a CNN with dict
outputs (logits and a spatial map), ResNet-10-1 (1-D), and every combination the test lists of
trace_axes x diagonal_axes x vmap_axes (None, 0, a triple) x x2 (given, None). Its NTK_VECTOR_PRODUCTS
is compared too where cheap. Also the NNGP, empirical_kernel_fn by name, the keyword conventions
(2-tuples split, rng keys) and ntk_vp_fn, all with neural-tangents' own functions as the reference.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from conftest import rel_err
from test_empirical_api import CNN

import ntk_vs_nn.kernels as ours
from ntk_vs_nn.config import UserError
from ntk_vs_nn.kernels import nt_compat
from ntk_vs_nn.models import build_model

try:
    NT = nt_compat.import_neural_tangents()
    NT_ERROR = None
except UserError as e:
    NT, NT_ERROR = None, str(e)
    if os.environ.get("NTK_VS_NN_REQUIRE_NT"):
        raise
pytestmark = [
    pytest.mark.usefixtures("x64"),  # every test here in float64 (conftest's `x64`)
    pytest.mark.nt,
    pytest.mark.skipif(NT_ERROR is not None, reason=f"neural-tangents not importable: {NT_ERROR}"),
]
EXACT = 1e-10
SPREAD_OVER_WORKERS = True  # conftest: its tests are shared among `make test`'s workers, not kept on one


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = x.reshape(len(x), -1)
        for width in (8, 8):
            h = nn.relu(nn.Dense(width)(h))
        return nn.Dense(3)(h)


# model -> (input shape, [(trace_axes, diagonal_axes)] valid for every output leaf)
MODELS = {
    "MLP": ((4, 3), [((-1,), ()), ((), ()), ((), (0,)), ((), (-1,)), ((0,), ()), ((0, 1), ())]),
    "CNN-dict": ((4, 3, 2), [((-1,), ()), ((), ()), ((), (0,)), ((), (-1,)), ((-1,), (0,)), ((0,), (-1,))]),
    "ResNet-10-1": ((8, 1), [((-1,), ()), ((), ())]),
}


def _model(name):
    module = {"MLP": MLP, "CNN-dict": CNN}.get(name, lambda: build_model(name, 3, 1))()
    shape = MODELS[name][0]
    x = jax.random.normal(jax.random.key(1), (5, *shape), jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(jax.random.key(0), x[:1])["params"])
    return (lambda p, xb: module.apply({"params": p}, xb)), x, params


def _close(a, b):
    return all(rel_err(u, v) < EXACT for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


# one case per (model, trace/diagonal layout), so that `make test`'s workers share them (SPREAD_OVER_WORKERS)
CASES = [(name, trace, diag) for name, (_, layouts) in MODELS.items() for trace, diag in layouts]


@pytest.mark.parametrize("name, trace, diag", CASES, ids=[f"{n}-t{t}-d{d}" for n, t, d in CASES])
def test_every_implementation_equals_neural_tangents_over_argument_combinations(name, trace, diag):
    f, x, params = _model(name)
    x1, x2s = x[:2], {"x2": x[2:], "None": None}
    vmaps = [None, 0, (0, 0, {})] if name != "ResNet-10-1" else [0]
    checked = 0
    for vmap_axes in vmaps:
        theirs = jax.jit(NT.empirical_ntk_fn(f, trace, diag, vmap_axes, NT.NtkImplementation.JACOBIAN_CONTRACTION))
        impls = list(ours.NtkImplementation) if vmap_axes is not None else [1, 2, 0]
        for x2_name, x2 in x2s.items():
            # a traced or diagonal batch axis needs len(x1) == len(x2)
            a, b = (x1, x2) if 0 not in trace + diag else (x[:3], None if x2 is None else x[2:])
            ref = theirs(a, b, params)
            for impl in impls:
                got = ours.empirical_ntk_fn(f, trace, diag, vmap_axes, impl)(a, b, params)
                assert jax.tree.structure(got) == jax.tree.structure(ref)
                assert _close(got, ref), (vmap_axes, x2_name, impl)
                checked += 1
    assert checked >= 8  # ResNet: 2 x2 x 4 implementations; the others 2 x (4 + 4 + 3)


@pytest.mark.parametrize("name", ["MLP", "CNN-dict"])
def test_ntk_vector_products_equal_neural_tangents(name):
    f, x, params = _model(name)
    x1 = x[:2]
    vp = jax.jit(NT.empirical_ntk_fn(f, (), (), 0, NT.NtkImplementation.NTK_VECTOR_PRODUCTS))(x1, x[2:], params)
    assert _close(ours.empirical_ntk_fn(f, (), (), 0, "ntk_vector_products")(x1, x[2:], params), vp)


@pytest.mark.parametrize("trace, diag", [((-1,), ()), ((), ()), ((), (0,)), ((0,), (-1,))])
def test_nngp_and_kernel_fn_equal_neural_tangents(trace, diag):
    f, x, params = _model("MLP")
    x1, x2 = x[:3], x[2:]
    for b in (x2, None):
        assert _close(
            ours.empirical_nngp_fn(f, trace, diag)(x1, b, params), NT.empirical_nngp_fn(f, trace, diag)(x1, b, params)
        )
        mine = ours.empirical_kernel_fn(f, trace, diag, 0)
        theirs = NT.empirical_kernel_fn(f, trace, diag, 0)
        for get in ("ntk", "nngp", ("nngp", "ntk"), ("ntk", "nngp"), None):
            got, ref = mine(x1, b, get, params), theirs(x1, b, get, params)
            assert type(got).__name__ == type(ref).__name__ and _close(got, ref), get
            if not isinstance(get, str):
                assert got._fields == ref._fields


def test_keyword_conventions_and_ntk_vp_fn_equal_neural_tangents():
    module = MLP()
    x = jax.random.normal(jax.random.key(1), (5, 4, 3), jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(jax.random.key(0), x[:1])["params"])

    def f(p, xb, scale=1.0, rng=None):
        out = module.apply({"params": p}, xb) * scale
        return out if rng is None else out * (1.0 + 0.5 * jax.random.normal(rng, out.shape[1:]))

    x1, x2 = x[:2], x[2:]
    key = jax.random.PRNGKey(4)
    cases = [
        dict(scale=(jnp.asarray(2.0), jnp.asarray(-0.5))),
        dict(rng=key),
        dict(scale=jnp.asarray(3.0), rng=key),
    ]
    for kw in cases:
        for b in (x2, None, x1 + 0.0):
            for impl in (1, 2):
                ref = NT.empirical_ntk_fn(f, (), (), None, impl)(x1, b, params, **kw)
                got = ours.empirical_ntk_fn(f, (), (), None, impl)(x1, b, params, **kw)
                assert _close(got, ref), (kw.keys(), b is None, impl)
    cot = jax.random.normal(jax.random.key(2), (3, 3), jnp.float64)
    ref = NT.empirical_ntk_vp_fn(f, x1, x2, params, scale=jnp.asarray(2.0))(cot)
    assert _close(ours.empirical_ntk_vp_fn(f, x1, x2, params, scale=jnp.asarray(2.0))(cot), ref)


def test_batch_equals_neural_tangents_batch():
    f, x, params = _model("MLP")  # neural-tangents' batch does not take dict outputs
    x = jnp.concatenate([x, x[:1] * 0.5])  # 6 examples: neural-tangents' batch needs batch_size | n
    for trace in ((-1,), ()):
        theirs = NT.batch(NT.empirical_ntk_fn(f, trace, (), 0), batch_size=2, device_count=0)(x, None, params)
        got = ours.batch(ours.empirical_ntk_fn(f, trace, (), 0), batch_size=2)(x, None, params)
        assert _close(got, theirs)

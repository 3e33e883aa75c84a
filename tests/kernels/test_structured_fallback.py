"""Per-layer fallback of structured derivatives (`ntk_vs_nn.kernels.structured`, issue 34), in float64.

A parameter the structured trace cannot attribute to a leaf layer — a module's own parameter next to
child Dense/Conv modules (a learned scale), a leaf used outside any Flax module call — takes its
per-example Jacobian from `jax.vmap(jax.jacrev)` with respect to those leaves only; every other leaf
keeps its structured rule. The references are independent of the code under test: `jax.jacrev` of
the whole batch, contracted by numpy and reduced by an einsum written out per case.

1. Per-example Jacobians equal vmapped `jacrev` leaf by leaf, and only the parent's leaf (and the leaf
   used outside the module; or the leaves of a Conv called with an extra batch axis, outside its rule)
   fell back (`structured.fallback_leaves`).
2. `jax.jit(empirical_ntk_fn(..., implementation=STRUCTURED_DERIVATIVES | AUTO))` equals the explicit
   Jacobian kernel (relative error < 1e-10) for trace_axes (-1,) and (), with no failed check and with
   the fallback run for exactly those leaves (so AUTO did not silently use jacobian_contraction);
   also with a batched keyword argument (``vmap_axes`` triple), which the fallback must vmap.
3. A planted bug in the fallback (its contribution dropped, or taken from the wrong examples) is
   caught: `check_fn` flags it, the NT-style API warns and recomputes the batch by `jacrev`, also
   tile by tile in the function-space backend's path (`batch`, tiles of 3 + 2).
"""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from test_structured import vmapped_jacrev

import ntk_vs_nn.kernels as nt
from ntk_vs_nn.kernels import structured
from ntk_vs_nn.kernels.ntk_impls import CHECK_TOL

EXACT = 1e-10
pytestmark = pytest.mark.usefixtures("x64")  # every test here in float64 (conftest's `x64`)
SPREAD_OVER_WORKERS = True  # conftest: its tests are shared among `make test`'s workers, not kept on one


class Scaled(nn.Module):
    """A learned per-channel scale of its own, multiplied into a child Conv's output, and child Denses."""

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.normal(1.0), (3,))
        h = jnp.tanh(nn.Conv(3, (3, 3), name="conv")(x)) * scale
        h = nn.relu(nn.Dense(4, name="hidden")(h.mean((1, 2))))
        return nn.Dense(3, name="head")(h)


NET = Scaled()


def _parent(p, x):  # every parameter inside module calls; `scale` owned by a module with children
    return NET.apply({"params": p}, x)


def _outside(p, x):  # plus a leaf used outside any Flax module call
    return NET.apply({"params": p["net"]}, x) * p["temperature"]


def _kw(p, x, shift):  # a keyword argument batched like x, meeting the leaf used outside the module
    return NET.apply({"params": p["net"]}, x) * (p["temperature"] + shift)


class ExtraAxes(nn.Module):
    """A 1-D Conv called on (n, 5, 5, 2): an extra batch axis, outside the Conv rule."""

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(3, (3,), name="conv1d")(x)
        return nn.Dense(3, name="head")(h.mean((1, 2)))


def _rule(p, x):  # a leaf layer whose structured rule does not apply
    return ExtraAxes().apply({"params": p}, x)


CASES = {"parent": _parent, "outside": _outside, "kw": _kw, "rule": _rule}
FALLS_BACK = {"parent": {"scale"}, "outside": {"scale", "temperature"}, "kw": {"scale", "temperature"}}
FALLS_BACK["rule"] = {"conv1d"}


def _setup(case, n=5):
    x = jax.random.normal(jax.random.key(1), (n, 5, 5, 2), jnp.float64)
    module = ExtraAxes() if case == "rule" else NET
    net = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(jax.random.key(0), x[:1])["params"])
    temperature = 1.0 + jax.random.uniform(jax.random.key(2), (3,), jnp.float64)
    params = net if case in ("parent", "rule") else {"net": net, "temperature": temperature}
    kw = {"shift": jax.random.normal(jax.random.key(3), (n, 1), jnp.float64)} if case == "kw" else {}
    return CASES[case], params, x, kw


def _expected_fallback(case, params) -> tuple:
    """Indices (jax.tree.leaves order) of the leaves whose key path names one in FALLS_BACK (not found by the code)."""
    paths = [tuple(getattr(k, "key", k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    return tuple(i for i, path in enumerate(paths) if FALLS_BACK[case] & set(path))


def reference_kernel(f, params, x, kw, trace_axes):
    """Θ from the whole batch's `jax.jacrev` (no vmap): (n, n) traced over the classes, or (n, n, k, k)."""
    jac = jax.jacrev(lambda p: f(p, x, **kw))(params)
    j = np.concatenate([np.asarray(a).reshape(a.shape[0], a.shape[1], -1) for a in jax.tree.leaves(jac)], -1)
    full = np.einsum("acp,bdp->acbd", j, j)  # (n, k, n, k)
    if trace_axes == (-1,):
        return np.einsum("acbc->ab", full) / j.shape[1]
    return full.transpose(0, 2, 1, 3)


@pytest.mark.parametrize("case", ["parent", "outside", "rule"])
def test_only_unattributed_leaves_fall_back_and_tiles_equal_jacrev(case):
    f, params, x, _ = _setup(case)
    expected = _expected_fallback(case, params)
    assert 0 < len(expected) < len(jax.tree.leaves(params))  # the Dense (and 2-D Conv) leaves stay structured
    assert structured.fallback_leaves(f, params, x) == expected
    jac = structured.structured_jacobian(f)
    mine = jax.jit(jac)(params, x, {})
    assert jac.fallback == expected
    ref = vmapped_jacrev(f, params, x)
    assert len(mine) == len(ref) == len(jax.tree.leaves(params))
    for a, b in zip(mine, ref):
        assert a.shape == b.shape and a.dtype == jnp.float64
        assert rel_err(np.asarray(a), np.asarray(b)) < EXACT
    assert structured.check_fn(f)(mine, params, x) < EXACT


def _recording_fallback(monkeypatch, mutate=None):
    """Wrap `structured._fallback_jacobian`: record the leaf indices it is asked for; ``mutate`` plants a bug."""
    real, asked = structured._fallback_jacobian, []

    def wrapped(f, kw_axes, params, x, kw, idx):
        asked.append(tuple(idx))
        out = real(f, kw_axes, params, x, kw, idx)
        return out if mutate is None else mutate(out)

    monkeypatch.setattr(structured, "_fallback_jacobian", wrapped)
    return asked


def _api_kernel(f, params, x, kw, trace_axes, impl):
    vmap_axes = (0, 0, {"shift": 0}) if kw else 0
    fn = nt.empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=vmap_axes, implementation=impl)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k = np.asarray(jax.jit(lambda a, p, kws: fn(a, None, p, **kws))(x, params, kw))
    return k, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    "impl", [nt.NtkImplementation.STRUCTURED_DERIVATIVES, nt.NtkImplementation.AUTO], ids=["structured", "auto"]
)
@pytest.mark.parametrize("trace_axes", [(-1,), ()], ids=["traced", "full"])
@pytest.mark.parametrize("case", ["parent", "outside", "kw"])
def test_kernel_equals_explicit_jacobian_kernel(monkeypatch, case, trace_axes, impl):
    f, params, x, kw = _setup(case)
    asked = _recording_fallback(monkeypatch)
    got, messages = _api_kernel(f, params, x, kw, trace_axes, impl)
    ref = reference_kernel(f, params, x, kw, trace_axes)
    assert got.shape == ref.shape and rel_err(got, ref) < EXACT
    assert not [m for m in messages if "check failed" in m]  # right by structure, not by the jacrev recompute
    assert asked and set(asked) == {_expected_fallback(case, params)}  # structured ran, per-layer fallback


def _dropped(out):
    return [jnp.zeros_like(a) for a in out]


def _wrong_examples(out):
    return [a[::-1] for a in out]


@pytest.mark.parametrize("bug", [_dropped, _wrong_examples], ids=["dropped", "wrong-examples"])
def test_a_planted_fallback_bug_is_caught(monkeypatch, bug):
    f, params, x, kw = _setup("outside")
    ref = reference_kernel(f, params, x, kw, (-1,))
    _recording_fallback(monkeypatch, bug)
    tiles = jax.jit(structured.structured_jacobian(f))(params, x, {})
    assert structured.check_fn(f)(tiles, params, x) > CHECK_TOL
    # the NT-style API: the check fails, the batch is recomputed by jacrev, with a warning
    got, messages = _api_kernel(f, params, x, kw, (-1,), nt.NtkImplementation.STRUCTURED_DERIVATIVES)
    assert [m for m in messages if "check failed" in m] and rel_err(got, ref) < EXACT
    # the suite's tiled path: each of the two tiles (3 + 2 examples) fails its check and is recomputed
    fn = nt.empirical_ntk_fn(f, vmap_axes=0, implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = nt.batch(fn, 3, store_on_device=False)(x, None, params)
    assert sum("check failed" in str(w.message) for w in caught) == 2 and rel_err(got, ref) < EXACT

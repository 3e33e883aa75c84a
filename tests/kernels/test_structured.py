"""Structured derivatives (`ntk_vs_nn.kernels.structured`) against `jax.jacrev`, in float64.

1. Per-example Jacobians equal vmap(jacrev) leaf by leaf on nets that exercise every layer path:
   2-D convs with strides, kernel dilation, SAME / explicit asymmetric / integer padding, no bias;
   a Dense applied over extra (spatial) axes; LayerNorm and GroupNorm through the generic per-layer
   vjp; a layer called twice (weight sharing: contributions add up); parameters declared in
   ``setup``; our 1-D and 2-D ResNets.
2. `empirical_ntk_fn(implementation="auto")`, tiled by `batch` as the function-space backend calls
   it, picks structured derivatives for our networks (their trace succeeds) and falls back to
   jacobian_contraction where they do not apply: parameters transformed before the module sees them
   (the ntk family's jvp at W0; STRUCTURED_DERIVATIVES raises there), no leaf with a structured
   rule; a module with its own parameters and children stays structured, only its own parameter
   falling back (tests/kernels/test_structured_fallback.py).
3. The check has teeth: a parameter also used outside its module (a tied weight) is caught — auto
   and STRUCTURED_DERIVATIVES warn and recompute each tile by jacrev — while the kernel stays exact;
   one wrong tile among good ones is caught alone.
"""

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

import ntk_vs_nn.kernels as nt
from ntk_vs_nn.families import linearized, network
from ntk_vs_nn.kernels import structured
from ntk_vs_nn.kernels.empirical import family_ntk_fn
from ntk_vs_nn.kernels.structured import Unsupported, structured_jacobian
from ntk_vs_nn.models import build_model

EXACT = 1e-12


class Odd(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(5, (3, 2), strides=(2, 1), kernel_dilation=(1, 2), padding="SAME")(x)
        x = nn.tanh(x)
        x = nn.Conv(4, (2, 3), strides=2, padding=((1, 0), (2, 1)), use_bias=False)(x)
        x = nn.LayerNorm()(x)
        x = nn.Conv(4, (3, 3), padding=1)(x)
        x = nn.GroupNorm(num_groups=2)(x)
        shared = nn.Dense(4)  # over the spatial axes, and called twice
        x = shared(nn.relu(shared(x)))
        return nn.Dense(3)(x.mean((1, 2)))


class SetupLeaf(nn.Module):  # parameters declared in setup: the interceptor also sees setup itself
    def setup(self):
        self.w = self.param("w", nn.initializers.normal(1.0), (4, 5))

    def __call__(self, x):
        return jnp.tanh(x @ self.w)


class SetupNet(nn.Module):
    def setup(self):
        self.a, self.b = SetupLeaf(), nn.Dense(3)

    def __call__(self, x):
        return self.b(self.a(x))


class Tied(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = nn.Dense(4, name="d")
        return d(x) @ d.variables["params"]["kernel"]  # the kernel also used outside d's call


class Owner(nn.Module):
    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.normal(), (x.shape[-1],))
        return nn.Dense(3)(x * w)


@pytest.fixture(scope="module", autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def vmapped_jacrev(f, params, x):
    """The reference: per-example Jacobians (n, k, P_leaf) per leaf of params, by jax.vmap of jax.jacrev."""
    j = jax.jit(jax.vmap(lambda xi: jax.jacrev(lambda p: f(p, xi[None])[0])(params)))(x)
    return tuple(a.reshape(a.shape[:2] + (-1,)) for a in jax.tree.leaves(j))


@pytest.fixture
def traces(monkeypatch):
    """One entry per trace of a structured Jacobian: True when its rules applied, False when it raised."""
    real, seen = structured.structured_jacobian, []

    def recording(f, kw_axes=None):
        jac = real(f, kw_axes)

        def wrapped(*a):
            try:
                out = jac(*a)
            except Exception:
                seen.append(False)
                raise
            seen.append(True)
            return out

        return wrapped

    monkeypatch.setattr(structured, "structured_jacobian", recording)
    return seen


def _setup(module, shape, seed=0):
    x = jax.random.normal(jax.random.key(seed), shape, jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(jax.random.key(1), x[:1])["params"])
    return (lambda p, xb: module.apply({"params": p}, xb)), params, x


@pytest.mark.parametrize(
    "module, shape",
    [
        (Odd(), (5, 11, 9, 2)),
        (build_model("ResNet-10-1", 3, 2), (4, 12, 12, 1)),
        (build_model("ResNet-10-1", 3, 1), (4, 20, 1)),
        (build_model("SimpleCNN-3-1", 3, 2), (4, 10, 10, 1)),
        (SetupNet(), (6, 4)),
    ],
    ids=["odd", "resnet2d", "resnet1d", "simplecnn2d", "setup-style"],
)
def test_structured_jacobian_equals_jacrev(module, shape):
    f, params, x = _setup(module, shape)
    ref = vmapped_jacrev(f, params, x)
    mine = jax.jit(structured_jacobian(f))(params, x, {})
    assert len(mine) == len(ref) == len(jax.tree.leaves(params))
    for a, b in zip(mine, ref):
        assert a.shape == b.shape and a.dtype == jnp.float64
        assert rel_err(np.asarray(a), np.asarray(b)) < EXACT


def _kernels(f, params, x, impl, traces=()):
    """The full kernel as the function-space backend computes it (`batch` of `empirical_ntk_fn`, tiles of
    3, host memory) and what gave the Jacobians: "structured_derivatives" (the structured trace applied
    and every tile passed its check), "jacobian_contraction" (it did not apply), or
    "structured_derivatives+jacobian_contraction" (some tiles failed their check: recomputed by jacrev);
    and the number of failed checks. ``traces``: the `traces` fixture's list."""
    n0 = len(traces)
    fn = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=impl)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k = nt.batch(fn, 3, store_on_device=False)(x, None, params)
    failed = sum("check failed" in str(w.message) for w in caught)
    ran = "structured_derivatives" if any(traces[n0:]) else "jacobian_contraction"
    return k, ran + ("+jacobian_contraction" if failed and ran == "structured_derivatives" else ""), failed


def test_auto_uses_structured_where_it_applies_and_falls_back_elsewhere(traces):
    f, params, x = _setup(Odd(), (5, 11, 9, 2))
    ref, impl, _ = _kernels(f, params, x, "jacobian_contraction", traces)
    assert impl == "jacobian_contraction"
    got, impl, _ = _kernels(f, params, x, "auto", traces)
    assert impl == "structured_derivatives" and rel_err(got, ref) < EXACT
    # the ntk family: params enter through a jvp at the anchor, not as the module's leaves
    module = build_model("SimpleCNN-3-1", 3, 1)
    fam = linearized(network(module))
    xs = jax.random.normal(jax.random.key(2), (5, 8, 1), jnp.float64)
    v = jax.tree.map(lambda a: a.astype(jnp.float64), fam.init(jax.random.key(0), xs[:1]))
    n0 = len(traces)
    k_auto = family_ntk_fn(fam, v, trace_axes=(), implementation="auto")(xs)
    assert traces[n0:] == [False]  # traced, did not apply
    k_ref = family_ntk_fn(fam, v, trace_axes=(), implementation="jacobian_contraction")(xs)
    assert rel_err(k_auto, k_ref) < EXACT
    with pytest.raises(ValueError, match="STRUCTURED_DERIVATIVES does not apply"):
        family_ntk_fn(fam, v, trace_axes=(), implementation="structured_derivatives")(xs)
    # a module with its own parameter and a child Dense: only that parameter falls back (per layer)
    f, params, x = _setup(Owner(), (5, 4))
    got, impl, _ = _kernels(f, params, x, "auto", traces)
    ref = _kernels(f, params, x, "jacobian_contraction")[0]
    assert impl == "structured_derivatives" and rel_err(got, ref) < EXACT
    # no leaf with a structured rule (a plain function of params): Unsupported, and auto uses jacobian_contraction
    g = lambda p, xb: jnp.tanh(xb @ p["w"])  # noqa: E731
    w = {"w": jax.random.normal(jax.random.key(3), (4, 3), jnp.float64)}
    with pytest.raises(Unsupported, match="no parameter leaf has a structured rule"):
        jax.jit(structured_jacobian(g))(w, x, {})
    got, impl, _ = _kernels(g, w, x, "auto", traces)
    assert impl == "jacobian_contraction" and rel_err(got, _kernels(g, w, x, "jacobian_contraction")[0]) < EXACT


def test_check_catches_a_parameter_used_outside_its_module(traces):
    f, params, x = _setup(Tied(), (5, 4))
    ref, _, _ = _kernels(f, params, x, "jacobian_contraction")
    # the structured Jacobian alone misses the tied use: it is wrong, so the check is needed
    wrong = jax.jit(structured_jacobian(f))(params, x, {})
    right = vmapped_jacrev(f, params, x)
    assert max(rel_err(np.asarray(a), np.asarray(b)) for a, b in zip(wrong, right)) > 1e-3
    for impl in ("auto", "structured_derivatives"):  # both tiles (3 + 2 examples) fail and are recomputed
        got, ran, failed = _kernels(f, params, x, impl, traces)
        assert (ran, failed) == ("structured_derivatives+jacobian_contraction", 2) and rel_err(got, ref) < EXACT


def test_every_structured_tile_is_checked(monkeypatch):
    """A wrong tile after good ones (as XLA:CPU produced for a 1-D ResNet) is recomputed by jacrev."""
    f, params, x = _setup(Odd(), (7, 11, 9, 2))
    ref, _, _ = _kernels(f, params, x, "jacobian_contraction")
    real, calls = structured.structured_jacobian, []

    def corrupt_second_tile(f, kw_axes=None):
        jac = real(f, kw_axes)

        def wrapped(params, x, kw):
            calls.append(1)
            tiles = jac(params, x, kw)
            return tiles if len(calls) != 2 else tuple(2.0 * a for a in tiles)

        return wrapped

    monkeypatch.setattr(structured, "structured_jacobian", corrupt_second_tile)
    # tile_size 3: tiles of 3, 3, 1 (+ padding); jit off so the Python counter sees every tile
    with jax.disable_jit():
        got, _, failed = _kernels(f, params, x, "auto")
    assert len(calls) == 3 and failed == 1 and rel_err(got, ref) < EXACT


def test_many_output_units_use_lax_map(monkeypatch):
    """Beyond UNROLL_MAX output units the backward passes run under lax.map: the same Jacobian."""
    monkeypatch.setattr(structured, "UNROLL_MAX", 1)
    f, params, x = _setup(build_model("ResNet-10-1", 3, 1), (4, 20, 1))
    ref = vmapped_jacrev(f, params, x)
    mine = jax.jit(structured.structured_jacobian(f))(params, x, {})
    for a, b in zip(mine, ref):
        assert rel_err(np.asarray(a), np.asarray(b)) < EXACT


def test_quick_preset_resnet1d_tile_is_right_in_float32():
    """The case XLA:CPU got wrong when the k backward passes were vmapped (results/xla-cpu-bug/):
    1-D ResNet-10-1 (GroupNorm), 128 examples, float32, under jit — now equal to jacrev."""
    with jax.enable_x64(False):
        module = build_model("ResNet-10-1", 10, 1)
        x = jax.random.normal(jax.random.key(0), (128, 40, 1))
        params = module.init(jax.random.key(1), x[:1])["params"]
        f = lambda p, xb: module.apply({"params": p}, xb)  # noqa: E731
        ref = vmapped_jacrev(f, params, x)
        mine = jax.jit(structured_jacobian(f))(params, x, {})
        assert max(rel_err(np.asarray(a), np.asarray(b)) for a, b in zip(mine, ref)) < 1e-5

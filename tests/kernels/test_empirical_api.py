"""The neural-tangents-compatible empirical API (`ntk_vs_nn.kernels.api`, issue 34) against explicit Jacobians.

The reference of every test is independent of the code under test: the Jacobian of the whole batch by
one `jax.jacrev` (no vmap), contracted over the parameters by numpy into the full kernel
f(x1).shape + f(x2).shape, then reduced by an einsum written out by hand per case (not by
`ntk_impls.einsum_spec`). float64 throughout; agreement to 1e-10 relative (max-abs difference over
max-abs value).

1. `jax.jit(empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes=0, implementation))` on a small
   Flax CNN whose output is a dict of (B, k) logits and a (B, H, W, C) feature map, for every
   implementation and six trace/diagonal combinations.
2. The old bug: a (B, H, W, C) output gave a kernel of the wrong shape; now (B, B, H, H, W, W, C, C).
3. Traceable: jax.grad through the kernel, jax.vmap over it, one compile per shape.
4. vmap_axes as a pytree, as a triple with batched keyword arguments, and with the output's batch
   axis not first, all equal to vmap_axes=None (the whole batch differentiated).
5. Keyword arguments: a 2-tuple is split between x1 and x2; ``rng`` becomes key / fold_in(key, 1).
6. empirical_nngp_fn, empirical_kernel_fn (by name and tuple) and empirical_ntk_vp_fn.
7. Bad arguments are one ValueError line.
8. The migration example of docs/kernels.md runs and prints what the docs show.
9. A failed structured-derivative check (a tied parameter) is recomputed by jacrev under jit, with a warning.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from jax.flatten_util import ravel_pytree

import ntk_vs_nn.kernels as nt

EXACT = 1e-10
pytestmark = pytest.mark.usefixtures("x64")  # every test here in float64 (conftest's `x64`)
SPREAD_OVER_WORKERS = True  # conftest: its tests are shared among `make test`'s workers, not kept on one
IMPLS = list(nt.NtkImplementation)


class CNN(nn.Module):
    """Two outputs: (B, 3) logits and the (B, H, W, 2) map of the last conv (kept spatial)."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(3, (3, 3))(x))
        m = nn.Conv(2, (3, 3), name="map")(h)
        return {"logits": nn.Dense(3)(h.mean((1, 2))), "map": m}


def _setup(n=6, module=None):
    module = module or CNN()
    x = jax.random.normal(jax.random.key(1), (n, 4, 3, 2), jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(jax.random.key(0), x[:1])["params"])
    return module, (lambda p, xb: module.apply({"params": p}, xb)), x, params


def full_kernel(f, params, x1, x2, **kw):
    """{output leaf: Θ of shape f(x1).shape + f(x2).shape} from whole-batch jacrev Jacobians."""
    j1 = jax.jacrev(lambda p: f(p, x1, **kw.get("kw1", {})))(params)
    j2 = jax.jacrev(lambda p: f(p, x2, **kw.get("kw2", {})))(params)
    out1 = f(params, x1, **kw.get("kw1", {}))

    def one(o, a_tree, b_tree):
        nd = np.ndim(o)
        terms = [
            np.tensordot(np.asarray(a), np.asarray(b), axes=(list(range(nd, a.ndim)), list(range(nd, b.ndim))))
            for a, b in zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree))
        ]
        return sum(terms)

    treedef = jax.tree.structure(out1)
    return treedef.unflatten(
        [one(o, a, b) for o, a, b in zip(jax.tree.leaves(out1), treedef.flatten_up_to(j1), treedef.flatten_up_to(j2))]
    )


# (trace_axes, diagonal_axes) -> per leaf (einsum from the full kernel, divisor): logits abAB, map abcdABCD
CASES = {
    "full": ((), (), ("abAB->aAbB", 1), ("abcdABCD->aAbBcCdD", 1)),
    "traced": ((-1,), (), ("abAb->aA", 3), ("abcdABCd->aAbBcC", 2)),
    "diag-batch": ((), (0,), ("abaB->abB", 1), ("abcdaBCD->abBcCdD", 1)),
    "diag-last": ((), (-1,), ("abAb->aAb", 1), ("abcdABCd->aAbBcCd", 1)),
    "traced+diag-batch": ((-1,), (0,), ("abab->a", 3), ("abcdaBCd->abBcC", 2)),
    "trace-batch+diag-last": ((0,), (-1,), ("abab->b", 3), ("abcdaBCd->bBcCd", 3)),
}


@pytest.mark.parametrize("impl", IMPLS, ids=[i.name for i in IMPLS])
def test_jitted_kernel_of_a_cnn_with_pytree_outputs_equals_explicit_jacobians(impl):
    _, f, x, params = _setup()
    x1, x2 = x[:3], x[3:]
    ref = full_kernel(f, params, x1, x2)
    ref_same = full_kernel(f, params, x1, x1)
    for name, (tr, dg, (e_logits, d_logits), (e_map, d_map)) in CASES.items():
        fn = jax.jit(nt.empirical_ntk_fn(f, trace_axes=tr, diagonal_axes=dg, vmap_axes=0, implementation=impl))
        for got_x2, r in ((x2, ref), (None, ref_same)):
            got = fn(x1, got_x2, params)
            assert isinstance(got["map"], jax.Array) and got["map"].dtype == jnp.float64
            want = {"logits": np.einsum(e_logits, r["logits"]) / d_logits, "map": np.einsum(e_map, r["map"]) / d_map}
            for leaf in want:
                assert got[leaf].shape == want[leaf].shape, (name, leaf)
                assert rel_err(got[leaf], want[leaf]) < EXACT, (name, leaf, got_x2 is None)


@pytest.mark.parametrize("impl", IMPLS, ids=[i.name for i in IMPLS])
def test_spatial_outputs_give_the_kernel_of_their_shape(impl):
    """(B, H, W, C) outputs: the old function contracted them as (B, k) (a wrong shape, later a raise)."""
    module, _, x, params = _setup(5)
    conv = lambda p, xb: module.apply({"params": p}, xb)["map"]  # noqa: E731
    x1, x2 = x[:2], x[2:]
    r = full_kernel(conv, params, x1, x2)  # (2, 4, 3, 2, 3, 4, 3, 2)
    full = nt.empirical_ntk_fn(conv, trace_axes=(), vmap_axes=0, implementation=impl)(x1, x2, params)
    assert full.shape == (2, 3, 4, 4, 3, 3, 2, 2)
    assert rel_err(full, np.einsum("abcdABCD->aAbBcCdD", r)) < EXACT
    traced = nt.empirical_ntk_fn(conv, vmap_axes=0, implementation=impl)(x1, x2, params)  # default (-1,)
    assert traced.shape == (2, 3, 4, 4, 3, 3)
    assert rel_err(traced, np.einsum("abcdABCd->aAbBcC", r) / 2) < EXACT


@pytest.mark.parametrize("impl", IMPLS, ids=[i.name for i in IMPLS])
def test_kernel_is_differentiable_vmappable_and_compiles_once(impl):
    module, _, x, params = _setup(4)
    traces = []

    def f(p, xb):
        traces.append(xb.shape)
        return module.apply({"params": p}, xb)["logits"]

    fn = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=impl)
    x1, x2 = x[:2], x[2:]

    def explicit(p):  # the same kernel from whole-batch Jacobians, in jnp so it can be differentiated
        j1, j2 = (jax.jacrev(lambda q, xb=xb: module.apply({"params": q}, xb)["logits"])(p) for xb in (x1, x2))
        return sum(jnp.einsum("abp,ABp->aAbB", a.reshape(2, 3, -1), b.reshape(2, 3, -1))
                   for a, b in zip(jax.tree.leaves(j1), jax.tree.leaves(j2)))  # fmt: skip

    loss = lambda k: jnp.sum(jnp.sin(k))  # noqa: E731
    g = jax.grad(lambda p: loss(fn(x1, x2, p)))(params)
    g_ref = jax.grad(lambda p: loss(explicit(p)))(params)
    flat = lambda t: jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)])  # noqa: E731 - some leaves are 0
    assert rel_err(flat(g), flat(g_ref)) < EXACT
    stacked = jax.vmap(lambda xa: fn(xa, x2, params))(jnp.stack([x1, x2]))
    assert rel_err(stacked[0], fn(x1, x2, params)) < EXACT and rel_err(stacked[1], fn(x2, x2, params)) < EXACT
    fn(x1 + 1.0, x2, params)  # warm
    before = len(traces)
    fn(x1 - 2.0, x2 * 3.0, params)
    assert len(traces) == before, "a second call with the same shapes traced f again"


def test_vmap_axes_pytrees_triples_and_output_axes_equal_the_whole_batch_kernel():
    module, _, x, params = _setup(5)
    scale = jnp.linspace(0.5, 2.0, 5)

    def f(p, xs, shift=0.0):  # pytree input (images, per-example scale), per-example keyword shift
        img, s = xs
        return (
            module.apply({"params": p}, img)["logits"] * s[:, None] + jnp.asarray(shift)[:, None] * p["Dense_0"]["bias"]
        )

    x1, x2 = (x[:2], scale[:2]), (x[2:], scale[2:])
    shift = (jnp.asarray([0.3, -1.0]), jnp.asarray([2.0, 0.5, 1.5]))
    whole = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=None)(x1, x2, params, shift=shift)
    for axes in ((0, 0, {"shift": 0}), ((0, 0), 0, {"shift": 0}), ((0, -1), 0, {"shift": -1})):
        got = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=axes)(x1, x2, params, shift=shift)
        assert rel_err(got, whole) < EXACT, axes
    # outputs batched along their last axis: (k, B); the kernel keeps the output order (k, k, B, B)
    ft = lambda p, xb: module.apply({"params": p}, xb)["logits"].T  # noqa: E731
    whole_t = nt.empirical_ntk_fn(ft, trace_axes=(), vmap_axes=None)(x[:2], x[2:], params)
    got_t = nt.empirical_ntk_fn(ft, trace_axes=(), vmap_axes=(0, 1, {}))(x[:2], x[2:], params)
    assert got_t.shape == (3, 3, 2, 3) and rel_err(got_t, whole_t) < EXACT
    r = full_kernel(ft, params, x[:2], x[2:])
    assert rel_err(got_t, np.einsum("abAB->aAbB", r)) < EXACT


def test_two_tuple_keywords_are_split_and_rng_keys_differ_between_x1_and_x2():
    module, _, x, params = _setup(4)

    def f(p, xb, scale=1.0, rng=None):
        out = module.apply({"params": p}, xb)["logits"] * scale
        return out if rng is None else out * (1.0 + 0.5 * jax.random.normal(rng, out.shape[1:]))

    x1, x2 = x[:2], x[2:]
    s1, s2 = jnp.asarray(2.0), jnp.asarray(-0.5)
    got = nt.empirical_ntk_fn(f, trace_axes=())(x1, x2, params, scale=(s1, s2))
    r = full_kernel(f, params, x1, x2, kw1={"scale": s1}, kw2={"scale": s2})
    assert rel_err(got, np.einsum("abAB->aAbB", r)) < EXACT
    assert rel_err(got, nt.empirical_ntk_fn(f, trace_axes=())(x1, x2, params, scale=s1)) > 0.1  # it was split
    key = jax.random.key(3)
    got = nt.empirical_ntk_fn(f, trace_axes=())(x1, x2, params, rng=key)
    r = full_kernel(f, params, x1, x2, kw1={"rng": key}, kw2={"rng": jax.random.fold_in(key, 1)})
    assert rel_err(got, np.einsum("abAB->aAbB", r)) < EXACT
    same = nt.empirical_ntk_fn(f, trace_axes=())(x1, x1 + 0.0, params, rng=key)  # x1 == x2: one key
    r = full_kernel(f, params, x1, x1, kw1={"rng": key}, kw2={"rng": key})
    assert rel_err(same, np.einsum("abAB->aAbB", r)) < EXACT


def test_nngp_kernel_fn_and_ntk_vector_products():
    module, f, x, params = _setup(5)
    x1, x2 = x[:2], x[2:]
    out1, out2 = f(params, x1), f(params, x2)
    nngp = nt.empirical_nngp_fn(f, trace_axes=(-1,), diagonal_axes=())(x1, x2, params)
    assert rel_err(nngp["logits"], np.einsum("ab,Ab->aA", out1["logits"], out2["logits"]) / 3) < EXACT
    assert rel_err(nngp["map"], np.einsum("abcd,ABCd->aAbBcC", out1["map"], out2["map"]) / 2) < EXACT
    kernel_fn = nt.empirical_kernel_fn(f, trace_axes=(), vmap_axes=0)
    both = kernel_fn(x1, x2, None, params)
    assert set(both) == {"logits", "map"} and both["map"]._fields == ("nngp", "ntk")
    ntk = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0)(x1, x2, params)
    assert rel_err(kernel_fn(x1, x2, "ntk", params)["map"], ntk["map"]) < EXACT
    pair = kernel_fn(x1, x2, ("ntk", "nngp"), params)["logits"]
    assert pair._fields == ("ntk", "nngp") and rel_err(pair.ntk, ntk["logits"]) < EXACT
    # Θ(x1, x2) · v for v like f(x2), without forming Θ; between output leaves too (a true product):
    # against the (all outputs x all params) Jacobian matrices J1 J2^T ravel(v)
    v = jax.tree.map(lambda o: jax.random.normal(jax.random.key(5), o.shape, o.dtype), out2)
    vp = jax.jit(nt.empirical_ntk_vp_fn(f, x1, x2, params))(v)

    def jmat(xb):
        j = jax.jacrev(lambda p: ravel_pytree(f(p, xb))[0])(params)
        return np.concatenate([np.asarray(a).reshape(a.shape[0], -1) for a in jax.tree.leaves(j)], 1)

    assert rel_err(ravel_pytree(vp)[0], jmat(x1) @ (jmat(x2).T @ np.asarray(ravel_pytree(v)[0]))) < EXACT


def test_bad_arguments_are_one_value_error():
    _, f, x, params = _setup(3)
    with pytest.raises(ValueError, match="unknown implementation"):
        nt.empirical_ntk_fn(f, implementation="fastest")
    with pytest.raises(ValueError, match="out of range"):
        nt.empirical_ntk_fn(f, trace_axes=(2,), vmap_axes=0)(x, None, params)  # logits have 2 axes
    with pytest.raises(ValueError, match="overlap"):
        nt.empirical_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(-1,))(x, None, params)
    with pytest.raises(ValueError, match="differ along axis 0"):
        nt.empirical_ntk_fn(f, diagonal_axes=(0,))(x[:1], x[1:], params)
    with pytest.raises(ValueError, match="STRUCTURED_DERIVATIVES does not apply"):
        nt.empirical_ntk_fn(f, vmap_axes=None, implementation=3)(x, None, params)
    plain = lambda p, xb: jnp.tanh(xb.reshape(len(xb), -1) @ p)  # noqa: E731 - no Flax module
    w = jnp.ones((24, 2), jnp.float64)
    with pytest.raises(ValueError, match="STRUCTURED_DERIVATIVES does not apply"):
        nt.empirical_ntk_fn(plain, vmap_axes=0, implementation="structured_derivatives")(x, None, w)
    auto = nt.empirical_ntk_fn(plain, trace_axes=(), vmap_axes=0, implementation="auto")(x, None, w)
    jc = nt.empirical_ntk_fn(plain, trace_axes=(), vmap_axes=0)(x, None, w)
    assert rel_err(auto, jc) < EXACT  # auto falls back to the Jacobian where structure does not apply


def test_the_migration_example_in_docs_runs_and_prints_what_the_docs_show():
    """docs/kernels.md, "Coming from neural-tangents": its example, run as a user would (a fresh
    process, float32), prints the output shown under it."""
    import os
    import re
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = open(os.path.join(root, "docs", "kernels.md"), encoding="utf-8").read()
    section = text[text.index("## Coming from neural-tangents") :]
    code, shown = re.search(
        r"A runnable example.*?```python\n(.*?)```\n\nOutput:\n\n```text\n(.*?)```", section, re.S
    ).groups()
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == shown


class Tied(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = nn.Dense(4, name="d")
        return d(x) @ d.variables["params"]["kernel"]  # the kernel also used outside d's call


@pytest.mark.parametrize("impl", ["auto", "structured_derivatives"])
def test_a_failed_structured_check_is_recomputed_by_jacrev_with_a_warning(impl):
    """A parameter used outside its module: the structured Jacobian alone is wrong (the check sees it,
    tests/kernels/test_structured.py); under jit the batch is recomputed by jacrev (lax.cond) and a warning says so."""
    module = Tied()
    x = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(jax.random.key(0), x[:1])["params"])
    f = lambda p, xb: module.apply({"params": p}, xb)  # noqa: E731
    want = np.einsum("abAB->aAbB", full_kernel(f, params, x[:2], x[2:]))
    with pytest.warns(UserWarning, match="check failed"):
        got = jax.jit(nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=impl))(x[:2], x[2:], params)
        jax.block_until_ready(got)
    assert rel_err(got, want) < EXACT

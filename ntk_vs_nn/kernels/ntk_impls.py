"""The three ways `ntk_vs_nn.kernels.api` computes an empirical NTK, and the output-axis bookkeeping they share.

Every kernel here is per output leaf o: Θ_o(x1, x2) = Σ_params J1_o J2_o^T with J_o of shape
``f(x).shape_o + param.shape``, then reduced over the output axes as neural-tangents 0.6.5 does it:
a ``trace_axes`` axis is summed over its diagonal (and divided by its size: the mean), a
``diagonal_axes`` axis keeps only its diagonal (one axis instead of two), every other axis appears
twice, as (x1's, x2's) pairs in output order: a (B, H, W, C) output with ``trace_axes=(-1,)`` gives
(B1, B2, H1, H2, W1, W2). Covariances between different output leaves are not computed (as in
neural-tangents). All functions are traceable (no host round trips): they run under `jax.jit`,
`jax.vmap` and `jax.grad`.
"""

from __future__ import annotations

import string
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntk_vs_nn.kernels import structured
from ntk_vs_nn.kernels.jacobians import expand, is_none, jacrev_fn, squeeze

CHECK_TOL = 1e-3  # relative error of the structured Jacobian's check (float32 gives ~1e-7)
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 in our contractions on GPUs


def canonical_axes(axes, ndim: int, what: str) -> tuple:
    """``axes`` (an int or ints, negative allowed) as a sorted tuple of distinct axes in [0, ndim)."""
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    bad = [a for a in axes if not isinstance(a, (int, np.integer)) or not -ndim <= a < ndim]
    if bad:
        raise ValueError(f"{what}={axes!r} is out of range for an output with {ndim} axes")
    return tuple(sorted({int(a) % ndim for a in axes}))


def einsum_spec(ndim: int, trace_axes, diagonal_axes) -> tuple[str, str, str]:
    """Einsum letters (x1's output axes, x2's output axes, kernel axes) for one output leaf.

    A traced axis uses x1's letter on both sides and is absent from the result; a diagonal axis also
    shares the letter and appears once; any other axis gets two letters, paired in output order."""
    trace = canonical_axes(trace_axes, ndim, "trace_axes")
    diag = canonical_axes(diagonal_axes, ndim, "diagonal_axes")
    if set(trace) & set(diag):
        raise ValueError(f"trace_axes {trace} and diagonal_axes {diag} overlap (for an output with {ndim} axes)")
    if 2 * ndim > 50:
        raise ValueError(f"outputs with more than 25 axes are not supported (got {ndim})")
    s1 = string.ascii_lowercase[:ndim]
    s2 = "".join(s1[i] if i in trace or i in diag else string.ascii_uppercase[i] for i in range(ndim))
    out = "".join(s1[i] if i in diag else s1[i] + s2[i] for i in range(ndim) if i not in trace)
    return s1, s2, out


def check_pair(fx1, fx2, trace_axes, diagonal_axes) -> None:
    """f(x1) and f(x2) must be pytrees of the same structure, each leaf pair of the same rank and of
    equal sizes along the traced and diagonal axes (the axes where x1's and x2's outputs are paired)."""
    t1, t2 = jax.tree.structure(fx1), jax.tree.structure(fx2)
    if t1 != t2:
        raise ValueError(f"f(x1) and f(x2) have different structures: {t1} vs {t2}")
    for a, b in zip(jax.tree.leaves(fx1), jax.tree.leaves(fx2)):
        if len(a.shape) != len(b.shape):
            raise ValueError(f"f(x1) has an output of shape {a.shape} where f(x2) has {b.shape}")
        for ax in canonical_axes(trace_axes, len(a.shape), "trace_axes") + canonical_axes(
            diagonal_axes, len(a.shape), "diagonal_axes"
        ):
            if a.shape[ax] != b.shape[ax]:
                raise ValueError(
                    f"f(x1) {a.shape} and f(x2) {b.shape} differ along axis {ax}, which is traced or diagonal"
                )


def trace_size(shape, trace_axes) -> int:
    """The product of the traced axes' sizes: traces are divided by it (neural-tangents' mean)."""
    return int(np.prod([shape[a] for a in canonical_axes(trace_axes, len(shape), "trace_axes")]))


def contract_jacobians(fx, j1, j2, trace_axes, diagonal_axes):
    """Kernel per output leaf from per-output-leaf Jacobian trees j1, j2 (leaves ``fx.shape + p.shape``)."""
    fx_leaves, treedef = jax.tree.flatten(fx)
    j1s, j2s = treedef.flatten_up_to(j1), treedef.flatten_up_to(j2)
    out = []
    for o, a_tree, b_tree in zip(fx_leaves, j1s, j2s):
        nd = len(o.shape)
        s1, s2, res = einsum_spec(nd, trace_axes, diagonal_axes)
        pairs = zip(jax.tree.leaves(a_tree), jax.tree.leaves(b_tree))
        if canonical_axes(diagonal_axes, nd, "diagonal_axes"):
            terms = [
                jnp.einsum(f"{s1}Z,{s2}Z->{res}", a.reshape(a.shape[:nd] + (-1,)), b.reshape(b.shape[:nd] + (-1,)),
                           precision=_HIGHEST)
                for a, b in pairs
            ]  # fmt: skip
            kernel = sum(terms)
        else:
            kernel = _gemm_contract(pairs, nd, canonical_axes(trace_axes, nd, "trace_axes"), s1, s2, res)
        out.append(kernel / trace_size(o.shape, trace_axes))
    return treedef.unflatten(out)


def _gemm_contract(pairs, nd: int, trace: tuple, s1: str, s2: str, res: str):
    """The einsum ``{s1}Z,{s2}Z->{res}`` summed over the leaf pairs, without diagonal axes, as one matrix
    product per leaf: each Jacobian's kept output axes first, its traced axes and parameters flattened
    into one, then the result's axes put in the kernel's order. XLA:CPU ran this 3.5x faster than the
    einsum (SimpleCNN-4-1, 128 inputs, traced), which it lowered with a transposed copy."""
    kept = [i for i in range(nd) if i not in trace]
    perm = kept + list(trace) + [nd]
    total, shape1, shape2 = None, None, None
    for a, b in pairs:
        a = a.reshape(a.shape[:nd] + (-1,)).transpose(perm)
        b = b.reshape(b.shape[:nd] + (-1,)).transpose(perm)
        shape1, shape2 = a.shape[: len(kept)], b.shape[: len(kept)]
        m = jnp.dot(a.reshape(int(np.prod(shape1)), -1), b.reshape(int(np.prod(shape2)), -1).T, precision=_HIGHEST)
        total = m if total is None else total + m
    labels = [s1[i] for i in kept] + [s2[i] for i in kept]  # the product's axes, then into the kernel's order
    return total.reshape(shape1 + shape2).transpose([labels.index(c) for c in res])


def reduce_full(k_full, ndim: int, trace_axes, diagonal_axes, size: int):
    """The full kernel (fx1.shape + fx2.shape) of one output leaf reduced as `contract_jacobians` does."""
    s1, s2, res = einsum_spec(ndim, trace_axes, diagonal_axes)
    return jnp.einsum(f"{s1}{s2}->{res}", k_full) / size


# ---------------------------------------------------------------------------------- Jacobians


def structured_fn(f: Callable, axes, fx, strict: bool) -> Callable:
    """``jac`` as `jacrev_fn`, from layer structure (`ntk_vs_nn.kernels.structured`, Flax linen nets).

    Leaf layers other than Dense and Conv get their per-example Jacobian from `jax.vjp` of that layer
    alone; parameters the trace cannot attribute to a leaf layer (a parent module's own parameter, a
    leaf used outside any module call) from `jax.vmap(jax.jacrev)` with respect to those leaves only:
    the fallback is per layer, not for the whole net. Each call checks J v (v a random tangent) against one
    `jax.jvp` of the batch; a batch failing the check (relative error > CHECK_TOL) is recomputed by
    `jax.jacrev` (`jax.lax.cond`, so it stays traceable), with a warning (`jax.debug.callback`). A
    network outside the assumptions (examples not along axis 0 of x, module parameters transformed
    before use, no leaf with a structured rule, ...) raises `structured.Unsupported` when traced if
    ``strict``; otherwise ``jac`` is `jacrev_fn`'s.
    """
    dense = jacrev_fn(f, axes)
    if axes is None:
        if strict:
            raise structured.Unsupported("structured derivatives need vmap_axes (independent examples)")
        return dense
    x_axis, fx_axis, kw_axes = axes
    leaves, treedef = jax.tree.flatten(fx)
    fx_axes = treedef.flatten_up_to(fx_axis)
    if any(a != 0 for a in jax.tree.leaves(x_axis, is_leaf=is_none)) or any(a is None for a in fx_axes):
        if strict:
            raise structured.Unsupported("structured derivatives need inputs batched along axis 0")
        return dense

    def flat(p, x, **kw):  # (n, K): every output leaf per example, batch axis first
        outs = treedef.flatten_up_to(f(p, x, **kw))
        return jnp.concatenate([jnp.moveaxis(o, a, 0).reshape(o.shape[a], -1) for o, a in zip(outs, fx_axes)], 1)

    struct, err_fn = structured.structured_jacobian(flat, kw_axes), structured.check_error_fn(flat)

    def to_tiles(j, params):  # jacrev_fn's layout -> per param leaf (n, K, P_l), as structured_jacobian's
        per_o = treedef.flatten_up_to(j)
        return tuple(
            jnp.concatenate([jnp.moveaxis(t, a, 0).reshape(t.shape[a], -1, p.size) for t, a in zip(col, fx_axes)], 1)
            for col, p in zip(zip(*(jax.tree.leaves(t) for t in per_o)), jax.tree.leaves(params))
        )

    def jac(params, x, kw):
        try:
            tiles = struct(params, x, kw)
        except Exception as e:  # outside the assumptions: say so when asked for, else jacrev
            if strict:
                raise structured.Unsupported(str(e)) from e
            return dense(params, x, kw)
        err = err_fn(tiles, params, x, kw)
        jax.debug.callback(_warn_failed_check, err)  # at run time: a failed check is never silent
        tiles = jax.lax.cond(err <= CHECK_TOL, lambda: tiles, lambda: to_tiles(dense(params, x, kw), params))
        sizes = [int(np.prod(o.shape)) // o.shape[a] for o, a in zip(leaves, fx_axes)]
        bounds = np.cumsum([0] + sizes)
        p_leaves, p_def = jax.tree.flatten(params)
        out = []
        for i, (o, a) in enumerate(zip(leaves, fx_axes)):
            ex_shape = tuple(s for d, s in enumerate(o.shape) if d != a)
            per_p = [
                jnp.moveaxis(t[:, bounds[i] : bounds[i + 1]].reshape((t.shape[0],) + ex_shape + p.shape), 0, a)
                for t, p in zip(tiles, p_leaves)
            ]
            out.append(p_def.unflatten(per_p))
        return treedef.unflatten(out)

    return jac


def _warn_failed_check(err) -> None:
    err = np.max(np.asarray(err))  # (an array under jax.vmap)
    if not err <= CHECK_TOL:
        import warnings

        warnings.warn(
            f"structured derivatives: check failed (relative error {err:.1e} > {CHECK_TOL:g}); "
            "this batch was recomputed by jax.jacrev",
            stacklevel=2,
        )


# ---------------------------------------------------------------------------- NTK-vector products


def ntk_vector_products(f: Callable, axes, fx1, x1, x2, params, kw1, kw2, trace_axes, diagonal_axes):
    """The kernel from NTK-vector products J1 (J2^T e) for every basis vector e of f(x2): no Jacobian
    is stored. With ``axes`` (examples independent), per pair of examples (vmapped twice), like
    neural-tangents; otherwise for the whole batches, f(x2).size products."""

    def full(xa, xb, ka, kb, fa_axis):
        """(fx1.shape_o + fx2.shape_o) per output leaf, of f(params, xa) against f(params, xb)."""
        fa = lambda p: squeeze(f(p, xa, **ka), fa_axis)  # noqa: E731
        fb = lambda p: squeeze(f(p, xb, **kb), fa_axis)  # noqa: E731
        out_b, vjp_b = jax.vjp(fb, params)
        _, jvp_a = jax.linearize(fa, params)
        b_leaves, b_def = jax.tree.flatten(out_b)
        res = []
        for i, ob in enumerate(b_leaves):
            eye = jnp.eye(ob.size, dtype=ob.dtype).reshape((ob.size,) + ob.shape)

            def prod(e, i=i):
                cot = b_def.unflatten([e if j == i else jnp.zeros_like(o) for j, o in enumerate(b_leaves)])
                return jax.tree.leaves(jvp_a(*vjp_b(cot)))[i]

            k = jax.vmap(prod)(eye)  # (size_b, *fa_o.shape)
            k = k.reshape(ob.shape + k.shape[1:])
            res.append(jnp.moveaxis(k, tuple(range(ob.ndim)), tuple(range(k.ndim - ob.ndim, k.ndim))))
        return b_def.unflatten(res)

    if axes is None:
        k_full = full(x1, x2, kw1, kw2, None)
    else:
        x_axis, fx_axis, kw_axes = axes
        in1 = {k: kw_axes.get(k) for k in kw1}
        nd1 = jax.tree.map(lambda o: len(o.shape), fx1)

        def pair(xa, xb, ka, kb):
            ka = {k: expand(v, kw_axes[k]) if k in kw_axes else v for k, v in ka.items()}
            kb = {k: expand(v, kw_axes[k]) if k in kw_axes else v for k, v in kb.items()}
            return full(expand(xa, x_axis), expand(xb, x_axis), ka, kb, fx_axis)

        inner = jax.vmap(pair, in_axes=(x_axis, None, in1, None), out_axes=fx_axis)
        outer_axes = jax.tree.map(lambda a, n: a + n, fx_axis, nd1)
        k_full = jax.vmap(inner, in_axes=(None, x_axis, None, in1), out_axes=outer_axes)(x1, x2, kw1, kw2)
    return jax.tree.map(
        lambda k, o: reduce_full(k, len(o.shape), trace_axes, diagonal_axes, trace_size(o.shape, trace_axes)),
        k_full,
        fx1,
    )

"""Per-example Jacobians by `jax.jacrev`, vmapped over the examples along given axes (neural-tangents'
``vmap_axes`` convention: x, f's outputs and each batched keyword argument carry their batch axis), and the
two axis helpers it uses. Shared by the NT-compatible implementations (`kernels.ntk_impls`) and the
structured derivatives' per-layer fallback (`kernels.structured`), which sits below them."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def expand(x, axes):
    """Re-insert the vmapped-away axis of each leaf of ``x`` (axes: a pytree of ints / None)."""
    if axes is None:
        return x
    return jax.tree.map(lambda a, v: v if a is None else jnp.expand_dims(v, a), axes, x, is_leaf=is_none)


def squeeze(fx, axes):
    """Drop the size-1 vmapped axis of each output leaf (axes: a pytree of ints / None)."""
    if axes is None:
        return fx
    return jax.tree.map(lambda a, v: v if a is None else jnp.squeeze(v, a), axes, fx, is_leaf=is_none)


def is_none(a) -> bool:
    """``is_leaf`` for axes trees: None marks a leaf without a batch axis."""
    return a is None


def jacrev_fn(f: Callable, axes) -> Callable:
    """``jac(params, x, kw) -> J``: a tree over f's output leaves of parameter trees, each leaf of shape
    ``fx_leaf.shape + param.shape``, by `jax.jacrev`; vmapped over examples when ``axes`` =
    (x_axis, fx_axis, kw_axes) is given, one reverse pass per output entry of the batch otherwise."""

    def jac(params, x, kw):
        if axes is None:
            return jax.jacrev(lambda p: f(p, x, **kw))(params)
        x_axis, fx_axis, kw_axes = axes
        batched = {k: v for k, v in kw.items() if k in kw_axes}
        fixed = {k: v for k, v in kw.items() if k not in kw_axes}

        def one(xe, be):
            xe, be = expand(xe, x_axis), {k: expand(v, kw_axes[k]) for k, v in be.items()}
            return jax.jacrev(lambda p: squeeze(f(p, xe, **be, **fixed), fx_axis))(params)

        return jax.vmap(one, in_axes=(x_axis, {k: kw_axes[k] for k in batched}), out_axes=fx_axis)(x, batched)

    return jac

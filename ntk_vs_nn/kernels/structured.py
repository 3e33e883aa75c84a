"""Per-example Jacobians from layer structure ("structured derivatives") for Flax linen networks.

`jax.vmap(jax.jacrev(f))` differentiates each example separately, and XLA's CPU backend runs the
per-example weight gradients of a convolution as a grouped convolution, an order of magnitude below
the machine's matmul speed. A layer's parameter gradient has a simple structure, though:

  Dense  y = x W + b:          dy/dW for example e and output c = x_e ⊗ g_{c,e}, dy/db = Σ g_{c,e}
  Conv   y = conv(x, W) + b:   dy/dW = Σ_s patch_e(s) ⊗ g_{c,e}(s)   (one batched GEMM over s)

where g_{c,e} is the cotangent of the layer's output for output unit c of example e. One backward
pass of the whole batch per output unit (unrolled in one program, not vmapped) gives every layer's
g (a zero perturbation is added to each layer's output, through a Flax method interceptor, and
differentiated), and the weight
Jacobians follow as batched matrix products. Leaf modules other than Dense and Conv (norms,
embeddings, custom layers) take their per-example gradient from `jax.vjp` of that one layer,
vmapped over examples and outputs: exact, and cheap for element-wise layers.

Parameters without a structured rule fall back per layer, not for the whole net: a parameter of a
module that also has child modules with parameters (a learned scale next to its Dense/Conv
children), a leaf used outside any Flax module call, the leaves of a call that does not take one
array input and return one array, and those of a layer whose rule does not apply get their
per-example Jacobian from `jax.vmap(jax.jacrev(f))` with respect to those leaves only (every other
leaf held fixed), while every other leaf keeps its structured rule. The traced ``jac.fallback``
(`fallback_leaves`) lists them.

Assumptions, checked where they can be: examples are independent (``vmap_axes=0``); f returns
(n, k); a module's own parameters are leaves of ``params`` as passed (not transformed before the
module sees them); at least one leaf has a structured rule. Outside them, `Unsupported` is raised at
trace time. A parameter used both inside and outside its module's call (a tied weight) is not
detected by the trace: `check_fn` compares J v with one `jax.jvp` of the batch (v random), which
catches it, and wrong per-example Jacobians of any origin.
"""

from __future__ import annotations

import itertools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntk_vs_nn.kernels import jacobians

UNROLL_MAX = 16  # output units whose backward passes are unrolled in one program


class Unsupported(ValueError):
    """The network falls outside the structured-derivative assumptions."""


class _Call(NamedTuple):
    module: nn.Module  # the bound module of the call (its attributes only are read later)
    method: str
    kwargs: dict  # non-array keyword arguments
    leaves: dict  # parameter name -> index in jax.tree.leaves(params)


def _own_params(module: nn.Module) -> tuple[dict, bool]:
    """(the module's own parameters, whether it also has child modules with parameters)."""
    params = module.variables.get("params", {})
    own = {k: v for k, v in params.items() if not hasattr(v, "items")}
    return own, bool(own) and len(own) != len(params)


def _kind(module: nn.Module) -> str:
    if type(module) is nn.Dense:
        return "dense"
    if type(module) is nn.Conv:
        m = module
        plain_padding = not isinstance(m.padding, str) or m.padding.upper() in ("SAME", "VALID")
        dil = m.input_dilation
        if (
            m.feature_group_count == 1
            and m.mask is None
            and plain_padding
            and (dil is None or np.all(np.equal(dil, 1)))
        ):
            return "conv"
    return "generic"


def _tuple(v, nd: int) -> tuple:
    if v is None:
        return (1,) * nd
    return (int(v),) * nd if isinstance(v, int) else tuple(int(a) for a in v)


def _patches(m: nn.Conv, x: jax.Array, out_spatial: tuple) -> jax.Array:
    """(n, *in_spatial, C) -> (n, prod(out_spatial), prod(kernel_size) · C), ordered as the kernel."""
    ks = tuple(m.kernel_size)
    nd = len(ks)
    strides, dil = _tuple(m.strides, nd), _tuple(m.kernel_dilation, nd)
    if isinstance(m.padding, str):
        span = tuple((k - 1) * d + 1 for k, d in zip(ks, dil))
        pads = jax.lax.padtype_to_pads(x.shape[1:-1], span, strides, m.padding.upper())
    elif isinstance(m.padding, int):
        pads = [(m.padding, m.padding)] * nd
    else:
        pads = [(p, p) if isinstance(p, int) else tuple(p) for p in m.padding]
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    cols = []
    for off in itertools.product(*(range(k) for k in ks)):
        idx = tuple(slice(o * d, o * d + (n - 1) * s + 1, s) for o, d, n, s in zip(off, dil, out_spatial, strides))
        cols.append(xp[(slice(None), *idx)])
    p = jnp.stack(cols, axis=-2)  # (n, *out, K, C)
    return p.reshape(p.shape[0], -1, p.shape[-2] * p.shape[-1])


def _layer_jacobian(call: _Call, own: dict, x: jax.Array, g: jax.Array) -> dict:
    """Per-example Jacobians of one call's own parameters: name -> (n, k, size).

    x: the call's input (n, ...); g: its output cotangents (k, n, ...), one per output unit.
    """
    m, k, n = call.module, g.shape[0], x.shape[0]
    kind = _kind(m)
    if kind == "dense":
        xs, gs = x.reshape(n, -1, x.shape[-1]), g.reshape(k, n, -1, g.shape[-1])
        out = {"kernel": jnp.einsum("nsi,knso->nkio", xs, gs)}
        if "bias" in own:
            out["bias"] = gs.sum(2).transpose(1, 0, 2)
    elif kind == "conv":
        if x.ndim != len(m.kernel_size) + 2:
            raise Unsupported(f"Conv {m.name!r} called on an input of rank {x.ndim} (one batch axis expected)")
        p = _patches(m, x, g.shape[2:-1])  # (n, S, K·C)
        gs = g.reshape(k, n, -1, g.shape[-1])  # (k, n, S, O)
        out = {"kernel": jnp.einsum("nsp,knso->nkpo", p, gs)}
        if "bias" in own:
            out["bias"] = gs.sum(2).transpose(1, 0, 2)
    else:
        unbound = m.clone(parent=None)
        state = {c: v for c, v in m.variables.items() if c != "params"}  # e.g. BatchNorm's batch_stats

        def one(xe, ge):  # xe (1, ...), ge (k, 1, ...)
            apply = lambda w: unbound.apply({**state, "params": w}, xe, method=call.method, **call.kwargs)  # noqa: E731
            _, vjp = jax.vjp(apply, own)
            return jax.vmap(lambda c: vjp(c)[0])(ge)

        out = jax.vmap(one)(x[:, None], jnp.swapaxes(g, 0, 1)[:, :, None])
    if set(out) != set(own):
        raise Unsupported(f"{type(m).__name__} {m.name!r}: parameters {sorted(own)} not all covered")
    return {name: a.reshape(n, k, -1) for name, a in out.items()}


def structured_jacobian(f: Callable, kw_axes: dict | None = None) -> Callable:
    """``jac(params, x (n, ...), kw) -> tuple`` of per-example Jacobians (n, k, P_leaf), one per leaf
    of ``params`` in `jax.tree.leaves` order: `jax.vmap` of `jax.jacrev`'s Jacobians, flattened per
    example and output unit.

    ``f(params, x, **kw)`` must call a Flax linen module's ``apply`` with the leaves of ``params``
    (any dict structure around them is fine); see the module docstring for the assumptions and for
    what falls back per layer. ``kw_axes``: the batch axis (a pytree of ints / None) of each keyword
    argument that is batched like x (the others are shared by all examples), read by the fallback
    only. ``jac.fallback``: the indices of the leaves that fell back, set when ``jac`` is traced.
    """
    kw_axes = dict(kw_axes or {})

    def run(params, x, kw, eps, calls, fallback):
        """f with eps[i] added to the output of the i-th structured call (eps None: nothing added);
        fills ``calls`` and ``fallback`` (leaf indices without a structured rule) and returns
        (f's output, the calls' inputs, their outputs)."""
        ids = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(params))}
        inputs, outputs = [], []

        def interceptor(next_fun, args, kwargs, context):
            own, parent = _own_params(context.module) if context.method_name != "setup" else ({}, False)
            if not own:
                return next_fun(*args, **kwargs)
            if any(id(v) not in ids for v in own.values()):
                raise Unsupported(f"parameters of {context.module.name!r} are not leaves of params (transformed?)")
            arrays = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, jax.Array | np.ndarray)]
            out = next_fun(*args, **kwargs)
            if parent or not args or arrays or not isinstance(out, jax.Array):  # no rule: per-layer jacrev
                fallback.update(ids[id(v)] for v in own.values())
                return out
            calls.append(
                _Call(context.module, context.method_name, dict(kwargs), {k: ids[id(v)] for k, v in own.items()})
            )
            out = out if eps is None else out + eps[len(outputs)]
            inputs.append(args[0])
            outputs.append(out)
            return out

        with nn.intercept_methods(interceptor):
            return f(params, x, **kw), inputs, outputs

    def jac(params, x, kw):
        leaves = jax.tree.leaves(params)
        shapes = jax.eval_shape(lambda p, xx: run(p, xx, kw, None, [], set())[2], params, x)
        eps0 = [jnp.zeros(s.shape, s.dtype) for s in shapes]
        calls: list[_Call] = []
        fallback: set[int] = set()

        def g(eps):
            del calls[:]
            fallback.clear()
            out, inputs, _ = run(params, x, kw, eps, calls, fallback)
            return out, inputs

        out, vjp, xs = jax.vjp(g, eps0, has_aux=True)
        n, k = out.shape[0], out.shape[-1]
        if out.shape != (n, k):
            raise Unsupported(f"f must return (n, k) outputs, got {out.shape}")
        if not calls:
            raise Unsupported("no parameter leaf has a structured rule")
        basis = jnp.eye(k, dtype=out.dtype)[:, None, :] * jnp.ones((1, n, 1), out.dtype)  # (k, n, k)
        # one backward pass per output unit, unrolled: not vmapped, because XLA:CPU (jax 0.10.2)
        # computes vmapped cotangents through GroupNorm wrongly (results/xla-cpu-bug/), and the
        # unrolled passes were as fast on CPU; lax.map beyond UNROLL_MAX units bounds compile time
        if k <= UNROLL_MAX:
            per_unit = [vjp(basis[c])[0] for c in range(k)]
            cots = [jnp.stack(c) for c in zip(*per_unit)]  # per call: (k, n, ...)
        else:
            cots = jax.lax.map(lambda c: vjp(c)[0], basis)
        per_leaf: dict[int, jax.Array] = {}
        for call, xi, gi in zip(calls, xs, cots):
            own = {name: leaves[i] for name, i in call.leaves.items()}
            try:
                layer = _layer_jacobian(call, own, xi, gi)
            except Unsupported:  # this layer's rule does not apply: its leaves fall back
                fallback.update(call.leaves.values())
                continue
            for name, a in layer.items():
                i = call.leaves[name]
                per_leaf[i] = a if i not in per_leaf else per_leaf[i] + a
        # leaves of no structured call (used outside any module call, or unused) fall back too, and a
        # leaf that fell back anywhere takes its whole Jacobian from the fallback
        rest = sorted(fallback | (set(range(len(leaves))) - set(per_leaf)))
        if len(rest) == len(leaves):
            raise Unsupported("no parameter leaf has a structured rule")
        jac.fallback = tuple(rest)
        if rest:
            per_leaf.update(zip(rest, _fallback_jacobian(f, kw_axes, params, x, kw, rest)))
        return tuple(per_leaf[i] for i in range(len(leaves)))

    jac.fallback = None
    return jac


def _fallback_jacobian(f: Callable, kw_axes: dict, params, x, kw: dict, idx: list) -> list:
    """Per-example Jacobians (n, k, P_leaf) of the leaves ``idx`` of params only, every other leaf
    held fixed: `jacobians.jacrev_fn` (`jax.vmap` over examples of `jax.jacrev`) of f as a function of
    those leaves."""
    leaves, treedef = jax.tree.flatten(params)

    def f_of(sub, xb, **kwb):
        full = list(leaves)
        for i, s in zip(idx, sub):
            full[i] = s
        return f(treedef.unflatten(full), xb, **kwb)

    x_axis = jax.tree.map(lambda _: 0, x)
    js = jacobians.jacrev_fn(f_of, (x_axis, 0, kw_axes))([leaves[i] for i in idx], x, kw)
    return [j.reshape(j.shape[:2] + (-1,)) for j in js]


def fallback_leaves(f: Callable, params, x, kw: dict | None = None, kw_axes: dict | None = None) -> tuple:
    """The indices (in `jax.tree.leaves` order of ``params``) of the leaves whose per-example Jacobian
    `structured_jacobian` takes from the restricted `jax.jacrev` fallback; traces only (`jax.eval_shape`)."""
    jac = structured_jacobian(f, kw_axes)
    jax.eval_shape(lambda p, xx: jac(p, xx, kw or {}), params, x)
    return jac.fallback


def check_error_fn(f: Callable, seed: int = 0) -> Callable:
    """Traceable ``(jacobian, params, x, kw) -> relative error`` of Σ_p J_e[:, p] v_p (``jacobian``: the
    per-leaf tiles of x, applied to a random parameter tangent v) against ``jax.jvp(f)(v)``: one
    forward-mode pass of the batch, independent of the backward passes the tiles come from. A vjp
    against Σ_e J_e^T u_e checks the same map but needs the weight-gradient convolutions that XLA:CPU
    runs slowly (7x the jvp on SimpleCNN-4-1, 128 inputs). Catches a parameter used outside its module,
    and wrong per-example Jacobians of any origin (rows of the wrong examples, missing leaves)."""

    def err(jacobian, params, x, kw):
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        v = [jax.random.normal(key, a.shape, a.dtype) for key, a in zip(keys, leaves)]
        _, ref = jax.jvp(lambda p: f(p, x, **kw), (params,), (treedef.unflatten(v),))
        prec = jax.lax.Precision.HIGHEST
        got = sum(jnp.einsum("nkp,p->nk", j, t.reshape(-1), precision=prec) for j, t in zip(jacobian, v))
        return jnp.max(jnp.abs(got - ref)) / jnp.maximum(jnp.max(jnp.abs(ref)), 1e-30)

    return err


def check_fn(f: Callable, seed: int = 0) -> Callable:
    """`check_error_fn`, jitted, as a host float: ``(jacobian, params, x, kw=None) -> relative error``."""
    err = jax.jit(check_error_fn(f, seed))
    return lambda jacobian, params, x, kw=None: float(err(jacobian, params, x, kw or {}))

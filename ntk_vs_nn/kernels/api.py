"""neural-tangents' empirical-kernel API (0.6.5), with its semantics, for JAX code moving off it.

neural-tangents was archived upstream and 0.6.5 does not import on current jax; these functions take
the same arguments, defaults and output layouts, so ``import neural_tangents as nt`` becomes
``import ntk_vs_nn.kernels as nt`` for ``nt.empirical_ntk_fn``, ``nt.empirical_nngp_fn``,
``nt.empirical_kernel_fn``, ``nt.empirical_ntk_vp_fn``, ``nt.NtkImplementation`` and ``nt.batch``.
Written from neural-tangents' documented semantics; its code is not used (only the cross-checks in
tests/kernels/test_empirical_api_nt.py import it).

Conventions, all as in neural-tangents 0.6.5:

- ``f(params, x, **kwargs)``: params, x and the output are pytrees; kernels are taken w.r.t. params.
- Kernel shape: "almost" ``zip(f(x1).shape, f(x2).shape)`` per output leaf: ``trace_axes`` are summed
  over their diagonal and divided by their size (the mean, not the sum), ``diagonal_axes`` appear
  once, every other axis twice, paired: (B, H, W, C) outputs with ``trace_axes=(-1,)`` give
  (B1, B2, H1, H2, W1, W2). Axes are counted per output leaf (negative axes from each leaf's end).
  The batch axis is not special: ``trace_axes=(0,)`` traces over it.
- Pytree outputs: one kernel per output leaf, in the output's structure; the covariance between
  different output leaves is *not* computed.
- ``x2=None`` means x2 = x1 (with the same keyword arguments: the first of a 2-tuple, see below).
- Keyword arguments go to f undifferentiated. A keyword given as a 2-tuple ``(v1, v2)`` is split: v1
  goes with x1, v2 with x2 — so a kwarg that really is a pair must be wrapped (e.g. in a list). A
  keyword named ``rng`` (a PRNG key) gets two keys when x2 is given: key and ``fold_in(key, 1)``,
  or the same key where x1 equals x2 elementwise (as neural-tangents' ``_read_keys``).
- ``vmap_axes``: ``None`` (default) differentiates each batch as a whole (right for any f,
  including batch-coupled ones such as train-mode BatchNorm); an int, or a pytree of ints matching x
  and f(x), certifies that f(x) is a concatenation over that axis of f applied to single examples:
  per-example Jacobians, far cheaper. A 3-tuple ``(in_axes, out_axes, kwargs_axes)`` gives the
  axes of x, of f(x) and of the batched keyword arguments separately (a dict name -> axis).
  A wrong ``vmap_axes`` gives a wrong kernel silently, in neural-tangents as here.

What differs from neural-tangents: the returned functions are already jitted (one compile per shape
and per value of non-array keyword arguments, which are static); ``implementation=AUTO`` picks
structured derivatives where they apply (Flax linen nets, ``vmap_axes`` on axis 0), checked per
call, else Jacobian contraction, instead of comparing FLOPs (which neural-tangents says is wrong on
CPU and GPU); ``STRUCTURED_DERIVATIVES`` is our Flax-module implementation
(`ntk_vs_nn.kernels.structured`), not neural-tangents' jaxpr interpreter; a kernel_fn with a pytree
output returns, for ``get`` a tuple, a tree of ``EmpiricalKernel`` namedtuples (neural-tangents fails
on dict outputs). `flax_apply_fn` is ours: the f of a Flax model with mutable collections.
"""

from __future__ import annotations

import collections
import enum
import functools
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntk_vs_nn.kernels import jacobians, ntk_impls, structured


class NtkImplementation(enum.IntEnum):
    """How `empirical_ntk_fn` computes the NTK (neural-tangents' enum; ints and names also accepted).

    AUTO (0): STRUCTURED_DERIVATIVES where it applies, else JACOBIAN_CONTRACTION (decided when traced).
    JACOBIAN_CONTRACTION (1, the default): both Jacobians by `jax.jacrev`, contracted per parameter leaf.
    NTK_VECTOR_PRODUCTS (2): J1 (J2^T e) for every output basis vector e; no Jacobian is stored, cost
    ≈ one jvp+vjp per output entry of x2 (per pair of examples with vmap_axes); for cheap forward passes.
    STRUCTURED_DERIVATIVES (3): per-example Jacobians of Flax linen Dense/Conv layers as batched GEMMs
    of layer inputs and output cotangents (other layers by `jax.vjp` of that layer alone: the fallback
    is per layer); needs vmap_axes on axis 0; checked against one jvp per call, jacrev where it fails.
    """

    AUTO = 0
    JACOBIAN_CONTRACTION = 1
    NTK_VECTOR_PRODUCTS = 2
    STRUCTURED_DERIVATIVES = 3


DEFAULT_NTK_IMPLEMENTATION = NtkImplementation.JACOBIAN_CONTRACTION
EmpiricalKernel = collections.namedtuple("EmpiricalKernel", ("nngp", "ntk"))


def _implementation(value) -> NtkImplementation:
    if isinstance(value, str):
        name = value.upper()
        if name in NtkImplementation.__members__:
            return NtkImplementation[name]
    elif isinstance(value, (int, np.integer)) and int(value) in set(NtkImplementation):
        return NtkImplementation(int(value))
    names = ", ".join(f"{m.name} ({m.value})" for m in NtkImplementation)
    raise ValueError(f"unknown implementation {value!r}; valid: {names}")


def split_kwargs(kwargs: dict, x1, x2) -> tuple[dict, dict]:
    """(kwargs for x1, kwargs for x2), as neural-tangents' ``utils.split_kwargs``: ``rng`` split into
    two keys when x2 is given, a 2-tuple split into its elements, anything else shared."""
    kw1, kw2 = {}, {}
    for k, v in kwargs.items():
        if k == "rng" and x2 is not None:
            kw1[k], kw2[k] = _read_keys(v, x1, x2)
        elif isinstance(v, tuple) and len(v) == 2:
            kw1[k], kw2[k] = v
        else:
            kw1[k] = kw2[k] = v
    return kw1, kw2


def _same(a, b):
    """Traced bool: the pytrees a and b are equal elementwise (same shapes), as neural-tangents' x1_is_x2."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b) or any(np.shape(u) != np.shape(v) for u, v in zip(la, lb)):
        return jnp.asarray(False)
    eq = [jnp.all(jnp.abs(u - v) < 1e-12) if jnp.issubdtype(jnp.result_type(u), jnp.inexact) else jnp.all(u == v)
          for u, v in zip(la, lb)]  # fmt: skip
    return jnp.all(jnp.stack(eq)) if eq else jnp.asarray(True)


def _key_eq(k1, k2):
    if jax.dtypes.issubdtype(k1.dtype, jax.dtypes.prng_key):
        k1, k2 = jax.random.key_data(k1), jax.random.key_data(k2)
    return jnp.all(k1 == k2)


def _read_keys(key, x1, x2):
    """Two keys for x1 and x2 that are equal exactly when x1 equals x2 (neural-tangents' ``_read_keys``)."""
    if key is None:
        return key, key
    if isinstance(key, tuple) and len(key) == 2:
        key1, key2 = key
        warnings.warn(
            "The value of `key[1]` might be replaced by a new value if key[0] == key[1] and x1 != x2 "
            "or key[0] != key[1] and x1 == x2.",
            stacklevel=4,
        )
        new = jnp.where(_key_eq(key1, key2), jax.random.fold_in(key2, 1), key2)
        return key1, jnp.where(_same(x1, x2), key1, new)
    if isinstance(key, jax.Array):
        return key, jnp.where(_same(x1, x2), key, jax.random.fold_in(key, 1))
    raise TypeError(f"rng must be a PRNG key or a pair of keys, got {type(key).__name__}")


def _canonical_vmap_axes(vmap_axes, x, fx, kwargs):
    """(x_axis, fx_axis, kw_axes) with x_axis and fx_axis full pytrees of non-negative ints (or None)."""
    if vmap_axes is None:
        return None
    if isinstance(vmap_axes, tuple) and len(vmap_axes) == 3:
        x_axis, fx_axis, kw_axes = vmap_axes
    else:
        x_axis, fx_axis, kw_axes = vmap_axes, vmap_axes, {}
    kw_axes = dict(kw_axes or {})
    unknown = sorted(set(kw_axes) - set(kwargs))
    if unknown:
        raise ValueError(f"vmap_axes names keyword arguments {unknown} that f was not given")

    def full(axes, tree, what):
        if axes is None:
            return None
        if isinstance(axes, (int, np.integer)):
            axes = jax.tree.map(lambda _: int(axes), tree)
        try:
            return jax.tree.map(
                lambda a, v: None if a is None else ntk_impls.canonical_axes(a, len(np.shape(v)), what)[0],
                axes,
                tree,
                is_leaf=lambda a: a is None,
            )
        except ValueError as e:
            raise ValueError(f"{what} {axes!r} does not match the structure of {tree!r}: {e}") from None

    kw = {k: full(a, kwargs[k], f"vmap_axes for keyword {k!r}") for k, a in kw_axes.items()}
    return full(x_axis, x, "vmap_axes for x"), full(fx_axis, fx, "vmap_axes for f(x)"), kw


def _jit_kernel(fn: Callable) -> Callable:
    """``fn(x1, x2, params, **kwargs)`` jitted: array-valued kwargs traced, the others static (hashable)."""

    @functools.partial(jax.jit, static_argnames=("static",))
    def jitted(x1, x2, params, dynamic, static):
        return fn(x1, x2, params, **dynamic, **dict(static))

    def is_array(v):
        leaves = jax.tree.leaves(v)
        return bool(leaves) and all(isinstance(a, (jax.Array, np.ndarray, np.generic)) for a in leaves)

    @functools.wraps(fn)
    def wrapped(x1, x2, params, **kwargs):
        dynamic = {k: v for k, v in kwargs.items() if is_array(v)}
        static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in dynamic))
        try:
            hash(static)
        except TypeError:  # an unhashable non-array keyword: run traced by the caller's jit, if any
            return fn(x1, x2, params, **kwargs)
        return jitted(x1, x2, params, dynamic, static)

    wrapped.unjitted = fn
    return wrapped


def empirical_ntk_fn(
    f: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation=DEFAULT_NTK_IMPLEMENTATION,
) -> Callable:
    """neural-tangents' ``empirical_ntk_fn``: ``ntk_fn(x1, x2, params, **kwargs)`` -> Θ = J(x1) J(x2)^T.

    Args:
      f: ``f(params, x, **kwargs)``, pytrees in and out (see the module doc for the conventions).
      trace_axes: output axes whose (x1, x2) pair is replaced by its mean diagonal. Default (-1,).
      diagonal_axes: output axes whose pair is replaced by its diagonal (variances, not covariances).
      vmap_axes: None, an int / pytree of ints, or (in_axes, out_axes, kwargs_axes); see the module doc.
      implementation: an `NtkImplementation`, its int, or its name (e.g. "ntk_vector_products").

    Returns:
      ``ntk_fn(x1, x2 | None, params, **kwargs)``: jitted and traceable (jit, vmap, grad), a jax
      array per output leaf. ``ntk_fn.unjitted`` is the same function without our jit;
      ``ntk_fn.axes`` is (trace_axes, diagonal_axes), read by `ntk_vs_nn.kernels.batching.batch`.
    """
    impl = _implementation(implementation)
    ntk_impls.canonical_axes(trace_axes, 64, "trace_axes")  # ints, checked per output rank when called
    ntk_impls.canonical_axes(diagonal_axes, 64, "diagonal_axes")

    def jacobian(x, params, kw):
        """J of one batch: a tree over f's output leaves of parameter trees (``fx.shape + p.shape``)."""
        fx = jax.eval_shape(lambda p, xx: f(p, xx, **kw), params, x)
        axes = _canonical_vmap_axes(vmap_axes, x, fx, kw)
        if impl == NtkImplementation.JACOBIAN_CONTRACTION:
            return jacobians.jacrev_fn(f, axes)(params, x, kw)
        try:
            strict = impl == NtkImplementation.STRUCTURED_DERIVATIVES
            return ntk_impls.structured_fn(f, axes, fx, strict)(params, x, kw)
        except structured.Unsupported as e:
            raise ValueError(f"implementation=STRUCTURED_DERIVATIVES does not apply to this network: {e}") from None

    def ntk_fn(x1, x2, params, **kwargs):
        kw1, kw2 = split_kwargs(kwargs, x1, x2)
        fx1 = jax.eval_shape(lambda p, x: f(p, x, **kw1), params, x1)
        fx2 = fx1 if x2 is None else jax.eval_shape(lambda p, x: f(p, x, **kw2), params, x2)
        ntk_impls.check_pair(fx1, fx2, trace_axes, diagonal_axes)
        if impl == NtkImplementation.NTK_VECTOR_PRODUCTS:
            axes = _canonical_vmap_axes(vmap_axes, x1, fx1, kw1)
            x2_, kw2_ = (x1, kw1) if x2 is None else (x2, kw2)
            return ntk_impls.ntk_vector_products(f, axes, fx1, x1, x2_, params, kw1, kw2_, trace_axes, diagonal_axes)
        j1 = jacobian(x1, params, kw1)
        j2 = j1 if x2 is None else jacobian(x2, params, kw2)
        return ntk_impls.contract_jacobians(fx1, j1, j2, trace_axes, diagonal_axes)

    def tile_jacobian(x, params, kw):
        """(J, one scalar per output leaf): the Jacobian of one tile, with f's output structure."""
        fx = jax.eval_shape(lambda p, xx: f(p, xx, **kw), params, x)
        return jacobian(x, params, kw), jax.tree.map(lambda o: jnp.zeros((), o.dtype), fx)

    def contract(fx0, j1, j2, params):
        """The kernel of two tiles from their `tile_jacobian`s (output shapes read off j1)."""
        treedef, p0 = jax.tree.structure(fx0), jax.tree.leaves(params)[0]
        heads = [jax.tree.leaves(t)[0] for t in treedef.flatten_up_to(j1)]
        fx = treedef.unflatten([jax.ShapeDtypeStruct(a.shape[: a.ndim - np.ndim(p0)], a.dtype) for a in heads])
        return ntk_impls.contract_jacobians(fx, j1, j2, trace_axes, diagonal_axes)

    fn = _jit_kernel(ntk_fn)
    fn.axes = (trace_axes, diagonal_axes)
    if impl != NtkImplementation.NTK_VECTOR_PRODUCTS:  # the pieces `batch` uses to keep x2's Jacobians
        fn.jacobian = _jit_kernel(lambda x, _, params, **kw: tile_jacobian(x, params, kw))
        fn.contract = jax.jit(contract)
    return fn


def empirical_nngp_fn(f: Callable, trace_axes=(-1,), diagonal_axes=()) -> Callable:
    """neural-tangents' ``empirical_nngp_fn``: ``nngp_fn(x1, x2, params, **kwargs)`` -> f(x1) f(x2)^T per
    output leaf, with the NTK's output-axis conventions (traced axes averaged, diagonal axes once)."""
    ntk_impls.canonical_axes(trace_axes, 64, "trace_axes")
    ntk_impls.canonical_axes(diagonal_axes, 64, "diagonal_axes")

    def nngp_fn(x1, x2, params, **kwargs):
        kw1, kw2 = split_kwargs(kwargs, x1, x2)
        out1 = f(params, x1, **kw1)
        out2 = out1 if x2 is None else f(params, x2, **kw2)
        ntk_impls.check_pair(out1, out2, trace_axes, diagonal_axes)

        def contract(a, b):
            s1, s2, res = ntk_impls.einsum_spec(a.ndim, trace_axes, diagonal_axes)
            prec = jax.lax.Precision.HIGHEST
            return jnp.einsum(f"{s1},{s2}->{res}", a, b, precision=prec) / ntk_impls.trace_size(a.shape, trace_axes)

        return jax.tree.map(contract, out1, out2)

    fn = _jit_kernel(nngp_fn)
    fn.axes = (trace_axes, diagonal_axes)
    return fn


def empirical_kernel_fn(
    f: Callable,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation=DEFAULT_NTK_IMPLEMENTATION,
) -> Callable:
    """neural-tangents' ``empirical_kernel_fn``: ``kernel_fn(x1, x2, get, params, **kwargs)``.

    ``get``: "ntk" or "nngp" -> that kernel (a tree like f's output); a tuple of names -> an
    ``EmpiricalKernel``-style namedtuple with those fields, in that order (one per output leaf for
    pytree outputs); None -> both, ``EmpiricalKernel(nngp, ntk)``. vmap_axes and implementation
    apply to the NTK only."""
    fns = {
        "nngp": empirical_nngp_fn(f, trace_axes, diagonal_axes),
        "ntk": empirical_ntk_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation),
    }

    def kernel_fn(x1, x2, get, params, **kwargs):
        one = isinstance(get, str)
        names = ("nngp", "ntk") if get is None else (get,) if one else tuple(get)
        names = tuple(g.lower() for g in names)
        if not names or len(set(names)) < len(names) or not set(names) <= set(fns):
            raise ValueError(f"get must be 'nngp', 'ntk', a tuple of distinct ones, or None; got {get!r}")
        out = {g: fns[g](x1, x2, params, **kwargs) for g in names}
        if one:
            return out[names[0]]
        kind = EmpiricalKernel if names == EmpiricalKernel._fields else collections.namedtuple("EmpiricalKernel", names)
        return jax.tree.map(lambda *ks: kind(*ks), *(out[g] for g in names))

    kernel_fn.axes = (trace_axes, diagonal_axes)
    return kernel_fn


def empirical_ntk_vp_fn(f: Callable, x1, x2, params, **kwargs) -> Callable:
    """neural-tangents' ``empirical_ntk_vp_fn``: ``vp(cotangents like f(x2)) -> Θ(x1, x2) · cotangents``,
    like f(x1), as one vjp through f(x2) and one jvp through f(x1); the NTK is never formed. For pytree
    outputs it is the true product, covariances between different output leaves included (unlike the
    kernels of `empirical_ntk_fn`, which keep one block per leaf), as in neural-tangents."""
    kw1, kw2 = split_kwargs(kwargs, x1, x2)
    f1 = lambda p: f(p, x1, **kw1)  # noqa: E731
    f2 = f1 if x2 is None else (lambda p: f(p, x2, **kw2))

    def ntk_vp_fn(cotangents):
        (vjp_out,) = jax.vjp(f2, params)[1](cotangents)
        return jax.jvp(f1, (params,), (vjp_out,))[1]

    return ntk_vp_fn


def flax_apply_fn(module, mutable=False, method=None, **apply_kwargs) -> Callable:
    """``f(params, x, state=None, **kwargs)`` of a Flax linen module, for the functions above.

    The kernel is taken w.r.t. the ``params`` collection only; the other collections (BatchNorm's
    ``batch_stats``, ...) go in the ``state`` keyword, undifferentiated: pass
    ``state={"batch_stats": variables["batch_stats"]}`` to the kernel function. ``mutable`` (e.g.
    ``["batch_stats"]`` for train-mode BatchNorm) is passed to ``apply`` and the updated state is
    dropped: the kernel is of the function at the given state. Train-mode BatchNorm couples the
    examples of a batch, so use ``vmap_axes=None`` with it; eval mode (``use_running_average``)
    allows ``vmap_axes=0``. ``apply_kwargs`` (e.g. ``train=False``) go to every call of ``apply``.
    """

    def f(params, x, state=None, **kwargs):
        variables = {**(state or {}), "params": params}
        out = module.apply(variables, x, mutable=mutable, method=method, **apply_kwargs, **kwargs)
        return out[0] if mutable else out

    return f

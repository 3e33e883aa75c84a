"""Finite-width kernels of a network: the empirical NTK and the NNGP kernel of last-layer features.

The empirical NTK of f(W; x) ∈ R^k is Θ(x, x') = J(x) J(x')^T, J(x) = ∂f(W; x)/∂W of shape (k, P):
(n1, n2, k, k) for two batches, or (n1, n2) with the output axis traced (the mean of the k
diagonal entries, as in neural-tangents). The NNGP kernel of last-layer features is
φ(x) φ(x')^T / width. Written from the math; neural-tangents is not imported. The closed-form
predictors that train a kernel model on them are in `ntk_vs_nn.kernels.predict`.

This `empirical_ntk_fn` is the suite's own: (B, k) outputs, tiled inside, host numpy results. For
neural-tangents' API (pytree outputs, trace/diagonal/vmap axes, traceable under `jax.jit`), use
`ntk_vs_nn.kernels.empirical_ntk_fn` (`ntk_vs_nn.kernels.api`; docs/kernels.md, "Coming from
neural-tangents").

Example:
    >>> module = build_model("SimpleCNN-3-1", num_classes=3, ndim=1)
    >>> f = lambda params, x: module.apply({"params": params}, x)            # (B, 3)
    >>> params = module.init(jax.random.key(0), x_train[:1])["params"]
    >>> ntk = empirical_ntk_fn(f, trace_axes=())                              # full kernel
    >>> k_train_train = ntk(x_train, None, params)                            # (n, n, 3, 3)
    >>> k_test_train = ntk(x_test, x_train, params)                           # (m, n, 3, 3)
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntk_vs_nn.engine.batching import map_batches, pad_batch

IMPLEMENTATIONS = ("auto", "structured_derivatives", "jacobian_contraction", "ntk_vector_products")
_JACOBIAN_IMPLS = IMPLEMENTATIONS[:3]  # the ones that store Jacobian tiles and contract them
CHECK_TOL = 1e-3  # relative error of the structured Jacobian's check (float32 gives ~1e-7)
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 in our contractions on GPUs


def _flat_jacobian(f, vmap_axes):
    """(params, x (t, ...), kw) -> per-example Jacobians, one (t, k, P_leaf) array per parameter leaf.

    The leaves stay separate: joining them into one (t, k, P) array is a copy of the whole Jacobian
    that cost up to a quarter of the kernel's time on CPU (benchmarks/kernels.py).
    """

    def jac(params, x, kw):
        g = jax.jacrev(lambda p, xb: f(p, xb, **kw))
        if vmap_axes is None:
            leaves = jax.tree.leaves(g(params, x))
        else:
            leaves = jax.tree.leaves(jax.vmap(lambda xi: jax.tree.map(lambda a: a[0], g(params, xi[None])))(x))
        return tuple(a.reshape(a.shape[:2] + (-1,)) for a in leaves)

    return jac


def _contract(traced):
    """(J1, J2: per-leaf (t, k, P_l) Jacobians) -> (t1, t2) mean over the diagonal, or (t1, t2, k, k).

    One GEMM per leaf, summed: traced contracts (a, p) together, full keeps the output axes a, b.
    """

    def contract(j1, j2):
        (t1, k, _), t2 = j1[0].shape, j2[0].shape[0]
        if traced:  # sum_l sum_a sum_p J1[i,a,p] J2[j,a,p]
            return sum(jnp.dot(a.reshape(t1, -1), b.reshape(t2, -1).T, precision=_HIGHEST) for a, b in zip(j1, j2)) / k
        out = sum(jnp.dot(a.reshape(t1 * k, -1), b.reshape(t2 * k, -1).T, precision=_HIGHEST) for a, b in zip(j1, j2))
        return out.reshape(t1, k, t2, k).transpose(0, 2, 1, 3)

    return contract


def _ntk_vector_products(f, vmap_axes, traced):
    """Tile kernel as jvp(vjp(e_b)): Θ(x1, x2_j) e_b = J(x1) J(x2_j)^T e_b for each output basis e_b.

    A sequential `lax.map` over the examples j of x2, vmapped over the k basis vectors, bounds the
    memory to k parameter-sized tangents and one k-fold batched jvp over x1 at a time.
    """

    def tile(x1, x2, params, kw):
        _, jvp1 = jax.linearize(lambda p: f(p, x1, **kw), params)

        def column(j):  # Θ(x1, x2_j) e_b for every output basis vector e_b: (k_b, t1, k_a)
            xs = x2 if vmap_axes is None else jax.lax.dynamic_slice_in_dim(x2, j, 1)
            out2, vjp2 = jax.vjp(lambda p: f(p, xs, **kw), params)
            hot = jnp.arange(len(xs)) == (j if vmap_axes is None else 0)  # cotangent on example j only
            cots = hot[None, :, None] * jnp.eye(out2.shape[-1], dtype=out2.dtype)[:, None, :]
            return jax.vmap(lambda c: jvp1(*vjp2(c)))(cots)

        rows = jax.lax.map(column, jnp.arange(x2.shape[0]))
        # rows[j, b, i, a] = Θ(x1_i, x2_j)_{ab}
        if traced:
            return jnp.diagonal(rows, axis1=1, axis2=3).mean(-1).T
        return rows.transpose(2, 0, 3, 1)

    return tile


class _Jacobian:
    """Per-example Jacobian tiles, by structured derivatives where the network allows, else `jacrev`.

    Every structured tile is checked against one `jax.vjp` of the tile (`structured.check_fn`, ~one
    backward pass, against the k of the tile itself). On the first failure — a network outside the
    structured assumptions, or a wrong result (as XLA:CPU gave when the backward passes were vmapped,
    results/xla-cpu-bug/) — ``"auto"`` recomputes that tile and all later ones
    with `_flat_jacobian` (warning when the check failed), while an explicit
    ``"structured_derivatives"`` raises ValueError. ``self.implementation`` says what ran.
    """

    def __init__(self, f, vmap_axes, implementation):
        self.f, self.requested, self.done = f, implementation, set()
        self.dense = jax.jit(_flat_jacobian(f, vmap_axes))
        self.structured = None if implementation == "jacobian_contraction" or vmap_axes is None else False

    @property
    def implementation(self):
        return "+".join(sorted(self.done, reverse=True)) or None

    def __call__(self, params, x, kw):
        if self.structured is None:
            self.done.add("jacobian_contraction")
            return self.dense(params, x, kw)
        from ntk_vs_nn.kernels import structured

        if self.structured is False:
            self.structured = jax.jit(structured.structured_jacobian(self.f))
            self.check = structured.check_fn(self.f)
        try:
            tile = self.structured(params, x, kw)
            err = self.check(tile, params, x, kw)
            problem = None if err <= CHECK_TOL else f"its check failed (relative error {err:.1e} > {CHECK_TOL:g})"
        except structured.Unsupported as e:
            problem, err = str(e), None
        except Exception as e:  # a network the interceptor trips over: say so, never a wrong kernel
            problem, err = f"{type(e).__name__}: {e}", float("nan")
        if problem is None:
            self.done.add("structured_derivatives")
            return tile
        if self.requested == "structured_derivatives":
            raise ValueError(f"implementation='structured_derivatives' does not apply to this network: {problem}")
        if err is not None:
            import warnings

            warnings.warn(f"structured derivatives: {problem}; using jacobian_contraction", stacklevel=2)
        self.structured = None
        return self(params, x, kw)


def empirical_ntk_fn(
    f: Callable,
    trace_axes=(-1,),
    vmap_axes=0,
    implementation: str = "auto",
    tile_size: int = 256,
    progress: bool = False,
    cache_bytes: int = 8 << 30,
) -> Callable:
    """The empirical NTK of ``f``, tiled over both inputs, as host numpy arrays.

    Args:
      f: ``f(params, x, **kwargs) -> (B, k)`` (any other output shape raises a ValueError); the kernel
        is taken w.r.t. ``params`` only.
      trace_axes: ``()`` for the full kernel (n1, n2, k, k); ``(-1,)`` (or ``(1,)``) averages the k
        diagonal entries into (n1, n2) (the mean, as neural-tangents, not the sum).
      vmap_axes: 0 when the examples of a batch are independent (per-example Jacobians, vmapped);
        None to differentiate each tile as one batch (for batch-coupled f, use tile_size >= n).
      implementation: ``"jacobian_contraction"``: the Jacobian J (n2, k, P) of the second input is
        computed once, tile by tile, by `jax.jacrev` vmapped over examples, and kept (in memory up to
        ``cache_bytes``, beyond that in a temporary file on disk); each tile of the first input is
        differentiated once and contracted with every kept tile by one matrix product per parameter
        leaf (traced: (t, kP) x (kP, t)). Cost ≈ (n1 + n2)·k backward passes + 2·n1·n2·k·P flops
        (x k for the full kernel). ``"structured_derivatives"``: the same, with each tile's Jacobian
        built from layer structure (`ntk_vs_nn.kernels.structured`: one batched backward pass per output
        unit, then Dense/Conv weight Jacobians as batched GEMMs; 1.7-3.4x faster on CPU for 2-D conv
        nets, ~10% slower for the 1-D ResNets) — for Flax linen networks whose parameters live in
        leaf modules, vmap_axes=0. ``"auto"`` (default): structured derivatives for every tile that
        passes its check, jacobian_contraction from the first that does not (or where they do not
        apply); ``fn.implementation()`` says which ran.
        ``"ntk_vector_products"``: no Jacobian stored (≈ tile²·k jvps per tile pair, memory
        ≈ k·P + k·tile_size activations), for nets whose Jacobian tiles do not fit.
        benchmarks/kernels_impl.py compares them.
      tile_size: examples per tile; the last tile is padded to the same shape, so every tile
        function compiles once and device memory is bounded by the tile, not by n.
      progress: show a tqdm bar over tiles.
      cache_bytes: most bytes of kept Jacobian tiles held in memory (the Jacobian implementations).

    Returns:
      ``fn(x1 (n1, ...), x2 (n2, ...) | None, params, **kwargs) -> np.ndarray`` of shape (n1, n2) or
      (n1, n2, k, k), float32 or float64 as f computes. ``x2=None`` means x2 = x1 and only the upper
      tile triangle is computed (the rest by symmetry). ``kwargs`` go to f, undifferentiated.
      ``fn.train_test(x_train, x_test, params, **kwargs) -> (Θ(train, train), Θ(test, train))``
      shares the training Jacobian between the two blocks.
    """
    axes = {a % 2 for a in tuple(trace_axes)}
    if not axes <= {1}:
        raise ValueError(f"trace_axes must be () or (-1,) for outputs of shape (B, k), got {trace_axes!r}")
    if vmap_axes not in (0, None):
        raise ValueError(f"vmap_axes must be 0 or None, got {vmap_axes!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; valid: {', '.join(IMPLEMENTATIONS)}")
    traced = bool(axes)
    if implementation in _JACOBIAN_IMPLS:
        jac_fn, contract = _Jacobian(f, vmap_axes, implementation), jax.jit(_contract(traced))
    else:
        pair_fn = jax.jit(_ntk_vector_products(f, vmap_axes, traced))

    checked = set()

    def blocks(x_cols, row_sets, params, kwargs):
        """Θ(rows, x_cols) for each rows in row_sets (None: rows = x_cols, symmetric)."""
        key = (np.shape(x_cols)[1:], str(np.asarray(x_cols[:1]).dtype), tuple(sorted(kwargs)))
        if key not in checked:  # once per input shape: tracing f costs as much as a small tile
            _check_outputs(f, params, x_cols, kwargs)
            checked.add(key)
        n2 = len(x_cols)
        t = min(tile_size, max([n2] + [len(r) for r in row_sets if r is not None]))
        cols = pad_batch(x_cols, t)
        starts2 = range(0, n2, t)
        todo = []
        for r, rows in enumerate(row_sets):
            n1 = n2 if rows is None else len(rows)
            todo += [(r, i, j) for i in range(0, n1, t) for j in starts2 if rows is not None or j >= i]
        bar = tqdm(
            total=len(todo) + (len(starts2) if implementation in _JACOBIAN_IMPLS else 0),
            desc="ntk tiles",
            disable=not progress,
        )
        if implementation in _JACOBIAN_IMPLS:
            kept = _JacobianStore(cache_bytes)
            for j in starts2:
                kept.add(jac_fn(params, cols[j : j + t], kwargs))
                bar.update()
        outs = [None] * len(row_sets)

        def store(r, i, j, res):  # device -> host, drop the padding, mirror the lower triangle
            n1 = n2 if row_sets[r] is None else len(row_sets[r])
            blk = np.asarray(res)[: n1 - i, : n2 - j]
            if outs[r] is None:
                outs[r] = np.empty((n1, n2) + blk.shape[2:], blk.dtype)
            outs[r][i : i + blk.shape[0], j : j + blk.shape[1]] = blk
            if row_sets[r] is None and j != i:
                outs[r][j : j + blk.shape[1], i : i + blk.shape[0]] = blk.transpose((1, 0, 3, 2)[: blk.ndim])

        pending, cur = None, (None, None, None)  # copy tile b-1 to the host while tile b computes
        for r, i, j in todo:
            rows = cols if row_sets[r] is None else pad_batch(row_sets[r], t) if cur[0] != r else cur[2]
            if implementation in _JACOBIAN_IMPLS:
                if (r, i) != cur[:2]:
                    j1 = kept.get(i // t) if row_sets[r] is None else jac_fn(params, rows[i : i + t], kwargs)
                res = contract(j1, kept.get(j // t))
            else:
                res = pair_fn(rows[i : i + t], cols[j : j + t], params, kwargs)
            cur = (r, i, rows)
            if pending is not None:
                store(*pending)
            pending = (r, i, j, res)
            bar.update()
        if pending is not None:
            store(*pending)
        bar.close()
        return outs

    def ntk_fn(x1, x2, params, **kwargs):
        if x2 is None:
            return blocks(x1, [None], params, kwargs)[0]
        return blocks(x2, [x1], params, kwargs)[0]

    def train_test(x_train, x_test, params, **kwargs):
        k_tt, k_st = blocks(x_train, [None, x_test], params, kwargs)
        return k_tt, k_st

    ntk_fn.train_test = train_test
    ntk_fn.implementation = lambda: jac_fn.implementation if implementation in _JACOBIAN_IMPLS else implementation
    return ntk_fn


def _check_outputs(f: Callable, params, x, kwargs) -> None:
    """This function's kernels are of (B, k) outputs: any other output shape (e.g. a conv net's
    (B, H, W, C)) would be contracted as if it were (B, k) and give a kernel of the wrong shape."""
    out = jax.eval_shape(lambda p, xb: f(p, xb, **kwargs), params, jnp.asarray(x[:1]))
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2:
        got = shape if shape is not None else type(out).__name__
        raise ValueError(
            f"empirical_ntk_fn: f must return one (B, k) array; it returns {got} for a batch of 1 "
            "(flatten or pool the other axes, e.g. reshape to (B, -1))"
        )


class _JacobianStore:
    """Jacobian tiles kept for reuse: device arrays up to ``cache_bytes``, then a temporary file."""

    def __init__(self, cache_bytes: int):
        self.budget, self.used, self.tiles = cache_bytes, 0, []
        self._dir = None

    def add(self, tile):
        """Keep one tile: a tuple of per-leaf arrays."""
        size = sum(a.size * a.dtype.itemsize for a in tile)
        if self.used + size <= self.budget:
            self.tiles.append(tile)
            self.used += size
            return
        import tempfile

        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="ntk_jacobian_")
        kept = []
        for leaf, a in enumerate(tile):
            mm = np.lib.format.open_memmap(
                f"{self._dir.name}/{len(self.tiles)}-{leaf}.npy", mode="w+", dtype=a.dtype, shape=a.shape
            )
            mm[...] = np.asarray(a)
            mm.flush()
            kept.append(mm)
        self.tiles.append(tuple(kept))

    def get(self, b):
        return self.tiles[b]


def family_ntk_fn(family, variables, **kw) -> Callable:
    """The empirical NTK of a `ModelFamily` w.r.t. its trainable ``params``.

    f(params, x) = family.apply({"params": params, "state": variables["state"]}, x); the state (the
    anchor W0 of ``ntk``, the frozen layers of ``gp``) is passed to the compiled tile as an argument,
    not baked in as a constant. The ``ntk`` family is linear in params with Jacobian J(W0), so its
    NTK at any params equals the ``nn`` family's NTK at W0; the ``gp`` family's is (φφ'^T + 1) ⊗ I_k.

    Args:
      family, variables: a `ntk_vs_nn.families.ModelFamily` and its ``family.init`` output.
      **kw: options of `empirical_ntk_fn` (trace_axes, implementation, tile_size, ...).

    Returns:
      ``fn(x1 (n1, ...), x2=None, params=None) -> np.ndarray`` (n1, n2) or (n1, n2, k, k); params
      default to ``variables["params"]``.
    """
    ntk = empirical_ntk_fn(lambda p, x, state: family.apply({"params": p, "state": state}, x), **kw)
    return lambda x1, x2=None, params=None: ntk(
        x1, x2, variables["params"] if params is None else params, state=variables["state"]
    )


def head_features(module: nn.Module, params, x, head: str = "head") -> jax.Array:
    """The input of the Dense layer named ``head``, captured by a Flax method interceptor.

    Args:
      module, params: any network of `ntk_vs_nn.models` (it ends in ``nn.Dense(name="head")``).
      x: (B, ...) inputs.

    Returns:
      φ(x) of shape (B, width); ``φ(x) @ kernel + bias`` of the head is the model output.
    """
    captured = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, nn.Dense) and context.module.name == head:
            captured.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        module.apply({"params": params}, x)
    if len(captured) != 1:
        raise ValueError(f"expected one call of a Dense layer named {head!r}, saw {len(captured)}")
    return captured[0]


def nngp_fn(features: Callable, tile_size: int = 256) -> Callable:
    """The NNGP (random-features) kernel of last-layer features, K = φ(x1) φ(x2)^T / width.

    Normalised by the width so K stays O(1) as the net widens (the finite-width estimate of the
    NNGP kernel). With a standard-parameterised Dense head, the ``gp`` family's traced NTK is
    ``width · K + 1`` (the head kernel plus its bias).

    Args:
      features: ``x (B, ...) -> φ(x) (B, width)``, e.g. ``lambda x: head_features(module, params, x)``.
      tile_size: examples per (padded) feature batch; the batches run as one compiled `map_batches`.

    Returns:
      ``fn(x1 (n1, ...), x2 (n2, ...) | None) -> np.ndarray (n1, n2)``; x2=None means x1.
    """
    phi_fn = jax.jit(features)

    def feats(x):
        return map_batches(phi_fn, x, tile_size)

    def fn(x1, x2=None):
        phi1 = feats(x1)
        phi2 = phi1 if x2 is None else feats(x2)
        return phi1 @ phi2.T / phi1.shape[-1]

    return fn

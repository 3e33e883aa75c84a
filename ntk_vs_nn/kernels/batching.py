"""Kernels of any size in bounded memory (`batch`, as neural-tangents' ``nt.batch``) and a sanity check
of a computed kernel (`check_kernel`: non-finite entries, negative eigenvalues of a symmetric kernel).

`batch` tiles both inputs along axis 0 of every input leaf, calls the kernel function on one tile pair
at a time (one compiled program: the last tile is padded by repeating its last example, and the
padding is cropped), and assembles the blocks on the device or, with ``store_on_device=False``, in
host memory. With ``x2=None`` only the tiles on and above the diagonal are computed; the others are
their transposes. The kernel's first two axes must be x1's and x2's batch axes: the batch axis of
the output may be neither traced nor diagonal.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntk_vs_nn.kernels import ntk_impls
from ntk_vs_nn.kernels.api import split_kwargs


def kernel_layout(ndim: int, trace_axes, diagonal_axes) -> list[tuple[int, ...]]:
    """The kernel's axes grouped per output axis: (i, i+1) for an axis kept for x1 and x2, (i,) for a
    diagonal axis; from the kernel's rank and the kernel function's trace/diagonal axes."""
    for d in range(1, ndim + 1):
        try:
            trace = ntk_impls.canonical_axes(trace_axes, d, "trace_axes")
            diag = ntk_impls.canonical_axes(diagonal_axes, d, "diagonal_axes")
        except ValueError:
            continue
        if 2 * d - 2 * len(trace) - len(diag) != ndim:
            continue
        groups, i = [], 0
        for a in range(d):
            if a in trace:
                continue
            groups.append((i,) if a in diag else (i, i + 1))
            i += len(groups[-1])
        return groups
    raise ValueError(f"a kernel of rank {ndim} matches no output rank for trace {trace_axes}, diagonal {diagonal_axes}")


def _swap(k, groups):
    """Θ(x2, x1) from Θ(x1, x2): every (x1, x2) axis pair swapped."""
    perm = [a for g in groups for a in reversed(g)]
    return k.transpose(perm)


def check_kernel(kernel, trace_axes=(-1,), diagonal_axes=(), symmetric=True, action="raise", rtol=None):
    """Raise (``action="raise"``) or warn (``"warn"``) when a kernel has non-finite entries or, when
    ``symmetric`` (Θ(x, x)), an eigenvalue below ``-rtol · λ_max`` (default rtol: √eps of its dtype,
    3e-4 in float32), with the eigenvalue in the message. A pytree of kernels is checked per leaf.

    The kernel is read as a matrix over (example, kept output axes), one per diagonal-axis index:
    traces and diagonal blocks of a PSD kernel are PSD, so any layout of `empirical_ntk_fn` applies.
    Returns the smallest relative eigenvalue found (nan when not symmetric), for logging.
    """
    if action not in ("raise", "warn"):
        raise ValueError(f"action must be 'raise' or 'warn', got {action!r}")
    worst = np.nan
    for path, k in jax.tree_util.tree_leaves_with_path(kernel):
        k = np.asarray(k)
        name = jax.tree_util.keystr(path) or "kernel"
        problem = None
        bad = int(k.size - np.count_nonzero(np.isfinite(k)))
        if bad:
            problem = f"{name} has {bad} non-finite entries of {k.size}"
        elif symmetric and k.size:
            groups = kernel_layout(k.ndim, trace_axes, diagonal_axes)
            diag = [g[0] for g in groups if len(g) == 1]
            first, second = [g[0] for g in groups if len(g) == 2], [g[1] for g in groups if len(g) == 2]
            m = int(np.prod([k.shape[a] for a in first]))
            mats = k.transpose(diag + first + second).reshape(-1, m, m).astype(np.float64)
            eig = np.linalg.eigvalsh((mats + mats.transpose(0, 2, 1)) / 2)
            top = max(float(np.max(np.abs(eig))), np.finfo(np.float64).tiny)
            low = float(np.min(eig))
            tol = np.sqrt(np.finfo(k.dtype).eps) if rtol is None else rtol
            worst = low / top if np.isnan(worst) else min(worst, low / top)
            if low < -tol * top:
                problem = f"{name} is not PSD: smallest eigenvalue {low:.4g} (largest {top:.4g}, ratio {low / top:.2e})"
        if problem:
            if action == "raise":
                raise ValueError(problem)
            warnings.warn(problem, stacklevel=2)
    return worst


def _to_disk(a, folder: str, tile: int) -> np.ndarray:
    """One Jacobian leaf in a memory-mapped .npy file under ``folder``."""
    fd, path = tempfile.mkstemp(suffix=".npy", prefix=f"{tile}-", dir=folder)
    os.close(fd)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=a.dtype, shape=a.shape)
    mm[...] = np.asarray(a)
    mm.flush()
    return mm


def _contract_all(kernel_fn, kept, rows, cols, x2, xs1, take, args, kw1, blocks, keep) -> None:
    """Fill ``blocks`` with the contraction of each row tile's Jacobian (differentiated once; x1's own
    kept ones when x2 is None, upper triangle only) with every kept column Jacobian."""
    for i in rows:
        j1, fx0 = kept[i] if x2 is None else kernel_fn.jacobian(take(xs1, i), None, *args, **kw1)
        for j in cols:
            if x2 is None and j < i:
                continue
            blocks[i, j] = keep(kernel_fn.contract(fx0, j1, kept[j][0], *args))


def _pad(x, t: int):
    """Every leaf padded along axis 0 to a multiple of t by repeating its last example."""
    return jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], -len(a) % t, 0)]) if len(a) % t else a, x)


def batch(kernel_fn: Callable, batch_size: int = 0, device_count: int = -1, store_on_device: bool = True,
          check: str | None = None, reuse_jacobians: bool = True, cache_bytes: int = 8 << 30) -> Callable:  # fmt: skip
    """neural-tangents' ``nt.batch``: ``kernel_fn(x1, x2, *args, **kwargs)`` computed in tiles.

    Args:
      kernel_fn: a kernel function of this package (or any ``(x1, x2, ...) -> kernels`` whose
        kernels have the x1 and x2 batch axes first), e.g. ``empirical_ntk_fn(f, ...)`` or
        ``empirical_kernel_fn(f, ...)`` (then ``get`` is the first of ``args``).
      batch_size: examples per tile; 0 means one tile (no batching). Unlike neural-tangents, it need
        not divide the number of examples.
      device_count: accepted for compatibility; one device is used.
      store_on_device: keep the assembled kernel on the device (a jax array); False copies each
        block to host memory as it completes (a numpy array), so only one block is on the device.
      check: None, or "warn" / "raise": `check_kernel` on the result (PSD only when x2 is None).
      reuse_jacobians: for an `empirical_ntk_fn` that stores Jacobians (all implementations but
        NTK_VECTOR_PRODUCTS) called as ``(x1, x2, params, **kwargs)`` without ``rng``: each tile is
        differentiated once and x2's tile Jacobians are kept (on the device, or in host memory with
        ``store_on_device=False``: ≈ n2·k·P numbers) and contracted with each row tile's, as the
        suite's older tiled `empirical.empirical_ntk_fn` does, instead of differentiating both
        tiles of every pair (neural-tangents' way: memory bounded by one tile pair, about
        n/batch_size times more backward passes). False: neural-tangents' way.
      cache_bytes: with ``store_on_device=False``, the most bytes of kept Jacobians held in memory;
        the rest go to memory-mapped temporary files (deleted when the call returns).

    Returns:
      ``batched(x1, x2=None, *args, **kwargs)`` equal to ``kernel_fn`` up to float round-off. Keyword
      arguments reach every tile unchanged (so per-example keyword arguments are not supported, and
      an ``rng`` key is split per tile pair as neural-tangents does, not as one call would).
    """
    del device_count
    axes = getattr(kernel_fn, "axes", None)  # (trace_axes, diagonal_axes) of our kernel functions
    jitted = kernel_fn if axes is not None else jax.jit(kernel_fn)  # ours are jitted inside

    def batched(x1, x2=None, *args, **kwargs):
        n1 = len(jax.tree.leaves(x1)[0])
        n2 = n1 if x2 is None else len(jax.tree.leaves(x2)[0])
        t = min(batch_size or max(n1, n2), max(n1, n2))
        xs1 = _pad(x1, t)
        xs2 = xs1 if x2 is None else _pad(x2, t)
        rows, cols = range(0, n1, t), range(0, n2, t)
        take = lambda x, i: jax.tree.map(lambda a: a[i : i + t], x)  # noqa: E731
        blocks = {}
        keep = (lambda a: a) if store_on_device else (lambda a: jax.tree.map(np.asarray, a))  # noqa: E731
        if reuse_jacobians and hasattr(kernel_fn, "jacobian") and len(args) == 1 and "rng" not in kwargs:
            kw1, kw2 = split_kwargs(kwargs, None, None)  # 2-tuples: x1's and x2's (x2=None: x1's)
            kept = {}
            with tempfile.TemporaryDirectory(prefix="ntk_jacobian_") as spill:
                used = 0
                for j in cols:
                    jac = kernel_fn.jacobian(take(xs2, j), None, *args, **(kw1 if x2 is None else kw2))
                    size = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(jac))
                    if store_on_device or used + size <= cache_bytes:
                        kept[j], used = keep(jac), used + size
                    else:  # beyond the budget: a memory-mapped file per leaf, read back when contracted
                        kept[j] = jax.tree.map(lambda a, j=j: _to_disk(a, spill, j), jac)
                _contract_all(kernel_fn, kept, rows, cols, x2, xs1, take, args, kw1, blocks, keep)
        else:
            for i in rows:
                for j in cols:
                    if x2 is None and j < i and axes is not None:
                        continue
                    second = None if x2 is None and i == j else take(xs2, j)
                    blocks[i, j] = keep(jitted(take(xs1, i), second, *args, **kwargs))
        first = blocks[0, 0]
        leaves, treedef = jax.tree.flatten(first)
        for k in leaves:
            if k.ndim < 2 or k.shape[:2] != (t, t):
                raise ValueError(
                    f"batch: a kernel block of shape {k.shape} does not start with the two batch axes ({t}, {t}); "
                    "the batch axis of the output must be neither traced nor diagonal"
                )
        xp = jnp if store_on_device else np
        out = []
        for li, k0 in enumerate(leaves):
            groups = None if axes is None else kernel_layout(k0.ndim, *axes)
            grid = []
            for i in rows:
                row = []
                for j in cols:
                    if (i, j) in blocks:
                        row.append(jax.tree.leaves(blocks[i, j])[li])
                    else:
                        row.append(_swap(jax.tree.leaves(blocks[j, i])[li], groups))
                grid.append(xp.concatenate(row, axis=1))
            out.append(xp.concatenate(grid, axis=0)[:n1, :n2])
        result = treedef.unflatten(out)
        if check is not None:
            trace_axes, diagonal_axes = axes if axes is not None else ((), ())
            check_kernel(result, trace_axes, diagonal_axes, symmetric=x2 is None and axes is not None, action=check)
        return result

    return batched

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
from tqdm.auto import tqdm

from ntk_vs_nn.engine.batching import pad_rows
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


def _pad(x, t: int):
    """Every leaf padded along axis 0 to a multiple of t by repeating its last example (numpy stays numpy)."""
    return jax.tree.map(lambda a: pad_rows(a, t), x)


def _size(x) -> int:
    return len(jax.tree.leaves(x)[0])


def _first_of_pairs(kwargs: dict) -> dict:
    """kwargs with each 2-tuple (v1, v2) made (v1, v1): a tile pair of x1 with itself (x2=None uses v1)."""
    return {k: (v[0], v[0]) if k != "rng" and isinstance(v, tuple) and len(v) == 2 else v for k, v in kwargs.items()}


class _Assembly:
    """The blocks of each row set put together. In host memory (``on_device=False``) each block is
    written into a preallocated numpy array (cropped, and mirrored for a symmetric set) while the next
    one computes; on the device the blocks are kept and concatenated at the end."""

    def __init__(self, ns, n2, t, symmetric, axes, on_device):
        self.ns, self.n2, self.t, self.symmetric, self.axes, self.on_device = ns, n2, t, symmetric, axes, on_device
        self.blocks, self.pending, self.out, self.shapes = {}, None, [None] * len(ns), None

    def add(self, r, i, j, res):
        if self.shapes is None:  # the first block: check the layout, learn the leaves' shapes
            leaves, self.treedef = jax.tree.flatten(res)
            for k in leaves:
                if k.ndim < 2 or k.shape[:2] != (self.t, self.t):
                    raise ValueError(
                        f"batch: a kernel block of shape {k.shape} does not start with the two batch axes "
                        f"({self.t}, {self.t}); the batch axis of the output must be neither traced nor diagonal"
                    )
            self.shapes = [(k.shape[2:], k.dtype) for k in leaves]
            self.groups = [None if self.axes is None else kernel_layout(k.ndim, *self.axes) for k in leaves]
        if self.on_device:
            self.blocks[r, i, j] = jax.tree.leaves(res)
            return
        if self.pending is not None:  # copy block b-1 to the host while block b computes
            self._store(*self.pending)
        self.pending = (r, i, j, res)

    def _mirrored(self, r, i, j) -> bool:
        return self.symmetric[r] and j != i and self.axes is not None

    def _store(self, r, i, j, res):
        n1, n2 = self.ns[r], self.n2
        if self.out[r] is None:
            self.out[r] = [np.empty((n1, n2) + shape, dtype) for shape, dtype in self.shapes]
        for o, a, g in zip(self.out[r], jax.tree.leaves(res), self.groups):
            blk = np.asarray(a)[: n1 - i, : n2 - j]
            o[i : i + blk.shape[0], j : j + blk.shape[1]] = blk
            if self._mirrored(r, i, j):
                o[j : j + blk.shape[1], i : i + blk.shape[0]] = _swap(blk, g)

    def finish(self) -> list:
        if self.shapes is None:
            raise ValueError("batch: no kernel block was computed (no examples)")
        if not self.on_device:
            if self.pending is not None:
                self._store(*self.pending)
            out = [o or [np.empty((n, self.n2) + s, d) for s, d in self.shapes] for o, n in zip(self.out, self.ns)]
            return [self.treedef.unflatten(o) for o in out]
        results = []
        for r, n1 in enumerate(self.ns):
            leaves = []
            for li, (shape, dtype) in enumerate(self.shapes):
                if n1 == 0:
                    leaves.append(jnp.zeros((0, self.n2) + shape, dtype))
                    continue
                grid = []
                for i in range(0, n1, self.t):
                    row = []
                    for j in range(0, self.n2, self.t):
                        if (r, i, j) in self.blocks:
                            row.append(self.blocks[r, i, j][li])
                        else:
                            row.append(_swap(self.blocks[r, j, i][li], self.groups[li]))
                    grid.append(jnp.concatenate(row, axis=1))
                leaves.append(jnp.concatenate(grid, axis=0)[:n1, : self.n2])
            results.append(self.treedef.unflatten(leaves))
        return results


def batch(kernel_fn: Callable, batch_size: int = 0, device_count: int = -1, store_on_device: bool = True,
          check: str | None = None, reuse_jacobians: bool = True, cache_bytes: int = 8 << 30,
          progress: bool = False) -> Callable:  # fmt: skip
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
        ``store_on_device=False``: ≈ n2·k·P numbers) and contracted with each row tile's, instead
        of differentiating both tiles of every pair (neural-tangents' way: memory bounded by one
        tile pair, about n/batch_size times more backward passes). False: neural-tangents' way.
      cache_bytes: with ``store_on_device=False``, the most bytes of kept Jacobians held in memory;
        the rest go to memory-mapped temporary files (deleted when the call returns).
      progress: a tqdm bar over the tiles (Jacobians and blocks).

    Returns:
      ``batched(x1, x2=None, *args, **kwargs)`` equal to ``kernel_fn`` up to float round-off. Keyword
      arguments reach every tile unchanged (so per-example keyword arguments are not supported, and
      an ``rng`` key is split per tile pair as neural-tangents does, not as one call would).
      ``batched.train_test(x_train, x_other, *args, **kwargs)`` returns ``(batched(x_train, None),
      batched(x_other, x_train))`` with x_train's tile Jacobians computed once for both blocks (when
      Jacobians are reused); a keyword given as a 2-tuple is (x_train's value, x_other's value).
    """
    del device_count
    axes = getattr(kernel_fn, "axes", None)  # (trace_axes, diagonal_axes) of our kernel functions
    jitted = kernel_fn if axes is not None else jax.jit(kernel_fn)  # ours are jitted inside

    def compute(x_cols, row_sets, args) -> list:
        """Θ(rows, x_cols) for each (rows, kwargs) of ``row_sets``, kwargs as ``kernel_fn(rows, x_cols,
        **kwargs)`` takes them; rows None: Θ(x_cols, x_cols) as ``kernel_fn(x_cols, None, **kwargs)``,
        only the tiles on and above the diagonal computed (for kernel functions of this package).
        With reused Jacobians, x_cols's tiles are differentiated once for every row set."""
        n2 = _size(x_cols)
        symmetric = [rows is None for rows, _ in row_sets]
        ns = [n2 if rows is None else _size(rows) for rows, _ in row_sets]
        t = min(batch_size or max(ns + [n2]), max(ns + [n2]))
        cols = _pad(x_cols, t)
        padded = [cols if rows is None else _pad(rows, t) for rows, _ in row_sets]
        take = lambda x, i: jax.tree.map(lambda a: a[i : i + t], x)  # noqa: E731
        starts2 = range(0, n2, t)
        todo = [(r, i, j) for r, n1 in enumerate(ns) for i in range(0, n1, t) for j in starts2
                if not (symmetric[r] and j < i and axes is not None)]  # fmt: skip
        reuse = reuse_jacobians and hasattr(kernel_fn, "jacobian") and len(args) == 1
        reuse = reuse and not any("rng" in kw for _, kw in row_sets)
        keep = (lambda a: a) if store_on_device else (lambda a: jax.tree.map(np.asarray, a))  # noqa: E731
        out = _Assembly(ns, n2, t, symmetric, axes, store_on_device)
        bar = tqdm(total=len(todo) + (len(starts2) if reuse else 0), desc="kernel tiles", disable=not progress)
        with tempfile.TemporaryDirectory(prefix="ntk_jacobian_") as spill:
            if reuse:  # 2-tuples: (x1's, x2's) kwargs per row set; x_cols's are the same in every set
                splits = [split_kwargs(kw, None, None) for _, kw in row_sets]
                kw_cols = splits[0][0] if symmetric[0] else splits[0][1]
                kept, used = {}, 0
                for j in starts2:
                    jac = kernel_fn.jacobian(take(cols, j), None, *args, **kw_cols)
                    size = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(jac))
                    if store_on_device or used + size <= cache_bytes:
                        kept[j], used = keep(jac), used + size
                    else:  # beyond the budget: a memory-mapped file per leaf, read back when contracted
                        kept[j] = jax.tree.map(lambda a, j=j: _to_disk(a, spill, j), jac)
                    bar.update()
                current = None
                for r, i, j in todo:
                    if current != (r, i):  # each row tile differentiated once (x_cols's own: kept)
                        rows = None if symmetric[r] else take(padded[r], i)
                        j1, fx0 = kept[i] if rows is None else kernel_fn.jacobian(rows, None, *args, **splits[r][0])
                        current = (r, i)
                    out.add(r, i, j, kernel_fn.contract(fx0, j1, kept[j][0], *args))
                    bar.update()
            else:
                for r, i, j in todo:
                    kw = row_sets[r][1]
                    second = take(cols, j)
                    if symmetric[r]:
                        second, kw = (None, kw) if i == j else (second, _first_of_pairs(kw))
                    out.add(r, i, j, jitted(take(padded[r], i), second, *args, **kw))
                    bar.update()
            results = out.finish()
        bar.close()
        if check is not None:
            trace_axes, diagonal_axes = axes if axes is not None else ((), ())
            for res, sym in zip(results, symmetric):
                check_kernel(res, trace_axes, diagonal_axes, symmetric=sym and axes is not None, action=check)
        return results

    def batched(x1, x2=None, *args, **kwargs):
        if x2 is None:
            return compute(x1, [(None, kwargs)], args)[0]
        return compute(x2, [(x1, kwargs)], args)[0]

    def train_test(x_train, x_other, *args, **kwargs):
        kw_tt, kw_ot = {}, {}
        for k, v in kwargs.items():
            pair = k != "rng" and isinstance(v, tuple) and len(v) == 2
            kw_tt[k], kw_ot[k] = (v[0], (v[1], v[0])) if pair else (v, v)
        k_tt, k_ot = compute(x_train, [(None, kw_tt), (x_other, kw_ot)], args)
        return k_tt, k_ot

    batched.train_test = train_test
    return batched

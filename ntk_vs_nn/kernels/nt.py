"""neural-tangents beside our own kernels: its empirical NTK, a cross-check of ours (`kernels.api`).

neural-tangents 0.6.5 is optional (``make install-nt``) and imports only through the compatibility
layer of `ntk_vs_nn.kernels.nt_compat`, on which ``JACOBIAN_CONTRACTION`` and ``NTK_VECTOR_PRODUCTS``
work; `nt_empirical_ntk_fn` refuses ``STRUCTURED_DERIVATIVES`` and ``AUTO`` (they use jax internals
that changed). Its infinite-width kernels are in `ntk_vs_nn.kernels.infinite`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ntk_vs_nn.config import UserError
from ntk_vs_nn.engine.batching import pad_rows
from ntk_vs_nn.kernels.nt_compat import import_neural_tangents

_IMPL_NAMES = {"jacobian_contraction": "JACOBIAN_CONTRACTION", "ntk_vector_products": "NTK_VECTOR_PRODUCTS"}


def nt_empirical_ntk_fn(f: Callable, trace_axes=(-1,), implementation="jacobian_contraction", vmap_axes=0) -> Callable:
    """neural-tangents' empirical NTK of ``f(params, x, **kw)``, jitted; a thin wrapper.

    Args:
      f: ``f(params, x, **kwargs) -> (B, k)``.
      trace_axes: ``()`` full (n1, n2, k, k); ``(-1,)`` the mean of the k diagonal entries (n1, n2).
      implementation: ``"jacobian_contraction"`` / ``"ntk_vector_products"`` (our names) or the
        corresponding ``nt.NtkImplementation``; STRUCTURED_DERIVATIVES and AUTO are refused (they
        use jax internals that changed after jax 0.4).
      vmap_axes: neural-tangents' ``vmap_axes``. Default 0: per-example Jacobians, right for our
        nets (no BatchNorm: examples are independent) and far cheaper; None (neural-tangents' own
        default) differentiates the batch as a whole: B x k VJPs through all B examples at once.

    Returns:
      ``fn(x1, x2 | None, params, **kwargs) -> jax.Array``, as ``nt.empirical_ntk_fn``.
    """
    import jax

    nt = import_neural_tangents()
    impl = implementation
    if isinstance(impl, str):
        if impl.lower() not in _IMPL_NAMES:
            raise UserError(f"unknown implementation {impl!r}; valid: {', '.join(_IMPL_NAMES)}")
        impl = getattr(nt.NtkImplementation, _IMPL_NAMES[impl.lower()])
    if impl not in (nt.NtkImplementation.JACOBIAN_CONTRACTION, nt.NtkImplementation.NTK_VECTOR_PRODUCTS):
        raise UserError(
            f"neural-tangents implementation {impl!r} is not supported here: only JACOBIAN_CONTRACTION "
            "and NTK_VECTOR_PRODUCTS work on this jax (STRUCTURED_DERIVATIVES and AUTO need jax <= 0.4 internals)"
        )
    return jax.jit(nt.empirical_ntk_fn(f, trace_axes=tuple(trace_axes), vmap_axes=vmap_axes, implementation=impl))


def nt_train_test(fn: Callable, x_train, x_other, params, tile_size: int = 256):
    """``(fn(x_train, None), fn(x_other, x_train))`` of an `nt_empirical_ntk_fn` kernel, computed by
    neural-tangents' ``nt.batch`` in (tile_size x tile_size) blocks copied to the host, so memory
    stays at one block's Jacobians (the whole training set in one call needed ~4 GB for ResNet-10-1
    on 3,600 MNIST-1D inputs). Inputs are padded to a multiple of the tile (copies of the last row,
    cropped from the result). Returns host (numpy) arrays."""
    nt = import_neural_tangents()
    x_train, x_other = np.asarray(x_train), np.asarray(x_other)
    n, m = len(x_train), len(x_other)
    b = max(1, min(int(tile_size), n))
    batched = nt.batch(fn, batch_size=b, device_count=0, store_on_device=False)
    xt = pad_rows(x_train, b)
    k_tt = np.asarray(batched(xt, None, params))[:n, :n]
    k_ot = np.asarray(batched(pad_rows(x_other, b), xt, params))[:m, :n] if m else np.zeros((0, n) + k_tt.shape[2:])
    return k_tt, k_ot

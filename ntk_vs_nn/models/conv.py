"""Convolution as a matrix product: ``run.conv=matmul`` (``auto``: on a CPU for vmapped members, and
for 2-D nets where the CPU has no AVX-512).

`matmul_conv` has `jax.lax.conv_general_dilated`'s signature (Flax's ``nn.Conv`` takes it as its
``conv_general_dilated``) and computes the same convolution as one matrix product of shifted input
windows and the reshaped kernel: for each kernel offset, a strided slice of the padded input; the
slices side by side on the channel axis, ``(B, *out, K*C)``; times the kernel as ``(K*C, O)``. Under
`jax.vmap` over members the product is one batched ``dot_general`` (a member batch axis), not the
grouped convolution vmapped ``conv_general_dilated`` becomes. Forward and backward are jax's
derivatives of slices, a concatenation and a dot.

Whether it is faster is measured, not assumed (``make bench``, this project's AVX2 CPU): 10 vmapped
1-D ResNet-10-1 members trained in 0.75x the time of the grouped convolutions (10.29 vs 13.63 s,
benchmarks/ensemble_members.py), the 2-D ResNet-10-1 at 1.52x the images/s of XLA's convolution
(322 vs 212, benchmarks/peer_pytorch.py); but XLA's convolution stayed faster for 1-D networks one by
one or unrolled (unrolled 7.29 vs 5.72 s); on the AVX-512 CPU of later sessions XLA's convolution is
also 1.1-1.9x faster for every 2-D net one by one (benchmarks/conv_choice.py). So ``run.conv=auto``
picks ``matmul`` on a CPU for vmapped members, and for 2-D nets only on a CPU without AVX-512
(`families.resolve_conv`). It changes rounding, not the model: like
``run.members`` it is outside the config hash. Equal to
``lax.conv_general_dilated`` in float64 for 1-D and 2-D, strides, padding and kernel dilation
(tests/models/test_models.py).
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
from jax import lax


def matmul_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """``lax.conv_general_dilated`` for channels-last inputs ``(B, *spatial, C)`` and kernels
    ``(*window, C, O)`` (Flax's layout), any number of spatial axes, as one matrix product.

    Supported: strides, padding (``"SAME"``, ``"VALID"`` or explicit pairs), kernel dilation. Not:
    input dilation, feature or batch groups (a ValueError: use ``run.conv=xla``)."""
    nd = lhs.ndim - 2
    if dimension_numbers is not None:
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        channels_last = lax.ConvDimensionNumbers((0, nd + 1, *range(1, nd + 1)), (nd + 1, nd, *range(nd)),
                                                 (0, nd + 1, *range(1, nd + 1)))  # fmt: skip
        if dn != channels_last:
            raise ValueError(f"matmul_conv needs channels-last inputs and (*window, C, O) kernels, got {dn}")
    if (lhs_dilation and any(d != 1 for d in lhs_dilation)) or feature_group_count != 1 or batch_group_count != 1:
        raise ValueError("matmul_conv: no input dilation or grouped convolutions (use run.conv=xla)")
    window, (c_in, c_out) = rhs.shape[:nd], rhs.shape[nd:]
    dilation = tuple(rhs_dilation or (1,) * nd)
    strides = tuple(window_strides)
    effective = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:-1], effective, strides, padding)
    x = jnp.pad(lhs, ((0, 0), *[tuple(p) for p in padding], (0, 0)))
    out = [(n - e) // s + 1 for n, e, s in zip(x.shape[1:-1], effective, strides)]
    cols = []
    for offset in itertools.product(*(range(k) for k in window)):  # the kernel's row-major order
        start = [0, *(o * d for o, d in zip(offset, dilation)), 0]
        limit = [x.shape[0], *(st + (n - 1) * s + 1 for st, n, s in zip(start[1:], out, strides)), c_in]
        cols.append(lax.slice(x, start, limit, (1, *strides, 1)))
    patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
    kernel = rhs.reshape(-1, c_out)
    return lax.dot_general(
        patches, kernel, (((patches.ndim - 1,), (0,)), ((), ())), precision=precision,
        preferred_element_type=preferred_element_type,
    )  # fmt: skip

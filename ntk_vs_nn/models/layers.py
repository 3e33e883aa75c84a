"""The parts every built-in network of `ntk_vs_nn.models` is made of: the normalisation `Norm`, SAME
convolutions and Dense layers (plain, or BatchEnsemble ones for ``BE<M>-<net>``), the pooled head and
`_Net`, the fields and input/output handling every network shares.

Normalisation is a deliberate choice: ``layer`` (default: GroupNorm with one group, i.e. LayerNorm
over positions and channels of each example), ``group`` (GroupNorm, ``model.groups`` groups) or
``none``. The default was measured: on the 2-core CPU a ResNet-10-1 epoch on MNIST-1D took 0.10 s
(nn) / 0.13 s (ntk) with one group against 0.135 s / 0.186 s with eight, and trained as well.
BatchNorm is not offered: it couples the examples of a batch, so a member's output on x
depends on the rest of the batch; the linearisation f(W0) + J(W0)(W - W0) then has no single
feature map, and training members in one vmapped or unrolled program would need per-member batch
statistics. Group/LayerNorm have neither problem and keeps deep nets (and KD at tau^2 = 16) stable.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ntk_vs_nn.models.batch_ensemble import BEConv, BEDense, ensemble_logits, tile_members
from ntk_vs_nn.models.conv import matmul_conv


class Norm(nn.Module):
    kind: str = "layer"
    groups: int = 8
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        if self.kind == "none":
            return x
        channels = x.shape[-1]
        groups = 1 if self.kind == "layer" else math.gcd(self.groups, channels)
        return nn.GroupNorm(num_groups=groups, dtype=self.dtype)(x)


CONVS = {"xla": lax.conv_general_dilated, "matmul": matmul_conv}  # run.conv: how a convolution is computed


def _conv(features, ndim, stride=1, kernel=3, name=None, dtype=None, conv="xla", use_bias=False, members=0):
    """A SAME convolution: `nn.Conv`, or with ``members`` > 0 the `BEConv` of that many members."""
    kw = dict(strides=(stride,) * ndim, padding="SAME", use_bias=use_bias, name=name, dtype=dtype,
              conv_general_dilated=CONVS[conv])  # fmt: skip
    if members:
        return BEConv(features, (kernel,) * ndim, members, **kw)
    return nn.Conv(features, (kernel,) * ndim, **kw)


def _cast(x, dtype):
    return x if dtype is None else x.astype(dtype)


def _dense(features, name=None, dtype=None, members=0):
    """`nn.Dense`, or with ``members`` > 0 the `BEDense` of that many members."""
    if members:
        return BEDense(features, members, name=name, dtype=dtype)
    return nn.Dense(features, name=name, dtype=dtype)


def _head(h, num_classes, dtype=None, members=0):
    """The linear head on (B, features); with a compute dtype (bfloat16) the logits come back in
    float32, so losses, softmax and metrics stay in full precision."""
    out = _dense(num_classes, name="head", dtype=dtype, members=members)(h)
    return out if dtype is None else out.astype(jnp.float32)


def _pool_head(h, num_classes, dtype=None, members=0):
    """Global average pool and the linear head (`_head`: float32 logits)."""
    return _head(jnp.mean(h, axis=tuple(range(1, h.ndim - 1))), num_classes, dtype, members)


class _Net(nn.Module):
    """The fields every built-in network has (constructed by keyword: `build_model`).

    ``members`` > 0 makes it a BatchEnsemble of that many members (``BE<M>-<net>``): every Dense and
    Conv is a `BEDense` / `BEConv`, ``__call__(x, per_member=False)`` tiles x (B, ...) to the
    member-major (M*B, ...) batch and returns the ensemble's logits (B, k) (`ensemble_logits`: the log
    of the mean softmax), or with ``per_member=True`` each member's logits (M, B, k). Only BE nets
    take ``per_member=True`` (a plain net raises a ValueError); 0 is the plain net, its layers and
    param tree unchanged."""

    num_classes: int = 10
    ndim: int = 2  # spatial axes of the input: 1 (signals) or 2 (images)
    widen: float = 1  # an int, except for the fractional widths of BasicResNet (ResNet-18-0.25)
    norm: str = "layer"
    groups: int = 8
    dtype: Any = None  # compute dtype: None = that of inputs and params; bfloat16 on GPUs
    conv: str = "xla"  # xla (lax.conv_general_dilated) | matmul (models/conv.py)
    members: int = 0  # BatchEnsemble members (BE<M>-<net>); 0 = the plain net

    def _tile(self, x, per_member):
        """The input as the batch the layers see: x itself, or M copies member-major (a BE net)."""
        if not self.members:
            if per_member:
                raise ValueError(f"per_member=True needs a BatchEnsemble net (members > 0), not {type(self).__name__}")
            return x
        return tile_members(x, self.members)

    def _output(self, z, per_member):
        """The logits (B, k) of a plain net; a BE net's (M*B, k) as (M, B, k) or the ensemble's (B, k)."""
        if not self.members:
            return z
        z = z.reshape(self.members, -1, z.shape[-1])
        return z if per_member else ensemble_logits(z)

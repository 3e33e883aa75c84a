"""Flax networks built from names, in 1-D or 2-D depending on the data.

Names (as in the paper):
  ``ResNet-d-w``   wide ResNet (pre-activation), depth d = 6n+4, widths 16w/32w/64w; ``ResNetd-w``
                   (the paper's kernel-table spelling) is accepted too.
  ``ResNet-34``    the CIFAR variant of ResNet-34 (basic blocks 3,4,6,3; widths 64/128/256/512);
  ``ResNet-34-w``  the same with widths multiplied by w.
  ``ResNet-18``    the CIFAR variant of ResNet-18: 3x3 stem (stride 1, no max-pool), norm, relu,
                   post-activation basic blocks 2,2,2,2 of widths 64/128/256/512 (stride 2 at the
                   first block of stages 2-4, 1x1 projection + norm when the shape changes), global
                   average pool, dense head (`BasicResNet`, as ResNet-34);
  ``ResNet-18-w``  the same with widths 64w/128w/256w/512w. For ResNet-18 and ResNet-34, w may be a
                   fraction for CPU-sized nets (``ResNet-18-0.25``: 16/32/64/128): 64w must be a whole
                   number >= 1 (w a multiple of 1/64), so every stage doubles the channels exactly.
  ``ResNet-d``     d = 6n+2 (ResNet-20, ResNet-32, ResNet-56): He et al.'s CIFAR ResNet, a 3x3 stem of 16
                   channels and three stages of n basic blocks of 16/32/64 channels (`BasicResNet` with
                   ``base=16``; projection shortcuts). ResNet-32 on CIFAR-10: 0.47 M parameters.
  ``SimpleCNN-d-w`` a plain CNN of d layers: d-1 3-wide convolutions in three stages of widths
                   16w/32w/64w (stride 2 at each new stage) and a dense head.
  ``PlainCNN-d-w`` the CNN a practitioner writes for (Fashion-)MNIST (`PlainCNN`): d stages of
                   [3-wide conv with bias, 32w*2^i channels; relu; 2x2 max-pool], flatten,
                   Dense(128w) + relu, dense head. Meant for ``model.norm=none``. w may be a
                   multiple of 1/32 (``PlainCNN-2-0.5``: 16/32 channels, Dense(64)).
  ``BE<M>-<net>``  a BatchEnsemble (Wen et al. 2020) of M >= 1 members of any net above, e.g.
                   ``BE4-ResNet-18-0.125``, ``BE4-PlainCNN-2-1``: the same architecture with every Dense
                   and Conv (head included) a `BEDense` / `BEConv` of M members (one shared weight,
                   per-member rank-1 fast weights and biases, models/batch_ensemble.py); norms are
                   shared. The net tiles its (B, ...) input to the member-major (M*B, ...) batch;
                   ``module.apply(v, x)`` returns the ensemble's prediction as logits (B, k), the log
                   of the mean over members of the softmax, ``module.apply(v, x, per_member=True)``
                   each member's logits (M, B, k). ``module.members`` is M (0 for a plain net, whose
                   layers and param tree are those of the plain name).

Normalisation is a deliberate choice: ``layer`` (default: GroupNorm with one group, i.e. LayerNorm
over positions and channels of each example), ``group`` (GroupNorm, ``model.groups`` groups) or
``none``. The default was measured: on the 2-core CPU a ResNet-10-1 epoch on MNIST-1D took 0.10 s
(nn) / 0.13 s (ntk) with one group against 0.135 s / 0.186 s with eight, and trained as well.
BatchNorm is not offered: it couples the examples of a batch, so a member's output on x
depends on the rest of the batch; the linearisation f(W0) + J(W0)(W - W0) then has no single
feature map, and training members in one vmapped or unrolled program would need per-member batch
statistics. Group/LayerNorm have neither problem and keeps deep nets (and KD at tau^2 = 16) stable.

Every network ends in a Dense layer named ``head`` (a `BEDense` in a BE net): the gp family trains only
that layer.

Example:
    >>> module = build_model("ResNet-10-1", num_classes=10, ndim=1)
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ntk_vs_nn.config import UserError
from ntk_vs_nn.models.batch_ensemble import (
    BEConv,
    BEDense,
    ensemble_logits,
    fast_weight_labels,  # noqa: F401 (re-exported: the optimiser's fast/slow labels)
    has_fast_weights,  # noqa: F401 (re-exported)
    tile_members,
)
from ntk_vs_nn.models.conv import matmul_conv

VALID_FORMS = (
    "ResNet-d-w (d = 6n+4, e.g. ResNet-10-1, ResNet-28-10), ResNet-34, ResNet-34-w, "
    "ResNet-18, ResNet-18-w (w may be a fraction with 64w a whole number, e.g. ResNet-18-0.25), "
    "ResNet-d (d = 6n+2, He et al.'s CIFAR ResNet, e.g. ResNet-32), "
    "SimpleCNN-d-w (d >= 2, e.g. SimpleCNN-10-3), PlainCNN-d-w (d >= 1, w a multiple of 1/32, e.g. PlainCNN-2-1, "
    "PlainCNN-2-0.5), "
    "BE<M>-<net> (a BatchEnsemble of M >= 1 members of any of these, e.g. BE4-ResNet-18-0.125)"
)


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


class _Block(nn.Module):
    """The fields of a residual block (constructed positionally)."""

    features: int
    stride: int
    ndim: int
    norm: str
    groups: int
    dtype: Any = None
    conv: str = "xla"
    members: int = 0  # > 0: BatchEnsemble convolutions of that many members (member-major batches)


class PreActBlock(_Block):
    """Wide-ResNet block: norm-relu-conv-norm-relu-conv, 1x1 projection when the shape changes."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = _conv(
                self.features, self.ndim, self.stride, kernel=1, dtype=self.dtype, conv=self.conv, members=self.members
            )(h)
        h = _conv(self.features, self.ndim, self.stride, dtype=self.dtype, conv=self.conv, members=self.members)(h)
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(h))
        h = _conv(self.features, self.ndim, dtype=self.dtype, conv=self.conv, members=self.members)(h)
        return h + shortcut


class BasicBlock(_Block):
    """ResNet-18/34 block (post-activation): conv-norm-relu-conv-norm, + shortcut, relu."""

    @nn.compact
    def __call__(self, x):
        h = _conv(self.features, self.ndim, self.stride, dtype=self.dtype, conv=self.conv, members=self.members)(x)
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(h))
        h = _conv(self.features, self.ndim, dtype=self.dtype, conv=self.conv, members=self.members)(h)
        h = Norm(self.norm, self.groups, self.dtype)(h)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = _conv(
                self.features, self.ndim, self.stride, kernel=1, dtype=self.dtype, conv=self.conv, members=self.members
            )(x)
            shortcut = Norm(self.norm, self.groups, self.dtype)(shortcut)
        return nn.relu(h + shortcut)


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


class WideResNet(_Net):
    depth: int = 16  # 6n + 4

    @nn.compact
    def __call__(self, x, per_member: bool = False):
        n, mem = (self.depth - 4) // 6, self.members
        stem = _conv(16, self.ndim, dtype=self.dtype, conv=self.conv, members=mem)
        h = stem(self._tile(_cast(x, self.dtype), per_member))
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                args = (width * self.widen, stride, self.ndim, self.norm, self.groups, self.dtype, self.conv, mem)
                h = PreActBlock(*args)(h)
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(h))
        return self._output(_pool_head(h, self.num_classes, self.dtype, mem), per_member)


def _basic_width(widen, stage, base=64):
    """Channels of stage ``stage`` of a BasicResNet: base·w·2^stage (base·w is a whole number)."""
    return round(base * widen * 2**stage)


class BasicResNet(_Net):
    """The CIFAR ResNet-18 / ResNet-34 (``stages`` (2, 2, 2, 2) / (3, 4, 6, 3)): 3x3 stem of 64w
    channels (stride 1, no max-pool), norm, relu, post-activation `BasicBlock` stages of
    64w/128w/256w/512w channels (stride 2 at the first block of stages 2-4), global pool, head.
    ``base=16`` with three stages of n blocks: He et al.'s CIFAR ResNet-(6n+2) (ResNet-20, -32, -56:
    16/32/64 channels), with projection shortcuts (1x1 conv + norm) where the shape changes."""

    stages: Sequence[int] = (3, 4, 6, 3)
    base: int = 64  # channels of the stem and the first stage (before the width factor)

    @nn.compact
    def __call__(self, x, per_member: bool = False):
        mem = self.members
        stem = _conv(_basic_width(self.widen, 0, self.base), self.ndim, dtype=self.dtype, conv=self.conv, members=mem)
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(stem(self._tile(_cast(x, self.dtype), per_member))))
        for stage, blocks in enumerate(self.stages):
            width = _basic_width(self.widen, stage, self.base)
            for i in range(blocks):
                stride = 2 if (stage > 0 and i == 0) else 1
                h = BasicBlock(width, stride, self.ndim, self.norm, self.groups, self.dtype, self.conv, mem)(h)
        return self._output(_pool_head(h, self.num_classes, self.dtype, mem), per_member)


ResNet34 = BasicResNet  # its former name (the default stages are ResNet-34's)
BASIC_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # ResNet-18 / ResNet-34 basic blocks per stage


class SimpleCNN(_Net):
    depth: int = 4  # convolutions + the head

    @nn.compact
    def __call__(self, x, per_member: bool = False):
        convs, mem = self.depth - 1, self.members
        h = self._tile(_cast(x, self.dtype), per_member)
        for i in range(convs):
            stage = min(3 * i // convs, 2)
            first_of_stage = i > 0 and stage != min(3 * (i - 1) // convs, 2)
            stride = 2 if first_of_stage else 1
            h = _conv(16 * self.widen * 2**stage, self.ndim, stride, dtype=self.dtype, conv=self.conv, members=mem)(h)
            h = nn.relu(Norm(self.norm, self.groups, self.dtype)(h))
        return self._output(_pool_head(h, self.num_classes, self.dtype, mem), per_member)


def max_pool2(h):
    """2 (x 2) max-pooling, stride 2, ``VALID`` (an odd last position is dropped), over every spatial
    axis of a channels-last batch: a reshape and a max, the forward of ``flax.linen.max_pool`` with
    that window. Its gradient is a comparison, not XLA's select-and-scatter: a PlainCNN-2-1 training
    step on 28x28 images took 148 ms against 266 ms on the 2-core CPU (results/fmnist-sizing/)."""
    spatial = h.shape[1:-1]
    h = h[(slice(None), *(slice(0, s // 2 * 2) for s in spatial))]
    pairs = [d for s in spatial for d in (s // 2, 2)]
    h = h.reshape(h.shape[0], *pairs, h.shape[-1])
    return h.max(axis=tuple(2 + 2 * i for i in range(len(spatial))))


class PlainCNN(_Net):
    """The plain CNN a practitioner writes for (Fashion-)MNIST, ``PlainCNN-d-w``: d stages of
    [3x3 (3 in 1-D) SAME convolution *with bias*, 32w·2^i channels; relu; 2x2 (2 in 1-D) max-pool,
    stride 2], then flatten, Dense(128w) + relu and the ``head`` Dense. PlainCNN-2-1 on 28x28x1
    images with 10 classes: 421,642 parameters (320 + 18,496 + 7·7·64·128 + 128 + 1,290).

    Meant to be used with ``model.norm=none``; with ``layer``/``group`` a `Norm` follows every
    convolution (before its relu). The pooling is ``VALID`` (floor: 7 -> 3), as Keras'
    ``MaxPooling2D`` and PyTorch's ``MaxPool2d`` default, so the counts are those of the usual net;
    a stage whose input has a spatial axis shorter than 2 (it would vanish) is a UserError naming
    the most stages that input allows (e.g. 5 for MNIST-1D's 40 positions: 40/20/10/5/2 -> 1).
    Not expressible as a neural-tangents infinite-width kernel (max-pooling, flatten)."""

    depth: int = 2  # conv stages

    @nn.compact
    def __call__(self, x, per_member: bool = False):
        h, mem = self._tile(_cast(x, self.dtype), per_member), self.members
        for i in range(self.depth):
            spatial = h.shape[1:-1]
            if min(spatial) < 2:
                most = max(min(x.shape[1:-1]).bit_length() - 1, 0)  # floor(log2): halvings to a size >= 1
                prefix = f"BE{mem}-" if mem else ""
                raise UserError(
                    f"model {prefix}PlainCNN-{self.depth}-{self.widen}: stage {i + 1} would max-pool spatial shape "
                    f"{tuple(spatial)} to nothing; inputs of {tuple(x.shape[1:-1])} allow at most {most} stages"
                )
            width = round(32 * self.widen * 2**i)
            h = _conv(width, self.ndim, dtype=self.dtype, conv=self.conv, use_bias=True, members=mem)(h)
            if self.norm != "none":
                h = Norm(self.norm, self.groups, self.dtype)(h)
            h = nn.relu(h)
            h = max_pool2(h)
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(_dense(round(128 * self.widen), name="hidden", dtype=self.dtype, members=mem)(h))
        return self._output(_head(h, self.num_classes, self.dtype, mem), per_member)


def split_members(name: str) -> tuple[int, str]:
    """``(members, base name)`` of a model name: ``BE4-ResNet-10-1`` -> ``(4, "ResNet-10-1")``, a plain
    name -> ``(0, name)``. A BE name with M < 1 is a UserError; the base is not validated here
    (`parse_model_name` does)."""
    m = re.fullmatch(r"BE(\d+)-(.+)", name)
    if not m:
        return 0, name
    if int(m.group(1)) < 1:
        raise UserError(f"model {name!r}: a BatchEnsemble needs M >= 1 members; valid forms: {VALID_FORMS}")
    return int(m.group(1)), m.group(2)


def parse_model_name(name: str) -> tuple[str, int, int | float]:
    """``(kind, depth, widen)`` from a model name, or a UserError listing the valid forms.

    kind: ``wrn`` | ``resnet18`` | ``resnet34`` | ``simplecnn`` | ``plaincnn``. widen is an int, or
    a float for the fractional widths of ResNet-18-w / ResNet-34-w (``ResNet-18-0.25`` -> 0.25;
    ``ResNet-18-2`` -> 2). A BatchEnsemble name ``BE<M>-<net>`` gives its base net's triple (its
    members: `split_members`)."""
    members, base = split_members(name)
    if members:
        try:
            return _parse_plain_name(base)
        except UserError as err:
            raise UserError(f"model {name!r}: {err}") from None
    return _parse_plain_name(name)


def _parse_plain_name(name: str) -> tuple[str, int, int | float]:
    """`parse_model_name` of a name without the ``BE<M>-`` prefix."""
    m = re.fullmatch(r"ResNet-?(\d+)(?:-(\d+(?:\.\d+)?))?", name)
    if m:
        depth, w = int(m.group(1)), m.group(2)
        if depth in BASIC_STAGES and (w is None or name.startswith(f"ResNet-{depth}-")):
            widen = 1 if w is None else float(w)
            base = 64 * widen
            if abs(base - round(base)) > 1e-9 or round(base) < 1:
                raise UserError(
                    f"model {name!r}: widths 64w·2^stage must be whole numbers >= 1, got 64·{w} = {base:g} "
                    f"(w must be a positive multiple of 1/64, e.g. 0.25 or 0.125); valid forms: {VALID_FORMS}"
                )
            return f"resnet{depth}", depth, int(widen) if float(widen).is_integer() else widen
        if w is not None and w.isdigit() and int(w) >= 1 and depth >= 10 and (depth - 4) % 6 == 0:
            return "wrn", depth, int(w)
        if w is None and depth >= 8 and (depth - 2) % 6 == 0:  # He et al.'s CIFAR ResNet-(6n+2)
            return "resnet_cifar", depth, 1
    m = re.fullmatch(r"SimpleCNN-(\d+)-(\d+)", name)
    if m and int(m.group(1)) >= 2 and int(m.group(2)) >= 1:
        return "simplecnn", int(m.group(1)), int(m.group(2))
    m = re.fullmatch(r"PlainCNN-(\d+)-(\d+(?:\.\d+)?)", name)
    if m and int(m.group(1)) >= 1 and float(m.group(2)) > 0:
        w = float(m.group(2))
        if abs(32 * w - round(32 * w)) > 1e-9:
            raise UserError(
                f"model {name!r}: 32w channels must be a whole number (w a multiple of 1/32, e.g. 0.5); "
                f"valid forms: {VALID_FORMS}"
            )
        return "plaincnn", int(m.group(1)), int(w) if w.is_integer() else w
    raise UserError(f"unknown model {name!r}; valid forms: {VALID_FORMS}")


DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # float32: no cast (float64 tests stay float64)


def build_model(
    name: str, num_classes: int, ndim: int, norm="layer", groups=8, dtype="float32", conv="xla"
) -> nn.Module:
    """The Flax module for ``name`` on inputs with ``ndim`` spatial axes (1 or 2); ``dtype``: the
    compute dtype (``float32``, or ``bfloat16``: mixed precision, params and logits stay float32).
    A ``BE<M>-<net>`` name gives the BatchEnsemble of M members (``module.members``; 0 for a plain net)."""
    kind, depth, widen = parse_model_name(name)
    if dtype not in DTYPES:
        raise UserError(f"model dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    dt = DTYPES[dtype]
    if ndim not in (1, 2):
        raise UserError(f"model {name}: inputs must have 1 or 2 spatial axes, got {ndim}")
    if conv not in CONVS:
        raise UserError(f"run.conv must be one of {', '.join(CONVS)}; got {conv!r}")
    kw = dict(num_classes=num_classes, ndim=ndim, widen=widen, norm=norm, groups=groups, dtype=dt, conv=conv)
    kw.update(members=split_members(name)[0])  # 0: the plain net
    if kind in ("resnet18", "resnet34"):
        return BasicResNet(stages=BASIC_STAGES[depth], **kw)
    if kind == "resnet_cifar":
        return BasicResNet(stages=((depth - 2) // 6,) * 3, base=16, **kw)
    return {"wrn": WideResNet, "simplecnn": SimpleCNN, "plaincnn": PlainCNN}[kind](depth=depth, **kw)

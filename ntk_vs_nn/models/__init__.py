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
  ``SimpleCNN-d-w`` a plain CNN of d layers: d-1 3-wide convolutions in three stages of widths
                   16w/32w/64w (stride 2 at each new stage) and a dense head.
  ``PlainCNN-d-w`` the CNN a practitioner writes for (Fashion-)MNIST (`PlainCNN`): d stages of
                   [3-wide conv with bias, 32w*2^i channels; relu; 2x2 max-pool], flatten,
                   Dense(128w) + relu, dense head. Meant for ``model.norm=none``.

Normalisation is a deliberate choice: ``layer`` (default: GroupNorm with one group, i.e. LayerNorm
over positions and channels of each example), ``group`` (GroupNorm, ``model.groups`` groups) or
``none``. The default was measured: on the 2-core CPU a ResNet-10-1 epoch on MNIST-1D took 0.10 s
(nn) / 0.13 s (ntk) with one group against 0.135 s / 0.186 s with eight, and trained as well.
BatchNorm is not offered: it couples the examples of a batch, so a member's output on x
depends on the rest of the batch; the linearisation f(W0) + J(W0)(W - W0) then has no single
feature map, and training members in one vmapped or unrolled program would need per-member batch
statistics. Group/LayerNorm have neither problem and keeps deep nets (and KD at tau^2 = 16) stable.

Every network ends in a Dense layer named ``head``: the gp family trains only that layer.

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
from ntk_vs_nn.models.conv import matmul_conv

VALID_FORMS = (
    "ResNet-d-w (d = 6n+4, e.g. ResNet-10-1, ResNet-28-10), ResNet-34, ResNet-34-w, "
    "ResNet-18, ResNet-18-w (w may be a fraction with 64w a whole number, e.g. ResNet-18-0.25), "
    "SimpleCNN-d-w (d >= 2, e.g. SimpleCNN-10-3), PlainCNN-d-w (d >= 1, e.g. PlainCNN-2-1)"
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


def _conv(features, ndim, stride=1, kernel=3, name=None, dtype=None, conv="xla", use_bias=False):
    return nn.Conv(
        features,
        (kernel,) * ndim,
        strides=(stride,) * ndim,
        padding="SAME",
        use_bias=use_bias,
        name=name,
        dtype=dtype,
        conv_general_dilated=CONVS[conv],
    )


class _Block(nn.Module):
    """The fields of a residual block (constructed positionally)."""

    features: int
    stride: int
    ndim: int
    norm: str
    groups: int
    dtype: Any = None
    conv: str = "xla"


class PreActBlock(_Block):
    """Wide-ResNet block: norm-relu-conv-norm-relu-conv, 1x1 projection when the shape changes."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, self.ndim, self.stride, kernel=1, dtype=self.dtype, conv=self.conv)(h)
        h = _conv(self.features, self.ndim, self.stride, dtype=self.dtype, conv=self.conv)(h)
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(h))
        h = _conv(self.features, self.ndim, dtype=self.dtype, conv=self.conv)(h)
        return h + shortcut


class BasicBlock(_Block):
    """ResNet-18/34 block (post-activation): conv-norm-relu-conv-norm, + shortcut, relu."""

    @nn.compact
    def __call__(self, x):
        h = _conv(self.features, self.ndim, self.stride, dtype=self.dtype, conv=self.conv)(x)
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(h))
        h = _conv(self.features, self.ndim, dtype=self.dtype, conv=self.conv)(h)
        h = Norm(self.norm, self.groups, self.dtype)(h)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = _conv(self.features, self.ndim, self.stride, kernel=1, dtype=self.dtype, conv=self.conv)(x)
            shortcut = Norm(self.norm, self.groups, self.dtype)(shortcut)
        return nn.relu(h + shortcut)


def _cast(x, dtype):
    return x if dtype is None else x.astype(dtype)


def _head(h, num_classes, dtype=None):
    """The linear head on (B, features); with a compute dtype (bfloat16) the logits come back in
    float32, so losses, softmax and metrics stay in full precision."""
    out = nn.Dense(num_classes, name="head", dtype=dtype)(h)
    return out if dtype is None else out.astype(jnp.float32)


def _pool_head(h, num_classes, dtype=None):
    """Global average pool and the linear head (`_head`: float32 logits)."""
    return _head(jnp.mean(h, axis=tuple(range(1, h.ndim - 1))), num_classes, dtype)


class _Net(nn.Module):
    """The fields every built-in network has (constructed by keyword: `build_model`)."""

    num_classes: int = 10
    ndim: int = 2  # spatial axes of the input: 1 (signals) or 2 (images)
    widen: float = 1  # an int, except for the fractional widths of BasicResNet (ResNet-18-0.25)
    norm: str = "layer"
    groups: int = 8
    dtype: Any = None  # compute dtype: None = that of inputs and params; bfloat16 on GPUs
    conv: str = "xla"  # xla (lax.conv_general_dilated) | matmul (models/conv.py)


class WideResNet(_Net):
    depth: int = 16  # 6n + 4

    @nn.compact
    def __call__(self, x):
        n = (self.depth - 4) // 6
        h = _conv(16, self.ndim, dtype=self.dtype, conv=self.conv)(_cast(x, self.dtype))
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                h = PreActBlock(width * self.widen, stride, self.ndim, self.norm, self.groups, self.dtype, self.conv)(h)
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(h))
        return _pool_head(h, self.num_classes, self.dtype)


def _basic_width(widen, stage):
    """Channels of stage ``stage`` (0-3) of a BasicResNet: 64·w·2^stage (64w is a whole number)."""
    return round(64 * widen * 2**stage)


class BasicResNet(_Net):
    """The CIFAR ResNet-18 / ResNet-34 (``stages`` (2, 2, 2, 2) / (3, 4, 6, 3)): 3x3 stem of 64w
    channels (stride 1, no max-pool), norm, relu, post-activation `BasicBlock` stages of
    64w/128w/256w/512w channels (stride 2 at the first block of stages 2-4), global pool, head."""

    stages: Sequence[int] = (3, 4, 6, 3)

    @nn.compact
    def __call__(self, x):
        h = _conv(_basic_width(self.widen, 0), self.ndim, dtype=self.dtype, conv=self.conv)(_cast(x, self.dtype))
        h = nn.relu(Norm(self.norm, self.groups, self.dtype)(h))
        for stage, blocks in enumerate(self.stages):
            width = _basic_width(self.widen, stage)
            for i in range(blocks):
                stride = 2 if (stage > 0 and i == 0) else 1
                h = BasicBlock(width, stride, self.ndim, self.norm, self.groups, self.dtype, self.conv)(h)
        return _pool_head(h, self.num_classes, self.dtype)


ResNet34 = BasicResNet  # its former name (the default stages are ResNet-34's)
BASIC_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # ResNet-18 / ResNet-34 basic blocks per stage


class SimpleCNN(_Net):
    depth: int = 4  # convolutions + the head

    @nn.compact
    def __call__(self, x):
        convs = self.depth - 1
        h = _cast(x, self.dtype)
        for i in range(convs):
            stage = min(3 * i // convs, 2)
            first_of_stage = i > 0 and stage != min(3 * (i - 1) // convs, 2)
            stride = 2 if first_of_stage else 1
            h = _conv(16 * self.widen * 2**stage, self.ndim, stride, dtype=self.dtype, conv=self.conv)(h)
            h = nn.relu(Norm(self.norm, self.groups, self.dtype)(h))
        return _pool_head(h, self.num_classes, self.dtype)


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
    def __call__(self, x):
        h = _cast(x, self.dtype)
        for i in range(self.depth):
            spatial = h.shape[1:-1]
            if min(spatial) < 2:
                most = max(min(x.shape[1:-1]).bit_length() - 1, 0)  # floor(log2): halvings to a size >= 1
                raise UserError(
                    f"model PlainCNN-{self.depth}-{self.widen}: stage {i + 1} would max-pool spatial shape "
                    f"{tuple(spatial)} to nothing; inputs of {tuple(x.shape[1:-1])} allow at most {most} stages"
                )
            h = _conv(32 * self.widen * 2**i, self.ndim, dtype=self.dtype, conv=self.conv, use_bias=True)(h)
            if self.norm != "none":
                h = Norm(self.norm, self.groups, self.dtype)(h)
            h = nn.relu(h)
            h = max_pool2(h)
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(nn.Dense(128 * self.widen, name="hidden", dtype=self.dtype)(h))
        return _head(h, self.num_classes, self.dtype)


def parse_model_name(name: str) -> tuple[str, int, int | float]:
    """``(kind, depth, widen)`` from a model name, or a UserError listing the valid forms.

    kind: ``wrn`` | ``resnet18`` | ``resnet34`` | ``simplecnn`` | ``plaincnn``. widen is an int, or
    a float for the fractional widths of ResNet-18-w / ResNet-34-w (``ResNet-18-0.25`` -> 0.25;
    ``ResNet-18-2`` -> 2)."""
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
    m = re.fullmatch(r"SimpleCNN-(\d+)-(\d+)", name)
    if m and int(m.group(1)) >= 2 and int(m.group(2)) >= 1:
        return "simplecnn", int(m.group(1)), int(m.group(2))
    m = re.fullmatch(r"PlainCNN-(\d+)-(\d+)", name)
    if m and int(m.group(1)) >= 1 and int(m.group(2)) >= 1:
        return "plaincnn", int(m.group(1)), int(m.group(2))
    raise UserError(f"unknown model {name!r}; valid forms: {VALID_FORMS}")


DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # float32: no cast (float64 tests stay float64)


def build_model(
    name: str, num_classes: int, ndim: int, norm="layer", groups=8, dtype="float32", conv="xla"
) -> nn.Module:
    """The Flax module for ``name`` on inputs with ``ndim`` spatial axes (1 or 2); ``dtype``: the
    compute dtype (``float32``, or ``bfloat16``: mixed precision, params and logits stay float32)."""
    kind, depth, widen = parse_model_name(name)
    if dtype not in DTYPES:
        raise UserError(f"model dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    dt = DTYPES[dtype]
    if ndim not in (1, 2):
        raise UserError(f"model {name}: inputs must have 1 or 2 spatial axes, got {ndim}")
    if conv not in CONVS:
        raise UserError(f"run.conv must be one of {', '.join(CONVS)}; got {conv!r}")
    kw = dict(num_classes=num_classes, ndim=ndim, widen=widen, norm=norm, groups=groups, dtype=dt, conv=conv)
    if kind in ("resnet18", "resnet34"):
        return BasicResNet(stages=BASIC_STAGES[depth], **kw)
    return {"wrn": WideResNet, "simplecnn": SimpleCNN, "plaincnn": PlainCNN}[kind](depth=depth, **kw)

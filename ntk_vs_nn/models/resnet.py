"""The ResNets of `ntk_vs_nn.models`: the wide pre-activation ResNet (``ResNet-d-w``, `WideResNet` of
`PreActBlock`) and the post-activation CIFAR ResNets (``ResNet-18``, ``ResNet-34``, ``ResNet-d`` with
d = 6n+2: `BasicResNet` of `BasicBlock`); the names are described in the package docstring."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn

from ntk_vs_nn.models.layers import Norm, _cast, _conv, _Net, _pool_head


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

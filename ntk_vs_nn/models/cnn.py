"""The plain CNNs of `ntk_vs_nn.models`: ``SimpleCNN-d-w`` (`SimpleCNN`, strided convolutions, pooled
head) and ``PlainCNN-d-w`` (`PlainCNN`, convolutions with max-pooling, flatten, hidden Dense)."""

from __future__ import annotations

import flax.linen as nn

from ntk_vs_nn.config import UserError
from ntk_vs_nn.models.layers import Norm, _cast, _conv, _dense, _head, _Net, _pool_head


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

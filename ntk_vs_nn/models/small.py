"""The small networks of the theory experiments: Figure 3's teachers and students (`GaussNet`) and
Figure 6's pretrained backbone (`Backbone`); `engine.batching.apply_rows` applies them in chunks."""

from __future__ import annotations

import flax.linen as nn


class GaussNet(nn.Module):
    """A Figure-3 teacher or student: ``arch`` in linear | fc2 | fc3 | res3 | conv2 | conv3 | resconv3,
    ``width`` hidden units (fc, res) or channels (conv). x (B, d) -> logits (B, k).

      linear    Dense(k)
      fc2, fc3  fully connected ReLU nets with 1 / 2 hidden layers, then Dense(k)
      res3      h = relu(Dense(x)); h = h + relu(Dense(h)); Dense(k)
      conv*     the same with 1-D convolutions (x as a length-d, 1-channel signal, kernel ``kernel``,
                SAME padding) and a Dense(k) read-out of the flattened map
    """

    arch: str
    width: int
    num_classes: int
    kernel: int = 5

    @nn.compact
    def __call__(self, x):
        if self.arch.startswith(("fc", "res3")):
            h = nn.relu(nn.Dense(self.width)(x))
            if self.arch == "fc3":
                h = nn.relu(nn.Dense(self.width)(h))
            if self.arch == "res3":
                h = h + nn.relu(nn.Dense(self.width)(h))
        elif self.arch != "linear":
            conv = lambda: nn.Conv(self.width, (self.kernel,), padding="SAME")  # noqa: E731
            h = nn.relu(conv()(x[..., None]))
            if self.arch == "conv3":
                h = nn.relu(conv()(h))
            if self.arch == "resconv3":
                h = h + nn.relu(conv()(h))
            h = h.reshape(h.shape[0], -1)
        else:
            h = x
        return nn.Dense(self.num_classes, name="head")(h)


class Backbone(nn.Module):
    """Three conv (3-wide) - GroupNorm(1) - ReLU stages of width, 2 width, 4 width channels (stride 2
    from the second stage), then a Dense head on the flattened last map (``head="flatten"``) or on its
    mean (``"pool"``). ``features(x, stage)`` is the map after a stage. Why flatten: the last map's
    receptive field is 9 pixels, so a pooled head only sees a bag of local patches (measured: 70.7%
    Fashion-MNIST test accuracy after 3 epochs, against students reaching 86% on its map)."""

    width: int
    num_classes: int
    ndim: int
    head_kind: str = "flatten"

    def setup(self):
        self.convs = [
            nn.Conv(self.width * 2**i, (3,) * self.ndim, strides=(1 if i == 0 else 2,) * self.ndim, padding="SAME")
            for i in range(3)
        ]
        self.norms = [nn.GroupNorm(num_groups=1) for _ in range(3)]
        self.head = nn.Dense(self.num_classes)

    def features(self, x, stage: int = 2):
        h = x
        for i in range(stage + 1):
            h = nn.relu(self.norms[i](self.convs[i](h)))
        return h

    def __call__(self, x):
        h = self.features(x, 2)
        if self.head_kind == "pool":
            return self.head(h.mean(axis=tuple(range(1, h.ndim - 1))))
        return self.head(h.reshape(h.shape[0], -1))

"""Infinite-width kernels of our networks by neural-tangents (optional, ``make install-nt``; imported
through the compatibility layer of `ntk_vs_nn.kernels.nt_compat`).

**Infinite-width kernels** (`infinite_kernel_fn`, `infinite_kernels`): the neural-tangents ``stax``
network with the same layers as our Flax model (`ntk_vs_nn.models`), layer for layer:

- convolutions: same filter size, stride, ``SAME`` padding, no bias, W ~ N(0, W_std²/fan_in) with
  W_std = 1 (Flax's default ``lecun_normal``: variance 1/fan_in; that it is a *truncated* normal
  rescaled to that variance does not matter at infinite width, where only the variance enters);
- the head: global average pool, then Dense with W_std = 1 and ``b_std = 0`` (Flax: lecun_normal
  kernel, bias initialised to 0 but trained: it adds nothing to the NNGP and exactly 1 to the
  standard-parameterisation NTK, as in our nets);
- ReLU (arc-cosine kernel, exact), FanOut/FanInSum for residual branches, identity or 1x1-conv
  (strided) shortcuts exactly where our blocks have them;
- normalisation ``layer`` (GroupNorm, 1 group) and ``group`` (GroupNorm, G groups): stax
  ``LayerNorm`` over all spatial axes and channels, eps 1e-6 as Flax. This is the infinite-width
  limit of both: the mean over infinitely many zero-mean channels is 0, and every group's variance
  converges to the same layer-wide value (at init, with ``layer``, the stax net computes exactly
  our function: tested to 1e-12). What is *not* represented: GroupNorm's trainable per-channel
  scale and offset (initialised to 1 and 0: no effect on the NNGP; in the NTK they add O(1) terms
  against O(width) from each conv layer: measured 5 % of our empirical NTK for SimpleCNN-3-1,
  3 % for ResNet-10-1, 0.35 % for SimpleCNN-3-16). ``none``: no layer.

``ResNet-34`` and ``ResNet-18`` are refused as not expressible: their post-activation blocks add an
identity shortcut that carries relu outputs (not mean-zero Gaussian), which stax ``FanInSum`` cannot
propagate; so is ``PlainCNN-d-w`` (max-pooling, flatten + hidden Dense). Note
for ``ResNet-d-w``: its stem convolution has 16 channels at every w (`models.resnet.WideResNet`), so the
infinite-width kernel is the limit in which the stem widens too (measured: the mean NNGP of 16
random ResNet-10-w is 3.2 % off at w = 1, 2.3 % at w = 8; SimpleCNN-3-16's NNGP and NTK, 4 inits, 2.5 %).

``parameterization="standard"`` (default) is the parameterisation of our nets: the NNGP kernel does
not depend on the widths, but the NTK of a standard-parameterised net grows with them (each weight
layer contributes fan_in x its input kernel; Sohl-Dickstein et al. 2020, arXiv 2001.07301), so the
stax layers carry our actual channel counts (16w/32w/64w, ...) and ``ntk_inf`` is the large-width
limit of E[our empirical NTK] at those width ratios (tested against the average empirical NTK of our
wide nets). ``parameterization="ntk"`` gives the textbook NTK-parameterisation kernel instead
(widths irrelevant; then the head's bias contributes b_std² = 0 to the NTK, unlike our nets).

Cost: the pooled readout needs the full spatial covariance, (b, b, S, S) per layer for S spatial
positions: fine for 1-D signals (MNIST-1D, S = 40), slow for images (S = 784: minutes per thousand
pairs on 2 CPU cores).

Example:
    >>> k_tt, k_st = infinite_kernels("ResNet-10-1", 10, 1, x_train, x_test, kind="ntk")   # (n, n), (m, n)
    >>> kernels = infinite_kernels("ResNet-10-1", 10, 1, x_train, x_test, kind=("nngp", "ntk"))
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Sequence

import numpy as np

from ntk_vs_nn.config import UserError
from ntk_vs_nn.engine.batching import pad_rows
from ntk_vs_nn.kernels.nt_compat import import_neural_tangents
from ntk_vs_nn.models import parse_model_name, split_members

NORMS = ("layer", "group", "none")
PARAMETERIZATIONS = ("standard", "ntk")
KINDS = ("ntk", "nngp")
EXPRESSIBLE = ("simplecnn", "wrn")
_POST_ACTIVATION = (
    "not expressible as an infinite-width neural-tangents kernel: its post-activation blocks add "
    "an identity shortcut carrying relu outputs (not mean-zero Gaussian) to the block, which stax FanInSum "
    "cannot propagate exactly; use ResNet-d-w (pre-activation) or SimpleCNN-d-w"
)
NOT_EXPRESSIBLE = {
    "resnet34": _POST_ACTIVATION,
    "resnet18": _POST_ACTIVATION,  # the same post-activation BasicBlocks (models.resnet.BasicResNet)
    "resnet_cifar": _POST_ACTIVATION,  # ResNet-(6n+2): BasicResNet too
    "plaincnn": "not expressible as an infinite-width neural-tangents kernel: max-pooling has no closed-form "
    "kernel in stax (nor is its flatten + hidden Dense readout mapped here); use SimpleCNN-d-w or ResNet-d-w",
}
_NOT_EXPRESSIBLE_DEFAULT = (
    "not expressible as an infinite-width neural-tangents kernel; use SimpleCNN-d-w or ResNet-d-w"
)


def supports(model_name: str, norm: str = "layer") -> bool:
    """Whether `infinite_kernel_fn` can express ``model_name``: SimpleCNN-d-w and ResNet-d-w, not
    ResNet-18/34, PlainCNN-d-w or BatchEnsemble nets (BE<M>-...)."""
    try:
        kind = parse_model_name(model_name)[0]
    except UserError:
        return False
    return kind in EXPRESSIBLE and norm in NORMS and not split_members(model_name)[0]


def infinite_kernel_fn(
    model_name: str,
    num_classes: int,
    ndim: int,
    norm: str = "layer",
    parameterization: str = "standard",
):
    """The neural-tangents ``stax`` network equal to our Flax model ``model_name`` (module doc).

    Args:
      model_name, num_classes, ndim: as `ntk_vs_nn.models.build_model` (ndim = spatial axes, 1 or 2).
      norm: ``layer`` | ``group`` | ``none`` (``model.norm``); layer and group both become stax
        LayerNorm over positions and channels (their common infinite-width limit).
      parameterization: ``standard`` (ours; the stax layers carry our channel counts) or ``ntk``.

    Returns:
      ``(init_fn, apply_fn, kernel_fn)`` of ``nt.stax.serial``; inputs (B, *spatial, C).
    """
    kind, depth, widen = parse_model_name(model_name)
    if kind not in EXPRESSIBLE:
        raise UserError(f"model {model_name}: {NOT_EXPRESSIBLE.get(kind, _NOT_EXPRESSIBLE_DEFAULT)}")
    if ndim not in (1, 2):
        raise UserError(f"model {model_name}: inputs must have 1 or 2 spatial axes, got {ndim}")
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    if parameterization not in PARAMETERIZATIONS:
        raise UserError(f"unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}")
    stax = import_neural_tangents().stax
    spatial_and_channels = tuple(range(1, ndim + 2))  # (B, *spatial, C): normalise all but the batch

    def conv(features, stride=1, kernel=3):
        return stax.Conv(
            features,
            (kernel,) * ndim,
            strides=(stride,) * ndim,
            padding="SAME",
            W_std=1.0,
            b_std=None,
            parameterization=parameterization,
        )

    def norm_layer():
        return [] if norm == "none" else [stax.LayerNorm(axis=spatial_and_channels, eps=1e-6)]

    def norm_relu():
        return [*norm_layer(), stax.Relu()]

    def residual(main, shortcut):
        return stax.serial(stax.FanOut(2), stax.parallel(main, shortcut), stax.FanInSum())

    layers = []
    if kind == "simplecnn":  # models.cnn.SimpleCNN
        convs = depth - 1
        for i in range(convs):
            stage = min(3 * i // convs, 2)
            first_of_stage = i > 0 and stage != min(3 * (i - 1) // convs, 2)
            layers += [conv(16 * widen * 2**stage, 2 if first_of_stage else 1), *norm_relu()]
    else:  # models.resnet.WideResNet with PreActBlock
        n = (depth - 4) // 6
        layers.append(conv(16))
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride, features = (2 if (stage > 0 and i == 0) else 1), width * widen
                if stride != 1 or channels != features:  # projection of relu(norm(x))
                    main = stax.serial(conv(features, stride), *norm_relu(), conv(features))
                    layers += [*norm_relu(), residual(main, conv(features, stride, kernel=1))]
                else:  # identity shortcut of x itself
                    main = stax.serial(*norm_relu(), conv(features), *norm_relu(), conv(features))
                    layers.append(residual(main, stax.Identity()))
                channels = features
        layers += norm_relu()
    layers += [
        stax.GlobalAvgPool(),
        stax.Dense(num_classes, W_std=1.0, b_std=0.0, parameterization=parameterization),
    ]
    return stax.serial(*layers)


def _x64():
    """jax's float64 context (``jax.enable_x64`` since 0.7; ``jax.experimental.enable_x64`` before)."""
    import jax

    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64()


def default_batch_size(spatial_size: int, n: int, budget_bytes: int = 256 << 20) -> int:
    """Examples per kernel block so that one (b, b, S, S) float64 covariance fits in ``budget_bytes``."""
    b = int(math.sqrt(budget_bytes / (8.0 * spatial_size**2)))
    return max(1, min(b, n, 256))


def infinite_kernels(
    model_name: str,
    num_classes: int,
    ndim: int,
    x_train,
    x_other=None,
    kind: str | Sequence[str] = "ntk",
    batch_size: int | None = None,
    norm: str = "layer",
    parameterization: str = "standard",
    float64: bool = True,
):
    """Infinite-width NTK / NNGP kernels of ``model_name`` on the train set and on other inputs.

    Computed by ``nt.batch`` in (batch_size x batch_size) blocks, results copied to the host (memory
    on the device ~ one block's (b, b, S, S) covariances per layer), in float64 by default.

    Args:
      model_name, num_classes, ndim, norm, parameterization: as `infinite_kernel_fn`.
      x_train: (n, *spatial, C) inputs in the model's layout (as the Flax model takes them).
      x_other: (m, *spatial, C) inputs (e.g. the test set), or None.
      kind: ``"ntk"`` or ``"nngp"`` -> a pair; a sequence of them -> ``{kind: pair}`` (one pass).
      batch_size: examples per block (inputs are padded to a multiple; default: `default_batch_size`).
      float64: compute in float64 (jax x64 enabled for the call only).

    Returns:
      ``(k_train_train (n, n), k_other_train (m, n) or None)`` as float64 numpy (one output's kernel:
      the kernel of a k-output net is this ⊗ I_k), or a dict of such pairs when ``kind`` is a
      sequence.
    """
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if not kinds or any(k not in KINDS for k in kinds):
        raise UserError(f"unknown kernel kind {kind!r}; valid: {', '.join(KINDS)}")
    nt = import_neural_tangents()
    _, _, kernel_fn = infinite_kernel_fn(model_name, num_classes, ndim, norm, parameterization)
    x_train = np.asarray(x_train)
    x_other = None if x_other is None else np.asarray(x_other)
    for name, x in (("x_train", x_train), ("x_other", x_other)):
        if x is not None and x.ndim != ndim + 2:
            raise UserError(f"{name} must be (N, {'L' if ndim == 1 else 'H, W'}, C) for {ndim}-D inputs, got {x.shape}")
    if x_other is not None and x_other.shape[1:] != x_train.shape[1:]:
        raise UserError(f"x_other has shape {x_other.shape[1:]} per example, x_train {x_train.shape[1:]}")
    n, m = len(x_train), (None if x_other is None else len(x_other))
    if n == 0:
        raise UserError("x_train is empty")
    b = batch_size or default_batch_size(int(np.prod(x_train.shape[1:-1])), max(n, m or 0))
    dtype = np.float64 if float64 else np.float32
    batched = nt.batch(kernel_fn, batch_size=b, device_count=0, store_on_device=False)
    get = kinds if len(kinds) > 1 else kinds[0]
    with _x64() if float64 else contextlib.nullcontext(), warnings.catch_warnings():
        # every FanIn of ours sums a branch with a Conv and an independent one: the assumption holds
        warnings.filterwarnings("ignore", message="`FanIn` layers assume independent inputs")
        xt = pad_rows(x_train.astype(dtype), b)
        k_tt = batched(xt, None, get=get)
        if x_other is None or m == 0:
            k_ot = None
        else:
            k_ot = batched(pad_rows(x_other.astype(dtype), b), xt, get=get)

    if m == 0:  # no other inputs: an empty block
        empty = np.zeros((0, n))
        k_ot = empty if len(kinds) == 1 else {kd: empty for kd in kinds}

    def host(k, rows):
        return None if k is None else np.asarray(k, np.float64)[:rows, :n]

    def part(k, kd):
        return k[kd] if isinstance(k, dict) else getattr(k, kd)

    if len(kinds) == 1:
        return host(k_tt, n), host(k_ot, m)
    return {kd: (host(part(k_tt, kd), n), None if k_ot is None else host(part(k_ot, kd), m)) for kd in kinds}

"""BatchEnsemble layers (Wen, Tran & Ba 2020): M members share one weight, each owns rank-1 fast weights.

Member m of a layer computes ``y = ((x * r[m]) W) * s[m] + b[m]``: W is the one shared weight (a Dense
or Conv kernel), r (M, C_in) scales its input channels, s (M, C_out) its output channels and b (M, C_out)
is its own bias. That is the layer with weight ``W ∘ (r[m] s[m]^T)`` (the paper's rank-1 modulation),
computed without forming it: one shared matrix product / convolution over the batch of all members.

Batches are member-major: an input of shape ``(members * B, ..., C_in)`` holds member m's rows at
``m*B ... (m+1)*B - 1`` (`tile_members` builds it from a (B, ...) batch; a batch not divisible by
``members`` is a UserError). Params of a layer, by flax name::

    kernel    the shared W: nn.Dense's (C_in, C_out) or nn.Conv's (*window, C_in, C_out), flax's
              default (lecun-normal) initialiser
    fast_in   r (members, C_in),  1 + 0.5 * N(0, 1) at init
    fast_out  s (members, C_out), 1 + 0.5 * N(0, 1) at init
    bias      b (members, C_out), zeros (only with use_bias)

`fast_weight_labels` marks fast_in / fast_out ``"fast"`` (the optimiser gives them half the learning
rate and no weight decay, as giung2 and uncertainty-baselines do), every other leaf ``"slow"``.
``ntk_vs_nn.models`` builds the ``BE<M>-<net>`` networks from these layers.

Example:
    >>> layer = BEDense(10, members=4)
    >>> params = layer.init(jax.random.key(0), jnp.ones((4 * 8, 3)))["params"]
    >>> jax.tree.map(jnp.shape, params)
    {'bias': (4, 10), 'fast_in': (4, 3), 'fast_out': (4, 10), 'kernel': (3, 10)}
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from flax.linen.linear import canonicalize_padding, default_kernel_init
from jax import lax

from ntk_vs_nn.config import UserError

FAST_KEYS = ("fast_in", "fast_out")  # the param names `fast_weight_labels` marks "fast"
FAST_STD = 0.5  # fast weights start at N(1, FAST_STD^2)


def fast_weight_init(std: float = FAST_STD) -> Callable:
    """Initialiser of the fast weights: ``1 + std * N(0, 1)``, so every member starts near the shared layer."""

    def init(key, shape, dtype=jnp.float32):
        return 1 + std * jax.random.normal(key, shape, dtype)

    return init


def _check_batch(x, members: int, layer: str) -> None:
    if members < 1:
        raise UserError(f"{layer}: BatchEnsemble needs members >= 1, got {members}")
    if x.ndim < 2 or x.shape[0] % members:
        raise UserError(
            f"{layer}: a batch of shape {tuple(x.shape)} does not split into {members} members; inputs are "
            f"member-major, (members * B, ..., C), so the first axis must be a multiple of {members}"
        )


def _params(layer, window: tuple, c_in: int, x):
    """A BE layer's params (the shared kernel of shape window + (C_in, C_out), fast_in, fast_out, the
    optional per-member bias) and its input, promoted to the compute dtype as flax does."""
    kernel = layer.param("kernel", layer.kernel_init, window + (c_in, layer.features), layer.param_dtype)
    r = layer.param("fast_in", layer.fast_init, (layer.members, c_in), layer.param_dtype)
    s = layer.param("fast_out", layer.fast_init, (layer.members, layer.features), layer.param_dtype)
    b = None
    if layer.use_bias:
        b = layer.param("bias", nn.initializers.zeros_init(), (layer.members, layer.features), layer.param_dtype)
    return promote_dtype(x, kernel, r, s, b, dtype=layer.dtype)


def _per_member(x, scale, shift=None):
    """``x * scale[m] (+ shift[m])`` on member m's rows of a member-major x (M*B, ..., C); scale, shift (M, C)."""
    m = scale.shape[0]
    shape = (m,) + (1,) * (x.ndim - 1) + (scale.shape[-1],)
    y = x.reshape(m, -1, *x.shape[1:]) * scale.reshape(shape)
    if shift is not None:
        y = y + shift.reshape(shape)
    return y.reshape(x.shape)


class BEDense(nn.Module):
    """BatchEnsemble `nn.Dense` over the last axis: ``((x * r[m]) W) * s[m] + b[m]`` on member m's rows.

    Parameters
    ----------
    features : output channels C_out.
    members : M >= 1; the input's first axis is members * B (member-major).
    use_bias : a per-member bias b (M, C_out).
    dtype : compute dtype (e.g. bfloat16; None: inferred from inputs and params, as flax); params stay
        ``param_dtype``.
    """

    features: int
    members: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = default_kernel_init
    fast_init: Callable = fast_weight_init()

    @nn.compact
    def __call__(self, x):
        _check_batch(x, self.members, f"BEDense {self.name}")
        x, kernel, r, s, b = _params(self, (), x.shape[-1], x)
        y = lax.dot_general(_per_member(x, r), kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)
        return _per_member(y, s, b)


class BEConv(nn.Module):
    """BatchEnsemble `nn.Conv` (channels last, any number of spatial axes): ``((x * r[m]) ⊛ W) * s[m] + b[m]``.

    Parameters
    ----------
    features : output channels C_out.
    kernel_size : the window, an int (the same in every spatial axis) or one size per axis.
    members : M >= 1; the input (members * B, *spatial, C_in) is member-major.
    strides : an int or one per axis.
    padding : ``"SAME"``, ``"VALID"``, an int or per-axis pairs (as `nn.Conv`).
    use_bias : a per-member bias b (M, C_out).
    dtype : compute dtype (None: inferred, as flax); params stay ``param_dtype``.
    conv_general_dilated : the convolution (`lax.conv_general_dilated` or `ntk_vs_nn.models.conv.matmul_conv`).
    """

    features: int
    kernel_size: int | Sequence[int]
    members: int
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = default_kernel_init
    fast_init: Callable = fast_weight_init()
    conv_general_dilated: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x):
        _check_batch(x, self.members, f"BEConv {self.name}")
        nd = x.ndim - 2
        window = (self.kernel_size,) * nd if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides)
        if nd < 1 or len(window) != nd or len(strides) != nd:
            raise ValueError(
                f"BEConv {self.name}: input {tuple(x.shape)} (batch, *spatial, channels) does not match "
                f"kernel_size {self.kernel_size} and strides {self.strides}"
            )
        x, kernel, r, s, b = _params(self, window, x.shape[-1], x)
        spec = (0, nd + 1, *range(1, nd + 1))  # channels last, flax's dimension numbers
        dn = lax.ConvDimensionNumbers(spec, (nd + 1, nd, *range(nd)), spec)
        y = self.conv_general_dilated(
            _per_member(x, r),
            kernel,
            strides,
            canonicalize_padding(self.padding, nd),
            lhs_dilation=(1,) * nd,
            rhs_dilation=(1,) * nd,
            dimension_numbers=dn,
            feature_group_count=1,
            precision=self.precision,
        )
        return _per_member(y, s, b)


def tile_members(x, members: int):
    """A (B, ...) batch as the member-major (members * B, ...) batch of a BatchEnsemble: member m gets a copy."""
    return jnp.broadcast_to(x, (members, *x.shape)).reshape(members * x.shape[0], *x.shape[1:])


def ensemble_logits(z, rule: str = "probs"):
    """Per-member logits (M, B, k) -> the ensemble's prediction as logits (B, k), in jax, as
    `analysis.metrics.combine` forms it: ``probs`` the log of the mean over members of the softmax,
    ``logsumexp(log_softmax(z), axis=0) - log M`` (a BatchEnsemble's), ``logits`` their mean."""
    if rule == "logits":
        return z.mean(0)
    return jax.nn.logsumexp(jax.nn.log_softmax(z, axis=-1), axis=0) - jnp.log(z.shape[0]).astype(z.dtype)


def fast_weight_labels(params):
    """A pytree like ``params`` of ``"fast"`` (every leaf whose key is ``fast_in`` or ``fast_out``, at any
    depth) and ``"slow"`` (all others): the ``param_labels`` of an ``optax.multi_transform``."""

    def label(path, _):
        last = path[-1] if path else None
        key = getattr(last, "key", getattr(last, "name", None))
        return "fast" if key in FAST_KEYS else "slow"

    return jax.tree_util.tree_map_with_path(label, params)


def has_fast_weights(params) -> bool:
    """Whether ``params`` holds any BatchEnsemble fast weight (a ``fast_in`` / ``fast_out`` leaf)."""
    return any(label == "fast" for label in jax.tree.leaves(fast_weight_labels(params)))

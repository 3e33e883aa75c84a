"""Input transformations of training batches, on device, drawn only from a key.

  crop_flip     images: a random crop of the zero-padded image (``pad`` pixels each side), then a
                left-right flip with probability 1/2 (``flip=False``: crop only, for data whose
                class a flip changes, e.g. digits);
  shift_noise   1-D signals: a random shift of up to ``max_shift`` positions either way (zeros
                shifted in), then Gaussian noise of standard deviation ``noise``;
  mixup         any data (Zhang et al. 2018): x' = lam x + (1 - lam) x[perm], one lam ~ Beta(a, a)
                per batch and a random pairing ``perm`` of the batch; the loss mixes the labels the
                same way and a distillation target is the teacher's output on x' itself.

The trainer calls a transformation with ``fold_in(member's epoch key, step)``, so a member's
batches are the same whichever way the members execute (tests/data/test_transforms.py). `make_augment`
builds the per-batch augmentation of a `TrainConfig`.

Example:
    >>> aug = make_augment("crop_flip", spatial_ndim=2, size=28)   # pad 2 for 28-pixel images
    >>> x_aug = aug(jax.random.key(0), x)                          # same shape and dtype
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ntk_vs_nn.config import UserError

AUGMENTS = ("none", "crop_flip", "crop", "shift_noise")  # train.augment / the students' augmentation


def crop_pad_for(size: int) -> int:
    """The crop padding of ``size``-pixel images: 4 for 32 px and more (CIFAR), 2 below (28 px)."""
    return 4 if size >= 32 else 2


@functools.partial(jax.jit, static_argnames=("pad", "flip"))
def crop_flip(key: jax.Array, x: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
    """Random crop after zero padding, then (``flip``) a random horizontal flip, per example.

    Each example gets its own offset, uniform over the (2 pad + 1)^2 positions of an H x W window
    in the zero-padded image (offset (pad, pad) is the unshifted image).

    Args:
      key: PRNG key. x: (N, H, W, C), channels last (any dtype; kept). pad, flip: static.
    Returns: (N, H, W, C).
    """
    n, h, w, c = x.shape
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(k_flip, 0.5, (n,)) & flip
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(img, off, f):
        crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
        return jnp.where(f, crop[:, ::-1, :], crop)

    return jax.vmap(one)(padded, offsets, flips)


@functools.partial(jax.jit, static_argnames=("max_shift",))
def shift_noise(key: jax.Array, x: jax.Array, max_shift: int = 3, noise: float = 0.1) -> jax.Array:
    """Each signal shifted by a random whole number of positions in [-max_shift, max_shift] (zeros
    shifted in), plus N(0, noise^2) per value.

    Args:
      key: PRNG key. x: (N, L, C) float signals. max_shift: static; noise: a scalar.
    Returns: (N, L, C), the dtype of ``x``.
    """
    n, length, c = x.shape
    k_shift, k_noise = jax.random.split(key)
    offsets = jax.random.randint(k_shift, (n,), 0, 2 * max_shift + 1)
    padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (0, 0)))
    shifted = jax.vmap(lambda s, o: jax.lax.dynamic_slice(s, (o, 0), (length, c)))(padded, offsets)
    return (shifted + noise * jax.random.normal(k_noise, x.shape, jnp.float32)).astype(x.dtype)


def mixup(key: jax.Array, x: jax.Array, alpha: float):
    """``(x_mixed, perm, lam)``: x_mixed = lam x + (1 - lam) x[perm], lam ~ Beta(alpha, alpha) (one
    per batch), perm a random permutation of the batch. The labels mix as lam y + (1 - lam) y[perm]."""
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha).astype(x.dtype)
    perm = jax.random.permutation(k_perm, x.shape[0])
    return lam * x + (1 - lam) * x[perm], perm, lam


def make_augment(kind: str, spatial_ndim: int, size: int, pad: int = 0, max_shift: int = 3, noise: float = 0.1):
    """The per-batch augmentation ``(key, x) -> x`` of ``kind`` (`AUGMENTS`) for inputs with
    ``spatial_ndim`` spatial axes of ``size`` positions, or None for ``none``. ``pad`` 0 = `crop_pad_for`."""
    if kind not in AUGMENTS:
        raise UserError(f"augmentation must be one of {', '.join(AUGMENTS)}; got {kind!r}")
    if kind == "none":
        return None
    if kind == "shift_noise":
        if spatial_ndim != 1:
            raise UserError(f"augmentation shift_noise needs 1-D signals; the inputs have {spatial_ndim} spatial axes")
        return functools.partial(shift_noise, max_shift=max_shift, noise=noise)
    if spatial_ndim != 2:
        raise UserError(f"augmentation {kind} needs 2-D images; the inputs have {spatial_ndim} spatial axes")
    return functools.partial(crop_flip, pad=pad or crop_pad_for(size), flip=kind == "crop_flip")

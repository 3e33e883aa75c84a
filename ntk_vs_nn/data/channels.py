"""Figure 6's inputs: the channels of a fixed pretrained layer, split or averaged, and the dataset
(with its Fashion-MNIST -> MNIST-1D fallback).

``split_s`` keeps a random subset of C/s channels; ``avg_g`` averages consecutive groups of g
channels (channel order in a trained net carries no meaning, so this is a random grouping). Each
transformed input is standardised per channel on the training set.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ntk_vs_nn.config import UserError
from ntk_vs_nn.data import load_dataset

VARIANTS = ("original", "split_2", "split_4", "split_8", "avg_2", "avg_4", "avg_8")


def parse_variant(v: str) -> tuple[str, int]:
    """``"split_4"`` -> ("split", 4); ``"original"`` -> ("original", 1). UserError if malformed."""
    if v == "original":
        return "original", 1
    kind, _, num = v.partition("_")
    if kind in ("split", "avg") and num.isdigit() and int(num) >= 1:
        return kind, int(num)
    raise UserError(f"channels.variants: bad variant {v!r}; expected original, split_S or avg_G (S, G >= 1)")


def split_indices(key, channels: int, s: int) -> np.ndarray:
    """A sorted random subset of ``channels // s`` channel indices (at least one)."""
    keep = max(channels // s, 1)
    return np.sort(np.asarray(jax.random.permutation(key, channels))[:keep])


def transform(x: np.ndarray, variant: str, key=None) -> np.ndarray:
    """Apply ``variant`` to the channel (last) axis of ``x`` (N, *spatial, C).

    original -> x; split_s -> x[..., split_indices(key, C, s)] (C // s channels);
    avg_g -> the mean of consecutive groups of g channels (C // g channels; C must divide by g).
    """
    kind, n = parse_variant(variant)
    c = x.shape[-1]
    if kind == "original" or n == 1:
        return x
    if kind == "split":
        return x[..., split_indices(key, c, n)]
    if c % n:
        raise UserError(f"{variant}: {c} channels do not divide into groups of {n}")
    return x.reshape(*x.shape[:-1], c // n, n).mean(-1)


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel standardisation with the training set's statistics."""
    axes = tuple(range(x_train.ndim - 1))
    mean, std = x_train.mean(axes), x_train.std(axes) + 1e-6
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def fallback_config(cfg):
    """The config a Fashion-MNIST run falls back to when its files are missing: MNIST-1D (generated
    offline), 4,000 train / 1,000 test unless the config sets the sizes."""
    data_cfg = dataclasses.replace(cfg.data, n_test=cfg.data.n_test or 1000, n_train=cfg.data.n_train or 4000)
    return dataclasses.replace(cfg, dataset="mnist1d", data=data_cfg)


def load_data(cfg, log):
    """The dataset of ``cfg`` (with the Fashion-MNIST -> MNIST-1D fallback); returns (data, cfg used)."""
    try:
        return load_dataset(cfg.dataset, cfg.data, cfg.run.seed), cfg
    except UserError as e:
        if cfg.dataset != "fashion_mnist" or not cfg.fallback:
            raise
        log(
            f"warning: Fashion-MNIST is not available ({e}); falling back to MNIST-1D (generated offline). "
            "Numbers are then not comparable to a Fashion-MNIST run; set fallback=False to make this an error."
        )
        cfg = fallback_config(cfg)
        return load_dataset("mnist1d", cfg.data, cfg.run.seed), cfg

"""Datasets: the embedded MNIST-1D default, real images (Fashion-MNIST, CIFAR), generated images of their
shape (``synthetic:fashion_mnist`` and the like: what the tests run) and user arrays (``npz:PATH``).

A `Dataset` holds channels-last float32 inputs and int32 labels for train / validation / test.
Input layout: (N, L, C) is a 1-D signal with C channels, (N, H, W, C) a 2-D image; MNIST-1D's
(N, 40) signals become (N, 40, 1), and 2-D npz arrays (N, D) are read as 1-D signals (N, D, 1).
The validation split is carved from the training samples with the run seed's "split" stream, so
it is the same for every family and protocol of a run.

Example:
    >>> from ntk_vs_nn.config import Config
    >>> ds = load_dataset("mnist1d", Config().data, seed=0)
"""

from __future__ import annotations

import os
import zipfile
from typing import NamedTuple

import jax
import numpy as np
from mnist1d.data import get_dataset_args, make_dataset  # generated locally: get_dataset would download and unpickle

from ntk_vs_nn import rng
from ntk_vs_nn.config import IMAGE_SETS, DataConfig, UserError
from ntk_vs_nn.data import cifar, images

DATASETS = ("mnist1d", *IMAGE_SETS, *(f"synthetic:{n}" for n in IMAGE_SETS), "npz:PATH")


class Dataset(NamedTuple):
    name: str
    x_train: np.ndarray  # (N, *spatial, C) float32
    y_train: np.ndarray  # (N,) int32
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    # images: (std, mean) of the standardisation, so pixels in [0, 1] are x * std + mean (the space of
    # the distillation perturbations, engine/perturb.py); None: no pixel space (signals, npz files)
    pixels: tuple[float, float] | None = None

    @property
    def spatial_ndim(self) -> int:
        return self.x_train.ndim - 2


def _mnist1d(cfg: DataConfig):
    # make_dataset generates the data locally; get_dataset would download and unpickle a file.
    if cfg.n_train < 1 or cfg.n_test < 1:
        raise UserError("mnist1d is generated: data.n_train and data.n_test must be >= 1")
    args = get_dataset_args()
    args.num_samples = cfg.n_train + cfg.n_test
    args.train_split = cfg.n_train / args.num_samples
    args.seed = cfg.generator_seed
    state = np.random.get_state()  # make_dataset reseeds numpy's global RNG; leave it as it was
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(state)
    # The package rounds its train/test split; cut the generated samples to the exact counts.
    x, y = np.concatenate([d["x"], d["x_test"]]), np.concatenate([d["y"], d["y_test"]])
    return x[: cfg.n_train], y[: cfg.n_train], x[cfg.n_train :], y[cfg.n_train :]


def _npz(path: str, cfg: DataConfig):
    if not os.path.isfile(path):
        raise UserError(f"npz dataset {path!r}: no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"npz dataset {path!r}: not an .npz archive (a single .npy array?)")
        with loaded as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise UserError(f"npz dataset {path!r}: missing arrays {', '.join(missing)}")
            arrays = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    except UserError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"npz dataset {path!r}: not a readable .npz file ({e})") from None
    x_tr, y_tr, x_te, y_te = arrays
    if cfg.n_test and len(x_te) > cfg.n_test:
        x_te, y_te = x_te[: cfg.n_test], y_te[: cfg.n_test]
    return x_tr, y_tr, x_te, y_te


def _images(spec: str, cfg: DataConfig):
    """Fashion-MNIST or CIFAR as (arrays, n_val_fixed). Images scale to [0, 1] before standardising.

    ``data.n_train`` / ``data.n_test`` take the first n images (0 = all). CIFAR keeps its official
    split (last 5,000 of the 50,000 training images validate) when all training images are used;
    a subset is split at random by ``data.val_fraction`` like every other dataset."""
    folder = cfg.data_dir or None
    if spec.startswith("synthetic:"):
        raw = images.synthetic(spec.split(":", 1)[1], cfg.n_train, cfg.n_test)
    elif spec == "fashion_mnist":
        raw = images.fashion_mnist(folder)
    else:
        raw = cifar.cifar(spec, source=cfg.source, data_dir=folder)
    x_tr, y_tr, x_te, y_te = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    n_val_fixed = raw.n_val_last
    if cfg.n_train and cfg.n_train < len(x_tr):
        x_tr, y_tr, n_val_fixed = x_tr[: cfg.n_train], y_tr[: cfg.n_train], None
    if cfg.n_test and cfg.n_test < len(x_te):
        x_te, y_te = x_te[: cfg.n_test], y_te[: cfg.n_test]
    scale = np.float32(1 / 255)
    return (x_tr.astype(np.float32) * scale, y_tr, x_te.astype(np.float32) * scale, y_te), n_val_fixed


def _validate(name, x_tr, y_tr, x_te, y_te):
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        if x.dtype.kind not in "fiub":
            raise UserError(f"{name}: x_{split} must be numeric, got dtype {x.dtype}")
        if y.dtype.kind not in "iu":
            raise UserError(f"{name}: y_{split} must hold integer labels, got dtype {y.dtype}")
        if x.ndim not in (2, 3, 4):
            raise UserError(f"{name}: x_{split} must be (N, D), (N, L, C) or (N, H, W, C); got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise UserError(f"{name}: y_{split} must be (N,) with N = len(x_{split}) = {len(x)}; got shape {y.shape}")
        if len(x) == 0:
            raise UserError(f"{name}: x_{split} is empty")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise UserError(f"{name}: x_{split} contains NaN or infinite values")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise UserError(f"{name}: x_train sample shape {x_tr.shape[1:]} != x_test sample shape {x_te.shape[1:]}")
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    if min(y_tr.min(), y_te.min()) < 0:
        raise UserError(f"{name}: labels must be in 0..K-1, found negative labels")
    if len(np.unique(y_tr)) < 2:
        raise UserError(f"{name}: y_train has fewer than 2 classes")
    if num_classes > 1000:
        raise UserError(f"{name}: labels must be in 0..K-1 with K <= 1000, found max label {num_classes - 1}")
    return num_classes


def load_dataset(spec: str, cfg: DataConfig, seed: int) -> Dataset:
    """Load, validate, standardise and split the dataset named by ``spec``."""
    n_val_fixed = None
    if spec == "mnist1d":
        name, arrays = "mnist1d", _mnist1d(cfg)
    elif spec in IMAGE_SETS or (spec.startswith("synthetic:") and spec[10:] in IMAGE_SETS):
        name, arrays, n_val_fixed = spec.replace(":", "-"), *_images(spec, cfg)
    elif spec.startswith("npz:") and len(spec) > 4:
        stem = os.path.splitext(os.path.basename(spec[4:]))[0]
        name, arrays = f"npz-{stem}", _npz(spec[4:], cfg)
    else:
        raise UserError(f"unknown dataset {spec!r}; valid: {', '.join(DATASETS)}")
    x_tr, y_tr, x_te, y_te = (np.asarray(a) for a in arrays)
    num_classes = _validate(spec, x_tr, y_tr, x_te, y_te)
    x_tr, x_te = x_tr.astype(np.float32), x_te.astype(np.float32)
    if x_tr.ndim == 2:
        x_tr, x_te = x_tr[..., None], x_te[..., None]
    if n_val_fixed is not None:  # the official split (CIFAR: the last 5,000 training images validate)
        train, val = np.arange(len(x_tr) - n_val_fixed), np.arange(len(x_tr) - n_val_fixed, len(x_tr))
    else:
        n_val = int(round(cfg.val_fraction * len(x_tr)))
        if len(x_tr) - n_val < 2:
            raise UserError(f"{spec}: too few training samples ({len(x_tr)}) for val_fraction {cfg.val_fraction}")
        perm = np.asarray(jax.random.permutation(rng.stream(rng.root_key(seed), "split"), len(x_tr)))
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    pixels = (1.0, 0.0) if name.removeprefix("synthetic-") in IMAGE_SETS else None
    if cfg.standardize:  # statistics of the training part only: validation stays unseen
        mean, std = x_tr[train].mean(), x_tr[train].std() + 1e-8
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
        pixels = None if pixels is None else (float(std), float(mean))
    return Dataset(
        name=name,
        x_train=x_tr[train],
        y_train=y_tr[train].astype(np.int32),
        x_val=x_tr[val],
        y_val=y_tr[val].astype(np.int32),
        x_test=x_te,
        y_test=y_te.astype(np.int32),
        num_classes=num_classes,
        pixels=pixels,
    )

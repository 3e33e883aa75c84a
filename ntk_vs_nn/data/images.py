"""Real image data: Fashion-MNIST IDX files, and generated images of a real set's shape (``synthetic``).
CIFAR-10/100 (binary archives or tensorflow-datasets) and its augmentation are in `ntk_vs_nn.data.cifar`.

Every loader returns a `Raw` tuple of channels-last uint8 images ``(N, H, W, C)`` and int32 labels ``(N,)``,
plus ``n_val_last``: how many of the *last* training examples form the fixed validation split
(PROTOCOLS.md §4: CIFAR keeps the last 5,000 of the official 50,000 training images; Fashion-MNIST has no
fixed split, ``None``, and the caller carves a random one).

Counts are checked against the official sizes by default (``expected_counts``); pass ``expected_counts=None``
to accept any count (used by the tests, which build tiny files).

``synthetic`` makes images of a real set's shape and class count (no file read): what the tests and the
smoke presets run (``synthetic:fashion_mnist``), so nothing that a test runs depends on a dataset installed
on the machine.

Where the data comes from:
    * Fashion-MNIST: ``bash scripts/get_fashion_mnist.sh`` (Debian package ``dataset-fashion-mnist``, which
      installs the four gzipped IDX files in ``/usr/share/datasets/fashion-mnist``), or any folder with those
      files named by ``$NTK_VS_NN_FASHION_MNIST``.

Examples:
    >>> raw = fashion_mnist()                     # doctest: +SKIP
    >>> raw.x_train.shape, raw.x_train.dtype      # doctest: +SKIP
    ((60000, 28, 28, 1), dtype('uint8'))
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import NamedTuple

import numpy as np

from ntk_vs_nn.config import UserError

FASHION_MNIST_ENV = "NTK_VS_NN_FASHION_MNIST"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist

_FASHION_HOWTO = (
    f"run `bash scripts/get_fashion_mnist.sh` (or `apt-get install dataset-fashion-mnist`), "
    f"or set {FASHION_MNIST_ENV} to a folder with the four IDX files"
)
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes


class Raw(NamedTuple):
    """A data set as read from disk, before any scaling or validation carving.

    Attributes:
        x_train: (N_train, H, W, C) uint8 images, channels last.
        y_train: (N_train,) int32 labels.
        x_test: (N_test, H, W, C) uint8 images.
        y_test: (N_test,) int32 labels.
        n_val_last: number of the last training examples that form the fixed validation split, or None
            when the data set has none (the caller carves a random split).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_val_last: int | None


# ----------------------------------------------------------------------------------------------- Fashion-MNIST


def _read_maybe_gzip(path: str) -> bytes:
    """The bytes of `path`, gunzipped when the file starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: corrupt or truncated gzip file ({e})") from None
    return data


def _parse_idx(data: bytes, path: str, ndim: int, shape_tail: tuple[int, ...]) -> np.ndarray:
    """Parses an unsigned-byte IDX file.

    Args:
        data: the whole (uncompressed) file.
        path: for messages.
        ndim: expected number of dimensions (1 for labels, 3 for images).
        shape_tail: expected sizes of every dimension but the first, e.g. (28, 28).

    Returns:
        (N, *shape_tail) uint8 array.
    """
    magic = 0x0800 | ndim  # two zero bytes, type 0x08 (ubyte), number of dimensions
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated IDX file ({len(data)} bytes, header needs {header})")
    got = struct.unpack(">I", data[:4])[0]
    if got != magic:
        raise UserError(f"{path}: bad IDX magic number 0x{got:08x}, expected 0x{magic:08x} (ubyte, {ndim}-d)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if tuple(dims[1:]) != tuple(shape_tail):
        raise UserError(f"{path}: IDX dimensions {dims}, expected (N, {', '.join(map(str, shape_tail))})")
    need = int(np.prod(dims, dtype=np.int64))
    have = len(data) - header
    if have != need:
        kind = "truncated" if have < need else "oversized"
        raise UserError(f"{path}: {kind} IDX file: header says {dims} = {need} bytes of data, found {have}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find_idx(directory: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    raise UserError(f"Fashion-MNIST: {os.path.join(directory, stem)}[.gz] not found; {_FASHION_HOWTO}")


def _check_labels(y: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise UserError(f"{what}: label {int(bad[0])} out of range [0, {num_classes}) ({bad.size} such)")
    return y.astype(np.int32)


def _check_counts(n_train: int, n_test: int, expected: tuple[int, int] | None, what: str) -> None:
    if expected is not None and (n_train, n_test) != tuple(expected):
        raise UserError(f"{what}: {n_train} train / {n_test} test examples, expected {expected[0]} / {expected[1]}")


def fashion_mnist(directory: str | None = None, *, expected_counts: tuple[int, int] | None = (60000, 10000)) -> Raw:
    """Reads Fashion-MNIST from its four IDX files.

    Files (each gzipped ``.gz`` or uncompressed): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. Magic numbers, the 28x28 image size, the counts
    and the agreement of label and image counts are checked.

    Args:
        directory: folder with the files; default ``$NTK_VS_NN_FASHION_MNIST``, else
            ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
        expected_counts: (train, test) counts to insist on; None accepts any.

    Returns:
        `Raw` with x of shape (N, 28, 28, 1) uint8, y (N,) int32 in [0, 10), ``n_val_last=None``.

    Raises:
        UserError: missing folder or file, bad magic, wrong dimensions, truncated file, label out of range,
            count mismatch.
    """
    if directory is None:
        directory = os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR
    directory = os.path.expanduser(directory)
    if not os.path.isdir(directory):
        raise UserError(f"Fashion-MNIST: folder {directory} not found; {_FASHION_HOWTO}")
    arrays = {}
    for key, stem in _FASHION_FILES.items():
        path = _find_idx(directory, stem)
        images = key.endswith("images")
        arrays[key] = _parse_idx(_read_maybe_gzip(path), path, 3 if images else 1, (28, 28) if images else ())
    for split in ("train", "test"):
        ni, nl = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if ni != nl:
            raise UserError(f"Fashion-MNIST {split}: {ni} images but {nl} labels in {directory}")
    y_train = _check_labels(arrays["train_labels"], 10, f"Fashion-MNIST train labels in {directory}")
    y_test = _check_labels(arrays["test_labels"], 10, f"Fashion-MNIST test labels in {directory}")
    _check_counts(len(y_train), len(y_test), expected_counts, f"Fashion-MNIST in {directory}")
    return Raw(arrays["train_images"][..., None], y_train, arrays["test_images"][..., None], y_test, None)


# --------------------------------------------------------------------------------------------------- synthetic

SYNTHETIC_LIKE = {"fashion_mnist": ((28, 28, 1), 10), "cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100)}
SYNTHETIC_COUNTS = (1000, 500)  # (train, test) when the config asks for all (0)


def synthetic(like: str, n_train: int = 0, n_test: int = 0, *, seed: int = 0) -> Raw:
    """Generated images of the shape and class count of ``like`` (a key of `SYNTHETIC_LIKE`), learnable but
    not trivially: each class has a smooth random prototype (a 7x7 field upsampled), an image is its class's
    prototype at a random contrast plus pixel noise, as uint8. The same ``seed`` and counts give the same
    bytes; labels are balanced (train and test each cycle through the classes, then are shuffled).

    Args:
        like: ``fashion_mnist``, ``cifar10`` or ``cifar100``.
        n_train, n_test: counts; 0 = `SYNTHETIC_COUNTS`.
        seed: the generator's seed (fixed per dataset, like MNIST-1D's; the run seed splits validation).

    Returns:
        `Raw` with x (N, H, W, C) uint8, y (N,) int32, ``n_val_last=None`` (the caller carves validation).
    """
    if like not in SYNTHETIC_LIKE:
        raise UserError(f"synthetic data like {like!r}: unknown; valid: {', '.join(SYNTHETIC_LIKE)}")
    (h, w, c), k = SYNTHETIC_LIKE[like]
    n_train, n_test = n_train or SYNTHETIC_COUNTS[0], n_test or SYNTHETIC_COUNTS[1]
    rs = np.random.RandomState(seed)
    coarse = rs.randn(k, 7, 7, c)
    rows, cols = np.linspace(0, 6, h), np.linspace(0, 6, w)  # bilinear upsampling of the 7x7 fields
    r0, c0 = np.floor(rows).astype(int).clip(0, 5), np.floor(cols).astype(int).clip(0, 5)
    fr, fc = (rows - r0)[None, :, None, None], (cols - c0)[None, None, :, None]
    top = coarse[:, r0][:, :, c0] * (1 - fc) + coarse[:, r0][:, :, c0 + 1] * fc
    bottom = coarse[:, r0 + 1][:, :, c0] * (1 - fc) + coarse[:, r0 + 1][:, :, c0 + 1] * fc
    protos = top * (1 - fr) + bottom * fr  # (k, h, w, c)

    def draw(n):
        y = rs.permutation(np.arange(n) % k).astype(np.int32)
        contrast = rs.uniform(0.5, 1.5, (n, 1, 1, 1))
        x = 128 + 12 * contrast * protos[y] + 64 * rs.randn(n, h, w, c)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y

    x_tr, y_tr = draw(n_train)
    x_te, y_te = draw(n_test)
    return Raw(x_tr, y_tr, x_te, y_te, None)

"""Real image data: Fashion-MNIST IDX files, CIFAR-10/100 (binary archives or tensorflow-datasets), augmentation.

Every loader returns a `Raw` tuple of channels-last uint8 images ``(N, H, W, C)`` and int32 labels ``(N,)``,
plus ``n_val_last``: how many of the *last* training examples form the fixed validation split
(PROTOCOLS.md §4: CIFAR keeps the last 5,000 of the official 50,000 training images; Fashion-MNIST has no
fixed split, ``None``, and the caller carves a random one).

Nothing here unpickles a file: CIFAR's "python version" archives are pickles and are refused; the
official *binary* version (or a tensorflow-datasets ``array_record`` build) is read instead.

Counts are checked against the official sizes by default (``expected_counts``); pass ``expected_counts=None``
to accept any count (used by the tests, which build tiny files).

``synthetic`` makes images of a real set's shape and class count (no file read): what the tests and the
smoke presets run (``synthetic:fashion_mnist``), so nothing that a test runs depends on a dataset installed
on the machine.

Where the data comes from:
    * Fashion-MNIST: ``bash scripts/get_fashion_mnist.sh`` (Debian package ``dataset-fashion-mnist``, which
      installs the four gzipped IDX files in ``/usr/share/datasets/fashion-mnist``), or any folder with those
      files named by ``$NTK_VS_NN_FASHION_MNIST``.
    * CIFAR: ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz`` (or their extracted folders) in the
      folder named by ``$NTK_VS_NN_CIFAR_DIR`` or ``data_dir``; or a tensorflow-datasets ``array_record``
      build (``tfds build cifar10 --file_format=array_record``, which needs tensorflow at build time only;
      reading it needs only ``tensorflow-datasets`` and ``array_record``).

Examples:
    >>> raw = fashion_mnist()                     # doctest: +SKIP
    >>> raw.x_train.shape, raw.x_train.dtype      # doctest: +SKIP
    ((60000, 28, 28, 1), dtype('uint8'))
    >>> raw = cifar("cifar10", source="binary", data_dir="~/data")   # doctest: +SKIP
    >>> raw.x_train.shape, raw.n_val_last         # doctest: +SKIP
    ((50000, 32, 32, 3), 5000)
    >>> x = jnp.asarray(raw.x_train[:128], jnp.float32) / 255.0      # doctest: +SKIP
    >>> x_aug = augment(jax.random.key(0), x)     # same shape, cropped and flipped per example
"""

from __future__ import annotations

import gzip
import os
import struct
import tarfile
import zlib
from typing import NamedTuple

import jax
import numpy as np

from ntk_vs_nn.config import UserError
from ntk_vs_nn.data.transforms import crop_flip

FASHION_MNIST_ENV = "NTK_VS_NN_FASHION_MNIST"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
CIFAR_ENV = "NTK_VS_NN_CIFAR_DIR"
CIFAR_VAL = 5000  # PROTOCOLS.md §4: the last 5,000 training images validate

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


# ------------------------------------------------------------------------------------------------------- CIFAR

_CIFAR = {
    # name: (archive, folder inside it, train files, test files, label bytes, label column, classes)
    "cifar10": (
        "cifar-10-binary.tar.gz",
        "cifar-10-batches-bin",
        tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        ("test_batch.bin",),
        1,
        0,
        10,
    ),
    "cifar100": ("cifar-100-binary.tar.gz", "cifar-100-binary", ("train.bin",), ("test.bin",), 2, 1, 100),
}
_PICKLED = {
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python"),
}
_IMAGE_BYTES = 3 * 32 * 32


def _cifar_howto(name: str) -> str:
    archive = _CIFAR[name][0]
    return (
        f"put {archive} (the official binary version, not the python/pickle one) in ${CIFAR_ENV} or data_dir, "
        f"or build a tensorflow-datasets copy: `tfds build {name} --file_format=array_record`"
    )


def _safe_member(name: str, archive: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts or (parts and parts[0].endswith(":")):
        raise UserError(f"{archive}: refusing unsafe member name {name!r} (absolute path or '..')")


def _read_tar(archive: str, wanted: dict[str, str]) -> dict[str, bytes]:
    """Reads members of a .tar.gz into memory, never onto disk.

    Args:
        archive: path of the .tar.gz.
        wanted: member name -> key of the result.

    Returns:
        key -> bytes for every wanted member.
    """
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _safe_member(member.name, archive)
                key = wanted.get(member.name.removeprefix("./"))
                if key is None:
                    continue
                if not member.isfile():
                    raise UserError(f"{archive}: member {member.name} is not a regular file")
                f = tar.extractfile(member)
                out[key] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{archive}: not a readable .tar.gz archive ({e})") from None
    missing = sorted(m for m, k in wanted.items() if k not in out)
    if missing:
        raise UserError(f"{archive}: missing members {', '.join(missing)}")
    return out


def _parse_cifar_bin(data: bytes, what: str, label_bytes: int, label_col: int, classes: int):
    """Parses CIFAR binary records: `label_bytes` label bytes then 3072 bytes of CHW pixels.

    Returns:
        (N, 32, 32, 3) uint8 images and (N,) int32 labels (column `label_col` of the label bytes).
    """
    rec = label_bytes + _IMAGE_BYTES
    if len(data) == 0 or len(data) % rec:
        raise UserError(f"{what}: {len(data)} bytes is not a whole number of {rec}-byte records (truncated?)")
    table = np.frombuffer(data, np.uint8).reshape(-1, rec)
    y = _check_labels(table[:, label_col], classes, what)
    x = table[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


def _cifar_binary(name: str, folder: str):
    """(x_train, y_train, x_test, y_test) from the binary archive or its extracted folder in `folder`."""
    archive, inner, train_files, test_files, label_bytes, label_col, classes = _CIFAR[name]
    names = [*(("train", f) for f in train_files), *(("test", f) for f in test_files)]
    tar_path = os.path.join(folder, archive)
    if os.path.isfile(tar_path):
        blobs = _read_tar(tar_path, {f"{inner}/{f}": f for _, f in names})
        where = {f: f"{tar_path}:{inner}/{f}" for _, f in names}
    else:
        base = next(
            (
                d
                for d in (os.path.join(folder, inner), folder)
                if all(os.path.isfile(os.path.join(d, f)) for _, f in names)
            ),
            None,
        )
        if base is None:
            pickled = [p for p in _PICKLED[name] if os.path.exists(os.path.join(folder, p))]
            if pickled:
                raise UserError(
                    f"{name}: {os.path.join(folder, pickled[0])} is the python (pickle) version, "
                    f"which is never unpickled; get {archive} (binary version) instead"
                )
            raise UserError(
                f"{name}: neither {archive} nor {inner}/ with {', '.join(f for _, f in names)} "
                f"in {folder}; {_cifar_howto(name)}"
            )
        blobs, where = {}, {}
        for _, f in names:
            p = os.path.join(base, f)
            where[f] = p
            try:
                with open(p, "rb") as fh:
                    blobs[f] = fh.read()
            except OSError as e:
                raise UserError(f"{p}: cannot read ({e.strerror or e})") from None
    parts = {"train": [], "test": []}
    for split, f in names:
        parts[split].append(_parse_cifar_bin(blobs[f], where[f], label_bytes, label_col, classes))
    x_tr, y_tr = (np.concatenate(a) for a in zip(*parts["train"]))
    x_te, y_te = (np.concatenate(a) for a in zip(*parts["test"]))
    return x_tr, y_tr, x_te, y_te


def _cifar_tfds(name: str, data_dir: str | None):
    """(x_train, y_train, x_test, y_test) from a prepared tensorflow-datasets array_record build.

    Records are put back in the official order by their ``id`` (``train_00000`` ...), so the last-5,000
    validation split is the same images as with the binary archives.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(f"{name}: tensorflow-datasets is not installed; {_cifar_howto(name)}") from None
    classes = _CIFAR[name][6]
    out = []
    for split in ("train", "test"):
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises NotImplementedError / FileNotFoundError / AssertionError ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"{name}: no tensorflow-datasets array_record build found ({first}); {_cifar_howto(name)}"
            ) from None
        n = len(source)
        x = np.empty((n, 32, 32, 3), np.uint8)
        y = np.empty((n,), np.int64)
        ids = []
        for i in range(n):
            r = source[i]
            x[i], y[i] = r["image"], r["label"]
            rid = r.get("id", "")
            ids.append(rid.decode() if isinstance(rid, bytes) else str(rid))
        order = np.argsort(np.asarray(ids), kind="stable")
        out += [x[order], _check_labels(y[order], classes, f"{name} tfds {split} labels")]
    return tuple(out)


def cifar(
    name: str,
    source: str = "auto",
    data_dir: str | None = None,
    *,
    expected_counts: tuple[int, int] | None = (50000, 10000),
    n_val: int = CIFAR_VAL,
) -> Raw:
    """Reads CIFAR-10 or CIFAR-100 (fine labels).

    Sources:
        * ``"binary"``: the official binary archive (``cifar-10-binary.tar.gz`` with
          ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``test_batch.bin``; ``cifar-100-binary.tar.gz``
          with ``cifar-100-binary/train.bin`` and ``test.bin``) in the folder `data_dir`, default
          ``$NTK_VS_NN_CIFAR_DIR``; members are read in memory, names with an absolute path or ``..`` are
          refused. The extracted folder (or its files directly in `data_dir`) works too. Each record is
          1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine) label bytes then 3072 bytes of CHW pixels.
        * ``"tfds"``: ``tensorflow_datasets.data_source(name, split, data_dir=data_dir, download=False)``
          (an ``array_record`` build; no tensorflow needed to read it).
        * ``"auto"``: the binary folder when one is given (argument or env) and holds the files, else tfds,
          else a UserError that says how to get the data.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        source: ``"auto"``, ``"binary"`` or ``"tfds"``.
        data_dir: the archive folder (binary) or the tfds data dir (tfds; None = tfds' default).
        expected_counts: (train, test) counts to insist on; None accepts any.
        n_val: size of the validation split, the last `n_val` training examples (PROTOCOLS.md: 5,000).

    Returns:
        `Raw` with x (N, 32, 32, 3) uint8 in the official order, y (N,) int32, ``n_val_last=n_val``.

    Raises:
        UserError: unknown name or source, missing data, a pickled archive only, unsafe tar member,
            truncated records, label out of range, count mismatch, `n_val` not below the train count.
    """
    if name not in _CIFAR:
        raise UserError(f"unknown CIFAR data set {name!r}; valid: {', '.join(_CIFAR)}")
    if source not in ("auto", "binary", "tfds"):
        raise UserError(f"unknown CIFAR source {source!r}; valid: auto, binary, tfds")
    folder = data_dir if data_dir is not None else os.environ.get(CIFAR_ENV)
    folder = os.path.expanduser(folder) if folder else None
    if source == "binary":
        if not folder:
            raise UserError(f"{name}: no folder given for the binary archives; {_cifar_howto(name)}")
        if not os.path.isdir(folder):
            raise UserError(f"{name}: folder {folder} not found; {_cifar_howto(name)}")
        arrays = _cifar_binary(name, folder)
    elif source == "tfds":
        arrays = _cifar_tfds(name, data_dir)
    else:
        archive, inner = _CIFAR[name][:2]
        has_binary = folder and any(
            os.path.exists(os.path.join(folder, p)) for p in (archive, inner, "test.bin", "test_batch.bin")
        )
        if has_binary:
            arrays = _cifar_binary(name, folder)
        else:
            try:
                arrays = _cifar_tfds(name, data_dir)
            except UserError:
                where = f"in {folder}" if folder else f"(${CIFAR_ENV} unset)"
                raise UserError(
                    f"{name}: no binary archive {where} and no tensorflow-datasets build; {_cifar_howto(name)}"
                ) from None
    x_tr, y_tr, x_te, y_te = arrays
    _check_counts(len(y_tr), len(y_te), expected_counts, name)
    if not 0 <= n_val < len(y_tr):
        raise UserError(f"{name}: n_val={n_val} must be in [0, {len(y_tr)}) (the training examples)")
    return Raw(x_tr, y_tr, x_te, y_te, n_val)


# ------------------------------------------------------------------------------------------------ augmentation


def augment(key: jax.Array, x: jax.Array, pad: int = 4) -> jax.Array:
    """CIFAR augmentation on device: random crop after zero padding (``pad`` pixels, PROTOCOLS.md: 4),
    then a random horizontal flip, per example (`transforms.crop_flip`; draws only from ``key``).

    Example:
        >>> x = jnp.ones((8, 32, 32, 3))
        >>> augment(jax.random.key(0), x).shape
        (8, 32, 32, 3)
    """
    return crop_flip(key, x, pad=pad, flip=True)

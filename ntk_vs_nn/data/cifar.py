"""CIFAR-10/100 from the official binary archives or a tensorflow-datasets build, and CIFAR's augmentation.

`cifar` returns a `Raw` (`ntk_vs_nn.data.images`) whose ``n_val_last`` is the fixed validation split
(PROTOCOLS.md §4: the last 5,000 of the official 50,000 training images).

Nothing here unpickles a file: CIFAR's "python version" archives are pickles and are refused; the
official *binary* version (or a tensorflow-datasets ``array_record`` build) is read instead.

Where the data comes from:
    * CIFAR: ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz`` (or their extracted folders) in the
      folder named by ``$NTK_VS_NN_CIFAR_DIR`` or ``data_dir``; or a tensorflow-datasets ``array_record``
      build (``tfds build cifar10 --file_format=array_record``, which needs tensorflow at build time only;
      reading it needs only ``tensorflow-datasets`` and ``array_record``).

Examples:
    >>> raw = cifar("cifar10", source="binary", data_dir="~/data")   # doctest: +SKIP
    >>> raw.x_train.shape, raw.n_val_last         # doctest: +SKIP
    ((50000, 32, 32, 3), 5000)
    >>> x = jnp.asarray(raw.x_train[:128], jnp.float32) / 255.0      # doctest: +SKIP
    >>> x_aug = augment(jax.random.key(0), x)     # same shape, cropped and flipped per example
"""

from __future__ import annotations

import os
import tarfile
import zlib

import jax
import numpy as np

from ntk_vs_nn.config import UserError
from ntk_vs_nn.data.images import Raw, _check_counts, _check_labels
from ntk_vs_nn.data.transforms import crop_flip

CIFAR_ENV = "NTK_VS_NN_CIFAR_DIR"
CIFAR_VAL = 5000  # PROTOCOLS.md §4: the last 5,000 training images validate

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

"""Real-data loaders on tiny generated files (IDX, CIFAR binary, tfds mock) and the CIFAR augmentation."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_vs_nn.config import UserError
from ntk_vs_nn.data import cifar, images

# ----------------------------------------------------------------------------------------------- Fashion-MNIST


def _idx(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, np.uint8)
    return struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_fashion(d, n_train=5, n_test=3, gz=True, seed=0, **override):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    d.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        data = override.get(stem, _idx(a))
        if gz:
            (d / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (d / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_idx(tmp_path, gz):
    a = _write_fashion(tmp_path, gz=gz)
    raw = images.fashion_mnist(str(tmp_path), expected_counts=(5, 3))
    assert raw.x_train.shape == (5, 28, 28, 1) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (3, 28, 28, 1)
    assert raw.y_train.dtype == np.int32 and raw.n_val_last is None
    np.testing.assert_array_equal(raw.x_train[..., 0], a["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw.y_test, a["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_env_default_and_counts(tmp_path, monkeypatch):
    _write_fashion(tmp_path)
    monkeypatch.setenv(images.FASHION_MNIST_ENV, str(tmp_path))
    assert len(images.fashion_mnist(expected_counts=None).y_train) == 5
    with pytest.raises(UserError, match="expected 60000 / 10000"):
        images.fashion_mnist()


def test_fashion_mnist_missing_directory_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError) as e:
        images.fashion_mnist(str(tmp_path / "nope"))
    msg = str(e.value)
    assert "\n" not in msg and "get_fashion_mnist.sh" in msg and "apt-get install dataset-fashion-mnist" in msg
    assert images.FASHION_MNIST_ENV in msg


def test_fashion_mnist_missing_file(tmp_path):
    _write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.*not found.*get_fashion_mnist.sh"):
        images.fashion_mnist(str(tmp_path), expected_counts=None)


@pytest.mark.parametrize(
    "stem, data, match",
    [
        ("train-images-idx3-ubyte", struct.pack(">4I", 0x0801, 1, 28, 28) + bytes(784), "bad IDX magic"),
        ("train-images-idx3-ubyte", _idx(np.zeros((5, 28, 28)))[:-10], "truncated IDX"),
        ("train-images-idx3-ubyte", b"\x00\x00\x08", "truncated IDX"),
        ("train-images-idx3-ubyte", _idx(np.zeros((5, 27, 28))), "expected \\(N, 28, 28\\)"),
        ("train-labels-idx1-ubyte", _idx(np.array([0, 1, 2, 10, 3])), "label 10 out of range"),
        ("train-labels-idx1-ubyte", _idx(np.array([0, 1, 2])), "5 images but 3 labels"),
    ],
)
def test_fashion_mnist_bad_files(tmp_path, stem, data, match):
    _write_fashion(tmp_path, **{stem: data})
    with pytest.raises(UserError, match=match):
        images.fashion_mnist(str(tmp_path), expected_counts=None)


def test_fashion_mnist_truncated_gzip(tmp_path):
    _write_fashion(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt or truncated gzip"):
        images.fashion_mnist(str(tmp_path), expected_counts=None)


# ------------------------------------------------------------------------------------------------------- CIFAR


def _cifar_records(x_nhwc, labels) -> bytes:
    """Binary CIFAR records: label bytes (one column per label kind) then CHW pixels."""
    labels = np.asarray(labels, np.uint8).reshape(len(x_nhwc), -1)
    chw = np.asarray(x_nhwc, np.uint8).transpose(0, 3, 1, 2).reshape(len(x_nhwc), -1)
    return np.concatenate([labels, chw], axis=1).tobytes()


def _fake_cifar(name, per_file=2, n_test=3, seed=0):
    """member name -> bytes, and the expected (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        inner, train_files, test_file, classes = (
            "cifar-10-batches-bin",
            [f"data_batch_{i}.bin" for i in range(1, 6)],
            "test_batch.bin",
            10,
        )
    else:
        inner, train_files, test_file, classes = "cifar-100-binary", ["train.bin"], "test.bin", 100
    members, xs, ys = {}, [], []
    for f in train_files:
        x = rng.integers(0, 256, (per_file, 32, 32, 3))
        y = rng.integers(0, classes, per_file)
        lab = y if name == "cifar10" else np.stack([rng.integers(0, 20, per_file), y], 1)
        members[f"{inner}/{f}"] = _cifar_records(x, lab)
        xs.append(x)
        ys.append(y)
    xt, yt = rng.integers(0, 256, (n_test, 32, 32, 3)), rng.integers(0, classes, n_test)
    members[f"{inner}/{test_file}"] = _cifar_records(xt, yt if name == "cifar10" else np.stack([yt // 5, yt], 1))
    return members, (np.concatenate(xs), np.concatenate(ys), xt, yt)


def _write_tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _archive(name):
    return {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}[name]


def _check(raw, expected, n_val):
    x_tr, y_tr, x_te, y_te = expected
    assert raw.x_train.shape == (len(y_tr), 32, 32, 3) and raw.x_train.dtype == np.uint8
    assert raw.y_train.dtype == np.int32 and raw.n_val_last == n_val
    np.testing.assert_array_equal(raw.x_train, x_tr)
    np.testing.assert_array_equal(raw.y_train, y_tr)
    np.testing.assert_array_equal(raw.x_test, x_te)
    np.testing.assert_array_equal(raw.y_test, y_te)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("layout", ["tar", "extracted"])
def test_cifar_binary(tmp_path, name, layout):
    members, expected = _fake_cifar(name)
    if layout == "tar":
        _write_tar(tmp_path / _archive(name), members)
    else:
        for m, data in members.items():
            (tmp_path / m).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / m).write_bytes(data)
    n_train = len(expected[1])
    raw = cifar.cifar(name, "binary", str(tmp_path), expected_counts=(n_train, 3), n_val=1)
    _check(raw, expected, 1)
    raw = cifar.cifar(name, "auto", str(tmp_path), expected_counts=None, n_val=1)  # auto prefers the binary
    _check(raw, expected, 1)


def test_cifar_env_folder_and_official_counts(tmp_path, monkeypatch):
    members, expected = _fake_cifar("cifar10")
    _write_tar(tmp_path / _archive("cifar10"), members)
    monkeypatch.setenv(cifar.CIFAR_ENV, str(tmp_path))
    _check(cifar.cifar("cifar10", "binary", expected_counts=None, n_val=1), expected, 1)
    with pytest.raises(UserError, match="expected 50000 / 10000"):
        cifar.cifar("cifar10", "binary")
    with pytest.raises(UserError, match="n_val=10 must be in"):
        cifar.cifar("cifar10", "binary", expected_counts=None, n_val=10)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_truncated_record(tmp_path, name):
    members, _ = _fake_cifar(name)
    key = next(iter(members))
    members[key] = members[key][:-1]
    _write_tar(tmp_path / _archive(name), members)
    with pytest.raises(UserError, match="not a whole number of .*-byte records"):
        cifar.cifar(name, "binary", str(tmp_path), expected_counts=None)


@pytest.mark.parametrize("name, bad", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_label_out_of_range(tmp_path, name, bad):
    members, _ = _fake_cifar(name)
    key = next(iter(members))
    data = bytearray(members[key])
    data[1 if name == "cifar100" else 0] = bad  # first record's (fine) label
    members[key] = bytes(data)
    _write_tar(tmp_path / _archive(name), members)
    with pytest.raises(UserError, match=f"label {bad} out of range \\[0, {bad}\\)"):
        cifar.cifar(name, "binary", str(tmp_path), expected_counts=None)


@pytest.mark.parametrize("evil", ["../evil.bin", "cifar-10-batches-bin/../../evil.bin", "/etc/evil.bin"])
def test_cifar_tar_rejects_unsafe_members(tmp_path, evil):
    members, _ = _fake_cifar("cifar10")
    members = {evil: b"x", **members}
    _write_tar(tmp_path / _archive("cifar10"), members)
    with pytest.raises(UserError, match="unsafe member name"):
        cifar.cifar("cifar10", "binary", str(tmp_path), expected_counts=None)
    assert not (tmp_path.parent / "evil.bin").exists()


def test_cifar_tar_missing_member_and_corrupt_archive(tmp_path):
    members, _ = _fake_cifar("cifar10")
    del members["cifar-10-batches-bin/test_batch.bin"]
    _write_tar(tmp_path / _archive("cifar10"), members)
    with pytest.raises(UserError, match="missing members cifar-10-batches-bin/test_batch.bin"):
        cifar.cifar("cifar10", "binary", str(tmp_path), expected_counts=None)
    (tmp_path / _archive("cifar10")).write_bytes(b"\x1f\x8bnot really")
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        cifar.cifar("cifar10", "binary", str(tmp_path), expected_counts=None)


def test_cifar_refuses_pickled_python_version(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"whatever")
    with pytest.raises(UserError, match="pickle.*never unpickled.*cifar-10-binary.tar.gz"):
        cifar.cifar("cifar10", "binary", str(tmp_path), expected_counts=None)


def test_cifar_missing_data_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv(cifar.CIFAR_ENV, raising=False)
    with pytest.raises(UserError, match="folder .* not found; put cifar-100-binary.tar.gz"):
        cifar.cifar("cifar100", "binary", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no folder given"):
        cifar.cifar("cifar10", "binary")
    # auto: empty folder, and no tfds build in it either (or no tfds at all)
    with pytest.raises(UserError) as e:
        cifar.cifar("cifar10", "auto", str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "cifar-10-binary.tar.gz" in msg and "tfds build cifar10" in msg


def test_cifar_bad_arguments():
    with pytest.raises(UserError, match="unknown CIFAR data set 'svhn'"):
        cifar.cifar("svhn")
    with pytest.raises(UserError, match="unknown CIFAR source 'web'"):
        cifar.cifar("cifar10", source="web")


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_tfds_mock(name, classes):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        raw = cifar.cifar(name, "tfds", expected_counts=(6, 6), n_val=2)
    assert raw.x_train.shape == (6, 32, 32, 3) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (6, 32, 32, 3)
    assert raw.y_train.dtype == np.int32 and raw.n_val_last == 2
    assert raw.y_train.min() >= 0 and raw.y_train.max() < classes


def test_cifar_tfds_without_build(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(UserError, match="no tensorflow-datasets array_record build found.*tfds build cifar10"):
        cifar.cifar("cifar10", "tfds", str(tmp_path))


# ------------------------------------------------------------------------------------------------ augmentation


def _candidates(img: np.ndarray, pad: int) -> np.ndarray:
    """Every (2*pad+1)^2 crop of the zero-padded image, unflipped and flipped: (K, H, W, C)."""
    h, w, _ = img.shape
    p = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    crops = [p[i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return np.stack(crops + [c[:, ::-1] for c in crops])


def test_augment_shape_dtype_determinism():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 32, 32, 3)), jnp.float32)
    a = cifar.augment(jax.random.key(1), x)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, cifar.augment(jax.random.key(1), x))
    assert not np.array_equal(a, cifar.augment(jax.random.key(2), x))
    assert cifar.augment(jax.random.key(0), jnp.zeros((2, 8, 8, 1), jnp.uint8)).dtype == jnp.uint8


def test_augment_is_crop_and_flip_of_the_input():
    pad, n = 4, 600
    # Distinct positive pixel values, so each output matches exactly one (offset, flip) and padding shows as 0.
    base = 1.0 + np.arange(6 * 6 * 2, dtype=np.float32).reshape(6, 6, 2)
    x = np.broadcast_to(base, (n, 6, 6, 2))
    out = np.asarray(cifar.augment(jax.random.key(3), jnp.asarray(x), pad=pad))
    cands = _candidates(base, pad)  # (162, 6, 6, 2); index 40 = unshifted, 40 + 81 = unshifted flipped
    hits = (out[:, None] == cands[None]).all(axis=(2, 3, 4))  # (n, 162)
    assert (hits.sum(1) == 1).all(), "every output is exactly one crop (+ flip) of its padded input"
    which = hits.argmax(1)
    centre = (2 * pad + 1) ** 2 // 2
    assert (which == centre).any(), "an unshifted, unflipped example occurs"
    assert (which != centre).mean() > 0.9, "most examples are moved or flipped"
    assert (which >= 81).any() and (which < 81).any(), "both flipped and unflipped examples"
    offsets = which % 81
    assert len(np.unique(offsets)) == 81, "every crop offset in [0, 2*pad] x [0, 2*pad] is used"


def test_augment_per_example_and_content_preserved():
    rng = np.random.default_rng(0)
    x = (1.0 + rng.permutation(8 * 10 * 10 * 3)).astype(np.float32).reshape(8, 10, 10, 3)
    out = np.asarray(cifar.augment(jax.random.key(5), jnp.asarray(x)))
    for i in range(len(x)):
        hits = (out[i][None] == _candidates(x[i], 4)).all(axis=(1, 2, 3))
        assert hits.sum() == 1
        # Pixels kept are the input's; the rest is the zero padding.
        kept = out[i][out[i] != 0]
        assert np.isin(kept, x[i]).all()
    assert len({out[i].tobytes() for i in range(len(x))}) == len(x)


# ------------------------------------------------------------------------------------- no machine dataset in tests


def test_a_test_run_cannot_read_a_dataset_installed_on_the_machine(tmp_path, monkeypatch):
    """The guard of tests/conftest.py, planted case: a readable Fashion-MNIST in the folder a run reads by
    default (Debian's, here pointed at a planted copy) is read with the guard off and refused under it, in
    this process and in a CLI process a test starts; so a test that reads a system dataset fails on a
    developer's machine that has one, not only on a fresh one."""
    import os
    import subprocess
    import sys

    from conftest import DATA_ENV, NO_DATASETS

    from ntk_vs_nn.config import DataConfig
    from ntk_vs_nn.data import load_dataset

    system = tmp_path / "system"
    _write_fashion(system, n_train=30, n_test=10)
    monkeypatch.setattr(images, "FASHION_MNIST_DEFAULT_DIR", str(system))
    with monkeypatch.context() as m:  # the guard off: the run reads the planted system folder
        m.delenv(images.FASHION_MNIST_ENV)
        assert len(images.fashion_mnist(expected_counts=None).y_train) == 30
    assert all(os.environ[k] == NO_DATASETS for k in DATA_ENV) and os.listdir(NO_DATASETS) == []
    with pytest.raises(UserError, match=f"{NO_DATASETS}.*not found"):
        load_dataset("fashion_mnist", DataConfig(), seed=0)
    with pytest.raises(UserError, match="cifar10: no binary archive"):
        load_dataset("cifar10", DataConfig(), seed=0)
    argv = [sys.executable, "-m", "ntk_vs_nn", "table", "nn", "--preset", "smoke", "--dataset", "fashion_mnist"]
    proc = subprocess.run([*argv, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and NO_DATASETS in proc.stderr, proc.stderr


@pytest.mark.parametrize("like,shape,classes", [("fashion_mnist", (28, 28, 1), 10), ("cifar100", (32, 32, 3), 100)])
def test_synthetic_images_have_the_real_sets_shape_and_balanced_labels(like, shape, classes):
    raw = images.synthetic(like, 300, 200)
    assert raw.x_train.shape == (300, *shape) and raw.x_test.shape == (200, *shape) and raw.x_train.dtype == np.uint8
    assert raw.n_val_last is None and raw.y_train.dtype == np.int32
    counts = np.bincount(raw.y_train, minlength=classes)
    assert counts.max() - counts.min() <= 1
    again = images.synthetic(like, 300, 200)
    assert all(np.array_equal(a, b) for a, b in zip(raw[:4], again[:4]))
    with pytest.raises(UserError, match="unknown"):
        images.synthetic("svhn")


def test_synthetic_images_are_learnable_from_their_class_prototypes():
    """A ridge regression on pixels beats chance by far on held-out images (a smoke run can learn them)."""
    raw = images.synthetic("fashion_mnist", 1000, 500)
    x = raw.x_train.reshape(1000, -1) / 255.0
    w = np.linalg.solve(x.T @ x + 10.0 * np.eye(x.shape[1]), x.T @ np.eye(10)[raw.y_train])
    acc = np.mean(np.argmax(raw.x_test.reshape(500, -1) / 255.0 @ w, 1) == raw.y_test)
    assert acc > 0.4, acc

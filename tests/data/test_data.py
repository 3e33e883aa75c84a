"""Datasets: user arrays from ``npz:PATH`` (layout, split, every kind of bad file) and MNIST-1D."""

import dataclasses

import numpy as np
import pytest

from ntk_vs_nn.config import DataConfig, UserError
from ntk_vs_nn.data import load_dataset

N_TR, N_TE, D = 40, 12, 10


def _arrays(seed=0):
    """x_train row i starts with the value i, so rows can be traced through the split."""
    rs = np.random.RandomState(seed)
    x_train = rs.randn(N_TR, D)
    x_train[:, 0] = np.arange(N_TR)
    y_train = np.arange(N_TR) % 3
    x_test = rs.randn(N_TE, D)
    x_test[:, 0] = 1000 + np.arange(N_TE)
    y_test = np.arange(N_TE) % 3
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def _save(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return f"npz:{path}"


RAW = DataConfig(val_fraction=0.25, standardize=False, n_test=0)


def test_npz_2d_arrays_become_1d_signals_with_one_channel(tmp_path):
    spec = _save(tmp_path, **_arrays())
    ds = load_dataset(spec, RAW, seed=0)
    n_val = round(0.25 * N_TR)
    assert ds.x_train.shape == (N_TR - n_val, D, 1) and ds.x_val.shape == (n_val, D, 1)
    assert ds.x_test.shape == (N_TE, D, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.y_train.shape == (N_TR - n_val,) and ds.y_val.shape == (n_val,) and ds.y_test.shape == (N_TE,)
    assert ds.num_classes == 3
    assert ds.spatial_ndim == 1


def test_npz_4d_images_keep_their_layout(tmp_path):
    a = _arrays()
    a["x_train"] = np.random.RandomState(0).rand(N_TR, 6, 5, 2).astype(np.float32)
    a["x_test"] = np.random.RandomState(1).rand(N_TE, 6, 5, 2).astype(np.float32)
    ds = load_dataset(_save(tmp_path, **a), RAW, seed=0)
    assert ds.x_train.shape[1:] == (6, 5, 2) and ds.x_test.shape == (N_TE, 6, 5, 2)
    assert ds.spatial_ndim == 2


def test_npz_split_keeps_rows_with_their_labels_and_test_untouched(tmp_path):
    a = _arrays()
    ds = load_dataset(_save(tmp_path, **a), RAW, seed=0)
    ids_train = ds.x_train[:, 0, 0].astype(int)
    ids_val = ds.x_val[:, 0, 0].astype(int)
    assert not set(ids_train) & set(ids_val)  # disjoint
    assert sorted(np.concatenate([ids_train, ids_val])) == list(range(N_TR))  # nothing lost
    np.testing.assert_allclose(ds.x_train[:, :, 0], a["x_train"][ids_train], rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, a["y_train"][ids_train])
    np.testing.assert_array_equal(ds.y_val, a["y_train"][ids_val])
    np.testing.assert_allclose(ds.x_test[:, :, 0], a["x_test"], rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, a["y_test"])


def test_npz_validation_split_is_deterministic_per_seed_and_differs_across_seeds(tmp_path):
    spec = _save(tmp_path, **_arrays())
    val_ids = lambda seed: tuple(load_dataset(spec, RAW, seed=seed).x_val[:, 0, 0].astype(int))
    assert val_ids(0) == val_ids(0)
    assert val_ids(1) == val_ids(1)
    assert set(val_ids(0)) != set(val_ids(1))


def test_npz_n_test_keeps_the_first_test_samples(tmp_path):
    ds = load_dataset(_save(tmp_path, **_arrays()), dataclasses.replace(RAW, n_test=5), seed=0)
    np.testing.assert_array_equal(ds.x_test[:, 0, 0], 1000 + np.arange(5))


def test_npz_standardize_maps_every_split_by_the_training_statistics(tmp_path):
    a = _arrays()
    a["x_train"] = a["x_train"] * 5 + 3
    a["x_test"] = a["x_test"] * 5 + 40  # a shifted test set must not be standardised by itself
    spec = _save(tmp_path, **a)
    raw = load_dataset(spec, RAW, seed=0)  # same seed, same split, unstandardised
    std = load_dataset(spec, dataclasses.replace(RAW, standardize=True), seed=0)
    raw_train = np.concatenate([raw.x_train, raw.x_val]).reshape(N_TR, D).astype(np.float64)
    out_train = np.concatenate([std.x_train, std.x_val]).reshape(N_TR, D).astype(np.float64)
    # one scalar affine map x -> slope * x + intercept for every feature and every split
    slope, intercept = np.polyfit(raw_train.ravel(), out_train.ravel(), 1)
    np.testing.assert_allclose(out_train, raw_train * slope + intercept, rtol=1e-4, atol=1e-4)
    out_test = std.x_test.reshape(N_TE, D)
    np.testing.assert_allclose(out_test, a["x_test"] * slope + intercept, rtol=1e-4, atol=1e-4)
    assert abs(out_train.mean()) < 0.15 and abs(out_train.std() - 1) < 0.15  # training data standardised
    assert std.x_test.mean() > 1.0  # the shifted test set is not re-centred


# -- bad input: one UserError, never a traceback --------------------------------------------------
def test_missing_npz_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}", RAW, seed=0)


def test_garbage_npz_file_is_a_user_error(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"this is not a zip archive \x00\x01\x02" * 10)
    with pytest.raises(UserError):
        load_dataset(f"npz:{path}", RAW, seed=0)


def test_truncated_npz_file_is_a_user_error(tmp_path):
    spec = _save(tmp_path, **_arrays())
    path = spec[4:]
    blob = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])
    with pytest.raises(UserError):
        load_dataset(spec, RAW, seed=0)


def test_plain_npy_file_given_as_npz_is_a_user_error(tmp_path):
    # np.load returns an ndarray (not an NpzFile) for a .npy file
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((4, 3)))
    with pytest.raises(UserError):
        load_dataset(f"npz:{path}", RAW, seed=0)


def test_unknown_dataset_name_is_a_user_error():
    with pytest.raises(UserError, match="mnist1d"):
        load_dataset("cifar11", RAW, seed=0)


def _bad(**changes):
    a = _arrays()
    for key, value in changes.items():
        if value is None:
            del a[key]
        else:
            a[key] = value(a) if callable(value) else value
    return a


def _poison(x, row, value):
    x = x.copy()
    x[row, 2] = value
    return x


BAD = {  # case: (arrays, a word the error message must contain)
    "missing y_test": (_bad(y_test=None), "y_test"),
    "missing x_train": (_bad(x_train=None), "x_train"),
    "labels (N, 1)": (_bad(y_train=lambda a: a["y_train"][:, None]), "y_train"),
    "labels one short": (_bad(y_train=lambda a: a["y_train"][:-1]), "y_train"),
    "float labels": (_bad(y_train=lambda a: a["y_train"].astype(np.float32)), "integer"),
    "negative label": (_bad(y_test=lambda a: np.where(np.arange(N_TE) == 0, -1, a["y_test"])), "negative"),
    "NaN in x_train": (_bad(x_train=lambda a: _poison(a["x_train"], 3, np.nan)), "NaN"),
    "inf in x_test": (_bad(x_test=lambda a: _poison(a["x_test"], 1, np.inf)), "x_test"),
    "sample shapes differ": (_bad(x_test=lambda a: np.zeros((N_TE, D + 1))), "shape"),
    "string x": (_bad(x_train=lambda a: a["x_train"].astype(str)), "numeric"),
    "string labels": (_bad(y_train=lambda a: a["y_train"].astype(str)), "integer"),
    "object x": (_bad(x_train=lambda a: a["x_train"].astype(object)), "npz"),
    "one class": (_bad(y_train=lambda a: np.zeros(N_TR, int)), "class"),
    "x is 1-D": (_bad(x_train=lambda a: a["x_train"][:, 0]), "x_train"),
    "empty test": (_bad(x_test=lambda a: a["x_test"][:0], y_test=lambda a: a["y_test"][:0]), "empty"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_npz_content_is_a_user_error(case, tmp_path):
    arrays, word = BAD[case]
    spec = _save(tmp_path, **arrays)
    with pytest.raises(UserError, match=word):
        load_dataset(spec, RAW, seed=0)


def test_too_few_training_samples_for_the_split_is_a_user_error(tmp_path):
    a = _arrays()
    a["x_train"], a["y_train"] = a["x_train"][:3], np.array([0, 1, 2])
    with pytest.raises(UserError):
        load_dataset(_save(tmp_path, **a), dataclasses.replace(RAW, val_fraction=0.5), seed=0)


# -- MNIST-1D -----------------------------------------------------------------------------------------
def test_mnist1d_small_has_40_step_signals_and_10_classes():
    cfg = DataConfig(n_train=200, n_test=100, val_fraction=0.1)
    ds = load_dataset("mnist1d", cfg, seed=0)
    assert ds.x_train.shape == (180, 40, 1) and ds.x_val.shape == (20, 40, 1)
    assert ds.x_test.shape == (100, 40, 1)
    assert ds.num_classes == 10
    assert set(np.unique(ds.y_train)) <= set(range(10)) and len(np.unique(ds.y_train)) == 10
    assert np.isfinite(ds.x_train).all()
    state = np.random.get_state()[1].copy()
    load_dataset("mnist1d", cfg, seed=0)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # numpy's global RNG untouched

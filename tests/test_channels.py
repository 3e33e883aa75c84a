"""Figure 6 (ntk_vs_nn/experiments/channels.py, data/channels.py, report/channels.py): split / average
shapes and values, the claim rules, the Fashion-MNIST -> MNIST-1D fallback, a tiny end-to-end run
through the store, resume, the tables regenerated from the records, and bad --set input."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pandas as pd
import pytest

from ntk_vs_nn.config import UserError
from ntk_vs_nn.data import channels as cd
from ntk_vs_nn.experiments import channels as ch
from ntk_vs_nn.experiments import load_config, run_experiment
from ntk_vs_nn.report import channels as rc
from ntk_vs_nn.store import Store


@pytest.fixture(scope="module")
def fmap():
    return np.random.RandomState(0).randn(6, 5, 4, 16).astype(np.float32)  # (N, H, W, C = 16)


@pytest.mark.parametrize("s", [1, 2, 4, 8])
def test_split_keeps_a_random_subset_of_channels(fmap, s):
    key = jax.random.key(3)
    out = cd.transform(fmap, f"split_{s}", key)
    assert out.shape == fmap.shape[:-1] + (16 // s,)
    idx = cd.split_indices(key, 16, s)
    assert len(set(idx.tolist())) == 16 // s and np.all(np.diff(idx) > 0) and idx.max() < 16
    np.testing.assert_array_equal(out, fmap[..., idx])
    np.testing.assert_array_equal(cd.transform(fmap, f"split_{s}", key), out)  # same key, same subset
    if s > 1:
        others = {tuple(cd.split_indices(jax.random.key(i), 16, s)) for i in range(8)}
        assert len(others) > 1  # keys draw different subsets


@pytest.mark.parametrize("gsize", [2, 4, 8])
def test_average_is_the_mean_of_each_group(fmap, gsize):
    out = cd.transform(fmap, f"avg_{gsize}")
    assert out.shape == fmap.shape[:-1] + (16 // gsize,)
    for j in range(16 // gsize):
        np.testing.assert_allclose(out[..., j], fmap[..., j * gsize : (j + 1) * gsize].mean(-1), rtol=1e-6)
    np.testing.assert_allclose(out.mean(-1), fmap.mean(-1), rtol=1e-5, atol=1e-6)  # groups partition C


def test_transform_edge_cases(fmap):
    np.testing.assert_array_equal(cd.transform(fmap, "original"), fmap)
    with pytest.raises(UserError, match="do not divide"):
        cd.transform(fmap[..., :6], "avg_4")
    for bad in ("split", "avg_x", "mean_2", "split_0"):
        with pytest.raises(UserError):
            cd.parse_variant(bad)
    one_d = np.arange(2 * 7 * 8, dtype=np.float32).reshape(2, 7, 8)  # 1-D maps (N, L, C) work alike
    assert cd.transform(one_d, "avg_2").shape == (2, 7, 4)
    assert cd.transform(one_d, "split_8", jax.random.key(0)).shape == (2, 7, 1)


def test_standardize_per_channel(fmap):
    tr, te = cd.standardize(fmap * np.arange(1, 17) + 3.0, fmap)
    np.testing.assert_allclose(tr.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(tr.std((0, 1, 2)), 1, atol=1e-4)
    assert te.shape == fmap.shape


def test_claim_rules_on_made_up_numbers():
    grows = {"original": (70, 0.3, 74), "split_2": (68, 0.3, 73.5), "split_4": (65, 0.3, 73),
             "avg_2": (68, 0.3, 71.5), "avg_4": (65, 0.3, 69)}  # fmt: skip
    v = {c["claim"][0]: c["verdict"] for c in rc.claims(grows)}
    assert v == {"A": "holds", "B": "holds", "C": "holds"}
    flat = {k: (s, sd, s + 4) for k, (s, sd, _) in grows.items()}  # gain constant +4: nothing grows
    v = {c["claim"][0]: c["verdict"] for c in rc.claims(flat)}
    assert v == {"A": "inconclusive", "B": "inconclusive", "C": "inconclusive"}
    shrinks = {k: (s, sd, s + (4 if k == "original" else 1)) for k, (s, sd, _) in grows.items()}
    v = {c["claim"][0]: c["verdict"] for c in rc.claims(shrinks)}
    assert v["A"] == "fails" and v["C"] == "fails"


def test_fashion_mnist_missing_falls_back_to_mnist1d(tmp_path):
    cfg = ch.smoke()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=str(tmp_path / "none")))
    msgs = []
    data, used = cd.load_data(cfg, msgs.append)
    assert used.dataset == "mnist1d" and data.x_train.shape[1:] == (40, 1)
    assert len(msgs) == 1 and "falling back to MNIST-1D" in msgs[0]
    with pytest.raises(UserError, match="Fashion-MNIST"):
        cd.load_data(dataclasses.replace(cfg, fallback=False), msgs.append)


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, "records.jsonl"))]


def outputs(out: str) -> dict:
    return {n: open(os.path.join(out, n)).read() for n in ("table.md", "table.csv", "summary.md")}


# compile time dominates here: 1-D data, small programs, and both variants have 4 channels (one compiled
# student); one run for the module, the tests below work on copies of its folder
TINY = ["dataset=mnist1d", "data.n_train=128", "data.n_test=64", "channels.variants=split_2,avg_2",
        "pretrain.width=2", "student.model=SimpleCNN-2-1"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("channels") / "c")
    return out, run_experiment("channels", "smoke", TINY, out)


def copy_of(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def test_end_to_end_writes_table_and_plot_and_resumes(tiny_run, tmp_path):
    src, written = tiny_run
    out = copy_of(src, tmp_path / "c")
    for name in ("table.md", "table.csv", "plot.png", "config.json", "summary.md", "records.jsonl"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    df = pd.read_csv(os.path.join(out, "table.csv"))
    assert df.variant.tolist() == ["split_2", "avg_2"] and df.channels.tolist() == [4, 4]
    assert (df.status == "ok").all() and df.single_mean.between(0, 100).all()
    assert df.paper_ensemble.notna().all()
    assert open(os.path.join(out, "plot.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(os.path.join(out, "table.md")).read()
    assert "| split_2 | 4 |" in md and "B: averaging raises the gain less" in md
    assert written.text == md and any(v.startswith("Figure 6 claim B:") for v in written.verdicts)
    recs = records(out)
    h = ch.EXPERIMENT.configure("smoke", TINY).science_hash()
    assert [r["unit"] for r in recs] == [f"{h}/backbone", f"{h}/split_2", f"{h}/avg_2"]
    assert all(r["config_hash"] == h and "git_sha" in r and "date" in r for r in recs)
    before = outputs(out)
    again = run_experiment("channels", "smoke", TINY, out)  # resumes: nothing retrained, same outputs
    assert records(out) == recs and again.text == written.text and outputs(out) == before


def test_resume_trains_only_the_missing_variant(tiny_run, tmp_path):
    out = copy_of(tiny_run[0], tmp_path / "c")
    recs = records(out)
    with open(os.path.join(out, "records.jsonl"), "w") as f:  # as if killed before avg_2 was recorded
        f.writelines(json.dumps(r) + "\n" for r in recs[:2])
    run_experiment("channels", "smoke", TINY, out)
    again = records(out)
    assert again[:2] == recs[:2] and [r["unit"] for r in again[2:]] == [recs[2]["unit"]]
    same = ("single_mean", "single_std", "ensemble", "acc_by_size", "final_loss")
    assert {k: again[2][k] for k in same} == {k: recs[2][k] for k in same}  # the backbone retrains alike


def test_write_regenerates_the_tables_from_the_records(tiny_run, tmp_path):
    out = copy_of(tiny_run[0], tmp_path / "c")
    before = outputs(out)
    for n in before:
        os.remove(os.path.join(out, n))
    exp, cfg = load_config(out)  # what `ntk-vs-nn messages --out DIR` does
    assert exp is ch.EXPERIMENT and cfg == ch.EXPERIMENT.configure("smoke", TINY)
    exp.write(cfg, Store(out))
    assert outputs(out) == before
    with pytest.raises(UserError, match="no Figure-6 records"):
        ch.write(ch.smoke(), Store.prepare(str(tmp_path / "empty")))


@pytest.mark.parametrize(
    "bad",
    ["channels.variants=split_x", "student.model=Foo-3", "dataset=imagenet", "train.epochs=abc", "pretrain.stage=5",
     "channels.split_mode=each", "nosuch.key=1", "preset=cpu"],
)  # fmt: skip
def test_bad_set_is_one_error_line_and_writes_nothing(bad, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(UserError) as e:
        run_experiment("channels", None, [bad], str(out))
    assert len(str(e.value).strip().splitlines()) == 1
    assert not out.exists()

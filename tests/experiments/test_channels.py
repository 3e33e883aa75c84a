"""Figure 6 (ntk_vs_nn/experiments/channels.py, data/channels.py, report/channels.py): split / average
shapes and values, the claim rules and their intervals (the bootstrap over test points and students with the
ensembles' jackknife noise, against a naive loop; the Welch rule of older records), the Fashion-MNIST -> MNIST-1D
fallback, a tiny end-to-end run through the store, resume, the tables regenerated from the records, and bad --set
input. (`messages` regenerating the committed results/channels byte-identical, the older records' Welch path:
tests/experiments/test_api.py.)"""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import store_before_student_units, theory_outputs
from scipy import stats

from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.config import UserError
from ntk_vs_nn.data import channels as cd
from ntk_vs_nn.experiments import channels as ch
from ntk_vs_nn.experiments import run_experiment
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
    v = {c["claim"][0]: c["verdict"] for c in rc.claims(grows, 5)}
    assert v == {"A": "holds", "B": "holds", "C": "holds"}
    flat = {k: (s, sd, s + 4) for k, (s, sd, _) in grows.items()}  # gain constant +4: nothing grows
    v = {c["claim"][0]: c["verdict"] for c in rc.claims(flat, 5)}
    assert v == {"A": "inconclusive", "B": "inconclusive", "C": "fails"}  # C: the ensemble loses all 5 points
    shrinks = {k: (s, sd, s + (4 if k == "original" else 1)) for k, (s, sd, _) in grows.items()}
    v = {c["claim"][0]: c["verdict"] for c in rc.claims(shrinks, 5)}
    assert v["A"] == "fails" and v["C"] == "fails"


T_975_DF8 = 2.306004135  # Student t, 97.5 % quantile, 8 degrees of freedom (tables)


@pytest.mark.parametrize("gain_split,verdict", [(5.0, "holds"), (3.0, "fails"), (4.2, "inconclusive")])
def test_claim_a_interval_by_hand(gain_split, verdict):
    """Two variants, L = 5 students each with std 0.3: d = gain(split_2) - gain(original) has
    se^2 = 2 x 0.3^2 / 5 = 0.036 and Welch df = 0.036^2 / (2 (0.018^2 / 4)) = 8, so the interval is
    d -+ 2.306 x sqrt(0.036) = d -+ 0.4375: d = +1 holds, -1 fails, +0.2 is inconclusive."""
    table = {"original": (70.0, 0.3, 74.0), "split_2": (68.0, 0.3, 68.0 + gain_split)}
    a = rc.claims(table, 5)[0]
    half = T_975_DF8 * np.sqrt(0.036)
    assert a["claim"].startswith("A") and a["d"] == pytest.approx(gain_split - 4.0)
    assert (a["ci_low"], a["ci_high"]) == (pytest.approx(a["d"] - half), pytest.approx(a["d"] + half))
    assert a["verdict"] == verdict


def test_claim_interval_depends_on_the_students_count():
    """d = +0.35 with the students' std 0.1: the old band max(0.5 (0.1 + 0.1), 0.2) = 0.2 made it hold
    whatever L. The interval: L = 5, d -+ 2.306 sqrt(0.004) = d -+ 0.146, holds; L = 2 (df = 2,
    t = 4.303, half = 4.303 sqrt(0.01) = 0.43) straddles 0, inconclusive. Unequal L and std give
    Welch's df by hand: (0.1^2/2 + 0.4^2/8)^2 / ((0.1^2/2)^2 / 1 + (0.4^2/8)^2 / 7)."""
    table = {"original": (70.0, 0.1, 74.0), "split_2": (68.0, 0.1, 72.35)}
    assert rc.claims(table, 5)[0]["verdict"] == "holds"
    a = rc.claims(table, 2)[0]
    assert a["ci_high"] - a["d"] == pytest.approx(4.302652730 * 0.1) and a["verdict"] == "inconclusive"
    table = {"original": (70.0, 0.1, 74.0), "split_2": (68.0, 0.4, 72.35)}
    se2 = 0.1**2 / 2 + 0.4**2 / 8
    df = se2**2 / ((0.1**2 / 2) ** 2 / 1 + (0.4**2 / 8) ** 2 / 7)
    a = rc.claims(table, {"original": 2, "split_2": 8})[0]
    assert a["ci_high"] - a["d"] == pytest.approx(stats.t.ppf(0.975, df) * np.sqrt(se2))


def test_claim_c_is_half_the_single_drop_minus_the_ensemble_drop():
    """C: d = drop(single)/2 - drop(ensemble) with coefficients +-1/2 on the single means: se^2 =
    0.25 x 2 x 0.3^2 / 5 = 0.009, df 8. Singles drop 4: the ensemble dropping 1 holds (d = +1), 3
    fails (d = -1), 2 (share exactly 1/2, d = 0) is inconclusive."""
    half = T_975_DF8 * np.sqrt(0.009)
    for drop_e, verdict in ((1.0, "holds"), (3.0, "fails"), (2.0, "inconclusive")):
        table = {"original": (70.0, 0.3, 74.0), "split_2": (66.0, 0.3, 74.0 - drop_e)}
        c = next(c for c in rc.claims(table, 5) if c["claim"].startswith("C"))
        assert c["d"] == pytest.approx(2.0 - drop_e) and c["ci_high"] - c["d"] == pytest.approx(half)
        assert c["verdict"] == verdict


def test_claim_settings_are_not_in_the_science_hash():
    base = ch.ChannelsConfig()
    other = dataclasses.replace(base, claim=ch.ClaimSection(level=0.9, n_boot=500, boot_seed=3))
    assert other.science_hash() == base.science_hash() == "ea4a79a6fb9d"  # results/channels' records
    assert (base.claim.n_boot, base.claim.boot_seed, base.claim.level) == (2000, 0, 0.95)
    with pytest.raises(UserError, match="claim.level"):
        ch.EXPERIMENT.configure("smoke", ["claim.level=1.0"])
    with pytest.raises(UserError, match="claim.n_boot"):
        ch.EXPERIMENT.configure("smoke", ["claim.n_boot=10"])


# -- the bootstrap of records that carry correctness ---------------------------------------------------------
def variant_record(variant: str, students: np.ndarray, ensemble: np.ndarray, loo: np.ndarray) -> dict:
    """A variant record as `train_variant` writes it, from its students' (L x n), its ensemble's (n) and its
    leave-one-out ensembles' (L x n) correctness."""
    accs = 100 * students.mean(1)
    return dict(variant=variant, n_members=len(students), single_mean=accs.mean(), single_std=accs.std(ddof=1),
                ensemble=100 * ensemble.mean(), n_test=students.shape[1],
                test_correct=[bs.encode_correct(c) for c in students], ensemble_correct=bs.encode_correct(ensemble),
                loo_correct=[bs.encode_correct(c) for c in loo])  # fmt: skip


def majority(students: np.ndarray):
    """A stand-in ensemble of correctness vectors: right where most members are (ties right), and its
    leave-one-out ensembles."""
    L = len(students)
    ens = 2 * students.sum(0) >= L
    loo = np.stack([2 * (students.sum(0) - s) >= L - 1 for s in students])
    return ens, loo


def made_up(L: int, n: int, seed: int, p=(0.7, 0.6)) -> list[dict]:
    """original and split_2, L independent students each right on a random fraction p of n test points."""
    r = np.random.RandomState(seed)
    recs = []
    for v, q in zip(("original", "split_2"), p):
        students = r.rand(L, n) < q
        recs.append(variant_record(v, students, *majority(students)))
    return recs


def naive_claim_a(recs: list[dict], n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Claim A's percentile interval by a loop over the draws, in the order `bootstrap.bootstrap` documents
    (test indices, then each group's member draws in sorted group order; the ensembles shifted by their
    jackknife noise over the drawn students' leave-one-out ensembles)."""
    dec = lambda r, k: np.stack([bs.decode_correct(c, r["n_test"]) for c in r[k]])  # noqa: E731
    by = {r["variant"]: dict(S=dec(r, "test_correct"), E=bs.decode_correct(r["ensemble_correct"], r["n_test"]),
                             LOO=dec(r, "loo_correct")) for r in recs}  # fmt: skip
    n = recs[0]["n_test"]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    names = sorted([f"ensemble:{v}" for v in by] + [f"single:{v}" for v in by])
    u = {g: rng.random((n_boot, 1, 1 if g.startswith("ensemble") else len(by[g.split(":")[1]]["S"]))) for g in names}
    d = []
    for b in range(n_boot):
        acc = lambda x: 100 * x[idx[b]].mean()  # noqa: E731
        gain = {}
        for v, m in by.items():
            L = len(m["S"])
            j = [min(int(np.floor(u[f"single:{v}"][b, 0, k] * L)), L - 1) for k in range(L)]
            single = np.mean([acc(m["S"][i]) for i in j])
            noise = np.mean([acc(m["LOO"][i]) for i in j]) - np.mean([acc(x) for x in m["LOO"]])
            gain[v] = acc(m["E"]) - np.sqrt(L * (L - 1)) * noise - single
        d.append(gain["split_2"] - gain["original"])
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def test_bootstrap_claim_a_equals_a_naive_loop():
    recs = made_up(L=3, n=40, seed=1)
    df = pd.DataFrame(recs)
    a = rc.ours_claims(df, 0.9, recs, n_boot=300, seed=5)[0]
    assert a["claim"].startswith("A") and rc.has_correctness(recs)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx(naive_claim_a(recs, 300, 5, 0.9), rel=1e-9, abs=1e-9)
    gain = lambda r: r["ensemble"] - r["single_mean"]  # noqa: E731
    assert a["d"] == pytest.approx(gain(recs[1]) - gain(recs[0]))


def test_disagreeing_students_widen_claim_a_beyond_the_welch_interval():
    """Students right on independent random 70 % / 60 % of the points: their accuracies barely differ (a
    narrow Welch interval, the ensembles held fixed), but each ensemble's own noise and the test set's are
    large; the bootstrap's interval is wider, around the same d. Without leave-one-out ensembles (L > 1), a
    record set is not the bootstrap's."""
    recs = made_up(L=5, n=600, seed=2)
    df = pd.DataFrame(recs)
    boot = rc.ours_claims(df, 0.95, recs)
    welch = rc.ours_claims(df, 0.95)
    assert not rc.has_correctness([{k: v for k, v in r.items() if k != "loo_correct"} for r in recs])
    for b, w in zip(boot, welch):
        assert b["claim"] == w["claim"] and b["d"] == w["d"]
    wa, ba = welch[0]["ci_high"] - welch[0]["ci_low"], boot[0]["ci_high"] - boot[0]["ci_low"]
    assert ba > 1.5 * wa, (ba, wa)  # (10.7 against 6.1 points)


def test_identical_students_give_the_test_set_width():
    """Every student of a variant the same: no member noise, no jackknife noise; each claim's interval is that
    of the test points alone (one student per variant, no jackknife, the same draws)."""
    r = np.random.RandomState(3)
    recs, groups = [], {}
    for v, q in (("original", 0.8), ("split_2", 0.6)):
        one = r.rand(50) < q
        recs.append(variant_record(v, np.stack([one] * 4), one, np.stack([one] * 4)))
        groups[f"single:{v}"], groups[f"ensemble:{v}"] = [one[None]], [one[None]]
    c = next(c for c in rc.ours_claims(pd.DataFrame(recs), 0.95, recs, 500, 7) if c["claim"].startswith("C"))
    draws = bs.bootstrap(groups, 500, 7)
    drop = lambda g, k: g[f"{k}:original"].mean - g[f"{k}:split_2"].mean  # noqa: E731
    ref = bs.compare(draws, lambda g: drop(g, "single") / 2 - drop(g, "ensemble"))
    assert c["d"] == pytest.approx(ref.d) and c["d"] < 0 and ref.hi - ref.lo > 1.0
    assert (c["ci_low"], c["ci_high"]) == (pytest.approx(ref.lo), pytest.approx(ref.hi))


def test_fashion_mnist_missing_falls_back_to_mnist1d(tmp_path):
    cfg = dataclasses.replace(ch.smoke(), dataset="fashion_mnist")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_dir=str(tmp_path / "none")))
    msgs = []
    data, used = cd.load_data(cfg, msgs.append)
    assert used.dataset == "mnist1d" and data.x_train.shape[1:] == (40, 1)
    assert len(msgs) == 1 and "falling back to MNIST-1D" in msgs[0]
    with pytest.raises(UserError, match="Fashion-MNIST"):
        cd.load_data(dataclasses.replace(cfg, fallback=False), msgs.append)


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
    for name in ("table.md", "table.csv", "claims.csv", "plot.png", "config.json", "summary.md", "records.jsonl"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    df = pd.read_csv(os.path.join(out, "table.csv"))
    assert df.variant.tolist() == ["split_2", "avg_2"] and df.channels.tolist() == [4, 4]
    assert (df.status == "ok").all() and df.single_mean.between(0, 100).all()
    assert df.paper_ensemble.notna().all()
    assert open(os.path.join(out, "plot.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    md = open(os.path.join(out, "table.md")).read()
    assert "| split_2 | 4 |" in md and "B: averaging raises the gain less" in md
    assert written.text == md and any(v.startswith("Figure 6 claim B:") for v in written.verdicts)
    claims = pd.read_csv(os.path.join(out, "claims.csv"))
    assert {"d", "ci_low", "ci_high", "verdict"} <= set(claims.columns) and claims.source[0] == "ours"
    assert set(claims.verdict) <= {"holds", "fails", "inconclusive"} and (claims.ci_low <= claims.ci_high).all()
    recs = Store(out).records()
    h = ch.EXPERIMENT.configure("smoke", TINY).science_hash()
    students = lambda v: [f"{h}/{v}/SimpleCNN-2-1/single-{i}" for i in range(2)]  # noqa: E731 - units of their own
    assert [r["unit"] for r in recs] == [f"{h}/backbone", *students("split_2"), f"{h}/split_2", *students("avg_2"),
                                         f"{h}/avg_2"]  # fmt: skip
    assert all(os.path.exists(os.path.join(out, r["predictions"])) for r in recs if r.get("protocol") == "single")
    assert all(r["config_hash"] == h and "git_sha" in r and "date" in r for r in recs)
    before = theory_outputs(out)
    again = run_experiment("channels", "smoke", TINY, out)  # resumes: nothing retrained, same outputs
    assert Store(out).records() == recs and again.text == written.text and theory_outputs(out) == before


def test_end_to_end_claims_get_the_bootstrap_and_train_accuracies(tiny_run):
    """The records carry the students' correctness and train accuracies and the backbone's train accuracy;
    claims.csv holds the bootstrap's intervals (recomputed from the records), not the Welch ones."""
    out = tiny_run[0]
    recs = Store(out).records()
    bb, variants = recs[0], [r for r in recs if r["unit"].endswith(("/split_2", "/avg_2"))]
    assert 0 <= bb["backbone_train_acc"] <= 100 and 0 <= bb["backbone_acc"] <= 100
    assert rc.has_correctness(variants) and all(0 <= r["train_acc_mean"] <= 100 for r in variants)
    for r in variants:
        correct = [bs.decode_correct(c, r["n_test"]) for c in r["test_correct"]]
        assert r["n_test"] == bb["n_test"] and len(r["loo_correct"]) == len(correct) == 2
        assert 100 * np.mean(correct) == pytest.approx(r["single_mean"])
        assert 100 * bs.decode_correct(r["ensemble_correct"], r["n_test"]).mean() == pytest.approx(r["ensemble"])
    df = pd.read_csv(os.path.join(out, "table.csv"))
    assert df.train_acc_mean.tolist() == pytest.approx([r["train_acc_mean"] for r in variants])
    claims = pd.read_csv(os.path.join(out, "claims.csv"))
    ours = claims[claims.source == "ours"]
    boot = rc.bootstrap_claims(df, variants, 0.95, 2000, 0)
    assert ours.claim.tolist() == [c["claim"] for c in boot]
    assert ours.ci_low.tolist() == pytest.approx([c["ci_low"] for c in boot])
    assert ours.ci_high.tolist() == pytest.approx([c["ci_high"] for c in boot])
    welch = rc.ours_claims(df, 0.95)
    assert ours.ci_low.tolist() != pytest.approx([c["ci_low"] for c in welch])
    md, summary = (open(os.path.join(out, f)).read() for f in ("table.md", "summary.md"))
    assert all("percentile-bootstrap interval (2000 draws)" in text for text in (md, summary))
    assert f"(train accuracy {bb['backbone_train_acc']:.2f}%, test accuracy" in md and "% train / " in summary
    assert "| variant | channels | single | single train | ensemble |" in md


def test_records_without_correctness_keep_the_welch_interval(tiny_run, tmp_path):
    """Variant records made before the correctness was recorded (as results/channels): the Welch interval
    with the ensembles held fixed, and the rule sentence says so; no train accuracy column."""
    out = copy_of(tiny_run[0], tmp_path / "c")
    drop = {"n_test", "test_correct", "ensemble_correct", "loo_correct", "train_acc_mean", "backbone_train_acc"}
    recs = [{k: v for k, v in r.items() if k not in drop or "variant" not in r} for r in Store(out).records()]
    recs[0].pop("backbone_train_acc")
    with open(os.path.join(out, "records.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    run_experiment("channels", "smoke", TINY, out)  # nothing to train: the outputs are written again
    assert Store(out).records() == recs
    df = pd.read_csv(os.path.join(out, "table.csv"))
    assert "train_acc_mean" not in df
    claims = pd.read_csv(os.path.join(out, "claims.csv"))
    welch = rc.ours_claims(df, 0.95)
    assert claims[claims.source == "ours"].ci_low.tolist() == pytest.approx([c["ci_low"] for c in welch])
    md, summary = (open(os.path.join(out, f)).read() for f in ("table.md", "summary.md"))
    for text in (md, summary):
        assert "Welch t-interval from the single students' means" in text and "bootstrap" not in text
    assert "| variant | channels | single | ensemble |" in md and "train accuracy" not in md


def test_resume_trains_only_the_missing_variant(tiny_run, tmp_path):
    out = copy_of(tiny_run[0], tmp_path / "c")
    recs = Store(out).records()
    with open(os.path.join(out, "records.jsonl"), "w") as f:  # as if killed after avg_2's first student
        f.writelines(json.dumps(r) + "\n" for r in recs[:5])
    run_experiment("channels", "smoke", TINY, out)
    again = Store(out).records()
    assert again[:5] == recs[:5] and [r["unit"] for r in again[5:]] == [r["unit"] for r in recs[5:]]
    same = ("single_mean", "single_std", "ensemble", "acc_by_size", "final_loss")
    assert {k: again[-1][k] for k in same} == {k: recs[-1][k] for k in same}  # the backbone retrains alike


def test_a_store_recorded_before_students_were_units_still_resumes(tiny_run, tmp_path):
    """One record per variant and no student units (as results/channels): nothing retrains."""
    out = str(tmp_path / "c")
    variants = store_before_student_units(tiny_run[0], out)
    before = theory_outputs(out)
    run_experiment("channels", "smoke", TINY, out)
    assert Store(out).records() == variants and theory_outputs(out) == before


def test_write_without_records_is_a_user_error(tmp_path):
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

"""kd_inputs.md and replication.md from hand-made records: every gap and share is the arithmetic of
the accuracies the records encode, with an interval that contains it; directions are decided by the
interval against the published sign."""

import math

import numpy as np
import pytest

from ntk_vs_nn.analysis import distillation, replication
from ntk_vs_nn.analysis.bootstrap import encode_correct
from ntk_vs_nn.store import Store

N = 2000


def _rec(h, protocol, member, acc, seed, val=None):
    rs = np.random.RandomState(seed)
    correct = np.zeros(N, bool)
    correct[rs.permutation(N)[: int(round(acc * N / 100))]] = True
    metrics = {"acc": 100.0 * correct.mean(), "agreement": 97.0, "train_acc": 99.5}
    if val is not None:
        metrics["val_acc"] = val
    return dict(unit=f"{h}/nn/M/{protocol}-{member}", config_hash=h, family="nn", model="M", dataset="d",
                protocol=protocol, member=member, status="ok", metrics=metrics, test_correct=encode_correct(correct),
                n_test=N)  # fmt: skip


def _teachers(h, singles=(80, 81, 82, 83, 84), ens=88.0):
    recs = [_rec(h, "single", i, a, i, val=a + 1) for i, a in enumerate(singles)]
    return recs + [_rec(h, "ensemble", "all", ens, 99, val=ens + 1)]


def test_kd_inputs_comparison_is_the_arithmetic_of_the_students_accuracies():
    recs = _teachers("T")
    recs += [_rec("A", "kd", 0, 84.0, 10), _rec("A", "sd", 0, 83.0, 11), _rec("A", "sd", 1, 83.0, 12)]
    recs += [_rec("B", "kd", 0, 86.0, 20), _rec("B", "sd", 0, 82.0, 21), _rec("B", "sd", 1, 82.0, 22)]
    recs += [_rec("A", "sd_ensemble", "all", 87.0, 13), _rec("B", "sd_ensemble", "all", 86.0, 23)]
    df = distillation.compare(recs, {"clean": [("A", "T")], "mixup": [("B", "T")]}, ("nn",), ("M",), n_boot=400)
    got = {(r["kd_inputs"], r["comparison"]): r for _, r in df.iterrows()}
    assert got["clean", "ens - mean"]["d"] == pytest.approx(6.0, abs=0.01)
    assert got["clean", "KD - mean"]["d"] == pytest.approx(2.0, abs=0.01)
    assert got["mixup", "KD recovers %"]["d"] == pytest.approx(100 * 4 / 6, abs=0.3)
    assert got["mixup", "SD - mean"]["d"] == pytest.approx(0.0, abs=0.01)
    assert got["clean", "SD-ens - ens"]["d"] == pytest.approx(-1.0, abs=0.01)
    for r in got.values():
        assert r["ci_low"] <= r["d"] <= r["ci_high"]
    assert got["mixup", "KD - mean"]["ci_low"] > 0  # 4 points on 2,000 examples: resolved
    md = distillation.markdown(df)
    assert "| nn | M | mixup | 82.00 | 88.00 | 86.00 | 82.00 |" in md


def test_replication_gaps_directions_and_published_numbers():
    _, pub = replication.published()
    assert pub["ensemble - single"] == pytest.approx(89.07 - 85.948, abs=1e-3)
    assert pub["SD - teacher"] == pytest.approx(86.378 - 85.948, abs=1e-3)
    recs = _teachers("H")
    recs += [_rec("H", "kd", 0, 85.0, 30, val=86.0)]
    recs += [_rec("H", "sd", s, a, 40 + s, val=a) for s, a in enumerate((74, 75, 76, 77, 78))]  # 6 below
    recs += [_rec("H", "sd_ensemble", "all", 88.0, 50)]
    acc, gaps = replication.compare(recs, [("H",)], "nn", "M", sd_students=5, n_boot=400)
    g = {r["gap"]: r for _, r in gaps.iterrows()}
    assert g["ensemble - single"]["ours"] == pytest.approx(6.0, abs=0.01)
    assert g["ensemble - single"]["direction"] == "agrees"
    assert g["SD - teacher"]["ours"] == pytest.approx(-6.0, abs=0.01)
    assert g["SD - teacher"]["direction"] == "opposite"  # published +0.43
    assert g["SD-ensemble - ensemble"]["direction"] == "not resolved"  # 0 on both sides of the interval
    a = {r["group"]: r for _, r in acc.iterrows()}
    assert a["single"]["n_ours"] == 5 and a["single"]["val_ours"] == pytest.approx(83.0)
    assert a["single"]["n_published"] == 5 and a["single"]["test_published"] == pytest.approx(85.948)
    assert math.isnan(a["sd_ensemble"]["val_ours"])
    md = replication.markdown(acc, gaps)
    assert "| SD - teacher | -6.00 [" in md and "opposite" in md


def test_sd_teacher_gap_uses_only_the_singles_that_taught():
    """S = 2 of L = 5: the SD students' teachers are singles 0 and 1 (80, 81), not the mean of five."""
    recs = _teachers("H") + [_rec("H", "sd", s, a, 60 + s) for s, a in enumerate((80.5, 81.5))]
    _, gaps = replication.compare(recs, [("H",)], "nn", "M", sd_students=2, n_boot=200)
    sd = gaps[gaps["gap"] == "SD - teacher"].iloc[0]
    assert sd["ours"] == pytest.approx(0.5, abs=0.01)


def test_cli_writes_kd_inputs_and_replication_outputs_with_train_sum_skipped(tmp_path):
    """One smoke table: students on clean and mixup inputs (teachers trained once), the replication
    report, no train-sum model; `messages` rewrites the same files from the records alone."""

    from ntk_vs_nn.cli import main

    out = str(tmp_path / "t")
    sets = ["table.kd_inputs=clean,mixup", "protocol.kd_inputs=clean", "table.train_sum=false",
            "table.reference=replication", "protocol.ensemble_rule=probs", "run.progress=false"]  # fmt: skip
    assert main(["table", "nn", "--preset", "smoke", "--out", out, *sum((["--set", s] for s in sets), [])]) == 0
    recs = Store(out).records()
    singles = [r for r in recs if r["protocol"] == "single"]
    assert len(singles) == 3  # once, not per variant
    assert {r["metrics"].get("reason") for r in recs if r["protocol"] == "train_sum"} == {"table.train_sum=false"}
    assert len({r["config_hash"] for r in recs if r["protocol"] == "kd"}) == 2
    kd_md = open(f"{out}/kd_inputs.md").read()
    assert "| nn | SimpleCNN-3-1 | clean |" in kd_md and "| nn | SimpleCNN-3-1 | mixup |" in kd_md
    rep = open(f"{out}/replication.md").read()
    assert "ensemble - single" in rep and "SD - teacher" in rep and "| single | 3 |" in rep
    assert "skipped" in open(f"{out}/table_nn.md").read()
    before = open(f"{out}/kd_inputs.csv").read()
    assert main(["messages", "--out", out]) == 0
    assert open(f"{out}/kd_inputs.csv").read() == before

"""Pipeline replicates (run.replicates = R: root seeds seed .. seed + R - 1 into one store), K KD
students, the students' own budget, their fidelity, and resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from ntk_vs_nn.cli import main

FAST = ["--set", "data.n_train=160", "--set", "data.n_test=100", "--set", "train.epochs=1"]
REP = ["--set", "run.replicates=2", "--set", "protocol.kd_students=2", "--set", "protocol.student_epochs=2"]
TRAINED = ("single", "train_sum", "kd", "sd")


def records(out):
    with open(os.path.join(out, "records.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rep2"))
    assert main(["table", "nn", "--preset", "smoke", "--out", out, *FAST, *REP]) == 0
    return out


def test_replicates_have_their_root_seeds_and_fill_the_table(two):
    recs = records(two)
    assert {r["seed"] for r in recs} == {0, 1}
    # per replicate (its seed) one hash of the teachers' units and one of the students'
    for seed in (0, 1):
        mine = [r for r in recs if r["seed"] == seed]
        teach = {r["config_hash"] for r in mine if r["protocol"] in ("single", "ensemble", "train_sum")}
        taught = {r["config_hash"] for r in mine if r["protocol"] in ("kd", "sd", "sd_ensemble")}
        assert len(teach) == len(taught) == 1 and teach != taught
    assert len({r["config_hash"] for r in recs}) == 4
    df = pd.read_csv(os.path.join(two, "table_nn.csv")).set_index("protocol")
    assert (df.n_replicates == 2).all() and (df.status == "ok").all()
    assert df.loc["single", "n_members"] == 6 and df.loc["kd", "n_members"] == 4 and df.loc["sd", "n_members"] == 4
    singles = [r["metrics"]["acc"] for r in recs if r["protocol"] == "single"]
    assert df.loc["single", "acc_mean"] == pytest.approx(np.mean(singles))
    assert df.loc["single", "acc_std"] == pytest.approx(np.std(singles, ddof=1))
    for protocol in ("ensemble", "train_sum"):
        per = [r["metrics"]["acc"] for r in recs if r["protocol"] == protocol]
        assert len(per) == 2 and df.loc[protocol, "acc_mean"] == pytest.approx(np.mean(per))
        got = [float(x) for x in df.loc[protocol, "acc_by_replicate"].split()]
        assert got == pytest.approx([round(r["metrics"]["acc"], 2) for r in recs if r["protocol"] == protocol])
    best = [max(r["metrics"]["acc"] for r in recs if r["protocol"] == "single" and r["seed"] == s) for s in (0, 1)]
    assert df.loc["single", "acc_best"] == pytest.approx(np.mean(best))
    md = open(os.path.join(two, "table_nn.md")).read()
    assert "seeds 0–1" in md and "K = 2" in md


def test_students_train_longer_and_record_fidelity_and_train_accuracy(two):
    recs = records(two)
    for r in recs:
        if r["protocol"] in TRAINED and r["status"] == "ok":
            assert 0 <= r["metrics"]["train_acc"] <= 100
    students = [r for r in recs if r["protocol"] in ("kd", "sd")]
    assert len(students) == 8
    for r in students:
        m = r["metrics"]
        assert 0 <= m["agreement"] <= 100 and m["kl_teacher"] >= 0
    # students run protocol.student_epochs = 2 epochs, the teachers train.epochs = 1: twice the steps
    epochs = {(r["protocol"], r["member"], r["seed"]): r["metrics"]["epochs"] for r in recs if r["protocol"] in TRAINED}
    assert {e for (p, *_), e in epochs.items() if p in ("kd", "sd")} == {2}
    assert {e for (p, *_), e in epochs.items() if p in ("single", "train_sum")} == {1}
    df = pd.read_csv(os.path.join(two, "table_nn.csv")).set_index("protocol")
    assert 0 <= df.loc["kd", "agreement_mean"] <= 100 and df.loc["single", "train_acc_mean"] > 0


def test_every_unit_records_calibration_and_the_table_reads_dee_per_replicate(two):
    from ntk_vs_nn import metrics

    recs = [r for r in records(two) if r["status"] == "ok"]
    for r in recs:
        m = r["metrics"]
        assert {"brier", "cnll", "cbs", "cece", "temperature"} <= set(m), r["unit"]
        assert m["cnll"] <= m["nll"] + 0.5 and m["temperature"] > 0
    df = pd.read_csv(os.path.join(two, "table_nn.csv")).set_index("protocol")
    ens = {r["seed"]: r["metrics"] for r in recs if r["protocol"] == "ensemble"}
    for m in ens.values():  # the DE curve of the replicate's singles: DE-L is the ensemble itself
        assert len(m["cnll_by_size"]) == 3 and m["cnll_by_size"][-1] == pytest.approx(m["cnll"])
        assert 0 <= m["disagreement"] <= 100 and m["pairwise_kl"] >= 0
    expected = [
        metrics.dee(r["metrics"]["cnll"], ens[r["seed"]]["cnll_by_size"]) for r in recs if r["protocol"] == "kd"
    ]
    assert df.loc["kd", "dee_mean"] == pytest.approx(np.mean(expected))
    assert df.loc["single", "cnll_mean"] == pytest.approx(
        np.mean([r["metrics"]["cnll"] for r in recs if r["protocol"] == "single"])
    )
    sd_div = [r["metrics"]["disagreement"] for r in recs if r["protocol"] == "sd_ensemble"]
    assert df.loc["sd", "disagreement"] == pytest.approx(np.mean(sd_div)) and len(sd_div) == 2
    assert np.isnan(df.loc["single", "disagreement"]) and np.isfinite(df.loc["ensemble", "brier_mean"])


def test_a_replicate_reproduces_the_single_replicate_run_of_its_seed(two, tmp_path):
    """Replicate 1 of a run with seed 0 is the one-replicate run with seed 1: same units, same numbers."""
    out = str(tmp_path / "seed1")
    one = [a if a != "run.replicates=2" else "run.replicates=1" for a in REP] + ["--set", "run.seed=1"]
    assert main(["table", "nn", "--preset", "smoke", "--out", out, *FAST, *one]) == 0
    alone = {r["unit"]: r for r in records(out)}
    in_two = {r["unit"]: r for r in records(two) if r["seed"] == 1}
    assert set(alone) == set(in_two) and alone
    for unit, r in alone.items():
        assert r["metrics"] == in_two[unit]["metrics"], unit


def test_kernel_table_with_replicates(tmp_path):
    out = str(tmp_path / "ntk")
    sets = FAST + ["--set", "run.replicates=2", "--set", "table.ntk_families=ntk,gp"]
    sets += ["--set", "kernel.epochs=2", "--set", "kernel.student_epochs=3", "--set", "protocol.student_epochs=5"]
    assert main(["table", "ntk", "--preset", "smoke", "--out", out, *sets]) == 0
    for r in records(out):  # the kernel rows' own budget: teachers and train-sum 2 epochs, students 3
        if r["protocol"] in TRAINED:
            assert r["metrics"]["epochs"] == (3 if r["protocol"] in ("kd", "sd") else 2), r["unit"]
    df = pd.read_csv(os.path.join(out, "table_ntk.csv"))
    assert set(df.family) == {"ntk", "gp"} and (df.n_replicates == 2).all() and (df.status == "ok").all()
    single = df[(df.family == "gp") & (df.protocol == "single")].iloc[0]
    per_rep = [float(x) for x in single.acc_by_replicate.split()]  # kernels: best of L per replicate
    assert len(per_rep) == 2 and single.acc_best == pytest.approx(np.mean(per_rep), abs=0.006)
    assert "(best of 3, 2 replicates)" in open(os.path.join(out, "table_ntk.md")).read()


def test_killed_replicated_run_resumes_without_retraining(tmp_path):
    out = str(tmp_path / "killed")
    argv = [sys.executable, "-m", "ntk_vs_nn", "table", "nn", "--preset", "smoke", "--out", out, *FAST, *REP]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = os.path.join(out, "records.jsonl")
    while proc.poll() is None and not (os.path.exists(path) and sum(1 for _ in open(path)) >= 3):
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    before = [r["unit"] for r in records(out) if r["protocol"] in TRAINED]
    assert 1 <= len(before) < 2 * 8  # (3 singles + train-sum + 2 KD + 2 SD) x 2 replicates: killed mid-run
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    units = [r["unit"] for r in records(out) if r["protocol"] in TRAINED]
    assert len(units) == len(set(units))  # nothing that finished trained again
    assert set(before) <= set(units) and len({r["seed"] for r in records(out)}) == 2


def test_message_intervals_are_the_paired_bootstrap_of_the_records(two):
    """messages.csv's ⑤ row is the bootstrap of the records' test correctness: groups rebuilt here
    from records.jsonl, replicates in seed order, give the same d and interval. (The students train 2
    epochs against the singles' 1: ⑤ is decided against the control singles.)"""
    from ntk_vs_nn.analysis import bootstrap as bs

    recs = [r for r in records(two) if r["status"] == "ok"]
    groups = {}
    for name in ("single", "ensemble", "train_sum", "kd", "sd", "control"):
        groups[name] = [
            np.stack([bs.decode_correct(r["test_correct"], r["n_test"]) for r in recs if r["protocol"] == name
                      and r["seed"] == s])
            for s in (0, 1)
        ]  # fmt: skip
    draws = bs.bootstrap(groups, 2000, 0)
    five = bs.compare(draws, lambda g: (g["kd"].mean - g["control"].mean) - (g["ensemble"].mean - g["single"].mean) / 2)
    df = pd.read_csv(os.path.join(two, "messages.csv"))
    row = df[df.message == 5].iloc[0]
    assert row.comparison == "(KD - control) - (ens - mean)/2" and row.primary
    assert row.n_replicates == 2 and row.n_test == 100 and not row.strict
    assert (row.d, row.ci_low, row.ci_high) == pytest.approx((five.d, five.lo, five.hi), abs=1e-9)
    acc = {
        p: [r["metrics"]["acc"] for r in recs if r["protocol"] == p] for p in ("single", "kd", "ensemble", "control")
    }
    mean = {p: np.mean(v) for p, v in acc.items()}  # from the recorded accuracies:
    hand = (mean["kd"] - mean["control"]) - (mean["ensemble"] - mean["single"]) / 2
    assert row.d == pytest.approx(hand, abs=1e-9)


def test_teachers_recorded_before_the_teacher_hash_are_adopted_not_retrained(tmp_path, monkeypatch):
    """A store made before units had a teacher hash names its teachers by the full config hash; a config
    that differs only in a later student field (kd_inputs=mixup) adopts them (predictions, checkpoint,
    record under its teacher hash) instead of training them again, and its online teachers load."""
    from ntk_vs_nn.config import Config

    out = str(tmp_path / "old")
    with monkeypatch.context() as m:  # the old naming
        m.setattr(Config, "teacher_hash", lambda self: self.science_hash())
        assert main(["table", "nn", "--preset", "smoke", "--out", out, *FAST]) == 0
    old = {r["unit"]: r for r in records(out)}
    assert main(["table", "nn", "--preset", "smoke", "--out", out, *FAST, "--set", "protocol.kd_inputs=mixup"]) == 0
    new = records(out)[len(old) :]
    teachers = [r for r in new if r["protocol"] in ("single", "train_sum")]
    assert len(teachers) == 4 and all(r.get("adopted_from") in old for r in teachers)
    for r in teachers:
        assert r["metrics"] == old[r["adopted_from"]]["metrics"] and r["unit"] not in old
    students = [r for r in new if r["protocol"] in ("kd", "sd") and r["status"] == "ok"]
    assert len(students) == 3 and not any("adopted_from" in r for r in students)  # trained, on mixup inputs

"""`ntk-vs-nn run diversity` end to end on a tiny Fashion-MNIST-shaped problem: BatchEnsemble students
distilled member-wise, perturbed KD for nets and ntk models, the table regenerated from the records."""

import os

import numpy as np
import pandas as pd
import pytest

from ntk_vs_nn.cli import main
from ntk_vs_nn.store import Store


@pytest.fixture(scope="module")
def div(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("div"))
    assert main(["run", "diversity", "--preset", "smoke", "--out", out]) == 0  # 3 teachers, 2 seeds
    return out


def test_units_students_and_the_table(div):
    recs = [r for r in Store(div).records() if r["status"] == "ok"]
    be = [r for r in recs if r["model"] == "BE3-PlainCNN-1-0.25"]
    assert len(be) == 2 and all("disagreement" in r["metrics"] for r in be)  # the baseline, per seed
    teachers = [r for r in recs if r["protocol"] == "single" and r["model"] == "PlainCNN-1-0.25"]
    assert len(teachers) == 2 * 2 * 3  # nn and ntk members, 2 seeds
    kd = [r for r in recs if r["protocol"] == "kd"]
    assert len(kd) == 2 * 3 and len({r["config_hash"] for r in kd}) == 2 * 3  # one config per student and seed
    be_kd = [r for r in kd if r["n_params"] > teachers[0]["n_params"]]  # the BatchEnsemble students
    assert len(be_kd) == 4 and all("pairwise_kl" in r["metrics"] for r in be_kd)
    df = pd.read_csv(os.path.join(div, "diversity.csv"))
    assert {"acc_mean", "cnll_mean", "dee_mean", "d_acc", "d_cnll_lo", "disagreement_mean"} <= set(df.columns)
    assert (df.n_seeds == 2).all()
    row = df[(df.student == "BatchEnsemble-3") & (df.method == "KD + ConfODS")].iloc[0]
    assert np.isfinite(row.d_acc) and np.isfinite(row.d_cnll_lo) and row.d_cnll_lo <= row.d_cnll <= row.d_cnll_hi
    ens = df[df.student == "DE-3 (nn)"].iloc[0]
    per_seed = [r["metrics"]["acc"] for r in recs if r["protocol"] == "ensemble" and r["family"] == "nn"]
    assert ens.acc_mean == pytest.approx(np.mean(per_seed)) and ens.disagreement_mean >= 0
    md = open(os.path.join(div, "diversity.md")).read()
    assert "KD + ConfODS" in md and "Published (Nam et al. 2021" in md and "ResNet-32 CIFAR-10 (DeepEns-8)" in md


def test_messages_regenerates_the_table_from_records(div):
    before = open(os.path.join(div, "diversity.md")).read()
    os.remove(os.path.join(div, "diversity.md"))
    assert main(["messages", "--out", div]) == 0
    assert open(os.path.join(div, "diversity.md")).read() == before


def test_bad_entries_are_one_line_errors(tmp_path, capsys):
    rc = main(["run", "diversity", "--out", str(tmp_path / "x"), "--set", "table.diversity=be:sideways"])
    assert rc == 2 and "table.diversity entry 'be:sideways'" in capsys.readouterr().err
    rc = main(["run", "diversity", "--out", str(tmp_path / "y"), "--set", "table.nn_models=BE4-PlainCNN-2-1"])
    assert rc == 2 and "plain nets" in capsys.readouterr().err


def test_two_workers_match_one_process_bit_for_bit(div, tmp_path):
    """With a worker pool each stage is submitted before it is waited for (the teachers of both
    families beside the BatchEnsemble, then every student): the units equal the in-process run's."""

    out = str(tmp_path / "w2")
    sets = ["--set", "run.workers=2", "--set", "run.replicates=1"]
    assert main(["run", "diversity", "--preset", "smoke", *sets, "--out", out]) == 0
    recs = [r for r in Store(out).records() if r["status"] == "ok" and r["protocol"] != "ensemble"]
    assert len(recs) == 2 * 3 + 1 + 3  # seed 0: nn and ntk teachers, the BatchEnsemble, three students
    ours, ref = Store(out), Store(div)
    for r in recs:
        a, b = np.load(ours.unit_path(r["unit"])), np.load(ref.unit_path(r["unit"]))
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(a[split], b[split], err_msg=f"{r['unit']} {split}")

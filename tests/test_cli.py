"""Every protocol and family end to end through the real CLI at the smoke preset, resume, and
bad input (one error line, exit code 2, nothing written)."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ntk_vs_nn.analysis.bootstrap import decode_correct
from ntk_vs_nn.analysis.metrics import combine
from ntk_vs_nn.cli import main
from ntk_vs_nn.config.presets import from_dict as config_from_dict
from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.protocols import PROTOCOLS
from ntk_vs_nn.store import Store

FAST = ["--set", "data.n_train=160", "--set", "data.n_test=100", "--set", "train.epochs=1"]


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("smoke"))
    assert main(["table", "nn", "--preset", "smoke", "--out", out, *FAST]) == 0
    assert main(["table", "ntk", "--preset", "smoke", "--out", out, *FAST]) == 0
    return out


def test_tables_have_every_protocol_and_family(smoke_out):
    for which, families in (("nn", {"nn"}), ("ntk", {"ntk", "ntk_prime", "gp"})):
        df = pd.read_csv(os.path.join(smoke_out, f"table_{which}.csv"))
        assert {"family", "model", "dataset", "protocol", "n_members", "acc_mean", "acc_std", "acc_best"} <= set(
            df.columns
        )
        assert set(df.family) == families
        for fam in families:
            sub = df[df.family == fam]
            assert list(sub.protocol) == list(PROTOCOLS)
            assert (sub.status == "ok").all(), sub
            assert sub.acc_mean.between(0, 100).all()
        single = df[df.protocol == "single"].iloc[0]
        assert single.n_members == 3 and single.acc_best >= single.acc_mean
        md = open(os.path.join(smoke_out, f"table_{which}.md")).read()
        assert "train-sum" in md and "KD" in md


def test_messages_written_for_both_tables(smoke_out):
    df = pd.read_csv(os.path.join(smoke_out, "messages.csv"))
    assert {"message", "family", "verdict", "evidence"} <= set(df.columns)
    assert sorted(set(df[df.family == "nn"].message)) == [4, 5, 6, 7]  # one row per comparison
    assert sorted(set(df[df.family == "gp"].message)) == [1, 2, 3]
    assert {"comparison", "strict", "d", "ci_low", "ci_high", "n_test", "n_replicates", "n_boot"} <= set(df.columns)
    assert (df.ci_low <= df.ci_high).all() and (df.n_test == 100).all() and (df.n_boot == 2000).all()
    assert set(df.verdict) <= {"holds", "fails", "inconclusive"}


def test_every_trained_unit_records_its_training_state(smoke_out):
    """Optimiser, steps, stop reason, final train loss and accuracy on every trained unit; the kernel rows
    train by gradient descent by default and carry no "(Adam)" label."""
    trained = [r for r in Store(smoke_out).records() if r["status"] == "ok" and "ensemble" not in r["protocol"]]
    assert {r["family"] for r in trained} == {"nn", "ntk", "ntk_prime", "gp"}
    for r in trained:
        t = r["training"]
        assert {"optimizer", "steps", "stop", "train_loss", "train_acc"} <= set(t), r["unit"]
        assert t["stop"] == "budget" and t["steps"] > 0 and t["train_loss"] == r["metrics"]["final_loss"]
        assert t["train_acc"] == r["metrics"]["train_acc"]
        assert t["optimizer"].startswith("sgd" if r["family"] != "nn" else "adam"), t
    assert "(Adam)" not in open(os.path.join(smoke_out, "table_ntk.md")).read()


def test_kernel_rows_trained_by_adam_are_labelled_in_tables_and_messages(tmp_path):
    out = str(tmp_path / "adam")
    args = ["table", "ntk", "--preset", "smoke", "--out", out, *FAST, "--set", "kernel.optimizer=adam",
            "--set", "table.ntk_families=gp"]  # fmt: skip
    assert main(args) == 0
    assert {r["training"]["optimizer"] for r in Store(out).records() if "training" in r} == {"adam"}
    assert "| SimpleCNN-3-1 | gp (Adam) |" in open(os.path.join(out, "table_ntk.md")).read()
    assert "| gp (Adam) |" in open(os.path.join(out, "messages.md")).read()


def test_students_trained_longer_get_a_control_row_and_messages_5_6_are_decided_against_it(tmp_path, smoke_out):
    """protocol.control=auto: where the nets' students train longer than their singles, max(K, S) control
    singles (single member i's init and data order, the students' budget) are trained and recorded; the
    table shows them; ⑤ and ⑥ are decided against them (primary), the uncontrolled comparisons stay as
    secondary ones. Students at the singles' budget (the smoke default): no control units."""
    assert not any(r["protocol"] == "control" for r in Store(smoke_out).records())
    out = str(tmp_path / "ctl")
    assert main(["table", "nn", "--preset", "smoke", "--out", out, *FAST, "--set", "protocol.student_epochs=2"]) == 0
    ctl = [r for r in Store(out).records() if r["protocol"] == "control"]
    assert sorted(r["member"] for r in ctl) == [0, 1] and all(r["metrics"]["epochs"] == 2 for r in ctl)
    singles = {r["member"]: r for r in Store(out).records() if r["protocol"] == "single"}
    assert all(singles[r["member"]]["metrics"]["epochs"] == 1 for r in ctl)
    assert "control: single at the students' budget" in open(os.path.join(out, "table_nn.md")).read()
    df = pd.read_csv(os.path.join(out, "messages.csv"))
    primary = df[df.primary]
    assert set(primary[primary.message == 5].comparison) == {"(KD - control) - (ens - mean)/2"}
    assert set(primary[primary.message == 6].comparison) == {"SD - (control + σ)"}
    assert {"(KD - mean) - (ens - mean)/2", "SD - (mean + σ)"} <= set(df[~df.primary].comparison)
    assert main(["table", "nn", "--preset", "smoke", "--out", str(tmp_path / "off"), *FAST,
                 "--set", "protocol.student_epochs=2", "--set", "protocol.control=off"]) == 0  # fmt: skip
    assert not any(r["protocol"] == "control" for r in Store(str(tmp_path / "off")).records())


def test_wide_control_and_train_sum_in_some_replicates(tmp_path, smoke_out):
    """protocol.wide_model: one net of that architecture per replicate, trained as a member (same epochs),
    its unit named by the network, shown as a column and read by ④ and ⑦ as a secondary "ens - wide";
    table.train_sum_replicates=1: the train-sum model only in replicate 1, skipped by design after it, and
    ④'s ens - train-sum still decided from the one replicate that has it."""
    out = str(tmp_path / "wide")
    wide_sets = ["--set", "protocol.wide_model=SimpleCNN-3-2", "--set", "table.train_sum_replicates=1"]
    assert main(["table", "nn", "--preset", "smoke", "--out", out, *FAST, "--set", "run.replicates=2", *wide_sets]) == 0
    recs = Store(out).records()
    wide = [r for r in recs if r["protocol"] == "wide"]
    single = next(r for r in recs if r["protocol"] == "single")
    assert len(wide) == 2 and {r["seed"] for r in wide} == {0, 1}
    assert all(r["unit"].endswith("/wide-SimpleCNN-3-2") and r["status"] == "ok" for r in wide)
    assert all(r["metrics"]["epochs"] == single["metrics"]["epochs"] for r in wide)
    assert wide[0]["n_params"] > 2 * single["n_params"]
    sums = sorted((r["seed"], r["status"]) for r in recs if r["protocol"] == "train_sum")
    assert sums == [(0, "ok"), (1, "skipped")]
    table = pd.read_csv(os.path.join(out, "table_nn.csv")).set_index("protocol")
    assert table.loc["train_sum", "status"] == "ok" and table.loc["train_sum", "n_replicates"] == 1
    assert table.loc["wide", "n_replicates"] == 2 and "wide: one net" in open(os.path.join(out, "table_nn.md")).read()
    df = pd.read_csv(os.path.join(out, "messages.csv"))
    w = df[df.comparison == "ens - wide"]
    assert sorted(w.message) == [4, 7] and not w.primary.any() and w.ci_low.notna().all()
    ts = df[df.comparison == "ens - train-sum"].iloc[0]
    assert ts.primary and not np.isnan(ts.ci_low) and ts.n_replicates == 2
    # the smoke run's units are these units: wide_model and train_sum_replicates change no other unit
    base = {r["unit"]: r["metrics"]["acc"] for r in Store(smoke_out).records() if r["seed"] == 0}
    same = [r for r in recs if r["seed"] == 0 and r["protocol"] in ("single", "ensemble", "train_sum")]
    assert same and all(r["unit"] in base for r in same)


def test_provenance_names_the_commit_the_process_loaded_not_the_head_at_record_time(monkeypatch):
    """A commit made during a long run must not relabel the records written after it: a record's git
    SHA is the checkout's HEAD when the process loaded the suite, not when the record was written."""
    from ntk_vs_nn import store

    loaded = store.LOADED_GIT_SHA
    here = os.path.dirname(store.__file__)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout: the loaded SHA is its HEAD (the tests commit nothing)
        assert loaded.split("+")[0] == head.stdout.strip()
    monkeypatch.setattr(store, "_git_sha", lambda: "f" * 40)  # HEAD moved on after the import
    assert store.provenance()["git_sha"] == loaded


def test_records_carry_provenance_and_tables_follow_records(smoke_out):
    recs = Store(smoke_out).records()
    for key in (
        "config_hash",
        "family",
        "model",
        "dataset",
        "protocol",
        "member",
        "seed",
        "metrics",
        "wall_s",
        "versions",
        "device",
        "git_sha",
        "date",
    ):
        assert all(key in r for r in recs), key
    trained = [r for r in recs if r["protocol"] == "single" and r["status"] == "ok"]
    assert trained and all(r["predictions"].endswith(".npz") for r in trained)
    for r in trained:  # the record names its predictions file, relative to OUT, and its test correctness
        with np.load(os.path.join(smoke_out, r["predictions"])) as f:
            assert {"train", "val", "test"} <= set(f.files)
            assert len(f["test"]) == r["n_test"]
        correct = decode_correct(r["test_correct"], r["n_test"])
        assert correct.mean() * 100 == pytest.approx(r["metrics"]["acc"])
        assert 0 < r["metrics"]["train_chance"] <= 100
    ens = [r for r in recs if r["protocol"] == "ensemble" and r["status"] == "ok"]
    assert ens and all(
        decode_correct(r["test_correct"], r["n_test"]).mean() * 100 == pytest.approx(r["metrics"]["acc"]) for r in ens
    )
    with open(os.path.join(smoke_out, "config.json")) as f:
        cfg = config_from_dict({k: v for k, v in json.load(f).items() if k != "experiment"})
    y = load_dataset(cfg.dataset, cfg.data, cfg.run.seed).y_test
    checked = 0
    for e in ens:  # leave-one-out ensembles (the bootstrap's member noise): the other singles' combination
        same = [r for r in trained if (r["family"], r["model"]) == (e["family"], e["model"])
                and r["config_hash"] == e["config_hash"]]  # fmt: skip
        if len(same) < 2:
            continue
        logits = {}
        for r in same:
            with np.load(os.path.join(smoke_out, r["predictions"])) as f:
                logits[r["member"]] = f["test"]
        assert sorted(e["loo_members"]) == sorted(logits)
        for i, enc in zip(e["loo_members"], e["loo_correct"]):
            others = combine([lg for m, lg in sorted(logits.items()) if m != i], e["rule"])
            np.testing.assert_array_equal(decode_correct(enc, e["n_test"]), np.argmax(others, -1) == y)
            checked += 1
    assert checked
    singles = [r for r in recs if r["family"] == "gp" and r["protocol"] == "single"]
    accs = [r["metrics"]["acc"] for r in singles]
    df = pd.read_csv(os.path.join(smoke_out, "table_ntk.csv"))
    row = df[(df.family == "gp") & (df.protocol == "single")].iloc[0]
    assert row.acc_mean == pytest.approx(np.mean(accs))
    assert row.acc_best == pytest.approx(max(accs))


def test_rerun_resumes_without_training(smoke_out):
    before = Store(smoke_out).records()
    assert main(["table", "nn", "--preset", "smoke", "--out", smoke_out, *FAST]) == 0
    after = Store(smoke_out).records()
    trained = [r for r in after[len(before) :] if r["protocol"] not in ("ensemble", "sd_ensemble")]
    assert trained == []


def test_messages_command_rewrites_from_records(smoke_out):
    os.remove(os.path.join(smoke_out, "messages.csv"))
    assert main(["messages", "--out", smoke_out]) == 0
    assert os.path.exists(os.path.join(smoke_out, "messages.csv"))


BAD = [
    (["table", "nn", "--preset", "nope"], "unknown preset"),
    (["table", "nn", "--preset", "smoke", "--set", "table.nn_models=ResNet-11-1"], "unknown model"),
    (["table", "nn", "--preset", "smoke", "--dataset", "cifar7"], "unknown dataset"),
    (["table", "ntk", "--preset", "smoke", "--set", "table.ntk_families=ntk,rbf"], "unknown kernel family"),
    (["table", "nn", "--preset", "smoke", "--set", "train.lr"], "expects key=value"),
    (["table", "nn", "--preset", "smoke", "--set", "train.nope=1"], "unknown key"),
    (["table", "nn", "--preset", "smoke", "--set", "train.epochs=two"], "cannot parse"),
    (["table", "nn", "--preset", "smoke", "--dataset", "npz:/nonexistent.npz"], "no such file"),
    (["table", "nope"], "invalid choice"),
    (["table", "nn", "--preset", "smoke", "--set", "protocol.kd_perturb=sideways"], "protocol.kd_perturb"),
    (
        ["table", "nn", "--preset", "smoke", "--set", "protocol.kd_perturb=ods", "--set", "protocol.teacher=fixed"],
        "protocol.teacher=online",
    ),
    (["table", "nn", "--preset", "smoke", "--set", "protocol.kd_memberwise=on"], "BatchEnsemble-3"),
    (["table", "nn", "--preset", "smoke", "--set", "protocol.kd_student=BE2-Nope"], "unknown model"),
    (["table", "ntk", "--preset", "smoke", "--set", "protocol.kd_student=BE3-SimpleCNN-3-1"], "are nets"),
]


def _cli(argv) -> int:
    """The command's exit code, run in this process (argparse's own errors exit by SystemExit)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv,needle", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, argv, needle, capsys):
    """In this process (the CLI's own code path): exit code 2, one line on stderr naming the problem, no
    output folder."""
    out = tmp_path / "out"
    code = _cli([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not out.exists()


def test_bad_input_from_the_executable_is_one_line_exit_2(tmp_path):
    """The same through the installed command's process (its exit status, nothing but the line on stderr)."""
    out = tmp_path / "out"
    argv, needle = BAD[1]
    proc = subprocess.run(
        [sys.executable, "-m", "ntk_vs_nn", *argv, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert needle in proc.stderr and not out.exists()


def test_bad_npz_labels_rejected(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.normal(size=(20, 8)),
        y_train=np.full(20, -1),
        x_test=rng.normal(size=(5, 8)),
        y_test=np.zeros(5, int),
    )
    out = tmp_path / "out"
    assert _cli(["table", "nn", "--preset", "smoke", "--dataset", f"npz:{path}", "--out", str(out)]) == 2
    assert "labels" in capsys.readouterr().err and not out.exists()


def test_npz_dataset_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(140, 16)).astype(np.float32)
    y = (x[:, :8].sum(1) > 0).astype(np.int64)
    path = tmp_path / "toy.npz"
    np.savez(path, x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    out = str(tmp_path / "out")
    assert (
        main(["table", "nn", "--preset", "smoke", "--dataset", f"npz:{path}", "--out", out, "--set", "train.epochs=1"])
        == 0
    )
    df = pd.read_csv(os.path.join(out, "table_nn.csv"))
    assert set(df.dataset) == {"npz-toy"} and (df.status == "ok").all()


@pytest.mark.parametrize(
    "dataset,env", [("cifar10", "NTK_VS_NN_CIFAR_DIR"), ("fashion_mnist", "NTK_VS_NN_FASHION_MNIST")]
)
def test_missing_image_data_says_how_to_get_it(tmp_path, dataset, env, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    monkeypatch.setenv(env, str(empty))
    second = "data.source=binary" if dataset == "cifar10" else "data.n_test=0"
    argv = ["table", "nn", "--preset", "smoke", "--dataset", dataset, "--set", f"data.data_dir={empty}"]
    argv += ["--set", second]
    assert _cli([*argv, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert ("cifar-10-binary.tar.gz" in lines[0]) if dataset == "cifar10" else ("get_fashion_mnist" in lines[0])
    assert not out.exists()


_CLEANUP_ERROR = """
import os, signal, sys
from ntk_vs_nn import cli

def command(args):  # like np.savez_compressed: Ctrl-C inside, then the library's cleanup fails
    try:
        if {interrupt}:
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        raise ValueError("Can't close the ZIP file while there is an open writing handle on it")

cli.COMMANDS["presets"] = command
sys.exit(cli.main(["presets"]))
"""


@pytest.mark.parametrize("interrupt", [True, False])
def test_ctrl_c_inside_a_library_cleanup_is_still_an_interrupt(interrupt):
    """A KeyboardInterrupt that a library's cleanup turns into its own error (CI saw zipfile's
    ValueError) exits 130 with the resume line; the same error without Ctrl-C stays a failure."""
    proc = subprocess.run(
        [sys.executable, "-c", _CLEANUP_ERROR.format(interrupt=interrupt)],
        capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: __import__("signal").signal(__import__("signal").SIGINT, __import__("signal").SIG_DFL),
    )  # fmt: skip
    if interrupt:
        assert proc.returncode == 130 and "rerun the same command to resume" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 1 and "ValueError" in proc.stderr and "resume" not in proc.stderr, proc.stderr

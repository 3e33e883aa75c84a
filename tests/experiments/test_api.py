"""The package's public API and what every experiment shares: one CLI, one store, regenerating a
committed folder from its records."""

import filecmp
import os
import shutil
import subprocess
import sys

import pytest

import ntk_vs_nn
from ntk_vs_nn import experiments
from ntk_vs_nn.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_public_name_resolves():
    assert ntk_vs_nn.__all__ and len(set(ntk_vs_nn.__all__)) == len(ntk_vs_nn.__all__)
    for name in ntk_vs_nn.__all__:
        assert getattr(ntk_vs_nn, name) is not None, name
    with pytest.raises(AttributeError):
        ntk_vs_nn.not_a_name  # noqa: B018
    assert set(ntk_vs_nn.EXPERIMENTS) == {"tables", "multiview", "gaussian", "channels", "diversity"}
    assert ntk_vs_nn.metrics.dee(0.4, [0.5, 0.4, 0.3]) == 2.0


def test_import_starts_no_jax():
    """The CLI splits the host CPU into XLA devices before jax starts: importing the package, its
    experiments registry and the CLI must not import jax."""
    code = "import sys, ntk_vs_nn, ntk_vs_nn.cli, ntk_vs_nn.experiments.tables; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", sorted(experiments.REGISTRY))
def test_every_experiment_is_registered_with_presets(name):
    exp = experiments.get(name)
    assert exp.name == name and "smoke" in exp.presets
    cfg = exp.configure("smoke")
    assert type(cfg) is exp.config
    with pytest.raises(experiments.UserError, match="unknown preset"):
        exp.configure("no-such-preset")
    with pytest.raises(experiments.UserError, match="unknown key"):
        exp.configure("smoke", ["no_section.field=1"])


def _committed_folders():
    """Every committed run folder: a config.json beside a records.jsonl under results/."""
    found = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, "results")):
        if "config.json" in files and "records.jsonl" in files:
            found.append(os.path.relpath(dirpath, os.path.join(ROOT, "results")))
    return sorted(found)


def test_committed_folders_found():
    assert {"quick-mnist1d", "fmnist-fashion_mnist", "gaussian"} <= set(_committed_folders())


@pytest.mark.parametrize("folder", _committed_folders())
def test_messages_regenerates_a_committed_folder_byte_identical(folder, tmp_path, monkeypatch):
    """`ntk-vs-nn messages --out results/FOLDER` rewrites a committed folder's tables and verdicts
    from its records alone: byte-identical to the committed files (run on a copy at the same path
    relative to the working directory, as from the repository's root)."""
    src = os.path.join(ROOT, "results", folder)
    dst = tmp_path / "results" / folder
    monkeypatch.chdir(tmp_path)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("units", "figures", "*.png", "*.html"))
    derived = [f for f in os.listdir(dst) if f.endswith((".md", ".csv")) and not f.startswith(("README", "report"))]
    for f in derived:  # they must be written again, not left in place
        os.remove(dst / f)
    assert main(["messages", "--out", os.path.join("results", folder)]) == 0
    rewritten = [f for f in derived if (dst / f).exists()]
    assert rewritten, f"nothing regenerated in {folder}"
    for f in rewritten:
        assert filecmp.cmp(dst / f, os.path.join(src, f), shallow=False), f"{folder}/{f} differs"


def test_messages_on_a_folder_without_config_is_one_error(tmp_path, capsys):
    assert main(["messages", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "config.json" in err[0]


def test_run_unknown_experiment_is_one_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "nope", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and not (tmp_path / "o").exists()


SMOKE_SETS = {  # the smoke preset of an experiment made smaller still (the others: as they are)
    "tables": ["--set", "data.n_train=160", "--set", "data.n_test=100", "--set", "train.epochs=3"],
    "diversity": ["--set", "run.replicates=1"],
}
PROVENANCE = ("config_hash", "unit", "date", "versions", "device", "git_sha", "host")


@pytest.mark.parametrize("name", sorted(experiments.REGISTRY))
def test_every_experiment_runs_resumes_after_ctrl_c_and_regenerates(name, tmp_path):
    """Every registered experiment, `ntk-vs-nn run NAME --preset smoke` end to end (a new experiment is
    covered by registering it with a smoke preset): Ctrl-C stops it at a unit boundary (exit 130), the
    same command resumes without training a finished unit again, every record carries its provenance,
    and `messages` rewrites the outputs byte-identical from the records."""
    import json
    import signal
    import time

    out = tmp_path / "run"
    assert "smoke" in experiments.get(name).presets, f"{name}: every experiment has a smoke preset the tests run"
    sets = SMOKE_SETS.get(name, [])
    argv = [sys.executable, "-m", "ntk_vs_nn", "run", name, "--preset", "smoke", *sets, "--out", str(out)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job inherits it ignored
    )  # fmt: skip
    path = out / "records.jsonl"
    t0 = time.time()
    while not (path.exists() and path.read_text().count("\n") >= 1):
        assert proc.poll() is None, f"{name} ended before its first record: {proc.stderr.read()}"
        assert time.time() - t0 < 300
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "rerun the same command to resume" in err, err
    first = [json.loads(line) for line in path.read_text().splitlines()]
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert recs[: len(first)] == first and len(recs) > len(first)
    trained = [r["unit"] for r in recs if r.get("protocol") not in ("ensemble", "sd_ensemble")]
    assert len(trained) == len(set(trained)), "a finished unit was trained again"
    for r in recs:
        assert all(k in r for k in PROVENANCE), (name, sorted(r))
    saved = json.loads((out / "config.json").read_text())
    assert saved["experiment"] == name and saved["preset"] == "smoke"
    exp, cfg = experiments.load_config(str(out))  # what `messages` reads back: the config that ran
    assert exp is experiments.get(name) and cfg == exp.configure("smoke", [a for a in sets if a != "--set"])
    outputs = {f: (out / f).read_bytes() for f in os.listdir(out) if f.endswith((".md", ".csv"))}
    assert outputs
    for f in outputs:
        os.remove(out / f)
    assert main(["messages", "--out", str(out)]) == 0
    for f, content in outputs.items():
        assert (out / f).read_bytes() == content, f"{name}: {f} differs when regenerated"

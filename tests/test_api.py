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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_public_name_resolves():
    assert ntk_vs_nn.__all__ and len(set(ntk_vs_nn.__all__)) == len(ntk_vs_nn.__all__)
    for name in ntk_vs_nn.__all__:
        assert getattr(ntk_vs_nn, name) is not None, name
    with pytest.raises(AttributeError):
        ntk_vs_nn.not_a_name  # noqa: B018
    assert set(ntk_vs_nn.EXPERIMENTS) == {"tables", "multiview", "gaussian", "channels"}


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

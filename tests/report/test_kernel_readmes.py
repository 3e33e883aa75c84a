"""scripts/kernel_readmes.py: the committed attribution of message ① (results/kernel-attribution-mnist1d) and
the gradient-descent kernel table's README (results/quick-mnist1d-kernel-gd) regenerate from their runs'
records, and the attribution's backend comparison is a paired difference."""

import importlib.util
import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FOLDER = os.path.join("results", "kernel-attribution-mnist1d")


def _script():
    spec = importlib.util.spec_from_file_location("kernel_readmes", os.path.join(REPO, "scripts", "kernel_readmes.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_committed_attribution_regenerates_byte_identical(monkeypatch):
    """Every generated file (README included: its reading quotes the tables) equals what the script
    writes from the variants' records and CSVs now, so no number in them can go stale."""
    monkeypatch.chdir(REPO)
    written = _script().write(FOLDER)
    assert set(written) == {"README.md", "comparison.md", "comparison.csv", "attribution.md", "attribution.csv"}
    for name, text in written.items():
        with open(os.path.join(FOLDER, name)) as fh:
            assert fh.read() == text, f"{FOLDER}/{name} is stale: rerun scripts/kernel_readmes.py attribution {FOLDER}"


@pytest.mark.parametrize("swap", [False, True])
def test_the_backend_comparison_is_paired(tmp_path, swap):
    """Two copies of one run differ by exactly 0 in every cell, with a zero-width interval (the pairing
    over test points, replicates and members); gd against function and back flips every sign."""
    mod = _script()
    src = os.path.join(REPO, FOLDER)
    keep = shutil.ignore_patterns("units", "*.md")
    if not swap:
        for name in ("gd", "function"):
            shutil.copytree(os.path.join(src, "gd"), tmp_path / name, ignore=keep)
        df = mod.comparison(str(tmp_path), n_boot=200)
        assert len(df) == 12 and (df["d"] == 0).all() and (df["ci_low"] == 0).all() and (df["ci_high"] == 0).all()
        assert (df["verdict"] == "agree").all()
        return
    shutil.copytree(os.path.join(src, "gd"), tmp_path / "function", ignore=keep)
    shutil.copytree(os.path.join(src, "function"), tmp_path / "gd", ignore=keep)
    there, back = mod.comparison(src, n_boot=200), mod.comparison(str(tmp_path), n_boot=200)
    assert (back["d"].round(9) == -there["d"].round(9)).all()
    assert (back["gd"] == there["function"]).all() and (back["function"] == there["gd"]).all()


GD_TABLES = [  # (the gradient-descent kernel table, its Adam-trained counterpart, the folder of its budget)
    ("quick-mnist1d-kernel-gd", "quick-mnist1d", None),
    ("fmnist-premise-kernel-gd", "fmnist-premise-fashion_mnist", "results/fmnist-sizing/kernel-gd"),
]


@pytest.mark.parametrize("folder,adam,budget", GD_TABLES)
def test_the_gradient_descent_tables_readme_regenerates_byte_identical(monkeypatch, folder, adam, budget):
    """results/<gd table>/README.md: its tables and reading are read from its messages.csv and records and from
    the Adam-trained rows' messages.csv, so a changed number there fails here."""
    monkeypatch.chdir(REPO)
    gd = os.path.join("results", folder)
    script = _script()
    text = script.gd_readme(gd, os.path.join("results", adam), budget or script.BUDGET)
    with open(os.path.join(gd, "README.md")) as fh:
        assert fh.read() == text, f"{gd}/README.md is stale: rerun scripts/kernel_readmes.py gd-table"

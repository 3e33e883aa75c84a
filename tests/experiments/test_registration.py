"""Registered (confirmatory) runs (ntk_vs_nn/experiments/registration.py): the configuration comes from a
committed file alone, the run records the file's sha256 and stops with one error line when the file changed."""

import json
import os
import subprocess

import pytest

from ntk_vs_nn.cli import main
from ntk_vs_nn.config.presets import get_preset
from ntk_vs_nn.experiments import registration
from ntk_vs_nn.store import Store

FAST = ["data.n_train=160", "data.n_test=100", "train.epochs=1"]


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)  # fmt: skip


@pytest.fixture
def registered(tmp_path):
    """A git repository holding a committed registration of the smoke nets table."""
    from ntk_vs_nn.config import override

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    cfg = override(get_preset("smoke"), FAST, top_level=("dataset",))
    reg = {"name": "smoke-nn", "experiment": "tables", "which": ["nn"], "preset": "smoke", "overrides": FAST,
           "seeds": "0 (a test)", "claims": [{"message": 7, "comparison": "ens - mean - 3σ", "direction": "> 0"}],
           "config_hash": cfg.science_hash()}  # fmt: skip
    path = repo / "smoke-nn.json"
    path.write_text(json.dumps(reg, indent=1))
    _git(repo, "add", "smoke-nn.json")
    _git(repo, "commit", "-q", "-m", "register")
    return repo, path, reg


def test_a_registered_run_records_its_registration_and_says_so(registered, tmp_path):
    repo, path, reg = registered
    out = str(tmp_path / "out")
    assert main(["table", "nn", "--registration", str(path), "--out", out]) == 0
    rec = json.load(open(os.path.join(out, "registration.json")))
    assert rec["registration"] == reg and len(rec["sha256"]) == 64 and len(rec["commit"]) == 40
    for name in ("messages.md", "table_nn.md"):
        lines = open(os.path.join(out, name)).read().splitlines()
        assert lines[2].startswith("**Confirmatory run**, registered in `smoke-nn` (sha256 ") and lines[1] == ""
        assert not any(x.startswith("**Exploratory run**") for x in lines)
    n = len(Store(out).records())
    assert main(["table", "nn", "--registration", str(path), "--out", out]) == 0  # resumes: nothing to train
    assert len(Store(out).records()) == n


def test_a_changed_registration_stops_the_run_with_one_error_line(registered, tmp_path, capfd):
    repo, path, reg = registered
    out = str(tmp_path / "out")
    assert main(["table", "nn", "--registration", str(path), "--out", out]) == 0
    capfd.readouterr()
    path.write_text(json.dumps({**reg, "seeds": "0 and 1"}, indent=1))  # changed, not committed
    assert main(["table", "nn", "--registration", str(path), "--out", out]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed since its last commit" in err[0]
    _git(repo, "commit", "-q", "-am", "edit after the run started")
    assert main(["table", "nn", "--registration", str(path), "--out", out]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed since this run started" in err[0]
    assert main(["table", "nn", "--preset", "smoke", "--out", out, *sum((["--set", o] for o in FAST), [])]) == 2
    assert "registered run's folder" in capfd.readouterr().err


def test_a_registered_run_takes_nothing_beside_the_file(registered, tmp_path, capfd):
    repo, path, reg = registered
    out = str(tmp_path / "out")
    for extra in (["--set", "train.epochs=2"], ["--preset", "smoke"]):
        assert main(["table", "nn", "--registration", str(path), "--out", out, *extra]) == 2
        assert "from the file alone" in capfd.readouterr().err
    assert main(["table", "ntk", "--registration", str(path), "--out", out]) == 2
    assert "registers table(s) nn, not ntk" in capfd.readouterr().err
    path.write_text(json.dumps({**reg, "config_hash": "0" * 12}, indent=1))
    _git(repo, "commit", "-q", "-am", "a hash the settings do not resolve to")
    assert main(["table", "nn", "--registration", str(path), "--out", out]) == 2
    assert "now resolve to" in capfd.readouterr().err
    loose = repo / "loose.json"
    loose.write_text(json.dumps(reg))
    assert main(["table", "nn", "--registration", str(loose), "--out", out]) == 2
    assert "not committed" in capfd.readouterr().err
    assert not os.path.exists(os.path.join(out, "records.jsonl"))


def test_the_committed_registrations_resolve_to_their_registered_configs():
    """Every file under registrations/ loads and its settings resolve to its registered hash with this code:
    a change that moves a registered configuration is caught here, not by the run."""
    from ntk_vs_nn import experiments

    root = os.path.join(os.path.dirname(__file__), "..", "..", "registrations")
    files = sorted(f for f in os.listdir(root) if f.endswith(".json"))
    assert files
    for f in files:
        reg = registration.load(os.path.join(root, f))
        cfg = experiments.get(reg.experiment).configure(reg.preset, reg.overrides)
        assert cfg.science_hash() == reg.config_hash, f
        assert reg.claims and reg.seeds


def test_the_decisive_wide_control_has_about_the_ensembles_parameter_count():
    """The decisive preset's wide control is "one net of about the ensemble's size": within 20 % of the L
    members' parameters together, and several times one member's."""
    import jax
    import jax.numpy as jnp

    from ntk_vs_nn.families import make_family, param_count

    cfg = get_preset("decisive")
    x = jnp.zeros((1, 40, 1))
    count = lambda m: param_count(make_family("nn", m, 10, 1, cfg).init(jax.random.key(0), x))  # noqa: E731
    member, wide = count(cfg.table.nn_models[0]), count(cfg.protocol.wide_model)
    assert 0.8 < wide / (cfg.protocol.members * member) < 1.2 and wide > 5 * member


def test_every_markdown_output_of_an_unregistered_run_says_exploratory_once(tmp_path):
    """A run without a registration: each Markdown output (not the folder's README) carries the exploratory
    line under its title exactly once, also after `messages` rewrites the outputs (the stamp replaces itself)."""
    out = tmp_path / "out"
    assert main(["table", "nn", "--preset", "smoke", "--out", str(out), *sum((["--set", o] for o in FAST), [])]) == 0
    (out / "README.md").write_text("# notes\n")
    assert main(["messages", "--out", str(out)]) == 0
    mds = sorted(p for p in os.listdir(out) if p.endswith(".md") and p != "README.md")
    assert {"messages.md", "table_nn.md"} <= set(mds)
    for name in mds:
        lines = (out / name).read_text().splitlines()
        assert lines[0].startswith("# ") and lines[2] == registration.EXPLORATORY, name
        assert sum(x == registration.EXPLORATORY for x in lines) == 1, name
    assert (out / "README.md").read_text() == "# notes\n"


@pytest.mark.parametrize("text", ["# title\n\nbody\n", "# title\nbody\n", "no title\n\nbody\n", "# t\n\n\nbody\n"])
def test_stamping_a_stamped_file_again_changes_nothing(text):
    """A Markdown file no run rewrites (results/multiview/search.md) is stamped at every `messages`: the
    second stamp must give the first's bytes (before, each pass added a blank line under the stamp), and a
    confirmatory stamp replaces an exploratory one in place."""
    once = registration.stamp_text(text, registration.EXPLORATORY)
    assert registration.stamp_text(once, registration.EXPLORATORY) == once
    assert once.count(registration.EXPLORATORY) == 1
    assert [x for x in once.splitlines() if x and x != registration.EXPLORATORY] == [x for x in text.splitlines() if x]
    conf = registration.stamp_text(once, f"{registration.CONFIRMATORY} `x` (sha256 0) before it trained.")
    assert registration.EXPLORATORY_MARK not in conf and conf.count("\n") == once.count("\n")


def test_run_command_names_the_registration_or_every_changed_setting(tmp_path):
    """A registered run's command is its file alone; an exploratory one's is the preset plus one --set per
    changed field (a section's, a top-level one's, tuples comma-joined), and nothing for unchanged ones: the
    command rebuilds the config it describes."""
    import dataclasses

    from ntk_vs_nn.experiments.channels import EXPERIMENT as exp
    from ntk_vs_nn.experiments.channels import PRESETS

    sets = ["run.seed=7", "pretrain.stage=1", "channels.variants=original,split_8", "fallback=false"]
    cfg = exp.configure("smoke", sets)
    cmd = registration.run_command("channels", cfg, PRESETS, str(tmp_path))
    got = cmd.split(" --set ")[1:]
    assert cmd.startswith("ntk-vs-nn run channels --preset smoke --set ") and "--out" not in cmd
    assert sorted(got) == sorted(["run.seed=7", "pretrain.stage=1", "channels.variants=original,split_8",
                                  "fallback=False"])  # fmt: skip
    rebuilt = exp.configure("smoke", [s.replace("False", "false") for s in got])
    assert dataclasses.asdict(rebuilt) == dataclasses.asdict(cfg)
    same = registration.run_command("channels", exp.configure("smoke", []), PRESETS, str(tmp_path))
    assert same == "ntk-vs-nn run channels --preset smoke"
    (tmp_path / registration.RECORD).write_text(json.dumps({"file": "x.json", "sha256": "0" * 64, "commit": "c",
                                                            "registration": {"name": "x", "experiment": "channels",
                                                                             "preset": "smoke", "overrides": [],
                                                                             "seeds": "", "claims": [],
                                                                             "config_hash": "h"}}))  # fmt: skip
    assert registration.run_command("channels", cfg, PRESETS, str(tmp_path)) == (
        "ntk-vs-nn run channels --registration registrations/x.json"
    )

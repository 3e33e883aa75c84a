"""Figure 3 data and CLI (ntk_vs_nn/experiments/gaussian.py): deterministic teachers, rejection sampling,
margin, label noise, a tiny end-to-end run, and bad --set input."""

import dataclasses
import os

import jax
import numpy as np
import pandas as pd
import pytest

from ntk_vs_nn.experiments import gaussian as g
from ntk_vs_nn.config import UserError


def small(**data) -> g.GaussianConfig:
    cfg = g.smoke()
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, d=20, k=4, chunk=2048, **data))


def test_teacher_labels_deterministic_given_seed():
    cfg = small()
    for arch in ("fc3", "conv2"):
        a = g.sample(g.Teacher(arch, cfg, jax.random.key(0)), jax.random.key(5), 500, "gaussian", "uniform", 0.0)
        b = g.sample(g.Teacher(arch, cfg, jax.random.key(0)), jax.random.key(5), 500, "gaussian", "uniform", 0.0)
        c = g.sample(g.Teacher(arch, cfg, jax.random.key(1)), jax.random.key(5), 500, "gaussian", "uniform", 0.0)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[1], c[1])  # another seed, another teacher: other labels on the same x
        np.testing.assert_array_equal(a[0], c[0])


def test_cell_data_deterministic_and_noise_only_on_train():
    cfg = small(n_train=300, n_test=200)
    t = g.Teacher("fc3", cfg, jax.random.key(0))
    a = g.make_cell_data(t, "nomargin/noise/uniform/mixture", cfg, jax.random.key(0))
    b = g.make_cell_data(t, "nomargin/noise/uniform/mixture", cfg, jax.random.key(0))
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(a[key], b[key])
    assert (a["y_train"] != a["y_train_clean"]).any()
    np.testing.assert_array_equal(a["y_test"], t.logits(a["x_test"], "mixture").argmax(-1))  # test labels clean


def test_rejection_sampling_balances_classes():
    """Tolerance: exact. Each class gets its quota N // k (the first N mod k classes one more), while
    uniform sampling from the same teacher is visibly unbalanced (so the test can fail)."""
    cfg = small()
    t = g.Teacher("fc3", cfg, jax.random.key(0))
    n, k = 1002, cfg.data.k
    _, y_uni, _ = g.sample(t, jax.random.key(1), n, "gaussian", "uniform", 0.0)
    x, y, stats = g.sample(t, jax.random.key(1), n, "gaussian", "rejection", 0.0)
    uni = np.bincount(y_uni, minlength=k)
    assert uni.max() - uni.min() > 0.05 * n, uni  # the teacher alone does not balance
    counts = np.bincount(y, minlength=k)
    np.testing.assert_array_equal(counts, [n // k + (c < n % k) for c in range(k)])
    assert stats["class_counts"] == counts.tolist() and stats["accept_rate"] < 1.0
    np.testing.assert_array_equal(y, t.logits(x, "gaussian").argmax(-1))  # labels are the teacher's
    assert len(np.unique(x, axis=0)) == n


def test_margin_filter_enforces_the_margin():
    cfg = small()
    t = g.Teacher("conv2", cfg, jax.random.key(0))
    margin = 0.5
    x_all, _, _ = g.sample(t, jax.random.key(2), 2000, "gaussian", "uniform", 0.0)
    assert (g.top2_gap(t.logits(x_all, "gaussian")) < margin).mean() > 0.1  # the filter has work to do
    x, y, stats = g.sample(t, jax.random.key(2), 1000, "gaussian", "uniform", margin)
    gaps = g.top2_gap(t.logits(x, "gaussian"))
    assert gaps.min() >= margin and stats["accept_rate"] < 0.9
    xr, yr, _ = g.sample(t, jax.random.key(2), 1000, "mixture", "rejection", margin)  # both filters at once
    assert g.top2_gap(t.logits(xr, "mixture")).min() >= margin
    assert np.bincount(yr, minlength=cfg.data.k).tolist() == [250] * 4


def test_impossible_margin_is_a_clear_error():
    cfg = small(max_draw_factor=2)
    t = g.Teacher("linear", cfg, jax.random.key(0))
    with pytest.raises(UserError, match="only .* of 500 draws accepted"):
        g.sample(t, jax.random.key(0), 500, "gaussian", "uniform", 50.0)


def test_label_noise_flips_about_ten_percent():
    n, k, rate = 20000, 10, 0.1
    y = np.asarray(jax.random.randint(jax.random.key(0), (n,), 0, k), np.int32)
    noisy = g.flip_labels(jax.random.key(1), y, rate, k)
    flipped = noisy != y
    sigma = np.sqrt(rate * (1 - rate) / n)  # binomial std of the flipped fraction
    assert abs(flipped.mean() - rate) < 4 * sigma, flipped.mean()
    # a flip goes to each of the k-1 other classes about equally often
    shifts = np.bincount(((noisy - y) % k)[flipped], minlength=k)[1:]
    p = 1 / (k - 1)
    assert np.all(np.abs(shifts / flipped.sum() - p) < 5 * np.sqrt(p * (1 - p) / flipped.sum())), shifts
    np.testing.assert_array_equal(g.flip_labels(jax.random.key(1), y, 0.0, k), y)


def test_settings_and_overrides():
    cfg = g.config_from_sets(["preset=paper", "data.d=50", "grid.teachers=fc2,conv3"], g.PRESETS)
    assert cfg.preset == "paper" and cfg.data.d == 50 and cfg.grid.teachers == ("fc2", "conv3")
    assert len(cfg.settings) == 16 and cfg.student.members == 10
    assert g.config_from_sets([], g.PRESETS).settings == g.CPU_SETTINGS
    assert g.parse_setting("margin/noise/rejection/mixture")["sampling"] == "rejection"


def test_cli_end_to_end_writes_its_table(tmp_path):
    out = str(tmp_path / "g")
    # linear and fc2 teachers both get fc2 students: one compiled student for the four cells
    sets = ["preset=smoke", "grid.teachers=linear,fc2", "data.n_train=128", "data.n_test=128", "student.members=2"]
    sets += ["grid.settings=nomargin/clean/uniform/gaussian,margin/noise/rejection/mixture"]
    assert g.main(["--out", out, *sum((["--set", s] for s in sets), [])]) == 0
    for name in ("table.md", "table.csv", "config.json", "summary.md", "cells.jsonl"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    df = pd.read_csv(os.path.join(out, "table.csv"))
    assert len(df) == 4 and set(df.teacher) == {"linear", "fc2"} and (df.status == "ok").all()
    assert set(df.student) == {"fc2"}
    assert df.single_mean.between(0, 100).all() and df.ensemble.between(0, 100).all()
    np.testing.assert_allclose(df.gain, df.ensemble - df.single_mean, atol=1e-9)
    assert df.paper_single.notna().all()  # every cell found in the paper's table
    md = open(os.path.join(out, "table.md")).read()
    assert "## Ours" in md and "margin · 10% noise · rejection · mixture" in md and "(" in md
    assert "Verdict" in open(os.path.join(out, "summary.md")).read()
    assert g.main(["--out", out, *sum((["--set", s] for s in sets), [])]) == 0  # resumes: nothing retrained
    assert len(open(os.path.join(out, "cells.jsonl")).readlines()) == 4


@pytest.mark.parametrize(
    "bad",
    ["data.nope=1", "data.d=abc", "preset=huge", "grid.settings=nomargin/clean/uniform", "grid.teachers=fc9",
     "student.members=0", "justakey"],
)  # fmt: skip
def test_bad_set_is_one_error_line_exit_2(bad, tmp_path, capsys):
    out = tmp_path / "never"
    assert g.main(["--out", str(out), "--set", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists()

"""Figure 3's outputs, derived from its records alone: table.md (ours beside the paper's, in the
paper's layout), table.csv (tidy, one row per cell), summary.md (the claim's verdict) and claims.csv
(the claim as d with its confidence interval)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ntk_vs_nn import paper
from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis.verdict import decide_interval
from ntk_vs_nn.data.gaussian import parse_setting

COLUMNS = (
    "teacher", "student", "setting", "margin", "noise", "sampling", "input", "n_members", "single_mean",
    "single_std", "single_min", "single_max", "ensemble", "gain", "acc_by_size", "train_acc_mean", "final_loss",
    "train_class_min", "train_class_max", "accept_rate_train", "noise_flipped", "status", "wall_s",
    "paper_single", "paper_ensemble", "paper_gain",
)  # fmt: skip


def _paper_lookup() -> dict:
    out = {}
    for r in paper.load("gaussian").to_dict("records"):
        setting = "/".join(
            (
                "margin" if r["margin"] == "yes" else "nomargin",
                "clean" if r["label_noise"] == "none" else "noise",
                r["sampling"],
                r["input"],
            )
        )
        out[(r["teacher"], setting)] = (float(r["single_acc"]), float(r["ensemble_acc"]))
    return out


def setting_label(setting: str) -> str:
    s = parse_setting(setting)
    return " · ".join(
        (
            "margin" if s["margin"] == "margin" else "no margin",
            "10% noise" if s["noise"] == "noise" else "no noise",
            s["sampling"],
            s["input"],
        )
    )


def tidy(cells: list[dict]) -> pd.DataFrame:
    """One row per cell record, with the paper's numbers for the same (teacher, setting)."""
    ref = _paper_lookup()
    rows = []
    for c in cells:
        p = ref.get((c["teacher"], c["setting"]), (np.nan, np.nan))
        rows.append({**c, "paper_single": p[0], "paper_ensemble": p[1], "paper_gain": round(p[1] - p[0], 2)})
    return pd.DataFrame(rows)[list(COLUMNS)]


def _grid(df, teachers, settings, fmt) -> list[str]:
    head = "| teacher | " + " | ".join(setting_label(s) for s in settings) + " |"
    lines = [head, "| --- |" + " --- |" * len(settings)]
    for t in teachers:
        cells = []
        for s in settings:
            r = df[(df.teacher == t) & (df.setting == s)]
            cells.append(fmt(r.iloc[0]) if len(r) else "–")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def markdown(df, cfg) -> str:
    teachers = [t for t in cfg.grid.teachers if t in set(df.teacher)]
    settings = [s for s in cfg.settings if s in set(df.setting)]
    pct = lambda a, b: f"{a:.1f}% ({b:.1f}%)" if np.isfinite(a) else "–"
    sgn = lambda g: f"{g:+.1f}" if np.isfinite(g) else "–"
    out = [
        "# Figure 3: single model vs ensemble on Gaussian-like data",
        "",
        f"Preset `{cfg.preset}`, config `{cfg.science_hash()}`, seed {cfg.run.seed}. d = {cfg.data.d}, "
        f"k = {cfg.data.k}, N = {cfg.data.n_train} train / {cfg.data.n_test} test, L = {cfg.student.members} "
        f"students per cell, {cfg.train.epochs} epochs ({cfg.train.optimizer} lr {cfg.train.lr:g}, "
        f"{cfg.train.schedule}, batch {cfg.train.batch_size}); teachers width {cfg.teacher.width} / "
        f"{cfg.teacher.channels} channels, students {cfg.student.widen}x (fc, res) / {cfg.student.conv_widen}x (conv) "
        f"wider, the linear teacher's student {cfg.student.linear_as}; margin {cfg.data.margin:g} "
        f"(logit std units), noise {cfg.data.noise_rate:.0%}, mixture of {cfg.data.mixture_components} "
        f"(s^2 = {cfg.data.mixture_spread:g}).",
        "",
        '"xx% (yy%)": xx = single model (mean test accuracy of the L students), yy = their ensemble '
        "(logit average), as in the paper's Figure 3.",
        "",
        "## Ours",
        "",
        *_grid(df, teachers, settings, lambda r: pct(r.single_mean, r.ensemble)),
        "",
        "## The paper (Allen-Zhu & Li, Figure 3), same cells",
        "",
        *_grid(df, teachers, settings, lambda r: pct(r.paper_single, r.paper_ensemble)),
        "",
        "## Ensemble gain (ensemble − single, points): ours / paper; ± = std of the single students",
        "",
        *_grid(df, teachers, settings, lambda r: f"{sgn(r.gain)} ± {r.single_std:.1f} / {sgn(r.paper_gain)}"),
        "",
    ]
    return "\n".join(out)


CLAIM = "ensembles give ~no gain on Gaussian-like data"
CLAIM_COLUMNS = ("claim", "comparison", "strict", "d", "ci_low", "ci_high", "verdict", "n_cells", "n_boot", "level",
                 "evidence")  # fmt: skip


def claim(df, cfg) -> dict:
    """The claim "ensembles give ~no gain on Gaussian-like data" as ``d = claim.holds_below - mean gain
    over the cells`` (strict: the claim says d > 0), with a percentile-bootstrap interval over the cells
    (`analysis.bootstrap.unit_bootstrap`: the records keep one gain per cell, so the cells are the
    resampled units; ``claim.n_boot``, ``claim.level``, ``claim.boot_seed``), decided by
    `verdict.decide_interval`: holds if ci_low > 0, fails if ci_high < 0, else inconclusive."""
    ok = df[df.status == "ok"]
    gains = ok.gain.to_numpy()
    c = cfg.claim
    if len(gains):
        comp = bs.unit_bootstrap({"gain": gains}, lambda v: c.holds_below - v["gain"].mean(-1), c.n_boot, c.level,
                                 c.boot_seed)  # fmt: skip
    else:
        comp = bs.Comparison(float("nan"), float("nan"), float("nan"))
    band = np.maximum(2 * ok.single_std.to_numpy(), 0.2)
    nn_ref = paper.load("nn")
    real = {ds: float((g.ensemble_acc - g.single_mean_acc).mean()) for ds, g in nn_ref.groupby("dataset")}
    fig3 = paper.load("gaussian")
    fig3_gain = (fig3.ensemble_acc - fig3.single_acc).to_numpy()
    stat = lambda f: float(f(gains)) if len(gains) else float("nan")
    mean = stat(np.mean)
    return dict(
        verdict=decide_interval(comp.lo, comp.hi, strict=True),
        d=comp.d,
        ci_low=comp.lo,
        ci_high=comp.hi,
        cells=len(gains),
        mean_gain=mean,
        median_gain=stat(np.median),
        min_gain=stat(np.min),
        max_gain=stat(np.max),
        significant=int((gains > band).sum()),
        paper_cells=len(fig3_gain),
        paper_mean_gain=float(fig3_gain.mean()),
        paper_min_gain=float(fig3_gain.min()),
        paper_max_gain=float(fig3_gain.max()),
        paper_matched_mean_gain=float(ok.paper_gain.mean()),
        real_gain=real,
    )


def _num(x: float) -> str:
    return f"{x:+.2f}" if np.isfinite(x) else "n/a"


def claims_frame(v: dict, cfg) -> pd.DataFrame:
    """claims.csv: the claim as one comparison with its interval."""
    t = cfg.claim.holds_below
    ev = f"mean gain {v['mean_gain']:+.2f} points over {v['cells']} cells"
    row = dict(claim=CLAIM, comparison=f"{t:g} - mean gain", strict=True, d=v["d"], ci_low=v["ci_low"],
               ci_high=v["ci_high"], verdict=v["verdict"], n_cells=v["cells"], n_boot=cfg.claim.n_boot,
               level=cfg.claim.level, evidence=ev)  # fmt: skip
    return pd.DataFrame([row], columns=list(CLAIM_COLUMNS))


def rule_sentence(cfg) -> str:
    c = cfg.claim
    return (
        f"d = {c.holds_below:g} − the mean ensemble gain over the cells (points), the claim says d > 0; its "
        f"{100 * c.level:g} % interval is a percentile bootstrap over the cells ({c.n_boot} draws, seed "
        f"{c.boot_seed}; the records keep one gain per cell, so the cells are the resampled units); the claim "
        "holds if ci_low > 0, fails if ci_high < 0, and is inconclusive otherwise (`verdict.decide_interval`)."
    )


def summary_md(df, cfg, v: dict, command: str) -> str:
    """summary.md; the wall time is the sum of the cells' recorded wall times."""
    wall_s = float(df.wall_s.sum())
    by_teacher = df.groupby("teacher", sort=False).gain.mean()
    by_setting = df.groupby("setting", sort=False).gain.mean()
    real = ", ".join(f"{ds} {g:+.2f}" for ds, g in v["real_gain"].items())
    lines = [
        "# Figure 3 (Gaussian-like data): summary",
        "",
        f"Command: `{command}`",
        f"Wall time: {wall_s:.0f} s ({wall_s / 60:.1f} min, the sum of the cells' training times) for {len(df)} "
        f"cells ({len(set(df.teacher))} teachers x {len(set(df.setting))} settings, L = {cfg.student.members}).",
        "",
        f"**Claim** (PROTOCOLS §5, paper Fig. 3): ensembles give ~no gain on such data. **Verdict: {v['verdict']}**.",
        "",
        "| claim | d | ci_low | ci_high | verdict | evidence |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {CLAIM}: {cfg.claim.holds_below:g} − mean gain > 0 | {_num(v['d'])} | {_num(v['ci_low'])} | "
        f"{_num(v['ci_high'])} | **{v['verdict']}** | mean gain {v['mean_gain']:+.2f} points over {v['cells']} cells |",
        "",
        rule_sentence(cfg),
        "",
        f"- ours: mean ensemble gain {v['mean_gain']:+.2f} points over {v['cells']} cells (median "
        f"{v['median_gain']:+.2f}, range {v['min_gain']:+.2f} … {v['max_gain']:+.2f}); {v['significant']} of "
        f"{v['cells']} cells gain more than max(2σ_single, 0.2).",
        f"- the paper's Figure 3: mean gain {v['paper_mean_gain']:+.2f} over its {v['paper_cells']} cells (range "
        f"{v['paper_min_gain']:+.1f} … {v['paper_max_gain']:+.1f}); {v['paper_matched_mean_gain']:+.2f} over the "
        "cells we ran.",
        f"- real data, the paper's Figure 1 nets (mean over its 6 nets per dataset): {real}.",
        "",
        "Mean gain by teacher: " + ", ".join(f"{t} {g:+.2f}" for t, g in by_teacher.items()) + ".",
        "",
        "Mean gain by setting: " + "; ".join(f"{setting_label(s)} {g:+.2f}" for s, g in by_setting.items()) + ".",
        "",
        "Tables: `table.md` (ours, the paper's, the gains), `table.csv` (tidy, with acc_by_size, train accuracy, "
        "class balance and acceptance rate per cell), `claims.csv` (the claim's d, interval and verdict).",
        "",
    ]
    return "\n".join(lines)

"""Figure 3's outputs, derived from its records alone: table.md (ours beside the paper's, in the
paper's layout), table.csv (tidy, one row per cell), summary.md (the claim's verdict) and claims.csv
(the claim as d with its confidence interval)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ntk_vs_nn import paper
from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis.verdict import against_range, decide_interval
from ntk_vs_nn.data.gaussian import parse_setting

COLUMNS = (
    "teacher", "student", "setting", "margin", "noise", "sampling", "input", "n_members", "single_mean",
    "single_std", "single_min", "single_max", "ensemble", "gain", "acc_by_size", "train_acc_mean", "final_loss",
    "train_class_min", "train_class_max", "accept_rate_train", "noise_flipped", "status", "wall_s",
    "paper_single", "paper_ensemble", "paper_gain", "fits", "flag",
)  # fmt: skip
UNDERFIT, OVERFIT = "underfit", "over-fits"  # the flags of a cell (`tidy`)


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


def tidy(cells: list[dict], cfg) -> pd.DataFrame:
    """One row per cell record, with the paper's numbers for the same (teacher, setting) and the cell's
    flag: ``underfit`` when its students' mean train accuracy is below ``claim.fit_threshold`` (the
    premise, models that fit their training set, is missing there), ``over-fits`` when it fits yet its
    single test accuracy is more than ``claim.overfit_margin`` points below the paper's cell."""
    ref = _paper_lookup()
    c = cfg.claim
    rows = []
    for cell in cells:
        p = ref.get((cell["teacher"], cell["setting"]), (np.nan, np.nan))
        fits = bool(cell["train_acc_mean"] >= c.fit_threshold)
        over = fits and np.isfinite(p[0]) and cell["single_mean"] < p[0] - c.overfit_margin
        flag = OVERFIT if over else "" if fits else UNDERFIT
        rows.append({**cell, "paper_single": p[0], "paper_ensemble": p[1], "paper_gain": round(p[1] - p[0], 2),
                     "fits": fits, "flag": flag})  # fmt: skip
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
        "## Training set fit: the students' mean train accuracy (%) and the cell's flag",
        "",
        f"*{UNDERFIT}*: below {cfg.claim.fit_threshold:g} % train accuracy (on the labels trained on, flipped "
        f"ones included), so the premise (models that fit their training set) is missing; *{OVERFIT}*: fits, yet "
        f"its single test accuracy is more than {cfg.claim.overfit_margin:g} points below the paper's cell.",
        "",
        *_grid(df, teachers, settings, lambda r: f"{r.train_acc_mean:.1f}" + (f" *{r.flag}*" if r.flag else "")),
        "",
    ]
    return "\n".join(out)


CLAIM = "ensembles give ~no gain on Gaussian-like data"
CLAIM_COLUMNS = ("claim", "comparison", "strict", "d", "ci_low", "ci_high", "verdict", "n_cells", "n_boot", "level",
                 "evidence", "effect", "effect_value", "effect_ci_low", "effect_ci_high", "paper_lo", "paper_hi",
                 "vs_paper")  # fmt: skip


def _mean_gain(gains: np.ndarray, shift: float, cfg) -> bs.Comparison:
    """``shift - mean gain`` over the cells with its percentile-bootstrap interval over the cells."""
    c = cfg.claim
    if not len(gains):
        return bs.Comparison(float("nan"), float("nan"), float("nan"))
    return bs.unit_bootstrap({"gain": gains}, lambda v: shift - v["gain"].mean(-1), c.n_boot, c.level, c.boot_seed)


def claim(df, cfg) -> dict:
    """The claim "ensembles give ~no gain on Gaussian-like data" as ``d = claim.holds_below - mean gain
    over the cells`` (strict: the claim says d > 0), with a percentile-bootstrap interval over the cells
    (`analysis.bootstrap.unit_bootstrap`: the records keep one gain per cell, so the cells are the
    resampled units; ``claim.n_boot``, ``claim.level``, ``claim.boot_seed``), decided by
    `verdict.decide_interval`: holds if ci_low > 0, fails if ci_high < 0, else inconclusive. The same
    claim on the cells that fit their training set (``fit_*``: the premise), and the effect in the
    paper's units: the mean gain with its interval (the same draws) against the range of the paper's
    Figure 3 cells' gains (`verdict.against_range`)."""
    ok = df[df.status == "ok"]
    gains = ok.gain.to_numpy()
    c = cfg.claim
    comp = _mean_gain(gains, c.holds_below, cfg)
    fit = _mean_gain(ok[ok.fits.astype(bool)].gain.to_numpy(), c.holds_below, cfg)
    band = np.maximum(2 * ok.single_std.to_numpy(), 0.2)
    nn_ref = paper.load("nn")
    real = {ds: float((g.ensemble_acc - g.single_mean_acc).mean()) for ds, g in nn_ref.groupby("dataset")}
    fig3 = paper.load("gaussian")
    fig3_gain = (fig3.ensemble_acc - fig3.single_acc).to_numpy()
    stat = lambda f: float(f(gains)) if len(gains) else float("nan")
    mean = stat(np.mean)
    gain_lo, gain_hi = c.holds_below - comp.hi, c.holds_below - comp.lo  # the mean gain's interval
    return dict(
        verdict=decide_interval(comp.lo, comp.hi, strict=True),
        d=comp.d,
        ci_low=comp.lo,
        ci_high=comp.hi,
        cells=len(gains),
        fit_verdict=decide_interval(fit.lo, fit.hi, strict=True),
        fit_d=fit.d,
        fit_ci_low=fit.lo,
        fit_ci_high=fit.hi,
        fit_cells=int(ok.fits.astype(bool).sum()),
        underfit=int((ok.flag == UNDERFIT).sum()),
        overfit=int((ok.flag == OVERFIT).sum()),
        mean_gain=mean,
        mean_gain_ci_low=gain_lo,
        mean_gain_ci_high=gain_hi,
        vs_paper=against_range(gain_lo, gain_hi, float(fig3_gain.min()), float(fig3_gain.max())),
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
    """claims.csv: the claim as one comparison with its interval, then the same claim on the cells that fit
    their training set; ``effect`` columns: the mean gain with its interval beside the paper's cells' range."""
    t = cfg.claim.holds_below
    eff = dict(effect="mean ensemble gain (points)", effect_value=v["mean_gain"], effect_ci_low=v["mean_gain_ci_low"],
               effect_ci_high=v["mean_gain_ci_high"], paper_lo=v["paper_min_gain"], paper_hi=v["paper_max_gain"],
               vs_paper=v["vs_paper"])  # fmt: skip
    rows = [
        dict(claim=CLAIM, comparison=f"{t:g} - mean gain", strict=True, d=v["d"], ci_low=v["ci_low"],
             ci_high=v["ci_high"], verdict=v["verdict"], n_cells=v["cells"], n_boot=cfg.claim.n_boot,
             level=cfg.claim.level, evidence=f"mean gain {v['mean_gain']:+.2f} points over {v['cells']} cells",
             **eff),
        dict(claim=f"{CLAIM}, on the cells that fit their training set",
             comparison=f"{t:g} - mean gain (fitting cells)",
             strict=True, d=v["fit_d"], ci_low=v["fit_ci_low"], ci_high=v["fit_ci_high"], verdict=v["fit_verdict"],
             n_cells=v["fit_cells"], n_boot=cfg.claim.n_boot, level=cfg.claim.level,
             evidence=f"{v['fit_cells']} of {v['cells']} cells reach {cfg.claim.fit_threshold:g} % train accuracy"),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


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
        f"| the same, on the cells that fit their training set (≥ {cfg.claim.fit_threshold:g} % train) | "
        f"{_num(v['fit_d'])} | {_num(v['fit_ci_low'])} | {_num(v['fit_ci_high'])} | **{v['fit_verdict']}** | "
        f"{v['fit_cells']} of {v['cells']} cells fit |",
        "",
        f"The effect in the paper's units: mean ensemble gain {_num(v['mean_gain'])} [{_num(v['mean_gain_ci_low'])}, "
        f"{_num(v['mean_gain_ci_high'])}] points against the paper's Figure 3 cells' gains "
        f"{v['paper_min_gain']:+.1f} … {v['paper_max_gain']:+.1f}: **{v['vs_paper'] or 'n/a'}**.",
        f"Cells flagged: {v['underfit']} {UNDERFIT} (below {cfg.claim.fit_threshold:g} % train accuracy), "
        f"{v['overfit']} {OVERFIT} (fit, yet more than {cfg.claim.overfit_margin:g} points below the paper's single "
        "model); `table.md` shows each cell's train accuracy and flag.",
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

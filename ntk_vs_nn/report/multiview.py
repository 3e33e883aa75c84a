"""Outputs of the multi-view experiment (`experiments.multiview`): the table beside Allen-Zhu & Li's
statements, the lottery (which view each model learned), the sweep over mu, the KD / SD claims and
the summary, all from the aggregated rows and the per-model records.

Every statement and claim is a difference d that it says is >= 0 or > 0, with a percentile-bootstrap
interval (`family_draws`, in `report.multiview_draws`: the data draws are resampled when there are
several, then the trained models, then each group's test errors) decided by `verdict.decide_interval`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis.verdict import decide_interval
from ntk_vs_nn.report.multiview_draws import (  # noqa: F401 (re-exported: the experiment and tests use them here)
    NAMES,
    PROTOCOLS,
    draws_frame,
    draws_lines,
    family_draws,
    one_draw,
)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _sgn(x: float) -> str:
    return f"{x:+.3f}" if np.isfinite(x) else "n/a"


def table_markdown(agg: pd.DataFrame, cfg) -> str:
    """The protocols per family in units of mu beside the theorem's statements."""
    d, lr, p = cfg.data, cfg.learner, cfg.protocol
    lines = [
        "# Multi-view data: single, ensemble, KD, SD (Allen-Zhu & Li's theorem)",
        "",
        f"k = {d.k}, d = {d.d}, P = {d.P}, N = {d.n_train}, mu = {d.mu:g}, m = {lr.m}, "
        f"q = {lr.q}, varrho = {lr.varrho:g}, sigma0 = {lr.sigma0:g}, GD lr {lr.lr:g} x {lr.steps} steps "
        f"(ntk, gp: {lr.kernel_lr:g} / lambda_max{_kernel_budget(lr)}); KD/SD: engine.distill_loss, "
        f"alpha = {p.kd_alpha:g}, "
        f"tau = {p.kd_tau:g}; {d.n_test} test points. Error = (1 - mu) err_mv + mu err_sv, in units of mu; "
        "mean +- SE over the models (SE: spread over inits and test-set binomial error). The theorem is about "
        "the two-layer net (nn); ntk and gp rows are the paper's contrast." + _draws_note(p),
        "",
        "| family | protocol | models | error / mu | std / mu | multi-view err % | single-view err % | train acc % "
        "| theorem | d | ci_low | ci_high | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in agg.itertuples():
        lines.append(
            f"| {r.family} | {NAMES[r.protocol]} | {r.n_models} | {_fmt(r.error_mu)} +- {_fmt(r.error_mu_se)} | "
            f"{_fmt(r.error_mu_std)} | {r.err_mv_pct:.2f} | {r.err_sv_pct:.1f} | {r.train_acc_pct:.1f} | "
            f"{r.statement} | {_sgn(r.d)} | {_sgn(r.ci_low)} | {_sgn(r.ci_high)} | {r.verdict} |"
        )
    lines += ["", STATEMENT_RULE, "", rule_sentence(cfg.claim, p.draws)]
    return "\n".join(lines) + "\n"


def _kernel_budget(lr) -> str:
    """The kernel rows' momentum and steps where they differ from the nets' plain GD (else nothing)."""
    out = f", heavy-ball momentum {lr.kernel_momentum:g}" if lr.kernel_momentum else ""
    return out + (f" x {lr.kernel_steps} steps" if lr.kernel_steps not in (0, lr.steps) else "")


def _draws_note(p) -> str:
    """table.md's words on the data draws (none for one draw)."""
    if p.draws == 1:
        return ""
    return (
        f" Rows pool {p.draws} independent data draws (root seeds {p.seed}..{p.seed + p.draws - 1}, each with its "
        "own inits; per draw: `draws.csv`); the lottery is draw 0's."
    )


def lottery_markdown(views: pd.DataFrame, threshold: float) -> str:
    """Which view each model learned, per class (the lottery), and how the singles cover the views."""
    lines = [
        "# The lottery: which view each model learned",
        "",
        f"Cell = the views of class j with max_r <w_(j,r), v_(j,l)> >= {threshold:g} (varrho x patches_per_feature / "
        "own_low: the neuron's pre-activation on that view reaches the smoothed ReLU's linear part); "
        "`1+2` = both, `-` = none. Numbers in `lottery.csv`. For ntk the weights are the linearised model's "
        "(its function is linear in them), so the nn threshold only says how far W moved along each view.",
    ]
    for family, fv in views.groupby("family", sort=False):
        classes = sorted(fv.cls.unique())
        lines += ["", f"## {family}", "", "| model | " + " | ".join(f"class {j}" for j in classes) + " |"]
        lines.append("| --- " * (len(classes) + 1) + "|")
        for (protocol, member), g in fv.groupby(["protocol", "member"], sort=False):
            name = NAMES[protocol] + ("" if member < 0 else f" {member}")
            lines.append(f"| {name} | " + " | ".join(g.sort_values("cls").learned) + " |")
        lines.append("")
        for protocol, g in fv.groupby("protocol", sort=False):
            one, both, none = (float(g.learned.isin(v).mean()) for v in (["1", "2"], ["1+2"], ["-"]))
            lines.append(
                f"- {NAMES[protocol]}: one view {100 * one:.0f} %, both {100 * both:.0f} %, "
                f"none {100 * none:.0f} % of (model, class) pairs"
            )
        singles = fv[fv.protocol == "single"]
        cover = [
            f"{j}: {int(singles[singles.cls == j].learned.str.contains('1').sum())}/"
            f"{int(singles[singles.cls == j].learned.str.contains('2').sum())}"
            for j in classes
        ]
        lines.append(f"- singles that learned view 1 / view 2, per class: {', '.join(cover)}")
    return "\n".join(lines) + "\n"


def sweep_figure(sweep: pd.DataFrame, path: str) -> None:
    """Errors in units of mu against mu, one panel per family, with the theorem's levels dashed."""
    fams = list(dict.fromkeys(sweep.family))
    fig = Figure(figsize=(5.5 * len(fams), 4.0))
    FigureCanvasAgg(fig)
    for i, fam in enumerate(fams):
        ax = fig.add_subplot(1, len(fams), i + 1)
        for protocol, style in zip(PROTOCOLS, ("o-", "s-", "^-", "d-")):
            g = sweep[(sweep.family == fam) & (sweep.protocol == protocol)].sort_values("mu")
            ax.errorbar(g.mu, g.error_mu, yerr=2 * g.error_mu_se, fmt=style, capsize=3, label=NAMES[protocol])
        for level, text in ((0.5, "single (theorem)"), (0.26, "SD bound"), (0.01, "ensemble / KD bound")):
            ax.axhline(level, color="grey", ls="--", lw=0.8)
            ax.text(sweep.mu.min(), level, text, fontsize=7, va="bottom", color="grey")
        ax.set_xscale("log")
        ax.set_xticks(sorted(sweep.mu.unique()), [f"{m:g}" for m in sorted(sweep.mu.unique())])
        ax.minorticks_off()
        ax.set_xlabel("mu (fraction of single-view data)")
        ax.set_ylabel("test error / mu")
        n = int(sweep[(sweep.family == fam) & (sweep.protocol == "single")].n_models.max())
        ax.set_title(f"{fam}: error in units of mu (+- 2 SE), L = {n}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})


def summary_markdown(cfg, claims: list[str], sweep: pd.DataFrame, command: str, provenance: dict,
                     draw_lines: list[str] = ()) -> str:  # fmt: skip
    """summary.md: the command, the training time and machine (from the records), the claims, each data
    draw's errors and singles' training accuracy (``draw_lines``, `draws_lines`; several draws only), the sweep."""
    sweep_lines = []
    for (fam, protocol), g in sweep.groupby(["family", "protocol"], sort=False) if len(sweep) else []:
        pts = ", ".join(f"{m:g}: {e:.2f}" for m, e in zip(g.mu, g.error_mu))
        sweep_lines.append(f"- {fam} {NAMES[protocol]} (mu: error / mu): {pts}")
    secs = provenance["train_s"]
    lines = [
        "# Multi-view reproduction of Allen-Zhu & Li's theorem: summary",
        "",
        f"Command: `{command}`  ",
        f"Training time: **{secs / 60:.1f} min** ({secs:.0f} s, the sum over the {provenance['units']} trained "
        f"models) on {provenance['device']}, jax {provenance['jax']}.",
        "",
        "The regime and why each setting was chosen: the docstring of `ntk_vs_nn/experiments/multiview.py`; the "
        "search behind it: `search.csv` / `search.md` (`scripts/multiview_search.py`). Full table: `table.md`; "
        "the lottery: `lottery.md`.",
        "",
        "## The theorem's statements (nn) and the kernel contrast",
        "",
        *claims,
        "",
        rule_sentence(cfg.claim, cfg.protocol.draws),
    ]
    if draw_lines:
        p = cfg.protocol
        lines += ["", "## Data draws", ""]
        lines.append(
            f"{p.draws} independent data draws, root seeds {p.seed}..{p.seed + p.draws - 1} (draw d: the data and "
            "every init of `--set protocol.seed=SEED+d`); the verdicts above resample them. Per draw (`draws.csv`):"
        )
        lines += ["", *draw_lines]
    if sweep_lines:
        sw = cfg.sweep
        lines += ["", "## Sweep over mu", ""]
        lines.append(
            f"Fresh data per mu (same seed{', draw 0' if cfg.protocol.draws > 1 else ''}), {sw.seeds} singles and "
            f"{sw.sd_students} SD students per point "
            f"({', '.join(sw.families)}); `sweep.png`."
        )
        lines += ["", *sweep_lines]
    lines += [
        "",
        "## Files",
        "",
        "`table.{md,csv}` (aggregated), `models.csv` (one row per trained model), `lottery.{md,csv}`, "
        "`sweep.{csv,png}`, `claims.csv` (the KD / SD claims: d, interval, verdict), `config.json` (every setting), "
        "`records.jsonl` (one record per model, with provenance), `units/` (each model's train and test logits), "
        "`summary.md`" + (", `draws.csv` (per data draw)." if draw_lines else "."),
    ]
    return "\n".join(lines) + "\n"


def error_row(pred, test: dict, mu: float) -> dict:
    """Test error split over multi- and single-view points, combined with the distribution's weights."""
    wrong = np.argmax(np.asarray(pred), axis=1) != np.asarray(test["y"])
    sv = np.asarray(test["is_single_view"])
    n_mv, n_sv = int((~sv).sum()), int(sv.sum())
    e_mv = float(wrong[~sv].mean()) if n_mv else 0.0
    e_sv = float(wrong[sv].mean()) if n_sv else 0.0
    err = (1 - mu) * e_mv + mu * e_sv
    var = (1 - mu) ** 2 * e_mv * (1 - e_mv) / max(n_mv, 1) + mu**2 * e_sv * (1 - e_sv) / max(n_sv, 1)
    return {"err_mv_pct": 100 * e_mv, "err_sv_pct": 100 * e_sv, "n_mv": n_mv, "n_sv": n_sv,
            "error_pct": 100 * err, "error_mu": err / mu, "se_mu": float(np.sqrt(var)) / mu}  # fmt: skip


# -- rows and verdicts ---------------------------------------------------------------------------------
# protocol -> (low, high) in units of mu (-inf: an upper bound only) and the theorem's words
# (arXiv 2012.09816, Thm 1 / seeds)
STATEMENTS = {
    "single": (0.49, 0.51, "single model error in [0.49, 0.51] mu"),
    "ensemble": (-np.inf, 0.01, "ensemble error <= 0.01 mu"),
    "kd": (-np.inf, 0.01, "KD student error <= 0.01 mu"),
    "sd": (-np.inf, 0.26, "SD student error <= 0.26 mu"),
}
_MODEL_COLUMNS = ("family", "protocol", "member", "seconds", "train_acc_pct", "err_mv_pct", "err_sv_pct",
                  "n_mv", "n_sv", "error_pct", "error_mu", "se_mu")  # fmt: skip


def models_frame(records: list[dict]) -> pd.DataFrame:
    """One row per model (and ensemble) record, in the records' order."""
    return pd.DataFrame([{c: r[c] for c in _MODEL_COLUMNS} for r in records], columns=list(_MODEL_COLUMNS))


def views_frame(records: list[dict], threshold: float) -> pd.DataFrame:
    """Per model with views (nn, ntk) and class: ``max_r <w_{j,r}, v_{j,l}>`` and the views >= ``threshold``."""
    rows = []
    for r in records:
        for j, (v1, v2) in enumerate(r.get("views") or []):
            learned = "+".join(f"{v + 1}" for v, c in enumerate((v1, v2)) if c >= threshold) or "-"
            rows.append({"family": r["family"], "protocol": r["protocol"], "member": r["member"], "cls": j,
                         "view1": v1, "view2": v2, "learned": learned})  # fmt: skip
    return pd.DataFrame(rows)


STATEMENT_RULE = (
    "A statement's d (error / mu) is hi - error for 'error <= hi' and min(hi - error, error - lo) for "
    "'error in [lo, hi]' (the statement is true iff d >= 0): it holds if ci_low >= 0, fails if ci_high < 0, "
    "and is inconclusive otherwise."
)


def rule_sentence(claim, draws: int = 1) -> str:
    over = "" if draws == 1 else f"the {draws} data draws, then within each drawn data draw "
    return (
        f"Intervals: {100 * claim.level:g} % percentile bootstrap ({claim.n_boot} draws, seed {claim.boot_seed}) "
        f"that resamples {over}the trained models (an SD student with its teacher single) and then each protocol's "
        "test errors binomially from its models' recorded counts (the records keep no per-point errors, so the "
        "protocols' test resamples are independent); `verdict.decide_interval` decides."
    )


def aggregate(models: pd.DataFrame, mu: float, claim) -> pd.DataFrame:
    """One row per (family, protocol): mean, std and standard error in units of mu (descriptive: the
    standard error of a mean over n models is ``sqrt(std^2 / n + se_test^2)``, spread over inits plus
    the test-set binomial error), and the statement's d = ``min(hi - error, error - lo)`` for its range
    ``[lo, hi]`` (``hi - error`` for an upper bound, lo = -inf) with its interval (`family_draws`,
    ``claim.n_boot``, ``claim.level``, ``claim.boot_seed``), decided by `verdict.decide_interval`,
    non-strict: holds if ci_low >= 0, fails if ci_high < 0, else inconclusive.
    """
    out = []
    draws = {
        fam: family_draws(fm, mu, claim.n_boot, claim.boot_seed) for fam, fm in models.groupby("family", sort=False)
    }
    for (family, protocol), g in models.groupby(["family", "protocol"], sort=False):
        n, mean = len(g), float(g.error_mu.mean())
        std = float(g.error_mu.std(ddof=1)) if n > 1 else 0.0
        se = float(np.sqrt(std**2 / n + float((g.se_mu**2).mean())))
        lo, hi, words = STATEMENTS[protocol]
        point, boot = draws[family][protocol]
        c = bs.comparison(min(hi - point, point - lo), np.minimum(hi - boot, boot - lo), claim.level)
        out.append({"family": family, "protocol": protocol, "n_models": n, "error_mu": mean,
                    "error_mu_std": std, "error_mu_se": se, "err_mv_pct": float(g.err_mv_pct.mean()),
                    "err_sv_pct": float(g.err_sv_pct.mean()),
                    "train_acc_pct": float(g.train_acc_pct.mean()) if "train_acc_pct" in g else float("nan"),
                    "statement": words, "d": c.d, "ci_low": c.lo, "ci_high": c.hi,
                    "verdict": decide_interval(c.lo, c.hi, strict=False),
                    "train_s": float(g.seconds.sum())})  # fmt: skip
    return pd.DataFrame(out)


CLAIM_COLUMNS = ("family", "claim", "comparison", "strict", "d", "ci_low", "ci_high", "verdict", "n_boot", "level")
# kind -> [(claim, comparison, d from the protocols' errors {p: error / mu}, strict)]
CLAIMS = {
    "nn": [  # the theorem: KD captures the ensemble (message 5), SD helps (message 6)
        ("KD recovers at least half of the ensemble's gain", "(single - KD) - (single - ensemble)/2",
         lambda e: (e["single"] - e["kd"]) - (e["single"] - e["ensemble"]) / 2, False),
        ("SD is better than a single model", "single - SD", lambda e: e["single"] - e["sd"], True),
    ],
    "kernel": [  # the paper's kernel messages 2 and 3: the ensemble cannot be distilled, SD does not help
        ("KD recovers less than half of the ensemble's gain", "(single - ensemble)/2 - (single - KD)",
         lambda e: (e["single"] - e["ensemble"]) / 2 - (e["single"] - e["kd"]), True),
        ("SD is not better than a single model", "SD - single", lambda e: e["sd"] - e["single"], False),
    ],
}  # fmt: skip


def claim_frame(models: pd.DataFrame, mu: float, claim) -> pd.DataFrame:
    """Per family with all four protocols, its two KD / SD claims: d (errors in units of mu) with its
    interval from the same draws as the statements (`family_draws`), `verdict.decide_interval`."""
    rows = []
    for fam, fm in models.groupby("family", sort=False):
        if not set(PROTOCOLS) <= set(fm.protocol):
            continue
        draws = family_draws(fm, mu, claim.n_boot, claim.boot_seed)
        point = {p: v[0] for p, v in draws.items()}
        boot = {p: v[1] for p, v in draws.items()}
        for text, comparison, fn, strict in CLAIMS["nn" if fam == "nn" else "kernel"]:
            c = bs.comparison(fn(point), fn(boot), claim.level)
            rows.append(dict(family=fam, claim=text, comparison=comparison, strict=strict, d=c.d, ci_low=c.lo,
                             ci_high=c.hi, verdict=decide_interval(c.lo, c.hi, strict), n_boot=claim.n_boot,
                             level=claim.level))  # fmt: skip
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def claims(agg: pd.DataFrame, cf: pd.DataFrame) -> tuple[list[str], list[str]]:
    """summary.md's lines (the nn statements, each family's gains, the KD / SD claims' table) and the
    verdict lines (the nn statements and every KD / SD claim)."""
    lines, verdicts = [STATEMENT_RULE, ""], []
    nn = agg[agg.family == "nn"].set_index("protocol")
    for protocol in PROTOCOLS:
        if protocol in nn.index:
            r = nn.loc[protocol]
            line = (
                f"- **{r.statement}** (nn): {r.verdict.upper()} - measured {_fmt(r.error_mu)} +- "
                f"{_fmt(r.error_mu_se)} mu over {r.n_models} model(s); d = {_sgn(r.d)} [{_sgn(r.ci_low)}, "
                f"{_sgn(r.ci_high)}]"
            )
            lines.append(line)
            verdicts.append(line)
    for fam, g in agg.groupby("family", sort=False):
        g = g.set_index("protocol")
        if not set(PROTOCOLS) <= set(g.index):
            continue
        single, ens, kd, sd = (float(g.loc[p, "error_mu"]) for p in PROTOCOLS)
        gain = single - ens
        share = f"{100 * (single - kd) / gain:.0f} %" if gain > 1e-9 else "n/a"
        lines.append(
            f"- {fam}: ensemble gain over the mean single {gain:+.3f} mu; KD recovers {share} of it; SD changes the "
            f"single error by {sd - single:+.3f} mu."
        )
    if len(cf):
        lines += ["", "| family | claim | comparison (error / mu) | d | ci_low | ci_high | verdict |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in cf.itertuples():
            name = r.comparison + (" > 0" if r.strict else " >= 0")
            lines.append(f"| {r.family} | {r.claim} | {name} | {_sgn(r.d)} | {_sgn(r.ci_low)} | {_sgn(r.ci_high)} "
                         f"| **{r.verdict}** |")  # fmt: skip
            verdicts.append(f"- {r.family}: {r.claim}: {r.verdict.upper()} (d = {_sgn(r.d)} [{_sgn(r.ci_low)}, "
                            f"{_sgn(r.ci_high)}])")  # fmt: skip
    return lines, verdicts

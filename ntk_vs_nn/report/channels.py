"""Figure 6's outputs, derived from its records alone: the claims (the paper's Observations 1-2 as
three differences d with confidence intervals, decided by `verdict.decide_interval`), table.md,
table.csv, claims.csv, plot.png and summary.md.

The interval of our claims: when every variant's record carries its students' and ensembles'
per-test-point correctness (`protocols.members_and_ensemble`'s ``correctness``), a paired percentile
bootstrap over test points and students in which each ensemble carries its students' noise through its
leave-one-out combinations (`bootstrap_claims`); for older records, which keep the students only as
mean ± std, and for the paper's rows, a Welch t-interval with the ensembles held fixed (`interval`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from ntk_vs_nn import paper
from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis.verdict import decide_interval

COLUMNS = ("variant", "kind", "factor", "channels", "n_members", "single_mean", "single_std", "single_min",
           "single_max", "ensemble", "gain", "acc_by_size", "final_loss", "status", "wall_s")  # fmt: skip


def paper_rows(channels: int):
    """The paper's Figure 6 as {model: DataFrame indexed by variant}; and the row compared with ours:
    the first complete row with the same channel count, else ResNet-28-2 (a)."""
    df = paper.load("multiview")
    rows = {m: g.set_index("variant") for m, g in df.groupby("model", sort=False)}
    complete = [m for m, g in rows.items() if g.ensemble_acc.notna().all()]
    same = [m for m in complete if int(rows[m].input_channels.iloc[0]) == channels]
    return rows, (same[0] if same else "ResNet-28-2 (a)")


PAPER_MEMBERS = 10  # L assumed for the paper's rows (its table gives mean ± std and one ensemble, not L)
CLAIM_COLUMNS = ("source", "claim", "comparison", "strict", "d", "ci_low", "ci_high", "verdict", "level", "evidence")


def interval(d: float, coef: dict, table: dict, members, level: float = 0.95) -> tuple[float, float]:
    """Welch t-interval of ``d = const + sum_v coef[v] * single_mean_v`` (the ensembles held fixed):
    se^2 = sum_v coef_v^2 std_v^2 / L_v, Welch-Satterthwaite degrees of freedom
    se^4 / sum_v (coef_v^2 std_v^2 / L_v)^2 / (L_v - 1); ``d -+ t_{(1+level)/2, df} se``. ``members``:
    L_v per variant (a dict) or one L for all. se = 0 gives [d, d]; a non-finite std, NaN."""
    L = {v: members[v] if isinstance(members, dict) else members for v in coef}
    a = {v: c**2 * table[v][1] ** 2 / L[v] for v, c in coef.items()}
    se2 = float(sum(a.values()))
    if not np.isfinite(se2) or not np.isfinite(d):
        return float("nan"), float("nan")
    if se2 == 0:
        return float(d), float(d)
    df = se2**2 / sum(x**2 / (L[v] - 1) for v, x in a.items() if L[v] > 1 and x > 0)
    half = float(stats.t.ppf((1 + level) / 2, df)) * se2**0.5
    return float(d - half), float(d + half)


def claims(table: dict, members=PAPER_MEMBERS, level: float = 0.95, intervals=None) -> list[dict]:
    """The three claims from {variant: (single_mean, single_std, ensemble)} (ours or a paper row), each
    a difference d in accuracy points that the claim says is > 0 (gain = ensemble - single mean):

    A: splitting raises the ensemble gain: d = gain(deepest split) - gain(original).
    C: the ensemble loses less than half of the single models' drop when splitting (Observation 2):
       d = drop_single / 2 - drop_ensemble, drops from original to the deepest split (the sign of
       1/2 - drop_ensemble / drop_single when the singles drop, without the ratio's instability).
    B: averaging raises the gain less than splitting: d = mean over g of [gain(split_g) - gain(avg_g)]
       (g present in both).

    Each d is linear in the single means and the ensembles: d = sum_v coef_v single_v + ens_v ensemble_v.
    Its interval is ``intervals(d, coef, ens)`` when given (`bootstrap_claims`), else `interval` (the
    Welch t-interval of the single means with the ensembles held fixed: the paper's rows and records
    without correctness), ``members`` = L (per variant or one for all); decided by `verdict.decide_interval`:
    holds if ci_low > 0, fails if ci_high < 0, else inconclusive.
    """

    def gain(v):
        s, _, e = table[v]
        return e - s

    def claim(name, comparison, d, coef, ens, evidence):
        lo, hi = intervals(d, coef, ens) if intervals else interval(d, coef, table, members, level)
        return dict(claim=name, comparison=comparison, strict=True, d=float(d), ci_low=lo, ci_high=hi,
                    verdict=decide_interval(lo, hi, strict=True), evidence=evidence)  # fmt: skip

    out = []
    splits = sorted(int(v.split("_")[1]) for v in table if v.startswith("split_") and np.isfinite(table[v][2]))
    if "original" in table and splits:
        deep = f"split_{splits[-1]}"
        out.append(claim("A: splitting channels raises the ensemble gain", f"gain({deep}) − gain(original)",
                         gain(deep) - gain("original"), {deep: -1.0, "original": 1.0}, {deep: 1.0, "original": -1.0},
                         f"gain {gain('original'):+.2f} (original) -> {gain(deep):+.2f} ({deep})"))  # fmt: skip
        drop_s = table["original"][0] - table[deep][0]
        drop_e = table["original"][2] - table[deep][2]
        share = f"{drop_e / drop_s:.2f}" if drop_s > 0 else "n/a"
        ev = f"single drops {drop_s:+.2f}, ensemble {drop_e:+.2f} (original -> {deep}; share {share})"
        out.append(claim("C: the ensemble loses less than half of the single models' drop when splitting",
                         "drop(single)/2 − drop(ensemble)", drop_s / 2 - drop_e, {"original": 0.5, deep: -0.5},
                         {"original": -1.0, deep: 1.0}, ev))  # fmt: skip
    both = [g for g in splits if f"avg_{g}" in table and np.isfinite(table[f"avg_{g}"][2])]
    if both:
        diffs = [gain(f"split_{g}") - gain(f"avg_{g}") for g in both]
        coef, ens = {}, {}
        for g in both:
            coef[f"split_{g}"], coef[f"avg_{g}"] = -1.0 / len(both), 1.0 / len(both)
            ens[f"split_{g}"], ens[f"avg_{g}"] = 1.0 / len(both), -1.0 / len(both)
        ev = ", ".join(f"g={g}: {x:+.2f}" for g, x in zip(both, diffs))
        out.append(claim("B: averaging raises the gain less than splitting", "mean_g gain(split_g) − gain(avg_g)",
                         float(np.mean(diffs)), coef, ens, f"gain(split) − gain(avg): {ev}"))  # fmt: skip
    return out


CORRECTNESS = ("n_test", "test_correct", "ensemble_correct")  # what a variant's record needs for the bootstrap


def has_correctness(results: list[dict]) -> bool:
    """Whether every variant record carries its students' and ensemble's per-test-point correctness (and,
    for L > 1, its leave-one-out ensembles'): then the claims get `bootstrap_claims`' interval."""
    return bool(results) and all(
        all(k in r for k in CORRECTNESS) and (len(r["test_correct"]) < 2 or "loo_correct" in r) for r in results
    )


def variant_groups(results: list[dict]) -> tuple[bs.Groups, dict[str, bs.Jackknife]]:
    """The bootstrap's groups of our variant records (`bootstrap.bootstrap`, one replicate): ``single:<v>``
    (L x n_test, the students in member order) and ``ensemble:<v>`` (1 x n_test, the logit-average
    ensemble), and each ensemble's `bootstrap.Jackknife` (its L leave-one-out ensembles; none for L = 1)."""
    groups, jack = {}, {}
    for r in results:
        v, n = r["variant"], int(r["n_test"])
        groups[f"single:{v}"] = [np.stack([bs.decode_correct(c, n) for c in r["test_correct"]])]
        groups[f"ensemble:{v}"] = [bs.decode_correct(r["ensemble_correct"], n)[None]]
        if len(r["test_correct"]) > 1:
            loo = np.stack([bs.decode_correct(c, n) for c in r["loo_correct"]])
            jack[f"ensemble:{v}"] = bs.Jackknife(f"single:{v}", [loo])
    return groups, jack


def bootstrap_claims(df, results: list[dict], level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """`claims` on our variants with a paired percentile bootstrap (`bootstrap.bootstrap`) over test points
    and students: each draw resamples the test points (the same for every model) and each variant's
    students, and shifts each ensemble by its students' jackknife noise (step d of the bootstrap); d =
    sum_v coef_v mean(single:v) + ens_v mean(ensemble:v) of the draw's group means (`bootstrap.compare`),
    so that an ensemble's own noise is in the interval."""
    groups, jack = variant_groups(results)
    draws = bs.bootstrap(groups, n_boot, seed, jackknife=jack)

    def intervals(d, coef, ens):
        def stat(g):
            singles = sum(c * g[f"single:{v}"].mean for v, c in coef.items())
            return singles + sum(c * g[f"ensemble:{v}"].mean for v, c in ens.items())

        lo, hi = bs.interval(np.broadcast_to(stat(draws.boot), (n_boot,)), level)
        return lo, hi

    table = {r.variant: (r.single_mean, r.single_std, r.ensemble) for r in df.itertuples()}
    return claims(table, {r.variant: int(r.n_members) for r in df.itertuples()}, level, intervals)


def ours_claims(df, level: float = 0.95, results: list[dict] = (), n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """`claims` on our variants: `bootstrap_claims` when every record in ``results`` carries correctness
    (`has_correctness`), else the Welch interval with L = each variant's recorded n_members."""
    if has_correctness(results):
        return bootstrap_claims(df, results, level, n_boot, seed)
    table = {r.variant: (r.single_mean, r.single_std, r.ensemble) for r in df.itertuples()}
    return claims(table, {r.variant: int(r.n_members) for r in df.itertuples()}, level)


def paper_claims(prow, level: float = 0.95) -> list[dict]:
    table = {v: (r.single_mean_acc, r.single_std_acc, r.ensemble_acc) for v, r in prow.iterrows()}
    return claims(table, PAPER_MEMBERS, level)


def claims_frame(ours: list[dict], all_paper: dict, level: float) -> pd.DataFrame:
    """claims.csv: one row per claim, ours first, then each row of the paper's table."""
    rows = [dict(c, source="ours", level=level) for c in ours]
    rows += [dict(c, source=f"paper {m}", level=level) for m, cs in all_paper.items() for c in cs]
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def _num(x: float) -> str:
    return f"{x:+.2f}" if np.isfinite(x) else "n/a"


def _ci(c: dict) -> str:
    return f"{_num(c['d'])} [{_num(c['ci_low'])}, {_num(c['ci_high'])}]"


def rule_sentence(level: float, n_boot: int | None = None) -> str:
    """The rule under the claims: with ``n_boot`` (our records carry correctness) the bootstrap's, and the
    Welch rule for the paper's rows; without (older records), the Welch rule for ours and the paper's."""
    if n_boot is not None:
        return (
            f"Rule: each claim is a difference d in accuracy points that it says is > 0, with a {100 * level:g} % "
            f"paired percentile-bootstrap interval ({n_boot} draws) over the test points and each variant's L "
            "students, each ensemble carrying its students' noise through its L leave-one-out ensembles (a "
            "jackknife); a claim holds if ci_low > 0, fails if ci_high < 0, and is inconclusive otherwise. The "
            "paper's rows give only mean ± std and one ensemble, so theirs is a Welch t-interval from the single "
            "models' means (std / √L, Welch–Satterthwaite degrees of freedom; the ensembles held fixed) with "
            f"L = {PAPER_MEMBERS} assumed."
        )
    return (
        f"Rule: each claim is a difference d in accuracy points that it says is > 0, with a {100 * level:g} % "
        "Welch t-interval from the single students' means (std / √L per variant, Welch–Satterthwaite degrees of "
        "freedom): the records keep a variant's L students only as mean ± std and one ensemble, so nothing is "
        "resampled and the ensembles are held fixed (their own noise is not in the interval); a claim holds if "
        f"ci_low > 0, fails if ci_high < 0, and is inconclusive otherwise; the paper's rows by the same rule with "
        f"L = {PAPER_MEMBERS} assumed."
    )


def tidy(results: list[dict], prow) -> pd.DataFrame:
    """One row per variant record, with the paper's row ``prow`` beside it; the students' mean train
    accuracy (after acc_by_size) when every record has it."""
    cols = list(COLUMNS)
    if all("train_acc_mean" in r for r in results):
        cols.insert(cols.index("acc_by_size") + 1, "train_acc_mean")
    df = pd.DataFrame(results)[cols]
    pairs = (("paper_single", "single_mean_acc"), ("paper_std", "single_std_acc"), ("paper_ensemble", "ensemble_acc"))
    for col, src in pairs:
        df[col] = [float(prow[src][v]) if v in prow.index else np.nan for v in df.variant]
    df["paper_gain"] = df.paper_ensemble - df.paper_single
    return df


TRAIN_NOTE = "; single train = the students' mean train accuracy"


def _backbone(info: dict) -> str:
    """The backbone's accuracy: test, and train where its record has it."""
    if "backbone_train_acc" in info:
        return f"train accuracy {info['backbone_train_acc']:.2f}%, test accuracy {info['backbone_acc']:.2f}%"
    return f"test accuracy {info['backbone_acc']:.2f}%"


def markdown(df, cfg, info: dict, ours: list[dict], theirs: list[dict], n_boot: int | None = None) -> str:
    """table.md; ``n_boot``: our claims' intervals are the bootstrap's (`rule_sentence`)."""
    f = lambda x: f"{x:.2f}" if np.isfinite(x) else "–"
    train = "train_acc_mean" in df
    intro = (
        f"Dataset `{info['dataset']}` ({info['n_train']} train / {info['n_test']} test), backbone "
        f"{cfg.pretrain.width}/{2 * cfg.pretrain.width}/{4 * cfg.pretrain.width} channels trained "
        f"{cfg.pretrain.epochs} epochs, {cfg.pretrain.head} head ({_backbone(info)}), "
        f"input = its stage-"
        f"{cfg.pretrain.stage} map {info['map_shape']} (C = {info['C']}). Students {cfg.student.model}, "
        f"L = {cfg.student.members}, {cfg.train.epochs} epochs ({cfg.train.optimizer} lr {cfg.train.lr:g}, "
        f"{cfg.train.schedule}); split subsets `{cfg.channels.split_mode}`; config `{info['config_hash']}`, "
        f"seed {cfg.run.seed}. Test accuracy in %; single = mean ± std over the L students, ensemble = logit "
        f"average{TRAIN_NOTE if train else ''}. Paper: CIFAR-100, row "
        f"`{info['paper_row']}`."
    )
    lines = [
        "# Figure 6: channels of a fixed pretrained layer, split or averaged",
        "",
        intro,
        "",
        f"| variant | channels | single |{' single train |' if train else ''} ensemble | gain | paper single | "
        "paper ensemble | paper gain |",
        "| --- | --- | --- |" + (" --- |" if train else "") + " --- | --- | --- | --- | --- |",
    ]
    for r in df.itertuples():
        lines.append(
            f"| {r.variant} | {r.channels} | {r.single_mean:.2f} ± {r.single_std:.2f} |"
            + (f" {f(r.train_acc_mean)} |" if train else "")
            + f" {r.ensemble:.2f} | {r.gain:+.2f} | {f(r.paper_single)} ± {f(r.paper_std)} | {f(r.paper_ensemble)} | "
            f"{r.paper_gain:+.2f} |"
        )
    same = "the same rule" if n_boot is None else "the Welch rule"
    lines += ["", f"## Claims (ours; the paper's row by {same})", "",
              "| claim | d | ci_low | ci_high | verdict | evidence | paper d [CI] | paper verdict | paper evidence |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    paper_by = {c["claim"]: c for c in theirs}
    for c in ours:
        p = paper_by.get(c["claim"])
        pd_, pv, pe = (_ci(p), p["verdict"], p["evidence"]) if p else ("–", "–", "")
        lines.append(
            f"| {c['claim']} | {_num(c['d'])} | {_num(c['ci_low'])} | {_num(c['ci_high'])} | **{c['verdict']}** | "
            f"{c['evidence']} | {pd_} | {pv} | {pe} |"
        )
    lines += ["", rule_sentence(cfg.claim.level, n_boot)]
    return "\n".join(lines + [""])


def plot(df, paper_all: dict, prow_name: str, path: str, title: str) -> None:
    fig = Figure(figsize=(11, 4.2))  # the Agg canvas, no pyplot state
    FigureCanvasAgg(fig)
    a1, a2 = fig.subplots(1, 2)
    for kind, color in (("split", "tab:blue"), ("avg", "tab:orange")):
        sub = df[(df.kind == kind) | (df.kind == "original")].sort_values("factor")
        x = 1.0 / sub.factor.to_numpy()
        a1.errorbar(x, sub.single_mean, yerr=sub.single_std, color=color, marker="o", capsize=3,
                    label=f"{kind}: single (mean ± std)")  # fmt: skip
        a1.plot(x, sub.ensemble, color=color, marker="s", ls="--", label=f"{kind}: ensemble")
        a2.plot(x, sub.gain, color=color, marker="o", label=f"ours: {kind}")
        for name, prow in paper_all.items():
            pv = [v for v in sub.variant if v in prow.index and np.isfinite(prow.ensemble_acc.get(v, np.nan))]
            if not pv:
                continue
            px = 1.0 / np.array([1 if v == "original" else int(v.split("_")[1]) for v in pv])
            pg = np.array([prow.ensemble_acc[v] - prow.single_mean_acc[v] for v in pv])
            main = name == prow_name
            a2.plot(px, pg, color=color, ls=":", lw=1.6 if main else 0.6, alpha=1.0 if main else 0.35,
                    marker="x" if main else None, label=f"paper {name}: {kind}" if main else None)  # fmt: skip
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 1 / 2, 1 / 4, 1 / 8], ["1", "1/2", "1/4", "1/8"])
        ax.set_xlabel("fraction of channels kept (split) / 1 ÷ group size (avg)")
        ax.grid(alpha=0.3)
    a1.set_ylabel("test accuracy (%)")
    a1.set_title("single models and their ensemble", fontsize=10)
    a2.set_ylabel("ensemble − single (points)")
    a2.set_title("ensemble gain: ours (solid), paper CIFAR-100 (dotted)", fontsize=10)
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summary_md(df, cfg, info, ours, all_paper: dict, command: str, n_boot: int | None = None) -> str:
    """summary.md; the wall time is the sum of the recorded wall times (backbone and variants); ``n_boot``:
    our claims' intervals are the bootstrap's (`rule_sentence`)."""
    wall = info["wall_s"]
    lines = [
        "# Figure 6 (channels as views): summary",
        "",
        f"Command: `{command}`",
        f"Wall time: {wall:.0f} s ({wall / 60:.1f} min, the sum of the recorded training times): backbone + "
        f"{len(df)} variants x L = {cfg.student.members} students.",
        f"Data: `{info['dataset']}`, {info['n_train']} train / {info['n_test']} test; input map "
        f"{info['map_shape']} from a backbone at "
        + (
            f"{info['backbone_train_acc']:.2f}% train / {info['backbone_acc']:.2f}% test accuracy."
            if "backbone_train_acc" in info
            else f"{info['backbone_acc']:.2f}% test accuracy."
        ),
        "",
        "The paper's reading (Figure 6, Observations 1-2): removing channels costs single models accuracy but "
        "the ensemble much less, so the ensemble gain grows as the input is split into fewer channels (more "
        "of the views are missing from each model and the ensemble collects them); averaging channels, which "
        "mixes views, grows it less.",
        "",
        "| claim | d | ci_low | ci_high | verdict (ours) | evidence |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in ours:
        lines.append(
            f"| {c['claim']} | {_num(c['d'])} | {_num(c['ci_low'])} | {_num(c['ci_high'])} | **{c['verdict']}** | "
            f"{c['evidence']} |"
        )
    same = "The same rule" if n_boot is None else "The Welch rule"
    lines += ["", f"{same} on each complete row of the paper's table (CIFAR-100), d [CI]:", ""]
    for m, cs in all_paper.items():
        if cs:
            lines.append(f"- {m}: " + "; ".join(f"{c['claim'][0]} {c['verdict']} ({_ci(c)})" for c in cs))
    lines += [
        "",
        "Comparisons: A d = gain(deepest split) − gain(original); C d = drop(single)/2 − drop(ensemble), original "
        "→ deepest split; B d = mean over g of gain(split_g) − gain(avg_g). " + rule_sentence(cfg.claim.level, n_boot),
        "",
    ]
    return "\n".join(lines)

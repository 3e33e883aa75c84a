"""Figure 6's outputs, derived from its records alone: the claims (the paper's Observations 1-2 as
three comparisons, `analysis.verdict`), table.md, table.csv, plot.png and summary.md."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ntk_vs_nn import paper
from ntk_vs_nn.analysis.verdict import between, decide

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


def claims(table: dict, band_floor: float = 0.2) -> list[dict]:
    """Verdicts from {variant: (single_mean, single_std, ensemble)} (ours or a paper row).

    A: splitting raises the ensemble gain: d = gain(deepest split) - gain(original).
    B: averaging raises it less: d = mean over g of [gain(split_g) - gain(avg_g)] (g present in both).
    C: the ensemble loses less than the single models when splitting (Observation 2): the share of the
       single-model drop (original -> deepest split) that the ensemble also loses; < 1/2 holds, > 1 fails
       (`verdict.between`; inconclusive when the single-model drop is inside the band).
    Band for A, B = max(0.5 (σ_a + σ_b), floor); `verdict.decide`: holds if d > band, fails if d < -band.
    """

    def gain(v):
        s, _, e = table[v]
        return e - s

    out = []
    splits = sorted(int(v.split("_")[1]) for v in table if v.startswith("split_") and np.isfinite(table[v][2]))
    if "original" in table and splits:
        deep = f"split_{splits[-1]}"
        d = gain(deep) - gain("original")
        band = max(0.5 * (table[deep][1] + table["original"][1]), band_floor)
        out.append(dict(claim="A: splitting channels raises the ensemble gain", d=d, band=band, verdict=decide(d, band),
                        evidence=f"gain {gain('original'):+.2f} (original) -> {gain(deep):+.2f} ({deep})"))  # fmt: skip
        drop_s = table["original"][0] - table[deep][0]
        drop_e = table["original"][2] - table[deep][2]
        share = drop_e / drop_s if drop_s > 0 else float("nan")
        v = between(share, 0.5, 1.0) if np.isfinite(share) and drop_s >= band else "inconclusive"
        ev = f"single drops {drop_s:+.2f}, ensemble {drop_e:+.2f} (original -> {deep})"
        out.append(dict(claim="C: the ensemble loses less than single models when splitting", d=share, band=0.5,
                        verdict=v, evidence=ev))  # fmt: skip
    both = [g for g in splits if f"avg_{g}" in table and np.isfinite(table[f"avg_{g}"][2])]
    if both:
        diffs = [gain(f"split_{g}") - gain(f"avg_{g}") for g in both]
        d = float(np.mean(diffs))
        stds = [0.5 * (table[f"split_{g}"][1] + table[f"avg_{g}"][1]) for g in both]
        band = max(float(np.mean(stds)), band_floor)
        ev = ", ".join(f"g={g}: {x:+.2f}" for g, x in zip(both, diffs))
        out.append(dict(claim="B: averaging raises the gain less than splitting", d=d, band=band,
                        verdict=decide(d, band), evidence=f"gain(split) − gain(avg): {ev}"))  # fmt: skip
    return out


def paper_claims(prow) -> list[dict]:
    return claims({v: (r.single_mean_acc, r.single_std_acc, r.ensemble_acc) for v, r in prow.iterrows()})


def tidy(results: list[dict], prow) -> pd.DataFrame:
    """One row per variant record, with the paper's row ``prow`` beside it."""
    df = pd.DataFrame(results)[list(COLUMNS)]
    pairs = (("paper_single", "single_mean_acc"), ("paper_std", "single_std_acc"), ("paper_ensemble", "ensemble_acc"))
    for col, src in pairs:
        df[col] = [float(prow[src][v]) if v in prow.index else np.nan for v in df.variant]
    df["paper_gain"] = df.paper_ensemble - df.paper_single
    return df


def markdown(df, cfg, info: dict, ours: list[dict], theirs: list[dict]) -> str:
    f = lambda x: f"{x:.2f}" if np.isfinite(x) else "–"
    intro = (
        f"Dataset `{info['dataset']}` ({info['n_train']} train / {info['n_test']} test), backbone "
        f"{cfg.pretrain.width}/{2 * cfg.pretrain.width}/{4 * cfg.pretrain.width} channels trained "
        f"{cfg.pretrain.epochs} epochs, {cfg.pretrain.head} head (test accuracy {info['backbone_acc']:.2f}%), "
        f"input = its stage-"
        f"{cfg.pretrain.stage} map {info['map_shape']} (C = {info['C']}). Students {cfg.student.model}, "
        f"L = {cfg.student.members}, {cfg.train.epochs} epochs ({cfg.train.optimizer} lr {cfg.train.lr:g}, "
        f"{cfg.train.schedule}); split subsets `{cfg.channels.split_mode}`; config `{info['config_hash']}`, "
        f"seed {cfg.run.seed}. Test accuracy in %; single = mean ± std over the L students, ensemble = logit "
        f"average. Paper: CIFAR-100, row `{info['paper_row']}`."
    )
    lines = [
        "# Figure 6: channels of a fixed pretrained layer, split or averaged",
        "",
        intro,
        "",
        "| variant | channels | single | ensemble | gain | paper single | paper ensemble | paper gain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in df.itertuples():
        lines.append(
            f"| {r.variant} | {r.channels} | {r.single_mean:.2f} ± {r.single_std:.2f} | {r.ensemble:.2f} | "
            f"{r.gain:+.2f} | {f(r.paper_single)} ± {f(r.paper_std)} | {f(r.paper_ensemble)} | "
            f"{r.paper_gain:+.2f} |"
        )
    lines += ["", "## Claims (ours; the paper's row by the same rule)", "",
              "| claim | ours | evidence | paper | paper evidence |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    paper_by = {c["claim"]: c for c in theirs}
    for c in ours:
        p = paper_by.get(c["claim"], {"verdict": "–", "evidence": ""})
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} | {p['verdict']} | {p['evidence']} |")
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


def summary_md(df, cfg, info, ours, all_paper: dict, command: str) -> str:
    """summary.md; the wall time is the sum of the recorded wall times (backbone and variants)."""
    wall = info["wall_s"]
    lines = [
        "# Figure 6 (channels as views): summary",
        "",
        f"Command: `{command}`",
        f"Wall time: {wall:.0f} s ({wall / 60:.1f} min, the sum of the recorded training times): backbone + "
        f"{len(df)} variants x L = {cfg.student.members} students.",
        f"Data: `{info['dataset']}`, {info['n_train']} train / {info['n_test']} test; input map "
        f"{info['map_shape']} from a backbone at {info['backbone_acc']:.2f}% test accuracy.",
        "",
        "The paper's reading (Figure 6, Observations 1-2): removing channels costs single models accuracy but "
        "the ensemble much less, so the ensemble gain grows as the input is split into fewer channels (more "
        "of the views are missing from each model and the ensemble collects them); averaging channels, which "
        "mixes views, grows it less.",
        "",
        "| claim | verdict (ours) | d | band | evidence |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in ours:
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {c['d']:+.2f} | {c['band']:.2f} | {c['evidence']} |")
    lines += ["", "The same rule on each complete row of the paper's table (CIFAR-100):", ""]
    for m, cs in all_paper.items():
        if cs:
            lines.append(f"- {m}: " + "; ".join(f"{c['claim'][0]} {c['verdict']} ({c['d']:+.2f})" for c in cs))
    lines += [
        "",
        "Rules: A d = gain(deepest split) − gain(original); B d = mean over g of gain(split_g) − gain(avg_g); "
        "band = max(0.5 (σ_a + σ_b), 0.2) with σ the single students' std; holds if d > band, fails if "
        "d < −band. C: the ensemble's drop / the single models' drop (original → deepest split) < 0.5 holds, "
        "> 1 fails (inconclusive between, or when the single drop is inside the band).",
        "",
    ]
    return "\n".join(lines)

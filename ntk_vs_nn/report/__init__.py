"""A report of one output folder: our two tables beside the paper's, the message verdicts side by
side (paper vs ours), and figures.

    >>> from ntk_vs_nn.report import write_report
    >>> write_report("results/quick-mnist1d")  # doctest: +SKIP
    {'md': 'results/quick-mnist1d/report.md', 'html': ..., 'figures': [...]}

Reads OUT/table_nn.csv and OUT/table_ntk.csv (either may be missing, not both), OUT/messages.csv
(recomputed from the tables if missing), OUT/config.json and OUT/records.jsonl (run dates, wall
time, git SHA); writes OUT/report.md, OUT/report.html and OUT/figures/{protocols,ensemble_size}.png.
Only `read_run`, `save_figure` and `write_report` touch files; everything else maps data to
Markdown strings or matplotlib `Figure` objects (drawn with the Agg canvas, no pyplot state).

The paper's numbers come from `ntk_vs_nn.paper` (Figure 1 of Allen-Zhu & Li). Per-cell deltas
are shown only where the setting matches: same model (spelling normalised by
`paper.canonical_model`) and same dataset (`paper.canonical_dataset`). When our dataset is not one
of the paper's, the comparison is qualitative and the paper's CIFAR-10 rows are shown for
reference.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ntk_vs_nn import paper
from ntk_vs_nn.config import MessagesConfig, UserError

PROTOCOLS = ("single", "ensemble", "train_sum", "kd", "sd")  # = ntk_vs_nn.protocols.PROTOCOLS (no jax import)
PROTOCOL_NAMES = {"single": "single", "ensemble": "ensemble", "train_sum": "train-sum", "kd": "KD", "sd": "SD"}
FAMILY_ORDER = ("nn", "ntk", "ntk_prime", "gp")
FAMILY_LABELS = {"nn": "network", "ntk": "NTK", "ntk_prime": "NTK'", "gp": "GP"}
FAMILY_COLORS = {"nn": "#4C72B0", "ntk": "#DD8452", "ntk_prime": "#55A868", "gp": "#C44E52"}
TABLES = {"nn": "neural networks", "ntk": "finite-width kernel models"}
CIRCLED = "①②③④⑤⑥⑦"


@dataclass
class RunData:
    """What one output folder holds (read by `read_run`)."""

    out_dir: str
    tables: dict  # "nn" / "ntk" -> tidy DataFrame (only the tables that exist)
    messages: pd.DataFrame | None
    cfg: dict
    records: list = field(default_factory=list)


# -- reading (I/O) -----------------------------------------------------------------------------
def read_run(out_dir: str, cfg_dict: dict | None = None) -> RunData:
    from ntk_vs_nn.store import Store

    tables = {}
    for which in TABLES:
        path = os.path.join(out_dir, f"table_{which}.csv")
        if os.path.isfile(path):
            tables[which] = pd.read_csv(path, dtype={"acc_by_size": str})  # "96.30" alone (L = 1) stays text
    if not tables:
        raise UserError(f"{out_dir!r} has no table_nn.csv or table_ntk.csv: run `ntk-vs-nn table` first")
    if cfg_dict is None:
        path = os.path.join(out_dir, "config.json")
        if not os.path.isfile(path):
            raise UserError(f"{path!r} is missing: pass cfg_dict or rerun the tables")
        with open(path) as f:
            cfg_dict = json.load(f)
    path = os.path.join(out_dir, "messages.csv")
    mdf = pd.read_csv(path) if os.path.isfile(path) else None
    return RunData(out_dir, tables, mdf, cfg_dict, Store(out_dir).records())


# -- pure helpers ------------------------------------------------------------------------------
def _nan(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _family_key(fam: str):
    return (FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER), fam)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s" if m else f"{sec} s"


def _percent(x) -> str:
    return f"{100 * x:g}%" if isinstance(x, (int, float)) else "?"


def config_hash(cfg: dict, records: list) -> str:
    """The science hash of ``cfg`` (as `Config.science_hash`), or the records' most common one."""
    from ntk_vs_nn.config.presets import from_dict

    try:
        forms = from_dict(cfg).science_hashes()
        present = {r.get("config_hash") for r in records}
        return next((h for h in forms if h in present), forms[0])
    except (UserError, TypeError, ValueError, KeyError):
        hashes = Counter(r.get("config_hash") for r in records)
        return hashes.most_common(1)[0][0] if hashes else "unknown"


def run_info(cfg: dict, records: list) -> dict:
    """Provenance of the run: config hash, git SHAs, dates, summed wall time, device, versions."""
    h = config_hash(cfg, records)
    mine = [r for r in records if r.get("config_hash") == h]
    info = dict(config_hash=h, n_records=len(mine), n_other=len(records) - len(mine))
    info["git_sha"] = sorted({r.get("git_sha", "unknown") for r in mine}) or ["unknown"]
    info["device"] = sorted({r.get("device", "unknown") for r in mine}) or ["unknown"]
    info["versions"] = mine[-1].get("versions", {}) if mine else {}
    info["wall_s"] = float(sum(r.get("wall_s", 0.0) or 0.0 for r in mine))
    ends, starts = [], []
    for r in mine:
        try:
            t = datetime.datetime.fromisoformat(r["date"])
        except (KeyError, TypeError, ValueError):
            continue
        t = t.astimezone(datetime.timezone.utc) if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)
        ends.append(t)
        starts.append(t - datetime.timedelta(seconds=float(r.get("wall_s", 0.0) or 0.0)))
    info["start"], info["end"] = (min(starts), max(ends)) if ends else (None, None)
    return info


def reference_dataset(dataset: str) -> tuple[str, bool]:
    """(the paper's dataset to show, whether it is ours)."""
    d = paper.canonical_dataset(dataset)
    return (d, True) if d in paper.DATASETS else ("cifar10", False)


def _value(row, family: str, protocol: str) -> float:
    col = "acc_best" if protocol == "single" and family != "nn" else "acc_mean"
    return float(row[col]) if not _nan(row[col]) else math.nan


def format_cell(row, family: str, protocol: str) -> str:
    """One table cell (ours or the paper's tidy row); the layout of `ntk_vs_nn.analysis.tables.markdown`."""
    if row is None:
        return "missing"
    status = str(row["status"])
    n = row["n_members"]
    v = _value(row, family, protocol)
    partial = protocol in ("single", "sd") and not _nan(v)  # some members finished (our tables)
    if status != "ok" and not partial:
        raw = row.get("raw")
        return f"{raw} (lost digit)" if status == "lost digit" and isinstance(raw, str) else status
    note = "" if status == "ok" else f" [{status}]"
    if _nan(v):
        return "missing"
    text = f"{v:.2f}"
    std = row["acc_std"]
    if protocol == "single":
        if family == "nn":
            text += (f" ± {std:.2f}" if not _nan(std) else "") + (f" (n={int(n)})" if not _nan(n) else "")
        else:
            text += f" (best of {int(n)})" if not _nan(n) else " (best)"
    elif protocol == "sd":
        text += f" ± {std:.2f}" if not _nan(std) else ""
        extra = [f"n={int(n)}"] if not _nan(n) else []
        if not _nan(row.get("acc_ensemble", math.nan)):
            extra.append(f"ens {float(row['acc_ensemble']):.2f}")
        text += f" ({'; '.join(extra)})" if extra else ""
    elif protocol == "train_sum" and "source" in row and not _nan(n) and int(n) != 10:
        text += f" (L={int(n)})"  # the paper trained fewer summed members for its widest nets
    return text + note


def _rows(df: pd.DataFrame) -> list[tuple[str, str, dict]]:
    """[(model, family, {protocol: row})] in table order."""
    out = []
    for model, fam in dict.fromkeys(zip(df["model"], df["family"])):
        sub = df[(df["model"] == model) & (df["family"] == fam)]
        out.append((model, fam, {r["protocol"]: r for _, r in sub.iterrows()}))
    return out


def table_markdown(df: pd.DataFrame, dataset_col: bool = False) -> str:
    head = ["model", "family"] + (["dataset"] if dataset_col else []) + [PROTOCOL_NAMES[p] for p in PROTOCOLS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for model, fam, by in _rows(df):
        first = [model, fam] + ([str(next(iter(by.values()))["dataset"])] if dataset_col else [])
        lines.append("| " + " | ".join(first + [format_cell(by.get(p), fam, p) for p in PROTOCOLS]) + " |")
    return "\n".join(lines)


def delta_rows(ours: pd.DataFrame, theirs: pd.DataFrame) -> list[dict]:
    """Per-cell (ours - paper) where family, model and dataset match; value = mean for nets
    (single: mean over members), best for kernel singles, as each table reports them."""
    out = []
    keyed = {
        (r["family"], paper.canonical_model(r["model"]), paper.canonical_dataset(r["dataset"]), r["protocol"]): r
        for _, r in theirs.iterrows()
    }
    for model, fam, by in _rows(ours):
        for protocol in PROTOCOLS:
            row = by.get(protocol)
            if row is None:
                continue
            key = (fam, paper.canonical_model(model), paper.canonical_dataset(row["dataset"]), protocol)
            if key not in keyed:
                continue
            p = keyed[key]
            a = _value(row, fam, protocol) if row["status"] == "ok" else math.nan
            b = _value(p, fam, protocol) if p["status"] == "ok" else math.nan
            out.append(
                dict(
                    family=fam,
                    model=model,
                    dataset=row["dataset"],
                    protocol=protocol,
                    ours=a,
                    paper=b,
                    delta=a - b,
                    paper_status=p["status"],
                    ours_status=row["status"],
                )
            )
    return out


def delta_markdown(deltas: list[dict]) -> str:
    keys = list(dict.fromkeys((d["model"], d["family"]) for d in deltas))
    head = ["model", "family"] + [PROTOCOL_NAMES[p] for p in PROTOCOLS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for model, fam in keys:
        cells = []
        for p in PROTOCOLS:
            d = next((x for x in deltas if (x["model"], x["family"], x["protocol"]) == (model, fam, p)), None)
            if d is None:
                cells.append("—")
            elif _nan(d["delta"]):
                why = d["paper_status"] if d["paper_status"] != "ok" else d["ours_status"]
                cells.append(f"n/a (paper {why})" if d["paper_status"] != "ok" else f"n/a ({why})")
            else:
                cells.append(f"{d['delta']:+.2f} ({d['ours']:.2f} vs {d['paper']:.2f})")
        lines.append(f"| {model} | {fam} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict_summary(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "—"
    counts = Counter(rows["verdict"])
    parts = []
    for v in ("holds", "fails", "inconclusive"):
        if counts[v]:
            models = rows[rows["verdict"] == v]["model"].tolist()
            names = f": {', '.join(models)}" if v != "holds" or counts[v] < len(rows) / 2 else ""
            parts.append(f"{counts[v]} {v}{names}")
    return f"{'; '.join(parts)} (of {len(rows)})"


def messages_markdown(ours: pd.DataFrame, theirs: pd.DataFrame, ref: str) -> str:
    """Side by side: per (message, family), our verdicts, the paper's for the same setting, and
    the paper's over all its models on the reference dataset."""
    head = ["#", "claim", "family", "ours", "paper, same setting", f"paper, all models ({ref})"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    ref_rows = theirs[theirs["dataset"].map(paper.canonical_dataset) == ref]
    for msg, (_, claim, _) in _claims().items():
        fams = set(ours.loc[ours["message"] == msg, "family"]) | set(ref_rows.loc[ref_rows["message"] == msg, "family"])
        for fam in sorted(fams, key=_family_key):
            mine = ours[(ours["message"] == msg) & (ours["family"] == fam)]
            mine_txt = "; ".join(f"**{r['verdict']}** ({r['model']})" for _, r in mine.iterrows()) or "— (not run)"
            same = []
            for _, r in mine.iterrows():
                m = theirs[
                    (theirs["message"] == msg)
                    & (theirs["family"] == fam)
                    & (theirs["model"].map(paper.canonical_model) == paper.canonical_model(r["model"]))
                    & (theirs["dataset"].map(paper.canonical_dataset) == paper.canonical_dataset(r["dataset"]))
                ]
                same += [f"**{v}** ({r['model']})" for v in m["verdict"]]
            paper_rows = ref_rows[(ref_rows["message"] == msg) & (ref_rows["family"] == fam)]
            lines.append(
                f"| {CIRCLED[msg - 1]} | {claim} | {fam} | {mine_txt} | {'; '.join(same) or '—'} | "
                f"{_verdict_summary(paper_rows)} |"
            )
    return "\n".join(lines)


def _claims() -> dict:
    from ntk_vs_nn.analysis.messages import CLAIMS

    return CLAIMS


def paper_verdicts_markdown(theirs: pd.DataFrame) -> str:
    lines = ["| # | family | model | dataset | verdict | evidence | note |", "|" + " --- |" * 7]
    for _, r in theirs.sort_values(["dataset", "message"], kind="stable").iterrows():
        note = r["note"] if isinstance(r.get("note"), str) else ""
        lines.append(
            f"| {CIRCLED[int(r['message']) - 1]} | {r['family']} | {r['model']} | {r['dataset']} | "
            f"**{r['verdict']}** | {r['evidence']} | {note} |"
        )
    return "\n".join(lines)


# -- figures (pure: data -> Figure) ------------------------------------------------------------
def panels(table: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """[(model, "networks" | "kernel models", families)] for the (model, kind) pairs with rows."""
    out = []
    for model in dict.fromkeys(table["model"]):
        fams = sorted(set(table.loc[table["model"] == model, "family"]), key=_family_key)
        for kind, sel in (
            ("networks", [f for f in fams if f == "nn"]),
            ("kernel models", [f for f in fams if f != "nn"]),
        ):
            if sel:
                out.append((model, kind, sel))
    return out


def _new_figure(n_panels: int, width: float, height: float):
    """A Figure on the Agg canvas with n_panels axes, two per row; unused axes hidden."""
    n_cols = min(2, max(n_panels, 1))
    n_rows = max(1, math.ceil(n_panels / n_cols))
    fig = Figure(figsize=(width * n_cols, height * n_rows + 0.6), layout="constrained", dpi=110)
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(n_rows, n_cols, squeeze=False).flat)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _bar_value(row, fam: str, protocol: str) -> tuple[float, float, str]:
    """(height, error, label if the cell is not a number)."""
    if row is None:
        return math.nan, 0.0, "missing"
    v = _value(row, fam, protocol)
    if row["status"] != "ok" and not (protocol in ("single", "sd") and not _nan(v)):
        return math.nan, 0.0, str(row["status"])
    err = 0.0
    if (protocol == "single" and fam == "nn") or protocol == "sd":
        err = 0.0 if _nan(row["acc_std"]) else float(row["acc_std"])
    return v, err, "" if not _nan(v) else "missing"


def figure_protocols(table: pd.DataFrame) -> Figure:
    """Grouped bars: per model (rows) and networks | kernels (columns), the five protocols with one
    bar per family. Single = mean ± std for nets, best of L for kernels; SD = mean ± std of the
    students; the others are one model each."""
    todo = panels(table)
    fig, axes = _new_figure(len(todo), 5.6, 3.7)
    handles = {}
    for ax, (model, kind, present) in zip(axes, todo):
        sub = table[table["model"] == model]
        ax.set_title(f"{model}: {kind}", fontsize=10)
        ax.set_xticks(range(len(PROTOCOLS)), [PROTOCOL_NAMES[p] for p in PROTOCOLS])
        width = 0.8 / len(present)
        lows, highs, notes = [], [], []
        for k, fam in enumerate(present):
            by = {r["protocol"]: r for _, r in sub[sub["family"] == fam].iterrows()}
            vals = [_bar_value(by.get(p), fam, p) for p in PROTOCOLS]
            xs = [x - 0.4 + width * (k + 0.5) for x in range(len(PROTOCOLS))]
            hs = [v for v, _, _ in vals]
            errs = [e for _, e, _ in vals]
            bars = ax.bar(
                xs,
                [0.0 if _nan(h) else h for h in hs],
                width * 0.92,
                color=FAMILY_COLORS.get(fam, "0.5"),
                label=FAMILY_LABELS.get(fam, fam),
            )
            handles.setdefault(fam, bars)
            many = len(present) > 1
            for x, h, e, why in zip(xs, hs, errs, [w for _, _, w in vals]):
                if _nan(h):
                    notes.append((x, why))
                    continue
                if e > 0:
                    ax.errorbar(x, h, yerr=e, fmt="none", ecolor="0.15", capsize=2.5, lw=1)
                ax.annotate(
                    f"{h:.1f}" if many else f"{h:.2f}",
                    (x, h + e),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=6.5 if many else 7.5,
                    rotation=90 if many else 0,
                )
                lows.append(h - e)
                highs.append(h + e)
        if lows:
            lo, hi = min(lows), max(highs)
            span = max(hi - lo, 1.0)
            bottom = max(0.0, math.floor(lo - 0.35 * span))
            top = hi + (0.3 if len(present) > 1 else 0.12) * span
            ax.set_ylim(bottom, top)
            for x, why in notes:
                ax.annotate(
                    why,
                    (x, bottom),
                    xytext=(0, 3),
                    textcoords="offset points",
                    rotation=90,
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    color="0.2",
                )
            cut = f" (axis from {bottom:g})" if bottom > 0 else ""
            ax.set_ylabel(f"test accuracy %{cut}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    order = sorted(handles, key=_family_key)
    fig.legend(
        [handles[f] for f in order],
        [FAMILY_LABELS.get(f, f) for f in order],
        loc="outside upper center",
        ncol=len(order),
        fontsize=9,
        frameon=False,
    )
    return fig


def _sizes(row) -> list[float]:
    if row is None or not isinstance(row["acc_by_size"], str):
        return []
    return [float(x) for x in row["acc_by_size"].split()]


def figure_ensemble_size(table: pd.DataFrame) -> Figure:
    """Accuracy of the ensemble of the first 1..L members, one line per family; the dotted
    horizontal line in the family's colour is its train-sum model (L members trained jointly)."""
    todo = panels(table)
    fig, axes = _new_figure(len(todo), 5.2, 3.5)
    legend = {}
    for ax, (model, kind, fams) in zip(axes, todo):
        ax.set_title(f"{model}: {kind}", fontsize=10)
        sub = table[table["model"] == model]
        handles = []
        for k, fam in enumerate(fams):
            by = {r["protocol"]: r for _, r in sub[sub["family"] == fam].iterrows()}
            ys = _sizes(by.get("ensemble"))
            color = FAMILY_COLORS.get(fam, "0.5")
            if ys:
                (line,) = ax.plot(range(1, len(ys) + 1), ys, "o-", color=color, ms=3.5, lw=1.5)
                handles.append(line)
                legend.setdefault(fam, line)
            ts = by.get("train_sum")
            if ts is not None and ts["status"] == "ok" and not _nan(ts["acc_mean"]):
                # interleaved dots: equal train-sum accuracies of two families both stay visible
                dots = (3.0 * k, (1.5, 3.0 * len(fams) - 1.5))
                ax.axhline(float(ts["acc_mean"]), color=color, ls=dots, lw=1.6)
        if not handles:
            ax.text(0.5, 0.5, "no ensemble results", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.set_xlabel("ensemble size (first k members)", fontsize=9)
        ax.set_ylabel("test accuracy %", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    order = sorted(legend, key=_family_key)
    fig.legend(
        [legend[f] for f in order] + [Line2D([], [], color="0.3", ls=":", lw=1.6)],
        [FAMILY_LABELS.get(f, f) for f in order] + ["train-sum (dotted, same colour)"],
        loc="outside upper center",
        ncol=len(order) + 1,
        fontsize=8.5,
        frameon=False,
    )
    return fig


# -- the Markdown report -------------------------------------------------------------------------
def _provenance_markdown(cfg: dict, info: dict) -> str:
    data = cfg.get("data", {})
    train = cfg.get("train", {})
    proto = cfg.get("protocol", {})
    members = proto.get("members", "?")
    sd = proto.get("sd_students") or (min(members, 5) if isinstance(members, int) else "?")
    when = "no records"
    if info["start"] is not None:
        fmt = "%Y-%m-%d %H:%M:%S"
        when = (
            f"{info['start'].strftime(fmt)} → {info['end'].strftime(fmt)} UTC "
            f"({_duration((info['end'] - info['start']).total_seconds())} elapsed)"
        )
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items()) or "unknown"
    n_other = info["n_other"]
    other = f" ({n_other} record{'s' * (n_other != 1)} of other configs ignored)" if n_other else ""
    rows = [
        (
            "data",
            f"`{cfg.get('dataset', '?')}`: n_train {data.get('n_train', '?')} (of which "
            f"{_percent(data.get('val_fraction'))} validation), n_test {data.get('n_test', '?')}, "
            f"generator seed {data.get('generator_seed', '?')}",
        ),
        ("preset", f"`{cfg.get('preset', '?')}`"),
        ("config hash", f"`{info['config_hash']}`"),
        ("git SHA", ", ".join(f"`{s}`" for s in info["git_sha"])),
        ("run", when),
        (
            "wall time",
            f"{info['wall_s']:.0f} s ({_duration(info['wall_s'])}) summed over {info['n_records']} records{other}",
        ),
        (
            "protocol",
            f"L = {members} members, S = {sd} SD students, seed {cfg.get('run', {}).get('seed', '?')}, "
            f"ensemble rule `{proto.get('ensemble_rule', '?')}`, KD α = {proto.get('kd_alpha', '?')}",
        ),
        (
            "training",
            f"{train.get('optimizer', '?')} lr {train.get('lr', '?')}, {train.get('schedule', '?')}, "
            f"{train.get('epochs', '?')} epochs, batch {train.get('batch_size', '?')}",
        ),
        ("device", ", ".join(info["device"])),
        ("versions", versions),
    ]
    return "\n".join(["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])


def backend_markdown(weights: pd.DataFrame, function: pd.DataFrame) -> str:
    """Weight-space vs function-space kernel tables, cell by cell, against the seed noise.

    For each (model, family, protocol) present in both: the weights-backend accuracy (single: best
    member, as the table), the function-backend accuracy, their difference, and whether it lies within
    2σ of the weights-backend single members (σ = their std), the seed noise of one member.
    """
    lines = [
        "| model | family | protocol | weights | function | function − weights | 2σ (weights singles) | within |",
        "|" + " --- |" * 8,
    ]
    w = {(r["model"], r["family"], r["protocol"]): r for _, r in weights.iterrows()}
    for _, f in function.iterrows():
        key = (f["model"], f["family"], f["protocol"])
        if key not in w or key[1] in ("ntk_inf", "nngp_inf"):
            continue
        r, single = w[key], w.get((key[0], key[1], "single"))
        pick = "acc_best" if key[2] == "single" else "acc_mean"
        a, b = r[pick], f[pick]
        noise = 2 * single["acc_std"] if single is not None else float("nan")
        if _nan(a) or _nan(b):
            continue
        d = b - a
        within = "yes" if abs(d) <= noise else "no"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {a:.2f} | {b:.2f} | {d:+.2f} | {noise:.2f} | {within} |")
    return "\n".join(lines)


INFINITE_WIDTH = ("ntk_inf", "nngp_inf")


def _num(row: pd.Series, col: str, digits: int) -> str:
    """``row[col]`` to ``digits`` decimals; "–" where the column is absent (older tables) or NaN."""
    v = row.get(col, float("nan"))
    return "–" if _nan(v) else f"{v:.{digits}f}"


def infinite_width_markdown(finite: pd.DataFrame, function: pd.DataFrame) -> str:
    """The ∞-width rows (one deterministic member = the infinite-ensemble limit) beside each finite
    family's ensemble of L members, with NLL and ECE; "" when ``function`` has no ∞-width row."""
    inf = function[function["family"].isin(INFINITE_WIDTH) & (function["protocol"] == "ensemble")]
    inf = inf[inf["status"] == "ok"] if "status" in inf else inf
    if not len(inf):
        return ""

    def line(r, width, members):
        return (
            f"| {r['model']} | {r['family']} | {width} | {members} | {r['acc_mean']:.2f} | "
            f"{_num(r, 'nll_mean', 3)} | {_num(r, 'ece_mean', 2)} |"
        )

    lines = ["| model | family | width | members | accuracy | NLL | ECE |", "|" + " --- |" * 7]
    for label, table in (("finite, weight space", finite), ("finite, function space", function)):
        ens = table[(table["protocol"] == "ensemble") & ~table["family"].isin(INFINITE_WIDTH)]
        lines += [line(r, label, int(r["n_members"])) for _, r in ens.iterrows() if not _nan(r["acc_mean"])]
    lines += [line(r, "∞ (stax)", "∞") for _, r in inf.iterrows()]
    return "\n".join(lines)


def report_markdown(
    run: RunData, paper_tidy: pd.DataFrame, paper_msgs: pd.DataFrame, ours_msgs: pd.DataFrame, figures: dict
) -> str:
    """The whole report as Markdown (``figures``: name -> path relative to the report)."""
    cfg = run.cfg
    dataset = str(cfg.get("dataset", next(iter(run.tables.values()))["dataset"].iloc[0]))
    info = run_info(cfg, run.records)
    ref, same_data = reference_dataset(dataset)
    ref_paper = paper_tidy[paper_tidy["dataset"] == ref]
    lines = [f"# ntk_vs_nn report: `{dataset}`, preset `{cfg.get('preset', '?')}`", ""]
    lines += [_provenance_markdown(cfg, info), ""]
    if same_data:
        lines += [
            f"Our dataset is the paper's `{ref}`: its rows for `{ref}` are shown beside ours, with per-cell "
            "deltas (ours − paper) where the model matches too. Training budgets may still differ (see "
            "the training row above; the paper trains full CIFAR for hundreds of epochs).",
            "",
        ]
    else:
        lines += [
            f"**The comparison is qualitative.** Our dataset (`{dataset}`) is not one of the paper's "
            "(CIFAR-10, CIFAR-100), so no cell can be compared number for number: the paper's CIFAR-10 rows "
            "are shown for reference, and what carries over is the direction of each effect (the messages).",
            "",
        ]
    lines += ["## Figures", ""]
    if "protocols" in figures:
        lines += [
            f"![The five protocols per model, networks vs kernel models]({figures['protocols']})",
            "",
            "Test accuracy of the five protocols. Networks: single = mean ± std over the L members; "
            "kernel models: single = best of the L members (as in the paper). SD = mean ± std over the "
            "S students. The y axis does not start at 0 where the label says so.",
            "",
        ]
    if "ensemble_size" in figures:
        lines += [
            f"![Accuracy vs ensemble size]({figures['ensemble_size']})",
            "",
            "Accuracy of the ensemble of the first k members (k = 1..L), one line per family; the dotted "
            "line in the same colour is that family's train-sum model (the L members trained jointly).",
            "",
        ]
    for which, title in TABLES.items():
        if which not in run.tables:
            continue
        ours = run.tables[which]
        fams = {"nn"} if which == "nn" else {"ntk", "ntk_prime", "gp"}
        theirs = ref_paper[ref_paper["family"].isin(fams)]
        lines += [f"## Table {which}: {title}", "", "### Ours", "", table_markdown(ours), ""]
        label = "same dataset" if same_data else "for reference only, a different dataset"
        lines += [f"### Paper (Allen-Zhu & Li, Figure 1), `{ref}` ({label})", ""]
        lines += [table_markdown(theirs) if len(theirs) else "No rows.", ""]
        deltas = delta_rows(ours, theirs) if same_data else []
        lines += ["### Deltas (ours − paper), same model and dataset", ""]
        if deltas:
            lines += [
                delta_markdown(deltas),
                "",
                "Each cell: ours − paper (ours vs paper), in accuracy points; single compares the mean for "
                "networks and the best member for kernel models.",
                "",
            ]
        else:
            why = "different dataset" if not same_data else "no model in common"
            lines += [f"None: no row of the paper has our setting ({why}).", ""]
    fn_path = os.path.join(run.out_dir, "kernel-function", "table_ntk.csv")
    if "ntk" in run.tables and os.path.isfile(fn_path):
        fn = pd.read_csv(fn_path, dtype={"acc_by_size": str})
        lines += [
            "## Kernel backends: weight space vs function space",
            "",
            "The same kernel families solved two ways (PROTOCOLS §1): trained in weight space like the nets "
            "(this table_ntk), and in function space on the empirical kernel (`kernel.backend=function`, "
            "`kernel-function/table_ntk.md`). The two use different losses and optimisers (weights: the "
            "nets' optimiser on cross-entropy; function: the configured kernel.solver), so they agree only "
            "as well as their training budgets match; the last column says whether each cell is within 2σ "
            "of the weight-space singles.",
            "",
            backend_markdown(run.tables["ntk"], fn),
            "",
        ]
        inf_md = infinite_width_markdown(run.tables["ntk"], fn)
        if inf_md:
            lines += [
                "### Infinite width",
                "",
                "`ntk_inf` / `nngp_inf`: the neural-tangents `stax` kernel of the same architecture, solved "
                "like the function-space rows — the limit of an infinitely wide net and of an infinite "
                "ensemble, so one deterministic member. Beside it, each finite family's ensemble of L "
                "members (accuracy %, NLL in nats, ECE in %). NLL and ECE treat the solver's outputs as "
                "logits: an MSE-regression kernel predictor outputs near one-hot scores, so its softmax is "
                "underconfident and its ECE large whatever its accuracy.",
                "",
                inf_md,
                "",
            ]
    lines += [
        "## Messages ①–⑦: ours vs the paper",
        "",
        messages_markdown(ours_msgs, paper_msgs, ref),
        "",
        "The paper's verdicts are computed here from its published numbers by the same tests and "
        "thresholds as ours (PROTOCOLS.md §3; noise band = max(noise_sigma·σ, noise_floor) with "
        f"noise_sigma = {cfg.get('messages', {}).get('noise_sigma', '?')}, "
        f"noise_floor = {cfg.get('messages', {}).get('noise_floor', '?')}). The paper does not publish "
        "the std of its kernel singles (only the best of 10), so its kernel messages use the noise "
        "floor alone; a cell with a lost digit (`73.?`) gives a verdict only when every value of the "
        "digit gives the same one; `oom` cells leave a message inconclusive.",
        "",
    ]
    if ours_msgs is not None and len(ours_msgs):
        lines += ["### Our evidence", "", "| # | family | model | verdict | evidence |", "|" + " --- |" * 5]
        for _, r in ours_msgs.sort_values(["message"], kind="stable").iterrows():
            lines.append(
                f"| {CIRCLED[int(r['message']) - 1]} | {r['family']} | {r['model']} | **{r['verdict']}** | "
                f"{r['evidence']} |"
            )
        lines.append("")
    lines += [
        "## Appendix: the paper's verdicts, computed from its numbers",
        "",
        paper_verdicts_markdown(paper_msgs),
        "",
        "## Sources",
        "",
        f"- Ours: `table_nn.csv`, `table_ntk.csv`, `messages.csv`, `config.json`, `records.jsonl` in `{run.out_dir}`.",
        f"- Paper: {paper.SOURCE} (`ntk_vs_nn/paper/tables/{paper.FILES['nn']}`, "
        f"`{paper.FILES['kernel']}`). Model names normalised (`ResNet10-2` → `ResNet-10-2`).",
        "",
    ]
    return "\n".join(lines)


# -- Markdown -> HTML (the subset this module writes) ----------------------------------------------
_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)"), r'<a href="\2">\1</a>'),
]
_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 7px;"
    "vertical-align:top}th{background:#f3f3f3}code{background:#f3f3f3;padding:0 3px}img{max-width:100%}"
    "figure{margin:1em 0}"
)


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    for pat, rep in _INLINE:
        out = pat.sub(rep, out)
    return out


def markdown_to_html(md: str, title: str = "ntk_vs_nn report") -> str:
    """Headings, paragraphs, pipe tables, '- ' lists, images on their own line, `code`, **bold**,
    [links](url): the Markdown `report_markdown` writes. No dependency beyond the standard library."""
    body, para, lines, i = [], [], md.splitlines(), 0

    def flush():
        if para:
            body.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    def cells(line):
        return [c.strip() for c in line.strip().strip("|").split("|")]

    while i < len(lines):
        line = lines[i]
        img = re.fullmatch(r"!\[([^\]]*)\]\(([^)\s]+)\)", line.strip())
        if not line.strip():
            flush()
        elif m := re.match(r"(#{1,6}) (.*)", line):
            flush()
            n = len(m.group(1))
            body.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
        elif img:
            flush()
            alt, src = html.escape(img.group(1)), html.escape(img.group(2))
            body.append(f'<figure><img src="{src}" alt="{alt}"></figure>')
        elif line.lstrip().startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [cells(b) for b in block if not re.fullmatch(r"\s*\|(\s*:?-{3,}:?\s*\|)+\s*", b)]
            out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr>"]
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:]]
            body.append("\n".join(out + ["</table>"]))
            continue
        elif line.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
            continue
        else:
            para.append(line.strip())
        i += 1
    flush()
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


# -- the edge: compute everything, then write ---------------------------------------------------
def our_messages(run: RunData) -> pd.DataFrame:
    """OUT/messages.csv, or the messages recomputed from the tables when it is missing."""
    if run.messages is not None:
        return run.messages
    from ntk_vs_nn.analysis.messages import messages

    cfg = MessagesConfig(**run.cfg.get("messages", {}))
    families = tuple(run.cfg.get("table", {}).get("ntk_families", ("ntk", "ntk_prime", "gp")))
    return messages(pd.concat(run.tables.values(), ignore_index=True), cfg, families)


def save_figure(fig: Figure, path: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def write_report(out_dir: str, cfg_dict: dict | None = None) -> dict:
    """Write OUT/report.md, OUT/report.html and OUT/figures/*.png; return their paths
    ({'md': ..., 'html': ..., 'figures': [...]})."""
    from ntk_vs_nn.store import atomic_write

    run = read_run(out_dir, cfg_dict)
    table = pd.concat(run.tables.values(), ignore_index=True)
    mcfg = MessagesConfig(**run.cfg.get("messages", {}))
    figs = {"protocols": figure_protocols(table), "ensemble_size": figure_ensemble_size(table)}
    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    fig_paths = [save_figure(fig, os.path.join(fig_dir, f"{name}.png")) for name, fig in figs.items()]
    md = report_markdown(
        run, paper.tidy(), paper.verdicts(mcfg), our_messages(run), {n: f"figures/{n}.png" for n in figs}
    )
    md_path, html_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")
    atomic_write(md_path, md)
    atomic_write(html_path, markdown_to_html(md, f"ntk_vs_nn report: {run.cfg.get('dataset', '')}"))
    return {"md": md_path, "html": html_path, "figures": fig_paths}

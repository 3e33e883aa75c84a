"""The report's Markdown tables: one table cell (`format_cell`, the layout of
`ntk_vs_nn.analysis.tables.markdown`), a whole table (ours or the paper's tidy rows), per-cell
deltas against the paper, the message verdicts side by side, and the kernel-backend and
infinite-width comparisons. Pure: DataFrames in, Markdown strings out.
"""

from __future__ import annotations

import math
from collections import Counter

import pandas as pd

from ntk_vs_nn import paper
from ntk_vs_nn.analysis.messages import CLAIMS

PROTOCOLS = ("single", "ensemble", "train_sum", "kd", "sd")  # = ntk_vs_nn.protocols.PROTOCOLS (no jax import)
PROTOCOL_NAMES = {"single": "single", "ensemble": "ensemble", "train_sum": "train-sum", "kd": "KD", "sd": "SD"}
FAMILY_ORDER = ("nn", "ntk", "ntk_prime", "gp")
CIRCLED = "①②③④⑤⑥⑦"
INFINITE_WIDTH = ("ntk_inf", "nngp_inf")


def is_nan(x) -> bool:
    """Whether ``x`` is no number: None, NaN or text."""
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def family_key(fam: str):
    """Sort key: nn, ntk, ntk_prime, gp, then any other family by name."""
    return (FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER), fam)


def cell_value(row, family: str, protocol: str) -> float:
    """The number a cell shows: the best member for kernel singles, the mean otherwise."""
    col = "acc_best" if protocol == "single" and family != "nn" else "acc_mean"
    return float(row[col]) if not is_nan(row[col]) else math.nan


def format_cell(row, family: str, protocol: str) -> str:
    """One table cell (ours or the paper's tidy row); the layout of `ntk_vs_nn.analysis.tables.markdown`."""
    if row is None:
        return "missing"
    status = str(row["status"])
    n = row["n_members"]
    v = cell_value(row, family, protocol)
    partial = protocol in ("single", "sd") and not is_nan(v)  # some members finished (our tables)
    if status != "ok" and not partial:
        raw = row.get("raw")
        return f"{raw} (lost digit)" if status == "lost digit" and isinstance(raw, str) else status
    note = "" if status == "ok" else f" [{status}]"
    if is_nan(v):
        return "missing"
    text = f"{v:.2f}"
    std = row["acc_std"]
    if protocol == "single":
        if family == "nn":
            text += (f" ± {std:.2f}" if not is_nan(std) else "") + (f" (n={int(n)})" if not is_nan(n) else "")
        else:
            text += f" (best of {int(n)})" if not is_nan(n) else " (best)"
    elif protocol == "sd":
        text += f" ± {std:.2f}" if not is_nan(std) else ""
        extra = [f"n={int(n)}"] if not is_nan(n) else []
        if not is_nan(row.get("acc_ensemble", math.nan)):
            extra.append(f"ens {float(row['acc_ensemble']):.2f}")
        text += f" ({'; '.join(extra)})" if extra else ""
    elif protocol == "train_sum" and "source" in row and not is_nan(n) and int(n) != 10:
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
            a = cell_value(row, fam, protocol) if row["status"] == "ok" else math.nan
            b = cell_value(p, fam, protocol) if p["status"] == "ok" else math.nan
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
            elif is_nan(d["delta"]):
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
    for msg, (_, claim, _) in CLAIMS.items():
        fams = set(ours.loc[ours["message"] == msg, "family"]) | set(ref_rows.loc[ref_rows["message"] == msg, "family"])
        for fam in sorted(fams, key=family_key):
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


def paper_verdicts_markdown(theirs: pd.DataFrame) -> str:
    lines = ["| # | family | model | dataset | verdict | evidence | note |", "|" + " --- |" * 7]
    for _, r in theirs.sort_values(["dataset", "message"], kind="stable").iterrows():
        note = r["note"] if isinstance(r.get("note"), str) else ""
        lines.append(
            f"| {CIRCLED[int(r['message']) - 1]} | {r['family']} | {r['model']} | {r['dataset']} | "
            f"**{r['verdict']}** | {r['evidence']} | {note} |"
        )
    return "\n".join(lines)


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
        if is_nan(a) or is_nan(b):
            continue
        d = b - a
        within = "yes" if abs(d) <= noise else "no"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {a:.2f} | {b:.2f} | {d:+.2f} | {noise:.2f} | {within} |")
    return "\n".join(lines)


def _num(row: pd.Series, col: str, digits: int) -> str:
    """``row[col]`` to ``digits`` decimals; "–" where the column is absent (older tables) or NaN."""
    v = row.get(col, float("nan"))
    return "–" if is_nan(v) else f"{v:.{digits}f}"


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
        lines += [line(r, label, int(r["n_members"])) for _, r in ens.iterrows() if not is_nan(r["acc_mean"])]
    lines += [line(r, "∞ (stax)", "∞") for _, r in inf.iterrows()]
    return "\n".join(lines)

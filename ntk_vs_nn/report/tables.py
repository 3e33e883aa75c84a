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


# -- per-comparison evidence (messages.csv with one row per comparison) and seed stability ----
STABILITY_KEY = ["message", "family", "model", "comparison"]
CONCLUSIVE = ("holds", "fails")


def has_comparisons(df: pd.DataFrame | None) -> bool:
    """Whether ``df`` (a messages.csv) has one row per comparison (`analysis.intervals`), not the
    older one row per message."""
    return df is not None and "comparison" in df.columns and len(df) > 0


def _ci(d, lo, hi) -> str:
    return "n/a" if is_nan(d) else f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _comparison_name(r) -> str:
    """The comparison as the messages table names it: "≥ 0" for a non-strict claim, "(vs single
    mean)" for a secondary comparison."""
    strict = r.get("strict", True)
    primary = r.get("primary", True)
    return (
        r["comparison"]
        + ("" if strict in (True, "True") else " ≥ 0")
        + ("" if primary in (True, "True") else " (vs single mean)")
    )


def values_text(series: pd.Series) -> str:
    """One value, or the range of the values ("1–3") when the rows differ."""
    vals = sorted({int(v) for v in series if not is_nan(v)})
    if not vals:
        return "?"
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}–{vals[-1]}"


def comparisons_markdown(df: pd.DataFrame, level: float = 0.95) -> str:
    """Our evidence, one row per comparison: d [CI], the comparison's verdict, the message's
    verdict and the smallest detectable difference (± the CI half-width), in accuracy points."""
    head = ["#", "family", "model", "comparison", f"d [{100 * level:g} % CI]", "verdict", "message",
            "smallest detectable"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for _, r in df.sort_values(["message"], kind="stable").iterrows():
        flags = r.get("flags")
        flag = f" ({flags})" if isinstance(flags, str) and flags else ""
        md = "n/a" if is_nan(r["min_detectable"]) else f"±{r['min_detectable']:.2f}"
        lines.append(
            f"| {CIRCLED[int(r['message']) - 1]} | {r['family']} | {r['model']} | {_comparison_name(r)} | "
            f"{_ci(r['d'], r['ci_low'], r['ci_high'])} | {r['verdict']}{flag} | **{r['message_verdict']}** | {md} |"
        )
    return "\n".join(lines)


def agreement(a: str, b: str) -> str:
    """The agreement of two verdicts: "yes" when equal, "—" when either is inconclusive (or
    missing), "no" when one holds and the other fails."""
    if a not in CONCLUSIVE or b not in CONCLUSIVE:
        return "—"
    return "yes" if a == b else "no"


def stability(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The comparisons of two messages.csv (one row per comparison; two root-seed blocks of the
    same experiment) side by side: one row per (message, family, model, comparison) present in
    both, in ``a``'s order (by message), with each block's d, CI and verdict (suffixes ``_a``,
    ``_b``) and ``agree`` (`agreement`)."""
    cols = ["d", "ci_low", "ci_high", "verdict"]
    left = a.drop_duplicates(STABILITY_KEY)[STABILITY_KEY + ["strict", "primary"] + cols]
    right = b.drop_duplicates(STABILITY_KEY)[STABILITY_KEY + cols]
    m = left.merge(right, on=STABILITY_KEY, how="inner", suffixes=("_a", "_b"), sort=False)
    m = m.sort_values(["message"], kind="stable").reset_index(drop=True)
    m["agree"] = [agreement(x, y) for x, y in zip(m["verdict_a"], m["verdict_b"])]
    return m


def stability_summary(df: pd.DataFrame) -> str:
    """One line: comparisons in both blocks, how many are conclusive in both, how many disagree."""
    n = len(df)
    conclusive = int((df["agree"] != "—").sum())
    no = int((df["agree"] == "no").sum())
    return (
        f"{n} comparison{'s' * (n != 1)} in both blocks, {conclusive} conclusive in both: {conclusive - no} agree, "
        f"{no} disagree (one block holds, the other fails); {n - conclusive} inconclusive in at least one block."
    )


def stability_markdown(df: pd.DataFrame, label_a: str = "A", label_b: str = "B") -> str:
    """The stability table (`stability`) and its summary line."""
    head = ["#", "family", "model", "comparison", f"{label_a}: d [CI]", label_a, f"{label_b}: d [CI]", label_b,
            "agree"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for _, r in df.iterrows():
        agree = "**no**" if r["agree"] == "no" else r["agree"]
        lines.append(
            f"| {CIRCLED[int(r['message']) - 1]} | {r['family']} | {r['model']} | {_comparison_name(r)} | "
            f"{_ci(r['d_a'], r['ci_low_a'], r['ci_high_a'])} | {r['verdict_a']} | "
            f"{_ci(r['d_b'], r['ci_low_b'], r['ci_high_b'])} | {r['verdict_b']} | {agree} |"
        )
    return "\n".join(lines + ["", stability_summary(df)])

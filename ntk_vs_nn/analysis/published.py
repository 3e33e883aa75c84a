"""The paper's published tables through our analysis: Figure 1 as one tidy table (`tidy`, the columns of
`analysis.tables.COLUMNS`), the seven messages on the paper's own numbers (`verdicts`), and each message's
effect on every published row (`effect_values`, `effect_ranges`: the range beside which our effects are
read, `analysis.intervals`). The numbers and their parsing are `ntk_vs_nn.paper`'s (package data).
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pandas as pd

from ntk_vs_nn import paper
from ntk_vs_nn.analysis.messages import CLAIMS, messages
from ntk_vs_nn.analysis.tables import COLUMNS
from ntk_vs_nn.config import MessagesConfig


def tidy(kinds=("nn", "kernel")) -> pd.DataFrame:
    """Figure 1 as tidy rows (the columns of `ntk_vs_nn.analysis.tables.COLUMNS`, then paper_model, raw
    (the cell as printed) and source). Lost digits and oom are NaN with that status."""
    rows = []
    for kind in kinds:
        for raw_row in paper.load_raw(kind).to_dict("records"):
            rows += paper.tidy_rows(kind, raw_row)
    return pd.DataFrame(rows, columns=COLUMNS + ["paper_model", "raw", "source"])


def verdicts(cfg=None, kinds=("nn", "kernel")) -> pd.DataFrame:
    """The seven messages evaluated on the paper's own numbers (columns of
    `ntk_vs_nn.analysis.messages.messages` plus ``note``), with our thresholds ``cfg`` (a MessagesConfig;
    default: PROTOCOLS.md §3's)."""
    cfg = cfg or MessagesConfig()
    frames = []
    for kind in kinds:
        for raw_row in paper.load_raw(kind).to_dict("records"):
            base = messages(pd.DataFrame(paper.tidy_rows(kind, raw_row)), cfg)
            notes = [""] * len(base)
            if kind == "kernel":  # evaluate() shows the missing σ as 0.00: say what it is
                base["evidence"] = base["evidence"].str.replace("σ 0.00", "σ not published", regex=False)
                notes = ["single σ not published (kernel table: best of 10): band = noise floor"] * len(base)
            lost = {}
            for vcol, _ in (paper.NN_COLS if kind == "nn" else paper.KERNEL_COLS).values():
                c = paper.parse_cell(raw_row[vcol])
                if c.status == "lost digit":
                    lost[vcol] = c
            if lost:
                corners = [
                    messages(pd.DataFrame(paper.tidy_rows(kind, raw_row, dict(zip(lost, values)))), cfg)
                    for values in itertools.product(*[(c.lo, c.hi) for c in lost.values()])
                ]
                ranges = ", ".join(f"{raw_row[k]} in [{c.lo:g}, {c.hi:g}]" for k, c in lost.items())
                for i in range(len(base)):
                    seen = {corner["verdict"].iloc[i] for corner in corners}
                    extra = ""
                    if len(seen) > 1:
                        extra = f"lost digit ({ranges}): the verdict depends on it"
                    elif (v := seen.pop()) != base["verdict"].iloc[i]:
                        base.loc[base.index[i], "verdict"] = v
                        extra = f"lost digit ({ranges}): {v} for every value in the range"
                    notes[i] = "; ".join(x for x in (notes[i], extra) if x)
            base["note"] = notes
            frames.append(base)
    return pd.concat(frames, ignore_index=True)


def effect_values(effects: dict) -> pd.DataFrame:
    """Each message's effect on every Figure 1 row whose cells it reads are published: ``effects`` maps a
    message to (label, fn), fn reading group statistics ``g[protocol].mean / .best / .std`` as
    `analysis.effects.EFFECTS` does, here on the paper's cells (nets: single mean ± std; kernels: the
    best of 10 single). Columns family, model, dataset, message, value; a row with a cell lost, oom or
    unpublished has no value for the effects that read it."""
    rows = []
    for kind in ("nn", "kernel"):
        for raw_row in paper.load_raw(kind).to_dict("records"):
            tidy_rows = paper.tidy_rows(kind, raw_row)
            g = {r["protocol"]: SimpleNamespace(mean=r["acc_mean"], best=r["acc_best"], std=r["acc_std"])
                 for r in tidy_rows}  # fmt: skip
            fam, model = tidy_rows[0]["family"], tidy_rows[0]["model"]
            for msg, (_, fn) in effects.items():
                if CLAIMS[msg][0] != ("nn" if kind == "nn" else "kernel"):
                    continue
                value = float(fn(g))  # (a ratio over a zero or unpublished cell is NaN: `effects._ratio`)
                if math.isfinite(value):
                    rows.append(dict(family=fam, model=model, dataset=raw_row["dataset"], message=msg, value=value))
    return pd.DataFrame(rows, columns=["family", "model", "dataset", "message", "value"])


def effect_ranges(effects: dict) -> dict:
    """{(family, message, dataset): (smallest, largest, number of rows)} of `effect_values`."""
    df = effect_values(effects)
    return {
        key: (float(v.min()), float(v.max()), len(v))
        for key, v in df.groupby(["family", "message", "dataset"])["value"]
    }

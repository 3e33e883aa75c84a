"""The published numbers (Allen-Zhu & Li, arXiv 2012.09816, and friends), shipped as package data.

``tables/`` holds verbatim copies of ``/work/shared/paper_tables/`` (six CSVs and their README).
`load(name)` reads one of them with `importlib.resources`, so it works from an installed wheel too:

    >>> from ntk_vs_nn import paper
    >>> paper.load("nn").columns[:3].tolist()
    ['model', 'dataset', 'single_mean_acc']

Cells are parsed as follows (`parse_cell`): a number is a float; ``93.37±0.11`` is split into the
column (93.37) and a ``<column>_std`` column (0.11); ``oom`` (the paper's "out of memory") and a
number with a lost digit (``73.?``, ``78.4?``) become NaN; an empty cell is NaN ("not reported").
The row's ``status`` says what happened (``ok``, or e.g. ``oom; lost digit``) and
``status_detail`` names the cells (``ensemble_acc=73.?``). Columns with any other text (``params``
= ``1.86M``, ``note``) stay strings.

Figure 1 (the paper's two tables) also comes as rows of our tidy table format (`tidy_rows`; `analysis.published`
makes the table of them, `tidy`, and runs our message logic on it, `verdicts`). This package is data: it
imports nothing of the analysis, which reads it:

* families: paper ``NTK`` -> ``ntk``, ``NTK'`` -> ``ntk_prime``, ``GP`` -> ``gp``, networks -> ``nn``;
* models are spelled as our parser spells them (`canonical_model`: the kernel table's
  ``ResNet10-2`` becomes ``ResNet-10-2``); ``paper_model`` keeps the paper's spelling;
* nets, single = mean ± std over 10 (acc_best is not published); kernels, single = best of 10
  (acc_mean and acc_std are **not published**, so the noise band of messages 1-3 is the noise
  floor alone); SD is one number (acc_mean; its std and the SD ensemble are not published);
* a cell with a lost digit is NaN in `tidy`; `verdicts` then evaluates the message at every corner
  of the digit's range (``73.?`` is in [73.0, 74.0]) and, when all corners agree, reports that
  verdict (the message tests are linear in the accuracies, so the corners bound every value).
"""

from __future__ import annotations

import io
import math
import re
from importlib import resources
from typing import NamedTuple

import pandas as pd

FILES = {
    "nn": "allenzhu_li_fig1_neural_networks.csv",
    "kernel": "allenzhu_li_fig1_kernel_models.csv",
    "gaussian": "allenzhu_li_fig3_gaussian_like.csv",
    "multiview": "allenzhu_li_fig6_multiview_channels.csv",
    "nam": "nam_et_al_diversity_matters.csv",
    "replication": "resnet18_adam_replication.csv",
}
SOURCE = "Allen-Zhu & Li, arXiv 2012.09816, Figure 1"
FAMILIES = {"NTK": "ntk", "NTK'": "ntk_prime", "GP": "gp"}
DATASETS = ("cifar10", "cifar100")

_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")
_LOST = re.compile(r"[+-]?[\d?]+(\.[\d?]*)?")  # with at least one '?' and one digit
_PM = re.compile(r"\s*([^±]+?)\s*±\s*([^±]+?)\s*")


class Cell(NamedTuple):
    """One parsed cell: value (NaN unless a plain number), status, and the range [lo, hi] the
    true value lies in (lo = hi = value for a number; NaN when unknown)."""

    value: float
    status: str  # ok | oom | lost digit | not reported | text
    lo: float
    hi: float
    std: float = math.nan  # the part after ± (NaN if none)


def parse_cell(text) -> Cell:
    """Parse one cell as the paper prints it (see the module docstring)."""
    nan = math.nan
    s = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text).strip()
    if s == "":
        return Cell(nan, "not reported", nan, nan)
    if s.lower() == "oom":
        return Cell(nan, "oom", nan, nan)
    m = _PM.fullmatch(s)
    if m:
        head, tail = parse_cell(m.group(1)), parse_cell(m.group(2))
        if head.status == "text" or tail.status == "text":
            return Cell(nan, "text", nan, nan)
        return head._replace(std=tail.value)
    if _NUMBER.fullmatch(s):
        v = float(s)
        return Cell(v, "ok", v, v)
    if "?" in s and any(ch.isdigit() for ch in s) and _LOST.fullmatch(s):
        lo = float(s.replace("?", "0"))
        hi = float(s.replace("?", "9"))
        if s.endswith("?"):  # more digits may have followed the lost one: 73.? is in [73.0, 74.0]
            decimals = len(s.split(".", 1)[1]) if "." in s else 0
            hi += 10.0 ** (-decimals)
        return Cell(nan, "lost digit", lo, round(hi, 10))
    return Cell(nan, "text", nan, nan)


def names() -> list[str]:
    """The short names `load` accepts (a CSV file name, with or without .csv, works too)."""
    return list(FILES)


def _filename(name: str) -> str:
    if name in FILES:
        return FILES[name]
    fname = name if name.endswith(".csv") else name + ".csv"
    if fname in FILES.values():
        return fname
    raise KeyError(f"unknown paper table {name!r}; valid: {', '.join(FILES)} (or a file name)")


def read_text(filename: str) -> str:
    """The text of a file in ``ntk_vs_nn/paper/tables/`` (README.md or a CSV)."""
    return resources.files(__name__).joinpath("tables", filename).read_text(encoding="utf-8")


def load_raw(name: str) -> pd.DataFrame:
    """The CSV exactly as transcribed: every cell a string, empty cells as ''."""
    return pd.read_csv(io.StringIO(read_text(_filename(name))), dtype=str, keep_default_na=False)


def load(name: str) -> pd.DataFrame:
    """The CSV with numeric columns parsed: '?' and 'oom' cells -> NaN, plus status columns."""
    raw = load_raw(name)
    out = pd.DataFrame(index=raw.index)
    parsed = {}
    for col in raw.columns:
        cells = [parse_cell(x) for x in raw[col]]
        if any(c.status == "text" for c in cells) or all(c.status == "not reported" for c in cells):
            out[col] = raw[col]  # a string column (model names, "1.86M", notes)
            continue
        parsed[col] = cells
        out[col] = [c.value for c in cells]
        if any(not math.isnan(c.std) for c in cells):
            out[f"{col}_std" if f"{col}_std" not in raw.columns else f"{col}_pm"] = [c.std for c in cells]
    status, detail = [], []
    for i in range(len(raw)):
        kinds, notes = [], []
        for col, cells in parsed.items():
            c = cells[i]
            if c.status in ("oom", "lost digit", "not reported"):
                kinds.append(c.status)
                notes.append(f"{col}={raw[col].iloc[i] or '(empty)'}")
        kinds = list(dict.fromkeys(kinds))
        status.append("; ".join(kinds) or "ok")
        detail.append("; ".join(notes))
    out["status"] = status
    out["status_detail"] = detail
    return out


def canonical_model(name: str) -> str:
    """Our spelling of a model name: 'ResNet10-2' -> 'ResNet-10-2' (the parser accepts both)."""
    return re.sub(r"^ResNet(\d)", r"ResNet-\1", str(name).strip())


def canonical_dataset(name: str) -> str:
    """'cifar10', 'CIFAR-10', 'npz:/data/cifar_10.npz' -> 'cifar10' (for matching settings)."""
    s = str(name).strip().lower()
    if s.startswith("npz:"):
        s = re.split(r"[\\/]", s[4:])[-1]
        s = s[: -len(".npz")] if s.endswith(".npz") else s
    return re.sub(r"[-_ ]", "", s)


# -- Figure 1 in our tidy table format ---------------------------------------------------------
NN_COLS = {  # protocol -> (value column, n column)
    "single": ("single_mean_acc", "single_n"),
    "ensemble": ("ensemble_acc", "ensemble_n"),
    "train_sum": ("train_sum_acc", "train_sum_n"),
    "kd": ("knowledge_distillation_acc", None),
    "sd": ("self_distillation_acc", None),
}
KERNEL_COLS = {
    "single": ("single_best_of_10_acc", None),
    "ensemble": ("ensemble_acc", None),
    "train_sum": ("train_sum_acc", "train_sum_n"),
    "kd": ("knowledge_distillation_acc", None),
    "sd": ("self_distillation_acc", None),
}


def tidy_rows(kind: str, raw_row: dict, pick: dict | None = None) -> list[dict]:
    """The five tidy rows of one paper row; ``pick`` maps a column with a lost digit to a value."""
    pick = pick or {}
    nan = math.nan
    cols = NN_COLS if kind == "nn" else KERNEL_COLS
    family = "nn" if kind == "nn" else FAMILIES[raw_row["kernel"]]
    rows = []
    for protocol, (vcol, ncol) in cols.items():
        cell = parse_cell(raw_row[vcol])
        value, status = cell.value, cell.status
        if vcol in pick:
            value, status = pick[vcol], "ok"
        n = parse_cell(raw_row[ncol]).value if ncol else nan
        if protocol == "single":
            n = 10.0 if kind == "kernel" else n  # "best of 10" (the kernel table's caption)
        elif protocol == "kd":
            n = 1.0
        row = dict(
            family=family,
            model=canonical_model(raw_row["model"]),
            dataset=raw_row["dataset"],
            protocol=protocol,
            n_members=n,
            acc_mean=value,
            acc_std=nan,
            acc_best=value if protocol != "sd" else nan,
            nll_mean=nan,
            acc_ensemble=nan,
            acc_by_size="",
            status=status,
            wall_s=nan,
            paper_model=raw_row["model"],
            raw=raw_row[vcol],
            source=FILES[kind],
        )
        if protocol == "single" and kind == "nn":
            row["acc_best"] = nan  # not published
            std = parse_cell(raw_row["single_std_acc"])
            row["acc_std"] = std.value if std.status == "ok" else nan
            row["raw"] = f"{raw_row[vcol]} ± {raw_row['single_std_acc']}"
        if protocol == "single" and kind == "kernel":
            row["acc_mean"] = nan  # only the best of 10 is published
        rows.append(row)
    return rows

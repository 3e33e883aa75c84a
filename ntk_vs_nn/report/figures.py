"""The report's figures, pure (data -> matplotlib `Figure`, drawn on the Agg canvas, no pyplot
state): the five protocols per model as grouped bars (`figure_protocols`) and accuracy against
ensemble size (`figure_ensemble_size`); `save_figure` writes one PNG atomically.
"""

from __future__ import annotations

import math
import os

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ntk_vs_nn.report.tables import PROTOCOL_NAMES, PROTOCOLS, cell_value, family_key, is_nan

FAMILY_LABELS = {"nn": "network", "ntk": "NTK", "ntk_prime": "NTK'", "gp": "GP"}
FAMILY_COLORS = {"nn": "#4C72B0", "ntk": "#DD8452", "ntk_prime": "#55A868", "gp": "#C44E52"}


def panels(table: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """[(model, "networks" | "kernel models", families)] for the (model, kind) pairs with rows."""
    out = []
    for model in dict.fromkeys(table["model"]):
        fams = sorted(set(table.loc[table["model"] == model, "family"]), key=family_key)
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
    v = cell_value(row, fam, protocol)
    if row["status"] != "ok" and not (protocol in ("single", "sd") and not is_nan(v)):
        return math.nan, 0.0, str(row["status"])
    err = 0.0
    if (protocol == "single" and fam == "nn") or protocol == "sd":
        err = 0.0 if is_nan(row["acc_std"]) else float(row["acc_std"])
    return v, err, "" if not is_nan(v) else "missing"


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
                [0.0 if is_nan(h) else h for h in hs],
                width * 0.92,
                color=FAMILY_COLORS.get(fam, "0.5"),
                label=FAMILY_LABELS.get(fam, fam),
            )
            handles.setdefault(fam, bars)
            many = len(present) > 1
            for x, h, e, why in zip(xs, hs, errs, [w for _, _, w in vals]):
                if is_nan(h):
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
    order = sorted(handles, key=family_key)
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
            if ts is not None and ts["status"] == "ok" and not is_nan(ts["acc_mean"]):
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
    order = sorted(legend, key=family_key)
    fig.legend(
        [legend[f] for f in order] + [Line2D([], [], color="0.3", ls=":", lw=1.6)],
        [FAMILY_LABELS.get(f, f) for f in order] + ["train-sum (dotted, same colour)"],
        loc="outside upper center",
        ncol=len(order) + 1,
        fontsize=8.5,
        frameon=False,
    )
    return fig


def save_figure(fig: Figure, path: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path

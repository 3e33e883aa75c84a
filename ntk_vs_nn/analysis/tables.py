"""Records -> the paper's two tables (tidy CSV + Markdown). Pure: no training, no I/O.

The CSV has one row per (family, model, dataset, protocol), protocol in single, ensemble,
train_sum, kd, sd, with n_members, acc_mean, acc_std (sample std, ddof=1), acc_best, nll_mean,
ece_mean (expected calibration error, %, 15 bins; n/a in records made
before it was added), acc_ensemble (sd: the ensemble of the S students), acc_by_size (ensemble: accuracy of the first
1..L members) and status (ok, or what went wrong: oom, diverged, missing, skipped).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_vs_nn.config import PROTOCOLS

COLUMNS = [
    "family",
    "model",
    "dataset",
    "protocol",
    "n_members",
    "acc_mean",
    "acc_std",
    "acc_best",
    "nll_mean",
    "ece_mean",
    "acc_ensemble",
    "acc_by_size",
    "status",
    "wall_s",
]


def _status(recs, expected):
    bad = [r["status"] for r in recs if r["status"] != "ok"]
    if len(recs) < expected:
        bad += ["missing"] * (expected - len(recs))
    if not bad:
        return "ok"
    worst = max(set(bad), key=bad.count)
    return worst if len(bad) == expected else f"{worst} ({len(bad)}/{expected})"


def _stats(accs):
    accs = np.asarray(accs, float)
    if len(accs) == 0:
        return math.nan, math.nan, math.nan
    std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
    return float(np.mean(accs)), std, float(np.max(accs))


def tidy(records: list[dict], config_hash, families, models, members: int, sd_students: int) -> pd.DataFrame:
    """The tidy table of ``families`` x ``models`` for one config hash (or a tuple of its forms)."""
    hashes = (config_hash,) if isinstance(config_hash, str) else tuple(config_hash)
    by = {}
    for r in records:
        if r.get("config_hash") in hashes:
            by.setdefault((r["family"], r["model"], r["protocol"]), {})[str(r["member"])] = r
    dataset = next((r["dataset"] for r in records if r.get("config_hash") in hashes), "")
    rows = []
    for model in models:
        for fam in families:

            def get(protocol, _f=fam, _m=model):
                return list(by.get((_f, _m, protocol), {}).values())

            for protocol in PROTOCOLS:
                row = dict(
                    family=fam,
                    model=model,
                    dataset=dataset,
                    protocol=protocol,
                    acc_std=math.nan,
                    acc_ensemble=math.nan,
                    acc_by_size="",
                    nll_mean=math.nan,
                    ece_mean=math.nan,
                )
                if protocol in ("single", "sd"):
                    expected = members if protocol == "single" else sd_students
                    if fam in ("ntk_inf", "nngp_inf") and protocol == "single":  # deterministic: one member
                        expected = 1
                    recs = get(protocol)
                    ok = [r for r in recs if r["status"] == "ok"]
                    row["acc_mean"], row["acc_std"], row["acc_best"] = _stats([r["metrics"]["acc"] for r in ok])
                    if ok:
                        row["nll_mean"] = float(np.mean([r["metrics"]["nll"] for r in ok]))
                        row["ece_mean"] = float(np.mean([r["metrics"].get("ece", math.nan) for r in ok]))
                    row["n_members"], row["status"] = len(ok), _status(recs, expected)
                    if protocol == "sd":
                        ens = get("sd_ensemble")
                        if ens and ens[0]["status"] == "ok":
                            row["acc_ensemble"] = ens[0]["metrics"]["acc"]
                else:
                    recs = get(protocol)
                    r = recs[0] if recs else None
                    ok = r is not None and r["status"] == "ok"
                    acc = r["metrics"]["acc"] if ok else math.nan
                    row.update(
                        acc_mean=acc,
                        acc_best=acc,
                        status=_status(recs, 1),
                        nll_mean=r["metrics"]["nll"] if ok else math.nan,
                        ece_mean=r["metrics"].get("ece", math.nan) if ok else math.nan,
                    )
                    row["n_members"] = {
                        "ensemble": r["metrics"].get("n_members", 0) if ok else 0,
                        "train_sum": members,
                        "kd": 1,
                    }[protocol]
                    if protocol == "ensemble" and ok:
                        row["acc_by_size"] = " ".join(f"{a:.2f}" for a in r["metrics"]["acc_by_size"])
                row["wall_s"] = round(sum(r.get("wall_s", 0.0) for r in recs), 1)
                rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _cell(row, family, protocol) -> str:
    if row is None:
        return "missing"
    partial = protocol in ("single", "sd") and row["n_members"]  # some members finished
    if row["status"] != "ok" and not partial:
        return row["status"]
    note = "" if row["status"] == "ok" else f" [{row['status']}]"
    if protocol == "single":
        if family == "nn":
            return f"{row['acc_mean']:.2f} ± {row['acc_std']:.2f} (n={row['n_members']}){note}"
        return f"{row['acc_best']:.2f} (best of {row['n_members']}){note}"
    if protocol == "sd":
        ens = "" if math.isnan(row["acc_ensemble"]) else f"; ens {row['acc_ensemble']:.2f}"
        return f"{row['acc_mean']:.2f} ± {row['acc_std']:.2f} (n={row['n_members']}{ens}){note}"
    return f"{row['acc_mean']:.2f}{note}"


def markdown(df: pd.DataFrame, title: str, header: str = "") -> str:
    """The paper's layout: rows = (model, family), columns = the five protocols."""
    names = {
        "single": "single",
        "ensemble": "ensemble",
        "train_sum": "train-sum",
        "kd": "KD",
        "sd": "SD (students; ensemble)",
    }
    lines = [f"# {title}", ""]
    if header:
        lines += [header, ""]
    lines += [
        "| model | family | " + " | ".join(names[p] for p in PROTOCOLS) + " |",
        "|" + " --- |" * (2 + len(PROTOCOLS)),
    ]
    keys = list(dict.fromkeys(zip(df["model"], df["family"])))
    for model, fam in keys:
        sub = {r["protocol"]: r for _, r in df[(df.model == model) & (df.family == fam)].iterrows()}
        cells = [_cell(sub.get(p), fam, p) for p in PROTOCOLS]
        lines.append(f"| {model} | {fam} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Test accuracy in %. Nets: single = mean ± std over the members; kernels: single = "
        "best of the members (as in the paper). The CSV has mean, std and best for every row.",
        "",
        "## Accuracy vs ensemble size",
        "",
        "| model | family | accuracy of the first 1..L members |",
        "| --- | --- | --- |",
    ]
    for model, fam in keys:
        ens = df[(df.model == model) & (df.family == fam) & (df.protocol == "ensemble")]
        sizes = ens["acc_by_size"].iloc[0] if len(ens) else ""
        lines.append(f"| {model} | {fam} | {sizes or 'missing'} |")
    return "\n".join(lines) + "\n"

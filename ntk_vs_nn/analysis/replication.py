"""Our run of the ResNet-18/Adam replication beside the published one (`paper.load("replication")`,
a blog post's ResNet-18 on CIFAR-10: five singles, their probability-averaged ensemble, the KD
student of the ensemble, one SD student per single, the ensemble of the SD students).

Rows: each group's validation and test accuracy (ours: mean over members and replicates). Gaps, as
the post reads them: ensemble - single, KD - single, SD - teacher (SD student s against its teacher,
single s: the SD mean minus the mean of the teachers) and SD-ensemble - ensemble, each ours with a
paired-bootstrap interval (`analysis.bootstrap`) beside the published number, with whether the
direction agrees (ours' interval on the published side of 0 = "agrees", across 0 = "not resolved",
on the other side = "opposite") and the size ratio ours / published.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_vs_nn import paper
from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis.intervals import jackknife, row_groups
from ntk_vs_nn.analysis.tables import group

GROUPS = ("single", "ensemble", "kd", "sd", "sd_ensemble")
PUBLISHED = {  # our group -> the published CSV's "what"
    "single": "single",
    "ensemble": "ensemble_of_5",
    "kd": "knowledge_distillation",
    "sd": "self_distillation",
    "sd_ensemble": "ensemble_of_self_distilled_5",
}


GAPS = [
    ("ensemble - single", lambda g: g["ensemble"].mean - g["single"].mean),
    ("KD - single", lambda g: g["kd"].mean - g["single"].mean),
    ("SD - teacher", lambda g: g["sd"].mean - g["teachers"].mean),
    ("SD-ensemble - ensemble", lambda g: g["sd_ensemble"].mean - g["ensemble"].mean),
]


def published() -> tuple[pd.DataFrame, dict]:
    """(per-group published val/test accuracy, published gaps)."""
    df = paper.load("replication")
    rows, acc = [], {}
    for ours, what in PUBLISHED.items():
        sub = df[df["what"] == what]
        val, test = sub["val_acc"].astype(float), sub["test_acc"].astype(float)
        acc[ours] = float(test.mean())
        rows.append(dict(group=ours, n=len(sub), val_acc=val.mean(), test_acc=test.mean(),
                         test_min=test.min(), test_max=test.max()))  # fmt: skip
    gaps = {
        "ensemble - single": acc["ensemble"] - acc["single"],
        "KD - single": acc["kd"] - acc["single"],
        "SD - teacher": acc["sd"] - acc["single"],  # one SD student per single: teachers = the singles
        "SD-ensemble - ensemble": acc["sd_ensemble"] - acc["ensemble"],
    }
    return pd.DataFrame(rows), gaps


def _direction(lo, hi, pub):
    if math.isnan(lo):
        return "n/a"
    if (lo > 0 and pub > 0) or (hi < 0 and pub < 0):
        return "agrees"
    if (hi < 0 and pub > 0) or (lo > 0 and pub < 0):
        return "opposite"
    return "not resolved"


def compare(records, hashes, family: str, model: str, sd_students: int, n_boot=2000, seed=0, level=0.95):
    """``(accuracies, gaps)`` DataFrames of our ``family`` ``model`` row (``hashes``: the config's
    replicate hashes) beside the published replication."""
    by = group(records, hashes)
    groups, recs = row_groups(by, family, model, GROUPS)
    pub_rows, pub_gaps = published()
    acc_rows = []
    for _, p in pub_rows.iterrows():
        mine = [r for r in recs if r["protocol"] == p["group"]]
        tests = [r["metrics"]["acc"] for r in mine]
        vals = [r["metrics"]["val_acc"] for r in mine if "val_acc" in r["metrics"]]
        acc_rows.append(dict(
            group=p["group"], n_ours=len(mine), val_ours=np.mean(vals) if vals else math.nan,
            test_ours=np.mean(tests) if tests else math.nan, test_ours_min=min(tests, default=math.nan),
            test_ours_max=max(tests, default=math.nan), n_published=p["n"], val_published=p["val_acc"],
            test_published=p["test_acc"], test_published_min=p["test_min"], test_published_max=p["test_max"],
        ))  # fmt: skip
    gap_rows = []
    if {"single", "ensemble"} <= set(groups):
        groups["teachers"] = [a[:sd_students] for a in groups["single"]]  # single s teaches SD student s
        draws = bs.bootstrap(groups, n_boot, seed, jackknife=jackknife(by, family, model, groups))
        for name, fn in GAPS:
            c = bs.compare(draws, fn, level)
            pub = pub_gaps[name]
            gap_rows.append(dict(
                gap=name, ours=c.d, ci_low=c.lo, ci_high=c.hi, published=pub,
                direction=_direction(c.lo, c.hi, pub), size_ratio=c.d / pub if pub else math.nan,
                n_test=draws.n_test, n_replicates=draws.n_replicates,
            ))  # fmt: skip
    return pd.DataFrame(acc_rows), pd.DataFrame(gap_rows)


def markdown(acc: pd.DataFrame, gaps: pd.DataFrame, header: str = "") -> str:
    lines = ["# The ResNet-18/Adam replication: ours beside the published", ""] + ([header, ""] if header else [])
    lines += [
        "| group | ours: n | ours: val | ours: test (min–max) | published: n | published: val | "
        "published: test (min–max) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    f = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"  # noqa: E731
    for _, r in acc.iterrows():
        spread = lambda lo, hi: f" ({f(lo)}–{f(hi)})" if lo != hi and not math.isnan(lo) else ""  # noqa: E731
        lines.append(
            f"| {r['group']} | {r['n_ours']} | {f(r['val_ours'])} | {f(r['test_ours'])}"
            f"{spread(r['test_ours_min'], r['test_ours_max'])} | {r['n_published']} | {f(r['val_published'])} | "
            f"{f(r['test_published'])}{spread(r['test_published_min'], r['test_published_max'])} |"
        )
    if len(gaps):
        lines += ["", "| gap (test accuracy points) | ours [95 % CI] | published | direction | size ours / published |",
                  "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for _, g in gaps.iterrows():
            lines.append(
                f"| {g['gap']} | {g['ours']:+.2f} [{g['ci_low']:+.2f}, {g['ci_high']:+.2f}] | {g['published']:+.2f} "
                f"| {g['direction']} | {f(g['size_ratio'])} |"
            )
        r0 = gaps.iloc[0]
        lines += ["", f"Ours: n_test = {r0['n_test']}, {r0['n_replicates']} replicate(s)."]
    lines += ["", __doc__.strip()]
    return "\n".join(lines) + "\n"

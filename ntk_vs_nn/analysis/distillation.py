"""Which distillation inputs make KD and SD work: for each ``protocol.kd_inputs`` variant of one
config (``table.kd_inputs``; the teachers are shared), how far the KD and SD students are above the
single members and how much of the ensemble's gain they recover, each with a paired-bootstrap
interval over test examples, replicates and members (`analysis.bootstrap`, the messages' machinery).

  ens - mean       the ensemble's gain over the single mean
  KD - mean        the KD students' mean over the single mean
  SD - mean        the SD students' mean over the single mean (SD - teacher: each SD student's
                   teacher is single member s, so over many students this is the same comparison)
  KD recovers      100 (KD - mean) / (ens - mean), % of the ensemble's gain (no interval when
                   the gain's draws reach 0)
  SD recovers      100 (SD - mean) / (ens - mean)
  SD-ens - ens     the ensemble of the SD students against the teachers' ensemble
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis.intervals import jackknife, row_groups
from ntk_vs_nn.analysis.tables import group


def _ratio(num, den):
    return 100.0 * np.asarray(num) / np.where(np.abs(den) > 1e-9, den, np.nan)


COMPARISONS = [
    ("ens - mean", lambda g: g["ensemble"].mean - g["single"].mean),
    ("KD - mean", lambda g: g["kd"].mean - g["single"].mean),
    ("SD - mean", lambda g: g["sd"].mean - g["single"].mean),
    ("KD recovers %", lambda g: _ratio(g["kd"].mean - g["single"].mean, g["ensemble"].mean - g["single"].mean)),
    ("SD recovers %", lambda g: _ratio(g["sd"].mean - g["single"].mean, g["ensemble"].mean - g["single"].mean)),
    ("SD-ens - ens", lambda g: g["sd_ensemble"].mean - g["ensemble"].mean),
]
GROUPS = ("single", "ensemble", "kd", "sd", "sd_ensemble")
ACCURACIES = ("single", "ensemble", "kd", "sd")  # the groups' mean test accuracies, shown beside
COLUMNS = [
    "kd_inputs", "family", "model", "dataset", "comparison", "d", "ci_low", "ci_high", "single", "ensemble", "kd",
    "sd", "kd_train_acc", "kd_agreement", "sd_agreement", "n_kd", "n_sd", "n_test", "n_replicates", "n_boot",
]  # fmt: skip


def _mean(recs, key):
    vals = [r["metrics"][key] for r in recs if key in r["metrics"]]
    return float(np.mean(vals)) if vals else math.nan


def compare(records, variants: dict, families, models, n_boot=2000, seed=0, level=0.95) -> pd.DataFrame:
    """One row per (variant, family, model, comparison). ``variants``: kd_inputs -> that config's
    replicate hashes (`analysis.tables.group`'s ``config_hash``)."""
    rows = []
    for variant, hashes in variants.items():
        by = group(records, hashes)
        for model in models:
            for fam in families:
                groups, recs = row_groups(by, fam, model, GROUPS)
                if not {"single", "ensemble"} <= set(groups):
                    continue
                draws = bs.bootstrap(groups, n_boot, seed, jackknife=jackknife(by, fam, model, groups))
                kd = [r for r in recs if r["protocol"] == "kd"]
                sd = [r for r in recs if r["protocol"] == "sd"]
                common = dict(
                    kd_inputs=variant, family=fam, model=model, dataset=recs[0]["dataset"],
                    **{g: draws.point[g].mean if g in draws.point else math.nan for g in ACCURACIES},
                    kd_train_acc=_mean(kd, "train_acc"), kd_agreement=_mean(kd, "agreement"),
                    sd_agreement=_mean(sd, "agreement"), n_kd=len(kd), n_sd=len(sd), n_test=draws.n_test,
                    n_replicates=draws.n_replicates, n_boot=n_boot,
                )  # fmt: skip
                for name, fn in COMPARISONS:
                    c = bs.compare(draws, fn, level)
                    rows.append(dict(common, comparison=name, d=c.d, ci_low=c.lo, ci_high=c.hi))
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(df: pd.DataFrame, header: str = "") -> str:
    """One line per (family, model, kd_inputs): accuracies and each comparison as d [CI]."""
    lines = ["# Distillation inputs: what KD and SD recover", ""] + ([header, ""] if header else [])
    names = [n for n, _ in COMPARISONS]
    lines += [
        "| family | model | kd_inputs | single | ensemble | KD | SD | " + " | ".join(names) + " | KD agreement |",
        "| --- | --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for (fam, model, variant), sub in df.groupby(["family", "model", "kd_inputs"], sort=False):
        by = {r["comparison"]: r for _, r in sub.iterrows()}
        r0 = sub.iloc[0]
        cells = []
        for n in names:
            r = by.get(n)
            if r is None or math.isnan(r["d"]):
                cells.append("n/a")
            elif math.isnan(r["ci_low"]):  # a ratio whose denominator's draws reach 0: no interval
                cells.append(f"{r['d']:+.2f} [n/a]")
            else:
                cells.append(f"{r['d']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]")
        accs = " | ".join(f"{r0[k]:.2f}" for k in ACCURACIES)
        agree = f"{r0['kd_agreement']:.2f}"
        lines.append(f"| {fam} | {model} | {variant} | {accs} | " + " | ".join(cells) + f" | {agree} |")
    if len(df):
        r0 = df.iloc[0]
        lines += [
            "",
            f"n_test = {r0['n_test']}, {r0['n_replicates']} replicate(s), {r0['n_boot']} bootstrap draws; d [95 % CI]."
            " KD agreement: % of test points where a KD student's top class is its teacher's.",
        ]
    lines += ["", __doc__.strip()]
    return "\n".join(lines) + "\n"

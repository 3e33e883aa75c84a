"""The seven messages as statistical comparisons: each comparison is a difference d (minus its
threshold, oriented so that the claim says d > 0 or d >= 0) with a paired-bootstrap confidence
interval (`analysis.bootstrap`: test examples, replicates, members), decided by
`verdict.decide_interval`: a strict claim holds when ci_low > 0, fails when ci_high < 0; a
non-strict one holds when ci_low >= 0, fails when ci_high < 0; otherwise inconclusive. A message
holds when all its primary comparisons hold and fails when any fails. Messages ② and ③ are also
reported against the single mean (the paper's tables use the best of L). A row whose members never
left chance on their training set (train accuracy within ``messages.chance_margin`` points of the
majority class's share) is inconclusive whatever its intervals.

Used when every record of the rows carries its test correctness (runs made since it was recorded);
older folders keep the noise-band rule of `analysis.messages`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis.messages import CLAIMS
from ntk_vs_nn.analysis.tables import group
from ntk_vs_nn.analysis.verdict import combine, decide_interval
from ntk_vs_nn.config import MessagesConfig

GROUPS = ("single", "ensemble", "train_sum", "kd", "sd")

# message -> [(comparison, d as a function of the group statistics, strict, primary)]
COMPARISONS = {
    1: [
        ("ens - single-best", lambda g: g["ensemble"].mean - g["single"].best, True, True),
        ("train-sum - ens", lambda g: g["train_sum"].mean - g["ensemble"].mean, False, True),
    ],
    2: [
        ("(ens - best)/2 - (KD - best)", lambda g: (g["ensemble"].mean - g["single"].best) / 2
         - (g["kd"].mean - g["single"].best), True, True),
        ("(ens - mean)/2 - (KD - mean)", lambda g: (g["ensemble"].mean - g["single"].mean) / 2
         - (g["kd"].mean - g["single"].mean), True, False),
    ],
    3: [
        ("best - SD", lambda g: g["single"].best - g["sd"].mean, False, True),
        ("mean - SD", lambda g: g["single"].mean - g["sd"].mean, False, False),
    ],
    4: [
        ("ens - (mean + 2σ)", lambda g: g["ensemble"].mean - g["single"].mean - 2 * g["single"].std, True, True),
        ("ens - train-sum", lambda g: g["ensemble"].mean - g["train_sum"].mean, True, True),
    ],
    5: [
        ("(KD - mean) - (ens - mean)/2", lambda g: (g["kd"].mean - g["single"].mean)
         - (g["ensemble"].mean - g["single"].mean) / 2, False, True),
    ],
    6: [("SD - (mean + σ)", lambda g: g["sd"].mean - g["single"].mean - g["single"].std, True, True)],
    7: [("ens - mean - 3σ", lambda g: g["ensemble"].mean - g["single"].mean - 3 * g["single"].std, True, True)],
}  # fmt: skip

COLUMNS = [
    "message", "family", "model", "dataset", "claim", "comparison", "strict", "primary", "d", "ci_low",
    "ci_high", "verdict", "message_verdict", "min_detectable", "n_test", "n_replicates", "n_boot", "flags",
    "evidence",
]  # fmt: skip


def available(records: list[dict], config_hash) -> bool:
    """True when every finished record of the config carries its test correctness."""
    ok = [r for v in group(records, config_hash).values() for rep in v for r in rep.values() if r["status"] == "ok"]
    return bool(ok) and all("test_correct" in r for r in ok)


def row_groups(by: dict, fam: str, model: str, names=GROUPS) -> tuple[bs.Groups, list[dict]]:
    """The row's groups ``names`` (a group with a replicate lacking any finished member is left out)
    and its finished records."""
    groups, recs = {}, []
    for name in names:
        reps = by.get((fam, model, name))
        if not reps:
            continue
        oks = [[r for r in rep.values() if r["status"] == "ok"] for rep in reps]
        recs += [r for ok in oks for r in ok]
        if all(oks):
            groups[name] = [np.stack([bs.decode_correct(r["test_correct"], r["n_test"]) for r in ok]) for ok in oks]
    return groups, recs


def _flags(recs: list[dict], cfg: MessagesConfig) -> str:
    stuck = [
        r["unit"]
        for r in recs
        if "train_acc" in r["metrics"] and "train_chance" in r["metrics"]
        and r["metrics"]["train_acc"] - r["metrics"]["train_chance"] < cfg.chance_margin
    ]  # fmt: skip
    return f"{len(stuck)} unit(s) at chance on their training set" if stuck else ""


def messages(records, config_hash, families, models, cfg: MessagesConfig, kernel_families) -> pd.DataFrame:
    """One row per comparison of every message that applies to each (family, model)."""
    by = group(records, config_hash)
    rows = []
    for model in models:
        for fam in families:
            kind = "nn" if fam == "nn" else "kernel" if fam in kernel_families else None
            groups, recs = row_groups(by, fam, model)
            if kind is None or not recs:
                continue
            draws = bs.bootstrap(groups, cfg.n_boot, cfg.boot_seed) if groups else None
            flags = _flags(recs, cfg)
            for msg, (mkind, claim, _) in CLAIMS.items():
                if mkind != kind:
                    continue
                part = []
                for name, fn, strict, primary in COMPARISONS[msg]:
                    c = bs.compare(draws, fn, cfg.level) if draws else bs.Comparison(math.nan, math.nan, math.nan)
                    verdict = "inconclusive" if flags else decide_interval(c.lo, c.hi, strict)
                    part.append(dict(
                        message=msg, family=fam, model=model, dataset=recs[0]["dataset"], claim=claim,
                        comparison=name, strict=strict, primary=primary, d=c.d, ci_low=c.lo, ci_high=c.hi,
                        verdict=verdict, min_detectable=bs.min_detectable(c.lo, c.hi),
                        n_test=draws.n_test if draws else 0, n_replicates=draws.n_replicates if draws else 0,
                        n_boot=cfg.n_boot, flags=flags,
                    ))  # fmt: skip
                overall = combine([p["verdict"] for p in part if p["primary"]])
                for p in part:
                    ev = f"{p['comparison']} = {p['d']:+.2f} [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]"
                    rows.append({**p, "message_verdict": overall, "evidence": ev + (f"; {flags}" if flags else "")})
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(df: pd.DataFrame, header: str = "") -> str:
    circled = "①②③④⑤⑥⑦"
    level = "95 %"
    lines = ["# Messages ①–⑦ (Allen-Zhu & Li)", ""] + ([header, ""] if header else [])
    lines += [
        f"| # | family | model | claim | comparison | d [{level} CI] | verdict | message | smallest detectable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in df.sort_values(["message", "family", "model"], kind="stable").iterrows():
        name = r["comparison"] + ("" if r["strict"] else " ≥ 0") + ("" if r["primary"] else " (vs single mean)")
        ci = "n/a" if math.isnan(r["d"]) else f"{r['d']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        flag = f" ({r['flags']})" if r["flags"] else ""
        lines.append(
            f"| {circled[r['message'] - 1]} | {r['family']} | {r['model']} | {r['claim']} | {name} "
            f"| {ci} | {r['verdict']}{flag} | **{r['message_verdict']}** | ±{r['min_detectable']:.2f} |"
        )
    if len(df):
        r0 = df.iloc[0]
        lines += ["", f"n_test = {r0['n_test']}, {r0['n_replicates']} replicate(s), {r0['n_boot']} bootstrap draws."]
    lines += ["", __doc__.split("\n\nUsed when", 1)[0].strip()]
    return "\n".join(lines) + "\n"

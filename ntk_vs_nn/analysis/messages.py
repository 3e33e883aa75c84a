"""The seven messages of Allen-Zhu & Li as tests on a tidy table (PROTOCOLS.md §3). Pure.

Each message is one or more comparisons "d > 0" (strict) or "d >= 0" with a noise band
m = max(noise_sigma * sigma, noise_floor), sigma = std of the single members of that row:
  strict:     holds if d > m,  fails if d < -m, inconclusive otherwise;
  non-strict: holds if d >= 0, fails if d < -m, inconclusive otherwise.
A message holds when all its comparisons hold, fails when any fails, and is inconclusive
otherwise (also when a cell it needs is missing, oom or diverged).
"""

from __future__ import annotations

import math

import pandas as pd

from ntk_vs_nn.analysis.verdict import combine, decide
from ntk_vs_nn.config import MessagesConfig

CLAIMS = {
    1: ("kernel", "ensemble helps, but no more than training the sum", "ens > single-best and train-sum >= ens"),
    2: ("kernel", "the ensemble cannot be distilled", "KD - single-best < (ens - single-best)/2"),
    3: ("kernel", "self-distillation does not help", "SD-mean <= single-best"),
    4: ("nn", "ensemble helps, and training the sum does not match it", "ens > single-mean + 2σ and ens > train-sum"),
    5: ("nn", "the ensemble can largely be distilled", "KD - single-mean >= (ens - single-mean)/2"),
    6: ("nn", "self-distillation clearly helps", "SD-mean > single-mean + σ"),
    7: ("nn", "the ensemble gain is not the variance of singles", "ens - single-mean > 3σ"),
}


def _values(sub: pd.DataFrame) -> dict:
    get = {r["protocol"]: r for _, r in sub.iterrows()}
    nan = math.nan

    def val(protocol, col="acc_mean"):
        r = get.get(protocol)
        if r is None or r["status"] != "ok":
            return nan
        return float(r[col])

    return dict(
        mean=val("single"),
        best=val("single", "acc_best"),
        sigma=val("single", "acc_std"),
        ens=val("ensemble"),
        sum=val("train_sum"),
        kd=val("kd"),
        sd=val("sd"),
    )


def evaluate(message: int, v: dict, cfg: MessagesConfig):
    """(verdict, evidence) of one message on the values of one row."""
    sigma = v["sigma"] if not math.isnan(v["sigma"]) else 0.0
    m = max(cfg.noise_sigma * sigma, cfg.noise_floor)
    best, mean, ens, tsum, kd, sd = v["best"], v["mean"], v["ens"], v["sum"], v["kd"], v["sd"]
    if message == 1:
        parts = [("ens - best", ens - best, True), ("train-sum - ens", tsum - ens, False)]
    elif message == 2:
        parts = [("(ens - best)/2 - (KD - best)", (ens - best) / 2 - (kd - best), True)]
    elif message == 3:
        parts = [("best - SD", best - sd, False)]
    elif message == 4:
        parts = [("ens - (mean + 2σ)", ens - mean - 2 * sigma, True), ("ens - train-sum", ens - tsum, True)]
    elif message == 5:
        parts = [("(KD - mean) - (ens - mean)/2", (kd - mean) - (ens - mean) / 2, False)]
    elif message == 6:
        parts = [("SD - (mean + σ)", sd - mean - sigma, True)]
    else:
        parts = [("ens - mean - 3σ", ens - mean - 3 * sigma, True)]
    verdicts = [decide(d, m, strict) for _, d, strict in parts]
    shown = {"single-mean": mean, "single-best": best, "σ": sigma, "ens": ens, "train-sum": tsum, "KD": kd, "SD": sd}
    missing = [k for k, x in shown.items() if math.isnan(x)]
    evidence = ", ".join(f"{name} = {'n/a' if math.isnan(d) else f'{d:+.2f}'}" for name, d, _ in parts)
    evidence += f" (band ±{m:.2f})"
    evidence += "; " + ", ".join(f"{k} {x:.2f}" for k, x in shown.items() if not math.isnan(x))
    if missing:
        evidence += "; missing: " + ", ".join(missing)
    return combine(verdicts), evidence


def messages(table: pd.DataFrame, cfg: MessagesConfig, kernel_families=("ntk", "ntk_prime", "gp")) -> pd.DataFrame:
    """One row per (message, family, model) for the families present in ``table``."""
    rows = []
    for (fam, model, dataset), sub in table.groupby(["family", "model", "dataset"], sort=False):
        kind = "nn" if fam == "nn" else "kernel" if fam in kernel_families else None
        if kind is None:
            continue
        v = _values(sub)
        for msg, (mkind, claim, test) in CLAIMS.items():
            if mkind != kind:
                continue
            verdict, evidence = evaluate(msg, v, cfg)
            rows.append(
                dict(
                    message=msg,
                    family=fam,
                    model=model,
                    dataset=dataset,
                    claim=claim,
                    test=test,
                    verdict=verdict,
                    evidence=evidence,
                )
            )
    return pd.DataFrame(rows, columns=["message", "family", "model", "dataset", "claim", "test", "verdict", "evidence"])


def markdown(df: pd.DataFrame, header: str = "", labels: dict | None = None) -> str:
    """messages.md of the noise-band rule; ``labels``: a family's name as shown (`analysis.tables.markdown`)."""
    labels = labels or {}
    circled = "①②③④⑤⑥⑦"
    lines = ["# Messages ①–⑦ (Allen-Zhu & Li)", ""]
    if header:
        lines += [header, ""]
    lines += [
        "| # | family | model | claim | test | verdict | evidence |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in df.sort_values(["message", "family", "model"], kind="stable").iterrows():
        lines.append(
            f"| {circled[r['message'] - 1]} | {labels.get(r['family'], r['family'])} | {r['model']} | {r['claim']} | "
            f"{r['test']} | **{r['verdict']}** | {r['evidence']} |"
        )
    lines += ["", __doc__.split("\n\n", 1)[1].strip()]
    return "\n".join(lines) + "\n"

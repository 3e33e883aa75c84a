"""Records -> the paper's two tables (tidy CSV + Markdown). Pure: no training, no I/O.

The CSV has one row per (family, model, dataset, protocol), protocol in single, ensemble,
train_sum, kd, sd, over the R replicates of the pipeline (root seeds seed .. seed + R - 1):
n_members (finished members, all replicates), acc_mean (single, kd, sd: the mean of all members;
ensemble, train-sum: the mean over replicates), acc_std (sample std, ddof=1, of the members, or of
the replicates' values for ensemble and train-sum; n/a for one value), acc_best (single: the best
member of each replicate, averaged over replicates), nll_mean, ece_mean (expected calibration
error, %, 15 bins; n/a in records made before it was added), acc_ensemble (sd: the ensemble of
the S students), acc_by_size (ensemble: accuracy of the first 1..L members, averaged over
replicates), status (ok, or what went wrong: oom, diverged, missing, skipped), wall_s,
n_replicates, acc_by_replicate (each replicate's acc_mean; acc_best for kernel singles),
train_acc_mean (the members' accuracy on their training set) and, for students, agreement_mean
(top-1 agreement with the teacher on test, %) and kl_mean (KL(teacher ‖ student) on test, nats).
Calibration (`ntk_vs_nn.metrics`; n/a in records made before they were added): brier_mean (summed
over classes), cnll_mean, cbs_mean, cece_mean (at one temperature per unit, fitted on validation),
dee_mean (deep-ensemble equivalent: the size of an ensemble of the same row's singles with the same
cNLL, per replicate), and the members' diversity on test (ensemble: the singles; sd: the SD students):
disagreement (pairwise top-1, %) and pairwise_kl (nats).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.config import INFINITE_FAMILIES, PROTOCOLS

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
    "n_replicates",
    "acc_by_replicate",
    "train_acc_mean",
    "agreement_mean",
    "kl_mean",
    "brier_mean",
    "cnll_mean",
    "cbs_mean",
    "cece_mean",
    "dee_mean",
    "disagreement",
    "pairwise_kl",
]
MULTI = ("single", "kd", "sd", "control")  # protocols with several members per replicate
CONTROL = "control"  # singles at the students' budget (`protocols.Row.control`): a row of its own when recorded
WIDE = "wide"  # the wide control net (`protocols.Row.wide`): a row of its own when recorded
EXTRA = (CONTROL, WIDE)  # the controls, shown after the five protocols where a row recorded them


def _status(recs, expected):
    bad = [r["status"] for r in recs if r["status"] != "ok"]
    if len(recs) < expected:
        bad += ["missing"] * (expected - len(recs))
    if not bad:
        return "ok"
    worst = max(set(bad), key=bad.count)
    return worst if len(bad) == expected else f"{worst} ({len(bad)}/{expected})"


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else math.nan


def _std(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def replicate_hashes(config_hash) -> list[tuple[str, ...]]:
    """A hash, a tuple of one config's hash forms, or a list of such per replicate -> the list."""
    if isinstance(config_hash, str):
        return [(config_hash,)]
    if config_hash and all(isinstance(h, str) for h in config_hash):
        return [tuple(config_hash)]
    return [(h,) if isinstance(h, str) else tuple(h) for h in config_hash]


def by_design(recs) -> bool:
    """Whether a replicate's records of a group (some) were all skipped by the run's design (the train-sum
    model after the first ``table.train_sum_replicates`` replicates), not lost (diverged, oom, missing)."""
    recs = list(recs)
    return bool(recs) and all(
        r["status"] == "skipped" and r["metrics"].get("reason", "").startswith("table.train_sum_replicates")
        for r in recs
    )


def group(records: list[dict], config_hash) -> dict:
    """{(family, model, protocol): [ {member: record} per replicate ]} of the records made under
    the replicates' hashes (`replicate_hashes`); a later record of a unit replaces an earlier one."""
    reps = replicate_hashes(config_hash)
    where = {h: i for i, forms in enumerate(reps) for h in forms}
    by: dict = {}
    for r in records:
        i = where.get(r.get("config_hash"))
        if i is not None:
            slot = by.setdefault((r["family"], r["model"], r["protocol"]), [{} for _ in reps])
            slot[i][str(r["member"])] = r
    return by


def _metric(recs, key):
    return [r["metrics"].get(key, math.nan) for r in recs]


def tidy(
    records: list[dict], config_hash, families, models, members: int, sd_students: int, kd_students: int = 1
) -> pd.DataFrame:
    """The tidy table of ``families`` x ``models`` over the replicates: ``config_hash`` is one
    config's hash (or its forms), or a list of them, one per replicate (`replicate_hashes`)."""
    by = group(records, config_hash)
    n_rep = len(replicate_hashes(config_hash))
    dataset = next((r["dataset"] for v in by.values() for rep in v for r in rep.values()), "")
    rows = []
    for model in models:
        for fam in families:
            for protocol in PROTOCOLS + tuple(p for p in EXTRA if (fam, model, p) in by):
                reps = [list(m.values()) for m in by.get((fam, model, protocol), [{} for _ in range(n_rep)])]
                reps = [recs for recs in reps if not by_design(recs)] or reps
                rows.append(_row(fam, model, dataset, protocol, reps, by, members, sd_students, kd_students))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(fam, model, dataset, protocol, reps, by, members, sd_students, kd_students) -> dict:
    n_rep = len(reps)
    row = dict(family=fam, model=model, dataset=dataset, protocol=protocol, acc_std=math.nan)
    row.update(acc_ensemble=math.nan, acc_by_size="", nll_mean=math.nan, ece_mean=math.nan, n_replicates=n_rep)
    oks = [[r for r in recs if r["status"] == "ok"] for recs in reps]
    pooled = [r for ok in oks for r in ok]
    accs = [r["metrics"]["acc"] for r in pooled]
    if protocol in MULTI:
        expected = {"single": members, "sd": sd_students, "kd": kd_students, CONTROL: max(kd_students, sd_students)}[
            protocol
        ]
        if fam in INFINITE_FAMILIES and protocol == "single":  # deterministic: one member
            expected = 1
        row["acc_mean"], row["acc_std"] = _mean(accs), _std(accs)
        if protocol != "kd" and len(accs) == 1:  # as the tables always showed one member: std 0
            row["acc_std"] = 0.0
        per_rep = [max(r["metrics"]["acc"] for r in ok) if ok else math.nan for ok in oks]
        row["acc_best"] = _mean(per_rep) if pooled else math.nan
        shown = per_rep if protocol == "single" and fam != "nn" else [_mean(_metric(ok, "acc")) for ok in oks]
        if protocol == "sd":
            ens = [next(iter(m.values()), None) for m in by.get((fam, model, "sd_ensemble"), [])]
            row["acc_ensemble"] = _mean([e["metrics"]["acc"] for e in ens if e and e["status"] == "ok"])
    else:
        expected = 1
        row["acc_mean"] = row["acc_best"] = _mean(accs)
        row["acc_std"] = _std(accs)
        shown = [_mean(_metric(ok, "acc")) for ok in oks]
        sizes = [r["metrics"]["acc_by_size"] for r in pooled if protocol == "ensemble"]
        if sizes and len({len(s) for s in sizes}) == 1:
            row["acc_by_size"] = " ".join(f"{a:.2f}" for a in np.mean(sizes, axis=0))
    row["n_members"] = {"ensemble": sum(r["metrics"].get("n_members", 0) for r in pooled), "train_sum": members}.get(
        protocol, len(pooled)
    )
    if pooled:
        row["nll_mean"], row["ece_mean"] = _mean(_metric(pooled, "nll")), _mean(_metric(pooled, "ece"))
    row["status"] = _status([r for recs in reps for r in recs], expected * n_rep)
    row["wall_s"] = round(sum(r.get("wall_s", 0.0) for recs in reps for r in recs), 1)
    row["acc_by_replicate"] = " ".join("nan" if math.isnan(a) else f"{a:.2f}" for a in shown)
    row["train_acc_mean"] = _mean(_metric(pooled, "train_acc"))
    row["agreement_mean"] = _mean(_metric(pooled, "agreement"))
    row["kl_mean"] = _mean(_metric(pooled, "kl_teacher"))
    for key in ("brier", "cnll", "cbs", "cece"):
        row[f"{key}_mean"] = _mean(_metric(pooled, key))
    curves = [_only(m).get("cnll_by_size") for m in by.get((fam, model, "ensemble"), [])]
    row["dee_mean"] = _mean(
        [metrics.dee(r["metrics"]["cnll"], c) for ok, c in zip(oks, curves) if c for r in ok if "cnll" in r["metrics"]]
    )
    pool = {"ensemble": "ensemble", "sd": "sd_ensemble"}.get(protocol)
    for key in ("disagreement", "pairwise_kl"):
        row[key] = _mean([_only(m).get(key) for m in by.get((fam, model, pool), [])]) if pool else math.nan
    return row


def _only(members: dict) -> dict:
    """The metrics of a replicate's one-record unit (an ensemble) if it is ok, else {}."""
    rec = next(iter(members.values()), None)
    return rec["metrics"] if rec and rec["status"] == "ok" else {}


def _cell(row, family, protocol) -> str:
    if row is None:
        return "missing"
    partial = protocol in MULTI and row["n_members"]  # some members finished
    if row["status"] != "ok" and not partial:
        return row["status"]
    note = "" if row["status"] == "ok" else f" [{row['status']}]"
    reps = int(row.get("n_replicates", 1) or 1)
    over = f", {reps} replicates" if reps > 1 else ""
    if protocol == CONTROL or (protocol == "single" and family == "nn"):  # mean ± std over the members
        return f"{row['acc_mean']:.2f} ± {row['acc_std']:.2f} (n={row['n_members']}){note}"
    if protocol == "single":
        per = row["n_members"] // reps if reps > 1 else row["n_members"]
        return f"{row['acc_best']:.2f} (best of {per}{over}){note}"
    if protocol == "sd":
        ens = "" if math.isnan(row["acc_ensemble"]) else f"; ens {row['acc_ensemble']:.2f}"
        return f"{row['acc_mean']:.2f} ± {row['acc_std']:.2f} (n={row['n_members']}{ens}){note}"
    if math.isnan(row["acc_std"]):
        return f"{row['acc_mean']:.2f}{note}"
    n = f"n={row['n_members']}" if protocol == "kd" else f"{reps} replicates"
    return f"{row['acc_mean']:.2f} ± {row['acc_std']:.2f} ({n}){note}"


def markdown(df: pd.DataFrame, title: str, header: str = "", labels: dict | None = None) -> str:
    """The paper's layout: rows = (model, family), columns = the five protocols; ``labels``: a family's
    name as shown (``ntk (Adam)`` for a kernel row not trained by gradient descent)."""
    labels = labels or {}
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
    shown = PROTOCOLS + tuple(p for p in EXTRA if (df["protocol"] == p).any())
    names[CONTROL] = "control: single at the students' budget"
    names[WIDE] = "wide: one net trained like a member (protocol.wide_model)"
    lines += [
        "| model | family | " + " | ".join(names[p] for p in shown) + " |",
        "|" + " --- |" * (2 + len(shown)),
    ]
    keys = list(dict.fromkeys(zip(df["model"], df["family"])))
    for model, fam in keys:
        sub = {r["protocol"]: r for _, r in df[(df.model == model) & (df.family == fam)].iterrows()}
        cells = [_cell(sub.get(p), fam, p) if p in sub or p not in EXTRA else "—" for p in shown]
        lines.append(f"| {model} | {labels.get(fam, fam)} | " + " | ".join(cells) + " |")
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
        lines.append(f"| {model} | {labels.get(fam, fam)} | {sizes or 'missing'} |")
    return "\n".join(lines) + "\n"

"""The diversity table (`experiments.diversity`) from the records alone: pure, no training, no I/O. Its
design (`parse`, `be_model`, `student_config`: which students, under which configs) lives here too, so the
experiment that trains the units and this table that reads them share it, and analysis never imports up.

One row per predictor: the teachers (DE-1 = the mean of the M single nets, DE-M = their ensemble; the
same for the ntk members when there are ntk students), the BatchEnsemble trained from scratch, and each
student of ``table.diversity``. Metrics (`ntk_vs_nn.metrics`, on test; calibrated ones at the temperature
fitted on validation): acc, nll, brier, ece (%), cnll, cbs, cece, dee (against DE-1..DE-M of the same
family's members); mean and sample std over the seeds (replicates). ``disagreement`` / ``pairwise_kl``:
the members' diversity (DE-M: the teachers; a BatchEnsemble: its own members). For each student with a
perturbation: ``d_<metric>`` = its value minus plain KD's (same student, same seed), averaged over seeds,
with a two-sided t-interval over the seeds (``d_<metric>_lo`` / ``_hi``, level ``messages.level``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.config import Config, UserError

METRICS = ("acc", "nll", "brier", "ece", "cnll", "cbs", "cece", "dee")
COMPARED = ("acc", "cnll", "dee")  # the differences to plain KD (with intervals)
DIVERSITY = ("disagreement", "pairwise_kl")
LABELS = {"none": "KD", "gaussian": "KD + Gaussian", "ods": "KD + ODS", "confods": "KD + ConfODS"}
STUDENT_LABELS = {"be": "BatchEnsemble-{M}", "nn": "single net", "ntk": "ntk model"}


def _index(records):
    """{(config_hash, family, model, protocol, member): record} of the ok records (the latest wins)."""
    out = {}
    for r in records:
        if r.get("status") == "ok":
            out[(r["config_hash"], r["family"], r["model"], r["protocol"], str(r["member"]))] = r
    return out


def _find(index, cfg, family, model, protocol, member):
    for h in cfg.science_hashes():
        r = index.get((h, family, model, protocol, str(member)))
        if r is not None:
            return r
    return None


# -- the design: which students, under which configs (the experiment trains them, the table reads them) --
STUDENTS = ("be", "nn", "ntk")
PERTURBATIONS = ("none", "gaussian", "ods", "confods")


def parse(cfg: Config) -> list[tuple[str, str]]:
    """``table.diversity`` as (student, perturbation) pairs, or a UserError naming the bad entry."""
    out = []
    for entry in cfg.table.diversity:
        student, _, kind = entry.partition(":")
        if student not in STUDENTS or kind not in PERTURBATIONS:
            raise UserError(
                f"table.diversity entry {entry!r}: expected student:perturbation with student in "
                f"{', '.join(STUDENTS)} and perturbation in {', '.join(PERTURBATIONS)}"
            )
        out.append((student, kind))
    return out


def be_model(cfg: Config) -> str:
    return f"BE{cfg.protocol.members}-{cfg.table.nn_models[0]}"


def student_config(cfg: Config, student: str, kind: str) -> Config:
    """The config whose KD units are this student: its network (``kd_student``), perturbation, and
    member-wise distillation for a BatchEnsemble student."""
    p = dataclasses.replace(
        cfg.protocol,
        kd_perturb=kind,
        kd_student=be_model(cfg) if student == "be" else "",
        kd_memberwise="on" if student == "be" else "off",
        teacher="online" if (student == "be" or kind != "none") else cfg.protocol.teacher,
    )
    return dataclasses.replace(cfg, protocol=p)


def _values(rec, curve) -> dict:
    m = rec["metrics"]
    out = {k: m.get(k, math.nan) for k in METRICS if k != "dee"}
    out["dee"] = metrics.dee(m["cnll"], curve) if curve and "cnll" in m else math.nan
    out.update({k: m.get(k, math.nan) for k in DIVERSITY})
    return out


def table(records, cfg) -> pd.DataFrame:
    index = _index(records)
    model, M = cfg.table.nn_models[0], cfg.protocol.members
    pairs = parse(cfg)
    families = ("nn", "ntk") if any(s == "ntk" for s, _ in pairs) else ("nn",)
    rows: dict[tuple, list] = {}  # (group, student, method, family) -> per-seed dicts (None: missing)
    for rc in cfg.replicate_configs:
        curves = {}
        for fam in families:
            ens = _find(index, rc, fam, model, "ensemble", "all")
            curves[fam] = ens["metrics"].get("cnll_by_size") if ens else None
            singles = [_find(index, rc, fam, model, "single", i) for i in range(M)]
            ok = [_values(s, curves[fam]) for s in singles if s is not None]
            de1 = {k: float(np.mean([o[k] for o in ok])) for k in ok[0]} if len(ok) == M else None
            if de1 is not None:
                de1.update({k: math.nan for k in DIVERSITY})
            rows.setdefault(("teachers", f"DE-1 ({fam})", "", fam), []).append(de1)
            rows.setdefault(("teachers", f"DE-{M} ({fam})", "", fam), []).append(
                _values(ens, curves[fam]) if ens else None
            )
        be = _find(index, rc, "nn", be_model(rc), "single", 0)
        rows.setdefault(("baseline", STUDENT_LABELS["be"].format(M=M), "CE only", "nn"), []).append(
            _values(be, curves["nn"]) if be else None
        )
        for student, kind in pairs:
            fam = "ntk" if student == "ntk" else "nn"
            rec = _find(index, student_config(rc, student, kind), fam, model, "kd", 0)
            key = ("students", STUDENT_LABELS[student].format(M=M), LABELS[kind], fam)
            rows.setdefault(key, []).append(_values(rec, curves[fam]) if rec else None)
    level = cfg.messages.level
    out = []
    for (group, student, method, fam), per_seed in rows.items():
        row = {"group": group, "student": student, "method": method, "family": fam}
        got = [v for v in per_seed if v is not None]
        row["n_seeds"] = len(got)
        for k in (*METRICS, *DIVERSITY):
            vals = [v[k] for v in got if not math.isnan(v[k])]
            row[f"{k}_mean"] = float(np.mean(vals)) if vals else math.nan
            row[f"{k}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
        base = rows.get((group, student, LABELS["none"], fam)) if group == "students" else None
        for k in COMPARED:
            d = [] if base is None or method == LABELS["none"] else [
                a[k] - b[k] for a, b in zip(per_seed, base) if a is not None and b is not None
            ]  # fmt: skip
            d = [x for x in d if not math.isnan(x)]
            row[f"d_{k}"], row[f"d_{k}_lo"], row[f"d_{k}_hi"] = _t_interval(d, level)
        out.append(row)
    return pd.DataFrame(out)


def _t_interval(d, level):
    if not d:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(d))
    if len(d) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))
    return mean, float(mean - half), float(mean + half)


def _pm(row, k, digits):
    m, s = row[f"{k}_mean"], row[f"{k}_std"]
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def _diff(row, k, digits):
    d, lo, hi = row[f"d_{k}"], row[f"d_{k}_lo"], row[f"d_{k}_hi"]
    if math.isnan(d):
        return ""
    return f"{d:+.{digits}f}" + ("" if math.isnan(lo) else f" [{lo:+.{digits}f}, {hi:+.{digits}f}]")


def ordering(df: pd.DataFrame, student: str, key: str, higher: bool) -> str:
    """The student's methods ordered by ``key`` (best first): ``KD + ODS > KD > ...``."""
    sub = df[(df.group == "students") & (df.student == student)].dropna(subset=[f"{key}_mean"])
    sub = sub.sort_values(f"{key}_mean", ascending=not higher)
    return " > ".join(sub.method) if len(sub) else "n/a"


def published_orderings() -> list[str]:
    """Nam et al.'s rows (package data): per setting, the BatchEnsemble students' methods ordered by
    accuracy, NLL and DEE (best first)."""
    from ntk_vs_nn import paper

    pub = paper.load("nam")
    lines = []
    for (setting, _), sub in pub.groupby(["setting", "teacher"], sort=False):
        kd = sub[sub.method.str.contains(r"\+ KD")].copy()
        kd["label"] = kd.method.str.replace(r"^BatchEns-\d+ \+ ", "", regex=True)
        parts = []
        for col, higher in (("acc", True), ("nll", False), ("dee", True)):
            s = kd.dropna(subset=[col]).sort_values(col, ascending=not higher)
            if len(s):
                parts.append(f"{col.upper()}: {' > '.join(s.label)}")
        lines.append(f"- {setting} ({sub.teacher.iloc[0]}): " + "; ".join(parts))
    return lines


def markdown(df: pd.DataFrame, cfg) -> str:
    p = cfg.protocol
    lines = [
        "# Diversity matters when distilling an ensemble (Nam et al. 2021)",
        "",
        f"Dataset `{cfg.dataset}`, preset `{cfg.preset}`, teachers DE-{p.members} of `{cfg.table.nn_models[0]}` "
        f"(ensemble rule {p.ensemble_rule}), seeds {cfg.run.seed}–{cfg.run.seed + cfg.run.replicates - 1}; KD alpha "
        f"{p.kd_alpha:g}, tau {cfg.kd_tau_for(10):g}, perturbation step eta = {p.kd_eta:.4g} (pixel units for "
        "images). Mean ± std over the seeds; ECE and cECE in %; DEE: the size of an ensemble of the same family's "
        "teachers with the same calibrated NLL. Generated by `ntk-vs-nn` from `records.jsonl`.",
        "",
        "| group | predictor | method | n | ACC | NLL | BS | ECE | cNLL | cBS | cECE | DEE | disagreement % | KL |",
        "|" + " --- |" * 14,
    ]
    for _, r in df.iterrows():
        cells = [_pm(r, "acc", 2), _pm(r, "nll", 3), _pm(r, "brier", 3), _pm(r, "ece", 2), _pm(r, "cnll", 3),
                 _pm(r, "cbs", 3), _pm(r, "cece", 2), _pm(r, "dee", 2), _pm(r, "disagreement", 2),
                 _pm(r, "pairwise_kl", 3)]  # fmt: skip
        lines.append(f"| {r.group} | {r.student} | {r.method} | {r.n_seeds} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Each perturbation against plain KD of the same student ({cfg.messages.level:.0%} t-interval over seeds)",
        "",
        "| student | method | ΔACC | ΔcNLL | ΔDEE |",
        "| --- | --- | --- | --- | --- |",
    ]
    for _, r in df[(df.group == "students") & (df.method != LABELS["none"])].iterrows():
        diffs = f"{_diff(r, 'acc', 2)} | {_diff(r, 'cnll', 3)} | {_diff(r, 'dee', 2)}"
        lines.append(f"| {r.student} | {r.method} | {diffs} |")
    lines += ["", "## Orderings (best first)", "", "Ours:", ""]
    for student in dict.fromkeys(df[df.group == "students"].student):
        lines.append(
            f"- {student}: ACC: {ordering(df, student, 'acc', True)}; cNLL: {ordering(df, student, 'cnll', False)}; "
            f"DEE: {ordering(df, student, 'dee', True)}"
        )
    lines += ["", "Published (Nam et al. 2021, BatchEnsemble students; their NLL is the calibrated one):", ""]
    lines += published_orderings()
    return "\n".join(lines) + "\n"

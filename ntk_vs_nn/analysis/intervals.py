"""The seven messages as statistical comparisons: each comparison is a difference d (minus its
threshold, oriented so that the claim says d > 0 or d >= 0) with a paired-bootstrap confidence
interval (`analysis.bootstrap`: test examples, replicates, members), decided by
`verdict.decide_interval`: a strict claim holds when ci_low > 0, fails when ci_high < 0; a
non-strict one holds when ci_low >= 0, fails when ci_high < 0; otherwise inconclusive. A message
holds when all its primary comparisons hold and fails when any fails. Messages ② and ③ are also
reported against the single mean (the paper's tables use the best of L). A row whose members never
left chance on their training set (train accuracy within ``messages.chance_margin`` points of the
majority class's share) is inconclusive whatever its intervals. A comparison whose groups stopped in
different training states (by different rules or budgets, or with mean train accuracies more than
``messages.state_margin`` points apart; an ensemble counts as its members) is flagged, and the flag names
the groups and their states: the difference may then be the training, not the protocol.

Used when every record of the rows carries its test correctness (runs made since it was recorded);
older folders keep the noise-band rule of `analysis.messages`.

Each message also carries its effect in the paper's own units, with its interval, beside the range of
the paper's rows (`analysis.effects`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis.effects import PAPER_DATASETS, effect
from ntk_vs_nn.analysis.messages import CLAIMS
from ntk_vs_nn.analysis.tables import by_design, group
from ntk_vs_nn.analysis.verdict import combine, decide_interval
from ntk_vs_nn.config import MessagesConfig

GROUPS = ("single", "ensemble", "train_sum", "kd", "sd", "control", "wide")

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

# where a row has control singles (singles trained for the students' budget, `protocols.Row.control`), messages
# ⑤ and ⑥ are decided against them: the students' gain is then not their longer training; the comparisons
# against the singles at the teachers' budget stay, as secondary ones
CONTROLLED = {
    5: [
        ("(KD - control) - (ens - mean)/2", lambda g: (g["kd"].mean - g["control"].mean)
         - (g["ensemble"].mean - g["single"].mean) / 2, False, True),
    ],
    6: [("SD - (control + σ)", lambda g: g["sd"].mean - g["control"].mean - g["control"].std, True, True)],
}  # fmt: skip


# where a net row has its wide control (one net of about the ensemble's parameters trained like a member,
# `protocols.Row.wide`), messages ④ and ⑦ also read the ensemble against it, as a secondary comparison: an
# ensemble that beats its singles but not one net of its size shows a capacity gain, not ④'s premise
WIDE = {4: [("ens - wide", lambda g: g["ensemble"].mean - g["wide"].mean, True, False)]}
WIDE[7] = WIDE[4]


# the groups whose training states a comparison sets against each other, where not all it reads: the
# controlled ⑤ subtracts the control from KD and the singles from their ensemble, never KD from the singles
STATE_PAIRS = {"(KD - control) - (ens - mean)/2": (("kd", "control"),)}


def comparisons(message: int, has_control: bool, has_wide: bool = False) -> list:
    """The comparisons of ``message``: `COMPARISONS`, or with control singles `CONTROLLED` first (primary)
    and the uncontrolled ones as secondary; with a wide control, `WIDE`'s after them."""
    out = COMPARISONS[message]
    if has_control and message in CONTROLLED:
        out = CONTROLLED[message] + [(name, fn, strict, False) for name, fn, strict, _ in out]
    return out + (WIDE.get(message, []) if has_wide else [])


COLUMNS = [
    "message", "family", "model", "dataset", "claim", "comparison", "strict", "primary", "d", "ci_low",
    "ci_high", "verdict", "message_verdict", "min_detectable", "n_test", "n_replicates", "n_boot", "flags",
    "evidence", "state_flags", "effect", "effect_value", "effect_ci_low", "effect_ci_high",
    *(f"{k}{ds}{e}" for ds in ("cifar10", "cifar100") for k, e in (("paper_", "_lo"), ("paper_", "_hi"), ("vs_", ""))),
]  # fmt: skip
STATE_OF = {"ensemble": "single", "sd_ensemble": "sd"}  # a combination's training state is its members'


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class _Zero:
    mean = best = std = 0.0


def groups_read(fn) -> tuple[str, ...]:
    """The groups a comparison's function reads, in order (it is called on a recorder)."""
    seen = []

    class Recorder(dict):
        def __missing__(self, name):
            seen.append(name)
            return _Zero

    fn(Recorder())
    return tuple(dict.fromkeys(seen))


def unit_state(rec: dict) -> dict:
    """A finished unit's training state: how it stopped (``stop``: budget | validation | closed_form,
    None when the record does not say), its budget (epochs, or function-space steps under a budget) and
    its train accuracy. Records made before the ``training`` field: weight-space units stopped at their
    ``epochs``."""
    m, tr = rec["metrics"], rec.get("training") or {}
    stop = tr.get("stop") or ("budget" if "epochs" in m else None)
    if "epochs" in m:
        budget = f"{m['epochs']} epochs"
    elif stop == "budget" and tr.get("steps") is not None:
        budget = f"{tr['steps']} steps"
    else:
        budget = None
    return dict(stop=stop, budget=budget, train_acc=m.get("train_acc"))


def state_flags(by: dict, fam: str, model: str, groups: tuple[str, ...], margin: float) -> str:
    """Why the ``groups`` of one comparison stopped in unequal training states ("" when they did not): the
    groups whose stop rules or budgets differ, or whose mean train accuracies lie more than ``margin``
    points apart, with their states."""
    states = {}
    for g in dict.fromkeys(STATE_OF.get(g, g) for g in groups):
        recs = [r for rep in by.get((fam, model, g), []) for r in rep.values() if r["status"] == "ok"]
        if not recs:
            continue
        us = [unit_state(r) for r in recs]
        accs = [u["train_acc"] for u in us if u["train_acc"] is not None]
        states[g] = dict(
            stop="/".join(sorted({u["stop"] for u in us if u["stop"]})) or None,
            budget="/".join(sorted({u["budget"] for u in us if u["budget"]})) or None,
            train_acc=float(np.mean(accs)) if accs else None,
        )
    if len(states) < 2:
        return ""
    out = []
    stops = {g: s["stop"] for g, s in states.items() if s["stop"]}
    if len(set(stops.values())) > 1:
        out.append("stopped by " + ", ".join(f"{g}: {v}" for g, v in stops.items()))
    budgets = {g: s["budget"] for g, s in states.items() if s["budget"] and s["stop"] == "budget"}
    if len(set(budgets.values())) > 1:
        out.append("budgets " + ", ".join(f"{g}: {v}" for g, v in budgets.items()))
    accs = {g: s["train_acc"] for g, s in states.items() if s["train_acc"] is not None}
    if accs and max(accs.values()) - min(accs.values()) > margin:
        out.append("train accuracy " + ", ".join(f"{g}: {v:.2f} %" for g, v in accs.items()))
    return "; ".join(out)


def available(records: list[dict], config_hash) -> bool:
    """True when every finished record of the config carries its test correctness."""
    ok = [r for v in group(records, config_hash).values() for rep in v for r in rep.values() if r["status"] == "ok"]
    return bool(ok) and all("test_correct" in r for r in ok)


def row_groups(by: dict, fam: str, model: str, names=GROUPS) -> tuple[bs.Groups, list[dict]]:
    """The row's groups ``names`` and its finished records. A group with a replicate lacking any finished
    member is left out, unless every such replicate skipped it by design (`by_design`): it then has no
    members there (the bootstrap resamples its replicates apart, `bs.bootstrap` step b)."""
    groups, recs = {}, []
    for name in names:
        reps = by.get((fam, model, name))
        if not reps:
            continue
        oks = [[r for r in rep.values() if r["status"] == "ok"] for rep in reps]
        recs += [r for ok in oks for r in ok]
        if any(oks) and all(ok or by_design(rep.values()) for ok, rep in zip(oks, reps)):
            n = next(r["n_test"] for ok in oks for r in ok)
            decode = lambda ok: np.stack([bs.decode_correct(r["test_correct"], r["n_test"]) for r in ok])  # noqa: E731
            groups[name] = [decode(ok) if ok else np.zeros((0, n), bool) for ok in oks]
    return groups, recs


def jackknife(by: dict, fam: str, model: str, groups: bs.Groups) -> dict[str, bs.Jackknife]:
    """The ensemble's leave-one-out combinations (`bs.Jackknife`, step d of the bootstrap), in the order of
    the single group's members, when every replicate's ensemble record carries them for exactly the
    finished singles (records made before they were recorded: none, the ensemble's noise is the test set's)."""
    if "ensemble" not in groups or "single" not in groups:
        return {}
    loo = []
    for ens, singles in zip(by[(fam, model, "ensemble")], by[(fam, model, "single")]):
        rec = next((r for r in ens.values() if r["status"] == "ok"), None)
        members = [int(r["member"]) for r in singles.values() if r["status"] == "ok"]
        if rec is None or sorted(rec.get("loo_members", [])) != sorted(members):
            return {}
        at = {m: i for i, m in enumerate(rec["loo_members"])}
        loo.append(np.stack([bs.decode_correct(rec["loo_correct"][at[m]], rec["n_test"]) for m in members]))
    return {"ensemble": bs.Jackknife("single", loo)}


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
            draws = (
                bs.bootstrap(groups, cfg.n_boot, cfg.boot_seed, jackknife=jackknife(by, fam, model, groups))
                if groups
                else None
            )
            flags = _flags(recs, cfg)
            for msg, (mkind, claim, _) in CLAIMS.items():
                if mkind != kind:
                    continue
                part = []
                for name, fn, strict, primary in comparisons(msg, "control" in groups, "wide" in groups):
                    c = bs.compare(draws, fn, cfg.level) if draws else bs.Comparison(math.nan, math.nan, math.nan)
                    verdict = "inconclusive" if flags else decide_interval(c.lo, c.hi, strict)
                    part.append(dict(
                        message=msg, family=fam, model=model, dataset=recs[0]["dataset"], claim=claim,
                        comparison=name, strict=strict, primary=primary, d=c.d, ci_low=c.lo, ci_high=c.hi,
                        verdict=verdict, min_detectable=bs.min_detectable(c.lo, c.hi),
                        n_test=draws.n_test if draws else 0, n_replicates=draws.n_replicates if draws else 0,
                        n_boot=cfg.n_boot, flags=flags,
                        state_flags="; ".join(f for f in (
                            state_flags(by, fam, model, pair, cfg.state_margin)
                            for pair in STATE_PAIRS.get(name, (groups_read(fn),))) if f),
                    ))  # fmt: skip
                overall = combine([p["verdict"] for p in part if p["primary"]])
                eff = effect(draws, msg, "control" in groups, fam, cfg.level)
                for p in part:
                    p.update(eff)
                    ev = _evidence(p)
                    rows.append({**p, "message_verdict": overall, "evidence": ev + (f"; {flags}" if flags else "")})
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_lines(df: pd.DataFrame) -> list[str]:
    """One line per (message, family, model) for a terminal: the verdict, each primary comparison with its
    interval, the smallest difference the run could detect, and the effect beside the paper's range."""
    lines = []
    for (msg, fam, model), part in df.groupby(["message", "family", "model"], sort=False):
        r = part.iloc[0]
        ev = "; ".join(_evidence(p) for _, p in part[part.primary].iterrows() if not _nan(p["d"]))
        line = f"message {msg} [{fam} {model}]: {r['message_verdict']}" + (f" — {ev}" if ev else "")
        detectable = part[part.primary]["min_detectable"].max()
        if r["message_verdict"] == "inconclusive" and not _nan(detectable):
            line += f"; smallest detectable difference {detectable:.2f} points"
        if not _nan(r["effect_value"]):
            line += f"; {r['effect']} {_effect_text(r)}"
            if isinstance(r["vs_cifar10"], str) and r["vs_cifar10"]:
                line += f", CIFAR-10: {r['vs_cifar10']}"
        states = "; ".join(dict.fromkeys(f for f in part["state_flags"] if isinstance(f, str) and f))
        line += f"; at unequal training states ({states})" if states else ""
        lines.append(line + (f" ({r['flags']})" if isinstance(r["flags"], str) and r["flags"] else ""))
    return lines


def _evidence(p) -> str:
    """One comparison as ``name = d [lo, hi]``."""
    return f"{p['comparison']} = {p['d']:+.2f} [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]"


def _effect_text(r) -> str:
    """A message's effect as ``value [lo, hi]`` (``n/a`` without a value; no interval without one)."""
    ours = "n/a" if _nan(r["effect_value"]) else f"{r['effect_value']:+.2f}"
    if not (_nan(r["effect_ci_low"]) or _nan(r["effect_ci_high"])):
        ours += f" [{r['effect_ci_low']:+.2f}, {r['effect_ci_high']:+.2f}]"
    return ours


def _effect_line(r, fam: str, circled: str) -> str:
    """One message's row of messages.md's effect table."""
    ours = _effect_text(r)
    cells = []
    for ds in PAPER_DATASETS:
        lo, hi, where = r[f"paper_{ds}_lo"], r[f"paper_{ds}_hi"], r[f"vs_{ds}"]
        cells += ["–" if _nan(lo) else f"{lo:+.2f} to {hi:+.2f}", where if isinstance(where, str) else ""]
    return f"| {circled} | {fam} | {r['model']} | {r['effect']} | {ours} | " + " | ".join(cells) + " |"


def markdown(df: pd.DataFrame, header: str = "", labels: dict | None = None) -> str:
    """messages.md; ``labels``: a family's name as shown (`analysis.tables.markdown`)."""
    labels = labels or {}
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
        fam = labels.get(r["family"], r["family"])
        lines.append(
            f"| {circled[r['message'] - 1]} | {fam} | {r['model']} | {r['claim']} | {name} "
            f"| {ci} | {r['verdict']}{flag} | **{r['message_verdict']}** | ±{r['min_detectable']:.2f} |"
        )
    if len(df):
        r0 = df.iloc[0]
        lines += ["", f"n_test = {r0['n_test']}, {r0['n_replicates']} replicate(s), {r0['n_boot']} bootstrap draws."]
    if len(df) and "effect" in df:
        lines += ["", "**Effect sizes in the paper's units**, beside the range of the paper's Figure 1 rows "
                  "(smallest to largest, over its models) and where our interval lies against it:", "",
                  f"| # | family | model | effect | ours [{level} CI] | paper CIFAR-10 | vs CIFAR-10 "
                  "| paper CIFAR-100 | vs CIFAR-100 |", "|" + " --- |" * 9]  # fmt: skip
        for _, r in df.drop_duplicates(["message", "family", "model"]).iterrows():
            lines.append(_effect_line(r, labels.get(r["family"], r["family"]), circled[r["message"] - 1]))
    flagged = df[df["state_flags"].fillna("").astype(str) != ""] if "state_flags" in df else df.iloc[:0]
    if len(flagged):
        lines += ["", "**Compared at unequal training states** (the difference may be the training, not the "
                  "protocol):", ""]  # fmt: skip
        for _, r in flagged.sort_values(["message", "family", "model"], kind="stable").iterrows():
            fam = labels.get(r["family"], r["family"])
            where = f"{circled[r['message'] - 1]} {fam} {r['model']}, {r['comparison']}"
            lines.append(f"- {where}: {r['state_flags']}")
    lines += ["", __doc__.split("\n\nUsed when", 1)[0].strip()]
    return "\n".join(lines) + "\n"

"""One output folder as data: its tables, messages, config and records (`read_run`), and what the
records say about the run (`run_info`: config hash, git SHAs, dates, wall time, device, versions),
as the report's provenance table (`provenance_markdown`).

`read_run` is the only function here that touches files.
"""

from __future__ import annotations

import datetime
import json
import os
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from ntk_vs_nn import paper
from ntk_vs_nn.analysis.messages import messages
from ntk_vs_nn.config import MessagesConfig, UserError
from ntk_vs_nn.config.presets import from_dict
from ntk_vs_nn.store import Store

TABLES = {"nn": "neural networks", "ntk": "finite-width kernel models"}


@dataclass
class RunData:
    """What one output folder holds (read by `read_run`)."""

    out_dir: str
    tables: dict  # "nn" / "ntk" -> tidy DataFrame (only the tables that exist)
    messages: pd.DataFrame | None
    cfg: dict
    records: list = field(default_factory=list)


def read_run(out_dir: str, cfg_dict: dict | None = None) -> RunData:
    tables = {}
    for which in TABLES:
        path = os.path.join(out_dir, f"table_{which}.csv")
        if os.path.isfile(path):
            tables[which] = pd.read_csv(path, dtype={"acc_by_size": str})  # "96.30" alone (L = 1) stays text
    if not tables:
        raise UserError(f"{out_dir!r} has no table_nn.csv or table_ntk.csv: run `ntk-vs-nn table` first")
    if cfg_dict is None:
        path = os.path.join(out_dir, "config.json")
        if not os.path.isfile(path):
            raise UserError(f"{path!r} is missing: pass cfg_dict or rerun the tables")
        with open(path) as f:
            cfg_dict = json.load(f)
    path = os.path.join(out_dir, "messages.csv")
    mdf = pd.read_csv(path) if os.path.isfile(path) else None
    return RunData(out_dir, tables, mdf, cfg_dict, Store(out_dir).records())


def our_messages(run: RunData) -> pd.DataFrame:
    """OUT/messages.csv, or the messages recomputed from the tables when it is missing."""
    if run.messages is not None:
        if "message_verdict" in run.messages.columns:  # one row per comparison: the messages' verdicts
            m = run.messages.drop_duplicates(["message", "family", "model"]).copy()
            m["verdict"] = m["message_verdict"]
            return m
        return run.messages
    cfg = MessagesConfig(**run.cfg.get("messages", {}))
    families = tuple(run.cfg.get("table", {}).get("ntk_families", ("ntk", "ntk_prime", "gp")))
    return messages(pd.concat(run.tables.values(), ignore_index=True), cfg, families)


def reference_dataset(dataset: str) -> tuple[str, bool]:
    """(the paper's dataset to show, whether it is ours)."""
    d = paper.canonical_dataset(dataset)
    return (d, True) if d in paper.DATASETS else ("cifar10", False)


def config_hashes(cfg: dict, records: list) -> tuple[str, set]:
    """The science hash of ``cfg``'s first replicate (as `Config.science_hash`, the first of its forms the
    records carry), or the records' most common one; and every hash whose records belong to the config (every
    replicate's hash, older forms and teachers' hash)."""
    try:
        reps = [c.science_hashes() for c in from_dict(cfg).replicate_configs]  # every replicate's forms
        present = {r.get("config_hash") for r in records}
        return next((h for h in reps[0] if h in present), reps[0][0]), {h for forms in reps for h in forms}
    except (UserError, TypeError, ValueError, KeyError):
        hashes = Counter(r.get("config_hash") for r in records)
        h = hashes.most_common(1)[0][0] if hashes else "unknown"
        return h, {h}


def config_hash(cfg: dict, records: list) -> str:
    """The config's hash as `config_hashes` finds it."""
    return config_hashes(cfg, records)[0]


def run_info(cfg: dict, records: list) -> dict:
    """Provenance of the run: config hash, git SHAs, dates, summed wall time, device, versions."""
    h, forms = config_hashes(cfg, records)
    mine = [r for r in records if r.get("config_hash") in forms]
    info = dict(config_hash=h, n_records=len(mine), n_other=len(records) - len(mine))
    info["git_sha"] = sorted({r.get("git_sha", "unknown") for r in mine}) or ["unknown"]
    info["device"] = sorted({r.get("device", "unknown") for r in mine}) or ["unknown"]
    info["versions"] = mine[-1].get("versions", {}) if mine else {}
    info["wall_s"] = float(sum(r.get("wall_s", 0.0) or 0.0 for r in mine))
    ends, starts = [], []
    for r in mine:
        try:
            t = datetime.datetime.fromisoformat(r["date"])
        except (KeyError, TypeError, ValueError):
            continue
        t = t.astimezone(datetime.timezone.utc) if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)
        ends.append(t)
        starts.append(t - datetime.timedelta(seconds=float(r.get("wall_s", 0.0) or 0.0)))
    info["start"], info["end"] = (min(starts), max(ends)) if ends else (None, None)
    return info


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s" if m else f"{sec} s"


def _percent(x) -> str:
    return f"{100 * x:g}%" if isinstance(x, (int, float)) else "?"


def provenance_markdown(cfg: dict, info: dict) -> str:
    """The report's first table: data, preset, hash, git SHA, dates, wall time, protocol, training."""
    data = cfg.get("data", {})
    train = cfg.get("train", {})
    proto = cfg.get("protocol", {})
    members = proto.get("members", "?")
    sd = proto.get("sd_students") or (min(members, 5) if isinstance(members, int) else "?")
    when = "no records"
    if info["start"] is not None:
        fmt = "%Y-%m-%d %H:%M:%S"
        when = (
            f"{info['start'].strftime(fmt)} → {info['end'].strftime(fmt)} UTC "
            f"({_duration((info['end'] - info['start']).total_seconds())} elapsed)"
        )
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items()) or "unknown"
    n_other = info["n_other"]
    other = f" ({n_other} record{'s' * (n_other != 1)} of other configs ignored)" if n_other else ""
    rows = [
        (
            "data",
            f"`{cfg.get('dataset', '?')}`: n_train {data.get('n_train', '?')} (of which "
            f"{_percent(data.get('val_fraction'))} validation), n_test {data.get('n_test', '?')}, "
            f"generator seed {data.get('generator_seed', '?')}",
        ),
        ("preset", f"`{cfg.get('preset', '?')}`"),
        ("config hash", f"`{info['config_hash']}`"),
        ("git SHA", ", ".join(f"`{s}`" for s in info["git_sha"])),
        ("run", when),
        (
            "wall time",
            f"{info['wall_s']:.0f} s ({_duration(info['wall_s'])}) summed over {info['n_records']} records{other}",
        ),
        (
            "protocol",
            f"L = {members} members, S = {sd} SD students, {seed_block(cfg)}, "
            f"ensemble rule `{proto.get('ensemble_rule', '?')}`, KD α = {proto.get('kd_alpha', '?')}",
        ),
        (
            "training",
            f"{train.get('optimizer', '?')} lr {train.get('lr', '?')}, {train.get('schedule', '?')}, "
            f"{train.get('epochs', '?')} epochs, batch {train.get('batch_size', '?')}",
        ),
        ("device", ", ".join(info["device"])),
        ("versions", versions),
    ]
    return "\n".join(["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])


def read_comparisons(out_dir: str, what: str = "--against") -> tuple[pd.DataFrame, dict]:
    """(OUT/messages.csv with one row per comparison, OUT/config.json) of a folder that a seed
    stability check compares; a UserError when the folder, its messages.csv or its comparison rows
    are missing (an older run: one row per message, decided on the noise band)."""
    if not os.path.isdir(out_dir):
        raise UserError(f"{what} {out_dir!r}: no such folder")
    path = os.path.join(out_dir, "messages.csv")
    if not os.path.isfile(path):
        raise UserError(f"{what} {out_dir!r} has no messages.csv: run `ntk-vs-nn messages --out {out_dir}` first")
    df = pd.read_csv(path)
    if "comparison" not in df.columns or not len(df):
        raise UserError(
            f"{what} {out_dir!r}: its messages.csv has no comparison rows (an older run without per-example "
            "test correctness), so there are no intervals to compare"
        )
    cfg = {}
    cpath = os.path.join(out_dir, "config.json")
    if os.path.isfile(cpath):
        with open(cpath) as f:
            cfg = json.load(f)
    return df, cfg


def seed_block(cfg: dict) -> str:
    """The root seeds of a run: "run.seed = 3, R = 2 replicate(s): root seeds 3, 4"."""
    run = cfg.get("run", {})
    seed, reps = run.get("seed", "?"), run.get("replicates", 1)
    if not isinstance(seed, int) or not isinstance(reps, int):
        return f"run.seed = {seed}, run.replicates = {reps}"
    seeds = ", ".join(str(seed + r) for r in range(reps)) if reps <= 4 else f"{seed}–{seed + reps - 1}"
    return f"run.seed = {seed}, run.replicates = {reps}: root seed{'s' * (reps != 1)} {seeds}"


def seeds_of(cfg: dict) -> set:
    run = cfg.get("run", {})
    seed, reps = run.get("seed"), run.get("replicates", 1)
    return set(range(seed, seed + reps)) if isinstance(seed, int) and isinstance(reps, int) else set()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(a: dict, b: dict) -> list[str]:
    """The settings outside the ``run`` section (seeds, execution) in which two configs differ:
    ["data.n_train (160 vs 320)", ...]; [] when only the run section differs."""
    fa = {k: v for k, v in _flat(a).items() if not k.startswith("run.")}
    fb = {k: v for k, v in _flat(b).items() if not k.startswith("run.")}
    return [
        f"{k} ({fa.get(k, '—')} vs {fb.get(k, '—')})" for k in sorted(fa.keys() | fb.keys()) if fa.get(k) != fb.get(k)
    ]

"""The paper's two tables and its seven messages: for every (family, model) row, single members,
their ensemble, the train-sum model, KD and SD students (`protocols.run_row`), on any dataset.

``ntk-vs-nn run tables`` runs both tables; ``ntk-vs-nn table nn|ntk`` one of them. Outputs in OUT:
``table_nn.{md,csv}``, ``table_ntk.{md,csv}``, ``messages.{md,csv}`` (all derived from
``records.jsonl`` by `write`), ``config.json``, ``units/`` (predictions, checkpoints; git-ignored).
"""

from __future__ import annotations

import contextlib
import os

import pandas as pd

from ntk_vs_nn.analysis import intervals, tables
from ntk_vs_nn.analysis import messages as msgs
from ntk_vs_nn.config import INFINITE_FAMILIES, KERNEL_FAMILIES, Config, UserError
from ntk_vs_nn.config.presets import DECIDED_ELSEWHERE, PRESETS
from ntk_vs_nn.engine import workers
from ntk_vs_nn.engine.host import configure_host_devices
from ntk_vs_nn.experiments import Experiment, Written
from ntk_vs_nn.store import INTERRUPTED, atomic_write

# jax may start only after `configure_host_devices`: this module imports nothing that imports jax
# at its top (the modules that do are imported inside `validate` and `run`).
TABLES = ("nn", "ntk")
TITLES = {"nn": "neural networks", "ntk": "finite-width kernel models"}


def families(cfg: Config, which: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(families, models) of table ``which``."""
    if which == "nn":
        return ("nn",), cfg.table.nn_models
    valid = KERNEL_FAMILIES + INFINITE_FAMILIES
    for fam in cfg.table.ntk_families:
        if fam not in valid:
            raise UserError(f"unknown kernel family {fam!r} in table.ntk_families; valid: {', '.join(valid)}")
    return tuple(cfg.table.ntk_families), cfg.table.ntk_models


def prepare(cfg: Config, which: tuple[str, ...] = TABLES, executor: str = "local", **_) -> dict:
    """Every check, and the dataset, before anything is written: split the host CPU into
    ``run.cpu_devices`` XLA devices (before jax starts), start a multi-host run, load the data."""
    if cfg.run.workers < 0:
        raise UserError(f"run.workers must be >= 0 (0 = one per core, 1 = this process), got {cfg.run.workers}")
    if executor == "ray" and workers.worker_count(cfg.run.workers) > 1:
        raise UserError("--executor ray runs each row in a Ray task: use run.workers=1 with it")
    if cfg.run.cpu_devices < 0:
        raise UserError(f"run.cpu_devices must be >= 0 (0 = one per core), got {cfg.run.cpu_devices}")
    configure_host_devices(cfg.run.cpu_devices)
    from ntk_vs_nn.data import load_dataset  # lazy from here: jax starts after configure_host_devices
    from ntk_vs_nn.engine.sharding import maybe_initialize_distributed
    from ntk_vs_nn.models import parse_model_name

    kernel_rows = "ntk" in which and any(f in KERNEL_FAMILIES for f in cfg.table.ntk_families)
    transformed = [v for v in cfg.table.kd_inputs if v not in ("auto", "clean")]
    if kernel_rows and cfg.kernel.backend != "weights" and transformed:
        raise UserError(
            f"table.kd_inputs {', '.join(transformed)}: the kernel families in function space (kernel.backend="
            f"{cfg.kernel.backend}) train on the clean points only; use kernel.backend=weights"
        )
    for w in which:
        if w not in TABLES:
            raise UserError(f"unknown table {w!r}; valid: {', '.join(TABLES)}")
        for model in families(cfg, w)[1]:
            parse_model_name(model)
    check_students(cfg, which)
    if executor == "ray":
        from ntk_vs_nn.experiments.executors import import_ray

        import_ray()  # a missing extra is an error before anything is written
    maybe_initialize_distributed()  # multi-host (JAX_COORDINATOR_ADDRESS set): before any other jax call
    return {"data": load_dataset(cfg.dataset, cfg.data, cfg.run.seed)}


def check_students(cfg: Config, which=TABLES) -> None:
    """The students' settings that `protocols.Row` would reject (`protocols.check_students` for every
    row's network), before anything is written."""
    from ntk_vs_nn.models import split_members
    from ntk_vs_nn.protocols import check_students as check_row

    for w in which:
        for model in families(cfg, w)[1]:
            check_row(cfg, model)
    p = cfg.protocol
    members = split_members(p.kd_student)[0] if p.kd_student else 0
    if members and "ntk" in which and any(f in KERNEL_FAMILIES for f in cfg.table.ntk_families):
        raise UserError(f"protocol.kd_student={p.kd_student}: BatchEnsemble students are nets (family nn), not kernels")


def run(
    cfg: Config,
    store,
    log=lambda s: None,
    data=None,
    which: tuple[str, ...] = TABLES,
    executor: str = "local",
    ray_address: str | None = None,
    ray_max_retries: int = 3,
    ray_cpus_per_task: float = 1.0,
) -> None:
    """Train every unit of the rows of the tables ``which`` that ``store`` lacks, replicate by
    replicate (root seeds ``run.seed + r``; ``data`` from `prepare` is replicate 0's)."""
    from ntk_vs_nn.data import load_dataset
    from ntk_vs_nn.experiments.executors import run_rows

    log(
        f"{cfg.dataset}: {len(data.x_train)} train, {len(data.x_val)} val, {len(data.x_test)} test, "
        f"input {data.x_train.shape[1:]}, {data.num_classes} classes"
    )
    rows = [(fam, model) for w in which for model in families(cfg, w)[1] for fam in families(cfg, w)[0]]
    n_workers = workers.worker_count(cfg.run.workers)
    if n_workers > 1:
        log(f"run.workers: {n_workers} worker processes, one single-threaded XLA each")
    with workers.Pool(n_workers) if n_workers > 1 else contextlib.nullcontext() as pool:
        for r, rcfg in enumerate(cfg.replicate_configs):
            if cfg.run.replicates > 1:
                log(f"replicate {r + 1}/{cfg.run.replicates}: root seed {rcfg.run.seed}")
            rdata = data if r == 0 else load_dataset(cfg.dataset, cfg.data, rcfg.run.seed)
            for vcfg in variants(rcfg):  # the config, then its other distillation inputs (teachers done)
                if vcfg is not rcfg:
                    log(f"students on kd_inputs={vcfg.protocol.kd_inputs}")
                run_rows(
                    rows, vcfg, rdata, store.out_dir, log, executor=executor, ray_address=ray_address,
                    max_retries=ray_max_retries, cpus_per_task=ray_cpus_per_task, pool=pool,
                )  # fmt: skip
    if INTERRUPTED.is_set():  # an interrupt swallowed after the last record
        raise KeyboardInterrupt


def variants(cfg: Config) -> list[Config]:
    """``cfg``, then ``cfg`` with each other ``table.kd_inputs`` (`Config.with_kd_inputs`)."""
    others = [v for v in dict.fromkeys(cfg.table.kd_inputs) if v != cfg.protocol.kd_inputs]
    return [cfg] + [cfg.with_kd_inputs(v) for v in others]


def _write_kd_inputs(cfg: Config, records, out: str) -> str:
    """OUT/kd_inputs.{csv,md}: `analysis.distillation` over the ``table.kd_inputs`` variants."""
    from ntk_vs_nn.analysis import distillation

    named = {v: cfg.with_kd_inputs(v) for v in dict.fromkeys(cfg.table.kd_inputs)}
    hashes = {v: [c.science_hashes() for c in c_v.replicate_configs] for v, c_v in named.items()}
    fams = ("nn", *(f for f in cfg.table.ntk_families if f not in INFINITE_FAMILIES))
    models = tuple(dict.fromkeys((*cfg.table.nn_models, *cfg.table.ntk_models)))
    m = cfg.messages
    df = distillation.compare(records, hashes, fams, models, m.n_boot, m.boot_seed, m.level)
    recorded = {r.get("config_hash") for r in records}
    shown = lambda forms: next((x for x in forms if x in recorded), forms[0])  # noqa: E731 - as `write` names them
    header = f"Dataset `{cfg.dataset}`, preset `{cfg.preset}`, teachers `{shown(cfg.teacher_hashes())}`, "
    header += f"students {', '.join(f'{v}: `{shown(c.science_hashes())}`' for v, c in named.items())}."
    if "auto" in named:  # what auto means for these teachers
        t = cfg.train
        seen = "clean inputs" if t.augment == "none" and not t.mixup else f"augment {t.augment}, mixup {t.mixup:g}"
        header += f" kd_inputs auto: as the teachers train ({seen})."
    md = distillation.markdown(df, header)
    atomic_write(os.path.join(out, "kd_inputs.csv"), df.to_csv(index=False))
    atomic_write(os.path.join(out, "kd_inputs.md"), md)
    return md


def _write_replication(cfg: Config, records, reps, out: str) -> str:
    """OUT/replication.{md,csv}: each nn row beside the published ResNet-18/Adam replication
    (``reps``: the replicates' hashes, as `write` has them)."""
    from ntk_vs_nn.analysis import replication

    parts, frames = [], []
    for model in cfg.table.nn_models:
        m = cfg.messages
        acc, gaps = replication.compare(records, reps, "nn", model, cfg.sd_students, m.n_boot, m.boot_seed, m.level)
        p, t = cfg.protocol, cfg.train
        header = (
            f"Ours: `{model}` on `{cfg.dataset}` ({cfg.data.n_train or 'all'} training images before a "
            f"{cfg.data.val_fraction:.0%} validation split), {t.optimizer} lr {t.lr:g} ({t.schedule}), "
            f"{t.epochs} epochs, batch {t.batch_size}, L = {p.members}, ensemble rule {p.ensemble_rule}, "
            f"KD alpha {p.kd_alpha:g}, tau {cfg.kd_tau_for(10):g} (the post gives neither: the suite's defaults), "
            f"students on kd_inputs={p.kd_inputs}. Published: ResNet-18, CIFAR-10, Adam lr 0.001, 100 epochs, "
            "45,000 / 5,000 / 10,000."
        )
        parts.append(replication.markdown(acc, gaps, header))
        frames.append(pd.concat([acc.assign(table="accuracy"), gaps.assign(table="gaps")]).assign(model=model))
    md = "\n".join(parts)
    atomic_write(os.path.join(out, "replication.csv"), pd.concat(frames).to_csv(index=False))
    atomic_write(os.path.join(out, "replication.md"), md)
    return md


def family_labels(cfg: Config) -> dict:
    """A kernel family trained in weight space by an adaptive optimiser is not a kernel method: its name
    carries the optimiser in every table (``ntk (Adam)``)."""
    opt = cfg.kernel_optimizer
    if cfg.kernel.backend != "weights" or opt not in ("adam", "adamw"):
        return {}
    return {f: f"{f} ({'AdamW' if opt == 'adamw' else 'Adam'})" for f in KERNEL_FAMILIES}


def write(cfg: Config, store) -> Written:
    """Tables (for whichever of nn / ntk have records) and messages, from OUT/records.jsonl."""
    out, records = store.out_dir, store.records()
    reps = [c.science_hashes() for c in cfg.replicate_configs]
    recorded = {r.get("config_hash") for r in records}
    # the header names the hash replicate 0's records carry (an older form for older records), so a
    # config field added later does not rewrite the tables of every committed folder
    h = next((x for x in reps[0] if x in recorded), reps[0][0])
    hashes = {x for forms in reps for x in forms}
    frames, texts = [], {}
    for which in TABLES:
        fams, models = families(cfg, which)
        if not any(r.get("config_hash") in hashes and r["family"] in fams for r in records):
            continue
        p = cfg.protocol
        df = tables.tidy(records, reps, fams, models, p.members, cfg.sd_students, p.kd_students)
        header = f"Dataset `{cfg.dataset}`, preset `{cfg.preset}`, config `{h}`, "
        header += f"L = {p.members}, S = {cfg.sd_students}, "
        header += f"K = {p.kd_students}, " if p.kd_students > 1 else ""
        seeds = f"seed {cfg.run.seed}" if len(reps) == 1 else f"seeds {cfg.run.seed}–{cfg.run.seed + len(reps) - 1}"
        header += f"{seeds}. Generated by `ntk-vs-nn` from `records.jsonl`."
        atomic_write(os.path.join(out, f"table_{which}.csv"), df.to_csv(index=False))
        md = tables.markdown(df, f"Table {which}: {TITLES[which]}", header, family_labels(cfg))
        atomic_write(os.path.join(out, f"table_{which}.md"), md)
        frames.append(df)
        texts[which] = md
    if not frames:
        raise UserError(f"{out}: no records for this config; nothing to report")
    finite = tuple(f for f in cfg.table.ntk_families if f not in INFINITE_FAMILIES)  # deterministic: no message
    header = f"Dataset `{cfg.dataset}`, preset `{cfg.preset}`, config `{h}`."
    if intervals.available(records, reps):  # paired-bootstrap intervals from the records' test correctness
        fams = ("nn", *cfg.table.ntk_families)
        models = tuple(dict.fromkeys((*cfg.table.nn_models, *cfg.table.ntk_models)))
        mdf = intervals.messages(records, reps, fams, models, cfg.messages, finite)
        mmd = intervals.markdown(mdf, header, family_labels(cfg))
        verdicts = intervals.verdict_lines(mdf)
        if cfg.preset in DECIDED_ELSEWHERE:
            verdicts.append(f"({cfg.preset} preset) {DECIDED_ELSEWHERE[cfg.preset]}")
    else:  # records made before test correctness was recorded: the noise band on the table's values
        mdf = msgs.messages(pd.concat(frames), cfg.messages, finite)
        mmd = msgs.markdown(mdf, header, family_labels(cfg))
        verdicts = [f"message {r['message']} [{r['family']} {r['model']}]: {r['verdict']}" for _, r in mdf.iterrows()]
    atomic_write(os.path.join(out, "messages.csv"), mdf.to_csv(index=False))
    atomic_write(os.path.join(out, "messages.md"), mmd)
    if cfg.table.kd_inputs:
        texts["kd_inputs"] = _write_kd_inputs(cfg, records, out)
    if cfg.table.reference == "replication" and any(r["family"] == "nn" for r in records):
        texts["replication"] = _write_replication(cfg, records, reps, out)
    return Written("\n".join([*texts.values(), mmd]), verdicts, {**texts, "messages": mmd})


def default_out(cfg: Config) -> str:
    """runs/<preset>-<dataset> (git-ignored: a fresh clone stays clean)."""
    return os.path.join("runs", f"{cfg.preset}-{cfg.dataset.replace(':', '-').replace('/', '_')}")


EXPERIMENT = Experiment(
    name="tables",
    description="the paper's two tables (networks, kernel models) and its seven messages",
    config=Config,
    presets=PRESETS,
    run=run,
    write=write,
    default_out=default_out,
    top_level=("dataset",),
    prepare=prepare,
)

"""Diversity matters when distilling an ensemble (Nam et al. 2021), for networks and kernel models.

Per replicate (root seed ``run.seed + r``): M = ``protocol.members`` single nets (the DE-M teachers)
and their probability-averaged ensemble; a BatchEnsemble-M net trained from scratch (``BE<M>-<net>``,
the students' baseline); then each student of ``table.diversity`` (``student:perturbation``):

  be:P   a BatchEnsemble-M student, member i distilled from teacher i (`protocol.kd_memberwise`);
  nn:P   one net distilled from the ensemble;
  ntk:P  one ntk model (the net linearised, weight space) distilled from the ensemble of M ntk members,

with the KD term on inputs perturbed by P (`protocol.kd_perturb`: none = plain KD, gaussian, ods,
confods; engine/perturb.py) and the CE term on the clean ones. Every unit is an ordinary
`protocols.Row` unit (the tables' engine, store and records): a student is a KD unit of the row under
the config with that ``kd_student`` / ``kd_perturb``.

Outputs (`analysis.diversity`, from the records alone): ``diversity.{md,csv}``: ACC, NLL, BS, ECE and
their calibrated versions, DEE (against the teachers' DE-1..DE-M), the students' member diversity beside
the teachers', and each perturbation's difference to plain KD of the same student with an interval over
seeds; beside them the ordering of the methods in Nam et al.'s published rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

from ntk_vs_nn.analysis.diversity import be_model, parse, student_config
from ntk_vs_nn.config import (
    Config,
    DataConfig,
    KernelConfig,
    ModelConfig,
    ProtocolConfig,
    RunConfig,
    TableConfig,
    TrainConfig,
    UserError,
)
from ntk_vs_nn.engine import workers
from ntk_vs_nn.experiments import Experiment, Written
from ntk_vs_nn.store import INTERRUPTED, atomic_write


def prepare(cfg: Config, **_) -> dict:
    from ntk_vs_nn.data import load_dataset
    from ntk_vs_nn.experiments.tables import check_students
    from ntk_vs_nn.models import parse_model_name, split_members

    if len(cfg.table.nn_models) != 1:
        raise UserError(f"diversity: one teacher network (table.nn_models), got {len(cfg.table.nn_models)}")
    if split_members(cfg.table.nn_models[0])[0]:
        raise UserError("diversity: the teachers are plain nets; the BatchEnsemble students are built from them")
    parse_model_name(cfg.table.nn_models[0])
    if cfg.protocol.members < 2:
        raise UserError("diversity: protocol.members >= 2 teachers needed (DE-M)")
    if cfg.kernel.backend != "weights" and any(s == "ntk" for s, _ in parse(cfg)):
        raise UserError("diversity: ntk students are perturbed in input space: needs kernel.backend=weights")
    for student, kind in parse(cfg):
        check_students(student_config(cfg, student, kind), ("nn",))
    return {"data": load_dataset(cfg.dataset, cfg.data, cfg.run.seed)}


def run(cfg: Config, store, log=lambda s: None, data=None, **_) -> None:
    from ntk_vs_nn.data import load_dataset
    from ntk_vs_nn.protocols import Row

    model, pairs = cfg.table.nn_models[0], parse(cfg)
    log(f"{cfg.dataset}: {len(data.x_train)} train, {len(data.x_val)} val, {len(data.x_test)} test; teachers DE-"
        f"{cfg.protocol.members} of {model}")  # fmt: skip
    n_workers = workers.worker_count(cfg.run.workers)
    with workers.Pool(n_workers) if n_workers > 1 else contextlib.nullcontext() as pool:
        # Every seed's teachers (both families) and BatchEnsemble from scratch are submitted first,
        # then every student as its teachers finish: a worker pool runs them side by side and idles
        # only at the very end. In this process (run.workers=1) the order is the same, one unit at a time.
        families = ("nn", "ntk") if any(s == "ntk" for s, _ in pairs) else ("nn",)
        started = []
        for r, rcfg in enumerate(cfg.replicate_configs):
            log(f"replicate {r + 1}/{cfg.run.replicates}: root seed {rcfg.run.seed}: teachers")
            rdata = data if r == 0 else load_dataset(cfg.dataset, cfg.data, rcfg.run.seed)
            row = lambda fam, c, m=model, d=rdata: Row(fam, m, c, d, store, log, pool)  # noqa: E731
            rows = {fam: row(fam, rcfg) for fam in families}
            waiting = {fam: t.single(wait=False) for fam, t in rows.items()}
            scratch = row("nn", rcfg, be_model(rcfg)).single(1, wait=False)  # the BatchEnsemble alone
            started.append((rcfg, row, rows, waiting, scratch))
        waits = []
        for r, (rcfg, row, rows, waiting, scratch) in enumerate(started):
            log(f"replicate {r + 1}/{cfg.run.replicates}: students")
            teachers = {}
            for fam, t in rows.items():
                singles = waiting[fam]()
                teachers[fam] = (singles, t.ensemble(singles))
            waits.append(scratch)
            for student, kind in pairs:
                fam = "ntk" if student == "ntk" else "nn"
                students = row(fam, student_config(rcfg, student, kind))
                waits.append(students.students(*teachers[fam], ("kd",), wait=False))
        for wait in waits:
            wait()
        if INTERRUPTED.is_set():
            raise KeyboardInterrupt


def write(cfg: Config, store) -> Written:
    from ntk_vs_nn.analysis import diversity

    records = store.records()
    df = diversity.table(records, cfg)
    if df.empty or df["n_seeds"].fillna(0).max() == 0:
        raise UserError(f"{store.out_dir}: no records for this config; nothing to report")
    md = diversity.markdown(df, cfg)
    atomic_write(os.path.join(store.out_dir, "diversity.csv"), df.to_csv(index=False))
    atomic_write(os.path.join(store.out_dir, "diversity.md"), md)
    return Written(md, [], {"diversity": md})


def diversity_preset(dataset: str = "fashion_mnist") -> Config:
    """Nam et al.'s comparison. ``fashion_mnist`` (CPU): PlainCNN-2-0.5 (16/32 channels, 0.14 M params, no
    normalisation), DE-4, 2,500 training images (250 validate), the full test set, Adam 2e-3 cosine, 12 epochs
    for teachers and students (sized to an hour of the 2-core CPU: results/diversity-fashion_mnist), KD alpha
    0.9 / tau 4 (the suite's defaults; Nam et al.'s code distils with the KD term only on perturbed inputs),
    3 seeds. ``cifar10``: ResNet-32, DE-4, SGD 0.1 momentum 0.9, 200 epochs,
    weight decay 5e-4, crop + flip (GPUs). ``cifar100``: WRN-28-10 as ``ResNet-28-10``, the same (GPUs)."""
    members = dict(members=4, ensemble_rule="probs", kd_students=1, sd_students=1)
    if dataset == "fashion_mnist":
        return Config(
            preset="diversity",
            dataset="fashion_mnist",
            data=DataConfig(n_train=2500, n_test=0),
            model=ModelConfig(norm="none"),
            train=TrainConfig(epochs=12),
            protocol=ProtocolConfig(**members),
            kernel=KernelConfig(weights_lr=0.005, optimizer="adam"),  # measured with Adam (labelled so)
            table=TableConfig(nn_models=("PlainCNN-2-0.5",), ntk_models=(), ntk_families=("ntk",)),
            run=RunConfig(replicates=3, workers=0, conv="xla"),
        )
    model = "ResNet-32" if dataset == "cifar10" else "ResNet-28-10"
    return Config(
        preset=f"diversity-{dataset}",
        dataset=dataset,
        data=DataConfig(n_train=0, n_test=0),
        train=TrainConfig(
            optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", epochs=200, augment="crop_flip"
        ),  # fmt: skip
        protocol=ProtocolConfig(**members, kd_tau=4.0 if dataset == "cifar10" else 1.0),
        table=TableConfig(nn_models=(model,), ntk_models=(), ntk_families=("ntk",)),
        run=RunConfig(replicates=3),
    )


def smoke() -> Config:
    """Seconds: what the tests run (3 teachers, 1 epoch, 100 generated images of Fashion-MNIST's shape, so it
    needs no dataset on the machine; numbers meaningless)."""
    cfg = diversity_preset()
    return dataclasses.replace(
        cfg,
        preset="smoke",
        dataset="synthetic:fashion_mnist",
        data=DataConfig(n_train=100, n_test=60),
        train=TrainConfig(epochs=1),
        protocol=dataclasses.replace(cfg.protocol, members=3),
        kernel=KernelConfig(weights_lr=0.002, optimizer="adam"),
        table=dataclasses.replace(
            cfg.table, nn_models=("PlainCNN-1-0.25",), diversity=("be:none", "be:confods", "ntk:confods")
        ),
        run=RunConfig(replicates=2, workers=1, progress=False),
    )


PRESETS = {
    "diversity": diversity_preset,
    "diversity-cifar10": lambda: diversity_preset("cifar10"),
    "diversity-cifar100": lambda: diversity_preset("cifar100"),
    "smoke": smoke,
}

EXPERIMENT = Experiment(
    name="diversity",
    description="Nam et al.'s diversity-aware distillation (BatchEnsemble, ODS/ConfODS) for nets and ntk models",
    config=Config,
    presets=PRESETS,
    run=run,
    write=write,
    top_level=("dataset",),
    prepare=prepare,
)

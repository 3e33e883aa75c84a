"""Figure 6 of Allen-Zhu & Li: channels of a fixed pretrained layer as input, split or averaged.

    ntk-vs-nn run channels [--preset cpu|smoke|cifar100] [--set section.field=value ...] [--out DIR]

The paper regards an intermediate layer of a pretrained ResNet as the "input" (the pretrained net
stays fixed and is shared by every model) and trains new models on: all C channels ("original"),
a fraction of them ("split to s": C/s channels), or averages of groups of channels ("average over
g": C/g channels, each the mean of g channels). Its reading (Observations 1-2): single models lose
accuracy as channels are removed, the ensemble much less, so the ensemble gain grows as the input is
split - many views per example, each model picks up some - while averaging, which mixes views into
fewer channels, raises it less.

Here: one backbone (`models.small.Backbone`: 3 conv-norm-relu stages of ``w, 2w, 4w`` channels,
stride 2 from the second on, dense head on the flattened last map) is trained on the training
images for ``pretrain.epochs``; the feature map after stage ``pretrain.stage`` is the input: default
2, the last conv map before the head (Fashion-MNIST 7x7x64, C = 64, the channel count of the paper's
ResNet-28-2 (b) row); ``pretrain.stage=1`` (14x14x32) is a more intermediate layer, at ~3-4x the
student cost on the CPU. Transforms (`data.channels`): ``split_s`` keeps a random subset of C/s
channels (``split_mode`` ``shared``: the same subset for every member, the default; ``per_member``:
member i draws its own), ``avg_g`` averages consecutive groups of g channels. L students
(``student.model``, built by `models.build_model`) per variant (`protocols.members_and_ensemble`);
single = mean ± std of their test accuracies, ensemble = logit average.

Datasets: ``fashion_mnist`` (default; if its files are missing the run falls back to MNIST-1D,
generated offline, and says so), ``mnist1d``, ``cifar10`` / ``cifar100`` (the existing loaders;
``--preset cifar100`` is the GPU-scale setting, not run on the 2-core CPU).

Store: units ``<config hash>/backbone`` (its accuracy and map) and ``<config hash>/<variant>``, after its
students' (units ``<variant unit>/<model>/single-<i>`` of the shared path, `protocols.units`, with their
logits); the hash is the config's after any fallback. A rerun trains only the variants not recorded,
loading a cut-short variant's recorded students (the backbone is retrained, deterministically, when one
is missing). Outputs (`report.channels`, from the records):
table.md, table.csv, claims.csv, plot.png, summary.md. The claims (A, B, C) are differences d decided
by `verdict.decide_interval` on a paired percentile bootstrap over test points and students, each
ensemble carrying its students' noise (``claim.n_boot``, ``claim.level``, ``claim.boot_seed``; the
variant records keep every student's, the ensemble's and its leave-one-out ensembles' per-test-point
correctness); records made before they kept it get the Welch t-interval from the students' means and
stds, the ensembles held fixed, as the paper's rows do. The backbone's record keeps its train accuracy
(on the whole training set) beside its test accuracy, a variant's its students' mean train accuracy.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field

import jax
import numpy as np

from ntk_vs_nn import rng
from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.config import DataConfig, IntervalConfig, TrainConfig, UserError, hash_dict
from ntk_vs_nn.data.channels import VARIANTS, fallback_config, load_data, parse_variant, standardize, transform
from ntk_vs_nn.engine.batching import apply_rows
from ntk_vs_nn.experiments import Experiment, Written, registration
from ntk_vs_nn.models import build_model, parse_model_name
from ntk_vs_nn.models.small import Backbone
from ntk_vs_nn.protocols import members_and_ensemble, module_trainer
from ntk_vs_nn.protocols.units import Units, unit_name
from ntk_vs_nn.report import channels as report
from ntk_vs_nn.store import atomic_write


@dataclass(frozen=True)
class PretrainConfig:
    width: int = 16  # backbone widths: width, 2 width, 4 width
    stage: int = 2  # the map after stage 0, 1 or 2 is the input (Fashion-MNIST: 28x28x16, 14x14x32, 7x7x64)
    epochs: int = 3
    lr: float = 5e-3
    batch_size: int = 128
    head: str = "flatten"  # flatten | pool: the backbone's read-out of its last map (see Backbone)


@dataclass(frozen=True)
class StudentSection:
    model: str = "SimpleCNN-4-1"  # any models.build_model name
    members: int = 5  # L
    norm: str = "layer"  # layer | group | none (models.layers.Norm)


@dataclass(frozen=True)
class ChannelSection:
    variants: tuple[str, ...] = VARIANTS
    split_mode: str = "shared"  # shared: one random subset for every member | per_member: one per member


@dataclass(frozen=True)
class ClaimSection(IntervalConfig):
    """The claims' intervals (not in the science hash): ``n_boot`` draws of the paired bootstrap over test
    points and students (seed ``boot_seed``) at ``level`` (`report.channels.bootstrap_claims`); records
    made before the students' correctness was recorded keep the Welch t-interval, where only the level
    applies."""


@dataclass(frozen=True)
class RunSection:
    seed: int = 0
    members: str = "sequential"  # engine.Trainer mode (shared split only; per_member trains one at a time)
    progress: bool = False


@dataclass(frozen=True)
class ChannelsConfig:
    """Figure 6's config; ``science_hash`` (the records' config hash) leaves out the preset, the run mode
    and the claims' interval settings."""

    preset: str = "cpu"
    dataset: str = "fashion_mnist"  # fashion_mnist | mnist1d | cifar10 | cifar100 | synthetic:<one of those images>
    fallback: bool = True  # fashion_mnist missing -> MNIST-1D with a message (else: an error)
    data: DataConfig = field(default_factory=lambda: DataConfig(n_train=10000, n_test=0, val_fraction=0.0))
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    student: StudentSection = field(default_factory=StudentSection)
    channels: ChannelSection = field(default_factory=ChannelSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, lr=2e-3, batch_size=128))
    run: RunSection = field(default_factory=RunSection)
    claim: ClaimSection = field(default_factory=ClaimSection)

    def __post_init__(self):
        images = ("fashion_mnist", "cifar10", "cifar100")
        if self.dataset not in ("mnist1d", *images, *(f"synthetic:{n}" for n in images)):
            raise UserError(
                f"dataset must be mnist1d, fashion_mnist, cifar10, cifar100 or synthetic:<one>; got {self.dataset!r}"
            )
        for v in self.channels.variants:
            parse_variant(v)
        if self.channels.split_mode not in ("shared", "per_member"):
            raise UserError(f"channels.split_mode must be shared or per_member, got {self.channels.split_mode!r}")
        if self.run.members not in ("sequential", "unrolled", "vmap"):
            raise UserError(f"run.members must be sequential, unrolled or vmap, got {self.run.members!r}")
        if self.student.norm not in ("layer", "group", "none"):
            raise UserError(f"student.norm must be layer, group or none, got {self.student.norm!r}")
        parse_model_name(self.student.model)
        if self.pretrain.head not in ("flatten", "pool"):
            raise UserError(f"pretrain.head must be flatten or pool, got {self.pretrain.head!r}")
        if self.pretrain.stage not in (0, 1, 2):
            raise UserError(f"pretrain.stage must be 0, 1 or 2, got {self.pretrain.stage}")
        for key in ("pretrain.width", "pretrain.epochs", "pretrain.batch_size", "student.members", "train.epochs",
                    "train.batch_size"):  # fmt: skip
            section, name = key.split(".")
            if (value := getattr(getattr(self, section), name)) < 1:
                raise UserError(f"{key} must be >= 1, got {value}")
        if self.train.lr <= 0 or self.pretrain.lr <= 0:
            raise UserError("train.lr and pretrain.lr must be > 0")

    def science_hash(self) -> str:
        d = dataclasses.asdict(self)
        for key in ("preset", "claim"):
            d.pop(key)
        d["run"] = {"seed": self.run.seed}
        return hash_dict(d)


def cpu() -> ChannelsConfig:
    return ChannelsConfig()


def smoke() -> ChannelsConfig:
    return ChannelsConfig(  # generated images of Fashion-MNIST's shape: the tests need no dataset installed
        preset="smoke",
        dataset="synthetic:fashion_mnist",
        data=DataConfig(n_train=256, n_test=128, val_fraction=0.0),
        pretrain=PretrainConfig(width=4, epochs=1, batch_size=64),
        student=StudentSection(model="SimpleCNN-3-1", members=2),
        channels=ChannelSection(variants=("original", "split_2", "avg_2")),
        train=TrainConfig(epochs=1, lr=3e-3, batch_size=64),
    )


def cifar100() -> ChannelsConfig:
    """GPU scale (not run on the 2-core CPU): all 45,000 CIFAR-100 training images (the official
    last 5,000 validate, unused), a 32/64/128 backbone trained 30 epochs, its 16x16x64 stage-1 map,
    ResNet-16-2 students, L = 10, 60 epochs."""
    return ChannelsConfig(
        preset="cifar100",
        dataset="cifar100",
        fallback=False,
        data=DataConfig(n_train=0, n_test=0, val_fraction=0.1),
        pretrain=PretrainConfig(width=32, stage=1, epochs=30, lr=2e-3),
        student=StudentSection(model="ResNet-16-2", members=10),
        train=TrainConfig(epochs=60, lr=2e-3, batch_size=128),
    )


PRESETS = {"cpu": cpu, "smoke": smoke, "cifar100": cifar100}


# ----------------------------------------------------------------------------------------------- run
def pretrain(data, cfg: ChannelsConfig, root, log) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train the backbone; return its stage-``pretrain.stage`` features on train and test and its scores:
    ``backbone_acc`` (test), ``backbone_train_acc`` (on the whole training set it trained on) and its
    training time ``wall_s``."""
    module = Backbone(cfg.pretrain.width, data.num_classes, data.spatial_ndim, cfg.pretrain.head)
    tcfg = TrainConfig(epochs=cfg.pretrain.epochs, lr=cfg.pretrain.lr, batch_size=cfg.pretrain.batch_size)
    trainer = module_trainer(module, tcfg, len(data.x_train), cfg.run.progress)
    key = rng.stream(root, "channels.pretrain")
    fit = trainer.fit([jax.random.fold_in(key, 0)], [jax.random.fold_in(key, 1)], data.x_train, data.y_train)
    variables = {"params": fit.variables[0]["params"]}
    acc = metrics.accuracy(trainer.predict(fit.variables[0], data.x_test), data.y_test)
    train_acc = metrics.accuracy(trainer.predict(fit.variables[0], data.x_train), data.y_train)
    features = apply_rows(lambda v, x: module.apply(v, x, cfg.pretrain.stage, method="features"), 500)
    f_tr, f_te = np.asarray(features(variables, data.x_train)), np.asarray(features(variables, data.x_test))
    log(
        f"backbone: {cfg.pretrain.epochs} epochs, train accuracy {train_acc:.2f}%, test accuracy {acc:.2f}%, "
        f"{fit.wall_s:.0f} s; input map {f_tr.shape[1:]} (stage {cfg.pretrain.stage})"
    )
    return f_tr, f_te, dict(backbone_acc=acc, backbone_train_acc=train_acc, wall_s=fit.wall_s)


def train_variant(variant: str, f_tr, f_te, data, cfg: ChannelsConfig, root, trainers: dict,
                  ledger: Units | None = None) -> dict:  # fmt: skip
    """L students on one transformed input: single mean ± std, ensemble, gain (percent), the students' mean
    train accuracy, and every student's, the ensemble's and its leave-one-out ensembles' per-test-point
    correctness (`members_and_ensemble`'s ``correctness``: the claims' bootstrap). ``ledger``: each
    student is a unit of it (`protocols.units.Units`), ``{hash}/{variant}/{model}/single-{i}``, trained
    unless recorded."""
    kind, n = parse_variant(variant)
    L = cfg.student.members
    split_key = rng.member_key(root, "channels.split", n)
    per_member = kind == "split" and cfg.channels.split_mode == "per_member"
    keys = [jax.random.fold_in(split_key, i) for i in range(L)] if per_member else [split_key]
    inputs = [standardize(transform(f_tr, variant, k), transform(f_te, variant, k)) for k in keys]
    channels = inputs[0][0].shape[-1]
    if channels not in trainers:
        module = build_model(cfg.student.model, data.num_classes, f_tr.ndim - 2, cfg.student.norm)
        trainers[channels] = module_trainer(module, cfg.train, len(f_tr), cfg.run.progress)
    ik, dk = ([rng.member_key(root, f"channels.{s}", i) for i in range(L)] for s in ("init", "data"))
    t0 = time.perf_counter()
    h = cfg.science_hash()
    names = [unit_name(h, variant, "single", i, cfg.student.model) for i in range(L)] if ledger else None
    res = members_and_ensemble(trainers[channels], ik, dk, inputs, data.y_train, data.y_test, cfg.run.members,
                               score_train=True, ledger=ledger, names=names,
                               record=dict(config_hash=h, variant=variant), correctness=True)  # fmt: skip
    return dict(variant=variant, kind=kind, factor=n, channels=channels, n_members=L, **res,
                wall_s=round(time.perf_counter() - t0, 1))  # fmt: skip


def prepare(cfg: ChannelsConfig, log=lambda s: None, **_) -> dict:
    """The dataset (and the config it implies, after a fallback), before anything is written."""
    data, used = load_data(cfg, log)
    return {"loaded": (data, used)}


def run(cfg: ChannelsConfig, store, log=lambda s: None, loaded=None) -> None:
    """Train the backbone and every variant that ``store`` does not hold yet, one record per unit
    (``loaded`` from `prepare`, else the data are loaded here); a variant's students are units
    (`protocols.units`), so a variant cut short resumes from its recorded students."""
    data, used = loaded or load_data(cfg, log)
    h = used.science_hash()
    ledger = Units(store, h)
    done = ledger.known
    todo = [v for v in used.channels.variants if f"{h}/{v}" not in done]
    if f"{h}/backbone" in done and not todo:
        return
    root = jax.random.key(used.run.seed)
    f_tr, f_te, bb = pretrain(data, used, root, log)
    acc = bb["backbone_acc"]
    if f"{h}/backbone" not in done:
        ledger.save_and_record(f"{h}/backbone", None, dict(
            config_hash=h, dataset=used.dataset, n_train=len(data.x_train), n_test=len(data.x_test),
            backbone_acc=acc, backbone_train_acc=bb["backbone_train_acc"], map_shape="x".join(map(str, f_tr.shape[1:])),
            C=int(f_tr.shape[-1]), wall_s=round(bb["wall_s"], 1)))  # fmt: skip
    elif done[f"{h}/backbone"]["backbone_acc"] != acc:
        log(f"warning: the retrained backbone reaches {acc:.2f}%, the recorded one "
            f"{done[f'{h}/backbone']['backbone_acc']:.2f}%: the new variants see other features")  # fmt: skip
    trainers = {}
    for variant in todo:
        res = train_variant(variant, f_tr, f_te, data, used, root, trainers, ledger)
        ledger.save_and_record(f"{h}/{variant}", None, dict(config_hash=h, **res))
        log(
            f"{variant:9s} C'={res['channels']:3d}: single {res['single_mean']:.2f} ± {res['single_std']:.2f}, "
            f"ensemble {res['ensemble']:.2f} ({res['gain']:+.2f}), {res['wall_s']:.0f} s"
        )


def _recorded(cfg: ChannelsConfig, store) -> tuple[str, dict]:
    """The hash the records of ``cfg`` were made under (its own, or its fallback's) and those records."""
    tried = [cfg] + ([fallback_config(cfg)] if cfg.dataset == "fashion_mnist" and cfg.fallback else [])
    for c in tried:
        h = c.science_hash()
        done = store.done(h)
        if f"{h}/backbone" in done and any(f"{h}/{v}" in done for v in cfg.channels.variants):
            return h, done
    raise UserError(f"{store.out_dir}: no Figure-6 records of config {cfg.science_hash()}; nothing to write")


def write(cfg: ChannelsConfig, store) -> Written:
    """table.md, table.csv, claims.csv, plot.png and summary.md from the backbone's and the variants' records."""
    h, done = _recorded(cfg, store)
    bb = done[f"{h}/backbone"]
    results = [done[f"{h}/{v}"] for v in cfg.channels.variants if f"{h}/{v}" in done]
    paper_all, prow_name = report.paper_rows(bb["C"])
    df = report.tidy(results, paper_all[prow_name])
    level = cfg.claim.level
    n_boot = cfg.claim.n_boot if report.has_correctness(results) else None  # None: older records, Welch
    ours = report.ours_claims(df, level, results, cfg.claim.n_boot, cfg.claim.boot_seed)
    all_paper = {m: report.paper_claims(g, level) for m, g in paper_all.items()}
    info = dict(bb, paper_row=prow_name, wall_s=bb["wall_s"] + float(df.wall_s.sum()))
    md = report.markdown(df, cfg, info, ours, all_paper[prow_name], n_boot)
    out = store.out_dir
    atomic_write(os.path.join(out, "table.csv"), df.to_csv(index=False))
    atomic_write(os.path.join(out, "table.md"), md)
    atomic_write(os.path.join(out, "claims.csv"), report.claims_frame(ours, all_paper, level).to_csv(index=False))
    title = f"Figure 6 on {bb['dataset']}: C = {bb['C']} channels of a fixed backbone (L = {cfg.student.members})"
    report.plot(df, paper_all, prow_name, os.path.join(out, "plot.png"), title)
    command = registration.run_command("channels", cfg, PRESETS, store.out_dir)
    atomic_write(os.path.join(out, "summary.md"), report.summary_md(df, cfg, info, ours, all_paper, command, n_boot))
    verdicts = [f"Figure 6 claim {c['claim']}: {c['verdict']} (d = {c['d']:+.2f} [{c['ci_low']:+.2f}, "
                f"{c['ci_high']:+.2f}])" for c in ours]  # fmt: skip
    return Written(md, verdicts, {"table": md})


DESCRIPTION = "Figure 6: split / averaged channels of a fixed pretrained layer (Allen-Zhu & Li)"
EXPERIMENT = Experiment(
    "channels", DESCRIPTION, ChannelsConfig, PRESETS, run, write, top_level=("dataset", "fallback"), prepare=prepare
)

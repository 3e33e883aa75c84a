"""Figure 6 of Allen-Zhu & Li: channels of a fixed pretrained layer as input, split or averaged.

    python -m ntk_vs_nn.experiments.channels --out results/channels [--set section.field=value ...]

The paper regards an intermediate layer of a pretrained ResNet as the "input" (the pretrained net
stays fixed and is shared by every model) and trains new models on: all C channels ("original"),
a fraction of them ("split to s": C/s channels), or averages of groups of channels ("average over
g": C/g channels, each the mean of g channels). Its reading (Observations 1-2): single models lose
accuracy as channels are removed, the ensemble much less, so the ensemble gain grows as the input is
split - many views per example, each model picks up some - while averaging, which mixes views into
fewer channels, raises it less.

Here: one backbone (``Backbone``: 3 conv-norm-relu stages of ``w, 2w, 4w`` channels, stride 2 from
the second on, dense head on the flattened last map) is trained on the training images for ``pretrain.epochs``;
the feature map after stage ``pretrain.stage`` is the input: default 2, the last conv map before the
pool and head (Fashion-MNIST 7x7x64, C = 64, the channel count of the paper's ResNet-28-2 (b) row);
``pretrain.stage=1`` (14x14x32) is a more intermediate layer, at ~3-4x the student cost on the CPU.
Transforms (`transform`): ``split_s`` keeps a random subset of C/s channels (``split_mode``
``shared``: the same subset for every member, the default; ``per_member``: member i draws its own),
``avg_g`` averages consecutive groups of g channels (channel order in a trained net carries no
meaning, so this is a random grouping). Each transformed input is standardised per channel on the
training set. L students (``student.model``, built by `models.build_model`) per variant, trained by
`engine.Trainer`; single = mean ± std of their test accuracies, ensemble = logit average.

Datasets: ``fashion_mnist`` (default; if its files are missing the run falls back to MNIST-1D,
generated offline, and says so), ``mnist1d``, ``cifar10`` / ``cifar100`` (the existing loaders;
``--set preset=cifar100`` is the GPU-scale setting, not run on the 2-core CPU).

Outputs in OUT: table.md, table.csv, plot.png, config.json, summary.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntk_vs_nn.config import DataConfig, TrainConfig, UserError
from ntk_vs_nn.experiments.gaussian import cli, jitted_init

VARIANTS = ("original", "split_2", "split_4", "split_8", "avg_2", "avg_4", "avg_8")
_TAG = {"pretrain": 0xB0, "split": 0xB1, "init": 0xB2, "data": 0xB3}


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
    norm: str = "layer"  # layer | group | none (models.Norm)


@dataclass(frozen=True)
class ChannelSection:
    variants: tuple[str, ...] = VARIANTS
    split_mode: str = "shared"  # shared: one random subset for every member | per_member: one per member


@dataclass(frozen=True)
class RunSection:
    seed: int = 0
    members: str = "sequential"  # engine.Trainer mode (shared split only; per_member trains one at a time)
    progress: bool = False


@dataclass(frozen=True)
class ChannelsConfig:
    preset: str = "cpu"
    dataset: str = "fashion_mnist"  # fashion_mnist | mnist1d | cifar10 | cifar100
    fallback: bool = True  # fashion_mnist missing -> MNIST-1D with a message (else: an error)
    data: DataConfig = field(default_factory=lambda: DataConfig(n_train=10000, n_test=0, val_fraction=0.0))
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    student: StudentSection = field(default_factory=StudentSection)
    channels: ChannelSection = field(default_factory=ChannelSection)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=8, lr=2e-3, batch_size=128))
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        from ntk_vs_nn.models import parse_model_name

        if self.dataset not in ("fashion_mnist", "mnist1d", "cifar10", "cifar100"):
            raise UserError(f"dataset must be fashion_mnist, mnist1d, cifar10 or cifar100; got {self.dataset!r}")
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
        for name, value in (
            ("pretrain.width", self.pretrain.width),
            ("pretrain.epochs", self.pretrain.epochs),
            ("pretrain.batch_size", self.pretrain.batch_size),
            ("student.members", self.student.members),
            ("train.epochs", self.train.epochs),
            ("train.batch_size", self.train.batch_size),
        ):
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if self.train.lr <= 0 or self.pretrain.lr <= 0:
            raise UserError("train.lr and pretrain.lr must be > 0")

    def science_hash(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("preset")
        d["run"] = {"seed": self.run.seed}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:12]


def parse_variant(v: str) -> tuple[str, int]:
    """``"split_4"`` -> ("split", 4); ``"original"`` -> ("original", 1). UserError if malformed."""
    if v == "original":
        return "original", 1
    kind, _, num = v.partition("_")
    if kind in ("split", "avg") and num.isdigit() and int(num) >= 1:
        return kind, int(num)
    raise UserError(f"channels.variants: bad variant {v!r}; expected original, split_S or avg_G (S, G >= 1)")


def cpu() -> ChannelsConfig:
    return ChannelsConfig()


def smoke() -> ChannelsConfig:
    return ChannelsConfig(
        preset="smoke",
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


# ----------------------------------------------------------------------------------------------- transforms
def split_indices(key, channels: int, s: int) -> np.ndarray:
    """A sorted random subset of ``channels // s`` channel indices (at least one)."""
    keep = max(channels // s, 1)
    return np.sort(np.asarray(jax.random.permutation(key, channels))[:keep])


def transform(x: np.ndarray, variant: str, key=None) -> np.ndarray:
    """Apply ``variant`` to the channel (last) axis of ``x`` (N, *spatial, C).

    original -> x; split_s -> x[..., split_indices(key, C, s)] (C // s channels);
    avg_g -> the mean of consecutive groups of g channels (C // g channels; C must divide by g).
    """
    kind, n = parse_variant(variant)
    c = x.shape[-1]
    if kind == "original" or n == 1:
        return x
    if kind == "split":
        return x[..., split_indices(key, c, n)]
    if c % n:
        raise UserError(f"{variant}: {c} channels do not divide into groups of {n}")
    return x.reshape(*x.shape[:-1], c // n, n).mean(-1)


def standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel standardisation with the training set's statistics."""
    axes = tuple(range(x_train.ndim - 1))
    mean, std = x_train.mean(axes), x_train.std(axes) + 1e-6
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


# ----------------------------------------------------------------------------------------------- backbone
class Backbone(nn.Module):
    """Three conv (3-wide) - GroupNorm(1) - ReLU stages of width, 2 width, 4 width channels (stride 2
    from the second stage), then a Dense head on the flattened last map (``head="flatten"``) or on its
    mean (``"pool"``). ``features(x, stage)`` is the map after a stage. Why flatten: the last map's
    receptive field is 9 pixels, so a pooled head only sees a bag of local patches (measured: 70.7%
    Fashion-MNIST test accuracy after 3 epochs, against students reaching 86% on its map)."""

    width: int
    num_classes: int
    ndim: int
    head_kind: str = "flatten"

    def setup(self):
        self.convs = [
            nn.Conv(self.width * 2**i, (3,) * self.ndim, strides=(1 if i == 0 else 2,) * self.ndim, padding="SAME")
            for i in range(3)
        ]
        self.norms = [nn.GroupNorm(num_groups=1) for _ in range(3)]
        self.head = nn.Dense(self.num_classes)

    def features(self, x, stage: int = 2):
        h = x
        for i in range(stage + 1):
            h = nn.relu(self.norms[i](self.convs[i](h)))
        return h

    def __call__(self, x):
        h = self.features(x, 2)
        if self.head_kind == "pool":
            return self.head(h.mean(axis=tuple(range(1, h.ndim - 1))))
        return self.head(h.reshape(h.shape[0], -1))


def load_data(cfg: ChannelsConfig, log):
    """The dataset of ``cfg`` (with the Fashion-MNIST -> MNIST-1D fallback); returns (data, cfg used)."""
    from ntk_vs_nn.data import load_dataset

    try:
        return load_dataset(cfg.dataset, cfg.data, cfg.run.seed), cfg
    except UserError as e:
        if cfg.dataset != "fashion_mnist" or not cfg.fallback:
            raise
        log(
            f"warning: Fashion-MNIST is not available ({e}); falling back to MNIST-1D (generated offline). "
            "Numbers are then not comparable to a Fashion-MNIST run; set fallback=False to make this an error."
        )
        data_cfg = dataclasses.replace(cfg.data, n_test=cfg.data.n_test or 1000, n_train=cfg.data.n_train or 4000)
        cfg = dataclasses.replace(cfg, dataset="mnist1d", data=data_cfg)
        return load_dataset("mnist1d", cfg.data, cfg.run.seed), cfg


def pretrain(data, cfg: ChannelsConfig, root, log) -> tuple[np.ndarray, np.ndarray, float]:
    """Train the backbone; return its stage-``pretrain.stage`` features on train and test and its test accuracy."""
    from ntk_vs_nn.analysis import metrics
    from ntk_vs_nn.engine.trainer import Trainer
    from ntk_vs_nn.families import network

    module = Backbone(cfg.pretrain.width, data.num_classes, data.spatial_ndim, cfg.pretrain.head)
    tcfg = TrainConfig(epochs=cfg.pretrain.epochs, lr=cfg.pretrain.lr, batch_size=cfg.pretrain.batch_size)
    trainer = Trainer(jitted_init(network(module)), tcfg, len(data.x_train), progress=cfg.run.progress)
    key = jax.random.fold_in(root, _TAG["pretrain"])
    fit = trainer.fit([jax.random.fold_in(key, 0)], [jax.random.fold_in(key, 1)], data.x_train, data.y_train)
    variables = fit.variables[0]
    acc = metrics.accuracy(trainer.predict(variables, data.x_test), data.y_test)
    feat = jax.jit(lambda x: module.apply({"params": variables["params"]}, x, cfg.pretrain.stage, method="features"))

    def features(x):
        return np.concatenate([np.asarray(feat(jnp.asarray(x[i : i + 500]))) for i in range(0, len(x), 500)])

    f_tr, f_te = features(data.x_train), features(data.x_test)
    log(
        f"backbone: {cfg.pretrain.epochs} epochs, test accuracy {acc:.2f}%, {fit.wall_s:.0f} s; "
        f"input map {f_tr.shape[1:]} (stage {cfg.pretrain.stage})"
    )
    return f_tr, f_te, acc


def train_variant(variant: str, f_tr, f_te, data, cfg: ChannelsConfig, root, trainers: dict) -> dict:
    """L students on one transformed input: single mean ± std, ensemble, gain (percent)."""
    from ntk_vs_nn.analysis import metrics
    from ntk_vs_nn.engine.trainer import Trainer
    from ntk_vs_nn.families import network
    from ntk_vs_nn.models import build_model

    kind, n = parse_variant(variant)
    L = cfg.student.members
    split_key = jax.random.fold_in(jax.random.fold_in(root, _TAG["split"]), n)
    per_member = kind == "split" and cfg.channels.split_mode == "per_member"
    keys = [jax.random.fold_in(split_key, i) for i in range(L)] if per_member else [split_key]
    inputs = [standardize(transform(f_tr, variant, k), transform(f_te, variant, k)) for k in keys]
    channels = inputs[0][0].shape[-1]
    if channels not in trainers:
        module = build_model(cfg.student.model, data.num_classes, f_tr.ndim - 2, cfg.student.norm)
        trainers[channels] = Trainer(jitted_init(network(module)), cfg.train, len(f_tr), progress=cfg.run.progress)
    trainer = trainers[channels]
    ik = [jax.random.fold_in(jax.random.fold_in(root, _TAG["init"]), i) for i in range(L)]
    dk = [jax.random.fold_in(jax.random.fold_in(root, _TAG["data"]), i) for i in range(L)]
    t0 = time.perf_counter()
    if per_member:
        variables, losses = [], []
        for i, (x_tr, _) in enumerate(inputs):
            fit = trainer.fit([ik[i]], [dk[i]], x_tr, data.y_train, mode="sequential")
            variables += fit.variables
            losses.append(fit.losses)
        losses = np.concatenate(losses)
    else:
        fit = trainer.fit(ik, dk, inputs[0][0], data.y_train, mode=cfg.run.members)
        variables, losses = fit.variables, fit.losses
    test = [trainer.predict(v, inputs[i if per_member else 0][1]) for i, v in enumerate(variables)]
    accs = np.array([metrics.accuracy(lg, data.y_test) for lg in test])
    by_size = [metrics.accuracy(metrics.combine(test[: j + 1]), data.y_test) for j in range(L)]
    finite = bool(np.isfinite(losses).all() and all(np.isfinite(t).all() for t in test))
    return dict(
        variant=variant,
        kind=kind,
        factor=n,
        channels=channels,
        n_members=L,
        single_mean=float(accs.mean()),
        single_std=float(accs.std(ddof=1)) if L > 1 else 0.0,
        single_min=float(accs.min()),
        single_max=float(accs.max()),
        ensemble=by_size[-1],
        gain=by_size[-1] - float(accs.mean()),
        acc_by_size=" ".join(f"{a:.2f}" for a in by_size),
        final_loss=float(losses[:, -1].mean()),
        status="ok" if finite else "diverged",
        wall_s=round(time.perf_counter() - t0, 1),
    )


# ----------------------------------------------------------------------------------------------- claims
def paper_rows(channels: int):
    """The paper's Figure 6 as {model: DataFrame indexed by variant}; and the row compared with ours:
    the first complete row with the same channel count, else ResNet-28-2 (a)."""
    from ntk_vs_nn import paper

    df = paper.load("multiview")
    rows = {m: g.set_index("variant") for m, g in df.groupby("model", sort=False)}
    complete = [m for m, g in rows.items() if g.ensemble_acc.notna().all()]
    same = [m for m in complete if int(rows[m].input_channels.iloc[0]) == channels]
    return rows, (same[0] if same else "ResNet-28-2 (a)")


def claims(table: dict, band_floor: float = 0.2) -> list[dict]:
    """Verdicts from {variant: (single_mean, single_std, ensemble)} (ours or a paper row).

    A: splitting raises the ensemble gain: d = gain(deepest split) - gain(original).
    B: averaging raises it less: d = mean over g of [gain(split_g) - gain(avg_g)] (g present in both).
    C: the ensemble loses less than the single models when splitting (Observation 2): the share of the
       single-model drop (original -> deepest split) that the ensemble also loses; < 1/2 holds, > 1 fails
       (inconclusive when the single-model drop is inside the band).
    Band for A, B = max(0.5 (σ_a + σ_b), floor); holds if d > band, fails if d < -band.
    """

    def gain(v):
        s, _, e = table[v]
        return e - s

    def verdict(d, band):
        return "holds" if d > band else "fails" if d < -band else "inconclusive"

    out = []
    splits = sorted(int(v.split("_")[1]) for v in table if v.startswith("split_") and np.isfinite(table[v][2]))
    if "original" in table and splits:
        deep = f"split_{splits[-1]}"
        d = gain(deep) - gain("original")
        band = max(0.5 * (table[deep][1] + table["original"][1]), band_floor)
        out.append(
            dict(
                claim="A: splitting channels raises the ensemble gain",
                d=d,
                band=band,
                verdict=verdict(d, band),
                evidence=f"gain {gain('original'):+.2f} (original) -> {gain(deep):+.2f} ({deep})",
            )  # fmt: skip
        )
        drop_s = table["original"][0] - table[deep][0]
        drop_e = table["original"][2] - table[deep][2]
        share = drop_e / drop_s if drop_s > 0 else float("nan")
        v = "inconclusive"
        if np.isfinite(share) and drop_s >= band:
            v = "holds" if share < 0.5 else "fails" if share > 1.0 else "inconclusive"
        out.append(
            dict(
                claim="C: the ensemble loses less than single models when splitting",
                d=share,
                band=0.5,
                verdict=v,
                evidence=f"single drops {drop_s:+.2f}, ensemble {drop_e:+.2f} (original -> {deep})",
            )  # fmt: skip
        )
    both = [g for g in splits if f"avg_{g}" in table and np.isfinite(table[f"avg_{g}"][2])]
    if both:
        diffs = [gain(f"split_{g}") - gain(f"avg_{g}") for g in both]
        d = float(np.mean(diffs))
        stds = [0.5 * (table[f"split_{g}"][1] + table[f"avg_{g}"][1]) for g in both]
        band = max(float(np.mean(stds)), band_floor)
        ev = ", ".join(f"g={g}: {x:+.2f}" for g, x in zip(both, diffs))
        out.append(dict(claim="B: averaging raises the gain less than splitting", d=d, band=band,
                        verdict=verdict(d, band), evidence=f"gain(split) − gain(avg): {ev}"))  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------- outputs
def tidy(results: list[dict], prow) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    df = pd.DataFrame(results)
    pairs = (("paper_single", "single_mean_acc"), ("paper_std", "single_std_acc"), ("paper_ensemble", "ensemble_acc"))
    for col, src in pairs:
        df[col] = [float(prow[src][v]) if v in prow.index else np.nan for v in df.variant]
    df["paper_gain"] = df.paper_ensemble - df.paper_single
    return df


def markdown(df, cfg, info: dict, ours: list[dict], theirs: list[dict]) -> str:
    f = lambda x: f"{x:.2f}" if np.isfinite(x) else "–"
    lines = [
        "# Figure 6: channels of a fixed pretrained layer, split or averaged",
        "",
        f"Dataset `{info['dataset']}` ({info['n_train']} train / {info['n_test']} test), backbone "
        f"{cfg.pretrain.width}/{2 * cfg.pretrain.width}/{4 * cfg.pretrain.width} channels trained "
        f"{cfg.pretrain.epochs} epochs, {cfg.pretrain.head} head (test accuracy {info['backbone_acc']:.2f}%), "
        f"input = its stage-"
        f"{cfg.pretrain.stage} map {info['map_shape']} (C = {info['C']}). Students {cfg.student.model}, "
        f"L = {cfg.student.members}, {cfg.train.epochs} epochs ({cfg.train.optimizer} lr {cfg.train.lr:g}, "
        f"{cfg.train.schedule}); split subsets `{cfg.channels.split_mode}`; config `{cfg.science_hash()}`, "
        f"seed {cfg.run.seed}. Test accuracy in %; single = mean ± std over the L students, ensemble = logit "
        f"average. Paper: CIFAR-100, row `{info['paper_row']}`.",
        "",
        "| variant | channels | single | ensemble | gain | paper single | paper ensemble | paper gain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in df.itertuples():
        lines.append(
            f"| {r.variant} | {r.channels} | {r.single_mean:.2f} ± {r.single_std:.2f} | {r.ensemble:.2f} | "
            f"{r.gain:+.2f} | {f(r.paper_single)} ± {f(r.paper_std)} | {f(r.paper_ensemble)} | "
            f"{r.paper_gain:+.2f} |"
        )
    lines += ["", "## Claims (ours; the paper's row by the same rule)", "",
              "| claim | ours | evidence | paper | paper evidence |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    paper_by = {c["claim"]: c for c in theirs}
    for c in ours:
        p = paper_by.get(c["claim"], {"verdict": "–", "evidence": ""})
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} | {p['verdict']} | {p['evidence']} |")
    return "\n".join(lines + [""])


def plot(df, paper_all: dict, prow_name: str, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, color in (("split", "tab:blue"), ("avg", "tab:orange")):
        sub = df[(df.kind == kind) | (df.kind == "original")].sort_values("factor")
        x = 1.0 / sub.factor.to_numpy()
        a1.errorbar(x, sub.single_mean, yerr=sub.single_std, color=color, marker="o", capsize=3,
                    label=f"{kind}: single (mean ± std)")  # fmt: skip
        a1.plot(x, sub.ensemble, color=color, marker="s", ls="--", label=f"{kind}: ensemble")
        a2.plot(x, sub.gain, color=color, marker="o", label=f"ours: {kind}")
        for name, prow in paper_all.items():
            pv = [v for v in sub.variant if v in prow.index and np.isfinite(prow.ensemble_acc.get(v, np.nan))]
            if not pv:
                continue
            px = 1.0 / np.array([1 if v == "original" else int(v.split("_")[1]) for v in pv])
            pg = np.array([prow.ensemble_acc[v] - prow.single_mean_acc[v] for v in pv])
            main = name == prow_name
            a2.plot(px, pg, color=color, ls=":", lw=1.6 if main else 0.6, alpha=1.0 if main else 0.35,
                    marker="x" if main else None, label=f"paper {name}: {kind}" if main else None)  # fmt: skip
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 1 / 2, 1 / 4, 1 / 8], ["1", "1/2", "1/4", "1/8"])
        ax.set_xlabel("fraction of channels kept (split) / 1 ÷ group size (avg)")
        ax.grid(alpha=0.3)
    a1.set_ylabel("test accuracy (%)")
    a1.set_title("single models and their ensemble", fontsize=10)
    a2.set_ylabel("ensemble − single (points)")
    a2.set_title("ensemble gain: ours (solid), paper CIFAR-100 (dotted)", fontsize=10)
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: ChannelsConfig, out: str, command: str, log=print) -> dict:
    from ntk_vs_nn.store import Store, atomic_write

    t0 = time.perf_counter()
    data, used = load_data(cfg, log)
    Store.prepare(out)  # after the inputs were validated
    atomic_write(os.path.join(out, "config.json"), json.dumps(dataclasses.asdict(used), indent=1, default=list))
    root = jax.random.key(used.run.seed)
    f_tr, f_te, backbone_acc = pretrain(data, used, root, log)
    C = f_tr.shape[-1]
    results, trainers = [], {}
    for variant in used.channels.variants:
        res = train_variant(variant, f_tr, f_te, data, used, root, trainers)
        results.append(res)
        log(
            f"{variant:9s} C'={res['channels']:3d}: single {res['single_mean']:.2f} ± {res['single_std']:.2f}, "
            f"ensemble {res['ensemble']:.2f} ({res['gain']:+.2f}), {res['wall_s']:.0f} s"
        )
    paper_all, prow_name = paper_rows(C)
    prow = paper_all[prow_name]
    df = tidy(results, prow)
    ours = claims({r.variant: (r.single_mean, r.single_std, r.ensemble) for r in df.itertuples()})
    theirs = claims({v: (r.single_mean_acc, r.single_std_acc, r.ensemble_acc) for v, r in prow.iterrows()})
    info = dict(dataset=used.dataset, n_train=len(data.x_train), n_test=len(data.x_test), backbone_acc=backbone_acc,
                map_shape="x".join(map(str, f_tr.shape[1:])), C=C, paper_row=prow_name)  # fmt: skip
    wall = time.perf_counter() - t0
    atomic_write(os.path.join(out, "table.csv"), df.to_csv(index=False))
    atomic_write(os.path.join(out, "table.md"), markdown(df, used, info, ours, theirs))
    plot(df, paper_all, prow_name, os.path.join(out, "plot.png"),
         f"Figure 6 on {used.dataset}: C = {C} channels of a fixed backbone (L = {used.student.members})")  # fmt: skip
    all_paper = {m: claims({v: (r.single_mean_acc, r.single_std_acc, r.ensemble_acc) for v, r in g.iterrows()})
                 for m, g in paper_all.items()}  # fmt: skip
    atomic_write(os.path.join(out, "summary.md"), summary_md(df, used, info, ours, all_paper, command, wall))
    return {"verdict": ", ".join(f"{c['claim'][0]} {c['verdict']}" for c in ours)}


def summary_md(df, cfg, info, ours, all_paper: dict, command: str, wall: float) -> str:
    lines = [
        "# Figure 6 (channels as views): summary",
        "",
        f"Command: `{command}`",
        f"Wall time: {wall:.0f} s ({wall / 60:.1f} min): backbone + {len(df)} variants x L = "
        f"{cfg.student.members} students.",
        f"Data: `{info['dataset']}`, {info['n_train']} train / {info['n_test']} test; input map "
        f"{info['map_shape']} from a backbone at {info['backbone_acc']:.2f}% test accuracy.",
        "",
        "The paper's reading (Figure 6, Observations 1-2): removing channels costs single models accuracy but "
        "the ensemble much less, so the ensemble gain grows as the input is split into fewer channels (more "
        "of the views are missing from each model and the ensemble collects them); averaging channels, which "
        "mixes views, grows it less.",
        "",
        "| claim | verdict (ours) | d | band | evidence |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in ours:
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {c['d']:+.2f} | {c['band']:.2f} | {c['evidence']} |")
    lines += ["", "The same rule on each complete row of the paper's table (CIFAR-100):", ""]
    for m, cs in all_paper.items():
        if cs:
            lines.append(f"- {m}: " + "; ".join(f"{c['claim'][0]} {c['verdict']} ({c['d']:+.2f})" for c in cs))
    lines += [
        "",
        "Rules: A d = gain(deepest split) − gain(original); B d = mean over g of gain(split_g) − gain(avg_g); "
        "band = max(0.5 (σ_a + σ_b), 0.2) with σ the single students' std; holds if d > band, fails if "
        "d < −band. C: the ensemble's drop / the single models' drop (original → deepest split) < 0.5 holds, "
        "> 1 fails (inconclusive between, or when the single drop is inside the band).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    return cli(
        argv, "ntk_vs_nn.experiments.channels", "Figure 6: split / averaged channels of a fixed pretrained layer.", PRESETS, run,
        "results/channels",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

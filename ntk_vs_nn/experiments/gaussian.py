"""Figure 3 of Allen-Zhu & Li: ensembles on Gaussian-like data labelled by random teachers (PROTOCOLS §5).

    python -m ntk_vs_nn.experiments.gaussian --out results/gaussian [--set section.field=value ...]

Data. Inputs x in R^d are N(0, I) ("gaussian") or a mixture of ``mixture_components`` Gaussians
("mixture": centres s*g_j with g_j ~ N(0, I), s^2 = ``mixture_spread``, within-component std
sqrt(1 - s^2), so the marginal covariance is still ~I). A fixed random *teacher* network labels
them, y = argmax teacher(x). Teachers (width ``teacher.width``, Flax default init):

  linear    Dense(k)
  fc2, fc3  fully connected ReLU nets with 1 / 2 hidden layers, then Dense(k)
  res3      h = relu(Dense(x)); h = h + relu(Dense(h)); Dense(k)
  conv2, conv3, resconv3   the same with 1-D convolutions (x as a length-d, 1-channel signal,
            kernel ``teacher.kernel``, SAME padding) and a Dense(k) read-out of the flattened map

On a probe sample of the setting's inputs, each class's mean logit is subtracted (``teacher.center``:
a random ReLU teacher otherwise often has a class that almost never wins, which rejection sampling
cannot fill) and the logits are divided by their std, so the margin below is in units of that std.
A *setting* is four tokens ``margin/noise/sampling/input``:

  nomargin | margin       margin: reject draws whose top-1 - top-2 teacher logit gap < ``data.margin``
  clean | noise           noise: each training label is replaced, with probability ``data.noise_rate``,
                          by a uniformly drawn *other* class (test labels stay clean)
  uniform | rejection     rejection: keep a draw only while its class is below its quota N/k, so
                          every class gets N/k examples (train and test)
  gaussian | mixture

Students are the teacher's architecture, ``student.widen`` (fc, res: 4) or ``student.conv_widen``
(conv: 2, for CPU time) times wider (a ``linear`` teacher gets an
fc2 student, ``student.linear_as``: a linear student is a convex problem, every member would reach
the same solution and "no ensemble gain" would hold trivially). L = ``student.members`` students per
cell, trained by `engine.Trainer` (Adam, cosine, from their own init and data-order seeds); single =
mean of the L test accuracies, ensemble = the logit average (the paper's "xx% (yy%)").

Presets (``--set preset=NAME``, applied before the other overrides):

  cpu    (default) the 7 teachers x 5 settings chosen one factor at a time around the base
         nomargin/clean/uniform/gaussian (+ rejection, + mixture, + 10% noise, + margin);
         d = 100, k = 10, N = 10,000 train / 10,000 test (PROTOCOLS §5), L = 5 students, 12 epochs
         (Adam 3e-3, cosine, batch 128); students 4x (fc, res) / 2x (conv) the teacher's width.
  paper  the full grid of Figure 3: 7 teachers x 16 settings, L = 10, 30 epochs (~25x the cpu cost).
  smoke  seconds; what the tests run (numbers meaningless).

Outputs in OUT: table.md (ours beside the paper's, in the paper's layout), table.csv (tidy, one row
per cell), config.json, summary.md (command, wall time, the claim's verdict) and cells.jsonl (one
line per finished cell: a rerun with the same config skips them).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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

from ntk_vs_nn.config import TrainConfig, UserError, override

TEACHERS = ("linear", "fc2", "fc3", "res3", "conv2", "conv3", "resconv3")
_TOKENS = (("nomargin", "margin"), ("clean", "noise"), ("uniform", "rejection"), ("gaussian", "mixture"))
PAPER_SETTINGS = tuple(  # the paper's column order (noise, sampling, input), margin as the row block
    f"{m}/{n}/{s}/{i}" for m in _TOKENS[0] for n in _TOKENS[1] for s in _TOKENS[2] for i in _TOKENS[3]
)
CPU_SETTINGS = (
    "nomargin/clean/uniform/gaussian",
    "nomargin/clean/rejection/gaussian",
    "nomargin/clean/uniform/mixture",
    "nomargin/noise/uniform/gaussian",
    "margin/clean/uniform/gaussian",
)
_TAG = {"teacher": 0x7EA, "input": 0x1A, "noise": 0x2B, "mixture": 0x3C, "probe": 0x4D, "student": 0x5E}


# ----------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class GaussDataConfig:
    d: int = 100  # input dimension (conv teachers: a 1-D signal of length d)
    k: int = 10  # classes
    n_train: int = 10000
    n_test: int = 10000
    mixture_components: int = 10
    mixture_spread: float = 0.5  # s^2: share of the variance that is between the component centres
    margin: float = 0.5  # "margin" settings: min top-1 - top-2 gap, in units of the teacher's logit std
    noise_rate: float = 0.1  # "noise" settings: probability a training label is flipped
    max_draw_factor: int = 200  # rejection/margin sampling gives up after this many x N draws
    chunk: int = 4096  # draws per teacher call (one compiled shape)


@dataclass(frozen=True)
class TeacherConfig:
    width: int = 64  # hidden units of fc / res teachers
    channels: int = 8  # channels of conv teachers
    kernel: int = 5  # conv kernel size (teacher and student)
    center: bool = True  # subtract each class's mean logit (over probe inputs): without it a ReLU
    #                      teacher's positive mean activation often makes a class (almost) never win,
    #                      and rejection sampling cannot fill that class's quota


@dataclass(frozen=True)
class StudentConfig:
    widen: int = 4  # fc / res students: widen x the teacher's hidden units
    conv_widen: int = 2  # conv students: conv_widen x the teacher's channels (1-D convs cost ~1.8 s per
    #                      member-epoch at 32 channels on the 2-core CPU, ~3x less at 16)
    members: int = 5  # L
    linear_as: str = "fc2"  # the student architecture of the linear teacher: fc2 | linear


@dataclass(frozen=True)
class GridConfig:
    teachers: tuple[str, ...] = TEACHERS
    settings: tuple[str, ...] = CPU_SETTINGS  # "all" = the paper's 16


@dataclass(frozen=True)
class ClaimConfig:
    holds_below: float = 0.5  # "no gain" holds if the mean ensemble gain (points) is below this
    fails_above: float = 1.0  # ... and fails above this (CIFAR-10 nets gain +0.9 in the paper's Fig. 1)


@dataclass(frozen=True)
class RunSection:
    seed: int = 0
    members: str = "sequential"  # sequential | unrolled | vmap (engine.Trainer modes)
    progress: bool = False


@dataclass(frozen=True)
class GaussianConfig:
    preset: str = "cpu"
    data: GaussDataConfig = field(default_factory=GaussDataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=12, lr=3e-3, batch_size=128))
    claim: ClaimConfig = field(default_factory=ClaimConfig)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        for t in self.grid.teachers:
            if t not in TEACHERS:
                raise UserError(f"grid.teachers: unknown teacher {t!r}; valid: {', '.join(TEACHERS)}")
        for s in self.settings:
            parse_setting(s)
        if self.student.linear_as not in ("fc2", "linear"):
            raise UserError(f"student.linear_as must be fc2 or linear, got {self.student.linear_as!r}")
        if self.run.members not in ("sequential", "unrolled", "vmap"):
            raise UserError(f"run.members must be sequential, unrolled or vmap, got {self.run.members!r}")
        positive = dict(
            d=self.data.d, k=self.data.k, n_train=self.data.n_train, n_test=self.data.n_test,
            mixture_components=self.data.mixture_components, chunk=self.data.chunk,
            max_draw_factor=self.data.max_draw_factor, width=self.teacher.width,
            channels=self.teacher.channels, kernel=self.teacher.kernel, widen=self.student.widen,
            conv_widen=self.student.conv_widen,
            members=self.student.members, epochs=self.train.epochs, batch_size=self.train.batch_size,
        )  # fmt: skip
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"{name} must be >= 1, got {value}")
        if self.data.k < 2:
            raise UserError(f"data.k must be >= 2, got {self.data.k}")
        if not 0.0 <= self.data.mixture_spread < 1.0:
            raise UserError(f"data.mixture_spread must be in [0, 1), got {self.data.mixture_spread}")
        if not 0.0 <= self.data.noise_rate <= 1.0 or self.data.margin < 0:
            raise UserError("data.noise_rate must be in [0, 1] and data.margin >= 0")
        if self.train.lr <= 0:
            raise UserError(f"train.lr must be > 0, got {self.train.lr}")

    @property
    def settings(self) -> tuple[str, ...]:
        return PAPER_SETTINGS if tuple(self.grid.settings) == ("all",) else tuple(self.grid.settings)

    def science_hash(self) -> str:
        """Hash of what changes a cell's numbers (not the grid, the claim thresholds or the run mode)."""
        d = dataclasses.asdict(self)
        for key in ("preset", "grid", "claim"):
            d.pop(key)
        d["run"] = {"seed": self.run.seed}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:12]


def parse_setting(s: str) -> dict:
    """``"nomargin/clean/uniform/gaussian"`` -> {margin, noise, sampling, input} (UserError if malformed)."""
    parts = s.split("/")
    if len(parts) != 4 or any(p not in opts for p, opts in zip(parts, _TOKENS)):
        valid = "/".join("|".join(o) for o in _TOKENS)
        raise UserError(f"grid.settings: bad setting {s!r}; expected {valid} (or 'all')")
    return dict(zip(("margin", "noise", "sampling", "input"), parts))


def config_from_sets(items: list[str], presets: dict) -> object:
    """The preset named by a ``preset=NAME`` item (default: the first preset), then the other items."""
    name = next(iter(presets))
    rest = []
    for item in items:
        key = item.split("=", 1)[0].strip()
        if key == "preset":
            name = item.split("=", 1)[1].strip() if "=" in item else ""
        else:
            rest.append(item)
    if name not in presets:
        raise UserError(f"unknown preset {name!r}; valid: {', '.join(presets)}")
    return override(presets[name](), rest)


def cpu() -> GaussianConfig:
    return GaussianConfig()


def paper() -> GaussianConfig:
    return GaussianConfig(
        preset="paper",
        student=StudentConfig(members=10),
        grid=GridConfig(settings=("all",)),
        train=TrainConfig(epochs=30, lr=3e-3, batch_size=128),
    )


def smoke() -> GaussianConfig:
    return GaussianConfig(
        preset="smoke",
        data=GaussDataConfig(d=16, k=3, n_train=256, n_test=256, chunk=512),
        teacher=TeacherConfig(width=8, channels=2),
        student=StudentConfig(widen=2, members=2),
        grid=GridConfig(teachers=("fc2", "conv2"), settings=("nomargin/clean/uniform/gaussian",)),
        train=TrainConfig(epochs=1, lr=1e-2, batch_size=64, schedule="constant"),
    )


PRESETS = {"cpu": cpu, "paper": paper, "smoke": smoke}


# ----------------------------------------------------------------------------------------------- teachers
class GaussNet(nn.Module):
    """A teacher or student: ``arch`` in TEACHERS, ``width`` hidden units (fc) or channels (conv).
    x (B, d) -> logits (B, k)."""

    arch: str
    width: int
    num_classes: int
    kernel: int = 5

    @nn.compact
    def __call__(self, x):
        if self.arch.startswith(("fc", "res3")):
            h = nn.relu(nn.Dense(self.width)(x))
            if self.arch == "fc3":
                h = nn.relu(nn.Dense(self.width)(h))
            if self.arch == "res3":
                h = h + nn.relu(nn.Dense(self.width)(h))
        elif self.arch != "linear":
            conv = lambda: nn.Conv(self.width, (self.kernel,), padding="SAME")
            h = nn.relu(conv()(x[..., None]))
            if self.arch == "conv3":
                h = nn.relu(conv()(h))
            if self.arch == "resconv3":
                h = h + nn.relu(conv()(h))
            h = h.reshape(h.shape[0], -1)
        else:
            h = x
        return nn.Dense(self.num_classes, name="head")(h)


def _width(arch: str, cfg: GaussianConfig) -> int:
    return cfg.teacher.channels if arch.startswith(("conv", "resconv")) else cfg.teacher.width


def draw_inputs(key, n: int, kind: str, cfg: GaussianConfig, mix_key=None) -> np.ndarray:
    """(n, d) float32 draws from N(0, I) or the mixture (centres from ``mix_key``, shared by all teachers)."""
    d = cfg.data.d
    if kind == "gaussian":
        return np.asarray(jax.random.normal(key, (n, d)), np.float32)
    m, s2 = cfg.data.mixture_components, cfg.data.mixture_spread
    centres = np.sqrt(s2) * jax.random.normal(mix_key, (m, d))
    kc, kz = jax.random.split(key)
    comp = jax.random.randint(kc, (n,), 0, m)
    return np.asarray(centres[comp] + np.sqrt(1.0 - s2) * jax.random.normal(kz, (n, d)), np.float32)


_APPLY: dict = {}


class Teacher:
    """A fixed random network and its normalised logit function ``logits(x) -> (n, k)`` (numpy)."""

    def __init__(self, arch: str, cfg: GaussianConfig, root):
        self.arch, self.cfg = arch, cfg
        module = GaussNet(arch, _width(arch, cfg), cfg.data.k, cfg.teacher.kernel)
        key = jax.random.fold_in(jax.random.fold_in(root, _TAG["teacher"]), TEACHERS.index(arch))
        self.params = module.init(key, jnp.zeros((1, cfg.data.d)))
        if module not in _APPLY:  # one compiled apply per architecture, shared by teachers and seeds
            _APPLY[module] = jax.jit(module.apply)
        self._apply = functools.partial(_APPLY[module], self.params)
        self.mix_key = jax.random.fold_in(root, _TAG["mixture"])
        self.probe_key = jax.random.fold_in(root, _TAG["probe"])
        self._scale = {}

    def raw(self, x: np.ndarray) -> np.ndarray:
        c = self.cfg.data.chunk
        out = []
        for start in range(0, len(x), c):
            part = x[start : start + c]
            pad = c - len(part)
            if pad:
                part = np.concatenate([part, np.zeros((pad, part.shape[1]), part.dtype)])
            out.append(np.asarray(self._apply(part))[: c - pad])
        return np.concatenate(out)

    def logits(self, x: np.ndarray, kind: str) -> np.ndarray:
        """(raw - offset) / scale: offset the per-class mean logit (``teacher.center``; else 0) and scale
        the std of the offset logits, both over 8,192 probe draws of input ``kind`` (computed once)."""
        if kind not in self._scale:
            probe = self.raw(draw_inputs(self.probe_key, 8192, kind, self.cfg, self.mix_key))
            offset = probe.mean(0) if self.cfg.teacher.center else np.zeros(probe.shape[1], np.float32)
            self._scale[kind] = (offset, float((probe - offset).std()) + 1e-12)
        offset, scale = self._scale[kind]
        return (self.raw(x) - offset) / scale


def top2_gap(logits: np.ndarray) -> np.ndarray:
    """(n,) top-1 minus top-2 logit."""
    part = np.sort(logits, axis=-1)
    return part[:, -1] - part[:, -2]


def sample(teacher: Teacher, key, n: int, kind: str, sampling: str, margin: float) -> tuple:
    """n labelled draws: ``(x (n, d), y (n,), stats)``.

    ``sampling="rejection"``: class c is kept only while it has fewer than its quota (N/k; the first
    N mod k classes one more); ``margin > 0``: draws with a top-1 - top-2 gap below it are rejected.
    Draws come in chunks from ``fold_in(key, i)``; a UserError after ``max_draw_factor * n`` draws.
    """
    cfg = teacher.cfg
    k, chunk = cfg.data.k, cfg.data.chunk
    quota = np.full(k, n // k) + (np.arange(k) < n % k) if sampling == "rejection" else None
    xs, ys, have, drawn, i = [], [], 0, 0, 0
    counts = np.zeros(k, int)
    while have < n:
        if drawn >= cfg.data.max_draw_factor * n:
            short = "" if quota is None else f"; classes still short: {np.flatnonzero(counts < quota).tolist()}"
            raise UserError(
                f"teacher {teacher.arch}, {kind}/{sampling}, margin {margin}: only {have} of {n} draws accepted "
                f"after {drawn}{short}; raise data.max_draw_factor or lower data.margin"
            )
        x = draw_inputs(jax.random.fold_in(key, i), chunk, kind, cfg, teacher.mix_key)
        logits = teacher.logits(x, kind)
        y = logits.argmax(-1)
        ok = top2_gap(logits) >= margin if margin > 0 else np.ones(chunk, bool)
        if quota is not None:
            for c in range(k):  # keep class c's accepted draws, in draw order, up to its quota
                idx = np.flatnonzero(ok & (y == c))[: quota[c] - counts[c]]
                keep = np.zeros(chunk, bool)
                keep[idx] = True
                ok = (ok & (y != c)) | keep
        idx = np.flatnonzero(ok)[: n - have]
        xs.append(x[idx])
        ys.append(y[idx])
        counts += np.bincount(y[idx], minlength=k)
        have += len(idx)
        drawn += chunk if have < n else int(idx[-1]) + 1  # the last chunk: only the draws looked at
        i += 1
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 2**31 - 1), n))  # no class order
    return x[perm], y[perm], {"drawn": drawn, "accept_rate": n / drawn, "class_counts": counts.tolist()}


def flip_labels(key, y: np.ndarray, rate: float, k: int) -> np.ndarray:
    """Each label, with probability ``rate``, replaced by a uniformly drawn *different* class."""
    kf, kc = jax.random.split(key)
    flip = np.asarray(jax.random.bernoulli(kf, rate, y.shape))
    shift = np.asarray(jax.random.randint(kc, y.shape, 1, k))
    return np.where(flip, (y + shift) % k, y).astype(np.int32)


def make_cell_data(teacher: Teacher, setting: str, cfg: GaussianConfig, root) -> dict:
    """Train and test sets of one (teacher, setting): inputs keyed by (input kind, split), so the
    settings of one teacher share their draws where they can (common random numbers)."""
    s = parse_setting(setting)
    margin = cfg.data.margin if s["margin"] == "margin" else 0.0
    base = jax.random.fold_in(jax.random.fold_in(root, _TAG["input"]), _TOKENS[3].index(s["input"]))
    kind, how = s["input"], s["sampling"]
    x_tr, y_tr, st_tr = sample(teacher, jax.random.fold_in(base, 0), cfg.data.n_train, kind, how, margin)
    x_te, y_te, st_te = sample(teacher, jax.random.fold_in(base, 1), cfg.data.n_test, kind, how, margin)
    y_noisy = y_tr
    if s["noise"] == "noise":
        nkey = jax.random.fold_in(jax.random.fold_in(root, _TAG["noise"]), TEACHERS.index(teacher.arch))
        y_noisy = flip_labels(nkey, y_tr, cfg.data.noise_rate, cfg.data.k)
    return dict(x_train=x_tr, y_train=y_noisy, y_train_clean=y_tr, x_test=x_te, y_test=y_te, stats=(st_tr, st_te))


# ----------------------------------------------------------------------------------------------- students
def jitted_init(family):
    """The family with its ``init`` compiled as one program: run op by op, a Flax init compiles every
    primitive separately for each new shape, which dominated the small runs (tests, smoke)."""
    return family._replace(init=jax.jit(family.init))


def train_cell(data: dict, arch: str, cfg: GaussianConfig, root, trainers: dict) -> dict:
    """Train L students on one cell; returns single/ensemble accuracies (percent)."""
    from ntk_vs_nn.analysis import metrics
    from ntk_vs_nn.engine.trainer import Trainer
    from ntk_vs_nn.families import network

    student = cfg.student.linear_as if arch == "linear" else arch
    if student not in trainers:
        conv = student.startswith(("conv", "resconv"))
        width = _width(student, cfg) * (cfg.student.conv_widen if conv else cfg.student.widen)
        module = GaussNet(student, width, cfg.data.k, cfg.teacher.kernel)
        family = jitted_init(network(module))
        trainers[student] = Trainer(family, cfg.train, len(data["x_train"]), progress=cfg.run.progress)
    trainer = trainers[student]
    base = jax.random.fold_in(root, _TAG["student"])
    L = cfg.student.members
    init_keys = [jax.random.fold_in(jax.random.fold_in(base, 1), i) for i in range(L)]
    data_keys = [jax.random.fold_in(jax.random.fold_in(base, 2), i) for i in range(L)]
    fit = trainer.fit(init_keys, data_keys, data["x_train"], data["y_train"], mode=cfg.run.members)
    test = [trainer.predict(v, data["x_test"]) for v in fit.variables]
    train = [trainer.predict(v, data["x_train"]) for v in fit.variables]
    accs = np.array([metrics.accuracy(lg, data["y_test"]) for lg in test])
    by_size = [metrics.accuracy(metrics.combine(test[: j + 1]), data["y_test"]) for j in range(L)]
    finite = bool(np.isfinite(fit.losses).all() and all(np.isfinite(t).all() for t in test))
    return dict(
        student=student,
        single_mean=float(accs.mean()),
        single_std=float(accs.std(ddof=1)) if L > 1 else 0.0,
        single_min=float(accs.min()),
        single_max=float(accs.max()),
        ensemble=by_size[-1],
        gain=by_size[-1] - float(accs.mean()),
        acc_by_size=" ".join(f"{a:.2f}" for a in by_size),
        train_acc_mean=float(np.mean([metrics.accuracy(lg, data["y_train"]) for lg in train])),
        final_loss=float(fit.losses[:, -1].mean()),
        status="ok" if finite else "diverged",
    )


# ----------------------------------------------------------------------------------------------- tables
def _paper_lookup() -> dict:
    from ntk_vs_nn import paper

    df = paper.load("gaussian")
    out = {}
    for r in df.to_dict("records"):
        setting = "/".join(
            (
                "margin" if r["margin"] == "yes" else "nomargin",
                "clean" if r["label_noise"] == "none" else "noise",
                r["sampling"],
                r["input"],
            )
        )
        out[(r["teacher"], setting)] = (float(r["single_acc"]), float(r["ensemble_acc"]))
    return out


def setting_label(setting: str) -> str:
    s = parse_setting(setting)
    return " · ".join(
        (
            "margin" if s["margin"] == "margin" else "no margin",
            "10% noise" if s["noise"] == "noise" else "no noise",
            s["sampling"],
            s["input"],
        )
    )


def tidy(cells: list[dict]) -> "pd.DataFrame":  # noqa: F821
    import pandas as pd

    ref = _paper_lookup()
    rows = []
    for c in cells:
        p = ref.get((c["teacher"], c["setting"]), (np.nan, np.nan))
        rows.append({**c, "paper_single": p[0], "paper_ensemble": p[1], "paper_gain": round(p[1] - p[0], 2)})
    cols = [
        "teacher", "student", "setting", "margin", "noise", "sampling", "input", "n_members", "single_mean",
        "single_std", "single_min", "single_max", "ensemble", "gain", "acc_by_size", "train_acc_mean", "final_loss",
        "train_class_min", "train_class_max", "accept_rate_train", "noise_flipped", "status", "wall_s",
        "paper_single", "paper_ensemble", "paper_gain",
    ]  # fmt: skip
    return pd.DataFrame(rows)[cols]


def _grid(df, teachers, settings, fmt) -> list[str]:
    head = "| teacher | " + " | ".join(setting_label(s) for s in settings) + " |"
    lines = [head, "| --- |" + " --- |" * len(settings)]
    for t in teachers:
        cells = []
        for s in settings:
            r = df[(df.teacher == t) & (df.setting == s)]
            cells.append(fmt(r.iloc[0]) if len(r) else "–")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def markdown(df, cfg: GaussianConfig) -> str:
    teachers = [t for t in cfg.grid.teachers if t in set(df.teacher)]
    settings = [s for s in cfg.settings if s in set(df.setting)]
    pct = lambda a, b: f"{a:.1f}% ({b:.1f}%)" if np.isfinite(a) else "–"
    sgn = lambda g: f"{g:+.1f}" if np.isfinite(g) else "–"
    out = [
        "# Figure 3: single model vs ensemble on Gaussian-like data",
        "",
        f"Preset `{cfg.preset}`, config `{cfg.science_hash()}`, seed {cfg.run.seed}. d = {cfg.data.d}, "
        f"k = {cfg.data.k}, N = {cfg.data.n_train} train / {cfg.data.n_test} test, L = {cfg.student.members} "
        f"students per cell, {cfg.train.epochs} epochs ({cfg.train.optimizer} lr {cfg.train.lr:g}, "
        f"{cfg.train.schedule}, batch {cfg.train.batch_size}); teachers width {cfg.teacher.width} / "
        f"{cfg.teacher.channels} channels, students {cfg.student.widen}x (fc, res) / {cfg.student.conv_widen}x (conv) "
        f"wider, the linear teacher's student {cfg.student.linear_as}; margin {cfg.data.margin:g} "
        f"(logit std units), noise {cfg.data.noise_rate:.0%}, mixture of {cfg.data.mixture_components} "
        f"(s^2 = {cfg.data.mixture_spread:g}).",
        "",
        '"xx% (yy%)": xx = single model (mean test accuracy of the L students), yy = their ensemble '
        "(logit average), as in the paper's Figure 3.",
        "",
        "## Ours",
        "",
        *_grid(df, teachers, settings, lambda r: pct(r.single_mean, r.ensemble)),
        "",
        "## The paper (Allen-Zhu & Li, Figure 3), same cells",
        "",
        *_grid(df, teachers, settings, lambda r: pct(r.paper_single, r.paper_ensemble)),
        "",
        "## Ensemble gain (ensemble − single, points): ours / paper; ± = std of the single students",
        "",
        *_grid(df, teachers, settings, lambda r: f"{sgn(r.gain)} ± {r.single_std:.1f} / {sgn(r.paper_gain)}"),
        "",
    ]
    return "\n".join(out)


def verdict(df, cfg: GaussianConfig) -> dict:
    """The claim "ensembles give ~no gain on Gaussian-like data", from the mean gain over cells."""
    from ntk_vs_nn import paper

    ok = df[df.status == "ok"]
    gains = ok.gain.to_numpy()
    band = np.maximum(2 * ok.single_std.to_numpy(), 0.2)
    nn_ref = paper.load("nn")
    real = {ds: float((g.ensemble_acc - g.single_mean_acc).mean()) for ds, g in nn_ref.groupby("dataset")}
    fig3 = paper.load("gaussian")
    fig3_gain = (fig3.ensemble_acc - fig3.single_acc).to_numpy()
    mean = float(gains.mean()) if len(gains) else float("nan")
    if not len(gains):
        word = "inconclusive"
    elif mean < cfg.claim.holds_below:
        word = "holds"
    elif mean > cfg.claim.fails_above:
        word = "fails"
    else:
        word = "inconclusive"
    return dict(
        verdict=word,
        cells=len(gains),
        mean_gain=mean,
        median_gain=float(np.median(gains)) if len(gains) else float("nan"),
        min_gain=float(gains.min()) if len(gains) else float("nan"),
        max_gain=float(gains.max()) if len(gains) else float("nan"),
        significant=int((gains > band).sum()),
        paper_cells=len(fig3_gain),
        paper_mean_gain=float(fig3_gain.mean()),
        paper_min_gain=float(fig3_gain.min()),
        paper_max_gain=float(fig3_gain.max()),
        paper_matched_mean_gain=float(ok.paper_gain.mean()),
        real_gain=real,
    )


def summary_md(df, cfg: GaussianConfig, v: dict, command: str, wall_s: float) -> str:
    by_teacher = df.groupby("teacher", sort=False).gain.mean()
    by_setting = df.groupby("setting", sort=False).gain.mean()
    real = ", ".join(f"{ds} {g:+.2f}" for ds, g in v["real_gain"].items())
    lines = [
        "# Figure 3 (Gaussian-like data): summary",
        "",
        f"Command: `{command}`",
        f"Wall time: {wall_s:.0f} s ({wall_s / 60:.1f} min) for {len(df)} cells "
        f"({len(set(df.teacher))} teachers x {len(set(df.setting))} settings, L = {cfg.student.members}).",
        "",
        f"**Claim** (PROTOCOLS §5, paper Fig. 3): ensembles give ~no gain on such data. **Verdict: {v['verdict']}** "
        f"(rule: mean gain over cells < {cfg.claim.holds_below:g} points holds, > {cfg.claim.fails_above:g} fails).",
        "",
        f"- ours: mean ensemble gain {v['mean_gain']:+.2f} points over {v['cells']} cells (median "
        f"{v['median_gain']:+.2f}, range {v['min_gain']:+.2f} … {v['max_gain']:+.2f}); {v['significant']} of "
        f"{v['cells']} cells gain more than max(2σ_single, 0.2).",
        f"- the paper's Figure 3: mean gain {v['paper_mean_gain']:+.2f} over its {v['paper_cells']} cells (range "
        f"{v['paper_min_gain']:+.1f} … {v['paper_max_gain']:+.1f}); {v['paper_matched_mean_gain']:+.2f} over the "
        "cells we ran.",
        f"- real data, the paper's Figure 1 nets (mean over its 6 nets per dataset): {real}.",
        "",
        "Mean gain by teacher: " + ", ".join(f"{t} {g:+.2f}" for t, g in by_teacher.items()) + ".",
        "",
        "Mean gain by setting: " + "; ".join(f"{setting_label(s)} {g:+.2f}" for s, g in by_setting.items()) + ".",
        "",
        "Tables: `table.md` (ours, the paper's, the gains), `table.csv` (tidy, with acc_by_size, train accuracy, "
        "class balance and acceptance rate per cell).",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- driver
def _read_cells(path: str, h: str) -> dict:
    done = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash: that cell is trained again
                if r.get("config_hash") == h:
                    done[(r["teacher"], r["setting"])] = r
    return done


def run(cfg: GaussianConfig, out: str, command: str, log=print) -> dict:
    """Train every (teacher, setting) cell not already in OUT/cells.jsonl; write the outputs."""
    from ntk_vs_nn.store import Store, atomic_write

    t0 = time.perf_counter()
    Store.prepare(out)
    atomic_write(os.path.join(out, "config.json"), json.dumps(dataclasses.asdict(cfg), indent=1, default=list))
    h = cfg.science_hash()
    cells_path = os.path.join(out, "cells.jsonl")
    done = _read_cells(cells_path, h)
    root = jax.random.key(cfg.run.seed)
    todo = [(t, s) for t in cfg.grid.teachers for s in cfg.settings]
    trainers, teachers = {}, {}
    for n, (t, s) in enumerate(todo, 1):
        if (t, s) in done:
            continue
        c0 = time.perf_counter()
        if t not in teachers:
            teachers[t] = Teacher(t, cfg, root)
        teacher = teachers[t]
        data = make_cell_data(teacher, s, cfg, root)
        res = train_cell(data, t, cfg, root, trainers)
        st_tr = data["stats"][0]
        share = np.array(st_tr["class_counts"]) / cfg.data.n_train
        rec = dict(
            config_hash=h, teacher=t, setting=s, **parse_setting(s), n_members=cfg.student.members, **res,
            train_class_min=float(share.min()), train_class_max=float(share.max()),
            accept_rate_train=st_tr["accept_rate"],
            noise_flipped=float(np.mean(data["y_train"] != data["y_train_clean"])),
            wall_s=round(time.perf_counter() - c0, 2),
        )  # fmt: skip
        with open(cells_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        done[(t, s)] = rec
        log(
            f"[{n}/{len(todo)}] {t:8s} {s}: single {res['single_mean']:.1f} ± {res['single_std']:.1f}, "
            f"ensemble {res['ensemble']:.1f} ({res['gain']:+.1f}), train {res['train_acc_mean']:.0f}%, "
            f"{rec['wall_s']:.0f} s"
        )
    df = tidy([done[c] for c in todo])
    v = verdict(df, cfg)
    wall = time.perf_counter() - t0
    atomic_write(os.path.join(out, "table.csv"), df.to_csv(index=False))
    atomic_write(os.path.join(out, "table.md"), markdown(df, cfg))
    atomic_write(os.path.join(out, "summary.md"), summary_md(df, cfg, v, command, wall))
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def cli(argv, prog: str, description: str, presets: dict, run_fn, default_out: str) -> int:
    """Shared command line of the figure scripts: ``--out DIR --set key=value ...``; a bad input is one
    ``error:`` line on stderr and exit code 2, with nothing written."""
    p = _Parser(prog=f"python -m {prog}", description=description)
    p.add_argument("--out", default=default_out)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:  # tensorflow-datasets (cifar) logs through absl: keep a missing dataset to our one error line
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    command = f"python -m {prog} " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        cfg = config_from_sets(args.set, presets)
        v = run_fn(cfg, args.out, command.strip(), log)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(open(os.path.join(args.out, "table.md")).read())
    log(f"wrote {args.out}/{{table.md,table.csv,config.json,summary.md}}; claim: {v['verdict']}")
    return 0


def main(argv=None) -> int:
    return cli(
        argv, "ntk_vs_nn.experiments.gaussian", "Figure 3: ensembles on Gaussian-like data (Allen-Zhu & Li).", PRESETS, run,
        "results/gaussian",
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

"""Figure 3 of Allen-Zhu & Li: ensembles on Gaussian-like data labelled by random teachers (PROTOCOLS §5).

    ntk-vs-nn run gaussian [--preset cpu|paper|smoke] [--set section.field=value ...] [--out DIR]

Data (`data.gaussian`): x ~ N(0, I) or a Gaussian mixture, labelled by a fixed random teacher
(linear, fc2, fc3, res3, conv2, conv3, resconv3: `models.small.GaussNet`); a *setting* is
``margin/noise/sampling/input``. Students are the teacher's architecture, ``student.widen`` (fc, res)
or ``student.conv_widen`` (conv, for CPU time) times wider (a ``linear`` teacher gets an fc2 student,
``student.linear_as``: a linear student is a convex problem, every member would reach the same
solution and "no ensemble gain" would hold trivially). L = ``student.members`` students per cell
(`protocols.members_and_ensemble`); single = mean of the L test accuracies, ensemble = the logit
average (the paper's "xx% (yy%)").

Presets:

  cpu    (default) the 7 teachers x 5 settings chosen one factor at a time around the base
         nomargin/clean/uniform/gaussian (+ rejection, + mixture, + 10% noise, + margin);
         d = 100, k = 10, N = 10,000 train / 10,000 test (PROTOCOLS §5), L = 5 students, 12 epochs
         (Adam 3e-3, cosine, batch 128); students 4x (fc, res) / 2x (conv) the teacher's width.
  paper  the full grid of Figure 3: 7 teachers x 16 settings, L = 10, 30 epochs (~25x the cpu cost).
  smoke  seconds; what the tests run (numbers meaningless).

Store: one record per (teacher, setting) cell, unit ``<config hash>/<teacher>/<setting>``, after its
students' (units ``<cell>/<student>/single-<i>`` of the shared path, `protocols.units`, with their logits);
a rerun skips the recorded cells and loads a cut-short cell's recorded students. Outputs
(`report.gaussian`, from the records): table.md, table.csv, summary.md, claims.csv. The claim ("~no
gain") is d = ``claim.holds_below`` - the mean gain over the cells with a percentile-bootstrap interval
over the cells, decided by `verdict.decide_interval`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ntk_vs_nn import rng
from ntk_vs_nn.config import TrainConfig, UserError, hash_dict
from ntk_vs_nn.config.base import IntervalConfig
from ntk_vs_nn.data.gaussian import TEACHERS, TOKENS, draw_inputs, make_cell_data, parse_setting, width
from ntk_vs_nn.engine.batching import apply_rows
from ntk_vs_nn.experiments import Experiment, Written, registration
from ntk_vs_nn.models.small import GaussNet
from ntk_vs_nn.protocols import members_and_ensemble, module_trainer
from ntk_vs_nn.protocols.units import Units, unit_name
from ntk_vs_nn.report import gaussian as report
from ntk_vs_nn.store import atomic_write

PAPER_SETTINGS = tuple(  # the paper's column order (noise, sampling, input), margin as the row block
    f"{m}/{n}/{s}/{i}" for m in TOKENS[0] for n in TOKENS[1] for s in TOKENS[2] for i in TOKENS[3]
)
CPU_SETTINGS = (
    "nomargin/clean/uniform/gaussian",
    "nomargin/clean/rejection/gaussian",
    "nomargin/clean/uniform/mixture",
    "nomargin/noise/uniform/gaussian",
    "margin/clean/uniform/gaussian",
)


_APPLY: dict = {}  # (module, chunk) -> its compiled chunked apply, shared by teachers and seeds


class Teacher:
    """A fixed random network and its normalised logit function ``logits(x) -> (n, k)`` (numpy)."""

    def __init__(self, arch: str, cfg, root):
        self.arch, self.cfg = arch, cfg
        module = GaussNet(arch, width(arch, cfg), cfg.data.k, cfg.teacher.kernel)
        key = rng.member_key(root, "gaussian.teacher", TEACHERS.index(arch))
        self.params = module.init(key, jnp.zeros((1, cfg.data.d)))
        if (module, cfg.data.chunk) not in _APPLY:
            _APPLY[module, cfg.data.chunk] = apply_rows(module.apply, cfg.data.chunk)
        self._apply = _APPLY[module, cfg.data.chunk]
        self.mix_key = rng.stream(root, "gaussian.mixture")
        self.probe_key = rng.stream(root, "gaussian.probe")
        self._scale = {}

    def raw(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._apply(self.params, x))

    def logits(self, x: np.ndarray, kind: str) -> np.ndarray:
        """(raw - offset) / scale: offset the per-class mean logit (``teacher.center``; else 0) and scale
        the std of the offset logits, both over 8,192 probe draws of input ``kind`` (computed once)."""
        if kind not in self._scale:
            probe = self.raw(draw_inputs(self.probe_key, 8192, kind, self.cfg, self.mix_key))
            offset = probe.mean(0) if self.cfg.teacher.center else np.zeros(probe.shape[1], np.float32)
            self._scale[kind] = (offset, float((probe - offset).std()) + 1e-12)
        offset, scale = self._scale[kind]
        return (self.raw(x) - offset) / scale


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
class ClaimConfig(IntervalConfig):
    """The claim's rule (not in the science hash): d = holds_below - mean gain over the cells, with a
    percentile-bootstrap interval over the cells (`report.gaussian.claim`)."""

    holds_below: float = 0.5  # "no gain": the mean ensemble gain (points) is below this
    fit_threshold: float = 99.0  # a cell "fits" when its students' mean train accuracy (%, on the labels
    #                              they trained on, noisy ones included) reaches this: the premise
    overfit_margin: float = 10.0  # a fitting cell "over-fits" when its single test accuracy is this many
    #                               points below the paper's for the same cell
    fails_above: float = 1.0  # unused since the claim is decided on an interval (one threshold); kept so
    #                           that config.json files saved with it still load


@dataclass(frozen=True)
class RunSection:
    seed: int = 0
    members: str = "sequential"  # sequential | unrolled | vmap (engine.Trainer modes)
    progress: bool = False


@dataclass(frozen=True)
class GaussianConfig:
    """Figure 3's config (sections are frozen, so one default instance each is shared safely)."""

    preset: str = "cpu"
    data: GaussDataConfig = GaussDataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    grid: GridConfig = GridConfig()
    train: TrainConfig = TrainConfig(epochs=12, lr=3e-3, batch_size=128)
    claim: ClaimConfig = ClaimConfig()
    run: RunSection = RunSection()

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
        return hash_dict(d)

    def cells(self) -> list[tuple[str, str]]:
        return [(t, s) for t in self.grid.teachers for s in self.settings]


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


# ----------------------------------------------------------------------------------------------- run
def unit(cfg: GaussianConfig, teacher: str, setting: str) -> str:
    return f"{cfg.science_hash()}/{teacher}/{setting}"


def train_cell(data: dict, arch: str, cfg: GaussianConfig, root, trainers: dict, ledger: Units | None = None,
               setting: str = "") -> dict:  # fmt: skip
    """Train L students on one cell; returns single/ensemble accuracies (percent). ``ledger``: each student
    is a unit of it (`protocols.units.Units`), ``{cell}/{student}/single-{i}``, trained unless recorded."""
    student = cfg.student.linear_as if arch == "linear" else arch
    if student not in trainers:
        conv = student.startswith(("conv", "resconv"))
        module = GaussNet(student, width(student, cfg) * (cfg.student.conv_widen if conv else cfg.student.widen),
                          cfg.data.k, cfg.teacher.kernel)  # fmt: skip
        trainers[student] = module_trainer(module, cfg.train, len(data["x_train"]), cfg.run.progress)
    base = rng.stream(root, "gaussian.student")
    keys = [[jax.random.fold_in(jax.random.fold_in(base, s), i) for i in range(cfg.student.members)] for s in (1, 2)]
    h, cell = cfg.science_hash(), f"{arch}/{setting}"
    names = [unit_name(h, cell, "single", i, student) for i in range(cfg.student.members)] if ledger else None
    record = dict(config_hash=h, teacher=arch, setting=setting, student=student)
    res = members_and_ensemble(trainers[student], *keys, [(data["x_train"], data["x_test"])], data["y_train"],
                               data["y_test"], cfg.run.members, score_train=True, ledger=ledger, names=names,
                               record=record)  # fmt: skip
    return dict(student=student, **res)


def run(cfg: GaussianConfig, store, log=lambda s: None) -> None:
    """Train every (teacher, setting) cell that ``store`` does not hold yet, one record per cell; its
    students are units (`protocols.units`), so a cell cut short resumes from its recorded students."""
    h = cfg.science_hash()
    ledger = Units(store, h)
    root = jax.random.key(cfg.run.seed)
    todo = cfg.cells()
    trainers, teachers = {}, {}
    for n, (t, s) in enumerate(todo, 1):
        if ledger.recorded([unit(cfg, t, s)]) is not None:
            continue
        c0 = time.perf_counter()
        if t not in teachers:
            teachers[t] = Teacher(t, cfg, root)
        data = make_cell_data(teachers[t], s, cfg, root)
        res = train_cell(data, t, cfg, root, trainers, ledger, s)
        share = np.array(data["stats"][0]["class_counts"]) / cfg.data.n_train
        rec = ledger.save_and_record(unit(cfg, t, s), None, dict(
            config_hash=h, teacher=t, setting=s, **parse_setting(s),
            n_members=cfg.student.members, **res, train_class_min=float(share.min()),
            train_class_max=float(share.max()), accept_rate_train=data["stats"][0]["accept_rate"],
            noise_flipped=float(np.mean(data["y_train"] != data["y_train_clean"])),
            wall_s=round(time.perf_counter() - c0, 2),
        ))  # fmt: skip
        log(
            f"[{n}/{len(todo)}] {t:8s} {s}: single {res['single_mean']:.1f} ± {res['single_std']:.1f}, "
            f"ensemble {res['ensemble']:.1f} ({res['gain']:+.1f}), train {res['train_acc_mean']:.0f}%, "
            f"{rec['wall_s']:.0f} s"
        )


def write(cfg: GaussianConfig, store) -> Written:
    """table.md, table.csv, summary.md and claims.csv from the cells' records (the cells of ``cfg`` that
    are recorded)."""
    done = store.done(cfg.science_hash())
    cells = [done[unit(cfg, t, s)] for t, s in cfg.cells() if unit(cfg, t, s) in done]
    if not cells:
        raise UserError(f"{store.out_dir}: no Figure-3 records of config {cfg.science_hash()}; nothing to write")
    df = report.tidy(cells, cfg)
    v = report.claim(df, cfg)
    md = report.markdown(df, cfg)
    out = store.out_dir
    atomic_write(os.path.join(out, "table.csv"), df.to_csv(index=False))
    atomic_write(os.path.join(out, "table.md"), md)
    command = registration.run_command("gaussian", cfg, PRESETS, store.out_dir)
    atomic_write(os.path.join(out, "summary.md"), report.summary_md(df, cfg, v, command))
    atomic_write(os.path.join(out, "claims.csv"), report.claims_frame(v, cfg).to_csv(index=False))
    missing = f" ({len(cfg.cells()) - len(cells)} cells not recorded yet)" if len(cells) < len(cfg.cells()) else ""
    claim = (
        f"Figure 3: ensembles give ~no gain on Gaussian-like data (mean gain {v['mean_gain']:+.2f} points; "
        f"d = {cfg.claim.holds_below:g} - mean gain = {v['d']:+.2f} [{v['ci_low']:+.2f}, {v['ci_high']:+.2f}])"
    )
    fit = (
        f"the same on the {v['fit_cells']} of {v['cells']} cells that fit their training set: d = {v['fit_d']:+.2f} "
        f"[{v['fit_ci_low']:+.2f}, {v['fit_ci_high']:+.2f}]"
    )
    return Written(md, [f"{claim}: {v['verdict']}{missing}", f"Figure 3, {fit}: {v['fit_verdict']}"], {"table": md})


DESCRIPTION = "Figure 3: ensembles on Gaussian-like data labelled by random teachers (Allen-Zhu & Li)"
EXPERIMENT = Experiment("gaussian", DESCRIPTION, GaussianConfig, PRESETS, run, write, top_level=())

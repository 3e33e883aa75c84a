"""Allen-Zhu & Li's theorem on multi-view data, for nn, ntk and gp (PROTOCOLS §6; arXiv 2012.09816).

    ntk-vs-nn run multiview [--preset default|smoke] [--set section.field=value ...] [--out DIR]

Per family on each of ``protocol.draws`` data draws (`data.multiview`): ``protocol.seeds`` single models
(differing only in their init; nn and ntk share inits), their logit-average ensemble, one KD student of
the ensemble and ``protocol.sd_students`` SD students (student i of single i), all trained by full-batch
GD through the shared engine (`engine.trainer`, `families`: nn = `models.multiview.PatchNet`, ntk its
linearisation, gp `RandomFeatures` with a trained head; ntk and gp step ``learner.kernel_lr /
lambda_max`` with heavy-ball momentum ``learner.kernel_momentum`` for ``learner.kernel_steps`` steps, 0 =
``learner.steps``; both left out of the hash at their neutral 0). Test error ``(1 - mu) err_mv + mu
err_sv`` is reported in units of mu beside the theorem (single 0.49-0.51 mu, ensemble and KD <= 0.01 mu,
SD <= 0.26 mu); then a sweep over mu (nn, on draw 0 only). Every statement and the KD / SD claims are
differences d with percentile-bootstrap intervals (the data draws resampled, then within each the models,
then each protocol's test errors; ``claim.n_boot``, ``claim.level``, ``claim.boot_seed``), decided by
`verdict.decide_interval`. Data draw d is exactly the run of ``--set protocol.seed=SEED+d`` (its data,
its inits, its units' hash), trained through the same unit path, so ``draws = 1`` is the one-draw run
and raising ``draws`` on a finished folder trains only the new draws. Every trained model is a unit of
the store; the ensembles are recorded from their members' saved logits.

The regime (``default``). The theorem is asymptotic in ``k``; at ``k = 10`` these are the choices that
make its mechanism visible. The search behind them (one factor at a time around a base with
``sigma0 = 0.04``, L = 5 singles, one data draw) is ``scripts/multiview_search.py`` ->
``results/multiview/search.{csv,md}``:

* ``sigma0 = 0.1``, ``varrho = 4``: the paper's ``sigma0^(q-2) = 1/k`` and an init far below the
  threshold, so ``<w, v>`` grows as a power method and the view with the larger initial
  ``max_r <w_{j,r}, v_{j,l}>`` wins; ``varrho = 4`` keeps the fit of the multi-view data (logit margin
  ~ 4) near the threshold, so the losing view is still in the slow polynomial phase when the data are
  fitted. ``varrho = sigma0 = 0.1`` learned both views of every class; over ``sigma0`` = 0.04 / 0.1 /
  0.2 / 0.4 the single error fell 0.38 / 0.33 / 0.29 / 0.24 mu while KD improved 0.10 / 0.065 / 0.048 /
  0.012 mu; 0.1 is nearest to the theorem's four numbers.
* ``n_train = 400, mu = 0.1``: ``mu N / 2k = 2`` single-view samples per (class, view), the
  "insufficient left-over samples"; with 20 of them (N = 2000, mu = 0.2) they pulled the lagging view up.
* ``noise = 1.5`` on noise-only patches, ``feature_noise = 0.2`` on feature patches: the leftovers are
  memorised through the noise patches while a feature dominates its patch; one level cannot do both at
  ``d = 100`` (norm 1 or 0.5: both views in ~50 % of classes; 2.5: multi-view data memorised too).
* ``rho = 0.05 < gamma = 0.4``: the paper's ``rho = k^-0.01`` is asymptotically below ``Gamma``, so the
  weak view cannot rescue a single-view point of an unlearned view (it matters little here).
* ``patches_per_feature = 1``, ``n_other = 4``: a feature's ``z^q`` gradient is not diluted, and four
  other-class features per sample are the ensemble's "dark knowledge" (2 patches: KD 0.40 mu;
  ``n_other = 2``: KD 0.13 mu).
* ``q = 3``, ``m = 4``, ``lr = 8`` for 1,500 steps: ``m = 2`` left classes with no neuron on either view,
  ``m = 8`` made the views' maxima closer; ``q = 4``: KD 0.26 mu; the step is large because the
  polynomial phase has tiny gradients; the singles reach 100 % training accuracy.
* KD and SD: ``engine.distill_loss`` with ``alpha = 0.5, tau = 4``, the best of (0.5, 4), (0.5, 10),
  (0.9, 4), (1, 10) in the search; with ``alpha = 1`` an SD student copies its teacher's views.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ntk_vs_nn import rng
from ntk_vs_nn.config import TrainConfig, UserError, hash_dict
from ntk_vs_nn.config.base import IntervalConfig
from ntk_vs_nn.config.validate import check_kd
from ntk_vs_nn.data.multiview import MultiViewData, draw_data
from ntk_vs_nn.engine.optim import lambda_max
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.experiments import Experiment, Written, registration
from ntk_vs_nn.families import last_layer, linearized, network
from ntk_vs_nn.models.multiview import PatchNet, RandomFeatures
from ntk_vs_nn.protocols.units import Units, distill_teacher, ensemble_of, unit_name
from ntk_vs_nn.report import multiview as report
from ntk_vs_nn.store import atomic_write

FAMILIES = ("nn", "ntk", "gp")


@dataclass(frozen=True)
class LearnerSection:
    m: int = 4  # neurons per class
    varrho: float = 4.0  # smoothed-ReLU threshold
    q: int = 3  # smoothed-ReLU power
    sigma0: float = 0.1  # init std of each weight
    lr: float = 8.0  # full-batch GD step of nn
    steps: int = 1500  # GD steps of every family
    kernel_lr: float = 1.0  # GD step of ntk and gp in units of 1 / lambda_max (J^T J / n at init)
    gp_width: int = 512  # random features of gp
    kernel_momentum: float = 0.0  # heavy-ball momentum of ntk and gp's GD (optax.sgd's trace; 0 = plain GD)
    kernel_steps: int = 0  # GD steps of ntk and gp (0 = learner.steps)

    def __post_init__(self):
        if min(self.m, self.steps, self.gp_width) < 1:
            raise UserError("learner.m, learner.steps and learner.gp_width must be >= 1")
        if self.q < 2 or min(self.varrho, self.sigma0, self.lr, self.kernel_lr) <= 0:
            raise UserError("learner.q >= 2 and learner.varrho, sigma0, lr, kernel_lr > 0 required")
        if not 0.0 <= self.kernel_momentum < 1.0 or self.kernel_steps < 0:
            raise UserError("learner.kernel_momentum must be in [0, 1) and learner.kernel_steps >= 0 (0 = steps)")

    @property
    def kernel_epochs(self) -> int:
        """The GD steps of ntk and gp: ``kernel_steps``, or ``steps`` when it is 0."""
        return self.kernel_steps or self.steps


@dataclass(frozen=True)
class ProtocolSection:
    seeds: int = 10  # L: single models (= ensemble size) per family
    sd_students: int = 5  # SD students (student i distils single i), <= seeds
    kd_alpha: float = 0.5  # weight of the distillation term of engine.distill_loss
    kd_tau: float = 4.0  # distillation temperature
    families: tuple[str, ...] = FAMILIES
    seed: int = 0  # root seed of the data draw and every init (data draw d: seed + d)
    draws: int = 1  # independent data draws of the main point, each with its own inits (the sweep: draw 0)


@dataclass(frozen=True)
class SweepSection:
    mus: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2)  # mu of each sweep point (() = no sweep)
    families: tuple[str, ...] = ("nn",)
    seeds: int = 5
    sd_students: int = 2

    def __post_init__(self):
        mus = self.mus if isinstance(self.mus, (tuple, list)) else (self.mus,)
        if not all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in mus):
            raise UserError(f"--set sweep.mus: expected comma-separated numbers, got {self.mus!r}")
        object.__setattr__(self, "mus", tuple(float(m) for m in mus))
        if any(not 0.0 < m <= 1.0 for m in self.mus):
            raise UserError("sweep.mus must lie in (0, 1]")


@dataclass(frozen=True)
class ClaimSection(IntervalConfig):
    """The intervals of the statements and claims (`report.multiview.family_draws`); not in the hash."""


@dataclass(frozen=True)
class MultiViewConfig:
    preset: str = "default"
    data: MultiViewData = field(default_factory=MultiViewData)
    learner: LearnerSection = field(default_factory=LearnerSection)
    protocol: ProtocolSection = field(default_factory=ProtocolSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    claim: ClaimSection = field(default_factory=ClaimSection)

    def __post_init__(self):
        p, s = self.protocol, self.sweep
        if p.seeds < 1 or s.seeds < 1:
            raise UserError("protocol.seeds and sweep.seeds must be >= 1")
        if p.draws < 1:
            raise UserError(f"protocol.draws must be >= 1 (independent data draws), got {p.draws}")
        if not 0 <= p.sd_students <= p.seeds or not 0 <= s.sd_students <= s.seeds:
            raise UserError("sd_students must be in [0, seeds] (protocol and sweep)")
        check_kd(p.kd_alpha, p.kd_tau, tau_auto=False)
        for fam in p.families + s.families:
            if fam not in FAMILIES:
                raise UserError(f"unknown family {fam!r}; valid: {', '.join(FAMILIES)}")

    def points(self) -> list[tuple[float, tuple[str, ...], int, int]]:
        """(mu, families, singles, SD students): the main point, then the sweep's."""
        p, s = self.protocol, self.sweep
        return [(self.data.mu, p.families, p.seeds, p.sd_students)] + [
            (m, s.families, s.seeds, s.sd_students) for m in s.mus
        ]

    def drawn(self, d: int) -> MultiViewConfig:
        """The config of data draw ``d``: root seed ``protocol.seed + d`` for its data and every init, as a
        run with ``--set protocol.seed=SEED+d`` (so its units are named by that seed's hash)."""
        return self if d == 0 else dataclasses.replace(self, protocol=dataclasses.replace(
            self.protocol, seed=self.protocol.seed + d))  # fmt: skip

    def runs(self) -> list[tuple[MultiViewConfig, float, tuple[str, ...], int, int]]:
        """(the draw's config, mu, families, singles, SD students) in training order: the main point of
        every data draw, then the sweep's points (draw 0 only)."""
        main, *sweep = self.points()
        return [(self.drawn(d), *main) for d in range(self.protocol.draws)] + [(self, *pt) for pt in sweep]

    def science_hash(self, mu: float | None = None, students: bool = True) -> str:
        """The hash of what changes a model's numbers at ``mu`` (default ``data.mu``): the data, the
        learner and the seed, and for the students (``students=True``) the distillation settings; not
        the protocol sizes, the families, the number of data draws or the sweep (the units name those)."""
        data = dataclasses.replace(self.data, mu=self.data.mu if mu is None else float(mu))
        learner = dataclasses.asdict(self.learner)
        # kernel_momentum and kernel_steps came after results/multiview was trained: at their neutral value
        # (plain GD for learner.steps; kernel_steps = steps is that too) they are left out, so every unit
        # recorded before they existed keeps its name
        if learner["kernel_momentum"] == 0.0:
            del learner["kernel_momentum"]
        if learner["kernel_steps"] in (0, learner["steps"]):
            del learner["kernel_steps"]
        d = {"data": dataclasses.asdict(data), "learner": learner, "seed": self.protocol.seed}
        return hash_dict({**d, "kd": [self.protocol.kd_alpha, self.protocol.kd_tau]} if students else d)


def default() -> MultiViewConfig:
    return MultiViewConfig()


def smoke() -> MultiViewConfig:
    """Seconds: k = 3 classes, 60 samples, 30 steps (numbers meaningless)."""
    return MultiViewConfig(
        preset="smoke",
        data=MultiViewData(k=3, d=20, P=8, n_train=60, n_test=60, n_other=2),
        learner=LearnerSection(steps=30, gp_width=16),
        protocol=ProtocolSection(seeds=2, sd_students=1),
        sweep=SweepSection(mus=(0.1, 0.2), seeds=2, sd_students=1),
    )


PRESETS = {"default": default, "smoke": smoke}


def learner_family(name: str, cfg: MultiViewConfig):
    """nn / ntk / gp of the multi-view learner as a `families.ModelFamily`."""
    lr, k = cfg.learner, cfg.data.k
    net = PatchNet(k, lr.m, lr.varrho, lr.q, lr.sigma0)
    if name == "gp":
        rf = RandomFeatures(k, lr.gp_width, lr.varrho, lr.q, lr.sigma0)
        return last_layer(network(rf, rf.draw))
    return network(net, net.draw) if name == "nn" else linearized(network(net, net.draw))


def view_threshold(cfg: MultiViewConfig) -> float:
    """A view counts as learned when ``max_r <w, v> >= varrho * patches_per_feature / own_low``: the
    neuron's pre-activation on the view's patches then reaches the smoothed ReLU's linear part."""
    return cfg.learner.varrho * cfg.data.patches_per_feature / cfg.data.own_low


def learned_views(W: jax.Array, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(k, 2)`` ``max_r <w_{j,r}, v_{j,l}>`` of ``(k, m, d)`` weights and ``(k,)`` the larger view."""
    corr = jnp.einsum("jrd,jld->jrl", W, features).max(axis=1)
    return corr, jnp.argmax(corr, axis=1)


def fit_one(trainer: Trainer, key, x, y, teacher=None, alpha: float = 0.0, tau: float = 1.0):
    """One model of ``trainer``'s family by full-batch GD from the init ``key``: ``(variables, seconds)``.
    ntk and gp step ``train.lr / lambda_max`` (`engine.optim.lambda_max` at the init)."""
    t0 = time.perf_counter()
    scales = None
    if trainer.family.name != "nn":
        scales = [1.0 / float(lambda_max(trainer.family, trainer.family.init(key, x[:1]), x))]
    teachers = None if teacher is None else np.asarray(teacher)[None]
    res = trainer.fit([key], [key], x, y, teachers, alpha, tau, mode="sequential", lr_scales=scales)
    return res.variables[0], time.perf_counter() - t0


def units(cfg, mu, families, L, S) -> list[tuple[str, str, str, int]]:
    """(unit, family, protocol, member) of one point, in training order; ensemble and KD name their L
    (`protocols.units.unit_name` without a model: one learner per family). Singles and ensembles are named
    by ``science_hash(mu, students=False)``, students by the full hash."""
    h, hs, out = cfg.science_hash(mu, students=False), cfg.science_hash(mu), []
    for fam in families:
        out += [(unit_name(h, fam, "single", i), fam, "single", i) for i in range(L)]
        out += [(unit_name(h, fam, "ensemble", f"L{L}"), fam, "ensemble", -1)]
        out += [(unit_name(hs, fam, "kd", f"L{L}"), fam, "kd", -1)]
        out += [(unit_name(hs, fam, "sd", i), fam, "sd", i) for i in range(S)]
    return out


def _done(cfg: MultiViewConfig, store, mu: float) -> dict[str, dict]:
    """{unit: record} of the point at ``mu`` (singles and students)."""
    return _units(cfg, store, mu).known


def _units(cfg: MultiViewConfig, store, mu: float) -> Units:
    """The recorded units of the point at ``mu`` (`protocols.units.Units`: singles, ensembles and students)."""
    return Units(store, (cfg.science_hash(mu, students=False), cfg.science_hash(mu)))


def _trainer(fam: str, cfg: MultiViewConfig, trainers: dict) -> Trainer:
    """One `Trainer` per family for the whole run (one compiled program): full-batch GD, constant step;
    ntk and gp with ``learner.kernel_momentum`` (heavy ball) for ``learner.kernel_epochs`` steps."""
    if fam not in trainers:
        lp, kernel = cfg.learner, fam != "nn"
        lr, momentum = (lp.kernel_lr, lp.kernel_momentum) if kernel else (lp.lr, 0.0)
        tc = TrainConfig(optimizer="sgd", lr=lr, momentum=momentum, weight_decay=0.0, schedule="constant",
                         epochs=lp.kernel_epochs if kernel else lp.steps, batch_size=cfg.data.n_train,
                         eval_batch_size=2000)  # fmt: skip
        trainers[fam] = Trainer(learner_family(fam, cfg), tc, cfg.data.n_train)
    return trainers[fam]


def run(cfg: MultiViewConfig, store, log=lambda s: None) -> None:
    """Train every model of every point that ``store`` lacks; record it (and each ensemble) as a unit
    with its train and test logits, through the shared unit path (`protocols.units`): a finished unit
    is loaded instead of retrained (`Units.train_unless_recorded`), its predictions saved before its
    record; the ensemble is `ensemble_of` its singles, a student's targets are `distill_teacher`'s. The
    main point runs once per data draw (`MultiViewConfig.runs`: draw d as ``protocol.seed + d``), the
    sweep on draw 0."""
    trainers = {}
    for dc, mu, families, L, S in cfg.runs():
        ledger = _units(dc, store, mu)
        todo = [u for u in units(dc, mu, families, L, S) if ledger.finished([u[0]]) is None]
        data = draw_data(dataclasses.replace(dc.data, mu=mu), dc.protocol.seed) if todo else None
        tag = f" seed={dc.protocol.seed}" if cfg.protocol.draws > 1 else ""
        for unit, fam, protocol, i in todo:
            train = functools.partial(_train_unit, dc, ledger, data, trainers, mu, unit, fam, protocol, i, L)
            rec = ledger.train_unless_recorded([unit], train)[0]
            if protocol != "ensemble":
                log(f"[{fam} mu={mu:g}{tag}] {protocol} {max(i, 0) + 1}: {rec['error_mu']:.3f} mu "
                    f"({rec['seconds']:.1f} s)")  # fmt: skip


def _train_unit(cfg: MultiViewConfig, ledger: Units, data: dict, trainers: dict, mu: float, unit: str, fam: str,
                protocol: str, i: int, L: int) -> tuple[dict, dict]:  # fmt: skip
    """``(predictions, record)`` of one unit of the point at ``mu``: a single from its init key; the
    ensemble of the L singles' saved logits; the KD student of that ensemble, SD student i of single i
    (`engine.distill_loss` with ``protocol.kd_alpha``, ``kd_tau``)."""
    tr, te, p = data["train"], data["test"], cfg.protocol
    rec = {"config_hash": unit.split("/")[0], "family": fam, "protocol": protocol, "member": i, "mu": mu}
    h = cfg.science_hash(mu, students=False)
    if protocol != "single":  # the teachers: the L singles (ensemble, KD), or single i (SD)
        singles = [ledger.finished([unit_name(h, fam, "single", j)])[1] for j in (range(L) if i < 0 else [i])]
    if protocol == "ensemble":  # derived from the members' saved logits
        logits = ensemble_of(singles, splits=("train", "test"))
        return logits, {**rec, "seconds": 0.0, **_scores(logits, tr, te, mu)}
    root, t = rng.root_key(p.seed), _trainer(fam, cfg, trainers)
    if protocol == "single":
        model, secs = fit_one(t, rng.member_key(root, "init", i), tr["x"], tr["y"])
    else:
        teacher = distill_teacher(protocol, singles, 0)
        model, secs = fit_one(t, rng.member_key(root, protocol, max(i, 0)), tr["x"], tr["y"], teacher, p.kd_alpha,
                              p.kd_tau)  # fmt: skip
    logits = {"train": t.predict(model, tr["x"]), "test": t.predict(model, te["x"])}
    if fam != "gp":
        rec["views"] = np.asarray(learned_views(model["params"]["W"], data["features"])[0]).tolist()
    return logits, {**rec, "seconds": secs, **_scores(logits, tr, te, mu)}


def _scores(logits: dict, tr: dict, te: dict, mu: float) -> dict:
    """A unit's training accuracy (percent) and its test errors (`report.multiview.error_row`)."""
    acc = 100 * float(np.mean(np.argmax(logits["train"], 1) == np.asarray(tr["y"])))
    return {"train_acc_pct": acc, **report.error_row(logits["test"], te, mu)}


def write(cfg: MultiViewConfig, store) -> Written:
    """Every output from the records: table, models, lottery, sweep, claims, summary; the verdicts (each
    statement and claim a d with a bootstrap interval, `report.multiview.family_draws`: with several data
    draws, over the draws too; then models.csv has a ``draw`` column and draws.csv breaks the errors down
    per draw; the lottery is draw 0's)."""
    runs = [(mu, [done[u] for u, *_ in units(dc, mu, *pt) if u in done])
            for dc, mu, *pt in cfg.runs() for done in [_done(dc, store, mu)]]  # fmt: skip
    n_draws = cfg.protocol.draws
    mains = [recs for _, recs in runs[:n_draws]]
    points, main = runs[:1] + runs[n_draws:], mains[0]  # draw 0's main point, then the sweep's
    if not main:
        raise UserError(f"{store.out_dir}: no multi-view records of config {cfg.science_hash()}; nothing to write")
    agg_at = lambda recs, mu: report.aggregate(report.models_frame(recs), mu, cfg.claim)  # noqa: E731
    sweep = [agg_at(recs, mu).assign(mu=mu) for mu, recs in points[1:] if recs]
    sweep = pd.concat(sweep, ignore_index=True) if sweep else pd.DataFrame()
    models, views = report.models_frame(main), report.views_frame(main, view_threshold(cfg))
    if n_draws > 1:  # every draw's models, named by their draw (draw 0's are main's)
        models = pd.concat([report.models_frame(r).assign(draw=d) for d, r in enumerate(mains) if r], ignore_index=True)
    agg = report.aggregate(models, cfg.data.mu, cfg.claim)
    cf = report.claim_frame(models, cfg.data.mu, cfg.claim)
    md, (lines, verdicts) = report.table_markdown(agg, cfg), report.claims(agg, cf)
    files = {"table.md": md, "table.csv": agg.to_csv(index=False), "models.csv": models.to_csv(index=False),
             "claims.csv": cf.to_csv(index=False)}  # fmt: skip
    if len(views):
        files["lottery.md"] = report.lottery_markdown(views, view_threshold(cfg))
        files["lottery.csv"] = views.to_csv(index=False)
    draw_lines = []
    if n_draws > 1:
        per_draw = report.draws_frame(models, [cfg.protocol.seed + d for d in range(n_draws)])
        files["draws.csv"], draw_lines = per_draw.to_csv(index=False), report.draws_lines(per_draw)
    if len(sweep):
        files["sweep.csv"] = sweep.to_csv(index=False)
        report.sweep_figure(sweep, os.path.join(store.out_dir, "sweep.png"))
    trained = {r["unit"]: r for _, recs in runs for r in recs if r["protocol"] != "ensemble"}.values()
    prov = {"train_s": sum(r["seconds"] for r in trained), "units": len(trained),
            "device": main[0].get("device", "?"), "jax": main[0].get("versions", {}).get("jax", "?")}  # fmt: skip
    cmd = registration.run_command("multiview", cfg, PRESETS, store.out_dir)
    files["summary.md"] = report.summary_markdown(cfg, lines, sweep, cmd, prov, draw_lines)
    for name, text in files.items():
        atomic_write(os.path.join(store.out_dir, name), text)
    return Written(md, verdicts, {"table": md})


_DESCRIPTION = "Allen-Zhu & Li's theorem on multi-view data: single, ensemble, KD, SD for nn, ntk and gp"
EXPERIMENT = Experiment("multiview", _DESCRIPTION, MultiViewConfig, PRESETS, run, write, top_level=())

"""`Row`: one (family, model) row of a table, and the five protocols, written once for every family.

single      L members from seeds 0..L-1 (init stream member i, data stream member i);
ensemble    the combination of the single members' outputs (logits by default), and its
            accuracy as a function of the ensemble size 1..L;
train_sum   one model G = mean (or sum) of L members, trained jointly; member l starts where
            single member l starts;
kd          a fresh student (its own seed streams) trained on the ensemble's outputs;
sd          S fresh students, student s trained on single member s's outputs; also the ensemble
            of the S students.

A row's units are recorded and resumed by its ledger (ledger.py), trained by execution.py with the
trainers of trainers.py.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from ntk_vs_nn import rng
from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.analysis.bootstrap import encode_correct
from ntk_vs_nn.config import INFINITE_FAMILIES, Config, UserError
from ntk_vs_nn.data import Dataset
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import KERNEL_FAMILIES, make_family, resolve_conv
from ntk_vs_nn.kernels.function_space import FunctionTrainer
from ntk_vs_nn.models import parse_model_name, split_members
from ntk_vs_nn.protocols.execution import SPLITS, Execution
from ntk_vs_nn.protocols.ledger import Ledger
from ntk_vs_nn.protocols.trainers import Trainers, check_students
from ntk_vs_nn.protocols.units import accuracy_by_size, distill_teacher, ensemble_of
from ntk_vs_nn.store import Store


def resolve_members_mode(mode: str) -> str:
    """``auto`` -> the measured default: sequential on CPU (10 members of a conv net, the only model
    kind tables use, ran 1.6x slower fused in one program than as separate fits here:
    results/benchmarks/ensemble_members.json), vmap on one accelerator, shard over several."""
    if mode != "auto":
        return mode
    if jax.default_backend() == "cpu":
        return "sequential"
    return "shard" if jax.device_count() > 1 else "vmap"


class Row(Ledger, Execution, Trainers):
    """One (family, model) row of a table: trains (`Execution`, with the trainers of `Trainers`), records
    and loads (`Ledger`) its units, by the five protocols below."""

    def __init__(
        self,
        family: str,
        model: str,
        cfg: Config,
        data: Dataset,
        store: Store,
        log: Callable[[str], None] = lambda s: None,
        pool=None,
        known_lambda: float | None = None,
    ):
        """``pool``: a `workers.Pool` that trains the units of the weights backend (None: here).
        ``known_lambda``: the row's `kernel_lambda` when already computed (a worker's row gets its parent
        row's value: the power iteration runs once per row)."""
        self.family_name, self.model, self.cfg, self.data, self.store = family, model, cfg, data, store
        self.log = log
        self._trainers, self._lambda = {}, known_lambda
        self.backend = cfg.kernel.backend if family in KERNEL_FAMILIES else "weights"
        if family in INFINITE_FAMILIES:
            self.backend = "function"
        self.augment, self.mixup = None, 0.0
        self.chance = float(100.0 * np.bincount(data.y_train).max() / len(data.y_train))
        self.hash, self.teacher_hash = cfg.science_hash(), cfg.teacher_hash()
        self.root = rng.root_key(cfg.run.seed)
        self.mode = resolve_members_mode(cfg.run.members)
        self.known, self._read_at = {}, 0  # the ledger: {unit: latest record}, read up to byte _read_at
        self.read_records()
        self.pool = pool if self.backend == "weights" else None  # function space: its kernels live here
        if self.pool is not None and self.mode != "sequential":
            raise UserError(
                f"run.workers > 1 trains one member per worker: needs run.members=sequential, not {self.mode}"
            )
        self.student_augment, self.student_mixup, self.online = None, 0.0, False
        self._teacher_vars = {}
        check_students(cfg, model)
        kd_model = cfg.protocol.kd_student or model
        if self.backend != "weights":  # function space: no network training, no augmentation
            parse_model_name(model)
            if family not in INFINITE_FAMILIES:  # (those have no students)
                self.student_inputs()  # transformed distillation inputs are an error here
                if kd_model != model:
                    raise UserError(f"protocol.kd_student={kd_model}: {family} in function space distils into itself")
            self.fam = None
            self.trainer = FunctionTrainer(family, model, cfg, data)
            return
        self.conv = conv = resolve_conv(cfg.run.conv, self.mode, data.spatial_ndim)
        self.fam = make_family(family, model, data.num_classes, data.spatial_ndim, cfg, conv)
        self.kd_fam = self.fam  # the KD students' family: protocol.kd_student's network, else the row's
        if kd_model != model:
            if family != "nn" and split_members(kd_model)[0]:
                raise UserError(f"protocol.kd_student={kd_model}: BatchEnsemble students are nets (family nn)")
            self.kd_fam = make_family(family, kd_model, data.num_classes, data.spatial_ndim, cfg, conv)
        if family == "nn" or cfg.train.augment_kernels:  # the teachers' transformations (PROTOCOLS: nets only)
            self.augment = self._augment(cfg.train.augment)
            self.mixup = cfg.train.mixup
        self.trainer = Trainer(self.fam, self.train_cfg(), len(data.x_train), cfg.run.progress, self.augment,
                               mixup=self.mixup)  # fmt: skip
        self.student_augment, self.student_mixup, self.online = self.student_inputs()

    # -- the protocols -------------------------------------------------------------------------
    def single(self, L=None, wait=True):
        """L single members (``protocol.members``); ``wait=False``: started (with a worker pool they
        train beside whatever else is submitted), returns the function that waits for them."""
        L = L or self.cfg.protocol.members
        units = [("single", i) for i in range(L)]
        pending = self.train_async(units, [rng.member_key(self.root, "init", i) for i in range(L)], self.data_keys(L))

        def done():
            got = pending()  # once: it waits for the units and logs them
            return [got[u] for u in units]

        return _settle(done, wait)

    def data_keys(self, n: int) -> list:
        """The data-order keys of singles 0..n-1: each its own (``protocol.data_order=member``), or all
        member 0's (``shared``: the order every member of the train-sum model sees)."""
        shared = self.cfg.protocol.data_order == "shared"
        return [rng.member_key(self.root, "data", 0 if shared else i) for i in range(n)]

    def ensemble(self, singles, protocol="ensemble"):
        """Combine members; record accuracy (and by size 1..L); return the combined predictions."""
        ok = [p for p in singles if p is not None]
        if not ok:
            self.record(protocol, "all", "skipped", {"reason": "no finished members"})
            return None
        rule = self.cfg.protocol.ensemble_rule
        comb = ensemble_of(ok, rule, SPLITS)
        d = self.data
        m = metrics.summary(comb["test"], d.y_test)
        m.update(metrics.calibrated(comb["val"], d.y_val, comb["test"], d.y_test))
        m["val_acc"] = metrics.accuracy(comb["val"], d.y_val)
        m["acc_by_size"] = accuracy_by_size([p["test"] for p in ok], d.y_test, rule)
        if len(ok) > 1:  # the members' diversity on test, and the DE-1..DE-L curve the DEE reads
            m.update(metrics.diversity([p["test"] for p in ok]))
            val, test = [p["val"] for p in ok], [p["test"] for p in ok]
            m["cnll_by_size"] = metrics.de_curve(val, d.y_val, test, d.y_test, rule)
        m["n_members"] = len(ok)
        loo = {}
        if len(ok) > 1:  # leave-one-out combinations: the bootstrap's member noise of a one-replicate ensemble
            members = [i for i, p in enumerate(singles) if p is not None]
            without = [metrics.combine([p["test"] for p in ok[:i] + ok[i + 1 :]], rule) for i in range(len(ok))]
            loo = {
                "loo_members": members,
                "loo_correct": [encode_correct(np.argmax(w, -1) == d.y_test) for w in without],
            }
        prev = self.known.get(self._unit(protocol, "all"))
        if prev is None or prev.get("metrics") != m or "test_correct" not in prev or any(k not in prev for k in loo):
            self.record(protocol, "all", "ok", m, test_logits=comb["test"], rule=rule, **loo)
        return comb

    def control(self, wait=True):
        """The control singles (`Config.control_members`): single member i's init and data order, trained
        as the singles are (true labels, the teachers' inputs) for the students' budget; ``wait=False``:
        started, returns the function that waits for them."""
        n = self.cfg.control_members(self.family_name)
        units = [("control", i) for i in range(n)]
        init_keys = [rng.member_key(self.root, "init", i) for i in range(n)]
        pending = self.train_async(units, init_keys, self.data_keys(n), kind="control")
        return _settle(lambda: [pending()[u] for u in units], wait)

    def wide(self, wait=True):
        """The wide control (``protocol.wide_model``): one net of that architecture trained as a single
        member is (the teachers' budget, optimiser and inputs; init and data order from its own stream),
        one unit named by the architecture; ``wait=False``: started, returns the function that waits."""
        unit = ("wide", self.cfg.protocol.wide_model)
        keys = [rng.stream(self.root, "wide")]
        pending = self.train_async([unit], keys, [jax.random.fold_in(keys[0], 1)], kind="wide")
        return _settle(lambda: pending()[unit], wait)

    def train_sum(self, wait=True):
        """The train-sum model (one unit); ``wait=False``: started, returns the function that waits."""
        # Member l of the sum gets fold_in(stream("init"), l): single member l's init key.
        pending = self.train_async(
            [("train_sum", 0)], [rng.stream(self.root, "init")], [rng.member_key(self.root, "data", 0)], kind="sum"
        )
        return _settle(lambda: pending()[("train_sum", 0)], wait)

    def students(self, singles, ens, which=("kd", "sd"), wait=True):
        """K KD students of the ensemble (student k: its own init and data order) and SD student s
        of single member s, trained together for ``protocol.student_epochs`` epochs (kernel
        families: ``kernel.student_epochs``; function space: ``kernel.student_steps`` steps; 0: as
        the teachers); ``which``: only these of the two. KD students of another network
        (``protocol.kd_student``) train apart from the SD students.

        A student whose teacher is missing (diverged, oom) is recorded as skipped. ``wait=False``:
        started, returns the function that waits for them (as `single`)."""
        p = self.cfg.protocol
        other = self.backend == "weights" and self.kd_fam is not self.fam and "kd" in which
        if other and len(which) > 1:
            kd = self.students(singles, ens, ("kd",), wait=False)
            rest = self.students(singles, ens, tuple(w for w in which if w != "kd"), wait=False)
            return _settle(lambda: {**kd(), **rest()}, wait)
        kind = "kd_student" if other else "student"
        units, teachers, teacher_test, init_keys, data_keys = [], [], [], [], []
        candidates = [("kd", k, ens) for k in range(p.kd_students) if "kd" in which] + [
            ("sd", s, singles[s] if s < len(singles) else None) for s in range(self.cfg.sd_students) if "sd" in which
        ]
        members = [i for i, p_ in enumerate(singles) if p_ is not None]  # the ensemble's
        memberwise = kind == "kd_student" and self.memberwise()
        for protocol, i, teacher in candidates:
            if memberwise and protocol == "kd" and len(members) != self.kd_fam.members:
                teacher = None  # member i of the student needs teacher i: all of them
            if teacher is None:
                self.record(protocol, i, "skipped", {"reason": "teacher did not finish"})
                continue
            units.append((protocol, i))
            if self.online:  # the teacher's single members, loaded and evaluated in every step
                teachers.append(members if protocol == "kd" else [i])
            else:
                teachers.append(distill_teacher(protocol, singles, i, ens))
            teacher_test.append(distill_teacher(protocol, singles, i, ens, split="test"))
            init_keys.append(rng.member_key(self.root, protocol, i))
            data_keys.append(rng.member_key(self.root, f"{protocol}_data", i))
        if not units:
            return _settle(dict, wait)
        tau = self.cfg.kd_tau_for(self.data.num_classes)
        pending = self.train_async(
            units, init_keys, data_keys, kind=kind, teachers=teachers, alpha=p.kd_alpha, tau=tau,
            teacher_test=teacher_test,
        )  # fmt: skip
        return _settle(pending, wait)


def _settle(done: Callable, wait: bool):
    """A protocol's result: ``done()`` (the function that waits for its units), or with ``wait=False``
    ``done`` itself, for the caller to call once it has submitted everything else."""
    return done() if wait else done


def run_row(family: str, model: str, cfg: Config, data: Dataset, store: Store, log=lambda s: None, pool=None) -> None:
    """All five protocols for one (family, model) row, and the net rows' wide control
    (``protocol.wide_model``); with a worker ``pool``, the train-sum model trains beside the students."""
    row = Row(family, model, cfg, data, store, log, pool)
    log(f"[{family} {model}] on {data.name} ({row.backend} backend)")
    if family in INFINITE_FAMILIES:  # deterministic: one member; ensembles and students equal it
        row.ensemble(row.single(1))
        for protocol, members in [("train_sum", [0]), ("kd", [0]), ("sd", range(cfg.sd_students))]:
            for i in members:
                if row.known.get(row._unit(protocol, i)) is None:
                    row.record(protocol, i, "skipped", {"reason": "deterministic infinite-width kernel = single"})
        return
    singles = row.single()
    ens = row.ensemble(singles)
    train_sum = row.train_sum(wait=False) if cfg.table.train_sum else lambda: None
    if not cfg.table.train_sum and row._done("train_sum", 0) is None:
        n = cfg.table.train_sum_replicates  # (`Config.replicate`: off in the replicates after the first n)
        why = f"table.train_sum_replicates={n}: only the first {n} replicates train it" if n else ""
        why = why or "table.train_sum=false"
        row.record("train_sum", 0, "skipped", {"reason": why})
    control = row.control(wait=False) if row.backend == "weights" else list
    wide = row.wide(wait=False) if cfg.protocol.wide_model and family == "nn" else list
    got = row.students(singles, ens)
    train_sum()
    control()
    wide()
    sd = [got.get(("sd", s)) for s in range(cfg.sd_students)]
    if any(p is not None for p in sd):
        row.ensemble(sd, protocol="sd_ensemble")

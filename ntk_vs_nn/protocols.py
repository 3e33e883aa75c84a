"""The five protocols, written once for every family.

single      L members from seeds 0..L-1 (init stream member i, data stream member i);
ensemble    the combination of the single members' outputs (logits by default), and its
            accuracy as a function of the ensemble size 1..L;
train_sum   one model G = mean (or sum) of L members, trained jointly; member l starts where
            single member l starts;
kd          a fresh student (its own seed streams) trained on the ensemble's outputs;
sd          S fresh students, student s trained on single member s's outputs; also the ensemble
            of the S students.

Each finished unit is one record in the store (see results.py); a unit already recorded for the
same config hash is loaded instead of retrained, so a rerun of the same command resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import sys
import time
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from ntk_vs_nn import rng
from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.analysis.bootstrap import encode_correct
from ntk_vs_nn.config import INFINITE_FAMILIES, PROTOCOLS, Config, UserError  # noqa: F401 - PROTOCOLS re-exported
from ntk_vs_nn.data import Dataset
from ntk_vs_nn.data.transforms import make_augment
from ntk_vs_nn.engine import workers
from ntk_vs_nn.engine.perturb import perturb
from ntk_vs_nn.engine.resume import EpochSnapshot
from ntk_vs_nn.engine.trainer import Trainer, lambda_max, progress_enabled
from ntk_vs_nn.families import KERNEL_FAMILIES, make_family, network, param_count, resolve_conv, summed  # noqa: F401
from ntk_vs_nn.kernels.function_space import FunctionTrainer
from ntk_vs_nn.models import parse_model_name, split_members
from ntk_vs_nn.store import Store, load_checkpoint, unit_id

SPLITS = ("train", "val", "test")
SNAPSHOT_EVERY_S = 600.0  # a unit part-way through training saves its progress this often (`engine.resume`)
TEACHER_PROTOCOLS = ("single", "ensemble", "train_sum")  # units named by the teacher hash (`Config.teacher_hash`)


def resolve_members_mode(mode: str) -> str:
    """``auto`` -> the measured default: sequential on CPU (10 members of a conv net, the only model
    kind tables use, ran 1.6x slower fused in one program than as separate fits here:
    results/benchmarks/ensemble_members.json), vmap on one accelerator, shard over several."""
    if mode != "auto":
        return mode
    if jax.default_backend() == "cpu":
        return "sequential"
    return "shard" if jax.device_count() > 1 else "vmap"


def _is_oom(err: Exception) -> bool:
    return isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in str(err)


class Row:
    """One (family, model) row of a table: trains, records and loads its units."""

    def __init__(
        self,
        family: str,
        model: str,
        cfg: Config,
        data: Dataset,
        store: Store,
        log: Callable[[str], None] = lambda s: None,
        pool=None,
    ):
        """``pool``: a `workers.Pool` that trains the units of the weights backend (None: here)."""
        self.family_name, self.model, self.cfg, self.data, self.store = family, model, cfg, data, store
        self.log = log
        self._trainers, self._lambda = {}, None
        self.backend = cfg.kernel.backend if family in KERNEL_FAMILIES else "weights"
        if family in INFINITE_FAMILIES:
            self.backend = "function"
        self.augment, self.mixup = None, 0.0
        self.chance = float(100.0 * np.bincount(data.y_train).max() / len(data.y_train))
        self.hash, self.teacher_hash = cfg.science_hash(), cfg.teacher_hash()
        self.root = rng.root_key(cfg.run.seed)
        self.mode = resolve_members_mode(cfg.run.members)
        self.known = {r["unit"]: r for r in store.records()}
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
        conv = resolve_conv(cfg.run.conv, self.mode, data.spatial_ndim)
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

    def _augment(self, kind):
        t = self.cfg.train
        try:
            return make_augment(kind, self.data.spatial_ndim, self.data.x_train.shape[1], t.crop_pad, t.shift, t.noise)
        except UserError as e:
            raise UserError(f"train.augment={kind} on {self.data.name}: {e}") from None

    def student_inputs(self):
        """``(augmentation, mixup alpha, online teacher?)`` of this row's KD and SD students, from
        ``protocol.kd_inputs`` and ``protocol.teacher`` (docs/protocols.md, "Distillation inputs")."""
        p, kind = self.cfg.protocol, self.cfg.protocol.kd_inputs
        if kind == "auto":  # as the teachers train
            aug, mix = self.augment, self.mixup
        else:
            aug, mix = None, 0.0
            if kind in ("augment", "augment_mixup"):
                default = "crop_flip" if self.data.spatial_ndim == 2 else "shift_noise"
                aug = self._augment(self.cfg.train.augment if self.cfg.train.augment != "none" else default)
            if kind in ("mixup", "augment_mixup"):
                mix = p.kd_mixup
        transformed = aug is not None or bool(mix)
        if transformed and self.backend != "weights":
            raise UserError(
                f"protocol.kd_inputs={kind}: {self.family_name} in function space trains on the clean points only"
            )
        perturbed = p.kd_perturb != "none"
        if perturbed and self.backend != "weights":
            raise UserError(f"protocol.kd_perturb={p.kd_perturb}: {self.family_name} in function space has no inputs")
        memberwise = self.memberwise()  # (with a fixed teacher: `check_students` refused it, as perturbed)
        online = p.teacher == "online" or (p.teacher == "auto" and (transformed or perturbed or memberwise))
        if mix and not online:
            raise UserError("mixup inputs need protocol.teacher=online (a fixed target belongs to an unmixed input)")
        if online and self.backend == "weights" and not self.cfg.run.checkpoints:
            raise UserError("an online teacher is loaded from its checkpoint: needs run.checkpoints=true")
        return aug, mix, online and self.backend == "weights"

    def memberwise(self) -> bool:
        """Whether this row's KD students learn member i from teacher i (`memberwise`)."""
        return memberwise(self.cfg, self.model)

    def perturbation(self):
        """``protocol.kd_perturb`` as the trainer's ``perturb(key, x, teacher_apply, teachers)``, or None.
        Images: in [0, 1] pixel space (the data's standardisation undone), clipped to [0, 1]."""
        p = self.cfg.protocol
        if p.kd_perturb == "none":
            return None
        scale, offset = self.data.pixels or (1.0, 0.0)
        clip = (0.0, 1.0) if self.data.pixels else None
        tau = self.cfg.kd_tau_for(self.data.num_classes)
        return functools.partial(perturb, p.kd_perturb, tau=tau, eta=p.kd_eta, scale=scale, offset=offset, clip=clip)

    # -- the weight-space step -------------------------------------------------------------------
    LAMBDA_POINTS = 512  # training points of the row's lambda_max (its top Gauss-Newton eigenvalue)

    def train_cfg(self, student: bool = False):
        """`Config.train_for` of this row's family, the kernel families' step resolved: with the step in
        units of 1 / lambda_max (`Config.kernel_lr_in_lambda_units`), divided by `kernel_lambda`."""
        t = self.cfg.train_for(self.family_name, student)
        if self.family_name in KERNEL_FAMILIES and self.cfg.kernel_lr_in_lambda_units:
            t = dataclasses.replace(t, lr=t.lr / self.kernel_lambda())
        return t

    def kernel_lambda(self) -> float:
        """lambda_max(J^T J / n) of the row's member 0 at init on the first `LAMBDA_POINTS` training
        points: for a linearised net (ntk) or a net's frozen features (gp) J is fixed, so this is the top
        eigenvalue of the kernel the descent runs on (per point); one value for every unit of the row."""
        if self._lambda is None:
            x = self.data.x_train[: self.LAMBDA_POINTS]
            v = jax.jit(self.fam.init)(rng.member_key(self.root, "init", 0), x[:1])
            self._lambda = float(lambda_max(self.fam, v, jax.numpy.asarray(x)))
            if not np.isfinite(self._lambda) or self._lambda <= 0:
                raise UserError(f"{self.family_name} {self.model}: lambda_max = {self._lambda}; set "
                                "kernel.weights_lr_units=absolute")  # fmt: skip
        return self._lambda

    # -- records ---------------------------------------------------------------------------
    def _hash_of(self, protocol):
        """The config hash a unit of ``protocol`` is named by: the teachers' or the students'."""
        return self.teacher_hash if protocol in TEACHER_PROTOCOLS else self.hash

    def _unit(self, protocol, member):
        return unit_id(self._hash_of(protocol), self.family_name, self.model, protocol, member)

    def _unit_ids(self, protocol, member):
        """The unit's id, then its ids under the config's older hash forms (records made before a
        field was added still count)."""
        older = [unit_id(h, self.family_name, self.model, protocol, member) for h in self.cfg.science_hashes()[1:]]
        return [self._unit(protocol, member), *older]

    def record(self, protocol, member, status, metrics_=None, wall_s=0.0, test_logits=None, **extra):
        rec = {
            "unit": self._unit(protocol, member),
            "config_hash": self._hash_of(protocol),
            "preset": self.cfg.preset,
            "family": self.family_name,
            "model": self.model,
            "dataset": self.data.name,
            "protocol": protocol,
            "member": member,
            "seed": self.cfg.run.seed,
            "status": status,
            "backend": self.backend,
            "metrics": metrics_ or {},
            "wall_s": round(wall_s, 3),
            **extra,
        }
        preds = self.store.unit_path(rec["unit"])
        if status == "ok" and os.path.exists(preds):  # saved before the record: the record names it
            rec["predictions"] = os.path.relpath(preds, self.store.out_dir)
        if status == "ok" and test_logits is not None:  # per-example correctness: the paired bootstrap's input
            rec["test_correct"] = encode_correct(np.argmax(test_logits, -1) == self.data.y_test)
            rec["n_test"] = len(self.data.y_test)
        rec = self.store.record(rec)  # + date and this process's provenance
        self.known[rec["unit"]] = rec
        return rec

    def training_state(self, trainer, variables, m: dict) -> dict:
        """How a unit was trained and why it stopped (every record carries it; messages.md compares the
        units of a comparison by it): optimiser, steps, stop reason, final train loss and accuracy.
        Weight space stops at its budget (epochs); function space (mse) at the training time picked on
        validation when ``kernel.steps=0``, else at its budget; ridge is a closed form."""
        if self.backend == "weights":
            t = trainer.cfg
            opt = t.optimizer if t.optimizer != "sgd" else f"sgd (momentum {t.momentum:g})" if t.momentum else "sgd"
            state = dict(optimizer=opt, lr=t.lr, schedule=t.schedule, epochs=t.epochs, steps=t.epochs * trainer.steps,
                         stop="budget")  # fmt: skip
            if self._lambda is not None:  # the step in units of 1 / lambda_max: what it was
                state.update(lambda_max=self._lambda, lr_lambda_units=t.lr * self._lambda)
        else:
            k = trainer.cfg.kernel
            picked = k.solver == "mse" and not k.steps  # the training time chosen on validation
            stop = "closed_form" if k.solver == "ridge" else "validation" if picked else "budget"
            state = dict(optimizer=f"function-space {k.solver}", steps=int(variables.get("steps", 0)), stop=stop)
        return dict(state, train_loss=m.get("final_loss"), train_acc=m.get("train_acc"))

    def _done(self, protocol, member):
        rec = next((self.known[u] for u in self._unit_ids(protocol, member) if u in self.known), None)
        if rec is None and protocol in TEACHER_PROTOCOLS:
            return self._adopt(protocol, member)
        if rec is None or rec["status"] not in ("ok", "diverged"):
            return None
        preds = self.store.load_predictions(rec["unit"]) if rec["status"] == "ok" else {}
        return None if preds is None else (rec, preds)

    def _adopt(self, protocol, member):
        """A teacher unit recorded before units had a teacher hash, by a config that differs from this
        one only in fields students read (e.g. the same teachers under kd_inputs=auto, in a store made
        before ``protocol.kd_inputs`` existed): the teachers read none of those fields, so it is this
        unit. Its predictions and checkpoint are copied to this unit's path and its record is written
        again under the teacher hash (``adopted_from`` names the original), so it trains nothing."""
        for h in self.cfg.neutral_student_hashes():
            old = unit_id(h, self.family_name, self.model, protocol, member)
            rec = self.known.get(old)
            preds = self.store.load_predictions(old) if rec is not None and rec["status"] == "ok" else None
            if preds is None:
                continue
            new = self._unit(protocol, member)
            self.store.save_predictions(new, preds)
            src, dst = self.store.checkpoint_path(old), self.store.checkpoint_path(new)
            if os.path.isdir(src) and not os.path.isdir(dst) and self.store.writer:
                shutil.copytree(src, dst)
            keep = {k: rec[k] for k in ("n_params", "group_wall_s", "training") if k in rec}
            got = self.record(protocol, member, "ok", rec["metrics"], rec.get("wall_s", 0.0), test_logits=preds["test"],
                              adopted_from=old, **keep)  # fmt: skip
            self.log(f"  {self.family_name} {self.model} {protocol} {member}: adopted from {old}")
            return got, preds
        return None

    # -- training units -------------------------------------------------------------------------
    def train(self, units, init_keys, data_keys, kind="teacher", teachers=None, alpha=0.0, tau=1.0, teacher_test=None):
        """Train the units (protocol, member) not yet done with trainer ``kind`` (`trainer_for`);
        return {unit: predictions or None}. Sequentially run members are fitted and recorded one at a
        time, so a run killed at any moment loses at most the members in flight; fused modes record
        their group together."""
        return self.train_async(units, init_keys, data_keys, kind, teachers, alpha, tau, teacher_test)()

    def train_async(self, units, init_keys, data_keys, kind="teacher", teachers=None, alpha=0.0, tau=1.0,
                    teacher_test=None) -> Callable[[], dict]:  # fmt: skip
        """`train`, started: returns the function that waits for it. With a worker pool the units
        go to the workers now and run beside whatever else was submitted (the train-sum model beside
        the students); without one they train here before this returns."""
        out, todo = {}, []
        for j, u in enumerate(units):
            done = self._done(*u)
            if done is not None:
                out[u] = done[1] if done[0]["status"] == "ok" else None
            else:
                todo.append(j)
        pick = lambda seq, g: None if seq is None else [seq[j] for j in g]  # noqa: E731
        what = ", ".join(dict.fromkeys(units[j][0] for j in todo))
        t0 = time.perf_counter()

        def finished():
            if todo:
                self.log(
                    f"  {self.family_name} {self.model} {what}: {len(todo)} unit(s) in {time.perf_counter() - t0:.1f} s"
                )
            return out

        if self.pool is not None and todo:
            path = self.pool.stage(self.data)
            key_data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731 - typed keys as plain arrays
            futures = [
                self.pool.submit(
                    _fit_in_worker,
                    self.family_name,
                    self.model,
                    self.cfg,
                    path,
                    self.store.out_dir,
                    kind,
                    units[j],
                    key_data(init_keys[j]),
                    key_data(data_keys[j]),
                    None if teachers is None else teachers[j] if self.online else np.asarray(teachers[j]),
                    alpha,
                    tau,
                    None if teacher_test is None else np.asarray(teacher_test[j]),
                )  # fmt: skip
                for j in todo
            ]

            def collect():
                workers.results(futures)
                self.known = {r["unit"]: r for r in self.store.records()}  # the workers recorded them
                for j in todo:
                    done = self._done(*units[j])
                    out[units[j]] = done[1] if done is not None and done[0]["status"] == "ok" else None
                return finished()

            return collect
        trainer = self.trainer_for(kind)
        groups = [[j] for j in todo] if self.mode == "sequential" else [todo] if todo else []
        if teachers is not None and kind in ("student", "kd_student") and self.online and self.mode != "sequential":
            sizes = {j: len(teachers[j]) for j in todo}  # fused: students whose teachers have one size
            groups = [[j for j in todo if sizes[j] == n] for n in dict.fromkeys(sizes.values())]
        bar = tqdm(
            total=len(todo),
            desc=f"{self.family_name} {self.model} {what}",
            unit="member",
            disable=not progress_enabled(self.cfg.run.progress) or len(groups) < 2,
        )
        for group in groups:
            t_teach = None if teachers is None else self.teacher_inputs(pick(teachers, group), kind)
            out.update(
                self._fit_group(
                    trainer,
                    pick(units, group),
                    pick(init_keys, group),
                    pick(data_keys, group),
                    t_teach,
                    alpha,
                    tau,
                    pick(teacher_test, group),
                )  # fmt: skip
            )
            bar.update(len(group))
        bar.close()
        finished()
        return lambda: out

    def _fit_group(self, trainer, units, init_keys, data_keys, teachers, alpha, tau, teacher_test=None):
        desc = f"{self.family_name} {self.model} {units[0][0]} {units[0][1]}"
        t0 = time.perf_counter()
        snaps = self._snapshots(trainer, units)
        try:
            res = trainer.fit(
                init_keys,
                data_keys,
                self.data.x_train,
                self.data.y_train,
                teachers,
                alpha,
                tau,
                mode=self.mode,
                desc=desc,
                **({"snapshots": snaps} if snaps else {}),
            )
        except Exception as err:  # noqa: BLE001 - only out-of-memory is recorded, the rest raises
            if not _is_oom(err):
                raise
            for u in units:
                self.record(*u, "oom", wall_s=time.perf_counter() - t0)
            self.log(f"  {desc}: out of memory, recorded as oom")
            return {u: None for u in units}
        out = {}
        n_params = param_count(res.variables[0])
        for slot, u in enumerate(units):
            v = res.variables[slot]
            if hasattr(trainer, "predict_splits"):
                preds = trainer.predict_splits(v, self.data)
            else:
                preds = {s: trainer.predict(v, getattr(self.data, f"x_{s}")) for s in SPLITS}
            ok = metrics.finite(res.losses[slot], *preds.values())
            m = {"final_loss": float(res.losses[slot, -1])}
            if hasattr(trainer.cfg, "epochs"):  # weight space: the unit's own training budget
                m["epochs"] = trainer.cfg.epochs
            m["train_chance"] = self.chance  # the majority class's share: a unit near it never learned
            if "steps" in v:  # function space: the training time used (mse: picked on validation)
                m["kernel_steps"] = int(v["steps"])
            if ok:
                for s in SPLITS:
                    y = getattr(self.data, f"y_{s}")
                    m.update(
                        {(k if s == "test" else f"{s}_{k}"): val for k, val in metrics.summary(preds[s], y).items()}
                    )
                m.update(metrics.calibrated(preds["val"], self.data.y_val, preds["test"], self.data.y_test))
                if getattr(getattr(trainer, "family", None), "members", 0):  # a BatchEnsemble: its members' diversity
                    m.update(metrics.diversity(list(trainer.predict_members(v, self.data.x_test))))
                if teacher_test is not None:  # a student: how faithfully it matches its teacher on test
                    m.update(metrics.fidelity(teacher_test[slot], preds["test"]))
                # predictions and params first, the record last: a record always has both
                self.store.save_predictions(self._unit(*u), preds)
                if self.cfg.run.checkpoints and getattr(trainer, "checkpointable", True):
                    self.store.save_checkpoint(self._unit(*u), v["params"])
            else:
                self.log(f"  {desc}: non-finite loss or outputs, recorded as diverged")
            self.record(
                *u,
                "ok" if ok else "diverged",
                m,
                res.wall_s / len(units),
                test_logits=preds["test"] if ok else None,
                training=self.training_state(trainer, v, m),
                n_params=n_params,
                group_wall_s=round(res.wall_s, 3),
            )
            out[u] = preds if ok else None
        for snap in snaps or ():
            snap.clear()
        return out

    def _snapshots(self, trainer, units) -> list | None:
        """One `EpochSnapshot` per unit (its progress saved every ``SNAPSHOT_EVERY_S`` seconds), where the
        trainer resumes part-way and ``run.checkpoints`` is on; else None."""
        if not (self.cfg.run.checkpoints and getattr(trainer, "resumable", False)):
            return None
        paths = [self.store.snapshot_path(self._unit(*u)) for u in units]
        return None if None in paths else [EpochSnapshot(p, SNAPSHOT_EVERY_S) for p in paths]

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
        comb = {s: metrics.combine([p[s] for p in ok], rule) for s in SPLITS}
        d = self.data
        m = metrics.summary(comb["test"], d.y_test)
        m.update(metrics.calibrated(comb["val"], d.y_val, comb["test"], d.y_test))
        m["val_acc"] = metrics.accuracy(comb["val"], d.y_val)
        m["acc_by_size"] = [
            metrics.accuracy(metrics.combine([p["test"] for p in ok[:n]], rule), d.y_test)
            for n in range(1, len(ok) + 1)
        ]
        if len(ok) > 1:  # the members' diversity on test, and the DE-1..DE-L curve the DEE reads
            m.update(metrics.diversity([p["test"] for p in ok]))
            val, test = [p["val"] for p in ok], [p["test"] for p in ok]
            m["cnll_by_size"] = metrics.de_curve(val, d.y_val, test, d.y_test, rule)
        m["n_members"] = len(ok)
        prev = self.known.get(self._unit(protocol, "all"))
        if prev is None or prev.get("metrics") != m or "test_correct" not in prev:
            self.record(protocol, "all", "ok", m, test_logits=comb["test"], rule=rule)
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

    def train_sum(self, wait=True):
        """The train-sum model (one unit); ``wait=False``: started, returns the function that waits."""
        # Member l of the sum gets fold_in(stream("init"), l): single member l's init key.
        pending = self.train_async(
            [("train_sum", 0)], [rng.stream(self.root, "init")], [rng.member_key(self.root, "data", 0)], kind="sum"
        )
        return _settle(lambda: pending()[("train_sum", 0)], wait)

    def trainer_for(self, kind: str):
        """The trainer of ``kind``: ``teacher`` (single members), ``sum`` (the train-sum model),
        ``student`` (KD and SD students), ``kd_student`` (KD students of another network,
        ``protocol.kd_student``), ``control`` (singles at the students' budget); built once per row."""
        if kind == "teacher":
            return self.trainer
        if kind == "control":  # the singles' training for the students' budget
            cfg = self.train_cfg(student=True)
            if cfg == self.trainer.cfg:
                return self.trainer
            if kind not in self._trainers:
                self._trainers[kind] = Trainer(self.fam, cfg, len(self.data.x_train), self.cfg.run.progress,
                                               self.augment, mixup=self.mixup)  # fmt: skip
            return self._trainers[kind]
        if kind not in self._trainers:
            self._trainers[kind] = self.sum_trainer() if kind == "sum" else self.student_trainer(kind == "kd_student")
        return self._trainers[kind]

    def sum_trainer(self):
        L, p = self.cfg.protocol.members, self.cfg.protocol
        if self.backend != "weights":
            return FunctionTrainer(self.family_name, self.model, self.cfg, self.data, n_sum=L)
        fam = summed(self.fam, L, p.sum_scale, stacked=self.mode in ("vmap", "shard"))
        return Trainer(fam, self.train_cfg(), len(self.data.x_train), self.cfg.run.progress,
                       self.augment, sum_step=self.cfg.run.sum_step, mixup=self.mixup,
                       grad_scale=self.cfg.sum_grad_scale(L))  # fmt: skip

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
                teachers.append(np.asarray(teacher["train"], np.float32))
            teacher_test.append(np.asarray(teacher["test"], np.float32))
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

    def student_trainer(self, kd: bool = False):
        """The teachers' trainer, or one with the students' own budget, inputs and teacher; ``kd``: the
        KD students' trainer of another network (``protocol.kd_student``: member-wise for a
        BatchEnsemble student of as many teachers, `memberwise`)."""
        steps = self.cfg.kernel.student_steps
        if self.backend != "weights":
            if not steps:
                return self.trainer
            cfg = dataclasses.replace(self.cfg, kernel=dataclasses.replace(self.cfg.kernel, steps=steps))
            return FunctionTrainer(self.family_name, self.model, cfg, self.data)
        train_cfg = self.train_cfg(student=True)
        same = (self.student_augment, self.student_mixup) == (self.augment, self.mixup) and not self.online
        if train_cfg == self.trainer.cfg and same and not kd:
            return self.trainer
        return Trainer(
            self.kd_fam if kd else self.fam, train_cfg, len(self.data.x_train), self.cfg.run.progress,
            self.student_augment, mixup=self.student_mixup, teacher=self.fam if self.online else None,
            teacher_rule=self.cfg.protocol.ensemble_rule, perturb=self.perturbation() if self.online else None,
            memberwise=kd and self.memberwise(),
        )  # fmt: skip

    def teacher_inputs(self, teachers, kind):
        """What `Trainer.fit` takes as the teachers of ``teachers`` (one entry per student): stacked
        fixed targets, or for an online teacher each student's list of teacher variables."""
        if kind in ("student", "kd_student") and self.online:
            return [self.teacher_variables(t) for t in teachers]
        return np.stack(teachers)

    def teacher_variables(self, members) -> list:
        """The variables of single members ``members`` (an online teacher's): params from their
        checkpoints, the family's state (ntk anchor, gp's frozen layers) rebuilt from their init keys."""
        out = []
        for i in members:
            if i in self._teacher_vars:
                out.append(self._teacher_vars[i])
                continue
            paths = [self.store.checkpoint_path(u) for u in self._unit_ids("single", i)]
            params = load_checkpoint(next((p for p in paths if os.path.isdir(p)), paths[0]))
            state = self.trainer._init(rng.member_key(self.root, "init", i), self.data.x_train[:1])["state"]
            out.append({"params": jax.tree.map(jax.numpy.asarray, params), "state": state})
            self._teacher_vars[i] = out[-1]
        return out


def _settle(done: Callable, wait: bool):
    """A protocol's result: ``done()`` (the function that waits for its units), or with ``wait=False``
    ``done`` itself, for the caller to call once it has submitted everything else."""
    return done() if wait else done


def memberwise(cfg: Config, model: str) -> bool:
    """Whether the KD students of row ``model`` learn member i from teacher i (`protocol.kd_memberwise`):
    ``on``, or ``auto`` for a BatchEnsemble-L student (``protocol.kd_student``, else the row's net) of the
    L teachers."""
    p = cfg.protocol
    m = split_members(p.kd_student or model)[0]
    return p.kd_memberwise == "on" or (p.kd_memberwise == "auto" and m > 0 and m == p.members)


def check_students(cfg: Config, model: str) -> None:
    """The students' settings of row ``model`` that cannot work, from the config alone: `Row` checks
    them, and the experiments' ``prepare`` before anything is written."""
    p = cfg.protocol
    kd_model = p.kd_student or model
    parse_model_name(kd_model)
    if p.kd_memberwise == "on" and split_members(kd_model)[0] != p.members:
        raise UserError(
            f"protocol.kd_memberwise=on needs a BatchEnsemble-{p.members} student "
            f"(protocol.kd_student=BE{p.members}-...) for the L = {p.members} teachers"
        )
    if (p.kd_perturb != "none" or memberwise(cfg, model)) and p.teacher == "fixed":
        raise UserError(
            "perturbed (protocol.kd_perturb) or member-wise distillation needs protocol.teacher=online: "
            "the teachers are evaluated on the student's input"
        )


def run_row(family: str, model: str, cfg: Config, data: Dataset, store: Store, log=lambda s: None, pool=None) -> None:
    """All five protocols for one (family, model) row; with a worker ``pool``, the train-sum model
    trains beside the students."""
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
        row.record("train_sum", 0, "skipped", {"reason": "table.train_sum=false"})
    control = row.control(wait=False) if row.backend == "weights" else list
    got = row.students(singles, ens)
    train_sum()
    control()
    sd = [got.get(("sd", s)) for s in range(cfg.sd_students)]
    if any(p is not None for p in sd):
        row.ensemble(sd, protocol="sd_ensemble")


# -- members and their ensemble (theory experiments) --
def module_trainer(module, train_cfg, n_train: int, progress: bool = False) -> Trainer:
    """A `Trainer` of the plain network ``module`` (Figure 3's students, Figure 6's backbone and students)."""
    return Trainer(network(module), train_cfg, n_train, progress=progress)


def members_and_ensemble(trainer: Trainer, init_keys, data_keys, inputs, y_train, y_test, mode="sequential",
                         score_train: bool = False) -> dict:  # fmt: skip
    """Train L = len(init_keys) members and score them and their ensemble (test accuracy, percent).

    ``inputs``: one ``(x_train, x_test)`` pair shared by every member (trained together in ``mode``),
    or one pair per member (each member trained alone). single = mean / std (ddof 1) / min / max of
    the members' accuracies; the ensemble combines their logits (`metrics.combine`); acc_by_size is
    the ensemble of the first 1..L members; ``score_train`` adds the members' mean train accuracy."""
    L = len(init_keys)
    if len(inputs) == 1:
        fit = trainer.fit(init_keys, data_keys, inputs[0][0], y_train, mode=mode)
        variables, losses = fit.variables, fit.losses
    else:
        each = zip(init_keys, data_keys, inputs)
        fits = [trainer.fit([ik], [dk], x, y_train, mode="sequential") for ik, dk, (x, _) in each]
        variables, losses = [v for f in fits for v in f.variables], np.concatenate([f.losses for f in fits])
    pairs = list(inputs) * L if len(inputs) == 1 else list(inputs)
    test = [trainer.predict(v, x_te) for v, (_, x_te) in zip(variables, pairs)]
    accs = np.array([metrics.accuracy(lg, y_test) for lg in test])
    by_size = [metrics.accuracy(metrics.combine(test[: j + 1]), y_test) for j in range(L)]
    finite = bool(np.isfinite(losses).all() and all(np.isfinite(t).all() for t in test))
    out = dict(
        single_mean=float(accs.mean()),
        single_std=float(accs.std(ddof=1)) if L > 1 else 0.0,
        single_min=float(accs.min()),
        single_max=float(accs.max()),
        ensemble=by_size[-1],
        gain=by_size[-1] - float(accs.mean()),
        acc_by_size=" ".join(f"{a:.2f}" for a in by_size),
    )
    if score_train:
        out["train_acc_mean"] = float(np.mean([metrics.accuracy(trainer.predict(v, x_tr), y_train)
                                               for v, (x_tr, _) in zip(variables, pairs)]))  # fmt: skip
    return dict(out, final_loss=float(losses[:, -1].mean()), status="ok" if finite else "diverged")


# -- a unit in a worker process (run.workers) --
_WORKER_ROWS: dict = {}


def _fit_in_worker(family, model, cfg, data_path, out, kind, unit, init_key, data_key, teacher, alpha, tau,
                   teacher_test) -> None:  # fmt: skip
    """Train and record one unit in a `workers.Pool` worker, exactly as `Row.train` does here: the
    same Row, trainer, keys and teacher outputs (keys arrive as key data, arrays as numpy)."""
    key = (family, model, cfg, data_path, out)
    row = _WORKER_ROWS.get(key)
    if row is None:
        if len(_WORKER_ROWS) >= 4:  # one row's trainers at a time is the common case: keep a few
            _WORKER_ROWS.pop(next(iter(_WORKER_ROWS)))
        log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
        row = _WORKER_ROWS[key] = Row(family, model, cfg, workers.load_data(data_path), Store(out), log)
    row._fit_group(
        row.trainer_for(kind), [unit], [jax.random.wrap_key_data(init_key)], [jax.random.wrap_key_data(data_key)],
        None if teacher is None else row.teacher_inputs([teacher], kind), alpha, tau,
        None if teacher_test is None else [teacher_test],
    )  # fmt: skip

"""The trainers of a row and what they read: the teachers', the train-sum model's, the students' (their
budget, inputs and online teacher) and the controls'; the kernel families' weight-space step in units of
1 / lambda_max; and the students' settings that cannot work, refused from the config alone.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np

from ntk_vs_nn import rng
from ntk_vs_nn.config import Config, UserError
from ntk_vs_nn.data.transforms import make_augment
from ntk_vs_nn.engine.optim import lambda_max
from ntk_vs_nn.engine.perturb import perturb
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import KERNEL_FAMILIES, make_family, summed
from ntk_vs_nn.kernels.function_space import FunctionTrainer
from ntk_vs_nn.models import parse_model_name, split_members
from ntk_vs_nn.store import load_checkpoint


class Trainers:
    """`Row`'s trainers, built once per row (``_trainers``); uses the row's ``fam``, ``kd_fam``, ``trainer``,
    ``cfg``, ``data``, ``store``, ``mode``, ``backend``, augmentation and ``online`` settings."""

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

    def trainer_for(self, kind: str):
        """The trainer of ``kind``: ``teacher`` (single members), ``sum`` (the train-sum model),
        ``student`` (KD and SD students), ``kd_student`` (KD students of another network,
        ``protocol.kd_student``), ``control`` (singles at the students' budget), ``wide`` (the wide
        control net, ``protocol.wide_model``); built once per row."""
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
            build = {"wide": self.wide_trainer, "sum": self.sum_trainer}.get(kind)
            self._trainers[kind] = build() if build else self.student_trainer(kind == "kd_student")
        return self._trainers[kind]

    def wide_trainer(self):
        """The wide control's trainer (``protocol.wide_model``): the teachers' training (budget, optimiser,
        inputs) for a net of that architecture."""
        fam = make_family(self.family_name, self.cfg.protocol.wide_model, self.data.num_classes,
                          self.data.spatial_ndim, self.cfg, self.conv)  # fmt: skip
        return Trainer(fam, self.trainer.cfg, len(self.data.x_train), self.cfg.run.progress, self.augment,
                       mixup=self.mixup)  # fmt: skip

    def sum_trainer(self):
        L, p = self.cfg.protocol.members, self.cfg.protocol
        if self.backend != "weights":
            return FunctionTrainer(self.family_name, self.model, self.cfg, self.data, n_sum=L)
        fam = summed(self.fam, L, p.sum_scale, stacked=self.mode in ("vmap", "shard"))
        return Trainer(fam, self.train_cfg(), len(self.data.x_train), self.cfg.run.progress,
                       self.augment, sum_step=self.cfg.run.sum_step, mixup=self.mixup,
                       grad_scale=self.cfg.sum_grad_scale(L))  # fmt: skip

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
    if p.wide_model:
        parse_model_name(p.wide_model)
        if split_members(p.wide_model)[0]:
            raise UserError(f"protocol.wide_model={p.wide_model}: the wide control is one net, not a BatchEnsemble")
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

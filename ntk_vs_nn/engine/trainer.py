"""Training and prediction: jitted epochs, L members in one call (`Trainer`).

Its parts live beside it: the optimisers and `lambda_max` in optim.py, the loss in losses.py, the
compiled step of M members in steps.py, the train-sum model differentiated member by member in
split_sum.py, a unit's part-way resume in resume.py.

`Trainer.fit` trains M members of one family, each from its own init key and data-order key, on
its own soft targets (knowledge distillation) or none. How the members execute is a choice
(``run.members``):

  sequential  one member after another through the same compiled epoch (compiled once);
  unrolled    all M members inside one compiled step, written as a Python loop in the trace;
  vmap        one compiled step vmapped over a leading member axis;
  shard       the vmap step with the member axis split over the devices of a mesh
              (ntk_vs_nn/engine/sharding.py: NamedSharding(mesh, P("member")), data replicated).

All run the same per-member code, so they give the same numbers (tests check it, the sharded mode
in tests/engine/test_sharding.py); which is fastest depends on the backend and the network
(benchmarks/ensemble_members.py). An epoch is a Python loop over one jitted, buffer-donating step
with the data on device: nothing waits for the host inside an epoch.

Full-batch training (``batch_size >= n_train``, no augmentation) is plain gradient descent: every
epoch is one step on the whole training set in its given order (no permutation, no gather), and all
epochs run inside one compiled ``lax.scan``, so XLA can hoist out of the loop what does not depend
on the params (a gp family's frozen features; not the ``jax.jvp`` of a linearised family, measured in
results/multiview/README.md). With
``optimizer="sgd", momentum=0, schedule="constant"`` and ``fit(lr_scales=...)`` (per-member
multipliers, e.g. ``1 / lambda_max`` from `optim.lambda_max`) it is the multi-view learner's GD.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ntk_vs_nn.config import TrainConfig
from ntk_vs_nn.engine import inputs, sharding
from ntk_vs_nn.engine.batching import pad_rows
from ntk_vs_nn.engine.optim import make_optimizer
from ntk_vs_nn.engine.split_sum import SplitSum
from ntk_vs_nn.engine.steps import Steps, _augment_key
from ntk_vs_nn.families import ModelFamily
from ntk_vs_nn.models.batch_ensemble import fast_weight_labels


class Members(NamedTuple):
    variables: list  # M variable dicts
    losses: np.ndarray  # (M, epochs) mean training loss per epoch
    wall_s: float


def progress_enabled(flag: bool) -> bool:
    """Progress bars only on a terminal, never under CI=true."""
    return flag and os.environ.get("CI", "").lower() not in ("1", "true") and sys.stderr.isatty()


class Trainer(Steps, SplitSum):
    """Compiled training and prediction for one family on one dataset (compile once per shape): the
    compiled steps of `Steps`, the member-by-member train-sum model of `SplitSum`."""

    resumable = True  # `fit` takes ``snapshots`` (`resume.EpochSnapshot`)

    def __init__(
        self, family: ModelFamily, cfg: TrainConfig, n_train: int, progress: bool = False, augment=None, mesh=None,
        sum_step: str = "joint", mixup: float = 0.0, teacher: ModelFamily | None = None, teacher_rule: str = "logits",
        perturb=None, memberwise: bool = False, grad_scale: float = 1.0,
    ):  # fmt: skip
        """``augment(key, x_batch) -> x_batch``: optional on-device augmentation of each training batch
        (`data.transforms.make_augment`). ``mixup``: Beta(a, a) mixup of each batch after it (0: off).
        ``teacher``: the family of an online teacher: `fit` then takes each student's teacher as
        variables and evaluates it on exactly the (augmented, mixed) batch the student sees;
        ``teacher_rule`` combines several teacher members (`losses.ensemble_logits`). Without it the
        distillation targets are fixed per training example (their un-transformed input), so fixed
        targets with a transformation are the old, inconsistent practice and mixup needs a teacher.
        ``mesh``: the device mesh of ``mode="shard"`` (default: `sharding.member_mesh()`, all devices).
        ``sum_step``: a summed family (``family.parts``) in sequential mode: ``joint`` (one program of
        the whole sum, as ``unrolled``) or ``split`` (member by member, `SplitSum._fit_split`).
        ``perturb(key, x, teacher_apply, teacher_variables) -> x_tilde``: the KD term's input (an online
        teacher's stacked members, `engine.perturb`); the CE term keeps the unperturbed batch.
        ``memberwise``: a BatchEnsemble student (``family.members`` = M) of M teacher members learns
        member i from teacher i, not every member from their ensemble. A BatchEnsemble family trains each
        member on the loss (averaged), its fast weights at half the learning rate (`make_optimizer`).
        ``grad_scale``: a factor on every gradient before the optimiser (weight decay included after it):
        the train-sum model's ``Config.sum_grad_scale``, so its members step as singles do."""
        self.family, self.cfg, self.augment, self.mesh, self.sum_step = family, cfg, augment, mesh, sum_step
        self.mixup, self.teacher, self.teacher_rule = float(mixup), teacher, teacher_rule
        self.perturb, self.memberwise = perturb, memberwise
        if (perturb is not None or memberwise) and teacher is None:
            raise ValueError("perturbed or member-wise distillation needs an online teacher (Trainer(teacher=...))")
        if memberwise and not family.members:
            raise ValueError(f"member-wise distillation needs a BatchEnsemble student, not {family.name}")
        # what each member trains on: the input chain, then the teacher's targets on its output
        self.inputs = inputs.chain(*([inputs.augmenting(augment)] if augment is not None else []),
                                   *([inputs.mixing(self.mixup)] if self.mixup else []))  # fmt: skip
        self.targets = (
            inputs.fixed_teacher if teacher is None
            else inputs.online_teacher(teacher, teacher_rule, memberwise, perturb)
        )  # fmt: skip
        self.batch_size = min(cfg.batch_size, n_train)
        self.steps = n_train // self.batch_size
        # GD: one lax.scan over epochs
        self.full_batch = self.batch_size == n_train and augment is None and not self.mixup and perturb is None
        self.tx = make_optimizer(cfg, self.steps, fast_weight_labels if family.members else None)
        if grad_scale != 1.0:
            self.tx = optax.chain(optax.scale(grad_scale), self.tx)
        self.progress = progress_enabled(progress)
        self._step_cache = {}
        self._scaled = False
        self._order = self._order_fn()
        self._predict = jax.jit(family.apply)
        # init and optimiser state as compiled programs: run op by op, a Flax init compiles every
        # primitive for each new shape (4-8 s per trainer for a ResNet-10-1; jit gives the same bits)
        self._init = jax.jit(family.init)
        self._opt_init = jax.jit(self.tx.init)

    def fit(
        self,
        init_keys,
        data_keys,
        x,
        y,
        teachers=None,
        alpha=0.0,
        tau=1.0,
        mode: str = "unrolled",
        desc: str = "",
        lr_scales=None,
        snapshots=None,
    ) -> Members:
        """Train M members.

        Args:
          init_keys, data_keys: M keys each (member init, member data order).
          x: (N, ...) inputs, y: (N,) labels (device or host arrays).
          teachers: (M, N, k) teacher logits per member, or None for plain training; with an online
            teacher (``Trainer(teacher=...)``), M lists of the teacher members' variables (all lists
            of one length in the vmap and shard modes).
          alpha, tau: distillation weight and temperature (alpha = 0: plain cross-entropy).
          mode: "sequential" | "unrolled" | "vmap" | "shard".
          lr_scales: M multipliers of each member's learning rate (e.g. ``1 / lambda_max``), or None (1).
          snapshots: M `resume.EpochSnapshot`s or None: a member trained in a group of its own saves its
            progress there and resumes from it (minibatch epochs; a full-batch scan runs whole).
        Returns: `Members` (variables per member, per-epoch losses, wall time).
        """
        t0 = time.perf_counter()
        m = len(init_keys)
        x, y = jnp.asarray(x), jnp.asarray(y)
        online = self.teacher is not None
        if online and teachers is None:
            raise ValueError("an online-teacher trainer needs each student's teacher variables")
        if self.mixup and not online and teachers is not None:
            raise ValueError("mixup needs an online teacher or none (fixed targets belong to unmixed inputs)")
        if teachers is None:
            probe = jax.eval_shape(self.family.apply, jax.eval_shape(self.family.init, init_keys[0], x[:1]), x[:1])
            teachers = jnp.zeros((m, x.shape[0], probe.shape[-1]), jnp.float32)
        if not online:
            teachers = jnp.asarray(teachers)
        alpha, tau = jnp.float32(alpha), jnp.float32(tau)
        scales_all = jnp.ones(m, jnp.float32) if lr_scales is None else jnp.asarray(lr_scales, jnp.float32)
        self._scaled = lr_scales is not None
        variables = [self._init(k, x[:1]) for k in init_keys]
        epochs = self.cfg.epochs
        if self.family.parts is not None and mode == "sequential" and self.sum_step == "split" and not self.full_batch:
            snap = snapshots[0] if snapshots else None
            out, losses = self._fit_split(variables, data_keys, x, y, teachers, alpha, tau, scales_all, desc, snap)
            return Members(out, losses, time.perf_counter() - t0)
        groups = [[i] for i in range(m)] if mode == "sequential" else [list(range(m))]
        stacked = mode in ("vmap", "shard")
        mesh = (self.mesh or sharding.member_mesh()) if mode == "shard" else None
        # sequential / unrolled on a host split into several CPU devices: each batch is split over
        # them (data parallel); params replicated, back on one device at the end
        dp = None if stacked else sharding.data_mesh(self.batch_size)
        if dp is not None:
            x, y, teachers = sharding.replicate((jnp.asarray(x), jnp.asarray(y), teachers), dp)
        losses = np.zeros((m, epochs), np.float32)
        bar = tqdm(total=epochs * len(groups), desc=desc, leave=False, disable=not self.progress)
        for group in groups:
            # shard: members padded to a multiple of the device count (copies of the last one,
            # dropped at the end), or, for a single stacked train-sum model, its own member axis
            # split over the devices (member_axis 1 of the stacked carry)
            member_axis = 0
            if (
                mode == "shard"
                and len(group) == 1
                and sharding.stacked_sum_size(self.family, variables[group[0]]["params"])
            ):
                member_axis = 1
            run = group
            if mode == "shard" and member_axis == 0:
                run = sharding.pad_members(group, sharding.padded_count(len(group), mesh))
            vs = [variables[i] for i in run]
            dk = [data_keys[i] for i in run]
            tg = [teachers[i] for i in run] if online else teachers[jnp.asarray(run)]
            if online and stacked:  # the students' teachers with a leading student axis
                tg = jax.tree.map(lambda *a: jnp.stack(a), *tg)
            elif online:
                tg = jax.tree.map(jnp.asarray, tg)
            sc = scales_all[jnp.asarray(run)]
            # Params are donated to the step: copy them, since a family's state may alias them
            # (the ntk anchor starts as the very same arrays).
            carries = [(jax.tree.map(jnp.copy, v["params"]), self._opt_init(v["params"])) for v in vs]
            states = [v["state"] for v in vs]
            if dp is not None:
                carries, states = sharding.replicate((carries, states), dp)
            if stacked:
                stack = lambda t: jax.tree.map(lambda *a: jnp.stack(a), *t)  # noqa: E731
                carries, states = stack(carries), stack(states)
            if mesh is not None:
                carries, states = sharding.shard(carries, mesh, member_axis), sharding.shard(states, mesh, member_axis)
                tg = sharding.shard(tg, mesh) if member_axis == 0 else sharding.replicate(tg, mesh)
                sc = sharding.shard(sc, mesh) if member_axis == 0 else sharding.replicate(sc, mesh)
                x, y = sharding.replicate((x, y), mesh)
            fn = self._compiled(len(run), "vmap" if stacked else "unrolled")
            args = (x, y, tg, alpha, tau)
            snap = snapshots[group[0]] if snapshots and len(run) == 1 else None
            carries, group_losses = self._epochs(
                fn, carries, states, dk, args, sc, stacked, dp, mesh, member_axis, bar, snap
            )
            if stacked:
                if mesh is not None:  # back to ordinary single-device arrays, as the other modes give
                    carries = jax.tree.map(jnp.asarray, sharding.gather(carries))
                carries = [jax.tree.map(lambda a, j=j: a[j], carries) for j in range(len(group))]
            if dp is not None:  # ordinary single-device arrays again, as the other modes give
                carries = jax.device_put(carries, jax.local_devices()[0])
            for j, i in enumerate(group):
                variables[i] = {"params": carries[j][0], "state": variables[i]["state"]}
            losses[group] = np.asarray(sharding.gather(group_losses.T))[: len(group)]
        bar.close()
        return Members(variables, losses, time.perf_counter() - t0)

    def _epochs(self, fn, carries, states, dk, args, sc, stacked, dp, mesh, member_axis, bar, snap=None):
        """Run every epoch of one member group: ``(carries, (epochs, M) mean losses)``; ``snap``: an
        `EpochSnapshot` of a one-member group, saved to and resumed from (not in the full-batch scan)."""
        if self.full_batch:  # one scan over the epochs; the augmentation keys are unused
            carries, losses = fn(carries, states, None, 0, *args, jnp.stack(dk) if stacked else dk, sc)
            bar.update(self.cfg.epochs)
            return carries, losses
        group_losses, start = [], 0
        got = snap and snap.load(carries, self.cfg.epochs)
        if got:
            start, carries, done = got
            group_losses = [jnp.asarray(v) for v in done]
            bar.update(start)
        for e in range(start, self.cfg.epochs):
            idx = self._order(dk, e, args[0].shape[0])
            aug = dk  # unused without augmentation
            if self.augment is not None or self.mixup or self.perturb is not None:  # the step folds in its index
                aug = [_augment_key(k, e) for k in dk]
            if stacked:
                aug = jnp.stack(aug)
            if dp is not None:  # (steps, M, batch): the batch axis over the data devices
                idx, aug = sharding.shard(idx, dp, 2), sharding.replicate(aug, dp)
            if mesh is not None:
                if member_axis == 0:
                    idx, aug = sharding.shard(idx, mesh, 1), sharding.shard(aug, mesh)
                else:
                    idx, aug = sharding.replicate((idx, aug), mesh)
            epoch_losses = []
            for s in range(self.steps):
                carries, loss = fn(carries, states, idx, s, *args, aug, sc)
                epoch_losses.append(loss)
            group_losses.append(jnp.stack(epoch_losses).mean(0))
            bar.update(1)
            if snap:
                snap.save(e + 1, self.cfg.epochs, carries, jnp.stack(group_losses), e + 1 == self.cfg.epochs)
        return carries, jnp.stack(group_losses)

    def predict(self, variables, x) -> np.ndarray:
        """Logits (N, k) of one member on ``x`` (N, ...), in padded chunks (one compiled shape)."""
        return self._chunked(self._predict, variables, x, 0)

    def predict_members(self, variables, x) -> np.ndarray:
        """A BatchEnsemble family's per-member logits (M, N, k) on ``x``."""
        if "members" not in self._step_cache:
            self._step_cache["members"] = jax.jit(self.family.apply_members)
        return self._chunked(self._step_cache["members"], variables, x, 1)

    def _chunked(self, fn, variables, x, axis):
        bs = min(self.cfg.eval_batch_size, len(x))
        out = []
        for start in range(0, len(x), bs):
            chunk = x[start : start + bs]
            pad = bs - len(chunk)
            got = np.asarray(fn(variables, jnp.asarray(pad_rows(np.asarray(chunk), bs))))
            out.append(got[: bs - pad] if axis == 0 else got[:, : bs - pad])
        return np.concatenate(out, axis=axis)

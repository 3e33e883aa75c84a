"""Training and prediction: optax optimisers, jitted epochs, L members in one call.

`fit_members` trains M members of one family, each from its own init key and data-order key, on
its own soft targets (knowledge distillation) or none. How the members execute is a choice
(``run.members``):

  sequential  one member after another through the same compiled epoch (compiled once);
  unrolled    all M members inside one compiled step, written as a Python loop in the trace;
  vmap        one compiled step vmapped over a leading member axis;
  shard       the vmap step with the member axis split over the devices of a mesh
              (ntk_vs_nn/engine/sharding.py: NamedSharding(mesh, P("member")), data replicated).

All run the same per-member code, so they give the same numbers (tests check it, the sharded mode
in tests/test_sharding.py); which is fastest depends on the backend and the network
(benchmarks/ensemble_members.py). An epoch is a Python loop over one jitted, buffer-donating step
with the data on device: nothing waits for the host inside an epoch.

Full-batch training (``batch_size >= n_train``, no augmentation) is plain gradient descent: every
epoch is one step on the whole training set in its given order (no permutation, no gather), and all
epochs run inside one compiled ``lax.scan``, so XLA can hoist out of the loop what does not depend
on the params (a gp family's frozen features; not the ``jax.jvp`` of a linearised family, measured in
results/multiview/README.md). With
``optimizer="sgd", momentum=0, schedule="constant"`` and ``fit(lr_scales=...)`` (per-member
multipliers, e.g. ``1 / lambda_max`` from `lambda_max`) it is the multi-view learner's GD.
"""

from __future__ import annotations

import functools
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
from ntk_vs_nn.data.transforms import mixup
from ntk_vs_nn.engine import sharding
from ntk_vs_nn.families import ModelFamily
from ntk_vs_nn.models.batch_ensemble import fast_weight_labels

_AUGMENT_TAG = 0xA06  # augmentation keys: fold_in(fold_in(data_key, epoch), tag), then the step index
_MIXUP_TAG = 0x313  # mixup's key: fold_in(the step's augmentation key, tag) (augmentation keeps its draws)
_PERTURB_TAG = 0x0D5  # the distillation input's perturbation: fold_in(the step's key, tag)


def _augment_key(data_key, epoch: int):
    """A member's augmentation key of one epoch (the step folds in its index)."""
    return jax.random.fold_in(jax.random.fold_in(data_key, epoch), _AUGMENT_TAG)


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, fast_labels=None) -> optax.GradientTransformation:
    """The optimiser and learning-rate schedule of ``cfg`` over ``cfg.epochs`` epochs. ``fast_labels``
    (params -> a tree of "fast"/"slow"; BatchEnsemble's `fast_weight_labels`): the fast weights train at
    half the learning rate and without weight decay (giung2's and uncertainty-baselines' choice)."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    if cfg.schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(0.0 if warmup else cfg.lr, cfg.lr, warmup, total)
    elif cfg.schedule == "step":
        bounds = {int(total * f): 0.2 for f in (0.3, 0.6, 0.8)}
        sched = optax.piecewise_constant_schedule(cfg.lr, bounds)
        if warmup:
            sched = optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), sched], [warmup])
    else:
        sched = optax.linear_schedule(0.0, cfg.lr, warmup) if warmup else cfg.lr
        if warmup:
            sched = optax.join_schedules([sched, optax.constant_schedule(cfg.lr)], [warmup])
    if fast_labels is None:
        return _optimizer(cfg, sched, cfg.weight_decay)
    half = (lambda step: 0.5 * sched(step)) if callable(sched) else 0.5 * sched
    return optax.multi_transform(
        {"slow": _optimizer(cfg, sched, cfg.weight_decay), "fast": _optimizer(cfg, half, 0.0)}, fast_labels
    )


def _optimizer(cfg: TrainConfig, sched, weight_decay: float) -> optax.GradientTransformation:
    if cfg.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(weight_decay),
            optax.sgd(sched, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
        )
    if cfg.optimizer == "adamw":
        return optax.adamw(sched, b1=cfg.momentum, weight_decay=weight_decay)
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(sched, b1=cfg.momentum))


@functools.partial(jax.jit, static_argnames=("family", "iters"))
def lambda_max(family: ModelFamily, variables, x, iters: int = 30, key=None) -> jax.Array:
    """Top eigenvalue of the Gauss-Newton matrix ``J^T J / n`` of ``family``'s logits on ``x`` (n
    inputs) w.r.t. ``variables["params"]``, by ``iters + 1`` power-iteration steps (jvp, then vjp) from a
    Gaussian start drawn from ``key`` (default ``key(0)``; one key per leaf). ``lr / lambda_max`` is a
    full-batch GD step in units of ``1 / lambda_max`` (< 2 is stable for a quadratic loss)."""
    params, state = variables["params"], variables["state"]
    n = x.shape[0]
    f = lambda p: family.apply({"params": p, "state": state}, x)  # noqa: E731
    _, vjp = jax.vjp(f, params)

    def body(_, v):
        u = jax.tree.map(lambda a: a / n, vjp(jax.jvp(f, (params,), (v,))[1])[0])
        norm = optax.tree.norm(u) + 1e-30
        return jax.tree.map(lambda a: a / norm, u)

    leaves, tree = jax.tree.flatten(params)
    key = jax.random.key(0) if key is None else key
    keys = [key] if len(leaves) == 1 else list(jax.random.split(key, len(leaves)))
    v = tree.unflatten([jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])
    v = jax.lax.fori_loop(0, iters, body, body(0, v))
    return jnp.sum(jax.jvp(f, (params,), (v,))[1] ** 2) / n


def distill_loss(logits, labels, teacher_logits, alpha, tau, mix=None, kd_logits=None):
    """(1 - alpha) CE(student, y) + alpha tau^2 KL(softmax(teacher/tau) || softmax(student/tau)).

    Args:
      logits: (B, k) student logits, or (M, B, k) for the M members of a BatchEnsemble student (each
        member's loss, averaged). labels: (B,) int. teacher_logits: (B, k), or (M, B, k): teacher i
        for member i.
      alpha, tau: scalars; alpha = 0 is plain cross-entropy training.
      mix: mixup's ``(labels_b, lam)``: the cross-entropy is lam CE(y) + (1 - lam) CE(y_b) (the
        teacher's logits are those of the mixed input already).
      kd_logits: the student's logits on the input of the KD term when it differs from the CE term's
        (a perturbed input, Nam et al. 2021: the teacher's logits are on it); default ``logits``.
    Returns: the batch mean, a scalar.
    """
    kd_logits = logits if kd_logits is None else kd_logits
    labels = jnp.broadcast_to(labels, logits.shape[:-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if mix is not None:
        labels_b, lam = mix
        labels_b = jnp.broadcast_to(labels_b, logits.shape[:-1])
        ce = lam * ce + (1 - lam) * optax.softmax_cross_entropy_with_integer_labels(logits, labels_b)
    log_p_t = jax.nn.log_softmax(teacher_logits / tau)
    log_p_s = jax.nn.log_softmax(kd_logits / tau)
    kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
    return jnp.mean((1.0 - alpha) * ce + alpha * tau**2 * kl)  # (B,) or (M, B) each


class Members(NamedTuple):
    variables: list  # M variable dicts
    losses: np.ndarray  # (M, epochs) mean training loss per epoch
    wall_s: float


def progress_enabled(flag: bool) -> bool:
    """Progress bars only on a terminal, never under CI=true."""
    return flag and os.environ.get("CI", "").lower() not in ("1", "true") and sys.stderr.isatty()


def ensemble_logits(outs, rule: str = "logits"):
    """The ensemble of member logits ``outs`` (a list of (B, k)) as `metrics.combine` forms it, in jax:
    their mean (``logits``) or the log of their mean softmax (``probs``)."""
    if len(outs) == 1:
        return outs[0]
    stack = jnp.stack(outs)
    if rule == "logits":
        return stack.mean(0)
    return jax.nn.logsumexp(jax.nn.log_softmax(stack, -1), axis=0) - jnp.log(len(outs))


class Trainer:
    """Compiled training and prediction for one family on one dataset (compile once per shape)."""

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
        ``teacher_rule`` combines several teacher members (`ensemble_logits`). Without it the
        distillation targets are fixed per training example (their un-transformed input), so fixed
        targets with a transformation are the old, inconsistent practice and mixup needs a teacher.
        ``mesh``: the device mesh of ``mode="shard"`` (default: `sharding.member_mesh()`, all devices).
        ``sum_step``: a summed family (``family.parts``) in sequential mode: ``joint`` (one program of
        the whole sum, as ``unrolled``) or ``split`` (member by member, `_fit_split`).
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

    # -- one optimiser step of M members, unrolled in the trace ---------------------------------
    # The epoch loop stays in Python: on XLA:CPU a lax.scan over steps ran ~12x slower per step
    # than the same jitted step called from Python (benchmarks/ensemble_members.py), and the
    # step only takes device arrays, so the loop never waits for the host.
    def _view(self, x, y, teacher, ib, key):
        """One member's training batch: ``(x_b, y_b, teacher logits, mix, x_kd)``. ``ib``: the batch's
        indices (None: the whole set); ``key``: the step's transformation key; ``teacher``: the fixed
        (N, k) targets, or the online teacher's variables (a list of members), evaluated here on the
        transformed batch, or with `perturb` on its perturbation ``x_kd`` (else ``x_kd`` is None: the
        KD term's input is the batch itself). Member-wise: the teachers' logits stacked (M, B, k)."""
        xb, yb = (x, y) if ib is None else (x[ib], y[ib])
        if self.augment is not None:
            xb = self.augment(key, xb)
        mix = None
        if self.mixup:
            xb, perm, lam = mixup(jax.random.fold_in(key, _MIXUP_TAG), xb, self.mixup)
            mix = (yb[perm], lam)
        x_kd = None
        if self.teacher is not None:
            if self.perturb is not None:
                stacked = jax.tree.map(lambda *a: jnp.stack(a), *teacher)
                x_kd = jax.lax.stop_gradient(
                    self.perturb(jax.random.fold_in(key, _PERTURB_TAG), xb, self.teacher.apply, stacked)
                )
            outs = [self.teacher.apply(v, xb if x_kd is None else x_kd) for v in teacher]
            tb = jnp.stack(outs) if self.memberwise else ensemble_logits(outs, self.teacher_rule)
            tb = jax.lax.stop_gradient(tb)
        else:
            tb = teacher if ib is None else teacher[ib]
        return xb, yb, tb, mix, x_kd

    def _student(self, variables, x):
        """The student's logits: (B, k), or (M, B, k) per member of a BatchEnsemble family."""
        if self.family.members:
            return self.family.apply_members(variables, x)
        return self.family.apply(variables, x)

    def _step(self, m: int, scaled: bool = False):
        tx = self.tx

        def step(carries, states, idx, s, x, y, teachers, alpha, tau, aug_keys, scales):
            new, losses = [], []
            for i, ((params, opt_state), state) in enumerate(zip(carries, states)):
                ib = None if idx is None else idx[s, i]  # None: full batch, the whole set in its order
                key = None if idx is None else jax.random.fold_in(aug_keys[i], s)
                xb, yb, tb, mix, x_kd = self._view(x, y, teachers[i], ib, key)

                def loss_fn(p, state=state, xb=xb, yb=yb, tb=tb, mix=mix, x_kd=x_kd):
                    v = {"params": p, "state": state}
                    kd = None if x_kd is None else self._student(v, x_kd)
                    return distill_loss(self._student(v, xb), yb, tb, alpha, tau, mix, kd)

                loss, grads = jax.value_and_grad(loss_fn)(params)
                updates, opt_state = tx.update(grads, opt_state, params)
                if scaled:  # per-member learning rates (only then: another program, other roundings)
                    updates = jax.tree.map(lambda u, i=i: u * scales[i], updates)
                new.append((optax.apply_updates(params, updates), opt_state))
                losses.append(loss)
            return new, jnp.stack(losses)

        return step

    def _compiled(self, m: int, mode: str):
        scaled = self._scaled  # set by `fit`: per-member learning rates asked for
        key = (m, mode, self.full_batch, scaled)
        if key not in self._step_cache:
            if mode == "vmap":
                one = self._step(1, scaled)

                def fn(carry, state, idx, s, x, y, teachers, alpha, tau, aug_keys, scales):
                    def single(c, st, ix, t, k, sc):
                        ix = None if ix is None else ix[:, None]
                        t = [t] if self.teacher is not None else t[None]  # online: one student's teacher list
                        out, loss = one([c], [st], ix, s, x, y, t, alpha, tau, [k], sc[None])
                        return out[0], loss[0]

                    axes = (0, 0, None if idx is None else 1, 0, 0, 0)
                    return jax.vmap(single, in_axes=axes)(carry, state, idx, teachers, aug_keys, scales)

            else:
                fn = self._step(m, scaled)
            if self.full_batch:  # every epoch is one step on the same data: one scan over the epochs
                step_fn = fn

                def fn(carry, state, idx, s, x, y, teachers, alpha, tau, aug_keys, scales):
                    def body(c, _):
                        return step_fn(c, state, None, 0, x, y, teachers, alpha, tau, aug_keys, scales)

                    return jax.lax.scan(body, carry, None, length=self.cfg.epochs)

            self._step_cache[key] = jax.jit(fn, donate_argnums=0)
        return self._step_cache[key]

    def _order_fn(self):
        steps, bs = self.steps, self.batch_size

        def order(data_keys, epoch_index, n):
            """(steps, M, bs) sample indices: each member's own permutation for this epoch."""
            return jnp.stack(
                [
                    jax.random.permutation(jax.random.fold_in(k, epoch_index), n)[: steps * bs].reshape(steps, bs)
                    for k in data_keys
                ],
                axis=1,
            )

        return jax.jit(order, static_argnums=2)

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
            return self._fit_split(variables, data_keys, x, y, teachers, alpha, tau, scales_all, t0, desc, snap)
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

    # -- a sum of members, differentiated member by member ---------------------------------------
    # The loss of G = factor * sum_l f_l depends on every member, but its gradient w.r.t. member l is
    # factor * J_l^T dL/dG: per step, each member's forward (keeping its vjp residuals), dL/dG once,
    # each member's backward, then one optimiser update of the whole list (optax's transforms act
    # leaf by leaf, so this is the joint program's update). Each member's forward and backward is a
    # one-member program, as for a single member: on one core the joint program of 10 ResNet-10-1
    # members ran 1.63x the ten singles' time, this 1.18x (benchmarks/ensemble_members.py, train_sum).
    def _split_fns(self):
        if "split" not in self._step_cache:
            member, n, factor = self.family.parts
            tx = self.tx

            def fwd(params, state, xb):
                return jax.vjp(lambda p: member.apply({"params": p, "state": state}, xb), params)

            def batch(idx, s, x, y, teachers, aug_key):
                return self._view(x, y, teachers[0], idx[s, 0], jax.random.fold_in(aug_key, s))[:4]

            def head(logits, yb, tb, mix, alpha, tau):
                g_sum = factor * sum(logits)
                loss, g = jax.value_and_grad(lambda o: distill_loss(o, yb, tb, alpha, tau, mix))(g_sum)
                return loss, factor * g

            def update(grads, opt_state, params, scale):
                updates, opt_state = tx.update(grads, opt_state, params)
                if self._scaled:
                    updates = jax.tree.map(lambda u: u * scale, updates)
                return optax.apply_updates(params, updates), opt_state

            self._step_cache["split"] = (
                jax.jit(fwd), jax.jit(batch), jax.jit(head), jax.jit(lambda vjp, g: vjp(g)[0]),
                jax.jit(update, donate_argnums=(1, 2)),
            )  # fmt: skip
        return self._step_cache["split"]

    def _fit_split(self, variables, data_keys, x, y, teachers, alpha, tau, scales, t0, desc, snap=None) -> Members:
        """`fit` of one summed family (``family.parts``) in sequential mode; the joint program's numbers
        up to float rounding (tests/test_engine.py). On a host split into several CPU devices each batch
        is split over them, as in `fit` (params replicated, back on one device at the end)."""
        fwd, batch, head, back, update = self._split_fns()
        (v,) = variables
        params, states = jax.tree.map(jnp.copy, v["params"]), v["state"]
        opt_state = self._opt_init(v["params"])
        dp = sharding.data_mesh(self.batch_size)
        if dp is not None:
            x, y, teachers, params, states, opt_state = sharding.replicate(
                (x, y, teachers, params, states, opt_state), dp
            )
        bar = tqdm(total=self.cfg.epochs, desc=desc, leave=False, disable=not self.progress)
        losses, start = [], 0
        got = snap and snap.load((params, opt_state), self.cfg.epochs)
        if got:
            start, (params, opt_state), done = got
            losses = [jnp.asarray(v) for v in done]
            bar.update(start)
        for e in range(start, self.cfg.epochs):
            idx = self._order(data_keys, e, x.shape[0])
            aug = _augment_key(data_keys[0], e)
            if dp is not None:  # (steps, 1, batch): the batch axis over the data devices
                idx, aug = sharding.shard(idx, dp, 2), sharding.replicate(aug, dp)
            epoch_losses = []
            for s in range(self.steps):
                xb, yb, tb, mix = batch(idx, s, x, y, teachers, aug)
                outs = [fwd(p, st, xb) for p, st in zip(params, states)]
                loss, g = head([o[0] for o in outs], yb, tb, mix, alpha, tau)
                grads = [back(o[1], g) for o in outs]
                del outs  # the residuals: free them before the update
                params, opt_state = update(grads, opt_state, params, scales[0])
                epoch_losses.append(loss)
            losses.append(jnp.stack(epoch_losses).mean())
            bar.update(1)
            if snap:
                snap.save(e + 1, self.cfg.epochs, (params, opt_state), jnp.stack(losses), e + 1 == self.cfg.epochs)
        bar.close()
        if dp is not None:  # ordinary single-device arrays again, as the other modes give
            params = jax.device_put(params, jax.local_devices()[0])
        jax.block_until_ready(params)
        out = [{"params": params, "state": v["state"]}]
        return Members(out, np.asarray(jnp.stack(losses))[None], time.perf_counter() - t0)

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
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            got = np.asarray(fn(variables, jnp.asarray(chunk)))
            out.append(got[: bs - pad] if axis == 0 else got[:, : bs - pad])
        return np.concatenate(out, axis=axis)

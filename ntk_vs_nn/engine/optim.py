"""Optimisers and learning-rate schedules (`make_optimizer`), and `lambda_max`: the top eigenvalue of
the Gauss-Newton matrix, the unit of a full-batch gradient-descent step (``Trainer.fit(lr_scales=...)``
with ``1 / lambda_max`` per member is the multi-view learner's GD; the kernel rows' step in units of it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from ntk_vs_nn.config import TrainConfig
from ntk_vs_nn.families import ModelFamily


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

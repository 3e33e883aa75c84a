"""What one member trains on in one step, composed as optax composes an optimiser: the batch's input
transforms as a chain (`chain` of `augmenting`, `mixing`), then the distillation targets from a teacher
(`fixed_teacher`: targets stored per training example; `online_teacher`: the teacher evaluated on the
transformed batch, optionally on a perturbation of it, optionally member by member). `Trainer` builds one
of each from its options (`engine.steps.Steps._view` applies them), so a new transform or teacher kind is a
function here, not another branch of the step.

Every transform takes the step's key and folds in its own tag (`rng.STEP_TAGS`) where it draws, so the
draws of one never depend on which others are in the chain.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ntk_vs_nn import rng
from ntk_vs_nn.data.transforms import mixup
from ntk_vs_nn.engine.losses import ensemble_logits


class Batch(NamedTuple):
    x: jax.Array  # the inputs the student sees
    y: jax.Array  # their labels
    mix: tuple | None = None  # mixup's (second labels, lambda), None without mixup


Transform = Callable[[jax.Array, Batch], Batch]  # (step key, batch) -> batch


def augmenting(augment) -> Transform:
    """The data's augmentation (`data.transforms.make_augment`: ``augment(key, x)``) on the batch's inputs."""
    return lambda key, b: b._replace(x=augment(key, b.x))


def mixing(alpha: float) -> Transform:
    """Beta(alpha, alpha) mixup of the batch (its own key: the step key with the ``mixup`` tag)."""

    def t(key, b):
        x, perm, lam = mixup(jax.random.fold_in(key, rng.STEP_TAGS["mixup"]), b.x, alpha)
        return b._replace(x=x, mix=(b.y[perm], lam))

    return t


def chain(*transforms: Transform) -> Transform:
    """The transforms applied in order, each to the previous one's batch (none: the batch as it is)."""

    def t(key, b):
        for f in transforms:
            b = f(key, b)
        return b

    return t


Teacher = Callable  # (step key, batch, the member's teacher, batch indices) -> (teacher logits, KD input or None)


def fixed_teacher(key, batch: Batch, targets, ib):
    """Targets stored per training example (or none): the rows of the batch's indices (all: full batch)."""
    return (targets if ib is None else targets[ib]), None


def online_teacher(family, rule: str = "logits", memberwise: bool = False, perturb=None) -> Teacher:
    """The teacher (a list of ``family`` members' variables) evaluated on exactly the batch the student sees,
    combined by ``rule`` (`losses.ensemble_logits`), or stacked (M, B, k) for a member-wise student; with
    ``perturb(key, x, apply, stacked variables)`` the KD term's input is that perturbation of the batch (its
    own key: the ``perturb`` tag), returned beside the logits so the student is evaluated on it too."""

    def teacher(key, b, members, ib):
        x_kd = None
        if perturb is not None:
            stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
            x_kd = jax.lax.stop_gradient(perturb(jax.random.fold_in(key, rng.STEP_TAGS["perturb"]), b.x, family.apply,
                                                 stacked))  # fmt: skip
        outs = [family.apply(v, b.x if x_kd is None else x_kd) for v in members]
        logits = jnp.stack(outs) if memberwise else ensemble_logits(outs, rule)
        return jax.lax.stop_gradient(logits), x_kd

    return teacher

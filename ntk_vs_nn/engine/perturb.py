"""Input perturbations for distillation from an ensemble (Nam et al. 2021, "Diversity matters when
learning from ensembles"): the student is trained on x~ = x + step, where the step makes the
teachers disagree more than on x itself.

  none       x~ = x;
  gaussian   p + eta N(0, I);
  ods        Output Diversified Sampling (Tashiro et al. 2020): one teacher m ~ U{0..M-1} per minibatch,
             w ~ U(-1, 1)^k per example, step = eta * the gradient of <w, softmax(T_m(x) / tau)> with respect
             to the pixel-space input, each example's gradient rescaled to L2 norm sqrt(D);
  confods    ConfODS (Nam et al. 2021): the ODS step times the teacher's confidence max_c softmax(T_m(x) / tau)_c
             on the unperturbed example (a scale, no gradient through it).

Everything is defined in pixel space p = x * scale + offset (``scale``/``offset``: the dataset's std and mean, so
that images lie in [0, 1]; 1 and 0 for inputs used as they are), optionally clipped to ``clip`` there, and mapped
back: x~ = (clip(p + step) - offset) / scale. Nam et al. use eta = 1/255 in [0, 1] pixel space (one grey level).

The teachers' logits must be per-example (no batch statistics, e.g. BatchNorm in inference mode): ODS
differentiates the batch's summed objective. Keys: `perturb_keys` splits the key into the streams of the teacher
index, of w and of the Gaussian noise, so a result is a function of the key alone.

Example:
    >>> f = jax.jit(perturb, static_argnames=("kind", "teacher_apply", "clip"))
    >>> x_t = f("ods", key, x, model.apply, stacked_params, tau=1.0, eta=1 / 255, scale=std, offset=mean, clip=(0, 1))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ntk_vs_nn.config import UserError

KINDS = ("none", "gaussian", "ods", "confods")

_EPS = 1e-12  # floor of a gradient's norm: a zero gradient gives a zero direction, not NaN


def perturb_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(key_m, key_w, key_noise)``: the independent streams of the teacher index, the ODS weights and the noise."""
    k_m, k_w, k_noise = jax.random.split(key, 3)
    return k_m, k_w, k_noise


def choose_teacher(key: jax.Array, num_teachers: int) -> jax.Array:
    """The teacher index m ~ U{0..num_teachers-1} of a minibatch (an int32 scalar; ``num_teachers`` static)."""
    return jax.random.randint(key, (), 0, num_teachers)


def ods_weights(key: jax.Array, batch: int, num_classes: int, dtype: Any = jnp.float32) -> jax.Array:
    """The ODS output weights w ~ U(-1, 1)^k, one row per example (Tashiro et al. 2020): (batch, num_classes)."""
    return jax.random.uniform(key, (batch, num_classes), dtype, -1.0, 1.0)


def ods_direction(
    key: jax.Array,
    x: jax.Array,
    teacher_apply: Callable,
    params_m: Any,
    tau: float | jax.Array,
    scale: float | jax.Array = 1.0,
    offset: float | jax.Array = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """The ODS direction of one teacher (Tashiro et al. 2020) and its confidence (Nam et al. 2021).

    With p = x * scale + offset and w = ``ods_weights(key, B, k)``: the gradient with respect to p of
    sum_b <w_b, softmax(T(x_b(p)) / tau)>, x(p) = (p - offset) / scale, each example's gradient rescaled to
    L2 norm sqrt(D) (D = elements of one example; a zero gradient stays zero).

    Args:
      key: the w stream (`perturb_keys`). x: (B, ...) in model space. teacher_apply: ``(params, x) -> (B, k)``
      logits. params_m: one teacher's params. tau: softmax temperature. scale, offset: broadcastable to x.
    Returns: ``(direction (B, ...) in pixel space, max_prob (B,))``, max_prob = max_c softmax(T(x) / tau)_c
      without gradient.
    """
    b = x.shape[0]
    d = math.prod(x.shape[1:])

    def probs(p):
        return jax.nn.softmax(teacher_apply(params_m, (p - offset) / scale) / tau, axis=-1)

    prob, vjp = jax.vjp(probs, x * scale + offset)
    w = ods_weights(key, b, prob.shape[-1], prob.dtype)
    (g,) = vjp(w)
    norm = jnp.sqrt(jnp.sum(jnp.square(g.reshape(b, -1)), axis=1))
    direction = g * (math.sqrt(d) / jnp.maximum(norm, _EPS)).reshape((b,) + (1,) * (x.ndim - 1))
    return direction, jax.lax.stop_gradient(jnp.max(prob, axis=-1))


def perturb(
    kind: str,
    key: jax.Array,
    x: jax.Array,
    teacher_apply: Callable,
    teacher_params: Any,
    *,
    tau: float | jax.Array,
    eta: float | jax.Array,
    scale: float | jax.Array = 1.0,
    offset: float | jax.Array = 0.0,
    clip: tuple[float, float] | None = None,
) -> jax.Array:
    """The perturbed batch x~ of ``kind`` (`KINDS`; module docstring), the shape and dtype of ``x``.

    Args:
      kind: static. key: PRNG key (`perturb_keys`). x: (B, ...) in model space. teacher_apply:
      ``(params, x) -> (B, k)`` logits. teacher_params: the M teachers' params stacked on a leading axis.
      tau: the teachers' softmax temperature (ods/confods). eta: the step size in pixel space. scale, offset:
      pixel space p = x * scale + offset. clip: None or (lo, hi) in pixel space.
    Raises: UserError for an unknown kind.
    """
    if kind not in KINDS:
        raise UserError(f"perturbation must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind == "none":
        return x
    k_m, k_w, k_noise = perturb_keys(key)
    p = x * scale + offset
    if kind == "gaussian":
        step = eta * jax.random.normal(k_noise, x.shape, p.dtype)
    else:
        num_teachers = jax.tree.leaves(teacher_params)[0].shape[0]
        m = choose_teacher(k_m, num_teachers)
        params_m = jax.tree.map(lambda leaf: jax.lax.dynamic_index_in_dim(leaf, m, keepdims=False), teacher_params)
        direction, max_prob = ods_direction(k_w, x, teacher_apply, params_m, tau, scale, offset)
        if kind == "confods":
            direction = direction * max_prob.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        step = eta * direction
    p = p + step
    if clip is not None:
        p = jnp.clip(p, clip[0], clip[1])
    return ((p - offset) / scale).astype(x.dtype)

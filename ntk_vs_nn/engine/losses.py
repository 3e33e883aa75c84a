"""The training loss (`distill_loss`: cross-entropy plus the distillation term, mixup's two labels) and
the ensemble of member logits an online teacher gives (`ensemble_logits`), in jax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ntk_vs_nn.models.batch_ensemble import ensemble_logits as stacked_ensemble


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


def ensemble_logits(outs, rule: str = "logits"):
    """The ensemble of member logits ``outs`` (a list of (B, k)) as `analysis.metrics.combine` forms it, in jax:
    their mean (``logits``) or the log of their mean softmax (``probs``)."""
    return outs[0] if len(outs) == 1 else stacked_ensemble(jnp.stack(outs), rule)

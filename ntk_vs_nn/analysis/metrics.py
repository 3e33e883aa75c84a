"""Metrics on logits and ensembles of logits (pure numpy; accuracies in percent)."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent. logits (N, k), labels (N,)."""
    return float(100.0 * np.mean(np.argmax(logits, -1) == labels))


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the softmax of ``logits``."""
    logp = log_softmax(logits.astype(np.float64), axis=-1)
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def ece(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error in percent: the |accuracy - confidence| gap of the top-1
    prediction, averaged over ``bins`` equal-width confidence bins weighted by their share of
    examples (Guo et al. 2017; 15 bins as in Nam et al.)."""
    p = np.exp(log_softmax(logits.astype(np.float64), axis=-1))
    conf, pred = p.max(-1), p.argmax(-1)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            gap += sel.mean() * abs(np.mean(pred[sel] == labels[sel]) - conf[sel].mean())
    return float(100.0 * gap)


def combine(member_logits: list[np.ndarray], rule: str = "logits") -> np.ndarray:
    """Ensemble output as logits (N, k): the mean of the members' logits (the paper's
    F = sum_l f_l, up to a scale that changes no prediction), or with ``rule="probs"`` the log of
    the mean of their softmax probabilities."""
    stack = np.stack(member_logits).astype(np.float64)
    if rule == "logits":
        return stack.mean(0)
    logp = log_softmax(stack, axis=-1)
    return logsumexp(logp, axis=0) - np.log(len(member_logits))


def summary(logits: np.ndarray, labels: np.ndarray) -> dict:
    return {"acc": accuracy(logits, labels), "nll": nll(logits, labels), "ece": ece(logits, labels)}


def finite(*arrays) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


def fidelity(teacher_logits: np.ndarray, student_logits: np.ndarray) -> dict:
    """How faithfully a student matches its teacher (Stanton et al. 2021): ``agreement``, the share
    of examples (%) on which their top-1 predictions agree, and ``kl_teacher``, the mean
    KL(teacher ‖ student) of their softmax outputs (temperature 1, nats)."""
    lt = log_softmax(np.asarray(teacher_logits, np.float64), axis=-1)
    ls = log_softmax(np.asarray(student_logits, np.float64), axis=-1)
    agree = float(100.0 * np.mean(lt.argmax(-1) == ls.argmax(-1)))
    return {"agreement": agree, "kl_teacher": float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1)))}

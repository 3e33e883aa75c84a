"""Metrics on logits and ensembles of logits (pure numpy). Public as `ntk_vs_nn.metrics`.

Every function takes logits (N, k) (log-probabilities are valid logits) and integer labels (N,).
Units: accuracy, ECE and disagreement in percent; NLL and KL in nats; Brier summed over classes
(in [0, 2]), averaged over examples. The calibrated versions (cNLL, cBS, cECE) divide the logits by
one temperature per predictor, fitted on the validation split by NLL (`calibrate`); the deep-ensemble
equivalent (`dee`, Ashukha et al. 2020) is the ensemble size of the same member pool with the same
calibrated NLL.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, logsumexp


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent. logits (N, k), labels (N,)."""
    return float(100.0 * np.mean(np.argmax(logits, -1) == labels))


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the softmax of ``logits``."""
    logp = log_softmax(logits.astype(np.float64), axis=-1)
    return float(-np.mean(logp[np.arange(len(labels)), labels]))


def brier(logits: np.ndarray, labels: np.ndarray) -> float:
    """Brier score: the squared distance between the softmax probabilities and the one-hot label,
    summed over the k classes (so in [0, 2]), averaged over examples (as Nam et al. report it)."""
    p = np.exp(log_softmax(logits.astype(np.float64), axis=-1))
    p[np.arange(len(labels)), labels] -= 1.0
    return float(np.mean(np.sum(p**2, axis=-1)))


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
    return {
        "acc": accuracy(logits, labels),
        "nll": nll(logits, labels),
        "brier": brier(logits, labels),
        "ece": ece(logits, labels),
    }


TEMPERATURE_BOUNDS = (0.01, 100.0)  # the search range of `calibrate`


def calibrate(val_logits: np.ndarray, val_labels: np.ndarray) -> float:
    """The temperature T minimising the validation NLL of ``softmax(logits / T)`` (temperature
    scaling, Guo et al. 2017). The NLL is convex in the inverse temperature 1/T, so scipy's bounded
    scalar minimiser (Brent) on 1/T in 1 / `TEMPERATURE_BOUNDS` finds its minimum; T = 1 is kept
    unless the fit is better, so calibration never increases the validation NLL."""
    z = np.asarray(val_logits, np.float64)
    y = np.asarray(val_labels)
    lo, hi = 1.0 / TEMPERATURE_BOUNDS[1], 1.0 / TEMPERATURE_BOUNDS[0]
    res = minimize_scalar(lambda beta: nll(z * beta, y), bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(1.0 / res.x) if res.fun < nll(z, y) else 1.0


def calibrated(val_logits, val_labels, logits, labels) -> dict:
    """cNLL, cBS and cECE of ``logits`` at the temperature fitted on the validation split, and that
    ``temperature``."""
    t = calibrate(val_logits, val_labels)
    z = np.asarray(logits, np.float64) / t
    return {"temperature": t, "cnll": nll(z, labels), "cbs": brier(z, labels), "cece": ece(z, labels)}


def dee(nll_of_predictor: float, de_nlls) -> float:
    """Deep-ensemble equivalent (Ashukha et al. 2020): the size m, linearly interpolated, at which a
    deep ensemble of the same member pool reaches the predictor's (calibrated) NLL. ``de_nlls[m - 1]``
    is the NLL of DE-m, m = 1..M (M >= 2). The curve is first made non-increasing (DE-m counts as
    the best ensemble of at most m members); the DEE is its first crossing. Outside the curve's range
    it is extrapolated with the mean gain per member, (NLL(DE-1) - NLL(DE-M)) / (M - 1): below 1 for a
    predictor worse than one member (floored at 0), above M for one better than the whole pool.
    A pool whose ensembles gain nothing gives 1 (worse or equal to DE-1) or M (better)."""
    curve = np.minimum.accumulate(np.asarray(de_nlls, np.float64))
    if curve.ndim != 1 or len(curve) < 2:
        raise ValueError(f"dee needs the NLLs of DE-1..DE-M with M >= 2, got {len(np.atleast_1d(curve))}")
    x, m_max = float(nll_of_predictor), len(curve)
    gain = (curve[0] - curve[-1]) / (m_max - 1)
    if x >= curve[0]:
        return 1.0 if gain <= 0 else max(0.0, 1.0 - (x - curve[0]) / gain)
    if x < curve[-1]:
        return float(m_max) if gain <= 0 else m_max + (curve[-1] - x) / gain
    j = int(np.argmax(curve <= x))  # the first size reaching x (j >= 1: x < curve[0])
    a, b = curve[j - 1], curve[j]
    return float(j + (a - x) / (a - b))  # between DE-j (curve[j - 1]) and DE-(j+1)


def de_curve(val_members, val_labels, test_members, test_labels, rule: str = "logits", subsets: int = 10) -> list:
    """The calibrated test NLL of deep ensembles DE-1..DE-M of a member pool (members' val and test
    logits, same order), each size averaged over up to ``subsets`` member subsets (all of them when
    there are fewer; else the first ``subsets`` in a fixed pseudo-random order): the curve `dee` reads."""
    n = len(test_members)
    rs = np.random.default_rng(0)
    out = []
    for m in range(1, n + 1):
        combos = list(itertools.combinations(range(n), m))
        if len(combos) > subsets:
            combos = [combos[i] for i in sorted(rs.choice(len(combos), subsets, replace=False))]
        vals = []
        for c in combos:
            v = combine([val_members[i] for i in c], rule)
            t = combine([test_members[i] for i in c], rule)
            vals.append(calibrated(v, val_labels, t, test_labels)["cnll"])
        out.append(float(np.mean(vals)))
    return out


def disagreement(member_logits) -> float:
    """Mean pairwise top-1 disagreement between members (%): the share of examples on which two
    members predict different classes, averaged over the M (M - 1) / 2 pairs."""
    pred = [np.argmax(z, -1) for z in member_logits]
    pairs = list(itertools.combinations(range(len(pred)), 2))
    if not pairs:
        return math.nan
    return float(100.0 * np.mean([np.mean(pred[i] != pred[j]) for i, j in pairs]))


def pairwise_kl(member_logits) -> float:
    """Mean KL(p_i ‖ p_j) of the members' softmax outputs over the M (M - 1) ordered pairs i != j and
    the examples (nats)."""
    logp = [log_softmax(np.asarray(z, np.float64), axis=-1) for z in member_logits]
    pairs = list(itertools.permutations(range(len(logp)), 2))
    if not pairs:
        return math.nan
    return float(np.mean([np.mean(np.sum(np.exp(logp[i]) * (logp[i] - logp[j]), -1)) for i, j in pairs]))


def diversity(member_logits) -> dict:
    """``disagreement`` (%) and ``pairwise_kl`` (nats) of a pool of members (on one split)."""
    return {"disagreement": disagreement(member_logits), "pairwise_kl": pairwise_kl(member_logits)}


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

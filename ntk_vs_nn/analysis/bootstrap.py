"""Paired bootstrap of group accuracy statistics: confidence intervals for the messages' differences.

Data. ``Groups = dict[str, list[np.ndarray]]``: group name ("single", "ensemble", "train_sum", "kd",
"sd", ...) -> one bool array (members x n_test) per replicate (root seed). Every group present has
the same replicates in the same order and at least one member in some; a group may be absent, and a
group may have no members (a (0, n_test) array) in some replicates, by design (the train-sum model of
``table.train_sum_replicates``). The test set is the same for every model of every replicate, so the
resampling is *paired*.

One draw b (all in accuracy points, % = 100 x fraction correct):
  1. the test examples are resampled with replacement, the same indices for every model;
  2. the R replicates are resampled with replacement (R = 1: the one replicate, no draw);
  3. in each drawn replicate slot, each group's members are resampled with replacement
     (independently per slot, so a replicate drawn twice gets two member resamples).
Per group: ``mean`` = mean over slots of the slot's mean drawn-member accuracy; ``best`` = mean over
slots of the slot's best drawn member; ``std`` = sample std (ddof=1) of the drawn members'
accuracies POOLED over the slots (0 if only one value). The point estimate is the same statistic on
the data without resampling (so point ``std`` = ddof=1 std of all members of all replicates, which
for R = 1 is the table's ``acc_std``).

Random draws (exact order, so that an independent implementation can reproduce them):
  rng = np.random.default_rng(seed)
  a. test indices: ``rng.integers(0, n_test, size=(c, n_test))`` for consecutive chunks of c draws
     (row b = the indices of draw b; numpy's stream makes this identical to one (n_boot, n_test)
     call, so the chunk size does not change the result);
  b. if R > 1: ``rep = rng.integers(0, R, size=(n_boot, R))`` (rep[b, s] = replicate in slot s). When the
     groups present differ between replicates, the replicates fall into strata (one per pattern of
     groups present, in the order of their first replicate) and each is resampled within itself, stratum
     by stratum: ``rep[:, S] = S[rng.integers(0, len(S), size=(n_boot, len(S)))]`` for the replicates S
     of each stratum (a stratified bootstrap: every draw has as many replicates of each group as the run);
     a group's statistics then use the slots whose replicate has it;
  c. for each group in ``sorted(groups)``: ``u = rng.random((n_boot, R, L_max))``, L_max = most
     members of the group in any replicate; with m = member count of replicate rep[b, s], slot s
     of draw b uses members ``min(floor(u[b, s, j] * m), m - 1)`` for j < m (the rest is unused;
     a one-member group always gets member 0); a group in ``tied`` draws none and uses its lead's u.
  d. no draw: a combined group given a `Jackknife` (an ensemble and its L leave-one-out combinations)
     adds to each slot -sqrt(L (L - 1)) x (the mean leave-one-out accuracy over the lead's members
     drawn in that slot in step c - the mean over all L): the deviations of the jackknife pseudo-values
     L acc(ens) - (L - 1) acc(ens without i), resampled with the lead's members and scaled by
     sqrt(L / (L - 1)) so that their variance is the jackknife variance of the ensemble's accuracy.
     The point estimate stays the whole ensemble's; a one-replicate ensemble now carries its members'
     noise, paired with its singles'. Without it an ensemble's only noise is the test set's. Only for
     R = 1: with replicates, step b already carries it (each replicate is its own draw of members).
Accuracy under every test resample is one product, correct (models x n) @ counts.T (n x c) / n, exact
in float32 (integer sums < 2**24); steps b-c then act on the small (models x n_boot) matrix.

A comparison is a difference d of these statistics, oriented so that the claim is d > 0 (or
d >= 0). Its CI is the percentile interval of d over the draws (np.quantile, linear
interpolation). The smallest difference a run could detect (`min_detectable`) is the CI half-width
(hi - lo) / 2: a true d smaller than that would typically leave the interval straddling 0.

Coverage (measured in tests/analysis/test_bootstrap.py): nominal for paired model comparisons; for group
means it is conservative when each member's own test noise dominates the members' true spread
(the member x example noise is counted by both resamplings, as in Owen's pigeonhole bootstrap)
and under-covers when the true spread dominates and the group is small (L = 3: ~88 %). For an
ensemble against its singles in one replicate, step d lifts the coverage from ~78 % to >= 90 % when
the members' spread dominates (L = 10, tests/analysis/test_bootstrap.py); the jackknife variance is
conservative (Efron-Stein), so with little member spread the interval is wider than nominal.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

Groups = dict[str, list[np.ndarray]]


def encode_correct(correct: np.ndarray) -> str:
    """A bool vector -> ASCII (packbits + base64), for a JSON record."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool).ravel())).decode("ascii")


def decode_correct(s: str, n: int) -> np.ndarray:
    """Inverse of `encode_correct` for a vector of length ``n``."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(s), dtype=np.uint8))
    if not (n <= len(bits) < n + 8):
        raise ValueError(f"encoded correctness holds {len(bits)} bits, not {n}")
    return bits[:n].astype(bool)


@dataclass(frozen=True)
class Stats:
    """One group's statistics: floats (point estimate) or arrays of shape (n_boot,) (draws)."""

    mean: float | np.ndarray
    best: float | np.ndarray
    std: float | np.ndarray


@dataclass(frozen=True)
class Draws:
    """`bootstrap`'s result: ``point[name]`` and ``boot[name]`` are the `Stats` of each group."""

    point: dict[str, Stats]
    boot: dict[str, Stats]
    n_boot: int
    n_test: int
    n_replicates: int


class Comparison(NamedTuple):
    d: float
    lo: float
    hi: float


def _check(groups: Groups) -> tuple[list[str], int, int]:
    names = sorted(groups)
    if not names:
        raise ValueError("no groups")
    R = len(groups[names[0]])
    n = None
    for g in names:
        reps = groups[g]
        if len(reps) != R or R == 0:
            raise ValueError(f"group {g!r} has {len(reps)} replicates, expected {R} (> 0)")
        if all(np.shape(a)[0] == 0 for a in reps):
            raise ValueError(f"group {g!r} has no members in any replicate")
        for a in reps:
            a = np.asarray(a)
            if a.ndim != 2:
                raise ValueError(f"group {g!r}: each replicate must be members x n_test")
            n = a.shape[1] if n is None else n
            if a.shape[1] != n:
                raise ValueError(f"group {g!r}: n_test {a.shape[1]} != {n}")
    return names, R, n


def _stats(vals: np.ndarray, valid: np.ndarray, count: np.ndarray) -> Stats:
    """Stats over the last two axes (slots, members) of ``vals`` where ``valid``; ``count``: members
    per slot (..., slots)."""
    v = np.where(valid, vals, 0.0)
    has = count > 0  # slots whose replicate has the group (all, unless it is missing from some by design)
    if np.all(has):
        mean = (v.sum(-1) / count).mean(-1)
        best = np.where(valid, vals, -np.inf).max(-1).mean(-1)
    else:
        k = has.sum(-1)
        mean = np.where(has, v.sum(-1) / np.maximum(count, 1), 0.0).sum(-1) / k
        best = np.where(has, np.where(valid, vals, -np.inf).max(-1), 0.0).sum(-1) / k
    total = count.sum(-1)
    pooled = v.sum((-2, -1)) / total
    ss = (np.where(valid, vals - pooled[..., None, None], 0.0) ** 2).sum((-2, -1))
    std = np.where(total > 1, np.sqrt(ss / np.maximum(total - 1, 1)), 0.0)
    return Stats(mean, best, std)


class Jackknife(NamedTuple):
    """A combined group's (an ensemble's) leave-one-out combinations: per replicate, row i of
    ``correct`` (members x n_test) is the combination of all of ``lead``'s members but member i."""

    lead: str
    correct: list[np.ndarray]


def bootstrap(
    groups: Groups,
    n_boot: int = 2000,
    seed: int = 0,
    chunk: int | None = None,
    tied: dict[str, str] | None = None,
    jackknife: dict[str, Jackknife] | None = None,
) -> Draws:
    """Point estimates and ``n_boot`` paired-bootstrap draws of every group's mean/best/std (in %).
    The draw order is in the module docstring; ``chunk`` (draws per test-resample block, default
    ~4M indices) only bounds memory. ``tied`` maps a group to another whose member draws it reuses
    (step c draws no ``u`` for it): member i of the one is member i of the other (two runs of the same
    seeds), so their difference is paired over members too; tied groups need equal member counts.
    ``jackknife`` maps a combined group (one member per replicate) to its `Jackknife`: its draws then
    carry its members' noise (step d), paired with the lead's member draws; ignored when R > 1."""
    names, R, n = _check(groups)
    tied, jackknife = tied or {}, (jackknife or {}) if R == 1 else {}
    for g, lead in tied.items():
        if lead in tied or [np.shape(a)[0] for a in groups[g]] != [np.shape(a)[0] for a in groups[lead]]:
            raise ValueError(f"group {g!r} cannot reuse {lead!r}'s members (untied, equal member counts)")
    for g, jk in jackknife.items():
        if (
            g not in groups or jk.lead not in groups or g in tied or len(jk.correct) != R
            or any(np.shape(a)[0] != 1 for a in groups[g])
            or [np.shape(c) for c in jk.correct] != [(np.shape(a)[0], n) for a in groups[jk.lead]]
        ):  # fmt: skip
            raise ValueError(
                f"group {g!r}: its leave-one-out combinations must be ({jk.lead!r}'s members x n_test) per "
                "replicate, for a group of one combined member per replicate"
            )
    mats = [np.asarray(a, dtype=bool) for g in names for a in groups[g]]
    mats += [np.asarray(c, dtype=bool) for g in sorted(jackknife) for c in jackknife[g].correct]
    correct = np.concatenate(mats).astype(np.float32)  # (models, n)
    rows, start = {}, 0  # group -> (R, L_max) row ids into `correct`, member counts (R,)
    # the leave-one-out rows after the groups': a bootstrap without jackknife keeps its rows
    counts = [(g, [a.shape[0] for a in groups[g]]) for g in names]
    counts += [("~" + g, [len(c) for c in jackknife[g].correct]) for g in sorted(jackknife)]
    for g, m in counts:
        m = np.array(m)
        ids = np.zeros((R, m.max()), dtype=np.int64)
        for r in range(R):
            ids[r, : m[r]] = start + np.arange(m[r])
            start += m[r]
        rows[g] = (ids, m)
    rng = np.random.default_rng(seed)
    c = chunk or max(1, min(n_boot, (1 << 22) // n))
    acc = np.empty((correct.shape[0], n_boot))
    for b0 in range(0, n_boot, c):
        k = min(c, n_boot - b0)
        idx = rng.integers(0, n, size=(k, n))
        counts = np.bincount((idx + n * np.arange(k)[:, None]).ravel(), minlength=k * n)
        counts = counts.reshape(k, n).astype(np.float32)  # (k, n) resample counts
        acc[:, b0 : b0 + k] = (correct @ counts.T).astype(np.float64) * (100.0 / n)
    rep = _replicate_draws(rng, [[np.shape(a)[0] > 0 for a in groups[g]] for g in names], n_boot, R)
    point_acc = correct.astype(np.float64).mean(1) * 100.0
    point, boot = {}, {}
    cols = np.arange(n_boot)[:, None, None]
    us = {g: rng.random((n_boot, R, rows[g][0].shape[1])) for g in names if g not in tied}
    drawn = {g: _member_draws(us[tied.get(g, g)], rows[g][1], rep) for g in names}  # (j, valid, mm)
    for g in names:
        ids, m = rows[g]
        L = ids.shape[1]
        j, valid, mm = drawn[g]
        vals = acc[ids[rep[..., None], j], cols]
        if g in jackknife:  # d. the combination's member noise, from the lead's drawn members
            vals = vals + _member_noise(acc, rows["~" + g], drawn[jackknife[g].lead], rep)
        boot[g] = _stats(vals, valid, mm)
        pvalid = np.arange(L) < m[:, None]
        ps = _stats(point_acc[ids], pvalid, m)
        point[g] = Stats(float(ps.mean), float(ps.best), float(ps.std))
    return Draws(point, boot, n_boot, n, R)


def _replicate_draws(rng, present: list[list[bool]], n_boot: int, R: int) -> np.ndarray:
    """Step b: the replicate of each slot, (n_boot, R); ``present[g][r]``: whether group g has members in
    replicate r. Resampled within the strata of replicates that have the same groups."""
    if R == 1:
        return np.zeros((n_boot, 1), dtype=np.int64)
    patterns = [tuple(p[r] for p in present) for r in range(R)]
    strata = [[r for r in range(R) if patterns[r] == p] for p in dict.fromkeys(patterns)]
    if len(strata) == 1:
        return rng.integers(0, R, size=(n_boot, R))
    rep = np.empty((n_boot, R), dtype=np.int64)
    for S in strata:
        rep[:, S] = np.asarray(S)[rng.integers(0, len(S), size=(n_boot, len(S)))]
    return rep


def _member_draws(u: np.ndarray, m: np.ndarray, rep: np.ndarray):
    """Step c: each slot's drawn members ``j`` (B, R, L_max; 0 where unused), which are used (``valid``)
    and the member count of each slot's replicate ``mm`` (B, R)."""
    mm = m[rep]
    valid = np.arange(u.shape[-1]) < mm[..., None]
    j = np.where(valid, np.minimum(np.floor(u * mm[..., None]).astype(np.int64), mm[..., None] - 1), 0)
    return j, valid, mm


def _member_noise(acc: np.ndarray, loo: tuple[np.ndarray, np.ndarray], lead_draws, rep: np.ndarray):
    """Step d: (B, R, 1) shifts of a combined group's draws, -sqrt(L (L - 1)) x (the mean leave-one-out
    accuracy over the slot's drawn lead members (``lead_draws``, step c) - its mean over all L), under
    each test resample."""
    ids, m = loo
    j, valid, mm = lead_draws
    n_boot, L = rep.shape[0], ids.shape[1]
    drawn = np.where(valid, acc[ids[rep[..., None], j], np.arange(n_boot)[:, None, None]], 0.0).sum(-1) / mm
    every = (acc[ids] * (np.arange(L) < m[:, None])[..., None]).sum(1) / m[:, None]  # (R, B)
    centre = every[rep, np.arange(n_boot)[:, None]]  # (B, R)
    return (-np.sqrt(m * (m - 1.0))[rep] * (drawn - centre))[..., None]


def interval(d_draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the draws (NaN if any draw is NaN or there are none)."""
    d = np.asarray(d_draws, dtype=float)
    if d.size == 0 or not np.all(np.isfinite(d)):
        return math.nan, math.nan
    a = (1 - level) / 2
    lo, hi = np.quantile(d, [a, 1 - a])
    return float(lo), float(hi)


def comparison(d_point: float, d_draws: np.ndarray, level: float = 0.95) -> Comparison:
    """(d, ci_low, ci_high) of one oriented difference."""
    lo, hi = interval(d_draws, level)
    return Comparison(float(d_point), lo, hi)


def compare(draws: Draws, fn: Callable[[dict[str, Stats]], object], level: float = 0.95) -> Comparison:
    """``fn`` maps group stats to d, e.g. ``lambda g: g["ens"].mean - g["single"].best``; it is
    applied to the point estimates and (vectorised) to the draws. A missing group -> all NaN."""
    try:
        return comparison(fn(draws.point), np.broadcast_to(fn(draws.boot), (draws.n_boot,)), level)
    except KeyError:
        return Comparison(math.nan, math.nan, math.nan)


def min_detectable(lo: float, hi: float) -> float:
    """The smallest difference the run could have detected: the CI half-width (hi - lo) / 2
    (pass the ``lo, hi`` of a `Comparison`; NaN in, NaN out)."""
    return (hi - lo) / 2


# -- records with one scalar per unit (no per-example correctness) ------------------------------------------
def unit_draws(values: dict[str, np.ndarray], n_boot: int = 2000, seed=0) -> dict[str, np.ndarray]:
    """Bootstrap resamples of ``n`` independent units (cells, seeds, models) for records that keep one
    value (or one row of values) per unit and no per-example correctness.

    ``values``: name -> array whose first axis is the ``n`` units, the same ``n`` for every name; row j
    of every array belongs to unit j, so every name is resampled with the same units (a paired
    difference sees the same drawn units on both sides). Draws (exact order):
      rng = np.random.default_rng(seed)   (a ``np.random.Generator`` passed as ``seed`` is used as is,
                                          so callers can draw several independent blocks from one stream)
      idx = rng.integers(0, n, size=(n_boot, n))   (row b = the units of draw b, with replacement)
    and the result is ``{name: values[name][idx]}``, shape ``(n_boot, n, ...)``. A one-unit block
    (n = 1) always draws its one unit (and still takes its ``idx`` from the stream)."""
    arrays = {k: np.asarray(v) for k, v in values.items()}
    sizes = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"every value needs the same number (> 0) of units on its first axis, got {sizes}")
    n = sizes.pop()
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return {k: a[idx] for k, a in arrays.items()}


def unit_bootstrap(
    values: dict[str, np.ndarray],
    statistic: Callable[[dict[str, np.ndarray]], object],
    n_boot: int = 2000,
    level: float = 0.95,
    seed=0,
) -> Comparison:
    """Percentile bootstrap of ``d = statistic(values)`` over independent units (`unit_draws`).

    ``statistic`` maps ``{name: array}`` to d reducing the units axis, which is axis 0 of the recorded
    values and axis 1 of the draws (write it on axis ``-1`` for 1-D values, e.g.
    ``lambda v: v["gain"].mean(-1)``); the point estimate is ``statistic(values)``, the draws are
    ``statistic(unit_draws(values, n_boot, seed))`` and the interval is their percentile interval at
    ``level`` (`interval`, np.quantile with linear interpolation)."""
    return comparison(float(statistic(values)), np.asarray(statistic(unit_draws(values, n_boot, seed))), level)

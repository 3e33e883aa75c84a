"""The multi-view experiment's bootstrap (`family_draws`) over the trained models, their test errors
and, when the run has several independent data draws (``protocol.draws``), the data draws; and the
per-draw breakdown (`draws_frame`, draws.csv, and its lines in summary.md).

A run with one data draw resamples models and test errors (`one_draw`); with D > 1 draws every
bootstrap draw first picks D data draws with replacement and then resamples, within each picked draw,
its models and test errors as `one_draw` does, and averages over the picked draws: the interval then
carries the spread between data draws as well as between inits and test points."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ntk_vs_nn.analysis import bootstrap as bs

PROTOCOLS = ("single", "ensemble", "kd", "sd")
NAMES = {"single": "single", "ensemble": "ensemble", "kd": "KD", "sd": "SD"}


def _counts(g: pd.DataFrame) -> np.ndarray:
    """(models, 2) test errors [multi-view, single-view] of the rows (the recorded percentages x counts)."""
    return np.rint(np.stack([g.err_mv_pct / 100 * g.n_mv, g.err_sv_pct / 100 * g.n_sv], axis=1)).astype(np.int64)


def family_draws(fm: pd.DataFrame, mu: float, n_boot: int = 2000, seed=0) -> dict[str, tuple[float, np.ndarray]]:
    """{protocol: (mean error / mu of its models, ``n_boot`` bootstrap draws of it)} for one family's
    models (the rows of `models_frame`; every model of a data draw is scored on the same test set).

    Without a ``draw`` column, or with one data draw in it, this is `one_draw` (the same numbers, the
    same use of the random stream). With D > 1 data draws (``draw`` column; its values in sorted
    order are draws 0..D-1), exact order, one ``rng = np.random.default_rng(seed)`` per family:
      1. ``pick = rng.integers(0, D, size=(n_boot, D))``: bootstrap draw b uses data draw
         ``pick[b, s]`` in slot s (the same picks for every protocol, so differences stay paired);
      2. for slot s = 0..D-1, for data draw d = 0..D-1: `one_draw` of draw d's models on ``rng``
         (a draw picked in two slots gets two independent resamples of its models and test errors);
      3. a protocol's draw b is the mean over the slots s of slot s's resample of draw ``pick[b, s]``
         (slots whose draw lacks the protocol are left out; none left: nan).
    The point estimate is the mean over the data draws (those with the protocol) of their models' mean."""
    if "draw" not in fm or fm["draw"].nunique() <= 1:
        return one_draw(fm, mu, n_boot, seed)
    rng = np.random.default_rng(seed)
    parts = [g for _, g in fm.groupby("draw", sort=True)]
    n_draws = len(parts)
    pick = rng.integers(0, n_draws, size=(n_boot, n_draws))
    slots = [[one_draw(g, mu, n_boot, rng) for g in parts] for _ in range(n_draws)]
    out, rows = {}, np.arange(n_boot)
    for p in PROTOCOLS:
        has = np.array([p in slots[0][d] for d in range(n_draws)])
        if not has.any():
            continue
        nan = np.full(n_boot, np.nan)
        # vals[s, d, b]: slot s's resample b of data draw d
        vals = np.stack([np.stack([sl[d][p][1] if has[d] else nan for d in range(n_draws)]) for sl in slots])
        chosen = np.stack([vals[s, pick[:, s], rows] for s in range(n_draws)], axis=1)  # (n_boot, D)
        mask = has[pick]
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.where(mask, chosen, 0.0).sum(axis=1) / mask.sum(axis=1)
        point = float(np.mean([slots[0][d][p][0] for d in range(n_draws) if has[d]]))
        out[p] = (point, boot)
    return out


def one_draw(fm: pd.DataFrame, mu: float, n_boot: int = 2000, seed=0) -> dict[str, tuple[float, np.ndarray]]:
    """`family_draws` of one data draw's models (``seed``: a seed or a ``np.random.Generator``, used as is).

    The records keep each model's error counts on the n_mv multi-view and n_sv single-view test
    points, not which points it got wrong, so the draws resample the models and then each protocol's
    test errors (exact order, one ``rng = np.random.default_rng(seed)`` per family):
      1. units (`analysis.bootstrap.unit_draws` on ``rng``, models in member order), block by block:
         the pairs (single i, SD student i of single i) resampled together, then the singles without an
         SD student, the SD students without a single, the ensemble, the KD student (a one-model block
         always draws its model);
      2. for each protocol in ``PROTOCOLS`` order: the mean multi-view and single-view error rates of
         its drawn models, p_mv and p_sv, then ``k_mv = rng.binomial(n_mv, p_mv)`` and
         ``k_sv = rng.binomial(n_sv, p_sv)`` (one test-set resample of the protocol's mean model);
         draw = ((1 - mu) k_mv / n_mv + mu k_sv / n_sv) / mu.
    The protocols' test resamples are independent, so differences between protocols (which share the
    test points) get wider intervals than a paired resample would give; a one-model protocol's
    interval is its test-set noise alone."""
    rng = np.random.default_rng(seed)
    by = {p: g.sort_values("member", kind="stable") for p, g in fm.groupby("protocol", sort=False)}
    n = np.array([max(int(fm.n_mv.iloc[0]), 1), max(int(fm.n_sv.iloc[0]), 1)])
    single, sd = by.get("single", fm.iloc[:0]), by.get("sd", fm.iloc[:0])
    paired = sorted(set(single.member) & set(sd.member))
    parts: dict[str, list[np.ndarray]] = {p: [] for p in by}
    if paired:
        d = bs.unit_draws({"single": _counts(single[single.member.isin(paired)]),
                           "sd": _counts(sd[sd.member.isin(paired)])}, n_boot, rng)  # fmt: skip
        parts["single"].append(d["single"])
        parts["sd"].append(d["sd"])
    for p, g in (("single", single), ("sd", sd)):
        rest = g[~g.member.isin(paired)]
        if len(rest):
            parts[p].append(bs.unit_draws({p: _counts(rest)}, n_boot, rng)[p])
    for p in ("ensemble", "kd"):
        if p in by:
            parts[p].append(bs.unit_draws({p: _counts(by[p])}, n_boot, rng)[p])
    out = {}
    for p in PROTOCOLS:
        if p not in by:
            continue
        rate = np.concatenate(parts[p], axis=1).mean(axis=1) / n  # (n_boot, 2)
        k_mv, k_sv = rng.binomial(n[0], rate[:, 0]), rng.binomial(n[1], rate[:, 1])
        out[p] = (float(by[p].error_mu.mean()), ((1 - mu) * k_mv / n[0] + mu * k_sv / n[1]) / mu)
    return out


def draws_frame(models: pd.DataFrame, seeds: list[int]) -> pd.DataFrame:
    """draws.csv: per data draw (its root seed), family and protocol, the models' count and mean error
    (in units of mu, and multi- / single-view in percent) and mean training accuracy."""
    rows = []
    for (draw, family, protocol), g in models.groupby(["draw", "family", "protocol"], sort=False):
        rows.append({"draw": int(draw), "seed": seeds[int(draw)], "family": family, "protocol": protocol,
                     "n_models": len(g), "error_mu": float(g.error_mu.mean()),
                     "err_mv_pct": float(g.err_mv_pct.mean()), "err_sv_pct": float(g.err_sv_pct.mean()),
                     "train_acc_pct": float(g.train_acc_pct.mean())})  # fmt: skip
    return pd.DataFrame(rows)


def draws_lines(frame: pd.DataFrame) -> list[str]:
    """summary.md's lines for the data draws: per family, each protocol's error / mu per draw, and
    the singles' training accuracy per draw (does the family fit its training set?)."""
    lines = []
    for family, g in frame.groupby("family", sort=False):
        cells = []
        for protocol, h in g.groupby("protocol", sort=False):
            cells.append(f"{NAMES[protocol]} " + " / ".join(f"{e:.3f}" for e in h.sort_values("draw").error_mu))
        single = g[g.protocol == "single"].sort_values("draw")
        acc = " / ".join(f"{a:.1f}" for a in single.train_acc_pct)
        lines.append(f"- {family} (error / mu per draw): {'; '.join(cells)}; singles' train acc % per draw: {acc}")
    return lines

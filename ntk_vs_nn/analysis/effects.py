"""Each message's effect in the paper's own units (`EFFECTS`: ① train-sum − ensemble, ③ SD − best and ④
ensemble − train-sum in points; ② and ⑤ the share of the ensemble's gain that KD recovers; ⑥ the SD gain and
⑦ the ensemble gain in single-model σ), with its interval from the bootstrap draws, beside the range of the
paper's Figure 1 rows (CIFAR-10 and CIFAR-100 apart; the same functions applied to the paper's cells,
`published.effect_ranges`) and where the interval lies against that range (`verdict.against_range`).
`analysis.intervals` puts them beside each message's verdict.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis.verdict import against_range


def _ratio(a, b):
    """a / b, NaN where b is 0 (floats or the draws' arrays)."""
    b = np.asarray(b, dtype=float)
    return np.where(b != 0, np.asarray(a, dtype=float) / np.where(b != 0, b, 1.0), np.nan)


# message -> (the effect in the paper's units, d as a function of the group statistics); where a row has
# control singles ⑤ and ⑥ measure the students against them (`CONTROLLED_EFFECTS`)
EFFECTS = {
    1: ("train-sum − ens (points)", lambda g: g["train_sum"].mean - g["ensemble"].mean),
    2: ("KD's share of the ensemble's gain over the best single",
        lambda g: _ratio(g["kd"].mean - g["single"].best, g["ensemble"].mean - g["single"].best)),
    3: ("SD − best (points)", lambda g: g["sd"].mean - g["single"].best),
    4: ("ens − train-sum (points)", lambda g: g["ensemble"].mean - g["train_sum"].mean),
    5: ("KD's share of the ensemble's gain",
        lambda g: _ratio(g["kd"].mean - g["single"].mean, g["ensemble"].mean - g["single"].mean)),
    6: ("SD gain / σ", lambda g: _ratio(g["sd"].mean - g["single"].mean, g["single"].std)),
    7: ("ensemble gain / σ", lambda g: _ratio(g["ensemble"].mean - g["single"].mean, g["single"].std)),
}  # fmt: skip
CONTROLLED_EFFECTS = {
    5: ("KD's share of the ensemble's gain, KD against the control",
        lambda g: _ratio(g["kd"].mean - g["control"].mean, g["ensemble"].mean - g["single"].mean)),
    6: ("SD gain over the control / σ", lambda g: _ratio(g["sd"].mean - g["control"].mean, g["control"].std)),
}  # fmt: skip
PAPER_DATASETS = ("cifar10", "cifar100")


@functools.cache
def paper_ranges() -> dict:
    """{(family, message, dataset): (smallest, largest, rows)} of the paper's effects (`EFFECTS`)."""
    from ntk_vs_nn.analysis import published  # the published tables through our analysis

    return published.effect_ranges(EFFECTS)


def effect(draws, msg: int, has_control: bool, fam: str, level: float) -> dict:
    """The effect columns of message ``msg`` for family ``fam`` (kernel families by name, nets as nn)."""
    label, fn = (CONTROLLED_EFFECTS if has_control and msg in CONTROLLED_EFFECTS else EFFECTS)[msg]
    c = bs.Comparison(math.nan, math.nan, math.nan)
    if draws:
        with np.errstate(divide="ignore", invalid="ignore"):
            try:
                point, boot = float(fn(draws.point)), np.broadcast_to(fn(draws.boot), (draws.n_boot,))
            except KeyError:  # a group the effect reads is missing
                point, boot = math.nan, np.full(draws.n_boot, math.nan)
        # a ratio's draws whose resampled members are all one model have σ (or a gain) of 0: left out,
        # while they are rare (at most 1 % of the draws); more, and the interval is undefined
        finite = boot[np.isfinite(boot)]
        if len(finite) >= 0.99 * draws.n_boot:
            c = bs.comparison(point, finite, level)
    out = dict(effect=label, effect_value=c.d, effect_ci_low=c.lo, effect_ci_high=c.hi)
    for ds in PAPER_DATASETS:
        lo, hi, _ = paper_ranges().get((fam, msg, ds), (math.nan, math.nan, 0))
        out.update({f"paper_{ds}_lo": lo, f"paper_{ds}_hi": hi, f"vs_{ds}": against_range(c.lo, c.hi, lo, hi)})
    return out

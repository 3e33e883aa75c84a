"""The verdict rules of every experiment's claims.

A claim is a difference ``d`` oriented so that the claim says ``d > 0`` (strict) or ``d >= 0``.
Every claim with a confidence interval [lo, hi] of its ``d`` is decided by `decide_interval` (the
tables' messages when their records carry test correctness, `analysis.intervals`; the multi-view
statements and claims, Figure 3 and Figure 6, `report.multiview` / `report.gaussian` /
`report.channels`):

  strict:     holds if lo > 0,  fails if hi < 0, inconclusive otherwise;
  non-strict: holds if lo >= 0, fails if hi < 0, inconclusive otherwise.

The band rule `decide` (an uncertainty ``band`` in place of the interval) is left only for the
tables' messages of folders recorded without test correctness (`analysis.messages`):

  strict:     holds if d > band,  fails if d < -band, inconclusive otherwise;
  non-strict: holds if d >= 0,    fails if d < -band, inconclusive otherwise.

A missing or non-finite ``d`` or bound is inconclusive. A claim made of several comparisons holds
when all hold, fails when any fails, and is inconclusive otherwise (`combine`).

Beside the verdict, an effect in the paper's units is set against the range of the paper's rows
(`against_range`): its interval lies below every row, above every row, inside the range, or overlaps
it; so a small decided effect ("smaller than every paper row") is told apart from an undecided one.
"""

from __future__ import annotations

import math

VERDICTS = ("holds", "fails", "inconclusive")
AGAINST = ("smaller than every paper row", "larger than every paper row", "within the paper's range",
           "overlaps the paper's range")  # fmt: skip


def decide(d: float | None, band: float, strict: bool = True) -> str:
    """The band-rule verdict of one comparison (see the module docstring)."""
    if d is None or not math.isfinite(d):
        return "inconclusive"
    if strict:
        return "holds" if d > band else "fails" if d < -band else "inconclusive"
    return "holds" if d >= 0 else "fails" if d < -band else "inconclusive"


def combine(verdicts: list[str]) -> str:
    """All hold: holds; any fails: fails; else inconclusive."""
    if "fails" in verdicts:
        return "fails"
    return "holds" if verdicts and all(v == "holds" for v in verdicts) else "inconclusive"


def decide_interval(lo: float | None, hi: float | None, strict: bool = True) -> str:
    """The verdict of one comparison from a confidence interval [lo, hi] of its ``d``:

      strict (claim d > 0):      holds if lo > 0,  fails if hi < 0, inconclusive otherwise;
      non-strict (claim d >= 0): holds if lo >= 0, fails if hi < 0, inconclusive otherwise.

    A missing or non-finite bound is inconclusive."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if hi < 0:
        return "fails"
    return "holds" if (lo > 0 if strict else lo >= 0) else "inconclusive"


def against_range(lo: float, hi: float, paper_lo: float, paper_hi: float) -> str:
    """Where an effect's interval [lo, hi] lies against the paper's rows' range [paper_lo, paper_hi]
    (`AGAINST`): wholly below the smallest row, wholly above the largest, inside the range, or
    overlapping an edge; "" when a bound or the range is missing."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi, paper_lo, paper_hi)):
        return ""
    if hi < paper_lo:
        return AGAINST[0]
    if lo > paper_hi:
        return AGAINST[1]
    return AGAINST[2] if paper_lo <= lo and hi <= paper_hi else AGAINST[3]

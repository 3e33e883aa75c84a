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
"""

from __future__ import annotations

import math

VERDICTS = ("holds", "fails", "inconclusive")


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

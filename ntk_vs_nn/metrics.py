"""Metrics for any predictor (nets, kernel models, ensembles, students), on logits (N, k) and integer
labels (N,); log-probabilities are valid logits. Implemented in `ntk_vs_nn.analysis.metrics`.

    >>> from ntk_vs_nn import metrics
    >>> t = metrics.calibrate(val_logits, val_labels)                      # doctest: +SKIP
    >>> metrics.nll(test_logits / t, test_labels)                          # doctest: +SKIP
"""

from ntk_vs_nn.analysis.metrics import (  # noqa: F401
    accuracy,
    brier,
    calibrate,
    calibrated,
    combine,
    de_curve,
    dee,
    disagreement,
    diversity,
    ece,
    fidelity,
    nll,
    pairwise_kl,
    summary,
)

__all__ = [
    "accuracy",
    "brier",
    "calibrate",
    "calibrated",
    "combine",
    "de_curve",
    "dee",
    "disagreement",
    "diversity",
    "ece",
    "fidelity",
    "nll",
    "pairwise_kl",
    "summary",
]

"""Ensemble combination rules, accuracy and NLL on hand-made arrays."""

import math

import numpy as np
import pytest

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.analysis.metrics import accuracy, combine, finite, nll, summary


def test_accuracy_is_top1_in_percent():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 2])  # right, right, wrong, wrong
    assert accuracy(logits, labels) == pytest.approx(50.0)
    assert accuracy(logits, np.array([0, 1, 2, 0])) == pytest.approx(100.0)


def test_nll_of_uniform_logits_is_log_k():
    assert nll(np.zeros((5, 4)), np.array([0, 1, 2, 3, 0])) == pytest.approx(math.log(4))


def test_nll_hand_computed():
    # softmax([0, log 3]) = [1/4, 3/4]; softmax([log 2, 0, 0]) = [1/2, 1/4, 1/4]
    l1 = np.array([[0.0, math.log(3)]])
    assert nll(l1, np.array([1])) == pytest.approx(-math.log(0.75))
    assert nll(l1, np.array([0])) == pytest.approx(-math.log(0.25))
    l2 = np.array([[math.log(2), 0.0, 0.0], [math.log(2), 0.0, 0.0]])
    assert nll(l2, np.array([0, 2])) == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)


def test_nll_is_invariant_to_a_shift_of_the_logits_and_stable_for_large_ones():
    logits = np.array([[1000.0, 0.0, -1000.0], [3.0, 2.0, 1.0]], np.float32)
    labels = np.array([0, 2])
    expected = (0.0 + -(1.0 - np.log(np.exp([3.0, 2.0, 1.0]).sum()))) / 2
    assert nll(logits, labels) == pytest.approx(expected, rel=1e-6)
    assert nll(logits + 50.0, labels) == pytest.approx(expected, rel=1e-6)


MEMBERS = [
    np.array([[0.0, 10.0], [1.0, 2.0]]),
    np.array([[3.0, 0.0], [0.5, -1.0]]),
    np.array([[3.0, 0.0], [2.0, 2.0]]),
]


def test_combine_logits_is_the_mean_of_member_logits():
    np.testing.assert_allclose(combine(MEMBERS, "logits"), (MEMBERS[0] + MEMBERS[1] + MEMBERS[2]) / 3)


def test_combine_probs_is_log_of_mean_softmax():
    probs = [np.exp(m) / np.exp(m).sum(-1, keepdims=True) for m in MEMBERS]
    expected = np.log(sum(probs) / 3)
    got = combine(MEMBERS, "probs")
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-12)  # normalised log-probabilities


def test_combine_rules_can_disagree_on_the_prediction():
    # One confident member for class 1, two milder ones for class 0 (first row): averaging logits
    # follows the confident member, averaging probabilities the majority.
    assert np.argmax(combine(MEMBERS, "logits")[0]) == 1
    assert np.argmax(combine(MEMBERS, "probs")[0]) == 0


def test_combine_of_one_member_is_that_member_up_to_normalisation():
    m = MEMBERS[1]
    np.testing.assert_allclose(combine([m], "logits"), m)
    logp = m - np.log(np.exp(m).sum(-1, keepdims=True))
    np.testing.assert_allclose(combine([m], "probs"), logp, rtol=1e-12)


def test_combine_probs_is_stable_for_large_logits():
    members = [np.array([[800.0, 0.0]]), np.array([[0.0, 800.0]])]
    got = combine(members, "probs")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, np.log([[0.5, 0.5]]), rtol=1e-9)


def test_summary_and_finite():
    logits, labels = np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0])
    s = summary(logits, labels)
    assert s["acc"] == pytest.approx(50.0) and s["nll"] == pytest.approx(nll(logits, labels))
    assert finite(logits, labels)
    assert not finite(logits, np.array([0.0, np.nan]))
    assert not finite(np.array([np.inf]))


def test_ece_hand_computed_and_bounds():
    # two bins used: confidence 0.9 (2 examples, 1 right: gap |0.5 - 0.9|) and 0.6 (2 right: |1 - 0.6|)
    p_hi, p_lo = np.log([0.9, 0.1]), np.log([0.6, 0.4])
    logits = np.stack([p_hi, p_hi, p_lo, p_lo])
    labels = np.array([0, 1, 0, 0])
    assert metrics.ece(logits, labels) == pytest.approx(100 * (0.5 * 0.4 + 0.5 * 0.4))
    # perfectly calibrated: confidence 0.5 on two classes, half right
    half = np.zeros((4, 2))
    assert metrics.ece(half, np.array([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-9)
    assert "ece" in metrics.summary(logits, labels)


def test_fidelity_agreement_and_kl():
    from ntk_vs_nn.analysis.metrics import fidelity

    rng = np.random.default_rng(0)
    t = rng.normal(size=(50, 4))
    same = fidelity(t, t)
    assert same["agreement"] == 100.0 and abs(same["kl_teacher"]) < 1e-12
    s = t + rng.normal(scale=2.0, size=t.shape)
    f = fidelity(t, s)
    pt, ps = np.exp(t) / np.exp(t).sum(-1, keepdims=True), np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    assert f["kl_teacher"] == pytest.approx(np.mean(np.sum(pt * np.log(pt / ps), -1)), rel=1e-10)
    assert f["agreement"] == pytest.approx(100 * np.mean(t.argmax(-1) == s.argmax(-1)))
    assert 0 < f["agreement"] < 100 and f["kl_teacher"] > 0
    shifted = fidelity(t, t + 5.0)  # softmax is shift-invariant: a perfect student
    assert shifted["agreement"] == 100.0 and abs(shifted["kl_teacher"]) < 1e-12

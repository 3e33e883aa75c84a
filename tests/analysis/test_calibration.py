"""Brier, ECE bin edges, temperature scaling, DEE and diversity (ntk_vs_nn.metrics) on small arrays."""

import itertools
import math

import numpy as np
import pytest

from ntk_vs_nn import metrics


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_brier_hand_computed_is_summed_over_classes():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]]))
    labels = np.array([0, 2])
    first = 0.3**2 + 0.2**2 + 0.1**2
    second = 0.5**2 + 0.25**2 + 0.75**2
    assert metrics.brier(logits, labels) == pytest.approx((first + second) / 2, rel=1e-12)
    assert metrics.brier(np.array([[50.0, -50.0]]), np.array([1])) == pytest.approx(2.0)  # sure and wrong
    assert metrics.summary(logits, labels)["brier"] == pytest.approx(metrics.brier(logits, labels))


def test_ece_bin_edges():
    # 5 bins: confidences 0.41 and 0.59 share the bin [0.4, 0.6), 0.61 lies in [0.6, 0.8)
    probs = np.array([[0.41, 0.30, 0.29], [0.59, 0.21, 0.20], [0.61, 0.20, 0.19]])
    labels = np.array([0, 1, 0])  # right, wrong, right
    got = metrics.ece(np.log(probs), labels, bins=5)
    expected = 100 * (2 / 3 * abs(0.5 - 0.50) + 1 / 3 * abs(1.0 - 0.61))
    assert got == pytest.approx(expected, rel=1e-9)
    # moving the edge (0.61 -> 0.58, same bin as the others) changes it: all three pooled
    probs[2] = [0.58, 0.22, 0.20]
    pooled = 100 * abs(2 / 3 - np.mean([0.41, 0.59, 0.58]))
    assert metrics.ece(np.log(probs), labels, bins=5) == pytest.approx(pooled, rel=1e-9)
    # confidence 1 belongs to the last bin (no bin past the end)
    assert metrics.ece(np.array([[100.0, 0.0]]), np.array([0])) == pytest.approx(0.0, abs=1e-9)
    assert metrics.ece(np.array([[100.0, 0.0]]), np.array([1])) == pytest.approx(100.0)


def test_a_perfectly_calibrated_predictor_has_ece_zero_up_to_sampling():
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)
    right = rng.uniform(size=n) < conf
    logits = np.log(np.stack([conf, 1 - conf], -1))
    labels = np.where(right, 0, 1)
    assert metrics.ece(logits, labels) < 0.5  # percent; an overconfident one is far off
    assert metrics.ece(logits * 3, labels) > 5.0


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_temperature_scaling_never_increases_validation_nll_and_finds_the_temperature(scale):
    rng = np.random.default_rng(1)
    z = rng.normal(scale=2.0, size=(20_000, 5))
    y = np.array([rng.choice(5, p=p) for p in _softmax(z)])  # labels drawn from softmax(z): T = 1 for z
    val = z * scale  # the predictor's logits: over- (scale > 1) or under-confident by 1/scale
    t = metrics.calibrate(val, y)
    assert metrics.nll(val / t, y) <= metrics.nll(val, y) + 1e-12
    assert t == pytest.approx(scale, rel=0.05)
    c = metrics.calibrated(val, y, val[:100], y[:100])
    assert c["temperature"] == t and c["cnll"] == pytest.approx(metrics.nll(val[:100] / t, y[:100]))
    assert c["cbs"] == pytest.approx(metrics.brier(val[:100] / t, y[:100]))
    assert c["cece"] == pytest.approx(metrics.ece(val[:100] / t, y[:100]))


def test_calibrate_keeps_t_1_when_nothing_is_better():
    # a uniform predictor has NLL log k at every temperature: no fit beats T = 1
    z = np.zeros((10, 3))
    assert metrics.calibrate(z, np.arange(10) % 3) == 1.0


def test_dee_of_de_m_is_m_and_interpolates():
    curve = [0.50, 0.40, 0.35, 0.33]
    for m, v in enumerate(curve, 1):
        assert metrics.dee(v, curve) == pytest.approx(m)
    assert metrics.dee(0.45, curve) == pytest.approx(1.5)
    assert metrics.dee(0.34, curve) == pytest.approx(3.5)
    gain = (0.50 - 0.33) / 3  # mean gain per member: the extrapolation outside the curve
    assert metrics.dee(0.50 + gain / 2, curve) == pytest.approx(0.5)
    assert metrics.dee(5.0, curve) == 0.0
    assert metrics.dee(0.33 - gain, curve) == pytest.approx(5.0)


def test_dee_reads_a_non_monotone_curve_as_its_running_minimum():
    curve = [0.50, 0.40, 0.42, 0.30]  # DE-3 worse than DE-2 (noise): 0.41 is first reached by DE-2
    assert metrics.dee(0.41, curve) == pytest.approx(1.9)
    assert metrics.dee(0.35, curve) == pytest.approx(3.5)  # between 0.40 (DE-3's envelope) and 0.30
    with pytest.raises(ValueError):
        metrics.dee(0.4, [0.4])
    flat = [0.4, 0.4, 0.4]
    assert metrics.dee(0.5, flat) == 1.0 and metrics.dee(0.3, flat) == 3.0


def test_de_curve_ends_and_dee_of_the_pool():
    rng = np.random.default_rng(2)
    y_val, y_test = rng.integers(0, 4, 300), rng.integers(0, 4, 400)
    signal = lambda y: 2.0 * np.eye(4)[y]  # noqa: E731
    val = [signal(y_val) + rng.normal(scale=2.0, size=(300, 4)) for _ in range(4)]
    test = [signal(y_test) + rng.normal(scale=2.0, size=(400, 4)) for _ in range(4)]
    curve = metrics.de_curve(val, y_val, test, y_test, rule="probs")
    singles = [metrics.calibrated(v, y_val, t, y_test)["cnll"] for v, t in zip(val, test)]
    assert curve[0] == pytest.approx(np.mean(singles))
    full = metrics.calibrated(metrics.combine(val, "probs"), y_val, metrics.combine(test, "probs"), y_test)
    assert curve[-1] == pytest.approx(full["cnll"])
    pairs = [
        metrics.calibrated(
            metrics.combine([val[i], val[j]], "probs"), y_val, metrics.combine([test[i], test[j]], "probs"), y_test
        )["cnll"]
        for i, j in itertools.combinations(range(4), 2)
    ]
    assert curve[1] == pytest.approx(np.mean(pairs))  # 6 pairs <= 10 subsets: all of them
    assert curve[-1] < curve[0]  # independent noise: the ensemble gains
    assert metrics.dee(curve[-1], curve) == pytest.approx(4.0)


def test_disagreement_and_pairwise_kl_hand_computed():
    a = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    b = np.log(np.array([[0.7, 0.3], [0.6, 0.4], [0.3, 0.7]]))
    c = a.copy()
    # predictions a: 0 1 0, b: 0 0 1, c = a: pairs (a,b) 2/3, (a,c) 0, (b,c) 2/3
    assert metrics.disagreement([a, b, c]) == pytest.approx(100 * (2 / 3 + 0 + 2 / 3) / 3)
    pa, pb = np.exp(a), np.exp(b)
    kl_ab = np.mean(np.sum(pa * np.log(pa / pb), -1))
    kl_ba = np.mean(np.sum(pb * np.log(pb / pa), -1))
    assert metrics.pairwise_kl([a, b]) == pytest.approx((kl_ab + kl_ba) / 2, rel=1e-12)
    # three members: 6 ordered pairs, the (a, c) ones are 0
    assert metrics.pairwise_kl([a, b, c]) == pytest.approx((2 * kl_ab + 2 * kl_ba) / 6, rel=1e-12)
    assert math.isnan(metrics.disagreement([a])) and metrics.diversity([a, a])["pairwise_kl"] == 0.0

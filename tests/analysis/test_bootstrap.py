"""The paired bootstrap (ntk_vs_nn/analysis/bootstrap.py) and `verdict.decide_interval`."""

import math

import numpy as np
import pytest

from ntk_vs_nn.analysis.bootstrap import (
    Jackknife,
    bootstrap,
    compare,
    comparison,
    decode_correct,
    encode_correct,
    interval,
    min_detectable,
)
from ntk_vs_nn.analysis.verdict import decide_interval


def _members(rng, acc, n, shared=0.6):
    """(len(acc), n) bool correctness with P(correct) = acc[k] exactly for member k, correlated
    across members: on a share ``shared`` of the examples every member compares the same uniform
    (a per-example difficulty) with its accuracy, on the rest its own uniform."""
    acc = np.asarray(acc, float)[:, None]
    same = rng.random(n) < shared
    return np.where(same, rng.random(n), rng.random((len(acc), n))) < acc


def _coverage(L, tau, truth=(0.92, 0.90), n=1000, n_boot=400, batches=10, per_batch=100, seed=0):
    """Fraction of trials whose 95 % CI of (mean of group a) - (mean of group b), in points, covers
    the true difference 100 * (truth[0] - truth[1]). A trial draws L member accuracies per group
    around its true mean (sd ``tau``; tau = 0: every member has exactly the true accuracy) and a
    fresh test set of n examples. To keep it fast, each `bootstrap` call holds ``per_batch``
    independent trials as separate groups ("a007", "b007", ...): they share the test-resample
    indices (trials are conditionally independent given them, so the coverage estimate stays
    unbiased) and each batch uses its own seed."""
    rng = np.random.default_rng(seed)
    hits = 0
    delta = 100 * (truth[0] - truth[1])
    for batch in range(batches):
        groups = {}
        for t in range(per_batch):
            acc_a = truth[0] + tau * rng.standard_normal(L)
            acc_b = truth[1] + tau * rng.standard_normal(L)
            c = _members(rng, np.concatenate([acc_a, acc_b]), n)
            groups[f"a{t:03d}"], groups[f"b{t:03d}"] = [c[:L]], [c[L:]]
        draws = bootstrap(groups, n_boot=n_boot, seed=1000 + batch)
        for t in range(per_batch):
            r = compare(draws, lambda g, t=t: g[f"a{t:03d}"].mean - g[f"b{t:03d}"].mean)
            hits += r.lo <= delta <= r.hi
    return hits / (batches * per_batch)


def test_coverage_two_models_paired():
    """Two models, true accuracies 92 % and 90 %, correlated correctness; n = 1,000 test examples,
    n_boot = 400, 2,000 trials: the 95 % CI of acc_A - acc_B covered the true 2.0 points in
    95.05 % of the trials with this seed (94.9 % with one call per trial, n = 2,000, B = 500)."""
    cov = _coverage(L=1, tau=0.0, batches=20)
    assert 0.93 <= cov <= 0.97, cov


def test_coverage_group_means_with_member_variance():
    """L = 20 members per group whose true accuracies are drawn N(92 %, (2 %)^2) and N(90 %, (2 %)^2);
    the claim is about the true group means' difference (2.0 points), so member resampling matters.
    n = 1,000, B = 400, 2,000 trials: coverage 95.25 % with this seed.

    Coverage depends on L and on how the members' true spread (tau) compares with each member's
    own test noise (here ~0.55 points sd). Measured the same way (2,000 trials):
      L = 10: tau 0.5 % 98.3 %, 1 % 97.0 %, 2 % 94.0 %, 3 % 92.9 %;
      L = 5, tau 2 %: 92.2 %;  L = 3: tau 0.5 % 97.6 %, 2 % 88.3 %.
    So: conservative when member-specific test noise dominates (resampling both examples and
    members counts the member x example noise more than once, as Owen's pigeonhole bootstrap
    does); under-covers when the true spread dominates and L is small (the percentile bootstrap
    of a mean of L values has variance (L-1)/L of the true one and no t-correction). L = 20 is
    where it holds across these tau; the pipeline's L = 10 is within 93-98 %."""
    cov = _coverage(L=20, tau=0.02, batches=20)
    assert 0.93 <= cov <= 0.97, cov


# --- hand-computed: a naive loop implementation of the module docstring's spec, same draws ---


def _naive(groups, n_boot, seed):
    """Explicit loops over draws, slots, members and test indices; random draws in the documented
    order (test indices as one (n_boot, n) call, which the module's chunks reproduce)."""
    names = sorted(groups)
    R = len(groups[names[0]])
    n = groups[names[0]][0].shape[1]
    rng = np.random.default_rng(seed)
    test_idx = rng.integers(0, n, size=(n_boot, n))
    rep = rng.integers(0, R, size=(n_boot, R)) if R > 1 else np.zeros((n_boot, 1), dtype=int)
    u = {g: rng.random((n_boot, R, max(a.shape[0] for a in groups[g]))) for g in names}
    out = {g: {"mean": [], "best": [], "std": []} for g in names}
    for b in range(n_boot):
        for g in names:
            slot_means, slot_bests, pooled = [], [], []
            for s in range(R):
                models = groups[g][int(rep[b, s])]
                m = models.shape[0]
                accs = []
                for j in range(m):
                    k = min(int(math.floor(u[g][b, s, j] * m)), m - 1)
                    hits = 0
                    for i in range(n):
                        hits += int(models[k, test_idx[b, i]])
                    accs.append(100.0 * hits / n)
                slot_means.append(sum(accs) / m)
                slot_bests.append(max(accs))
                pooled += accs
            mu = sum(pooled) / len(pooled)
            sd = math.sqrt(sum((x - mu) ** 2 for x in pooled) / (len(pooled) - 1)) if len(pooled) > 1 else 0.0
            out[g]["mean"].append(sum(slot_means) / R)
            out[g]["best"].append(sum(slot_bests) / R)
            out[g]["std"].append(sd)
    return out


def _naive_percentile(xs, q):
    """numpy's default ('linear') quantile, by hand."""
    xs = sorted(xs)
    h = (len(xs) - 1) * q
    f = int(math.floor(h))
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (h - f) * (xs[c] - xs[f])


def _acc(row):
    return 100.0 * sum(bool(x) for x in row) / len(row)


def test_message5_interval_by_hand():
    """⑤ d = (KD - mean) - (ens - mean)/2 on 1 replicate: 3 singles, 1 ensemble, 2 KD students,
    n_test = 20: point estimate and 95 % interval equal the naive loops to 1e-12."""
    rng = np.random.default_rng(5)
    groups = {
        "single": [rng.random((3, 20)) < 0.7],
        "ensemble": [rng.random((1, 20)) < 0.85],
        "kd": [rng.random((2, 20)) < 0.8],
    }
    n_boot, seed = 300, 11
    draws = bootstrap(groups, n_boot=n_boot, seed=seed, chunk=7)  # chunks of 7 draws: same stream

    def d5(g):
        return (g["kd"].mean - g["single"].mean) - (g["ensemble"].mean - g["single"].mean) / 2

    got = compare(draws, d5)
    single = [_acc(r) for r in groups["single"][0]]
    kd = [_acc(r) for r in groups["kd"][0]]
    ens = _acc(groups["ensemble"][0][0])
    mean = sum(single) / 3
    assert got.d == pytest.approx((sum(kd) / 2 - mean) - (ens - mean) / 2, abs=1e-12)

    hand = _naive(groups, n_boot, seed)
    d_hand = [
        (k - s) - (e - s) / 2 for k, s, e in zip(hand["kd"]["mean"], hand["single"]["mean"], hand["ensemble"]["mean"])
    ]
    np.testing.assert_allclose(d5(draws.boot), d_hand, rtol=0, atol=1e-12)
    assert got.lo == pytest.approx(_naive_percentile(d_hand, 0.025), abs=1e-12)
    assert got.hi == pytest.approx(_naive_percentile(d_hand, 0.975), abs=1e-12)
    assert len(set(np.round(d_hand, 9))) > 10  # the draws really vary
    assert min_detectable(got.lo, got.hi) == pytest.approx((got.hi - got.lo) / 2)


def test_all_statistics_by_hand_with_replicates():
    """R = 2 replicates, unequal member counts (a replicate lost a member), every group's mean,
    best and std draws and point estimates against the naive loops."""
    rng = np.random.default_rng(6)
    groups = {
        "single": [rng.random((3, 15)) < 0.6, rng.random((2, 15)) < 0.8],
        "ensemble": [rng.random((1, 15)) < 0.8, rng.random((1, 15)) < 0.9],
        "sd": [rng.random((2, 15)) < 0.7, rng.random((2, 15)) < 0.75],
    }
    n_boot, seed = 150, 3
    draws = bootstrap(groups, n_boot=n_boot, seed=seed, chunk=4)
    hand = _naive(groups, n_boot, seed)
    for g in groups:
        for stat in ("mean", "best", "std"):
            np.testing.assert_allclose(getattr(draws.boot[g], stat), hand[g][stat], rtol=0, atol=1e-12)
        per_rep = [[_acc(r) for r in a] for a in groups[g]]
        pooled = sum(per_rep, [])
        p = draws.point[g]
        assert p.mean == pytest.approx(np.mean([np.mean(a) for a in per_rep]), abs=1e-12)
        assert p.best == pytest.approx(np.mean([max(a) for a in per_rep]), abs=1e-12)
        assert p.std == pytest.approx(np.std(pooled, ddof=1), abs=1e-12)
    assert draws.n_boot == n_boot and draws.n_test == 15 and draws.n_replicates == 2


def test_chunking_does_not_change_draws():
    rng = np.random.default_rng(7)
    groups = {"single": [rng.random((4, 333)) < 0.8], "kd": [rng.random((2, 333)) < 0.85]}
    a, b = bootstrap(groups, 100, seed=2), bootstrap(groups, 100, seed=2, chunk=9)
    c = bootstrap(groups, 100, seed=3)
    for g in groups:
        np.testing.assert_array_equal(a.boot[g].mean, b.boot[g].mean)
        np.testing.assert_array_equal(a.boot[g].std, b.boot[g].std)
    assert not np.array_equal(a.boot["kd"].mean, c.boot["kd"].mean)


# --- pairing, members, replicates ---


def test_identical_models_give_zero_interval():
    rng = np.random.default_rng(8)
    x = rng.random((1, 500)) < 0.9
    draws = bootstrap({"ensemble": [x], "train_sum": [x.copy()]}, n_boot=500, seed=1)
    r = compare(draws, lambda g: g["ensemble"].mean - g["train_sum"].mean)
    assert (r.d, r.lo, r.hi) == (0.0, 0.0, 0.0)


def test_pairing_one_example_difference_is_narrow():
    """Models differ on one of n = 1,000 examples: d* = 100 * (times that example is drawn) / n,
    so the paired CI is about [0, 0.3] points; resampling each model's test set independently
    (unpaired) gives an interval of ~5 points."""
    n = 1000
    rng = np.random.default_rng(9)
    a = rng.random((1, n)) < 0.9
    a[0, 0] = True
    b = a.copy()
    b[0, 0] = False
    r = compare(
        bootstrap({"ensemble": [a], "single": [b]}, n_boot=1000, seed=4),
        lambda g: g["ensemble"].mean - g["single"].mean,
    )
    assert r.d == pytest.approx(100 / n)
    assert 0.0 <= r.lo and r.hi <= 500 / n  # Poisson(1) counts: 97.5 % quantile is 3
    da, db = bootstrap({"x": [a]}, n_boot=1000, seed=5), bootstrap({"x": [b]}, n_boot=1000, seed=6)
    lo_u, hi_u = interval(da.boot["x"].mean - db.boot["x"].mean)
    assert hi_u - lo_u > 3.0
    assert (r.hi - r.lo) * 10 < hi_u - lo_u


def test_member_resampling_matters():
    """Two members, one always right and one always wrong: test resampling changes nothing, so
    every spread comes from member resampling: mean in {0, 50, 100} w.p. 1/4, 1/2, 1/4."""
    x = np.array([[True] * 50, [False] * 50])
    d = bootstrap({"single": [x]}, n_boot=4000, seed=0).boot["single"]
    assert set(np.unique(d.mean)) == {0.0, 50.0, 100.0}
    freq = np.array([(d.mean == v).mean() for v in (0.0, 50.0, 100.0)])
    np.testing.assert_allclose(freq, [0.25, 0.5, 0.25], atol=0.03)
    np.testing.assert_array_equal(d.best, np.where(d.mean == 0.0, 0.0, 100.0))
    np.testing.assert_allclose(d.std, np.where(d.mean == 50.0, np.std([0, 100], ddof=1), 0.0))


def test_replicate_resampling_widens_and_point_is_mean_over_replicates():
    rng = np.random.default_rng(10)
    n = 800
    levels = (0.80, 0.88, 0.95)  # group a's accuracy differs across replicates; b's does not
    reps = [{"a": rng.random((2, n)) < p, "b": rng.random((2, n)) < 0.85} for p in levels]

    def d(g):
        return g["a"].mean - g["b"].mean

    one = [compare(bootstrap({k: [r[k]] for k in r}, 1000, seed=1), d) for r in reps]
    three = compare(bootstrap({k: [r[k] for r in reps] for k in ("a", "b")}, 1000, seed=1), d)
    assert three.d == pytest.approx(np.mean([o.d for o in one]), abs=1e-12)
    raw = np.mean([100 * (r["a"].mean() - r["b"].mean()) for r in reps])
    assert three.d == pytest.approx(raw, abs=1e-12)
    assert three.hi - three.lo > 2 * max(o.hi - o.lo for o in one)


def test_missing_group_and_nan_are_inconclusive():
    draws = bootstrap({"single": [np.ones((2, 10), bool)]}, n_boot=50)
    r = compare(draws, lambda g: g["kd"].mean - g["single"].mean)
    assert all(math.isnan(x) for x in r)
    assert decide_interval(r.lo, r.hi) == "inconclusive"
    assert all(math.isnan(x) for x in interval(np.array([1.0, np.nan])))
    assert comparison(1.0, np.array([0.5, 1.5])) == (1.0, pytest.approx(0.525), pytest.approx(1.475))


def test_rejects_inconsistent_groups():
    with pytest.raises(ValueError):
        bootstrap({"a": [np.ones((1, 5), bool)], "b": [np.ones((1, 6), bool)]})
    with pytest.raises(ValueError):
        bootstrap({"a": [np.ones((1, 5), bool)], "b": [np.ones((1, 5), bool)] * 2})
    with pytest.raises(ValueError):
        bootstrap({"a": [np.ones((0, 5), bool)]})


def test_pipeline_size_runs():
    """n_test 10,000, 60 models, B 2,000 (well under a second here; not timed)."""
    rng = np.random.default_rng(12)
    n = 10_000
    sizes = {"single": 20, "ensemble": 1, "train_sum": 1, "kd": 3, "sd": 5}  # x 2 replicates = 60 models
    groups = {g: [rng.random((m, n)) < 0.9 for _ in range(2)] for g, m in sizes.items()}
    assert sum(a.shape[0] for v in groups.values() for a in v) == 60
    draws = bootstrap(groups, n_boot=2000, seed=0)
    for g in groups:
        for stat in ("mean", "best", "std"):
            x = getattr(draws.boot[g], stat)
            assert x.shape == (2000,) and np.all(np.isfinite(x))
    r = compare(draws, lambda g: g["ensemble"].mean - g["single"].mean - 2 * g["single"].std)
    assert r.lo < r.d < r.hi


# --- encoding and verdicts ---


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 10_000])
def test_encode_decode_round_trip(n):
    x = np.random.default_rng(n).random(n) < 0.5
    s = encode_correct(x)
    assert isinstance(s, str) and s.isascii()
    y = decode_correct(s, n)
    assert y.dtype == bool and y.shape == (n,)
    np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError):
        decode_correct(s, n + 8)


@pytest.mark.parametrize(
    "lo, hi, strict, verdict",
    [
        (0.1, 0.5, True, "holds"),
        (-0.5, -0.1, True, "fails"),
        (-0.1, 0.5, True, "inconclusive"),
        (0.0, 0.5, True, "inconclusive"),
        (0.0, 0.0, True, "inconclusive"),
        (0.1, 0.5, False, "holds"),
        (0.0, 0.5, False, "holds"),
        (0.0, 0.0, False, "holds"),
        (-0.5, -0.1, False, "fails"),
        (-0.1, 0.5, False, "inconclusive"),
        (-0.5, 0.0, False, "inconclusive"),
        (-0.5, 0.0, True, "inconclusive"),
        (math.nan, 0.5, True, "inconclusive"),
        (0.1, math.nan, False, "inconclusive"),
        (None, None, True, "inconclusive"),
        (-math.inf, -1.0, True, "inconclusive"),
    ],
)
def test_decide_interval(lo, hi, strict, verdict):
    assert decide_interval(lo, hi, strict=strict) == verdict


def test_tied_groups_share_their_member_draws():
    """Two copies of one group: tied, their difference is 0 in every draw (paired over members as well as
    test points and replicates); untied, the members are resampled apart and the interval has width.
    A tie between groups of unequal member counts is an error."""
    rs = np.random.RandomState(0)
    reps = [rs.rand(4, 300) < 0.7, rs.rand(4, 300) < 0.6]
    groups = {"a": reps, "b": [r.copy() for r in reps]}
    diff = lambda g: g["b"].mean - g["a"].mean  # noqa: E731
    tied = bootstrap(groups, 300, tied={"b": "a"})
    assert np.all(diff(tied.boot) == 0) and diff(tied.point) == 0
    loose = bootstrap(groups, 300)
    assert np.ptp(diff(loose.boot)) > 0
    with pytest.raises(ValueError, match="cannot reuse"):
        bootstrap({"a": reps, "b": [r[:3] for r in reps]}, 10, tied={"b": "a"})


def _logit_members(rng, z, g, L, tau):
    """(L, n) member logits of a binary task: the example's margin z, each member's own noise and a
    member effect ``tau * c_l * g`` (members differ in which examples they get right, not only by chance)."""
    return z[None] + rng.normal(size=(L, z.size)) + tau * rng.normal(size=(L, 1)) * g[None]


def test_one_replicate_ensemble_carries_its_members_noise():
    """Step d: one replicate, L = 10 members whose own spread dominates. The true ensemble - single gain
    (fresh members, fresh examples) is covered by >= 90 % of the intervals with the leave-one-out
    combinations, and by <= 86 % without them (the ensemble then carries the test set's noise only)."""
    L, n, tau, trials = 10, 2000, 1.5, 120
    rng = np.random.default_rng(7)
    z, g = rng.normal(0.9, 1, 100_000), rng.normal(size=100_000)
    gains = []
    for _ in range(20):
        lg = _logit_members(rng, z, g, L, tau)
        gains.append(100 * ((lg.mean(0) > 0).mean() - (lg > 0).mean()))
    truth = float(np.mean(gains))
    fn = lambda s: s["ensemble"].mean - s["single"].mean  # noqa: E731
    hits = {"with": 0, "without": 0}
    for t in range(trials):
        z, g = rng.normal(0.9, 1, n), rng.normal(size=n)
        lg = _logit_members(rng, z, g, L, tau)
        groups = {"single": [lg > 0], "ensemble": [(lg.mean(0) > 0)[None]]}
        loo = np.stack([np.delete(lg, i, 0).mean(0) > 0 for i in range(L)])
        for name, jk in (("with", {"ensemble": Jackknife("single", [loo])}), ("without", None)):
            c = compare(bootstrap(groups, 300, seed=t, jackknife=jk), fn)
            hits[name] += c.lo <= truth <= c.hi
    assert hits["with"] / trials >= 0.90 and hits["without"] / trials <= 0.86, hits


def test_jackknife_keeps_the_point_and_the_other_groups_and_is_ignored_with_replicates():
    rng = np.random.default_rng(3)
    lg = _logit_members(rng, rng.normal(0.5, 1, 500), rng.normal(size=500), 4, 1.0)
    loo = np.stack([np.delete(lg, i, 0).mean(0) > 0 for i in range(4)])
    groups = {"single": [lg > 0], "ensemble": [(lg.mean(0) > 0)[None]], "kd": [lg[:1] > 0.3]}
    a = bootstrap(groups, 200, seed=1)
    b = bootstrap(groups, 200, seed=1, jackknife={"ensemble": Jackknife("single", [loo])})
    assert a.point == b.point
    for g in ("single", "kd"):
        np.testing.assert_array_equal(a.boot[g].mean, b.boot[g].mean)
    assert np.std(b.boot["ensemble"].mean) > np.std(a.boot["ensemble"].mean)
    # the shift is -sqrt(L (L-1)) x (mean loo accuracy of the drawn singles - its mean over all L):
    # with every single drawn once it vanishes, so a loo equal for every member changes nothing
    same = np.repeat(loo[:1], 4, axis=0)
    c = bootstrap(groups, 200, seed=1, jackknife={"ensemble": Jackknife("single", [same])})
    np.testing.assert_allclose(c.boot["ensemble"].mean, a.boot["ensemble"].mean)
    two = {k: v * 2 for k, v in groups.items()}  # two replicates: step b carries the members' noise
    d = bootstrap(two, 200, seed=1)
    e = bootstrap(two, 200, seed=1, jackknife={"ensemble": Jackknife("single", [loo, loo])})
    np.testing.assert_array_equal(d.boot["ensemble"].mean, e.boot["ensemble"].mean)
    with pytest.raises(ValueError, match="leave-one-out"):
        bootstrap(groups, 10, jackknife={"ensemble": Jackknife("single", [loo[:3]])})


def test_a_group_missing_from_some_replicates_by_design_is_resampled_within_its_stratum():
    """The train-sum model trained in 2 of 4 replicates (table.train_sum_replicates): every draw holds exactly
    2 of its replicates (drawn from those 2), so with one replicate all right and one all wrong its mean is
    0, 50 or 100 with probabilities 1/4, 1/2, 1/4 — an unstratified draw of 4 slots, absent ones skipped,
    gives other values (1/3, 2/3) and NaN where no slot has it. The groups present everywhere keep their
    draws of every replicate, and the point estimate averages the replicates that have the group."""
    rng = np.random.default_rng(0)
    n = 50
    single = [rng.random((3, n)) < 0.7 for _ in range(4)]
    ts = [np.ones((1, n), bool), np.zeros((1, n), bool), np.zeros((0, n), bool), np.zeros((0, n), bool)]
    d = bootstrap({"single": single, "train_sum": ts}, n_boot=4000, seed=1)
    assert d.point["train_sum"].mean == 50.0 and d.point["train_sum"].best == 50.0
    m = d.boot["train_sum"].mean
    assert set(np.round(m, 6)) == {0.0, 50.0, 100.0}
    assert abs(np.mean(m == 50.0) - 0.5) < 0.03 and abs(np.mean(m == 0.0) - 0.25) < 0.03
    assert d.point["single"].mean == pytest.approx(100 * np.mean([s.mean() for s in single]))
    assert np.isfinite(compare(d, lambda g: g["single"].mean - g["train_sum"].mean).lo)
    with pytest.raises(ValueError, match="no members in any replicate"):
        bootstrap({"single": single, "train_sum": [np.zeros((0, n), bool)] * 4})

"""The message logic on hand-made tables: every message reaches every verdict."""

import math

import pandas as pd
import pytest

from ntk_vs_nn.analysis.messages import messages
from ntk_vs_nn.analysis.verdict import decide as compare
from ntk_vs_nn.config import MessagesConfig

CFG = MessagesConfig(noise_sigma=0.5, noise_floor=0.1)


def table(family, mean, std, best, ens, tsum, kd, sd, status=None):
    status = status or {}
    rows = []
    for protocol, (m, s, b) in {
        "single": (mean, std, best),
        "ensemble": (ens, math.nan, ens),
        "train_sum": (tsum, math.nan, tsum),
        "kd": (kd, math.nan, kd),
        "sd": (sd, 0.3, sd),
    }.items():
        rows.append(
            dict(
                family=family,
                model="M",
                dataset="d",
                protocol=protocol,
                n_members=10,
                acc_mean=m,
                acc_std=s,
                acc_best=b,
                status=status.get(protocol, "ok"),
            )
        )
    return pd.DataFrame(rows)


def verdict(df, message):
    out = messages(df, CFG)
    return out.set_index("message").loc[message, "verdict"]


# Each case: (message, family, table kwargs, expected verdict). sigma = 1 -> band 0.5.
BASE_K = dict(mean=60.0, std=1.0, best=62.0)
BASE_N = dict(mean=90.0, std=1.0, best=91.5)
CASES = [
    (1, "ntk", dict(BASE_K, ens=65.0, tsum=66.0, kd=62.0, sd=61.0), "holds"),
    (1, "ntk", dict(BASE_K, ens=65.0, tsum=63.0, kd=62.0, sd=61.0), "fails"),  # sum well below ens
    (1, "ntk", dict(BASE_K, ens=62.3, tsum=66.0, kd=62.0, sd=61.0), "inconclusive"),  # ens ~ best
    (2, "ntk", dict(BASE_K, ens=66.0, tsum=66.0, kd=62.5, sd=61.0), "holds"),
    (2, "ntk", dict(BASE_K, ens=66.0, tsum=66.0, kd=65.5, sd=61.0), "fails"),
    (2, "ntk", dict(BASE_K, ens=66.0, tsum=66.0, kd=64.1, sd=61.0), "inconclusive"),
    (3, "gp", dict(BASE_K, ens=66.0, tsum=66.0, kd=62.0, sd=61.0), "holds"),
    (3, "gp", dict(BASE_K, ens=66.0, tsum=66.0, kd=62.0, sd=63.0), "fails"),
    (3, "gp", dict(BASE_K, ens=66.0, tsum=66.0, kd=62.0, sd=62.3), "inconclusive"),
    (4, "nn", dict(BASE_N, ens=93.0, tsum=91.0, kd=92.0, sd=91.5), "holds"),
    (4, "nn", dict(BASE_N, ens=93.0, tsum=94.0, kd=92.0, sd=91.5), "fails"),
    (4, "nn", dict(BASE_N, ens=92.2, tsum=91.0, kd=92.0, sd=91.5), "inconclusive"),
    (5, "nn", dict(BASE_N, ens=94.0, tsum=91.0, kd=92.5, sd=91.5), "holds"),
    (5, "nn", dict(BASE_N, ens=94.0, tsum=91.0, kd=90.5, sd=91.5), "fails"),
    (5, "nn", dict(BASE_N, ens=94.0, tsum=91.0, kd=91.8, sd=91.5), "inconclusive"),
    (6, "nn", dict(BASE_N, ens=94.0, tsum=91.0, kd=92.0, sd=92.0), "holds"),
    (6, "nn", dict(BASE_N, ens=94.0, tsum=91.0, kd=92.0, sd=90.0), "fails"),
    (6, "nn", dict(BASE_N, ens=94.0, tsum=91.0, kd=92.0, sd=91.2), "inconclusive"),
    (7, "nn", dict(BASE_N, ens=94.0, tsum=91.0, kd=92.0, sd=91.5), "holds"),
    (7, "nn", dict(BASE_N, ens=92.0, tsum=91.0, kd=92.0, sd=91.5), "fails"),
    (7, "nn", dict(BASE_N, ens=93.2, tsum=91.0, kd=92.0, sd=91.5), "inconclusive"),
]


@pytest.mark.parametrize("message,family,kw,expected", CASES)
def test_every_message_reaches_every_verdict(message, family, kw, expected):
    assert verdict(table(family, **kw), message) == expected


def test_kernel_families_get_messages_1_to_3_and_nets_4_to_7():
    df = pd.concat(
        [
            table("nn", **BASE_N, ens=94, tsum=91, kd=92, sd=92),
            table("ntk_prime", **BASE_K, ens=66, tsum=66, kd=62, sd=61),
        ]
    )
    out = messages(df, CFG)
    assert sorted(out[out.family == "nn"].message) == [4, 5, 6, 7]
    assert sorted(out[out.family == "ntk_prime"].message) == [1, 2, 3]


def test_missing_cell_is_inconclusive_and_says_so():
    df = table("ntk", **BASE_K, ens=66.0, tsum=math.nan, kd=62.0, sd=61.0, status={"train_sum": "oom"})
    out = messages(df, CFG).set_index("message")
    assert out.loc[1, "verdict"] == "inconclusive"
    assert "missing: train-sum" in out.loc[1, "evidence"]


def test_noise_floor_applies_when_sigma_is_zero():
    assert compare(0.05, max(0.5 * 0.0, 0.1)) == "inconclusive"
    assert compare(0.2, 0.1) == "holds"
    assert compare(-0.2, 0.1) == "fails"
    assert compare(-0.05, 0.1, strict=False) == "inconclusive"
    assert compare(0.0, 0.1, strict=False) == "holds"


# -- comparisons at unequal training states (analysis.intervals) ---------------------------------------
def _unit(family, protocol, member, acc, train_acc, epochs=None, training=None, n=200, seed=0):
    import numpy as np

    from ntk_vs_nn.analysis.bootstrap import encode_correct

    correct = np.random.RandomState(seed).rand(n) < acc / 100
    m = {"acc": 100 * correct.mean(), "train_chance": 10.0}
    if train_acc is not None:  # (an ensemble's record has none)
        m["train_acc"] = train_acc
    if epochs is not None:
        m["epochs"] = epochs
    rec = dict(
        unit=f"h/{family}/M/{protocol}/{member}",
        config_hash="h",
        family=family,
        model="M",
        dataset="d",
        protocol=protocol,
        member=member,
        status="ok",
        metrics=m,
        test_correct=encode_correct(correct),
        n_test=n,
    )
    if training is not None:
        rec["training"] = training
    return rec  # fmt: skip


def _kernel_records(sum_train_acc=100.0, sum_training=None, student_epochs=None):
    gd = {"optimizer": "sgd", "steps": 300, "stop": "budget"}
    recs = [_unit("ntk", "single", i, 80, 99.9, 30, gd, seed=i) for i in range(3)]
    recs.append(_unit("ntk", "ensemble", "all", 85, None, seed=10))
    recs.append(_unit("ntk", "train_sum", 0, 84, sum_train_acc, 30, sum_training or gd, seed=11))
    recs.append(_unit("ntk", "kd", 0, 82, 99.5, student_epochs or 30, gd, seed=12))
    recs += [_unit("ntk", "sd", i, 80, 99.6, student_epochs or 30, gd, seed=13 + i) for i in range(2)]
    return recs


def test_unequal_training_states_are_flagged_and_name_the_groups():
    """A constructed case: a train-sum model that stopped at 91 % train against singles at 99.9 % is
    flagged on ① train-sum - ens (train accuracy), not on ① ens - single-best (an ensemble counts as its
    members); students with 90 epochs against 30-epoch singles are flagged on ② and ③ (budgets); a unit
    stopped on validation against ones stopped by their budget is flagged (stop rule); equal states: none."""
    from ntk_vs_nn.analysis import intervals

    cfg = MessagesConfig(n_boot=200)

    def flags(records):
        df = intervals.messages(records, "h", ("ntk",), ("M",), cfg, ("ntk",))
        return {(r["message"], r["comparison"]): r["state_flags"] for _, r in df.iterrows()}, df

    same, _ = flags(_kernel_records())
    assert not any(same.values()), same
    got, df = flags(_kernel_records(sum_train_acc=91.0))
    assert got[(1, "ens - single-best")] == ""
    assert got[(1, "train-sum - ens")] == "train accuracy train_sum: 91.00 %, single: 99.90 %"
    got, df = flags(_kernel_records(student_epochs=90))
    assert got[(2, "(ens - best)/2 - (KD - best)")] == "budgets single: 30 epochs, kd: 90 epochs"
    assert got[(3, "best - SD")] == "budgets single: 30 epochs, sd: 90 epochs"
    assert got[(1, "train-sum - ens")] == ""
    md = intervals.markdown(df)
    assert "**Compared at unequal training states**" in md and "- ③ ntk M, best - SD: budgets" in md
    picked = {"optimizer": "function-space mse", "steps": 1000, "stop": "validation"}
    got, _ = flags(_kernel_records(sum_training=picked))
    assert got[(1, "train-sum - ens")] == "stopped by train_sum: validation, single: budget"
    # the margin is configurable: 10 points hides the 91 % vs 99.9 % gap
    cfg = MessagesConfig(n_boot=200, state_margin=10.0)
    got, _ = flags(_kernel_records(sum_train_acc=91.0))
    assert got[(1, "train-sum - ens")] == ""


# -- effect sizes beside the paper's (analysis.effects.EFFECTS, published.effect_ranges) ---------------------
def test_against_range_has_an_outcome_for_each_place_of_the_interval():
    from ntk_vs_nn.analysis.verdict import AGAINST, against_range

    assert against_range(-1.0, 0.5, 1.0, 2.0) == AGAINST[0] == "smaller than every paper row"
    assert against_range(2.5, 3.0, 1.0, 2.0) == AGAINST[1]
    assert against_range(1.2, 1.8, 1.0, 2.0) == AGAINST[2] == "within the paper's range"
    assert against_range(0.5, 1.5, 1.0, 2.0) == against_range(0.5, 2.5, 1.0, 2.0) == AGAINST[3]
    assert against_range(float("nan"), 1.0, 1.0, 2.0) == against_range(0.0, 1.0, float("nan"), 2.0) == ""


def test_paper_effects_are_the_messages_effects_on_the_papers_cells():
    """The paper's ⑦ (ensemble gain / σ) and ① (train-sum − ensemble) recomputed from the parsed tables
    by hand, against `published.effect_values`; a row with a lost digit or oom has no ① value."""
    import math

    from ntk_vs_nn import paper
    from ntk_vs_nn.analysis import published
    from ntk_vs_nn.analysis.effects import EFFECTS

    got = published.effect_values(EFFECTS)
    nn = paper.load("nn")
    for _, r in nn.iterrows():
        want = (r["ensemble_acc"] - r["single_mean_acc"]) / r["single_std_acc"]
        row = got[(got["message"] == 7) & (got["model"] == paper.canonical_model(r["model"]))
                  & (got["dataset"] == r["dataset"])]  # fmt: skip
        assert len(row) == 1 and math.isclose(row["value"].iloc[0], want, rel_tol=1e-12)
    ker = paper.load("kernel")
    ntk = ker[(ker["kernel"] == "NTK") & (ker["dataset"] == "cifar10")]
    gaps = (ntk["train_sum_acc"] - ntk["ensemble_acc"]).dropna()
    ranges = published.effect_ranges(EFFECTS)
    assert ranges[("ntk", 1, "cifar10")] == (gaps.min(), gaps.max(), len(gaps))
    assert len(gaps) < len(ntk)  # the lost-digit and oom rows are left out
    assert ("ntk", 1, "cifar100") not in ranges  # every NTK CIFAR-100 cell is oom


def _exact_unit(protocol, member, correct, train_acc=99.9):
    from ntk_vs_nn.analysis.bootstrap import encode_correct

    m = {"acc": 100 * correct.mean(), "train_chance": 10.0, "train_acc": train_acc}
    return dict(unit=f"h/ntk/M/{protocol}/{member}", config_hash="h", family="ntk", model="M", dataset="d",
                protocol=protocol, member=member, status="ok", metrics=m, test_correct=encode_correct(correct),
                n_test=len(correct))  # fmt: skip


def _effect_row(sum_gain_points, n=20000):
    """Records of one kernel row whose train-sum model is right on ``sum_gain_points`` % more test points
    than the ensemble (and wrong on none it gets right): message ①'s effect row of messages.csv."""
    import numpy as np

    from ntk_vs_nn.analysis import intervals

    rs = np.random.RandomState(0)
    ens = rs.rand(n) < 0.7
    tsum = ens.copy()
    k = int(round(abs(sum_gain_points) * n / 100))
    flip = np.flatnonzero(~ens if sum_gain_points > 0 else ens)[:k]
    tsum[flip] = not sum_gain_points < 0
    recs = [_exact_unit("single", i, rs.rand(n) < 0.6) for i in range(3)]
    recs += [_exact_unit("ensemble", "all", ens), _exact_unit("train_sum", 0, tsum)]
    recs += [_exact_unit("kd", 0, rs.rand(n) < 0.62), _exact_unit("sd", 0, rs.rand(n) < 0.6)]
    df = intervals.messages(recs, "h", ("ntk",), ("M",), MessagesConfig(n_boot=300), ("ntk",))
    return df, df[df["message"] == 1].iloc[0]


def test_an_effect_inside_the_papers_range_and_one_below_it():
    """Constructed cases on message ① for ntk: a train-sum gain at the middle of the paper's CIFAR-10 NTK
    rows (on 20,000 test points its interval fits inside their range) reads "within the paper's range";
    a train-sum model 3 points below its ensemble reads "smaller than every paper row" (and fails);
    messages.md shows both beside the paper's range."""
    from ntk_vs_nn.analysis import effects, intervals

    lo, hi, _ = effects.paper_ranges()[("ntk", 1, "cifar10")]
    df, row = _effect_row((lo + hi) / 2)
    assert row["effect"].startswith("train-sum − ens") and abs(row["effect_value"] - (lo + hi) / 2) < 0.01
    assert lo <= row["effect_ci_low"] < row["effect_ci_high"] <= hi
    assert row["vs_cifar10"] == "within the paper's range" and row["vs_cifar100"] == ""  # no NTK CIFAR-100 row
    md = intervals.markdown(df)
    assert f"{lo:+.2f} to {hi:+.2f} | within the paper's range" in md
    df, row = _effect_row(-3.0)
    assert row["effect_ci_high"] < lo and row["vs_cifar10"] == "smaller than every paper row"
    assert row["message_verdict"] == "fails"
    assert "smaller than every paper row" in intervals.markdown(df)


def test_one_replicate_ensemble_interval_reads_its_leave_one_out_combinations():
    """`intervals.jackknife` hands the ensemble record's leave-one-out correctness to the bootstrap (aligned
    to the singles by member id): ① train-sum - ens widens; records without them (or for other members) do not."""
    import numpy as np

    from ntk_vs_nn.analysis import intervals
    from ntk_vs_nn.analysis.bootstrap import encode_correct

    cfg = MessagesConfig(n_boot=300)

    def width(records):
        df = intervals.messages(records, "h", ("ntk",), ("M",), cfg, ("ntk",))
        r = df[(df.message == 1) & (df.comparison == "train-sum - ens")].iloc[0]
        return r.ci_high - r.ci_low, r.d

    plain = _kernel_records()
    rs = np.random.RandomState(5)
    loo = [rs.rand(200) < p for p in (0.70, 0.85, 0.95)]  # members differ a lot in what they add
    with_loo = [dict(r) for r in plain]
    ens = next(r for r in with_loo if r["protocol"] == "ensemble")
    ens.update(loo_members=[2, 0, 1], loo_correct=[encode_correct(c) for c in loo])
    (w0, d0), (w1, d1) = width(plain), width(with_loo)
    assert d0 == d1 and w1 > w0 + 1.0, (w0, w1)
    ens["loo_members"] = [0, 1, 5]  # not the finished singles: ignored
    assert width(with_loo)[0] == w0


def test_verdict_lines_carry_the_verdict_its_intervals_and_the_power_when_inconclusive():
    """What `ntk-vs-nn table` prints: one line per message, read from messages.csv's own columns."""
    from ntk_vs_nn.analysis import intervals

    df = intervals.messages(
        _kernel_records(student_epochs=90), "h", ("ntk",), ("M",), MessagesConfig(n_boot=200), ("ntk",)
    )
    lines = intervals.verdict_lines(df)
    assert len(lines) == 3
    for msg, line in zip((1, 2, 3), lines):
        part = df[df.message == msg]
        r = part.iloc[0]
        assert line.startswith(f"message {msg} [ntk M]: {r['message_verdict']} — ")
        for _, p in part[part.primary].iterrows():
            assert f"{p['comparison']} = {p['d']:+.2f} [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]" in line
        power = f"smallest detectable difference {part[part.primary]['min_detectable'].max():.2f} points"
        assert (power in line) == (r["message_verdict"] == "inconclusive")
        assert ("at unequal training states (budgets" in line) == (msg in (2, 3))

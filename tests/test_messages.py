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


def test_all_verdicts_covered_for_all_messages():
    seen = {(m, v) for m, _, _, v in CASES}
    assert seen == {(m, v) for m in range(1, 8) for v in ("holds", "fails", "inconclusive")}


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

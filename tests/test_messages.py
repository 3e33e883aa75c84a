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

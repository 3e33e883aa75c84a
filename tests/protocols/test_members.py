"""`protocols.members_and_ensemble` (the theory experiments' members and their ensemble): with
``correctness=True`` its result carries each member's, the ensemble's and the leave-one-out ensembles'
per-test-point correctness, decoding to the argmax of the logits against the labels; without it the
result is as before. A stand-in trainer returns fixed logits, so nothing trains."""

from types import SimpleNamespace

import numpy as np
import pytest

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.analysis.bootstrap import decode_correct
from ntk_vs_nn.protocols import members_and_ensemble

X_TRAIN, X_TEST = np.zeros((4, 1), np.float32), np.ones((3, 1), np.float32)


class FixedLogits:
    """A trainer whose member i, "trained" from init key i, predicts ``logits[i]`` on the test inputs
    and ``train[i]`` on the training inputs."""

    def __init__(self, logits, train=None):
        self.logits, self.train = logits, train

    def fit(self, init_keys, data_keys, x, y, mode="sequential"):
        return SimpleNamespace(variables=list(init_keys), losses=np.zeros((len(init_keys), 2), np.float32))

    def predict(self, i, x):
        return self.logits[i] if x is X_TEST else self.train[i]


# three members on three test points (labels 0, 1, 2): member 2's strongly wrong logits on point 0 outvote
# the two right ones there, so the ensemble is wrong on point 0 and the ensemble without member 2 right
Y_TEST = np.array([0, 1, 2])
LOGITS = [
    np.array([[2.0, 0, 0], [0, 2, 0], [1, 0, 0]]),  # right, right, wrong
    np.array([[1.0, 0, 0], [1, 0, 0], [0, 0, 2]]),  # right, wrong, right
    np.array([[0.0, 9, 0], [0, 1, 0], [0, 0, 1]]),  # wrong, right, right
]


def _run(logits, **kw):
    L = len(logits)
    return members_and_ensemble(FixedLogits(logits), list(range(L)), list(range(L)), [(X_TRAIN, X_TEST)],
                                np.zeros(4, int), Y_TEST, **kw)  # fmt: skip


def test_correctness_decodes_to_argmax_against_labels():
    res = _run(LOGITS, correctness=True)
    n = res["n_test"]
    assert n == 3 and len(res["test_correct"]) == len(res["loo_correct"]) == 3
    for i, s in enumerate(res["test_correct"]):
        np.testing.assert_array_equal(decode_correct(s, n), np.argmax(LOGITS[i], -1) == Y_TEST)
        assert 100 * decode_correct(s, n).mean() == pytest.approx(metrics.accuracy(LOGITS[i], Y_TEST))
    ens = decode_correct(res["ensemble_correct"], n)
    np.testing.assert_array_equal(ens, np.argmax(np.mean(LOGITS, 0), -1) == Y_TEST)
    assert 100 * ens.mean() == pytest.approx(res["ensemble"])


def test_leave_one_out_ensemble_excludes_its_member():
    res = _run(LOGITS, correctness=True)
    loo = [decode_correct(s, 3) for s in res["loo_correct"]]
    np.testing.assert_array_equal(decode_correct(res["ensemble_correct"], 3), [False, True, True])
    np.testing.assert_array_equal(loo[2], [True, True, True])  # without member 2: point 0 flips to right
    for i in range(3):  # each is the logit average of the other two members
        others = np.mean([lg for j, lg in enumerate(LOGITS) if j != i], 0)
        np.testing.assert_array_equal(loo[i], np.argmax(others, -1) == Y_TEST)


def test_default_result_is_unchanged_and_one_member_has_no_leave_one_out():
    plain = _run(LOGITS)
    assert not {"n_test", "test_correct", "ensemble_correct", "loo_correct"} & set(plain)
    full = _run(LOGITS, correctness=True)
    assert {k: full[k] for k in plain} == plain
    one = _run(LOGITS[:1], correctness=True)
    assert "loo_correct" not in one and one["test_correct"] == [one["ensemble_correct"]]

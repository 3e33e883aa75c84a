"""A row's unit ledger (`protocols.ledger`): records.jsonl is read once, then only the lines appended since
(`Store.records_since`), and a worker's row takes its parent row's lambda_max instead of computing it again."""

import concurrent.futures as cf
import dataclasses
import logging
import os

import pytest

from ntk_vs_nn.config import KernelConfig
from ntk_vs_nn.engine import workers
from ntk_vs_nn.logs import LOG
from ntk_vs_nn.protocols import Row, execution, trainers
from ntk_vs_nn.store import Store

MODEL = "SimpleCNN-3-1"


class InProcessPool(workers.Pool):
    """A `workers.Pool` whose tasks run here, at once, on the data staged as the workers read it."""

    def __init__(self, folder: str):
        self._dir, self._staged = folder, {}

    def submit(self, fn, *args) -> cf.Future:
        done = cf.Future()
        done.set_result(fn(*args))
        return done


@pytest.fixture
def pool(tmp_path, monkeypatch):
    monkeypatch.setattr(execution, "_WORKER_ROWS", {})  # this test's worker rows only
    monkeypatch.setattr(workers, "_DATA", {})
    os.makedirs(tmp_path / "staged")
    return InProcessPool(str(tmp_path / "staged"))


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_records_since_reads_only_whole_new_lines(tmp_path):
    warned = _Lines()  # the store's warnings go to the package logger (whatever another test configured)
    LOG.addHandler(warned)
    try:
        _records_since(tmp_path, warned.lines)
    finally:
        LOG.removeHandler(warned)


def _records_since(tmp_path, warned: list[str]):
    store = Store.prepare(str(tmp_path / "out"))
    assert store.records_since(0) == ([], 0)  # no file yet
    store.append({"unit": "a"})
    store.append({"unit": "b"})
    got, at = store.records_since(0)
    assert [r["unit"] for r in got] == ["a", "b"] and at == os.path.getsize(store.path)
    store.append({"unit": "c"})
    got, at2 = store.records_since(at)
    assert [r["unit"] for r in got] == ["c"] and at2 == os.path.getsize(store.path)
    with open(store.path, "a") as f:
        f.write('{"unit": "d", "cut')  # a line still being written (or cut by a crash): not read yet
    assert store.records_since(at2) == ([], at2)
    assert not warned
    store.append({"unit": "e"})  # ends the cut line first: it is then a corrupt line, skipped
    got, at3 = store.records_since(at2)
    assert [r["unit"] for r in got] == ["e"] and at3 == os.path.getsize(store.path)
    assert len(warned) == 1 and "skipped 1 corrupt line(s)" in warned[0]
    assert [r["unit"] for r in store.records()] == ["a", "b", "c", "e"]  # as the whole file reads


def test_collecting_worker_units_reads_each_line_once(tiny_cfg, tiny_data, tmp_path, pool):
    """Each collect of the workers' units reads the lines appended since the last read: over two collects
    the row parses every line of records.jsonl once (a re-read of the whole file would parse line 1 twice)."""
    row = Row("nn", MODEL, tiny_cfg, tiny_data, Store.prepare(str(tmp_path / "out")), pool=pool)
    parsed = []
    parse = row.store._parse
    row.store._parse = lambda lines: parse(parsed.extend(lines) or lines)
    first = row.single(1)
    assert first[0] is not None and len(parsed) == 1
    both = row.single(2)  # member 0 is loaded from the ledger, member 1 trained in the "worker"
    assert both[1] is not None and both[0]["test"].tolist() == first[0]["test"].tolist()
    with open(row.store.path, "rb") as f:
        lines = f.read().splitlines()
    assert parsed == lines and len(lines) == 2
    assert row._read_at == os.path.getsize(row.store.path)
    assert {r["member"] for r in row.known.values()} == {0, 1}


def test_a_worker_row_takes_its_parent_rows_lambda_max(tiny_cfg, tiny_data, tmp_path, pool, monkeypatch):
    """The parent row computes lambda_max (kernel.weights_lr_units=lambda_max) once; the worker's row of its
    unit is built with that value, so a lambda_max that raises in the worker is never called there."""
    cfg = dataclasses.replace(tiny_cfg, kernel=KernelConfig(weights_lr=0.5))
    row = Row("ntk", MODEL, cfg, tiny_data, Store.prepare(str(tmp_path / "out")), pool=pool)
    lam = row.kernel_lambda()
    assert lam > 0 and row.trainer.cfg.lr == pytest.approx(0.5 / lam)

    def no_power_iteration(*args, **kwargs):
        raise AssertionError("lambda_max computed again")

    monkeypatch.setattr(trainers, "lambda_max", no_power_iteration)
    with pytest.raises(AssertionError, match="computed again"):  # the check has teeth: a fresh row computes it
        Row("ntk", MODEL, cfg, tiny_data, Store(str(tmp_path / "other")))
    (preds,) = row.single(1)
    assert preds is not None
    (worker_row,) = execution._WORKER_ROWS.values()
    assert worker_row is not row and worker_row._lambda == lam
    assert worker_row.trainer.cfg == row.trainer.cfg
    (rec,) = row.known.values()
    assert rec["status"] == "ok" and rec["training"]["lambda_max"] == lam

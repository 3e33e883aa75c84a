"""Training a row's units: here, one group at a time (fused modes: the whole group in one program), or
one unit per task in the worker processes of a `workers.Pool` (``run.workers``), which record their units
themselves. A unit part-way through its training saves its progress (`engine.resume`) and a rerun resumes it.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.engine import workers
from ntk_vs_nn.engine.resume import EpochSnapshot
from ntk_vs_nn.engine.trainer import progress_enabled
from ntk_vs_nn.families import param_count
from ntk_vs_nn.logs import to_stderr
from ntk_vs_nn.store import Store

SPLITS = ("train", "val", "test")
SNAPSHOT_EVERY_S = 600.0  # a unit part-way through training saves its progress this often (`engine.resume`)


def _is_oom(err: Exception) -> bool:
    return isinstance(err, MemoryError) or "RESOURCE_EXHAUSTED" in str(err)


class Execution:
    """`Row`'s training of units (`train`, `train_async`); uses the row's ledger (`Ledger`), trainers
    (`Trainers.trainer_for`), ``pool``, ``mode``, ``data``, ``cfg`` and ``chance``."""

    def train(self, units, init_keys, data_keys, kind="teacher", teachers=None, alpha=0.0, tau=1.0, teacher_test=None):
        """Train the units (protocol, member) not yet done with trainer ``kind`` (`trainer_for`);
        return {unit: predictions or None}. Sequentially run members are fitted and recorded one at a
        time, so a run killed at any moment loses at most the members in flight; fused modes record
        their group together."""
        return self.train_async(units, init_keys, data_keys, kind, teachers, alpha, tau, teacher_test)()

    def train_async(self, units, init_keys, data_keys, kind="teacher", teachers=None, alpha=0.0, tau=1.0,
                    teacher_test=None) -> Callable[[], dict]:  # fmt: skip
        """`train`, started: returns the function that waits for it. With a worker pool the units
        go to the workers now and run beside whatever else was submitted (the train-sum model beside
        the students); without one they train here before this returns."""
        out, todo = {}, []
        for j, u in enumerate(units):
            done = self._done(*u)
            if done is not None:
                out[u] = done[1] if done[0]["status"] == "ok" else None
            else:
                todo.append(j)
        pick = lambda seq, g: None if seq is None else [seq[j] for j in g]  # noqa: E731
        what = ", ".join(dict.fromkeys(units[j][0] for j in todo))
        t0 = time.perf_counter()

        def finished():
            if todo:
                self.log(
                    f"  {self.family_name} {self.model} {what}: {len(todo)} unit(s) in {time.perf_counter() - t0:.1f} s"
                )
            return out

        if self.pool is not None and todo:
            path = self.pool.stage(self.data)
            key_data = lambda k: np.asarray(jax.random.key_data(k))  # noqa: E731 - typed keys as plain arrays
            futures = [
                self.pool.submit(
                    _fit_in_worker,
                    type(self),
                    self.family_name,
                    self.model,
                    self.cfg,
                    path,
                    self.store.out_dir,
                    self._lambda,
                    kind,
                    units[j],
                    key_data(init_keys[j]),
                    key_data(data_keys[j]),
                    None if teachers is None else teachers[j] if self.online else np.asarray(teachers[j]),
                    alpha,
                    tau,
                    None if teacher_test is None else np.asarray(teacher_test[j]),
                )  # fmt: skip
                for j in todo
            ]

            def collect():
                workers.results(futures)
                self.read_records()  # the workers recorded them: read the lines appended since the last read
                for j in todo:
                    done = self._done(*units[j])
                    out[units[j]] = done[1] if done is not None and done[0]["status"] == "ok" else None
                return finished()

            return collect
        trainer = self.trainer_for(kind)
        groups = [[j] for j in todo] if self.mode == "sequential" else [todo] if todo else []
        if teachers is not None and kind in ("student", "kd_student") and self.online and self.mode != "sequential":
            sizes = {j: len(teachers[j]) for j in todo}  # fused: students whose teachers have one size
            groups = [[j for j in todo if sizes[j] == n] for n in dict.fromkeys(sizes.values())]
        bar = tqdm(
            total=len(todo),
            desc=f"{self.family_name} {self.model} {what}",
            unit="member",
            disable=not progress_enabled(self.cfg.run.progress) or len(groups) < 2,
        )
        for group in groups:
            t_teach = None if teachers is None else self.teacher_inputs(pick(teachers, group), kind)
            out.update(
                self._fit_group(
                    trainer,
                    pick(units, group),
                    pick(init_keys, group),
                    pick(data_keys, group),
                    t_teach,
                    alpha,
                    tau,
                    pick(teacher_test, group),
                )  # fmt: skip
            )
            bar.update(len(group))
        bar.close()
        finished()
        return lambda: out

    def _fit_group(self, trainer, units, init_keys, data_keys, teachers, alpha, tau, teacher_test=None):
        desc = f"{self.family_name} {self.model} {units[0][0]} {units[0][1]}"
        t0 = time.perf_counter()
        snaps = self._snapshots(trainer, units)
        try:
            res = trainer.fit(
                init_keys,
                data_keys,
                self.data.x_train,
                self.data.y_train,
                teachers,
                alpha,
                tau,
                mode=self.mode,
                desc=desc,
                **({"snapshots": snaps} if snaps else {}),
            )
        except Exception as err:  # noqa: BLE001 - only out-of-memory is recorded, the rest raises
            if not _is_oom(err):
                raise
            for u in units:
                self.record(*u, "oom", wall_s=time.perf_counter() - t0)
            self.log(f"  {desc}: out of memory, recorded as oom")
            return {u: None for u in units}
        out = {}
        n_params = param_count(res.variables[0])
        for slot, u in enumerate(units):
            v = res.variables[slot]
            if hasattr(trainer, "predict_splits"):
                preds = trainer.predict_splits(v, self.data)
            else:
                preds = {s: trainer.predict(v, getattr(self.data, f"x_{s}")) for s in SPLITS}
            ok = metrics.finite(res.losses[slot], *preds.values())
            m = {"final_loss": float(res.losses[slot, -1])}
            if hasattr(trainer.cfg, "epochs"):  # weight space: the unit's own training budget
                m["epochs"] = trainer.cfg.epochs
            m["train_chance"] = self.chance  # the majority class's share: a unit near it never learned
            if "steps" in v:  # function space: the training time used (mse: picked on validation)
                m["kernel_steps"] = int(v["steps"])
            if ok:
                for s in SPLITS:
                    y = getattr(self.data, f"y_{s}")
                    m.update(
                        {(k if s == "test" else f"{s}_{k}"): val for k, val in metrics.summary(preds[s], y).items()}
                    )
                m.update(metrics.calibrated(preds["val"], self.data.y_val, preds["test"], self.data.y_test))
                if getattr(getattr(trainer, "family", None), "members", 0):  # a BatchEnsemble: its members' diversity
                    m.update(metrics.diversity(list(trainer.predict_members(v, self.data.x_test))))
                if teacher_test is not None:  # a student: how faithfully it matches its teacher on test
                    m.update(metrics.fidelity(teacher_test[slot], preds["test"]))
                # params first, then the predictions and the record (`units.save_and_record`): a record has both
                if self.cfg.run.checkpoints and getattr(trainer, "checkpointable", True):
                    self.store.save_checkpoint(self._unit(*u), v["params"])
            else:
                self.log(f"  {desc}: non-finite loss or outputs, recorded as diverged")
            self.record(
                *u,
                "ok" if ok else "diverged",
                m,
                res.wall_s / len(units),
                test_logits=preds["test"] if ok else None,
                predictions=preds if ok else None,
                training=self.training_state(trainer, v, m),
                n_params=n_params,
                group_wall_s=round(res.wall_s, 3),
            )
            out[u] = preds if ok else None
        for snap in snaps or ():
            snap.clear()
        return out

    def _snapshots(self, trainer, units) -> list | None:
        """One `EpochSnapshot` per unit (its progress saved every ``SNAPSHOT_EVERY_S`` seconds), where the
        trainer resumes part-way and ``run.checkpoints`` is on; else None."""
        if not (self.cfg.run.checkpoints and getattr(trainer, "resumable", False)):
            return None
        paths = [self.store.snapshot_path(self._unit(*u)) for u in units]
        return None if None in paths else [EpochSnapshot(p, SNAPSHOT_EVERY_S) for p in paths]


# -- a unit in a worker process (run.workers) --
_WORKER_ROWS: dict = {}


def _fit_in_worker(row_cls, family, model, cfg, data_path, out, known_lambda, kind, unit, init_key, data_key, teacher,
                   alpha, tau, teacher_test) -> None:  # fmt: skip
    """Train and record one unit in a `workers.Pool` worker, exactly as `Row.train` does here: the
    same Row (``row_cls``), trainer, keys and teacher outputs (keys arrive as key data, arrays as numpy);
    ``known_lambda``: the parent row's `kernel_lambda` (None: not computed there), not computed again."""
    key = (family, model, cfg, data_path, out)
    row = _WORKER_ROWS.get(key)
    if row is None:
        if len(_WORKER_ROWS) >= 4:  # one row's trainers at a time is the common case: keep a few
            _WORKER_ROWS.pop(next(iter(_WORKER_ROWS)))
        log = to_stderr()
        data = workers.load_data(data_path)
        row = _WORKER_ROWS[key] = row_cls(family, model, cfg, data, Store(out), log, known_lambda=known_lambda)
    row._fit_group(
        row.trainer_for(kind), [unit], [jax.random.wrap_key_data(init_key)], [jax.random.wrap_key_data(data_key)],
        None if teacher is None else row.teacher_inputs([teacher], kind), alpha, tau,
        None if teacher_test is None else [teacher_test],
    )  # fmt: skip

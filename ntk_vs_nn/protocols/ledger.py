"""The unit ledger of a row: unit ids, records, and the finished units a rerun loads instead of retraining.

Each finished unit is one record in the store (see store.py); a unit already recorded for the same config
hash is loaded instead of retrained, so a rerun of the same command resumes. The teachers' units (single,
ensemble, train_sum) are named by the teacher hash (`Config.teacher_hash`), the students' by the whole
config's; a unit recorded under an older form of the hash still counts, and a teacher unit recorded before
units had a teacher hash is adopted (`Ledger._adopt`). The ledger reads records.jsonl once when its row
starts, then only the lines appended since (`Ledger.read_records`: the units that workers recorded).
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from ntk_vs_nn.analysis.bootstrap import encode_correct
from ntk_vs_nn.protocols.units import finished, save_and_record, unit_name

# units named by the teacher hash (`Config.teacher_hash`); the wide control trains like a single member
TEACHER_PROTOCOLS = ("single", "ensemble", "train_sum", "wide")


class Ledger:
    """`Row`'s records: ``known`` ({unit: its latest record}) and the reads and writes of the store. Uses
    the row's ``store``, ``cfg``, ``data``, ``family_name``, ``model``, ``backend``, ``hash``,
    ``teacher_hash``, ``log`` and ``_lambda``."""

    def read_records(self) -> None:
        """Add the records appended to the store since the last read (``_read_at``, a byte offset; 0 at
        first) to ``known``: the file is read once, then only its new lines."""
        got, self._read_at = self.store.records_since(self._read_at)
        self.known.update((r["unit"], r) for r in got)

    def _hash_of(self, protocol):
        """The config hash a unit of ``protocol`` is named by: the teachers' or the students'."""
        return self.teacher_hash if protocol in TEACHER_PROTOCOLS else self.hash

    def _unit(self, protocol, member):
        return unit_name(self._hash_of(protocol), self.family_name, protocol, member, model=self.model)

    def _unit_ids(self, protocol, member):
        """The unit's id, then its ids under the config's older hash forms (records made before a
        field was added still count)."""
        hashes = self.cfg.science_hashes()[1:]
        older = [unit_name(h, self.family_name, protocol, member, model=self.model) for h in hashes]
        return [self._unit(protocol, member), *older]

    def record(self, protocol, member, status, metrics_=None, wall_s=0.0, test_logits=None, predictions=None,
               **extra):  # fmt: skip
        """Record a unit (`units.save_and_record`: its ``predictions`` saved first, when given; a finished
        unit's saved predictions named); ``test_logits``: its per-example test correctness, recorded."""
        unit = self._unit(protocol, member)
        rec = {
            "config_hash": self._hash_of(protocol),
            "preset": self.cfg.preset,
            "family": self.family_name,
            "model": self.model,
            "dataset": self.data.name,
            "protocol": protocol,
            "member": member,
            "seed": self.cfg.run.seed,
            "status": status,
            "backend": self.backend,
            "metrics": metrics_ or {},
            "wall_s": round(wall_s, 3),
            **extra,
        }
        if status == "ok" and test_logits is not None:  # per-example correctness: the paired bootstrap's input
            rec["test_correct"] = encode_correct(np.argmax(test_logits, -1) == self.data.y_test)
            rec["n_test"] = len(self.data.y_test)
        rec = save_and_record(self.store, unit, predictions if status == "ok" else None, rec)  # + date, provenance
        self.known[unit] = rec
        return rec

    def training_state(self, trainer, variables, m: dict) -> dict:
        """How a unit was trained and why it stopped (every record carries it; messages.md compares the
        units of a comparison by it): optimiser, steps, stop reason, final train loss and accuracy.
        Weight space stops at its budget (epochs); function space (mse) at the training time picked on
        validation when ``kernel.steps=0``, else at its budget; ridge is a closed form."""
        if self.backend == "weights":
            t = trainer.cfg
            opt = t.optimizer if t.optimizer != "sgd" else f"sgd (momentum {t.momentum:g})" if t.momentum else "sgd"
            state = dict(optimizer=opt, lr=t.lr, schedule=t.schedule, epochs=t.epochs, steps=t.epochs * trainer.steps,
                         stop="budget")  # fmt: skip
            if self._lambda is not None:  # the step in units of 1 / lambda_max: what it was
                state.update(lambda_max=self._lambda, lr_lambda_units=t.lr * self._lambda)
        else:
            k = trainer.cfg.kernel
            picked = k.solver == "mse" and not k.steps  # the training time chosen on validation
            stop = "closed_form" if k.solver == "ridge" else "validation" if picked else "budget"
            state = dict(optimizer=f"function-space {k.solver}", steps=int(variables.get("steps", 0)), stop=stop)
        return dict(state, train_loss=m.get("final_loss"), train_acc=m.get("train_acc"))

    def _done(self, protocol, member):
        """``(record, predictions)`` of a finished unit (`units.finished`; diverged: predictions {}), else None."""
        rec = next((self.known[u] for u in self._unit_ids(protocol, member) if u in self.known), None)
        if rec is None and protocol in TEACHER_PROTOCOLS:
            return self._adopt(protocol, member)
        done = finished(self.store, rec)
        return None if done is None else (done[0], {} if done[1] is None else done[1])

    def _adopt(self, protocol, member):
        """A teacher unit recorded before units had a teacher hash, by a config that differs from this
        one only in fields students read (e.g. the same teachers under kd_inputs=auto, in a store made
        before ``protocol.kd_inputs`` existed): the teachers read none of those fields, so it is this
        unit. Its predictions and checkpoint are copied to this unit's path and its record is written
        again under the teacher hash (``adopted_from`` names the original), so it trains nothing."""
        for h in self.cfg.neutral_student_hashes():
            old = unit_name(h, self.family_name, protocol, member, model=self.model)
            rec = self.known.get(old)
            preds = self.store.load_predictions(old) if rec is not None and rec["status"] == "ok" else None
            if preds is None:
                continue
            new = self._unit(protocol, member)
            src, dst = self.store.checkpoint_path(old), self.store.checkpoint_path(new)
            if os.path.isdir(src) and not os.path.isdir(dst) and self.store.writer:
                shutil.copytree(src, dst)
            keep = {k: rec[k] for k in ("n_params", "group_wall_s", "training") if k in rec}
            got = self.record(protocol, member, "ok", rec["metrics"], rec.get("wall_s", 0.0), test_logits=preds["test"],
                              predictions=preds, adopted_from=old, **keep)  # fmt: skip
            self.log(f"  {self.family_name} {self.model} {protocol} {member}: adopted from {old}")
            return got, preds
        return None

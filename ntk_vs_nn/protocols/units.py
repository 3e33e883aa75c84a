"""One protocol path: how a unit (a member, an ensemble of members, a student of given teacher outputs) is
named, found finished, trained unless recorded, saved and recorded, whatever experiment trains it. The
tables' `Row` (its ledger, execution, ensemble and students) and the theory experiments (multiview,
gaussian, channels) call the functions here, so a unit of any experiment is named, resumed, saved,
ensembled and distilled the same way:

`unit_name`            ``{hash}/{family}[/{model}]/{protocol}-{member}``: `store.unit_id`, the tables' form;
                       without a model (one learner per family: multiview) the model segment is left out;
`finished`             a recorded unit's record and predictions, when it finished (else it trains again);
`save_and_record`      predictions first, then the record naming them;
`Units`                the recorded units of a store under a config's hashes: `Units.finished` (looked up
                       under a unit's name and then its older forms), `Units.save_and_record`,
                       `Units.train_unless_recorded` (a finished unit is loaded instead of retrained);
`ensemble_of`          the ensemble of members' predictions, split by split (`metrics.combine`);
`accuracy_by_size`     the accuracy of the ensembles of the first 1..L members;
`distill_teacher`      a distillation student's fixed targets: the ensemble's outputs (KD) or its single
                       member's (SD), as float32.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

import numpy as np

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.store import Store, unit_id

FINISHED = ("ok", "diverged")  # the statuses of a finished unit (no status: a record of an experiment without)


def unit_name(config_hash: str, family: str, protocol: str, member, model: str | None = None) -> str:
    """The unit's id: ``{hash}/{family}/{model}/{protocol}-{member}`` (`store.unit_id`, the tables' rows),
    or ``{hash}/{family}/{protocol}-{member}`` where a family has one learner and no model name (multiview)."""
    if model is not None:
        return unit_id(config_hash, family, model, protocol, member)
    return f"{config_hash}/{family}/{protocol}-{member}"


class Units:
    """The units a store holds under ``hashes`` (a config's hash and its older forms): ``known`` ({unit: its
    latest record}), read once here and kept up to date by `save_and_record`."""

    def __init__(self, store: Store, hashes):
        self.store = store
        self.known = store.done(hashes)

    def recorded(self, names: Iterable[str]) -> dict | None:
        """The record of the first of ``names`` (a unit's id, then its older forms) that is recorded, or None."""
        return next((self.known[u] for u in names if u in self.known), None)

    def finished(self, names: Iterable[str]) -> tuple[dict, dict | None] | None:
        """`finished` of this store's units."""
        return finished(self.store, self.recorded(names))

    def save_and_record(self, unit: str, predictions: dict | None, record: dict) -> dict:
        """`save_and_record` in this store; the record joins ``known``."""
        rec = save_and_record(self.store, unit, predictions, record)
        self.known[unit] = rec
        return rec

    def train_unless_recorded(self, names: list[str], train: Callable[[], tuple[dict, dict]]):
        """``(record, predictions, trained)`` of the unit ``names[0]`` (its older forms after it): loaded when
        finished, else ``train()`` -> ``(predictions, record)``, saved and recorded (`save_and_record`)."""
        done = self.finished(names)
        if done is not None:
            return done[0], done[1], False
        preds, rec = train()
        return self.save_and_record(names[0], preds, rec), preds, True


def finished(store: Store, rec: dict | None) -> tuple[dict, dict | None] | None:
    """``(record, predictions)`` of a recorded unit (``rec``, None: not recorded) when it is finished (status
    ``ok`` or none: its predictions must load; ``diverged``: predictions None); else None (not recorded, oom,
    skipped, or its predictions missing: it is trained again)."""
    if rec is None or rec.get("status", "ok") not in FINISHED:
        return None
    if rec.get("status", "ok") != "ok":
        return rec, None
    preds = store.load_predictions(rec["unit"])
    return None if preds is None else (rec, preds)


def save_and_record(store: Store, unit: str, predictions: dict | None, record: dict) -> dict:
    """Save the unit's ``predictions`` (None: none to save), then append ``record`` (which names its
    ``config_hash``; ``unit`` goes first) naming them: a record always has its predictions. A finished
    unit's earlier-saved predictions are named too. Returns the record as stored."""
    rec = {"unit": unit, **record}
    if predictions is not None:
        store.save_predictions(unit, predictions)
    path = store.unit_path(unit)
    if rec.get("status", "ok") == "ok" and os.path.exists(path):  # (a process that does not write saves nothing)
        rec["predictions"] = os.path.relpath(path, store.out_dir)
    return store.record(rec)


def ensemble_of(members: list[dict], rule: str = "logits", splits: Iterable[str] | None = None) -> dict:
    """The ensemble of the members' predictions ({split: logits} each), split by split: `metrics.combine`
    (``rule``: logits, or probs); ``splits``: these (default: the first member's)."""
    return {s: metrics.combine([m[s] for m in members], rule) for s in (splits or members[0])}


def accuracy_by_size(test_logits: list, y, rule: str = "logits") -> list[float]:
    """Test accuracy (percent) of the ensembles of the first 1..L members' ``test_logits``."""
    return [metrics.accuracy(metrics.combine(test_logits[: n + 1], rule), y) for n in range(len(test_logits))]


def distill_teacher(protocol: str, singles: list[dict], member: int = 0, ensemble: dict | None = None,
                    split: str = "train", rule: str = "logits") -> np.ndarray:  # fmt: skip
    """The fixed targets of a distillation student, float32: ``kd``, the ensemble's ``split`` outputs
    (``ensemble``, else the singles combined by ``rule``); ``sd``, single ``member``'s."""
    if protocol == "kd":
        ens = ensemble[split] if ensemble is not None else metrics.combine([s[split] for s in singles], rule)
        return np.asarray(ens, np.float32)
    if protocol == "sd":
        return np.asarray(singles[member][split], np.float32)
    raise ValueError(f"a distillation student is kd or sd, not {protocol!r}")

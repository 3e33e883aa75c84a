"""Members and their ensemble: the protocol of the theory experiments (gaussian, channels), on plain networks,
through the shared unit path (`protocols.units`): each member a unit, trained unless recorded, its
predictions saved before its record; the ensemble and its curve by size `accuracy_by_size`."""

from __future__ import annotations

import numpy as np

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import network
from ntk_vs_nn.protocols.units import Units, accuracy_by_size


def module_trainer(module, train_cfg, n_train: int, progress: bool = False) -> Trainer:
    """A `Trainer` of the plain network ``module`` (Figure 3's students, Figure 6's backbone and students)."""
    return Trainer(network(module), train_cfg, n_train, progress=progress)


def members_and_ensemble(trainer: Trainer, init_keys, data_keys, inputs, y_train, y_test, mode="sequential",
                         score_train: bool = False, ledger: Units | None = None, names=None,
                         record: dict | None = None) -> dict:  # fmt: skip
    """Train L = len(init_keys) members and score them and their ensemble (test accuracy, percent).

    ``inputs``: one ``(x_train, x_test)`` pair shared by every member (trained together in ``mode``),
    or one pair per member (each member trained alone). single = mean / std (ddof 1) / min / max of
    the members' accuracies; the ensemble combines their logits (`metrics.combine`); acc_by_size is
    the ensemble of the first 1..L members (`units.accuracy_by_size`: its last is the ensemble);
    ``score_train`` adds the members' mean train accuracy.

    ``ledger`` and ``names``: member i is unit ``names[i]`` of ``ledger`` (`units.Units`): a finished member
    is loaded instead of retrained; a trained one is saved and recorded (``record``'s fields, protocol
    single, member i, its final loss) as soon as it is trained (sequential: one at a time; fused modes:
    the members still to train, together)."""
    L = len(init_keys)
    pairs = list(inputs) * L if len(inputs) == 1 else list(inputs)
    got = {}  # member -> (its {split: logits}, its final loss (float32), whether all its losses were finite)
    for i, name in enumerate(names or ()):
        done = ledger.finished([name])
        if done is not None and done[1] is not None:  # (a diverged member trains again: its outputs are needed)
            got[i] = done[1], np.float32(done[0]["final_loss"]), True
    todo = [i for i in range(L) if i not in got]
    alone = len(inputs) > 1 or mode == "sequential"  # (sequential: each member alone is what a group does)
    for group in [[i] for i in todo] if alone else [todo] if todo else []:
        x_tr = pairs[group[0]][0]
        fit = trainer.fit([init_keys[i] for i in group], [data_keys[i] for i in group], x_tr, y_train,
                          mode=mode if len(inputs) == 1 else "sequential")  # fmt: skip
        for slot, i in enumerate(group):
            x, x_te = pairs[i]
            preds = {"test": np.asarray(trainer.predict(fit.variables[slot], x_te))}
            if score_train:
                preds["train"] = np.asarray(trainer.predict(fit.variables[slot], x))
            got[i] = preds, fit.losses[slot, -1], bool(np.isfinite(fit.losses[slot]).all())
            if ledger is not None:
                finite = got[i][2] and bool(np.isfinite(preds["test"]).all())
                m = dict(final_loss=float(got[i][1]), acc=metrics.accuracy(preds["test"], y_test))
                rec = dict(record or {}, protocol="single", member=i, **m, status="ok" if finite else "diverged")
                ledger.save_and_record(names[i], preds if finite else None, rec)
    preds, last, finite = zip(*(got[i] for i in range(L)))
    return _scores(list(preds), np.array(last, np.float32), all(finite), y_train, y_test, score_train)


def _scores(preds: list[dict], final_losses: np.ndarray, finite: bool, y_train, y_test, score_train: bool) -> dict:
    """The members' and their ensemble's scores from their predictions, final losses and whether every
    member's losses were finite."""
    L = len(preds)
    test = [p["test"] for p in preds]
    accs = np.array([metrics.accuracy(lg, y_test) for lg in test])
    by_size = accuracy_by_size(test, y_test)
    finite = finite and all(bool(np.isfinite(t).all()) for t in test)
    out = dict(
        single_mean=float(accs.mean()),
        single_std=float(accs.std(ddof=1)) if L > 1 else 0.0,
        single_min=float(accs.min()),
        single_max=float(accs.max()),
        ensemble=by_size[-1],
        gain=by_size[-1] - float(accs.mean()),
        acc_by_size=" ".join(f"{a:.2f}" for a in by_size),
    )
    if score_train:
        out["train_acc_mean"] = float(np.mean([metrics.accuracy(p["train"], y_train) for p in preds]))
    return dict(out, final_loss=float(final_losses.mean()), status="ok" if finite else "diverged")

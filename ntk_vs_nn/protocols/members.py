"""Members and their ensemble: the protocol of the theory experiments (gaussian, channels), on plain networks,
through the shared unit path (`protocols.units`): each member a unit, trained unless recorded, its
predictions saved before its record; the ensemble and its curve by size `accuracy_by_size`."""

from __future__ import annotations

import numpy as np

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.analysis.bootstrap import encode_correct
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import network
from ntk_vs_nn.protocols.units import Units, accuracy_by_size


def module_trainer(module, train_cfg, n_train: int, progress: bool = False) -> Trainer:
    """A `Trainer` of the plain network ``module`` (Figure 3's students, Figure 6's backbone and students)."""
    return Trainer(network(module), train_cfg, n_train, progress=progress)


def members_and_ensemble(trainer: Trainer, init_keys, data_keys, inputs, y_train, y_test, mode="sequential",
                         score_train: bool = False, ledger: Units | None = None, names=None,
                         record: dict | None = None, correctness: bool = False) -> dict:  # fmt: skip
    """Train L = len(init_keys) members and score them and their ensemble (test accuracy, percent).

    ``inputs``: one ``(x_train, x_test)`` pair shared by every member (trained together in ``mode``),
    or one pair per member (each member trained alone). single = mean / std (ddof 1) / min / max of
    the members' accuracies; the ensemble combines their logits (`metrics.combine`); acc_by_size is
    the ensemble of the first 1..L members (`units.accuracy_by_size`: its last is the ensemble);
    ``score_train`` adds the members' mean train accuracy (left out when a loaded member's record lacks
    its own). ``correctness`` adds what a paired bootstrap over test points and members needs
    (`analysis.bootstrap`, encoded by `encode_correct`): ``n_test``, ``test_correct`` (each member's
    per-test-point correctness, member order), ``ensemble_correct`` (the ensemble's) and, for L > 1,
    ``loo_correct`` (entry i: the ensemble of every member but i, combined by the same logit average:
    the ensemble's leave-one-out combinations, `bootstrap.Jackknife`).

    ``ledger`` and ``names``: member i is unit ``names[i]`` of ``ledger`` (`units.Units`): a finished member
    is loaded instead of retrained; a trained one is saved and recorded (``record``'s fields, protocol
    single, member i, its final loss) as soon as it is trained (sequential: one at a time; fused modes:
    the members still to train, together)."""
    L = len(init_keys)
    pairs = list(inputs) * L if len(inputs) == 1 else list(inputs)
    got = {}  # member -> (its test logits, {final_loss: float32, finite: all its losses were, train_acc})
    for i, name in enumerate(names or ()):
        done = ledger.finished([name])
        if done is not None and done[1] is not None:  # (a diverged member trains again: its outputs are needed)
            rec = done[0]
            got[i] = done[1]["test"], dict(final_loss=np.float32(rec["final_loss"]), finite=True,
                                           train_acc=rec.get("train_acc"))  # fmt: skip
    todo = [i for i in range(L) if i not in got]
    alone = len(inputs) > 1 or mode == "sequential"  # (sequential: each member alone is what a group does)
    for group in [[i] for i in todo] if alone else [todo] if todo else []:
        fit = trainer.fit([init_keys[i] for i in group], [data_keys[i] for i in group], pairs[group[0]][0], y_train,
                          mode=mode if len(inputs) == 1 else "sequential")  # fmt: skip
        for slot, i in enumerate(group):
            (x, x_te), v = pairs[i], fit.variables[slot]
            test = np.asarray(trainer.predict(v, x_te))
            m = dict(final_loss=fit.losses[slot, -1], finite=bool(np.isfinite(fit.losses[slot]).all()),
                     train_acc=metrics.accuracy(trainer.predict(v, x), y_train) if score_train else None)  # fmt: skip
            got[i] = test, m
            if ledger is not None:  # its test logits, then its record (with its train accuracy: no train logits kept)
                ok = m["finite"] and bool(np.isfinite(test).all())
                rec = dict(record or {}, protocol="single", member=i, final_loss=float(m["final_loss"]),
                           acc=metrics.accuracy(test, y_test), status="ok" if ok else "diverged")  # fmt: skip
                if score_train:
                    rec["train_acc"] = m["train_acc"]
                ledger.save_and_record(names[i], {"test": test} if ok else None, rec)
    test, ms = zip(*(got[i] for i in range(L)))
    out = _scores(list(test), ms, y_test, score_train)
    return dict(out, **_correctness(list(test), y_test)) if correctness else out


def _correctness(test: list, y_test) -> dict:
    """The members', the ensemble's and (L > 1) the leave-one-out ensembles' per-test-point correctness,
    encoded (`bootstrap.encode_correct`); the ensembles combine logits as `_scores`' (`metrics.combine`)."""
    right = lambda logits: encode_correct(np.argmax(logits, -1) == np.asarray(y_test))  # noqa: E731
    out = dict(n_test=len(y_test), test_correct=[right(t) for t in test], ensemble_correct=right(metrics.combine(test)))
    if len(test) > 1:
        out["loo_correct"] = [right(metrics.combine(test[:i] + test[i + 1 :])) for i in range(len(test))]
    return out


def _scores(test: list, members: tuple[dict, ...], y_test, score_train: bool) -> dict:
    """The members' and their ensemble's scores from their test logits and what each member's training left
    (its final loss, whether its losses were finite, its train accuracy)."""
    L = len(test)
    accs = np.array([metrics.accuracy(lg, y_test) for lg in test])
    by_size = accuracy_by_size(test, y_test)
    finite = all(m["finite"] for m in members) and all(bool(np.isfinite(t).all()) for t in test)
    out = dict(
        single_mean=float(accs.mean()),
        single_std=float(accs.std(ddof=1)) if L > 1 else 0.0,
        single_min=float(accs.min()),
        single_max=float(accs.max()),
        ensemble=by_size[-1],
        gain=by_size[-1] - float(accs.mean()),
        acc_by_size=" ".join(f"{a:.2f}" for a in by_size),
    )
    if score_train and all(m["train_acc"] is not None for m in members):  # (a member recorded without it: none)
        out["train_acc_mean"] = float(np.mean([m["train_acc"] for m in members]))
    final_loss = float(np.array([m["final_loss"] for m in members], np.float32).mean())
    return dict(out, final_loss=final_loss, status="ok" if finite else "diverged")

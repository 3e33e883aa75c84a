"""Members and their ensemble: the protocol of the theory experiments (gaussian, channels), on plain networks."""

from __future__ import annotations

import numpy as np

from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import network


def module_trainer(module, train_cfg, n_train: int, progress: bool = False) -> Trainer:
    """A `Trainer` of the plain network ``module`` (Figure 3's students, Figure 6's backbone and students)."""
    return Trainer(network(module), train_cfg, n_train, progress=progress)


def members_and_ensemble(trainer: Trainer, init_keys, data_keys, inputs, y_train, y_test, mode="sequential",
                         score_train: bool = False) -> dict:  # fmt: skip
    """Train L = len(init_keys) members and score them and their ensemble (test accuracy, percent).

    ``inputs``: one ``(x_train, x_test)`` pair shared by every member (trained together in ``mode``),
    or one pair per member (each member trained alone). single = mean / std (ddof 1) / min / max of
    the members' accuracies; the ensemble combines their logits (`metrics.combine`); acc_by_size is
    the ensemble of the first 1..L members; ``score_train`` adds the members' mean train accuracy."""
    L = len(init_keys)
    if len(inputs) == 1:
        fit = trainer.fit(init_keys, data_keys, inputs[0][0], y_train, mode=mode)
        variables, losses = fit.variables, fit.losses
    else:
        each = zip(init_keys, data_keys, inputs)
        fits = [trainer.fit([ik], [dk], x, y_train, mode="sequential") for ik, dk, (x, _) in each]
        variables, losses = [v for f in fits for v in f.variables], np.concatenate([f.losses for f in fits])
    pairs = list(inputs) * L if len(inputs) == 1 else list(inputs)
    test = [trainer.predict(v, x_te) for v, (_, x_te) in zip(variables, pairs)]
    accs = np.array([metrics.accuracy(lg, y_test) for lg in test])
    by_size = [metrics.accuracy(metrics.combine(test[: j + 1]), y_test) for j in range(L)]
    finite = bool(np.isfinite(losses).all() and all(np.isfinite(t).all() for t in test))
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
        out["train_acc_mean"] = float(np.mean([metrics.accuracy(trainer.predict(v, x_tr), y_train)
                                               for v, (x_tr, _) in zip(variables, pairs)]))  # fmt: skip
    return dict(out, final_loss=float(losses[:, -1].mean()), status="ok" if finite else "diverged")

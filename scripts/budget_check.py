"""Measure the quick preset's training budgets (issue: verdicts you can trust).

students: ten ResNet-10-1 teachers (quick preset, 30 epochs), their ensemble, then K = 3 KD and
S = 5 SD students at each of several student budgets (``protocol.student_epochs``): the students'
train accuracy beside the teachers'. kernels: one member of each kernel family trained in weight
space at several (epochs, lr): train loss per epoch, train/test accuracy, wall time.

    .venv/bin/python scripts/budget_check.py students --out results/quick-mnist1d/budget/students
    .venv/bin/python scripts/budget_check.py kernels --out results/quick-mnist1d/budget/kernels
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from ntk_vs_nn.analysis.metrics import accuracy
from ntk_vs_nn.config import apply_overrides
from ntk_vs_nn.config.presets import get_preset
from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family
from ntk_vs_nn.protocols import Row
from ntk_vs_nn.store import Store, provenance


def students(cfg, data, out, budgets):
    store = Store.prepare(out)
    teachers = Row("nn", cfg.table.nn_models[0], cfg, data, store, print)
    singles = teachers.single()
    ens = teachers.ensemble(singles)
    rows = [
        {
            "unit": "teachers",
            "epochs": cfg.train.epochs,
            "train_acc": [accuracy(s["train"], data.y_train) for s in singles],
            "test_acc": [accuracy(s["test"], data.y_test) for s in singles],
            "ensemble_test_acc": accuracy(ens["test"], data.y_test),
        }
    ]
    for e in budgets:
        c = dataclasses.replace(cfg, protocol=dataclasses.replace(cfg.protocol, student_epochs=e))
        row = Row("nn", cfg.table.nn_models[0], c, data, store, print)
        t0 = time.perf_counter()
        got = row.students(singles, ens)
        wall = time.perf_counter() - t0
        for kind in ("kd", "sd"):
            units = sorted(u for u in got if u[0] == kind)
            rows.append(
                {
                    "unit": kind,
                    "epochs": e,
                    "wall_s": round(wall, 1),
                    "train_acc": [accuracy(got[u]["train"], data.y_train) for u in units],
                    "test_acc": [accuracy(got[u]["test"], data.y_test) for u in units],
                }
            )
        print(json.dumps(rows[-2:]))
    return rows


def kernels(cfg, data, grid):
    rows = []
    model = cfg.table.ntk_models[0]
    import jax

    for fam_name, epochs, lr in grid:
        train = dataclasses.replace(cfg.train, epochs=epochs, lr=lr)
        fam = make_family(fam_name, model, data.num_classes, data.spatial_ndim, cfg)
        trainer = Trainer(fam, train, len(data.x_train), False)
        key = jax.random.PRNGKey(0)
        res = trainer.fit([key], [jax.random.PRNGKey(1)], data.x_train, data.y_train)
        v = res.variables[0]
        rows.append(
            {
                "family": fam_name,
                "epochs": epochs,
                "lr": lr,
                "wall_s": round(res.wall_s, 1),
                "loss": [round(float(x), 5) for x in res.losses[0]],
                "train_acc": accuracy(trainer.predict(v, data.x_train), data.y_train),
                "val_acc": accuracy(trainer.predict(v, data.x_val), data.y_val),
                "test_acc": accuracy(trainer.predict(v, data.x_test), data.y_test),
            }
        )
        print({k: rows[-1][k] for k in rows[-1] if k != "loss"}, "last losses", rows[-1]["loss"][-3:], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["students", "kernels"])
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--budgets", default="30,60,90")
    p.add_argument(
        "--grid",
        default="ntk:30:0.002,ntk:90:0.002,ntk:30:0.01,ntk:90:0.01,ntk:90:0.03,"
        "gp:30:0.002,gp:90:0.01,gp:90:0.05,gp:200:0.05",
    )
    a = p.parse_args()
    cfg = apply_overrides(
        get_preset("quick"), ["data.n_test=10000", "protocol.kd_students=3", "run.progress=False", *a.set]
    )
    data = load_dataset(cfg.dataset, cfg.data, cfg.run.seed)
    os.makedirs(a.out, exist_ok=True)
    if a.what == "students":
        rows = students(cfg, data, a.out, [int(b) for b in a.budgets.split(",")])
    else:
        grid = [(f, int(e), float(lr)) for f, e, lr in (g.split(":") for g in a.grid.split(","))]
        rows = kernels(cfg, data, grid)
    with open(os.path.join(a.out, f"{a.what}.json"), "w") as f:
        json.dump({"config": cfg.to_dict(), "rows": rows, **provenance()}, f, indent=1)


if __name__ == "__main__":
    main()

"""Measure kernel gradient descent's budget (issue 30): one single member of each kernel family of the
quick preset, trained as the kernel rows now train by default (`protocols.Row`: gradient descent on the
linearised model, heavy-ball momentum train.momentum, the step kernel.weights_lr in units of
1 / lambda_max), at several (epochs, step): train loss per epoch, train / val / test accuracy, wall time.

    .venv/bin/python scripts/kernel_gd_probe.py --out results/quick-mnist1d/budget/kernel-gd \\
        --grid ntk:30:1,ntk:90:1,gp:30:1,gp:90:1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

from ntk_vs_nn import rng
from ntk_vs_nn.analysis.metrics import accuracy
from ntk_vs_nn.config import apply_overrides
from ntk_vs_nn.config.presets import get_preset
from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.protocols import Row
from ntk_vs_nn.store import Store, provenance


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="quick")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--grid", default="ntk:30:1,gp:30:1,ntk:90:1,gp:90:1")
    a = p.parse_args()
    base = apply_overrides(get_preset(a.preset), ["run.progress=False", "run.workers=1", *a.set])
    data = load_dataset(base.dataset, base.data, base.run.seed)
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for item in a.grid.split(","):
        fam, epochs, step = item.split(":")
        # the step applies to gp too (a preset's kernel.gp_lr, e.g. fmnist's for Adam, would override it)
        cfg = apply_overrides(base, [f"kernel.epochs={epochs}", f"kernel.weights_lr={step}", "kernel.gp_lr=0"])
        row = Row(fam, cfg.table.ntk_models[0], cfg, data, Store.prepare(tempfile.mkdtemp()), print)
        root = rng.root_key(cfg.run.seed)
        res = row.trainer.fit([rng.member_key(root, "init", 0)], [rng.member_key(root, "data", 0)], data.x_train,
                              data.y_train, mode="sequential")  # fmt: skip
        v = res.variables[0]
        acc = {s: accuracy(row.trainer.predict(v, getattr(data, f"x_{s}")), getattr(data, f"y_{s}"))
               for s in ("train", "val", "test")}  # fmt: skip
        t = row.trainer.cfg
        rows.append(dict(family=fam, epochs=int(epochs), step_lambda_units=t.lr * row.kernel_lambda(),  # as run
                         lambda_max=row.kernel_lambda(),
                         lr=t.lr, optimizer=t.optimizer, momentum=t.momentum, schedule=t.schedule,
                         wall_s=round(res.wall_s, 1), loss=[round(float(x), 5) for x in res.losses[0]],
                         **{f"{s}_acc": v_ for s, v_ in acc.items()}))  # fmt: skip
        print({k: rows[-1][k] for k in rows[-1] if k != "loss"}, "last losses", rows[-1]["loss"][-3:], flush=True)
        with open(os.path.join(a.out, "probe.json"), "w") as f:
            json.dump({"config": dataclasses.asdict(base), "rows": rows, **provenance()}, f, indent=1)


if __name__ == "__main__":
    main()

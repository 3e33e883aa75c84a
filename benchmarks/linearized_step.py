"""Cost of a linearised (ntk) training step against the network's own step.

Command: ``.venv/bin/python benchmarks/linearized_step.py`` (``make bench``). For the quick preset's
network on MNIST-1D (batch 128), trains one member of each family for 3 epochs after a compile run
and reports seconds per step; ratio = ntk / nn (goal <= 1.5: the jvp-based linearisation should cost
about one extra forward pass). Writes results/benchmarks/linearized_step.json.
"""

import dataclasses
import time

import jax
from _common import write

from ntk_vs_nn import rng
from ntk_vs_nn.config.presets import quick
from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import FAMILIES, make_family

EPOCHS = 3


def main():
    cfg = quick()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=EPOCHS))
    ds = load_dataset("mnist1d", cfg.data, 0)
    model = cfg.table.nn_models[0]
    root = rng.root_key(0)
    keys = [rng.member_key(root, "init", 0)], [rng.member_key(root, "data", 0)]
    per_step = {}
    for fam_name in FAMILIES:
        fam = make_family(fam_name, model, ds.num_classes, ds.spatial_ndim, cfg)
        trainer = Trainer(fam, cfg.train, len(ds.x_train))
        trainer.fit(*keys, ds.x_train, ds.y_train, mode="sequential")  # compile
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            res = trainer.fit(*keys, ds.x_train, ds.y_train, mode="sequential")
            jax.block_until_ready(res.variables[0]["params"])
            best = min(best, (time.perf_counter() - t0) / (EPOCHS * trainer.steps))
        per_step[fam_name] = round(best * 1e3, 3)
        print(fam_name, per_step[fam_name], "ms/step", flush=True)
    ratio = per_step["ntk"] / per_step["nn"]
    write(
        "linearized_step",
        per_step["ntk"],
        "ms/step",
        1.5,
        round(ratio, 3),
        ratio <= 1.5,
        model=model,
        batch_size=cfg.train.batch_size,
        ms_per_step=per_step,
    )


if __name__ == "__main__":
    main()

"""Training throughput of the quick network and its model-FLOPs utilisation.

Command: ``.venv/bin/python benchmarks/train_throughput.py`` (``make bench``). Measures, in one run:
the fp32 matmul peak of this machine (2048x2048 matmuls), the FLOPs of one training step of the
quick preset's network from XLA's cost analysis, and samples/s of a real `Trainer.fit` (one member,
3 epochs after compiling). Value = samples/s; ratio = achieved GFLOP/s / peak (MFU). No goal is set
by the issue for this number; it is reported to show where the time goes.
Writes results/benchmarks/train_throughput.json.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import optax
from _common import write

from ntk_vs_nn import rng
from ntk_vs_nn.config.presets import quick
from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.engine.losses import distill_loss
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import make_family

EPOCHS = 3


def matmul_peak_gflops(n=2048, reps=10):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def step_flops(fam, tx, x, y):
    v = fam.init(jax.random.key(0), x[:1])

    def step(params, opt_state, xb, yb):
        loss, g = jax.value_and_grad(
            lambda p: distill_loss(
                fam.apply({"params": p, "state": v["state"]}, xb), yb, jnp.zeros((xb.shape[0], 10)), 0.0, 1.0
            )
        )(params)
        u, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, u), opt_state, loss

    compiled = jax.jit(step).lower(v["params"], tx.init(v["params"]), x, y).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def main():
    cfg = quick()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=EPOCHS))
    ds = load_dataset("mnist1d", cfg.data, 0)
    model = cfg.table.nn_models[0]
    fam = make_family("nn", model, ds.num_classes, ds.spatial_ndim, cfg)
    trainer = Trainer(fam, cfg.train, len(ds.x_train))
    bs = trainer.batch_size
    flops = step_flops(fam, trainer.tx, jnp.asarray(ds.x_train[:bs]), jnp.asarray(ds.y_train[:bs]))
    root = rng.root_key(0)
    keys = [rng.member_key(root, "init", 0)], [rng.member_key(root, "data", 0)]
    trainer.fit(*keys, ds.x_train, ds.y_train, mode="sequential")
    t0 = time.perf_counter()
    res = trainer.fit(*keys, ds.x_train, ds.y_train, mode="sequential")
    jax.block_until_ready(res.variables[0]["params"])
    wall = time.perf_counter() - t0
    steps = EPOCHS * trainer.steps
    samples_s = steps * bs / wall
    achieved = flops * steps / wall / 1e9
    peak = matmul_peak_gflops()
    write(
        "train_throughput",
        round(samples_s, 1),
        "samples/s",
        None,
        round(achieved / peak, 4),
        None,
        model=model,
        batch_size=bs,
        step_gflop=round(flops / 1e9, 4),
        achieved_gflops=round(achieved, 2),
        matmul_peak_gflops=round(peak, 1),
    )


if __name__ == "__main__":
    main()

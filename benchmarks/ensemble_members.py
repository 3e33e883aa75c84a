"""How should L ensemble members execute? The measurement behind ``run.members=auto``.

Command: ``.venv/bin/python benchmarks/ensemble_members.py [MODEL]`` (``make bench``). Trains
L = 10 members of the quick preset's network on MNIST-1D for 2 epochs (after a compile run) with
each strategy of engine.Trainer in one process: ``sequential`` (one compiled step, members one
after another), ``unrolled`` (all members in one compiled step) and ``vmap`` (one step vmapped over
a member axis). Also times one epoch as a `lax.scan` over steps against the Python loop the engine
uses. Writes results/benchmarks/ensemble_members.json; ratio = best fused strategy / sequential
(goal <= 1.0 for a fused strategy to be the default).
"""

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import optax
from _common import write

from ntk_vs_nn import rng
from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.engine import Trainer
from ntk_vs_nn.families import make_family
from ntk_vs_nn.presets import quick

L, EPOCHS = 10, 2


def time_members(model: str) -> dict:
    cfg = quick()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=EPOCHS))
    ds = load_dataset("mnist1d", cfg.data, 0)
    root = rng.root_key(0)
    ik = [rng.member_key(root, "init", i) for i in range(L)]
    dk = [rng.member_key(root, "data", i) for i in range(L)]
    out = {}
    for fam_name in ("nn", "ntk"):
        fam = make_family(fam_name, model, ds.num_classes, ds.spatial_ndim, cfg)
        for mode in ("sequential", "unrolled", "vmap"):
            trainer = Trainer(fam, cfg.train, len(ds.x_train))
            t0 = time.perf_counter()
            trainer.fit(ik, dk, ds.x_train, ds.y_train, mode=mode)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = trainer.fit(ik, dk, ds.x_train, ds.y_train, mode=mode)
            jax.block_until_ready(res.variables[-1]["params"])
            run = time.perf_counter() - t0
            out[f"{fam_name}/{mode}"] = {"run_s": round(run, 2), "compile_s": round(first - run, 2)}
            print(fam_name, mode, out[f"{fam_name}/{mode}"], flush=True)
    return out


def time_scan_vs_loop(model: str) -> dict:
    cfg = quick()
    ds = load_dataset("mnist1d", cfg.data, 0)
    fam = make_family("nn", model, ds.num_classes, ds.spatial_ndim, cfg)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    bs = cfg.train.batch_size
    steps = len(x) // bs
    idx = jnp.arange(steps * bs).reshape(steps, bs)
    tx = optax.adam(1e-3)
    v = fam.init(jax.random.key(0), x[:1])

    def step(c, ib):
        p, o = c
        loss, g = jax.value_and_grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(
                fam.apply({"params": p, "state": v["state"]}, x[ib]), y[ib]
            ).mean()
        )(p)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o), loss

    carry = (v["params"], tx.init(v["params"]))
    jstep = jax.jit(step)
    scan = jax.jit(lambda c: jax.lax.scan(step, c, idx))
    jax.block_until_ready(scan(carry))
    c = carry
    for i in range(steps):
        c, _ = jstep(c, idx[i])
    jax.block_until_ready(c)
    t0 = time.perf_counter()
    jax.block_until_ready(scan(carry))
    t_scan = time.perf_counter() - t0
    t0 = time.perf_counter()
    c = carry
    for i in range(steps):
        c, _ = jstep(c, idx[i])
    jax.block_until_ready(c)
    t_loop = time.perf_counter() - t0
    return {"epoch_scan_s": round(t_scan, 3), "epoch_python_loop_s": round(t_loop, 3)}


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else quick().table.nn_models[0]
    members = time_members(model)
    scan = time_scan_vs_loop(model)
    seq = members["nn/sequential"]["run_s"]
    best_mode = min(("unrolled", "vmap"), key=lambda m: members[f"nn/{m}"]["run_s"])
    ratio = members[f"nn/{best_mode}"]["run_s"] / seq
    write(
        "ensemble_members",
        members[f"nn/{best_mode}"]["run_s"],
        "s",
        1.0,
        round(ratio, 3),
        ratio <= 1.0,
        model=model,
        members=L,
        epochs=EPOCHS,
        best_fused_mode=best_mode,
        strategies=members,
        scan_vs_loop=scan,
        default_on_this_backend="sequential" if ratio > 1.0 else best_mode,
    )


if __name__ == "__main__":
    main()

"""How should L ensemble members execute? The measurement behind ``run.members=auto``.

Command: ``.venv/bin/python benchmarks/ensemble_members.py [MODEL]`` (``make bench``). Trains
L = 10 members on MNIST-1D for 2 epochs (the fastest of 2 runs after a compile run) with each strategy of
engine.Trainer in one process: ``sequential`` (one compiled step, members one after another),
``unrolled`` (all members in one compiled step) and ``vmap`` (one step vmapped over a member axis),
for two kinds of network in the same run:

  conv  the quick preset's network (ResNet-10-1, 1-D convolutions; or MODEL);
  mlp   an MLP of 2 hidden layers of 256 (ReLU) on the flattened 40-sample signal, 77k params.

Also times one conv epoch as a `lax.scan` over steps against the Python loop the engine uses.
Writes results/benchmarks/ensemble_members.json: one entry per case under ``cases`` (each with the
name / value / ratio / goal / holds / device / command fields), the conv case also at the top level;
ratio = best fused strategy / sequential (goal <= 1.0 for a fused strategy to be the default).
"""

import dataclasses
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from _common import device, write

from ntk_vs_nn import rng
from ntk_vs_nn.config.presets import quick
from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import linearized, make_family, network, param_count

L, EPOCHS, REPEATS = 10, 2, 2
MLP_WIDTH, MLP_DEPTH = 256, 2


class MLP(nn.Module):
    """The MLP case: flatten, MLP_DEPTH hidden Dense layers of MLP_WIDTH with ReLU, a Dense head."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        h = x.reshape(x.shape[0], -1)
        for _ in range(MLP_DEPTH):
            h = nn.relu(nn.Dense(MLP_WIDTH)(h))
        return nn.Dense(self.num_classes, name="head")(h)


def families(kind: str, model: str, ds, cfg):
    """(name, family) for nn and ntk of the conv network ``model`` or of the MLP."""
    if kind == "mlp":
        base = network(MLP(ds.num_classes))
        return [("nn", base), ("ntk", linearized(base))]
    return [(f, make_family(f, model, ds.num_classes, ds.spatial_ndim, cfg)) for f in ("nn", "ntk")]


def time_members(model: str, kind: str = "conv") -> dict:
    cfg = quick()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=EPOCHS))
    ds = load_dataset("mnist1d", cfg.data, 0)
    root = rng.root_key(0)
    ik = [rng.member_key(root, "init", i) for i in range(L)]
    dk = [rng.member_key(root, "data", i) for i in range(L)]
    out = {}
    for fam_name, fam in families(kind, model, ds, cfg):
        out["params"] = param_count(fam.init(ik[0], ds.x_train[:1]))
        for mode in ("sequential", "unrolled", "vmap"):
            trainer = Trainer(fam, cfg.train, len(ds.x_train))
            t0 = time.perf_counter()
            trainer.fit(ik, dk, ds.x_train, ds.y_train, mode=mode)
            first = time.perf_counter() - t0
            runs = []
            for _ in range(REPEATS):  # the fastest of REPEATS: interference only slows a run down
                t0 = time.perf_counter()
                res = trainer.fit(ik, dk, ds.x_train, ds.y_train, mode=mode)
                jax.block_until_ready(res.variables[-1]["params"])
                runs.append(time.perf_counter() - t0)
            run = min(runs)
            out[f"{fam_name}/{mode}"] = {"run_s": round(run, 2), "compile_s": round(first - run, 2)}
            print(kind, fam_name, mode, out[f"{fam_name}/{mode}"], flush=True)
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


def case(kind: str, model: str, members: dict, **extra) -> dict:
    """One case's result in the fields every benchmark reports."""
    seq = members["nn/sequential"]["run_s"]
    best_mode = min(("unrolled", "vmap"), key=lambda m: members[f"nn/{m}"]["run_s"])
    ratio = members[f"nn/{best_mode}"]["run_s"] / seq
    return {
        "name": f"ensemble_members/{kind}",
        "value": members[f"nn/{best_mode}"]["run_s"],
        "unit": "s",
        "ratio": round(ratio, 3),
        "goal": 1.0,
        "holds": ratio <= 1.0,
        "device": device(),
        "command": " ".join(["benchmarks/ensemble_members.py", *sys.argv[1:]]),
        "model": model,
        "params": members.pop("params"),
        "members": L,
        "epochs": EPOCHS,
        "timed_runs_best_of": REPEATS,
        "best_fused_mode": best_mode,
        "strategies": members,
        "default_on_this_backend": "sequential" if ratio > 1.0 else best_mode,
        **extra,
    }


LOAD0 = [round(v, 2) for v in os.getloadavg()]


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else quick().table.nn_models[0]
    conv = case("conv", model, time_members(model, "conv"), scan_vs_loop=time_scan_vs_loop(model))
    mlp = case("mlp", f"MLP-{MLP_DEPTH}x{MLP_WIDTH}", time_members(model, "mlp"))
    load = {"start": LOAD0, "end": [round(v, 2) for v in os.getloadavg()]}  # other work on the machine
    top = {k: v for k, v in conv.items() if k not in ("name", "value", "unit", "ratio", "goal", "holds", "device")}
    top.pop("command")
    write(
        "ensemble_members",
        conv["value"],
        "s",
        1.0,
        conv["ratio"],
        conv["holds"],
        **top,
        cases={"conv": conv, "mlp": mlp},
        load_average_1m_5m_15m=load,
        default_by_model_kind={"conv": conv["default_on_this_backend"], "mlp": mlp["default_on_this_backend"]},
    )


if __name__ == "__main__":
    main()

"""How should L ensemble members execute? The measurement behind ``run.members=auto``.

Command: ``.venv/bin/python benchmarks/ensemble_members.py [MODEL]`` (``make bench``). Trains
L = 10 members on MNIST-1D for 2 epochs (the fastest of 2 runs after a compile run) with each strategy of
engine.Trainer in one process: ``sequential`` (one compiled step, members one after another),
``unrolled`` (all members in one compiled step) and ``vmap`` (one step vmapped over a member axis),
for two kinds of network in the same run:

  conv  the quick preset's network (ResNet-10-1, 1-D convolutions; or MODEL);
  mlp   an MLP of 2 hidden layers of 256 (ReLU) on the flattened 40-sample signal, 77k params.

The conv case also times (nn family): the fused modes with ``run.conv=matmul`` (convolutions as
batched matrix products, models/conv.py, instead of the grouped convolutions vmap makes), and
``workers``: the 10 members as 10 tasks in a pool of one single-threaded worker process per core
(engine/workers.py, ``run.workers=0``; the pool started and compiled before the timed runs, as it is
once per table). And the train-sum model of the 10 members: one joint program (``unrolled``) vs
member-by-member differentiation (``sequential``, `Trainer._fit_split`), in this process and in one
single-threaded worker (where the table's workers run it). Beside them: the step's GFLOP/s (XLA's
cost analysis) and this machine's fp32 matmul and convolution peaks, measured in the same run.

Also times one conv epoch as a `lax.scan` over steps against the Python loop the engine uses.
Writes results/benchmarks/ensemble_members.json: one entry per case under ``cases`` (each with the
name / value / ratio / goal / holds / device / command fields), the conv case also at the top level;
ratio = best strategy other than sequential / sequential (goal <= 0.6, issue 16; a strategy that
beats sequential becomes ``run.members`` / ``run.workers``' default: ``default_on_this_backend``).
"""

import dataclasses
import os
import sys
import time

import _common
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from _common import device, write
from train_throughput import matmul_peak_gflops, step_flops

from ntk_vs_nn import rng
from ntk_vs_nn.config.presets import quick
from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.engine import workers
from ntk_vs_nn.engine.trainer import Trainer
from ntk_vs_nn.families import linearized, make_family, network, param_count, summed

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


def _setup(conv="xla"):
    cfg = quick()
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, epochs=EPOCHS), run=dataclasses.replace(cfg.run, conv=conv)
    )
    ds = load_dataset("mnist1d", cfg.data, 0)
    root = rng.root_key(0)
    ik = [rng.member_key(root, "init", i) for i in range(L)]
    dk = [rng.member_key(root, "data", i) for i in range(L)]
    return cfg, ds, root, ik, dk


def best_of(fn) -> dict:
    """`_common.best_of` with this benchmark's REPEATS, rounded to 10 ms."""
    return {k: round(v, 2) for k, v in _common.best_of(fn, REPEATS).items()}


_WORKER = {}


def _worker_member(model: str, i: int, what: str = "member") -> float:
    """In a worker: fit member i (or, ``what="sum"``, the train-sum model) of the nn family."""
    if model not in _WORKER:
        cfg, ds, root, ik, dk = _setup()
        fam = make_family("nn", model, ds.num_classes, ds.spatial_ndim, cfg)
        _WORKER[model] = (Trainer(fam, cfg.train, len(ds.x_train)), Trainer(summed(fam, L), cfg.train, len(ds.x_train)),
                          ds, root, ik, dk)  # fmt: skip
    trainer, sum_trainer, ds, root, ik, dk = _WORKER[model]
    if what == "sum":
        res = sum_trainer.fit([rng.stream(root, "init")], dk[:1], ds.x_train, ds.y_train, mode="sequential")
    else:
        res = trainer.fit(ik[i : i + 1], dk[i : i + 1], ds.x_train, ds.y_train, mode="sequential")
    jax.block_until_ready(res.variables[0]["params"])
    return res.wall_s


def time_workers(model: str) -> dict:
    """The 10 members as tasks of a pool of one single-threaded worker per core; the train-sum model
    (member by member) in one such worker."""
    n = workers.worker_count(0)
    with workers.Pool(n) as pool:
        run = lambda: workers.results([pool.submit(_worker_member, model, i) for i in range(L)])  # noqa: E731
        members = best_of(run)
        one = lambda: workers.results([pool.submit(_worker_member, model, 0, "sum")])  # noqa: E731
        train_sum = best_of(one)
    print("conv nn workers", members, "train_sum in a worker", train_sum, flush=True)
    return {"nn/workers": {**members, "workers": n}, "train_sum/split_in_worker": train_sum}


def time_train_sum(model: str) -> dict:
    cfg, ds, root, ik, dk = _setup()
    fam = make_family("nn", model, ds.num_classes, ds.spatial_ndim, cfg)
    out = {}
    for label, mode in (("joint", "unrolled"), ("split", "sequential")):
        trainer = Trainer(summed(fam, L), cfg.train, len(ds.x_train))
        fit = (
            lambda: jax.block_until_ready(  # noqa: E731
                trainer.fit([rng.stream(root, "init")], dk[:1], ds.x_train, ds.y_train, mode=mode).variables[0][
                    "params"
                ]
            )
        )
        out[f"train_sum/{label}"] = best_of(fit)
        print("train_sum", label, out[f"train_sum/{label}"], flush=True)
    return out


def conv_peak_gflops(reps=10) -> float:
    """fp32 forward convolution peak: a 3x3 convolution of 128 to 128 channels on 32x32, batch 64."""
    x = jax.random.normal(jax.random.key(0), (64, 32, 32, 128), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (3, 3, 128, 128), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn))
    f(x, w).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(x, w)
    out.block_until_ready()
    return 2 * 64 * 32 * 32 * 9 * 128 * 128 * reps / (time.perf_counter() - t0) / 1e9


def step_gflops(model: str, run_s: dict) -> dict:
    """Effective GFLOP/s of 10 members' training in each of ``run_s`` (name -> seconds), from XLA's
    FLOPs of one step (compiled once)."""
    cfg, ds, *_ = _setup()
    fam = make_family("nn", model, ds.num_classes, ds.spatial_ndim, cfg)
    bs = cfg.train.batch_size
    flops = step_flops(fam, optax.adam(1e-3), jnp.asarray(ds.x_train[:bs]), jnp.asarray(ds.y_train[:bs]))
    steps = len(ds.x_train) // bs * EPOCHS * L
    return {
        name: {"step_gflop": round(flops / 1e9, 4), "effective_gflops": round(flops * steps / s / 1e9, 1)}
        for name, s in run_s.items()
    }


def time_members(model: str, kind: str = "conv") -> dict:
    cfg, ds, root, ik, dk = _setup()
    out = {}
    cases = [
        (f, fam, m, "xla") for f, fam in families(kind, model, ds, cfg) for m in ("sequential", "unrolled", "vmap")
    ]
    if kind == "conv":
        cfg_mm = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, conv="matmul"))
        fam_mm = make_family("nn", model, ds.num_classes, ds.spatial_ndim, cfg_mm)
        cases += [("nn", fam_mm, m, "matmul") for m in ("unrolled", "vmap")]
    for fam_name, fam, mode, conv in cases:
        out["params"] = param_count(fam.init(ik[0], ds.x_train[:1]))
        trainer = Trainer(fam, cfg.train, len(ds.x_train))
        fit = lambda: jax.block_until_ready(  # noqa: E731
            trainer.fit(ik, dk, ds.x_train, ds.y_train, mode=mode).variables[-1]["params"]
        )
        label = f"{fam_name}/{mode}" + ("" if conv == "xla" else f"/{conv}_conv")
        out[label] = best_of(fit)
        print(kind, label, out[label], flush=True)
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


GOAL = 0.6  # issue 16: the best CPU mode for 10 ResNet-10-1 members <= 0.6x sequential


def case(kind: str, model: str, members: dict, goal: float = GOAL, **extra) -> dict:
    """One case's result in the fields every benchmark reports."""
    seq = members["nn/sequential"]["run_s"]
    others = [k[3:] for k in members if k.startswith("nn/") and k != "nn/sequential"]
    best_mode = min(others, key=lambda m: members[f"nn/{m}"]["run_s"])
    ratio = members[f"nn/{best_mode}"]["run_s"] / seq
    default = "sequential" if ratio > 1.0 else best_mode
    return {
        "name": f"ensemble_members/{kind}",
        "value": members[f"nn/{best_mode}"]["run_s"],
        "unit": "s",
        "ratio": round(ratio, 3),
        "goal": goal,
        "holds": ratio <= goal,
        "device": device(),
        "command": " ".join(["benchmarks/ensemble_members.py", *sys.argv[1:]]),
        "model": model,
        "params": members.pop("params"),
        "members": L,
        "epochs": EPOCHS,
        "timed_runs_best_of": REPEATS,
        "best_mode": best_mode,
        "strategies": members,
        "default_on_this_backend": default,
        **extra,
    }


LOAD0 = [round(v, 2) for v in os.getloadavg()]


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else quick().table.nn_models[0]
    members = time_members(model, "conv")
    members.update(time_workers(model))
    sums = {k: members.pop(k) for k in list(members) if k.startswith("train_sum/")}
    sums.update(time_train_sum(model))
    best = min(v["run_s"] for k, v in members.items() if k.startswith("nn/"))
    peaks = {"matmul_peak_gflops": round(matmul_peak_gflops(), 1), "conv_peak_gflops": round(conv_peak_gflops(), 1)}
    gflops = step_gflops(model, {"sequential": members["nn/sequential"]["run_s"], "best": best})
    conv = case("conv", model, members, scan_vs_loop=time_scan_vs_loop(model), train_sum=sums, gflops=gflops, **peaks)
    mlp = case("mlp", f"MLP-{MLP_DEPTH}x{MLP_WIDTH}", time_members(model, "mlp"), goal=1.0)  # fused <= sequential
    load = {"start": LOAD0, "end": [round(v, 2) for v in os.getloadavg()]}  # other work on the machine
    top = {k: v for k, v in conv.items() if k not in ("name", "value", "unit", "ratio", "goal", "holds", "device")}
    top.pop("command")
    write(
        "ensemble_members",
        conv["value"],
        "s",
        GOAL,
        conv["ratio"],
        conv["holds"],
        **top,
        cases={"conv": conv, "mlp": mlp},
        load_average_1m_5m_15m=load,
        default_by_model_kind={"conv": conv["default_on_this_backend"], "mlp": mlp["default_on_this_backend"]},
    )


if __name__ == "__main__":
    main()

"""XLA:CPU's YNNPACK fusion on the presets' nets: jax's default against ``--xla_cpu_experimental_ynn_fusion_type=``
(the option empty: no op is handed to YNNPACK), for both convolutions (``run.conv`` xla and matmul).

Command: ``.venv/bin/python benchmarks/ynn_fusion.py`` (``make bench``). XLA_FLAGS is read once, when jax
starts, so each (net, convolution, flag) is timed in a fresh process: one jitted gradient of the
cross-entropy (batch 128, after a compile call; the best of 3 x 5 calls), the two flag settings alternating
over ``ROUNDS`` rounds so a load on the machine falls on both alike; per case the best time of each setting.
Each child also saves its gradient: the two settings must give the same numbers (largest difference
relative to the gradient's largest entry, float32 rounding; a cross-check, since a fused path has been wrong
on XLA:CPU before, results/xla-cpu-bug/). Value: the largest time(default) / time(option off) over the 2-D
nets, i.e. how much faster the option makes the slowest-helped 2-D net; goal <= 1 would mean the option
never helps. The 1-D ResNet-10-1 of the quick preset is timed for comparison. The CPU is recorded (the
answer depends on it). Writes results/benchmarks/ynn_fusion.json.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

OFF = "--xla_cpu_experimental_ynn_fusion_type="
ROUNDS = 2
NETS = (  # (name, norm, input shape): the 2-D nets of the fmnist, diversity and replication presets, then 1-D
    ("PlainCNN-2-1", "none", (28, 28, 1)),
    ("BE4-PlainCNN-2-0.5", "none", (28, 28, 1)),
    ("ResNet-18-0.125", "layer", (28, 28, 1)),
    ("ResNet-10-1", "layer", (28, 28, 1)),
    ("ResNet-10-1", "layer", (40, 1)),  # the quick preset's 1-D net (MNIST-1D)
)


def child(name, norm, shape, conv, out):
    import time

    import jax
    import jax.numpy as jnp
    import optax

    from ntk_vs_nn.models import build_model

    model = build_model(name, 10, len(shape) - 1, norm=norm, conv=conv)
    x = jnp.asarray(np.random.RandomState(0).rand(128, *shape).astype(np.float32))
    y = jnp.asarray(np.random.RandomState(1).randint(0, 10, 128))
    params = model.init(jax.random.PRNGKey(0), x)["params"]

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

    g = jax.jit(jax.grad(loss))
    grad = jax.block_until_ready(g(params))
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(5):
            r = g(params)
        jax.block_until_ready(r)
        best = min(best, (time.perf_counter() - t0) / 5)
    np.save(out, np.concatenate([np.ravel(a) for a in jax.tree.leaves(grad)]))
    print(json.dumps({"ms": best * 1e3}))


def timed(name, norm, shape, conv, flag, out) -> float:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(OFF)]
    env = {**os.environ, "XLA_FLAGS": " ".join([*flags, *([flag] if flag else [])]), "JAX_PLATFORMS": "cpu"}
    args = [sys.executable, __file__, "--child", name, norm, "x".join(map(str, shape)), conv, out]
    res = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["ms"]


def main():
    from _common import write
    from conv_choice import cpu

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, norm, shape in NETS:
            for conv in ("xla", "matmul"):
                ms = {"default": [], "off": []}
                paths = {k: os.path.join(tmp, f"{k}.npy") for k in ms}
                for r in range(ROUNDS):
                    order = ("default", "off") if r % 2 == 0 else ("off", "default")
                    for k in order:
                        ms[k].append(timed(name, norm, shape, conv, OFF if k == "off" else "", paths[k]))
                a, b = np.load(paths["default"]), np.load(paths["off"])
                case = dict(
                    net=name, norm=norm, input=list(shape), conv=conv,
                    ms_default=round(min(ms["default"]), 2), ms_off=round(min(ms["off"]), 2),
                    default_over_off=round(min(ms["default"]) / min(ms["off"]), 3),
                    grad_rel_diff=float(np.abs(a - b).max() / np.abs(a).max()),
                )  # fmt: skip
                cases.append(case)
                print(case, flush=True)
    two_d = [c for c in cases if len(c["input"]) == 3]
    value = max(c["default_over_off"] for c in two_d)
    least = min(c["default_over_off"] for c in two_d)
    write(
        "ynn_fusion",
        round(least, 3),
        "x (time with jax's default over time with YNNPACK fusion off; the smallest over the 2-D nets and convs)",
        1.0,
        round(least, 3),
        least > 1.0,
        largest=round(value, 3),
        flag=OFF,
        rounds=ROUNDS,
        batch_size=128,
        cpu=cpu(),
        same_numbers=all(c["grad_rel_diff"] < 1e-4 for c in cases),
        cases=cases,
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        name, norm, shape, conv, out = sys.argv[2:7]
        child(name, norm, tuple(int(v) for v in shape.split("x")), conv, out)
    else:
        main()

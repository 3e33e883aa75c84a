"""Which convolution ``run.conv=auto`` should pick for members trained one by one: XLA's
(``lax.conv_general_dilated``) or the matrix product of shifted windows (models/conv.py).

Command: ``.venv/bin/python benchmarks/conv_choice.py`` (``make bench``). For each 2-D net the suite
trains on 28x28 images (the fmnist, diversity and replication presets' nets and the peer benchmark's
ResNet-10-1), times one jitted gradient of the cross-entropy (batch 128, after a compile call; the
best of 3 x 5 calls) with each convolution in one process, and reports matmul / xla per net.
Goal: ``run.conv=auto``'s choice on this CPU (`families.resolve_conv`: xla where the CPU has
AVX-512, else matmul) is the faster one on every net: value = the largest time(auto's choice) /
time(the other) over the nets, <= 1. The CPU's model name and vector extensions are recorded: the
answer has depended on the CPU (the AVX2 machine of session 7 measured matmul 1.52x faster for the
2-D ResNet-10-1, results/benchmarks/peer_pytorch.json).
XLA runs as `ntk-vs-nn` runs these nets' image data: YNNPACK fusion off (`engine.host.configure_xla_cpu`,
results/benchmarks/ynn_fusion.json), unless XLA_FLAGS sets it.
Writes results/benchmarks/conv_choice.json.
"""

import platform
import time

from ntk_vs_nn.engine.host import configure_xla_cpu

configure_xla_cpu("fashion_mnist")  # before jax starts
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import write  # noqa: E402

from ntk_vs_nn.families import cpu_flags, resolve_conv  # noqa: E402
from ntk_vs_nn.models import build_model  # noqa: E402

BATCH, CALLS, REPEATS = 128, 5, 3
NETS = (
    ("PlainCNN-2-1", "none"),
    ("PlainCNN-2-0.5", "none"),
    ("BE4-PlainCNN-2-0.5", "none"),  # the diversity preset's BatchEnsemble
    ("ResNet-10-1", "layer"),
    ("ResNet-18-0.125", "layer"),
)


def cpu() -> str:
    """The CPU's model name and its AVX extensions (`families.cpu_flags`)."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        name = platform.processor()
    return f"{name} ({' '.join(sorted(f for f in cpu_flags() if f.startswith('avx')))})"


def grad_ms(name: str, norm: str, conv: str) -> float:
    model = build_model(name, 10, 2, norm=norm, conv=conv)
    x = jnp.asarray(np.random.RandomState(0).rand(BATCH, 28, 28, 1).astype(np.float32))
    y = jnp.asarray(np.random.RandomState(1).randint(0, 10, BATCH))
    params = model.init(jax.random.PRNGKey(0), x)["params"]

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

    g = jax.jit(jax.grad(loss))
    jax.block_until_ready(g(params))  # compile
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(CALLS):
            r = g(params)
        jax.block_until_ready(r)
        best = min(best, (time.perf_counter() - t0) / CALLS)
    return round(best * 1e3, 2)


def main():
    auto = resolve_conv("auto", "sequential", 2)
    other = {"xla": "matmul", "matmul": "xla"}[auto]
    cases = {}
    for name, norm in NETS:
        ms = {conv: grad_ms(name, norm, conv) for conv in ("xla", "matmul")}
        cases[name] = {**ms, "norm": norm, "matmul_over_xla": round(ms["matmul"] / ms["xla"], 3)}
        print(name, cases[name], flush=True)
    worst = max(c[auto] / c[other] for c in cases.values())
    write(
        "conv_choice",
        round(worst, 3),
        f"x (time with auto's choice, {auto}, over time with {other}; largest over the nets)",
        1.0,
        round(worst, 3),
        worst <= 1.0,
        batch_size=BATCH,
        auto=auto,
        cpu=cpu(),
        ms_per_gradient=cases,
    )


if __name__ == "__main__":
    main()

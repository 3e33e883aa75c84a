"""Time one Adam training step (batch from argv, default 128; 28x28x1, 10 classes) of PlainCNN-2-1 variants
on this CPU: the suite's net with XLA and matmul convolutions, and flax nets with reduce-window max-pool,
reshape-and-max pool and average pool (results/fmnist-sizing/step_bench*.log).

    .venv/bin/python scripts/fmnist_step_bench.py 128
"""

import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntk_vs_nn.models import build_model

B = int(sys.argv[1]) if len(sys.argv) > 1 else 128
N_STEPS = 10


class Custom(nn.Module):
    pool: str = "max"

    @nn.compact
    def __call__(self, x):
        h = x
        for c in (32, 64):
            h = nn.relu(nn.Conv(c, (3, 3), padding="SAME")(h))
            if self.pool == "max":
                h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
            elif self.pool == "avg":
                h = nn.avg_pool(h, (2, 2), strides=(2, 2), padding="VALID")
            elif self.pool == "reshape":  # 2x2 max via reshape (no select_and_scatter)
                n, hh, ww, cc = h.shape
                h = h[:, : hh // 2 * 2, : ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, cc).max((2, 4))
        h = h.reshape(h.shape[0], -1)
        h = nn.relu(nn.Dense(128)(h))
        return nn.Dense(10)(h)


def bench(name, model):
    x = jnp.asarray(np.random.RandomState(0).rand(B, 28, 28, 1).astype(np.float32))
    y = jnp.asarray(np.random.RandomState(1).randint(0, 10, B))
    v = model.init(jax.random.PRNGKey(0), x)
    params = v["params"]
    rest = {k: w for k, w in v.items() if k != "params"}
    tx = optax.adam(1e-3)
    st = tx.init(params)

    def loss_fn(p):
        logits = model.apply({"params": p, **rest}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    fwd = jax.jit(lambda p: model.apply({"params": p, **rest}, x))
    p, s, loss = step(params, st)
    loss.block_until_ready()
    fwd(params).block_until_ready()
    t = time.perf_counter()
    for _ in range(N_STEPS):
        p, s, loss = step(p, s)
    loss.block_until_ready()
    dt = (time.perf_counter() - t) / N_STEPS
    t = time.perf_counter()
    for _ in range(N_STEPS):
        o = fwd(p)
    o.block_until_ready()
    df = (time.perf_counter() - t) / N_STEPS
    print(
        f"{name:32s} step {dt * 1e3:7.1f} ms  fwd {df * 1e3:6.1f} ms  -> {dt * 9000 / B:5.1f} s per 9000-image epoch",
        flush=True,
    )


print("jax", jax.__version__, jax.devices(), "batch", B)
bench("suite PlainCNN-2-1 conv=xla", build_model("PlainCNN-2-1", 10, 2, "none", 8, "float32", "xla"))
bench("suite PlainCNN-2-1 conv=matmul", build_model("PlainCNN-2-1", 10, 2, "none", 8, "float32", "matmul"))
bench("flax max_pool", Custom("max"))
bench("flax reshape-max pool", Custom("reshape"))
bench("flax avg_pool", Custom("avg"))

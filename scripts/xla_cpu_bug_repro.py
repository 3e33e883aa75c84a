"""XLA:CPU returns wrong vmapped cotangents through GroupNorm under jit (jax/jaxlib 0.10.2).

Command: ``.venv/bin/python scripts/xla_cpu_bug_repro.py`` (writes nothing; prints one line per case).
Found by `ntk_vs_nn.kernels.structured`'s per-tile check (README, "Kernel backends"). The k = 10 backward
passes of one batch, vmapped over the output cotangents (what a per-example Jacobian by output unit
does), are compared jit vs eager and against float64. Eager float32 equals float64 to 1e-7; under jit
the cotangents of outputs 8 and 9 — folded batch index >= 1024 = 8 x 128 — are off by up to ~50 %
once n reaches 128, for a GroupNorm after a convolution; LayerNorm and plain grads are right.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class Net(nn.Module):
    norm: str

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(32, (3,), padding="SAME", use_bias=False)(x)
        x = nn.GroupNorm(num_groups=1)(x) if self.norm == "group" else nn.LayerNorm()(x)
        return nn.Dense(10)(x.mean(1))


def cotangents(module, params, x):
    out, vjp = jax.vjp(lambda xx: module.apply({"params": params}, xx), x)
    basis = jnp.eye(10, dtype=x.dtype)[:, None, :] * jnp.ones((1, len(x), 1), x.dtype)  # (k, n, k)
    return jax.vmap(lambda c: vjp(c)[0])(basis)  # (k, n, 40, 1)


for norm in ("group", "layer"):
    for n in (64, 128, 256):
        module = Net(norm)
        x = jax.random.normal(jax.random.key(0), (n, 40, 1))
        params = module.init(jax.random.key(1), x[:1])["params"]
        eager, jitted = (
            np.asarray(cotangents(module, params, x)),
            np.asarray(jax.jit(cotangents, static_argnums=0)(module, params, x)),
        )
        with jax.enable_x64(True):
            p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
            truth = np.asarray(jax.jit(cotangents, static_argnums=0)(module, p64, jnp.asarray(x, jnp.float64)))
        err = lambda a: np.abs(a - truth).max() / np.abs(truth).max()  # noqa: E731
        bad = np.nonzero(np.abs(jitted - truth).max(axis=(1, 2, 3)) > 1e-4 * np.abs(truth).max())[0]
        print(
            f"{norm}Norm n={n}: eager f32 rel err {err(eager):.1e}, jit f32 rel err {err(jitted):.1e}, "
            f"wrong outputs {bad.tolist()}"
        )
print("jax", jax.__version__, "devices", jax.devices())

"""Functions of a batch applied to many examples: one padded batch shape, one compiled loop."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def pad_batch(x, t: int) -> jax.Array:
    """Pad the batch axis to a multiple of t by repeating the last example (any net accepts it)."""
    x = jnp.asarray(x)
    m = -len(x) % t
    return x if m == 0 else jnp.concatenate([x, jnp.repeat(x[-1:], m, axis=0)])


def map_batches(fn: Callable, x, batch_size: int = 1000):
    """``fn`` (a function of a batch, per-example outputs) on every example of ``x``, in batches of
    ``min(batch_size, len(x))`` (the last one padded by `pad_batch`), as one `jax.lax.map` over the
    batches: one compilation, no host round-trip between batches. Returns numpy arrays (a pytree if
    ``fn`` returns one) with the padding removed."""
    n = len(x)
    b = max(1, min(batch_size, n))
    xs = pad_batch(x, b)
    out = jax.lax.map(fn, xs.reshape(-1, b, *xs.shape[1:]))
    return jax.tree.map(lambda o: np.asarray(o).reshape(-1, *o.shape[2:])[:n], out)

"""Functions of a batch applied to many examples, in fixed-size batches: `map_batches` (a host loop
over one padded batch shape) and `apply_rows` (one jitted program, `jax.lax.map` inside)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def pad_rows(x, multiple: int):
    """Pad the batch axis to a multiple of ``multiple`` by repeating the last example (any net accepts it;
    callers drop the padded outputs): a numpy array stays numpy, anything else becomes a jax array."""
    xp = np if isinstance(x, np.ndarray) else jnp
    m = -len(x) % multiple
    return x if m == 0 else xp.concatenate([x, xp.repeat(x[-1:], m, axis=0)])


def pad_batch(x, t: int) -> jax.Array:
    """`pad_rows` as a jax array."""
    return pad_rows(jnp.asarray(x), t)


def map_batches(fn: Callable, x, batch_size: int = 1000):
    """``fn`` (a jitted function of a batch, per-example outputs) on every example of ``x``, in
    batches of ``min(batch_size, len(x))`` (the last one padded by `pad_batch`, so ``fn`` compiles
    for one shape). Returns numpy arrays (a pytree if ``fn`` returns one) without the padding.

    A host loop over the batches on purpose: an eager `jax.lax.map` builds and compiles a new loop
    program at every call (the callers call with fresh closures, e.g. once per solver step), which
    made the kernel tests several times slower; inside one jitted program, use `jax.lax.map`."""
    n = len(x)
    b = max(1, min(batch_size, n))
    xs = pad_batch(x, b)
    parts = [fn(xs[i : i + b]) for i in range(0, len(xs), b)]
    return jax.tree.map(lambda *o: np.concatenate([np.asarray(a) for a in o])[:n], *parts)


def apply_rows(fn, batch_size: int):
    """A jitted ``(variables, x) -> fn(variables, x)`` that runs ``fn`` on ``batch_size`` rows of ``x``
    at a time (`jax.lax.map` inside one program), so a large ``x`` never becomes one large activation.
    ``fn`` must treat rows independently (no batch statistics); its outputs are bit-identical to one
    call per chunk (checked for GaussNet and Backbone on the CPU). Use it where the same ``fn`` is
    applied many times (compiled once); `map_batches` for a fresh function per call."""

    def rows(variables, x):
        return jax.lax.map(lambda xi: fn(variables, xi[None])[0], x, batch_size=batch_size)

    return jax.jit(rows)

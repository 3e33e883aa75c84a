"""Finite-width kernels outside the empirical-NTK engine: last-layer features and their NNGP kernel,
and the empirical NTK of a model family through the kernel API.

`head_features` captures φ(x), the input of a network's Dense head; `nngp_fn` is the NNGP kernel of
those features, φ(x) φ(x')^T / width. `family_ntk_fn` is the empirical NTK of a `ModelFamily`
w.r.t. its trainable params: a thin wrapper of `ntk_vs_nn.kernels.api.empirical_ntk_fn`, the one
empirical-NTK implementation of the package (tile it with `ntk_vs_nn.kernels.batching.batch`, as
the function-space backend does; docs/kernels.md). The closed-form predictors that train a kernel
model on them are in `ntk_vs_nn.kernels.predict`.

Example:
    >>> import ntk_vs_nn.kernels as nt
    >>> module = build_model("SimpleCNN-3-1", num_classes=3, ndim=1)
    >>> f = lambda params, x: module.apply({"params": params}, x)            # (B, 3)
    >>> params = module.init(jax.random.key(0), x_train[:1])["params"]
    >>> ntk = nt.batch(nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation="auto"), 256,
    ...                store_on_device=False)                                 # full kernel, host numpy
    >>> k_train_train, k_test_train = ntk.train_test(x_train, x_test, params) # (n, n, 3, 3), (m, n, 3, 3)
    >>> k_nngp = nngp_fn(lambda x: head_features(module, params, x))(x_train) # (n, n)
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

from ntk_vs_nn.engine.batching import map_batches
from ntk_vs_nn.kernels import api


def family_ntk_fn(family, variables, trace_axes=(-1,), vmap_axes=0, implementation="auto") -> Callable:
    """The empirical NTK of a `ModelFamily` w.r.t. its trainable ``params``, by `api.empirical_ntk_fn`.

    f(params, x, state) = family.apply({"params": params, "state": state}, x), the state (the anchor
    W0 of ``ntk``, the frozen layers of ``gp``) a keyword argument of the kernel function, not a
    constant baked into it. The ``ntk`` family is linear in params with Jacobian J(W0), so its NTK at
    any params equals the ``nn`` family's NTK at W0; the ``gp`` family's is (φφ'^T + 1) ⊗ I_k.

    Args:
      family, variables: a `ntk_vs_nn.families.ModelFamily` and its ``family.init`` output.
      trace_axes, vmap_axes, implementation: as `api.empirical_ntk_fn` (examples independent by default).

    Returns:
      ``fn(x1 (n1, ...), x2=None, params=None) -> jax.Array`` (n1, n2) or (n1, n2, k, k); params
      default to ``variables["params"]``.
    """
    ntk = api.empirical_ntk_fn(
        lambda p, x, state: family.apply({"params": p, "state": state}, x),
        trace_axes=trace_axes,
        vmap_axes=vmap_axes,
        implementation=implementation,
    )
    return lambda x1, x2=None, params=None: ntk(
        x1, x2, variables["params"] if params is None else params, state=variables["state"]
    )


def head_features(module: nn.Module, params, x, head: str = "head") -> jax.Array:
    """The input of the Dense layer named ``head``, captured by a Flax method interceptor.

    Args:
      module, params: any network of `ntk_vs_nn.models` (it ends in ``nn.Dense(name="head")``).
      x: (B, ...) inputs.

    Returns:
      φ(x) of shape (B, width); ``φ(x) @ kernel + bias`` of the head is the model output.
    """
    captured = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, nn.Dense) and context.module.name == head:
            captured.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        module.apply({"params": params}, x)
    if len(captured) != 1:
        raise ValueError(f"expected one call of a Dense layer named {head!r}, saw {len(captured)}")
    return captured[0]


def nngp_fn(features: Callable, tile_size: int = 256) -> Callable:
    """The NNGP (random-features) kernel of last-layer features, K = φ(x1) φ(x2)^T / width.

    Normalised by the width so K stays O(1) as the net widens (the finite-width estimate of the
    NNGP kernel). With a standard-parameterised Dense head, the ``gp`` family's traced NTK is
    ``width · K + 1`` (the head kernel plus its bias).

    Args:
      features: ``x (B, ...) -> φ(x) (B, width)``, e.g. ``lambda x: head_features(module, params, x)``.
      tile_size: examples per (padded) feature batch; the batches run as one compiled `map_batches`.

    Returns:
      ``fn(x1 (n1, ...), x2 (n2, ...) | None) -> np.ndarray (n1, n2)``; x2=None means x1.
    """
    phi_fn = jax.jit(features)

    def feats(x):
        return map_batches(phi_fn, x, tile_size)

    def fn(x1, x2=None):
        phi1 = feats(x1)
        phi2 = phi1 if x2 is None else feats(x2)
        return phi1 @ phi2.T / phi1.shape[-1]

    return fn

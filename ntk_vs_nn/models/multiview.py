"""The multi-view theory's learner as Flax modules (Allen-Zhu & Li, arXiv 2012.09816).

`PatchNet` is the two-layer convolutional net ``F_j(X) = sum_r sum_p ReLU~(<w_{j,r}, x_p>)`` with
``m`` neurons per class shared over the patches and the paper's smoothed ReLU (threshold ``varrho``,
power ``q``); `RandomFeatures` is its kernel contrast ``gp``: ``width`` random neurons
``sum_p ReLU~(<u_r, x_p>)`` and a linear ``head`` (the only layer `families.last_layer` trains).
Inputs are ``(n, P, d)`` patches.

Each module's `draw` is its initialiser (``N(0, sigma0^2)`` weights, a zero head), drawn from the
raw key (`families.network(module, init=module.draw)`): the weights are those the hand-written
learner drew before it became a Flax module, so its results are unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def smoothed_relu(z: jax.Array, varrho: float, q: int) -> jax.Array:
    """The paper's smoothed ReLU ``ReLU~`` (C^1; ``z^q`` near 0).

    ``0`` for ``z <= 0``; ``z^q / (q varrho^(q-1))`` for ``0 < z <= varrho``;
    ``z - (1 - 1/q) varrho`` for ``z > varrho``.
    """
    zc = jnp.clip(z, 0.0, varrho)  # clip keeps the unused branches' gradients finite and zero
    poly = zc**q / (q * varrho ** (q - 1))
    lin = z - (1.0 - 1.0 / q) * varrho
    return jnp.where(z <= 0, 0.0, jnp.where(z <= varrho, poly, lin))


def smoothed_relu_grad(z: jax.Array, varrho: float, q: int) -> jax.Array:
    """Derivative of :func:`smoothed_relu`: ``0``, ``(z / varrho)^(q-1)``, ``1`` on its three pieces."""
    return jnp.where(z <= 0, 0.0, jnp.where(z <= varrho, (jnp.clip(z, 0.0, varrho) / varrho) ** (q - 1), 1.0))


class PatchNet(nn.Module):
    """``F_j(X) = sum_r sum_p ReLU~(<w_{j,r}, x_p>)``: params ``{"W": (k, m, d)}``, ``(n, P, d) -> (n, k)``."""

    k: int
    m: int
    varrho: float
    q: int
    sigma0: float

    @nn.compact
    def __call__(self, x):
        W = self.param("W", nn.initializers.normal(self.sigma0), (self.k, self.m, x.shape[-1]))
        z = jnp.einsum("npd,jrd->npjr", x, W)
        return smoothed_relu(z, self.varrho, self.q).sum(axis=(1, 3))

    def draw(self, key, x):
        """``w_{j,r} ~ N(0, sigma0^2 I_d)`` from the raw ``key``."""
        return {"W": self.sigma0 * jax.random.normal(key, (self.k, self.m, x.shape[-1]), jnp.float32)}


class Head(nn.Module):
    """A linear layer without bias, kernel ``(k, width)``: ``phi @ kernel.T``."""

    k: int

    @nn.compact
    def __call__(self, phi):
        return phi @ self.param("kernel", nn.initializers.zeros, (self.k, phi.shape[-1])).T


class RandomFeatures(nn.Module):
    """``head(sum_p ReLU~(<u_r, x_p>))``: params ``{"features": (width, d), "head": {"kernel": (k, width)}}``."""

    k: int
    width: int
    varrho: float
    q: int
    sigma0: float

    @nn.compact
    def __call__(self, x):
        U = self.param("features", nn.initializers.normal(self.sigma0), (self.width, x.shape[-1]))
        phi = smoothed_relu(jnp.einsum("npd,rd->npr", x, U), self.varrho, self.q).sum(axis=1)
        return Head(self.k, name="head")(phi)

    def draw(self, key, x):
        """``u_r ~ N(0, sigma0^2 I_d)`` from the raw ``key``; the head starts at zero."""
        U = self.sigma0 * jax.random.normal(key, (self.width, x.shape[-1]), jnp.float32)
        return {"features": U, "head": {"kernel": jnp.zeros((self.k, self.width), jnp.float32)}}

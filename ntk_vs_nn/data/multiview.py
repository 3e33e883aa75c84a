"""The theory's multi-view data (PROTOCOLS §6; Allen-Zhu & Li, arXiv 2012.09816).

``k`` classes, each with two orthonormal features ``v_{j,1}, v_{j,2}`` in ``R^d``. An input is ``P``
patches in ``R^d``. Every feature present in an input occupies ``patches_per_feature`` patches (a
random subset, disjoint across the input's features); its *weight* is the sum of its coefficients
over those patches, split equally (the paper's ``sum_{p in P_v(X)} z_p``). A multi-view sample of
class ``y`` carries both own features with weights ``U[own_low, own_high]`` and ``n_other``
other-class features with weights ``U[other_low, other_high]`` (<= 0.4). A single-view sample
(fraction ``mu``) carries one own feature (``view``) with weight ``U[own_low, own_high]``, the other
with weight ``rho`` and ``n_other`` other-class features with weight ``gamma`` (the paper's Gamma).
Patches holding no feature get Gaussian noise of norm ``noise`` (std ``noise / sqrt(d)`` per
coordinate); patches holding a feature get noise of norm ``feature_noise``.

Example:
    >>> cfg = MultiViewData(k=3, d=60, P=8, n_train=200, n_test=200)
    >>> data = draw_data(cfg, seed=0)   # features (3, 2, 60), train and test dicts
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ntk_vs_nn import rng
from ntk_vs_nn.config.base import UserError


@dataclasses.dataclass(frozen=True)
class MultiViewData:
    """The distribution and the sample sizes (the regime is argued in `experiments.multiview`)."""

    k: int = 10  # classes
    d: int = 100  # patch dimension
    P: int = 16  # patches per input
    mu: float = 0.1  # fraction of single-view samples
    n_train: int = 400
    n_test: int = 4000
    patches_per_feature: int = 1  # patches a present feature occupies (its weight split equally)
    own_low: float = 1.0  # own-feature weight range (multi-view, and the strong view of single-view)
    own_high: float = 1.5
    n_other: int = 4  # other-class features per sample (distinct (class, view) pairs)
    other_low: float = 0.2  # other-class weight range in multi-view samples (paper: <= 0.4)
    other_high: float = 0.4
    rho: float = 0.05  # weight of the weak own view in single-view samples
    gamma: float = 0.4  # weight of other-class features in single-view samples (the paper's Gamma)
    noise: float = 1.5  # norm of the Gaussian noise of a patch holding no feature
    feature_noise: float = 0.2  # norm of the Gaussian noise of a patch holding a feature

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise a `UserError` naming the first inconsistent setting."""
        if min(self.k, self.d, self.P, self.n_train, self.n_test) < 1:
            raise UserError("data.k, data.d, data.P, data.n_train and data.n_test must be >= 1")
        if self.k < 2 or 2 * self.k > self.d:
            raise UserError(f"need 2 <= k and 2k <= d for orthonormal features, got k={self.k}, d={self.d}")
        if not 0.0 <= self.mu <= 1.0:
            raise UserError(f"data.mu must be in [0, 1], got {self.mu}")
        if self.n_other < 0 or self.n_other > 2 * (self.k - 1):
            raise UserError(f"data.n_other must be in [0, 2(k-1)] = [0, {2 * (self.k - 1)}], got {self.n_other}")
        if self.patches_per_feature < 1 or (2 + self.n_other) * self.patches_per_feature > self.P:
            raise UserError(f"(2 + n_other) * patches_per_feature must be in [1, P = {self.P}]")
        if min(self.noise, self.feature_noise, self.rho, self.gamma, self.other_low, self.own_low) < 0:
            raise UserError("noise, feature_noise, rho, gamma and the weight ranges must be >= 0")
        if self.own_low > self.own_high or self.other_low > self.other_high:
            raise UserError("weight ranges need low <= high")


@functools.partial(jax.jit, static_argnames=("cfg",))
def make_features(key: jax.Array, cfg: MultiViewData) -> jax.Array:
    """``(k, 2, d)`` orthonormal class features (QR of a Gaussian matrix); ``features[j, l]`` is ``v_{j,l+1}``."""
    g = jax.random.normal(key, (cfg.d, 2 * cfg.k), dtype=jnp.float32)
    qmat, _ = jnp.linalg.qr(g)
    return qmat.T.reshape(cfg.k, 2, cfg.d)


@functools.partial(jax.jit, static_argnames=("cfg", "n"))
def sample(key: jax.Array, cfg: MultiViewData, features: jax.Array, n: int, single_view_fraction: float) -> dict:
    """Draw ``n`` labelled multi-/single-view inputs.

    Labels are uniform over classes; each sample is single-view independently with probability
    ``single_view_fraction``, and a single-view sample's strong view is uniform over {0, 1}.

    Returns:
        Dict with ``x`` ``(n, P, d)`` float32, ``y`` ``(n,)`` int32, ``is_single_view`` ``(n,)`` bool,
        ``view`` ``(n,)`` int32 (strong view of single-view samples, -1 for multi-view),
        ``weights`` ``(n, k, 2)`` float32 (each feature's total weight in the sample, 0 if absent) and
        ``feature_patch`` ``(n, P)`` bool (the patch holds a feature).
    """
    k, P, d, cpf = cfg.k, cfg.P, cfg.d, cfg.patches_per_feature
    n_feat = 2 + cfg.n_other
    ky, ks, kv, kown, koth, kpick, kpatch, knoise = jax.random.split(key, 8)
    y = jax.random.randint(ky, (n,), 0, k, dtype=jnp.int32)
    single = jax.random.bernoulli(ks, single_view_fraction, (n,))
    strong = jax.random.randint(kv, (n,), 0, 2, dtype=jnp.int32)
    view = jnp.where(single, strong, -1)

    own = jax.random.uniform(kown, (n, 2), minval=cfg.own_low, maxval=cfg.own_high)
    own_weak = jnp.where(jnp.arange(2)[None, :] == strong[:, None], own, cfg.rho)
    own_w = jnp.where(single[:, None], own_weak, own)  # (n, 2)
    other_mv = jax.random.uniform(koth, (n, cfg.n_other), minval=cfg.other_low, maxval=cfg.other_high)
    other_w = jnp.where(single[:, None], cfg.gamma, other_mv)  # (n, n_other)

    # Other-class features: n_other distinct indices among the 2(k-1) features of the other classes.
    scores = jax.random.uniform(kpick, (n, 2 * (k - 1)))
    pick = jnp.argsort(scores, axis=1)[:, : cfg.n_other]  # (n, n_other) in [0, 2(k-1))
    other_cls = pick // 2
    other_cls = other_cls + (other_cls >= y[:, None])  # skip the own class
    other_view = pick % 2
    cls = jnp.concatenate([jnp.stack([y, y], 1), other_cls], axis=1)  # (n, n_feat)
    vw = jnp.concatenate([jnp.tile(jnp.arange(2, dtype=jnp.int32), (n, 1)), other_view], axis=1)
    wts = jnp.concatenate([own_w, other_w], axis=1)  # (n, n_feat)

    # Disjoint random patch subsets: feature f of a sample takes permuted patches [f*cpf, (f+1)*cpf).
    perm = jnp.argsort(jax.random.uniform(kpatch, (n, P)), axis=1)
    owner = jnp.full((n, P), -1, dtype=jnp.int32)
    rows = jnp.arange(n)[:, None]
    owner = owner.at[rows, perm[:, : n_feat * cpf]].set(jnp.repeat(jnp.arange(n_feat), cpf)[None, :])
    onehot = (owner[:, :, None] == jnp.arange(n_feat)[None, None, :]).astype(jnp.float32)  # (n, P, F)
    fvec = features[cls, vw]  # (n, F, d)
    coef = onehot * (wts / cpf)[:, None, :]  # (n, P, F)
    x = jnp.einsum("npf,nfd->npd", coef, fvec)
    feature_patch = owner >= 0
    std = jnp.where(feature_patch, cfg.feature_noise, cfg.noise)[:, :, None] / np.sqrt(d)
    x = x + std * jax.random.normal(knoise, (n, P, d), dtype=jnp.float32)

    weights = jnp.zeros((n, k, 2), jnp.float32).at[rows, cls, vw].add(wts)
    return {
        "x": x.astype(jnp.float32),
        "y": y,
        "is_single_view": single,
        "view": view,
        "weights": weights,
        "feature_patch": feature_patch,
    }


def draw_data(cfg: MultiViewData, seed: int) -> dict:
    """Features, training and test set of one run (the test set is drawn with the same mu)."""
    cfg.check()
    base = rng.stream(rng.root_key(seed), "multiview.data")
    kf, ktr, kte = (jax.random.fold_in(base, i) for i in range(3))
    static = dataclasses.replace(cfg, mu=0.0, n_train=1, n_test=1)  # what `sample` reads: one compile for every mu
    feats = make_features(kf, static)
    return {
        "features": feats,
        "train": sample(ktr, static, feats, cfg.n_train, cfg.mu),
        "test": sample(kte, static, feats, cfg.n_test, cfg.mu),
    }

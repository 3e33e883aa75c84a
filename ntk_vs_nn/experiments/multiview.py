"""The theory's multi-view data and learner (PROTOCOLS §6; Allen-Zhu & Li, arXiv 2012.09816).

Data. ``k`` classes, each with two orthonormal features ``v_{j,1}, v_{j,2}`` in ``R^d``. An input is
``P`` patches in ``R^d``. Every feature present in an input occupies ``patches_per_feature`` patches
(a random subset, disjoint across the input's features); its *weight* is the sum of its coefficients
over those patches, split equally (the paper's ``sum_{p in P_v(X)} z_p``). A multi-view sample of
class ``y`` carries both own features with weights ``U[own_low, own_high]`` and ``n_other``
other-class features with weights ``U[other_low, other_high]`` (<= 0.4). A single-view sample
(fraction ``mu``) carries one own feature (``view``) with weight ``U[own_low, own_high]``, the other
with weight ``rho`` and ``n_other`` other-class features with weight ``gamma`` (the paper's Gamma).
Patches holding no feature get Gaussian noise of norm ``noise`` (std ``noise / sqrt(d)`` per
coordinate); patches holding a feature get noise of norm ``feature_noise``.

Learner. A two-layer convolutional net with ``m`` neurons per class shared over patches,
``F_j(X) = sum_r sum_p ReLU~(<w_{j,r}, x_p>)`` with the paper's smoothed ReLU (threshold ``varrho``,
power ``q``), Gaussian init ``N(0, sigma0^2 I)``, full-batch gradient descent on cross-entropy, or on
the suite's distillation loss (``engine.distill_loss``) when teacher logits are given. The kernel
contrast (``FAMILIES``): ``ntk`` is that learner linearised around its init,
``F(W0) + <grad F(W0), W - W0>``; ``gp`` is random features, ``gp_width`` frozen random neurons
``sum_p ReLU~(<u_r, x_p>)`` and a trained linear head (zero init). Both are linear in their
parameters and are trained by the same GD with the step ``kernel_lr / lambda_max`` (top eigenvalue
of the Gauss-Newton matrix ``J^T J / n`` at init, by power iteration).

The regime (defaults). The theorem is asymptotic in ``k``; at ``k = 10`` these are the choices that
make its mechanism visible. The search behind them, one factor at a time around a base with
``sigma0 = 0.04`` (L = 5 singles, one data draw; numbers below are from it), is
``results/multiview/search.{py,csv,md}``:

* ``sigma0 = 0.1``, ``varrho = 4``: the paper's ``sigma0^(q-2) = 1/k`` and an init far below the
  threshold (``sigma0 / varrho = 0.025``), so ``<w, v>`` grows as a power method (rate
  ``~ <w, v>^(q-1)``) and the view with the larger initial ``max_r <w_{j,r}, v_{j,l}>`` wins.
  ``varrho = 4`` keeps the fit of the multi-view data (logit margin ~ 4) near the threshold, so the
  losing view is still in the slow polynomial phase when the data are fitted. The previous
  defaults (``varrho = sigma0 = 0.1``, N = 2000, mu = 0.2) learned both views of every class
  (single 0.04 mu); ``varrho = 1`` (``sigma0 = 0.01``) both views in 58 % of classes. Over
  ``sigma0`` = 0.04 / 0.1 / 0.2 / 0.4 the single error fell 0.38 / 0.33 / 0.29 / 0.24 mu while KD
  improved 0.10 / 0.065 / 0.048 / 0.012 mu (a smaller init sharpens the lottery but leaves the
  student's second view further to climb); 0.1 is nearest to the theorem's four numbers.
* ``n_train = 400, mu = 0.1``: ``mu N / 2k = 2`` single-view samples per (class, view). The
  mechanism needs few of them ("insufficient left-over samples", the seeds' summary): with 20 of
  them (N = 2000, mu = 0.2) they pulled the lagging view up (both views in 83 %, single 0.08 mu).
* ``noise = 1.5`` on noise-only patches, ``feature_noise = 0.2`` on feature patches: in the paper
  the patch noise is negligible against a feature inside its patch, yet the single-view leftovers
  are memorised through the many noise patches. At ``d = 100`` one noise level cannot do both:
  uniform noise of norm 1 or 0.5 gave both views in ~50 % of classes (single 0.22 mu), norm 2.5 on
  noise patches memorised multi-view data too (8 % multi-view test error).
* ``rho = 0.05 < gamma = 0.4``: the paper's ``rho = k^-0.01`` is asymptotically below its
  ``Gamma = 1/polylog k`` (the seeds' example has the weak view absent, off-target weight 0.1), so
  the weak view cannot rescue a single-view point of an unlearned view. (Measured, it matters
  little here: PROTOCOLS' ``rho = 0.2, gamma = 0.05`` gave 0.36 mu.)
* ``patches_per_feature = 1``, ``n_other = 4``: a feature's weight is not split over patches (its
  ``z^q`` gradient is not diluted) and each sample carries four other-class features, the
  ensemble's "dark knowledge". With 2 patches per feature the lottery was sharper (both views in
  4 % of classes) but the KD student learned no second view (KD 0.40 mu); ``n_other = 2``: KD 0.13.
* ``q = 3``, ``m = 4``: the paper's smallest power; ``m = 2`` left classes with no neuron on
  either view (2.7 % multi-view error), ``m = 8`` made the views' maxima closer (ensemble 0.21 mu),
  ``q = 4`` gave single 0.35 mu but KD 0.26 mu. ``lr = 8`` for 1,500 steps: large because the
  polynomial phase has tiny gradients; the singles reach 100 % training accuracy.
* KD and SD: ``engine.distill_loss`` with ``alpha = 0.5, tau = 4`` (RunSpec), best of
  (0.5, 4), (0.5, 10), (0.9, 4), (1, 10) in the search; with ``alpha = 1`` an SD student copies its
  teacher's views instead of adding them to its own.

Example:
    >>> cfg = MultiViewConfig(k=3, d=60, P=8, n_train=200, n_test=200, steps=300)
    >>> feats = make_features(jax.random.key(0), cfg)
    >>> train_set = sample(jax.random.key(1), cfg, feats, cfg.n_train, cfg.mu)
    >>> W = train(jax.random.key(2), cfg, train_set)
    >>> views, winner = learned_views(W, feats)   # (3, 2), (3,)

Measured: a GD step is one jitted ``lax.fori_loop`` body (``_fit``); ``results/multiview/bench.json``
has it against a Python loop over a jitted step. Models are trained one after another.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntk_vs_nn.engine.trainer import distill_loss

FAMILIES = ("nn", "ntk", "gp")


@dataclasses.dataclass(frozen=True)
class MultiViewConfig:
    """Multi-view data, learner and training settings (the regime is argued in the module docstring).

    Attributes:
        k: Number of classes.
        d: Patch dimension.
        P: Patches per input.
        mu: Fraction of single-view samples.
        n_train: Training-set size.
        n_test: Test-set size.
        patches_per_feature: Patches a present feature occupies (its weight is split equally over them).
        own_low: Lower end of the own-feature weight (multi-view, and the strong view of single-view).
        own_high: Upper end of the own-feature weight.
        n_other: Other-class features per sample (distinct (class, view) pairs of other classes).
        other_low: Lower end of other-class feature weights in multi-view samples.
        other_high: Upper end of other-class feature weights in multi-view samples (paper: <= 0.4).
        rho: Weight of the weak own view in single-view samples.
        gamma: Weight of other-class features in single-view samples (the paper's Gamma).
        noise: Norm of the Gaussian noise of a patch that holds no feature (std ``noise / sqrt(d)``).
        feature_noise: Norm of the Gaussian noise of a patch that holds a feature.
        m: Neurons per class.
        varrho: Smoothed-ReLU threshold.
        q: Smoothed-ReLU power.
        sigma0: Init std of each weight.
        lr: Full-batch GD learning rate (nn).
        steps: GD steps (every family).
        kernel_lr: GD step of the linear families (ntk, gp) in units of ``1 / lambda_max``.
        gp_width: Random features of the gp family.
    """

    k: int = 10
    d: int = 100
    P: int = 16
    mu: float = 0.1
    n_train: int = 400
    n_test: int = 4000
    patches_per_feature: int = 1
    own_low: float = 1.0
    own_high: float = 1.5
    n_other: int = 4
    other_low: float = 0.2
    other_high: float = 0.4
    rho: float = 0.05
    gamma: float = 0.4
    noise: float = 1.5
    feature_noise: float = 0.2
    m: int = 4
    varrho: float = 4.0
    q: int = 3
    sigma0: float = 0.1
    lr: float = 8.0
    steps: int = 1500
    kernel_lr: float = 1.0
    gp_width: int = 512

    def check(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent setting."""
        if min(self.k, self.d, self.P, self.n_train, self.n_test, self.m, self.steps, self.gp_width) < 1:
            raise ValueError("k, d, P, n_train, n_test, m, steps and gp_width must be >= 1")
        if self.k < 2 or 2 * self.k > self.d:
            raise ValueError(f"need 2 <= k and 2k <= d for orthonormal features, got k={self.k}, d={self.d}")
        if not 0.0 <= self.mu <= 1.0:
            raise ValueError(f"mu must be in [0, 1], got {self.mu}")
        if self.n_other < 0 or self.n_other > 2 * (self.k - 1):
            raise ValueError(f"n_other must be in [0, 2(k-1)] = [0, {2 * (self.k - 1)}], got {self.n_other}")
        if self.patches_per_feature < 1 or (2 + self.n_other) * self.patches_per_feature > self.P:
            raise ValueError(f"(2 + n_other) * patches_per_feature must be in [1, P = {self.P}]")
        if self.q < 2 or self.varrho <= 0 or self.sigma0 <= 0 or self.lr <= 0 or self.kernel_lr <= 0:
            raise ValueError("q >= 2 and varrho, sigma0, lr, kernel_lr > 0 required")
        if min(self.noise, self.feature_noise, self.rho, self.gamma, self.other_low, self.own_low) < 0:
            raise ValueError("noise, feature_noise, rho, gamma and the weight ranges must be >= 0")
        if self.own_low > self.own_high or self.other_low > self.other_high:
            raise ValueError("weight ranges need low <= high")


@functools.partial(jax.jit, static_argnames=("cfg",))
def make_features(key: jax.Array, cfg: MultiViewConfig) -> jax.Array:
    """Orthonormal class features from the QR decomposition of a Gaussian matrix.

    Args:
        key: PRNG key.
        cfg: Config (uses ``k``, ``d``; needs ``2k <= d``).

    Returns:
        ``(k, 2, d)`` float32 array; ``features[j, l]`` is ``v_{j,l+1}``, all 2k rows orthonormal.
    """
    if 2 * cfg.k > cfg.d:
        raise ValueError(f"need 2k <= d for orthonormal features, got k={cfg.k}, d={cfg.d}")
    g = jax.random.normal(key, (cfg.d, 2 * cfg.k), dtype=jnp.float32)
    qmat, _ = jnp.linalg.qr(g)
    return qmat.T.reshape(cfg.k, 2, cfg.d)


@functools.partial(jax.jit, static_argnames=("cfg", "n"))
def sample(
    key: jax.Array, cfg: MultiViewConfig, features: jax.Array, n: int, single_view_fraction: float
) -> dict[str, jax.Array]:
    """Draw ``n`` labelled multi-/single-view inputs.

    Labels are uniform over classes; each sample is single-view independently with probability
    ``single_view_fraction``, and a single-view sample's strong view is uniform over {0, 1}.

    Args:
        key: PRNG key.
        cfg: Config.
        features: ``(k, 2, d)`` from :func:`make_features`.
        n: Number of samples.
        single_view_fraction: Probability that a sample is single-view (normally ``cfg.mu``).

    Returns:
        Dict with ``x`` ``(n, P, d)`` float32, ``y`` ``(n,)`` int32, ``is_single_view`` ``(n,)`` bool,
        ``view`` ``(n,)`` int32 (strong view of single-view samples, -1 for multi-view),
        ``weights`` ``(n, k, 2)`` float32 (each feature's total weight in the sample, 0 if absent) and
        ``feature_patch`` ``(n, P)`` bool (the patch holds a feature).
    """
    k, P, d, cpf = cfg.k, cfg.P, cfg.d, cfg.patches_per_feature
    n_feat = 2 + cfg.n_other
    if n_feat * cpf > P:
        raise ValueError(f"(2 + n_other) * patches_per_feature = {n_feat * cpf} exceeds P = {P}")
    if cfg.n_other > 2 * (k - 1):
        raise ValueError("n_other exceeds the number of other-class features")
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


def smoothed_relu(z: jax.Array, varrho: float, q: int) -> jax.Array:
    """The paper's smoothed ReLU ``ReLU~`` (C^1; ``z^q`` near 0).

    ``0`` for ``z <= 0``; ``z^q / (q varrho^(q-1))`` for ``0 < z <= varrho``;
    ``z - (1 - 1/q) varrho`` for ``z > varrho``.

    Args:
        z: Any-shape array.
        varrho: Threshold > 0.
        q: Power >= 2.

    Returns:
        Array of ``z``'s shape.
    """
    zc = jnp.clip(z, 0.0, varrho)  # clip keeps the unused branches' gradients finite and zero
    poly = zc**q / (q * varrho ** (q - 1))
    lin = z - (1.0 - 1.0 / q) * varrho
    return jnp.where(z <= 0, 0.0, jnp.where(z <= varrho, poly, lin))


def smoothed_relu_grad(z: jax.Array, varrho: float, q: int) -> jax.Array:
    """Derivative of :func:`smoothed_relu`: ``0``, ``(z / varrho)^(q-1)``, ``1`` on its three pieces."""
    return jnp.where(z <= 0, 0.0, jnp.where(z <= varrho, (jnp.clip(z, 0.0, varrho) / varrho) ** (q - 1), 1.0))


def init(key: jax.Array, cfg: MultiViewConfig) -> jax.Array:
    """Gaussian init ``w_{j,r} ~ N(0, sigma0^2 I_d)``: ``(k, m, d)`` float32 weights."""
    return cfg.sigma0 * jax.random.normal(key, (cfg.k, cfg.m, cfg.d), dtype=jnp.float32)


def logits(W: jax.Array, x: jax.Array, cfg: MultiViewConfig) -> jax.Array:
    """``F_j(X) = sum_r sum_p ReLU~(<w_{j,r}, x_p>)``: ``(k, m, d)``, ``(n, P, d)`` -> ``(n, k)``."""
    z = jnp.einsum("npd,jrd->npjr", x, W)
    return smoothed_relu(z, cfg.varrho, cfg.q).sum(axis=(1, 3))


def loss(
    W: jax.Array,
    x: jax.Array,
    y: jax.Array,
    cfg: MultiViewConfig,
    teacher_logits: jax.Array | None = None,
    alpha: float = 0.5,
    tau: float = 4.0,
) -> jax.Array:
    """Mean cross-entropy, or ``engine.distill_loss`` (``(1-alpha) CE + alpha tau^2 KL``) with a teacher."""
    s = logits(W, x, cfg)
    if teacher_logits is None:
        return optax.softmax_cross_entropy_with_integer_labels(s, y).mean()
    return distill_loss(s, y, teacher_logits, alpha, tau)  # the suite's one KD loss


# Families ------------------------------------------------------------------------------------------
# A family is (init, represent, apply): init(key) -> (params, frozen); represent(frozen, x) is what the
# training loop feeds to apply(params, frozen, rep) -> logits, computed once per model: nn reads x;
# ntk reads x, F(W0; x) and the gates ReLU~'(<w0_{j,r}, x_p>) (its logits are linear in W, so a GD
# step costs what an nn step costs); gp reads its frozen random features, so a step is a
# (n, width) x (width, k) product.


_DATA_FIELDS = ("mu", "n_train", "n_test", "own_low", "own_high", "other_low", "other_high", "rho", "gamma")
_DATA_FIELDS += ("noise", "feature_noise", "patches_per_feature", "n_other", "sigma0", "lr", "kernel_lr")


def learner_config(cfg: MultiViewConfig) -> MultiViewConfig:
    """``cfg`` with the settings the compiled learner does not read reset to their defaults.

    The jitted functions take the config as a static argument; this keeps a mu sweep (or a new
    noise level) from recompiling them.
    """
    return dataclasses.replace(cfg, **{f: getattr(MultiViewConfig, f) for f in _DATA_FIELDS})


def family_init(family: str, key: jax.Array, cfg: MultiViewConfig):
    """``(params, frozen)`` of a fresh model of ``family`` (nn: ``(W, None)``; ntk: ``(W0, W0)``; gp: ``(A, U)``)."""
    if family == "nn":
        return init(key, cfg), None
    if family == "ntk":
        W0 = init(key, cfg)
        return W0, W0
    if family == "gp":
        U = cfg.sigma0 * jax.random.normal(key, (cfg.gp_width, cfg.d), dtype=jnp.float32)
        return jnp.zeros((cfg.k, cfg.gp_width), jnp.float32), U
    raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")


@functools.partial(jax.jit, static_argnames=("family", "cfg"))
def represent(family: str, frozen, x: jax.Array, cfg: MultiViewConfig):
    """The input as the family's apply reads it.

    nn: ``x``. ntk: ``(x, F(W0; x), ReLU~'(<w0_{j,r}, x_p>))``, the gates ``(n, P, k, m)``. gp: the
    ``(n, width)`` random features ``sum_p ReLU~(<u_r, x_p>)``.
    """
    if family == "nn":
        return x
    if family == "ntk":
        z0 = jnp.einsum("npd,jrd->npjr", x, frozen)
        return x, smoothed_relu(z0, cfg.varrho, cfg.q).sum(axis=(1, 3)), smoothed_relu_grad(z0, cfg.varrho, cfg.q)
    return smoothed_relu(jnp.einsum("npd,rd->npr", x, frozen), cfg.varrho, cfg.q).sum(axis=1)


def apply(family: str, params, frozen, rep, cfg: MultiViewConfig) -> jax.Array:
    """Logits ``(n, k)`` of a model of ``family`` on a representation from :func:`represent`.

    ntk: ``F(W0) + sum_{p,r} ReLU~'(<w0_{j,r}, x_p>) <w_{j,r} - w0_{j,r}, x_p>``, which is
    ``F(W0) + <grad F(W0), W - W0>`` exactly (tested against ``jax.jvp``).
    """
    if family == "nn":
        return logits(params, rep, cfg)
    if family == "ntk":
        x, f0, gate = rep
        return f0 + jnp.einsum("npjr,npjr->nj", gate, jnp.einsum("npd,jrd->npjr", x, params - frozen))
    return rep @ params.T


def _family_loss(params, frozen, rep, y, teacher, alpha, tau, family, cfg):
    s = apply(family, params, frozen, rep, cfg)
    if teacher is None:
        return optax.softmax_cross_entropy_with_integer_labels(s, y).mean()
    return distill_loss(s, y, teacher, alpha, tau)


@functools.partial(jax.jit, static_argnames=("family", "cfg", "steps"))
def _fit(params, frozen, rep, y, teacher, alpha, tau, lr, family, cfg, steps):
    """``steps`` full-batch GD steps inside one jitted ``lax.fori_loop``.

    Measured at the default config (n = 400, the shared 2-core CPU, load ~11): 6.3-6.6 ms a step
    against 6.9 ms for a Python loop over a jitted step (``results/multiview/bench.json``).
    """
    grad = jax.grad(_family_loss)

    def body(_, p):
        return p - lr * grad(p, frozen, rep, y, teacher, alpha, tau, family, cfg)

    return jax.lax.fori_loop(0, steps, body, params)


@functools.partial(jax.jit, static_argnames=("family", "cfg", "iters"))
def lambda_max(family: str, params, frozen, rep: jax.Array, cfg: MultiViewConfig, iters: int = 30) -> jax.Array:
    """Top eigenvalue of ``J^T J / n`` (``J``: Jacobian of all logits w.r.t. the params) by power iteration."""
    n = jax.tree.leaves(rep)[0].shape[0]
    f = lambda p: apply(family, p, frozen, rep, cfg)  # noqa: E731
    _, vjp = jax.vjp(f, params)

    def body(_, v):
        jv = jax.jvp(f, (params,), (v,))[1]
        u = vjp(jv)[0] / n
        return u / (jnp.linalg.norm(u) + 1e-30)

    v = body(0, jax.random.normal(jax.random.key(0), params.shape, params.dtype))
    v = jax.lax.fori_loop(0, iters, body, v)
    jv = jax.jvp(f, (params,), (v,))[1]
    return jnp.sum(jv**2) / n


def fit(
    family: str,
    key: jax.Array,
    cfg: MultiViewConfig,
    x: jax.Array,
    y: jax.Array,
    teacher_logits: jax.Array | None = None,
    alpha: float = 1.0,
    tau: float = 10.0,
):
    """Train one model of ``family`` from the init ``key`` by full-batch GD for ``cfg.steps`` steps.

    nn uses ``cfg.lr``; the linear families use ``cfg.kernel_lr / lambda_max`` (:func:`lambda_max`).

    Args:
        family: ``nn``, ``ntk`` or ``gp``.
        key: Init key.
        cfg: Config.
        x: ``(n, P, d)`` training inputs.
        y: ``(n,)`` labels.
        teacher_logits: ``(n, k)`` teacher logits on ``x`` (distillation), or ``None`` (cross-entropy).
        alpha: Distillation weight (1 = match the teacher only, the theorem's KD).
        tau: Distillation temperature.

    Returns:
        ``(params, frozen)``.
    """
    params, frozen = family_init(family, key, cfg)
    lcfg = learner_config(cfg)  # one compiled program per learner, whatever the data settings
    rep = represent(family, frozen, x, lcfg)
    lr = cfg.lr if family == "nn" else cfg.kernel_lr / float(lambda_max(family, params, frozen, rep, lcfg))
    out = _fit(params, frozen, rep, y, teacher_logits, alpha, tau, jnp.float32(lr), family, lcfg, cfg.steps)
    return jax.block_until_ready(out), frozen


def predict(family: str, model, x: jax.Array, cfg: MultiViewConfig, batch: int = 2000) -> jax.Array:
    """Logits ``(n, k)`` of a trained ``(params, frozen)`` on ``x``, in batches."""
    params, frozen = model
    cfg = learner_config(cfg)
    outs = [_predict(family, params, frozen, x[i : i + batch], cfg) for i in range(0, x.shape[0], batch)]
    return jnp.concatenate(outs)


@functools.partial(jax.jit, static_argnames=("family", "cfg"))
def _predict(family, params, frozen, x, cfg):
    return apply(family, params, frozen, represent(family, frozen, x, cfg), cfg)


def train(
    key: jax.Array,
    cfg: MultiViewConfig,
    data: dict[str, jax.Array],
    teacher_logits: jax.Array | None = None,
    alpha: float = 1.0,
    tau: float = 10.0,
) -> jax.Array:
    """The theory's learner (nn) trained from :func:`init` ``(key)``: returns ``(k, m, d)`` weights."""
    return fit("nn", key, cfg, data["x"], data["y"], teacher_logits, alpha, tau)[0]


def learned_views(W: jax.Array, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """How strongly each class learned each of its views.

    Args:
        W: ``(k, m, d)`` weights.
        features: ``(k, 2, d)`` features.

    Returns:
        ``(k, 2)`` array of ``max_r <w_{j,r}, v_{j,l}>`` and ``(k,)`` int index of the larger view.
    """
    corr = jnp.einsum("jrd,jld->jrl", W, features).max(axis=1)
    return corr, jnp.argmax(corr, axis=1)


def view_threshold(cfg: MultiViewConfig) -> float:
    """A view counts as learned when ``max_r <w, v> >= varrho * patches_per_feature / own_low``.

    That is where the neuron's pre-activation on the view's patches (weight ``>= own_low`` split over
    ``patches_per_feature`` patches) reaches the smoothed ReLU's linear part.
    """
    return cfg.varrho * cfg.patches_per_feature / cfg.own_low


if __name__ == "__main__":  # python -m ntk_vs_nn.experiments.multiview: the report's command line
    import sys

    from ntk_vs_nn.experiments.multiview_report import main

    sys.exit(main())

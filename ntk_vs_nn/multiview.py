"""The theory's multi-view data and learner (PROTOCOLS §6; Allen-Zhu & Li, "Towards Understanding
Ensemble, Knowledge Distillation and Self-Distillation in Deep Learning").

Data. ``k`` classes, each with two orthonormal features ``v_{j,1}, v_{j,2}`` in ``R^d``. An input is
``P`` patches in ``R^d``. Every feature present in an input occupies ``patches_per_feature`` patches
(a random subset, disjoint across the input's features); its *weight* is the sum of its coefficients
over those patches, split equally (the paper's ``sum_{p in P_v(X)} z_p``). A multi-view sample of
class ``y`` carries both own features with weights ``U[own_low, own_high]`` and ``n_other``
other-class features with weights ``U[other_low, other_high]`` (<= 0.4). A single-view sample
(fraction ``mu``) carries one own feature (``view``) with weight ``U[own_low, own_high]``, the other
with weight ``rho`` and ``n_other`` other-class features with weight ``gamma``. Every patch gets
Gaussian noise ``N(0, sigma_p^2 I_d)``; patches holding no feature hold only noise.

Learner. A two-layer convolutional net with ``m`` neurons per class shared over patches,
``F_j(X) = sum_r sum_p ReLU~(<w_{j,r}, x_p>)`` with the smoothed ReLU of the paper, trained by
full-batch gradient descent on cross-entropy, or on the distillation loss
``(1 - alpha) CE + alpha tau^2 KL(softmax(T / tau) || softmax(S / tau))`` when teacher logits are given.

Example:
    >>> cfg = MultiViewConfig(k=3, d=60, P=8, n_train=200, n_test=200, steps=300)
    >>> kf, ktr, kte, kw = jax.random.split(jax.random.key(0), 4)
    >>> feats = make_features(kf, cfg)
    >>> train_set = sample(ktr, cfg, feats, cfg.n_train, cfg.mu)
    >>> W = train(kw, cfg, train_set)
    >>> views, winner = learned_views(W, feats)   # (3, 2), (3,)
    >>> df, view_table = run_protocols(cfg, seeds=3, sd_students=2, key=jax.random.key(1))

Measured design choices (2-core CPU, jax 0.10): ``train`` runs the whole GD loop inside one jitted
``lax.fori_loop``, measured no slower than a Python loop over a jitted step (0.42-0.45 s either way
for 100 steps at d = 400, n = 200), and it keeps the loop in one compiled program. Seeds are trained
one after another (``train_many``): ``jax.vmap`` over seeds was slower here (3.9 s against
2 x 1.47 s for 50 default-config steps), since each step's einsums already use both cores.

Init scale. ``sigma0`` defaults to the paper's ``sigma0^(q-2) = 1/k`` (0.1 at k = 10, q = 3; the
asymptotic paper also takes d >> k, so 1/sqrt(d) and 1/d are far smaller there). With
``sigma0 = 1/d = 0.0025`` the cubic phase before any view is learned lasts roughly 40x longer than at
0.1 (~100 steps at lr 0.05), i.e. past the 2,000-step budget. At these finite sizes both init scales
tried (0.1, the default, and 0.02) end with *both* views of most classes learned: the single-view
training points of the lagging view (N mu / 2k = 20 per view) pull it up, instead of being memorised
through patch noise as in the theorem. The full default run (10 seeds, 5 SD students, 2,000 steps,
23 min on the shared 2-core CPU) gave single-model error 0.001 mu, not the theorem's ~0.5 mu.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from ntk_vs_nn.engine import distill_loss


@dataclasses.dataclass(frozen=True)
class MultiViewConfig:
    """Multi-view data and learner settings (defaults: PROTOCOLS §6, ours where the paper is asymptotic).

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
        sigma_p: Patch-noise standard deviation; ``None`` means ``1 / sqrt(d)``.
        m: Neurons per class.
        varrho: Smoothed-ReLU threshold.
        q: Smoothed-ReLU power.
        sigma0: Init std of each weight; ``None`` means ``k ** (-1 / (q - 2))``, the paper's
            ``sigma0^(q-2) = 1/k`` (0.1 at k = 10, q = 3).
        lr: Full-batch GD learning rate.
        steps: GD steps.
    """

    k: int = 10
    d: int = 400
    P: int = 25
    mu: float = 0.2
    n_train: int = 2000
    n_test: int = 2000
    patches_per_feature: int = 2
    own_low: float = 1.0
    own_high: float = 1.5
    n_other: int = 2
    other_low: float = 0.2
    other_high: float = 0.4
    rho: float = 0.1
    gamma: float = 0.05
    sigma_p: float | None = None
    m: int = 5
    varrho: float = 0.1
    q: int = 3
    sigma0: float | None = None
    lr: float = 0.05
    steps: int = 2000

    @property
    def noise_std(self) -> float:
        """The patch-noise std actually used."""
        return float(self.sigma_p) if self.sigma_p is not None else 1.0 / float(np.sqrt(self.d))

    @property
    def init_std(self) -> float:
        """The init std actually used."""
        return float(self.sigma0) if self.sigma0 is not None else float(self.k ** (-1.0 / (self.q - 2)))


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
        ``view`` ``(n,)`` int32 (strong view of single-view samples, -1 for multi-view) and
        ``weights`` ``(n, k, 2)`` float32 (each feature's total weight in the sample, 0 if absent).
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
    x = x + cfg.noise_std * jax.random.normal(knoise, (n, P, d), dtype=jnp.float32)

    weights = jnp.zeros((n, k, 2), jnp.float32).at[rows, cls, vw].add(wts)
    return {"x": x.astype(jnp.float32), "y": y, "is_single_view": single, "view": view, "weights": weights}


def smoothed_relu(z: jax.Array, varrho: float, q: int) -> jax.Array:
    """The paper's smoothed ReLU ``ReLU~`` (C^1, cubic near 0 for q = 3).

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


def init(key: jax.Array, cfg: MultiViewConfig) -> jax.Array:
    """Gaussian init ``w_{j,r} ~ N(0, sigma0^2 I_d)`` with ``sigma0 = cfg.init_std``.

    Args:
        key: PRNG key.
        cfg: Config.

    Returns:
        ``(k, m, d)`` float32 weights.
    """
    return cfg.init_std * jax.random.normal(key, (cfg.k, cfg.m, cfg.d), dtype=jnp.float32)


def logits(W: jax.Array, x: jax.Array, cfg: MultiViewConfig) -> jax.Array:
    """``F_j(X) = sum_r sum_p ReLU~(<w_{j,r}, x_p>)``.

    Args:
        W: ``(k, m, d)`` weights.
        x: ``(n, P, d)`` inputs.
        cfg: Config (``varrho``, ``q``).

    Returns:
        ``(n, k)`` logits.
    """
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
    """Mean cross-entropy, or ``(1-alpha) CE + alpha tau^2 KL(softmax(T/tau) || softmax(S/tau))``.

    Args:
        W: ``(k, m, d)`` weights.
        x: ``(n, P, d)`` inputs.
        y: ``(n,)`` labels.
        cfg: Config.
        teacher_logits: ``(n, k)`` or ``None``.
        alpha: Weight of the distillation term.
        tau: Temperature.

    Returns:
        Scalar loss.
    """
    s = logits(W, x, cfg)
    if teacher_logits is None:
        return optax.softmax_cross_entropy_with_integer_labels(s, y).mean()
    return distill_loss(s, y, teacher_logits, alpha, tau)  # the suite's one KD loss


@functools.partial(jax.jit, static_argnames=("cfg",))
def _gd(W0, x, y, teacher, alpha, tau, cfg):
    grad = jax.grad(loss)

    def body(_, W):
        return W - cfg.lr * grad(W, x, y, cfg, teacher, alpha, tau)

    return jax.lax.fori_loop(0, cfg.steps, body, W0)


def train(
    key: jax.Array,
    cfg: MultiViewConfig,
    data: dict[str, jax.Array],
    teacher_logits: jax.Array | None = None,
    alpha: float = 0.5,
    tau: float = 4.0,
) -> jax.Array:
    """Full-batch GD from :func:`init` for ``cfg.steps`` steps (one jitted ``lax.fori_loop``).

    Args:
        key: PRNG key of the init.
        cfg: Config.
        data: Dict with ``x`` ``(n, P, d)`` and ``y`` ``(n,)``.
        teacher_logits: ``(n, k)`` teacher logits on ``data['x']`` for distillation, or ``None`` for CE.
        alpha: Distillation weight (ignored without a teacher).
        tau: Distillation temperature (ignored without a teacher).

    Returns:
        Trained ``(k, m, d)`` weights.
    """
    return _gd(init(key, cfg), data["x"], data["y"], teacher_logits, alpha, tau, cfg)


def train_many(
    keys: jax.Array,
    cfg: MultiViewConfig,
    data: dict[str, jax.Array],
    teacher_logits: jax.Array | None = None,
    alpha: float = 0.5,
    tau: float = 4.0,
    vectorise: bool = False,
) -> jax.Array:
    """:func:`train` over several init keys (and one teacher per model when ``teacher_logits`` is given).

    Sequential by default: on the 2-core CPU, at the default config, ``jax.vmap`` over 2 seeds took
    3.9 s per 50 steps against 2 x 1.47 s sequentially (the per-step einsums already use both cores),
    so ``vectorise=True`` is kept only for accelerators.

    Args:
        keys: ``(s,)`` PRNG keys.
        cfg: Config.
        data: As in :func:`train`.
        teacher_logits: ``None``, or ``(s, n, k)``: one teacher per model.
        alpha: Distillation weight.
        tau: Distillation temperature.
        vectorise: ``jax.vmap`` over models instead of a Python loop.

    Returns:
        ``(s, k, m, d)`` weights.
    """
    x, y = data["x"], data["y"]
    if vectorise:
        W0s = jax.vmap(lambda kk: init(kk, cfg))(keys)
        if teacher_logits is None:
            return jax.vmap(lambda W0: _gd(W0, x, y, None, alpha, tau, cfg))(W0s)
        return jax.vmap(lambda W0, t: _gd(W0, x, y, t, alpha, tau, cfg))(W0s, teacher_logits)
    teachers = [None] * keys.shape[0] if teacher_logits is None else list(teacher_logits)
    return jnp.stack(
        [jax.block_until_ready(_gd(init(kk, cfg), x, y, t, alpha, tau, cfg)) for kk, t in zip(keys, teachers)]
    )


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


def _errors(pred_logits: jax.Array, test: dict[str, jax.Array], mu: float) -> list[dict]:
    wrong = np.asarray(jnp.argmax(pred_logits, axis=1) != test["y"])
    sv = np.asarray(test["is_single_view"])
    rows = []
    for subset, mask in (("overall", np.ones_like(sv)), ("multi_view", ~sv), ("single_view", sv)):
        err = 100.0 * float(wrong[mask].mean()) if mask.any() else float("nan")
        rows.append({"subset": subset, "n": int(mask.sum()), "error_pct": err, "error_mu": err / (100.0 * mu)})
    return rows


def run_protocols(
    cfg: MultiViewConfig,
    seeds: int = 10,
    sd_students: int = 5,
    key: jax.Array | None = None,
    alpha: float = 0.5,
    tau: float = 4.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Single models, their logit-average ensemble, KD from the ensemble, SD from single models.

    One feature set, training set and test set are drawn from ``key``; ``seeds`` single models differ
    only in their init. KD: one student (fresh init) trained on the ensemble's training-set logits.
    SD: ``sd_students`` students, student ``i`` distilled from single model ``i``.

    Args:
        cfg: Config.
        seeds: Number of single models (ensemble size).
        sd_students: Number of self-distillation students (``<= seeds``).
        key: Root PRNG key (default ``jax.random.key(0)``).
        alpha: Distillation weight.
        tau: Distillation temperature.

    Returns:
        ``(errors, views)``. ``errors``: tidy rows ``protocol`` (single/ensemble/kd/sd), ``member``
        (-1 for ensemble/kd), ``subset`` (overall/multi_view/single_view), ``n``, ``error_pct`` and
        ``error_mu = error_pct / (100 mu)`` (the theorem's unit for ``overall``), plus ``seconds`` (wall
        time of that protocol's training). ``views``: rows ``protocol``, ``member``, ``cls``,
        ``view0``, ``view1`` (``max_r <w_{j,r}, v_{j,l}>``), ``winner`` and ``both`` (both views above
        half the larger one).
    """
    if sd_students > seeds:
        raise ValueError("sd_students must be <= seeds")
    key = jax.random.key(0) if key is None else key
    kf, ktr, kte, kinit, kkd, ksd = (jax.random.fold_in(key, i) for i in range(6))
    feats = make_features(kf, cfg)
    tr = sample(ktr, cfg, feats, cfg.n_train, cfg.mu)
    te = sample(kte, cfg, feats, cfg.n_test, cfg.mu)
    batched_logits = jax.jit(jax.vmap(logits, in_axes=(0, None, None)), static_argnums=2)

    err_rows, view_rows = [], []

    def record(protocol, Ws, secs):
        test_logits = batched_logits(Ws, te["x"], cfg)
        for i in range(Ws.shape[0]):
            for r in _errors(test_logits[i], te, cfg.mu):
                err_rows.append({"protocol": protocol, "member": i, **r, "seconds": secs})
            corr, win = learned_views(Ws[i], feats)
            for j in range(cfg.k):
                c0, c1 = float(corr[j, 0]), float(corr[j, 1])
                view_rows.append(
                    {
                        "protocol": protocol,
                        "member": i,
                        "cls": j,
                        "view0": c0,
                        "view1": c1,
                        "winner": int(win[j]),
                        "both": bool(min(c0, c1) > 0.5 * max(c0, c1)),
                    }
                )
        return test_logits

    t0 = time.perf_counter()
    singles = jax.block_until_ready(train_many(jax.random.split(kinit, seeds), cfg, tr))
    single_test = record("single", singles, time.perf_counter() - t0)

    for r in _errors(single_test.mean(axis=0), te, cfg.mu):
        err_rows.append({"protocol": "ensemble", "member": -1, **r, "seconds": 0.0})

    train_logits = batched_logits(singles, tr["x"], cfg)  # (seeds, n_train, k)
    t0 = time.perf_counter()
    kd = jax.block_until_ready(train_many(jax.random.split(kkd, 1), cfg, tr, train_logits.mean(0)[None], alpha, tau))
    record("kd", kd, time.perf_counter() - t0)

    if sd_students:
        t0 = time.perf_counter()
        sd = train_many(jax.random.split(ksd, sd_students), cfg, tr, train_logits[:sd_students], alpha, tau)
        record("sd", jax.block_until_ready(sd), time.perf_counter() - t0)

    errors = pd.DataFrame(err_rows)
    errors.loc[errors.protocol == "kd", "member"] = -1
    return errors, pd.DataFrame(view_rows)


def summary(errors: pd.DataFrame) -> pd.DataFrame:
    """Mean (over members) error in units of mu per protocol and subset.

    Args:
        errors: The first output of :func:`run_protocols`.

    Returns:
        Wide frame indexed by protocol with one ``error_mu`` column per subset.
    """
    order = ["single", "ensemble", "kd", "sd"]
    tab = errors.groupby(["protocol", "subset"]).error_mu.mean().unstack("subset")
    return tab.reindex([p for p in order if p in tab.index])[["overall", "multi_view", "single_view"]]

"""Figure 3's data: Gaussian-like inputs labelled by fixed random teachers (PROTOCOLS §5).

Inputs x in R^d are N(0, I) ("gaussian") or a mixture of ``mixture_components`` Gaussians
("mixture": centres s*g_j with g_j ~ N(0, I), s^2 = ``mixture_spread``, within-component std
sqrt(1 - s^2), so the marginal covariance is still ~I). A fixed random *teacher* (`GaussNet`,
width ``teacher.width``, Flax default init; `experiments.gaussian.Teacher`) labels them, y = argmax teacher(x).
The functions here take any teacher with ``arch``, ``cfg``, ``mix_key`` and ``logits(x, kind)``: data
builds no network.

On a probe sample of the setting's inputs, each class's mean logit is subtracted (``teacher.center``:
a random ReLU teacher otherwise often has a class that almost never wins, which rejection sampling
cannot fill) and the logits are divided by their std, so the margin below is in units of that std.
A *setting* is four tokens ``margin/noise/sampling/input``:

  nomargin | margin       margin: reject draws whose top-1 - top-2 teacher logit gap < ``data.margin``
  clean | noise           noise: each training label is replaced, with probability ``data.noise_rate``,
                          by a uniformly drawn *other* class (test labels stay clean)
  uniform | rejection     rejection: keep a draw only while its class is below its quota N/k, so
                          every class gets N/k examples (train and test)
  gaussian | mixture

Every function takes the experiment's config (`experiments.gaussian.GaussianConfig`) as ``cfg``.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import numpy as np

from ntk_vs_nn import rng
from ntk_vs_nn.config import UserError

TEACHERS = ("linear", "fc2", "fc3", "res3", "conv2", "conv3", "resconv3")
TOKENS = (("nomargin", "margin"), ("clean", "noise"), ("uniform", "rejection"), ("gaussian", "mixture"))


def parse_setting(s: str) -> dict:
    """``"nomargin/clean/uniform/gaussian"`` -> {margin, noise, sampling, input} (UserError if malformed)."""
    parts = s.split("/")
    if len(parts) != 4 or any(p not in opts for p, opts in zip(parts, TOKENS)):
        valid = "/".join("|".join(o) for o in TOKENS)
        raise UserError(f"grid.settings: bad setting {s!r}; expected {valid} (or 'all')")
    return dict(zip(("margin", "noise", "sampling", "input"), parts))


def width(arch: str, cfg) -> int:
    """The teacher's hidden units (fc, res) or channels (conv) of ``arch``."""
    return cfg.teacher.channels if arch.startswith(("conv", "resconv")) else cfg.teacher.width


def draw_inputs(key, n: int, kind: str, cfg, mix_key=None) -> np.ndarray:
    """(n, d) float32 draws from N(0, I) or the mixture (centres from ``mix_key``, shared by all teachers)."""
    d = cfg.data.d
    if kind == "gaussian":
        return np.asarray(jax.random.normal(key, (n, d)), np.float32)
    m, s2 = cfg.data.mixture_components, cfg.data.mixture_spread
    centres = np.sqrt(s2) * jax.random.normal(mix_key, (m, d))
    kc, kz = jax.random.split(key)
    comp = jax.random.randint(kc, (n,), 0, m)
    return np.asarray(centres[comp] + np.sqrt(1.0 - s2) * jax.random.normal(kz, (n, d)), np.float32)


class Labeller(Protocol):
    """What the functions here need of a teacher (`experiments.gaussian.Teacher` is one)."""

    arch: str
    cfg: Any
    mix_key: Any

    def logits(self, x: np.ndarray, kind: str) -> np.ndarray: ...


def top2_gap(logits: np.ndarray) -> np.ndarray:
    """(n,) top-1 minus top-2 logit."""
    part = np.sort(logits, axis=-1)
    return part[:, -1] - part[:, -2]


def sample(teacher: Labeller, key, n: int, kind: str, sampling: str, margin: float) -> tuple:
    """n labelled draws: ``(x (n, d), y (n,), stats)``.

    ``sampling="rejection"``: class c is kept only while it has fewer than its quota (N/k; the first
    N mod k classes one more); ``margin > 0``: draws with a top-1 - top-2 gap below it are rejected.
    Draws come in chunks from ``fold_in(key, i)``; a UserError after ``max_draw_factor * n`` draws.
    """
    cfg = teacher.cfg
    k, chunk = cfg.data.k, cfg.data.chunk
    quota = np.full(k, n // k) + (np.arange(k) < n % k) if sampling == "rejection" else None
    xs, ys, have, drawn, i = [], [], 0, 0, 0
    counts = np.zeros(k, int)
    while have < n:
        if drawn >= cfg.data.max_draw_factor * n:
            short = "" if quota is None else f"; classes still short: {np.flatnonzero(counts < quota).tolist()}"
            raise UserError(
                f"teacher {teacher.arch}, {kind}/{sampling}, margin {margin}: only {have} of {n} draws accepted "
                f"after {drawn}{short}; raise data.max_draw_factor or lower data.margin"
            )
        x = draw_inputs(jax.random.fold_in(key, i), chunk, kind, cfg, teacher.mix_key)
        logits = teacher.logits(x, kind)
        y = logits.argmax(-1)
        ok = top2_gap(logits) >= margin if margin > 0 else np.ones(chunk, bool)
        if quota is not None:
            for c in range(k):  # keep class c's accepted draws, in draw order, up to its quota
                idx = np.flatnonzero(ok & (y == c))[: quota[c] - counts[c]]
                keep = np.zeros(chunk, bool)
                keep[idx] = True
                ok = (ok & (y != c)) | keep
        idx = np.flatnonzero(ok)[: n - have]
        xs.append(x[idx])
        ys.append(y[idx])
        counts += np.bincount(y[idx], minlength=k)
        have += len(idx)
        drawn += chunk if have < n else int(idx[-1]) + 1  # the last chunk: only the draws looked at
        i += 1
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 2**31 - 1), n))  # no class order
    return x[perm], y[perm], {"drawn": drawn, "accept_rate": n / drawn, "class_counts": counts.tolist()}


def flip_labels(key, y: np.ndarray, rate: float, k: int) -> np.ndarray:
    """Each label, with probability ``rate``, replaced by a uniformly drawn *different* class."""
    kf, kc = jax.random.split(key)
    flip = np.asarray(jax.random.bernoulli(kf, rate, y.shape))
    shift = np.asarray(jax.random.randint(kc, y.shape, 1, k))
    return np.where(flip, (y + shift) % k, y).astype(np.int32)


def make_cell_data(teacher: Labeller, setting: str, cfg, root) -> dict:
    """Train and test sets of one (teacher, setting): inputs keyed by (input kind, split), so the
    settings of one teacher share their draws where they can (common random numbers)."""
    s = parse_setting(setting)
    margin = cfg.data.margin if s["margin"] == "margin" else 0.0
    base = rng.member_key(root, "gaussian.input", TOKENS[3].index(s["input"]))
    kind, how = s["input"], s["sampling"]
    x_tr, y_tr, st_tr = sample(teacher, jax.random.fold_in(base, 0), cfg.data.n_train, kind, how, margin)
    x_te, y_te, st_te = sample(teacher, jax.random.fold_in(base, 1), cfg.data.n_test, kind, how, margin)
    y_noisy = y_tr
    if s["noise"] == "noise":
        nkey = rng.member_key(root, "gaussian.noise", TEACHERS.index(teacher.arch))
        y_noisy = flip_labels(nkey, y_tr, cfg.data.noise_rate, cfg.data.k)
    return dict(x_train=x_tr, y_train=y_noisy, y_train_clean=y_tr, x_test=x_te, y_test=y_te, stats=(st_tr, st_te))

"""Function-space backend of the kernel families (``--set kernel.backend=function|nt``).

Instead of training the linearised model's weights, each member is solved on its kernel matrix:

  family     kernel of member (init key)                        outputs at init f0
  ntk        empirical NTK of the net at W0, traced (mean of     f(W0; x)
             the k diagonal blocks, used as Θ ⊗ I_k)
  ntk_prime  the same kernel                                     0
  gp         φ_W0(x) φ_W0(x')^T + 1 (the trainable head's        f(W0; x)
             exact NTK, φ = last-layer features)
  ntk_inf,   the infinite-width NTK / NNGP of the architecture   0
  nngp_inf   (neural-tangents stax; deterministic: one member)

Solvers (``kernel.solver``), all from f0 on the n training points, predictions on train/val/test:
  xent   full-batch GD on the mean loss (1−α)·CE(f, y) + α·τ²·KL(softmax(t/τ) ‖ softmax(f/τ))
         (α = 0 for plain training; the KD/SD loss of the weight-space trainer), in function space:
         f(X) ← f(X) − (η/n) Θ(X, X_train) ∂loss/∂f(X_train), for ``kernel.steps`` steps.
  mse    GD on (1/2n)‖f − Y‖² to the same step count, in closed form (kernels.predict.gradient_descent_mse);
         Y = one-hot, or (1−α)·one-hot + α·softmax(t/τ) for KD/SD.
  ridge  kernel ridge regression from f0: f = f0 + Θ(·, X)(Θ + r·mean(diag Θ)·I)^{-1}(Y − f0(X)).
The step is η = ``kernel.lr`` · n / λ_max(Θ_train), so one setting fits every kernel scale (mse is
stable for ``kernel.lr`` < 2), or with ``kernel.lr_units=absolute`` η = ``kernel.lr``: the learning
rate of weight-space GD, so ``kernel.lr=train.lr kernel.steps=epochs·(n/batch)`` replays a plain-SGD
(momentum 0, constant schedule) weights run in function space (the backend cross-check).
The traced kernel drops the NTK's off-diagonal output blocks: exact for gp (and the
infinite-width kernels), an approximation for ntk/ntk_prime (results/quick-mnist1d/backend-check/).
``kernel.trace=false`` solves ntk/ntk_prime on the full NTK instead, as an (n·k, n·k) matrix
(row i·k + a = output a of training point i; spilled to a temporary file beyond 1 GiB, so ntk′ and
the students reuse it): every solver then equals full-batch GD of the linearised net's weights
(tested, float64). Θ(val/test, train) is never formed for it: the solvers only need Θ(other, X) a
for one (n, k) array a, which is J_other (J_trainᵀ a), a vjp and a jvp of the net.

train_sum: G = c·Σ_l f_l (c = 1/L for ``sum_scale=mean``) is linear in the concatenated weights,
so its kernel is c²·Σ_l Θ_l and f0 = c·Σ_l f0_l; with ``protocol.sum_grad=member`` (the default) each
member's gradient is scaled by 1/(L c²) as in weight space (`Config.sum_grad_scale`), so the kernel is
(1/L)·Σ_l Θ_l: the mean of the members' kernels. It reuses the single members' kernels.

The empirical NTKs (ntk, ntk_prime; ``kernel.backend=function``) come from the kernel API:
``batch(empirical_ntk_fn(f, trace_axes, vmap_axes=0, implementation=AUTO), kernel.tile_size,
store_on_device=False)``; Θ(train, train) and Θ(other, train) by its ``train_test``, which
differentiates the training set once for both.

Kernels are cached in memory per (kind, model, dataset, init key) for the process, so ntk and
ntk_prime, and train_sum, compute no kernel twice.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse.linalg
from scipy.special import softmax

from ntk_vs_nn.config import INFINITE_FAMILIES, Config  # noqa: F401 - re-exported
from ntk_vs_nn.engine.batching import map_batches
from ntk_vs_nn.engine.trainer import Members, progress_enabled
from ntk_vs_nn.kernels import api, infinite
from ntk_vs_nn.kernels import nt as nt_backend
from ntk_vs_nn.kernels.batching import batch
from ntk_vs_nn.kernels.empirical import head_features
from ntk_vs_nn.kernels.predict import gradient_descent_mse
from ntk_vs_nn.models import build_model

_KIND = {"ntk": "ntk", "ntk_prime": "ntk", "gp": "gp", "ntk_inf": "ntk_inf", "nngp_inf": "nngp_inf"}
_OFFSET = {"ntk": True, "ntk_prime": False, "gp": True, "ntk_inf": False, "nngp_inf": False}
_CACHE: dict = {}


class FunctionTrainer:
    """Drop-in for `engine.Trainer` in the protocols: ``fit`` returns `engine.Members` whose
    variables carry the predictions on every split (``predict_splits``); no weights, no checkpoint."""

    checkpointable = False

    def __init__(self, family: str, model: str, cfg: Config, data, n_sum: int = 1):
        self.family, self.model, self.cfg, self.data = family, model, cfg, data
        self.kind = _KIND[family]
        if cfg.kernel.backend == "nt" and self.kind == "ntk":
            self.kind = "nt"
        self.full = self.kind in ("ntk", "nt") and not cfg.kernel.trace
        self.n_sum, self.scale = n_sum, (1.0 / n_sum if cfg.protocol.sum_scale == "mean" else 1.0)
        self.module = build_model(model, data.num_classes, data.spatial_ndim, cfg.model.norm, cfg.model.groups)
        self.x_other = np.concatenate([data.x_val, data.x_test])
        self.progress = progress_enabled(cfg.run.progress)

    # -- kernels -------------------------------------------------------------------------------
    def _member(self, key):
        """(Θ_train, Θ_other, f0_train (n, k), f0_other (m, k)) of one member: traced, Θ_train (n, n)
        and Θ_other (m, n); full (``kernel.trace=false``), Θ_train (n·k, n·k) and Θ_other an (m, n, k, k)
        array or the function a (n, k) ↦ Θ(other, train) a."""
        deterministic = self.kind in INFINITE_FAMILIES
        kb = b"" if deterministic else np.asarray(jax.random.key_data(key)).tobytes()
        ck = (self.kind, self.full, self.model, id(self.data), self.cfg.model, kb)
        if ck not in _CACHE:
            if deterministic:  # ntk_inf and nngp_inf come from one stax pass: cache both
                for kind, kernels in self._infinite().items():
                    _CACHE[(kind, *ck[1:])] = kernels
            else:
                _CACHE[ck] = self._kernel(key)
        k_tt, k_ot, f0_tr, f0_ot = _CACHE[ck]
        if not _OFFSET[self.family]:
            f0_tr, f0_ot = np.zeros_like(f0_tr), np.zeros_like(f0_ot)
        return k_tt, k_ot, f0_tr, f0_ot

    def _infinite(self) -> dict:
        """{"ntk_inf": kernels, "nngp_inf": kernels} from one neural-tangents stax pass (both kinds
        share the covariance propagation: half the cost of two passes)."""
        x_tr, x_ot, k = self.data.x_train, self.x_other, self.data.num_classes
        both = infinite.infinite_kernels(
            self.model, k, self.data.spatial_ndim, x_tr, x_ot, kind=("ntk", "nngp"), norm=self.cfg.model.norm
        )
        zeros = np.zeros((len(x_tr), k), np.float32), np.zeros((len(x_ot), k), np.float32)
        return {
            f"{kind}_inf": (np.asarray(k_tt, np.float32), np.asarray(k_ot, np.float32), *zeros)
            for kind, (k_tt, k_ot) in both.items()
        }

    def _kernel(self, key):
        x_tr, x_ot = self.data.x_train, self.x_other
        params = self.module.init(key, x_tr[:1])["params"]
        apply = jax.jit(lambda x: self.module.apply({"params": params}, x))
        f0_tr, f0_ot = map_batches(apply, x_tr), map_batches(apply, x_ot)
        f = lambda p, x: self.module.apply({"params": p}, x)  # noqa: E731
        if self.full:
            return (*self._full_kernel(f, params, x_tr, x_ot), f0_tr, f0_ot)
        if self.kind == "gp":
            phi = jax.jit(lambda x: head_features(self.module, params, x))
            p_tr, p_ot = map_batches(phi, x_tr).astype(np.float64), map_batches(phi, x_ot).astype(np.float64)
            k_tt, k_ot = p_tr @ p_tr.T + 1.0, p_ot @ p_tr.T + 1.0
        elif self.kind == "nt":
            fn = nt_backend.nt_empirical_ntk_fn(f, trace_axes=(-1,))
            k_tt, k_ot = nt_backend.nt_train_test(fn, x_tr, x_ot, params, self.cfg.kernel.tile_size)
        else:
            k_tt, k_ot = self._ntk(f, (-1,)).train_test(x_tr, x_ot, params)
        return np.asarray(k_tt, np.float32), np.asarray(k_ot, np.float32), f0_tr, f0_ot

    def _ntk(self, f, trace_axes):
        """The empirical NTK of f as the suite computes it: `api.empirical_ntk_fn` (structured derivatives
        where they apply) in tiles of ``kernel.tile_size`` by `batching.batch`, each tile differentiated
        once, the Jacobians and the kernel in host memory."""
        fn = api.empirical_ntk_fn(f, trace_axes, vmap_axes=0, implementation=api.NtkImplementation.AUTO)
        return batch(fn, self.cfg.kernel.tile_size, store_on_device=False, progress=self.progress)

    def _full_kernel(self, f, params, x_tr, x_ot):
        """(Θ_train as (n·k, n·k), Θ_other: an array (nt) or `_jacobian_operator`)."""
        tile = self.cfg.kernel.tile_size
        if self.kind == "nt":
            fn = nt_backend.nt_empirical_ntk_fn(f, trace_axes=())
            k_tt, k_ot = nt_backend.nt_train_test(fn, x_tr, x_ot, params, tile)
            other = np.asarray(k_ot, np.float32)
        else:
            k_tt = self._ntk(f, ())(x_tr, None, params)
            other = _jacobian_operator(f, params, x_tr, x_ot)
        return _flatten_full(k_tt), other

    def _sum_kernel(self, key):
        if self.n_sum == 1:
            return self._member(key)
        parts = [self._member(jax.random.fold_in(key, i)) for i in range(self.n_sum)]
        c = self.scale
        kc = c**2 * self.cfg.sum_grad_scale(self.n_sum)  # the kernel's factor: c² times the gradient's scale
        f0 = [c * sum(p[j].astype(np.float64) for p in parts) for j in (2, 3)]
        if not self.full:
            return (*(kc * sum(p[j].astype(np.float64) for p in parts) for j in (0, 1)), *f0)
        k_tt = np.zeros(parts[0][0].shape, parts[0][0].dtype)  # the members' dtype: the full kernel is large
        for p in parts:
            k_tt += p[0]
        k_tt *= k_tt.dtype.type(kc)
        others = [p[1] for p in parts]
        return k_tt, lambda a: kc * sum(_apply_other(o, a, True) for o in others), *f0

    # -- the Trainer interface -----------------------------------------------------------------
    def fit(self, init_keys, data_keys, x, y, teachers=None, alpha=0.0, tau=1.0, mode=None, desc=""):
        del data_keys, x, mode, desc  # full-batch and deterministic; x is the data's training set
        t0 = time.perf_counter()
        variables, losses = [], []
        nv = len(self.data.x_val)
        for i, key in enumerate(init_keys):
            k_tt, k_ot, f0_tr, f0_ot = self._sum_kernel(key)
            teacher = None if teachers is None else np.asarray(teachers[i], np.float64)
            eig = _EIG.get(id(k_tt))
            wants_eig = self.cfg.kernel.solver == "mse" or (self.cfg.kernel.solver == "xent" and not self.full)
            if eig is None and wants_eig:  # (full + xent: λ_max by Lanczos, no n·k-sized eigh)
                eig = _eigh(k_tt, None)
                if self.n_sum == 1:  # a cached member kernel: ntk_prime and the students reuse it
                    _EIG[id(k_tt)] = eig
            f_tr, f_ot, loss, steps = solve(
                k_tt, k_ot, f0_tr, f0_ot, np.asarray(y), teacher, alpha, tau, self.cfg.kernel, self.data.y_val, eig
            )
            preds = {"train": f_tr, "val": f_ot[:nv], "test": f_ot[nv:]}
            preds = {s: p.astype(np.float32) for s, p in preds.items()}
            variables.append({"params": {}, "state": {}, "steps": steps, "preds": preds})
            losses.append(loss)
        width = max(len(v) for v in losses)
        losses = [np.pad(v, (width - len(v), 0), mode="edge") for v in losses]
        return Members(variables, np.asarray(losses, np.float64), time.perf_counter() - t0)

    def predict_splits(self, variables, data) -> dict:
        return variables["preds"]


SPILL_BYTES = 1 << 30  # full kernels larger than this live in a temporary file (memory-mapped)
_EIG: dict = {}  # id(cached kernel) -> its eigendecomposition (kernels live in _CACHE, ids stay valid)
AUTO_STEPS = tuple(int(10**e) for e in np.arange(0, 6.01, 0.5))  # mse: t grid for kernel.steps = 0
XENT_DEFAULT_STEPS = 3000


def _eigh(k_tt, eig):
    if eig is not None:
        return eig
    k = np.asarray(k_tt, np.float64)
    return np.linalg.eigh((k + k.T) / 2)


def _targets(y, k, teacher, alpha, tau):
    onehot = np.eye(k)[y]
    if teacher is None or alpha == 0:
        return onehot
    return (1 - alpha) * onehot + alpha * softmax(teacher / tau, axis=-1)


def solve(k_tt, k_ot, f0_tr, f0_ot, y, teacher, alpha, tau, kc, y_val=None, eig=None):
    """Function-space training of one model.

    Args:
      k_tt: the training kernel: traced (n, n), used as Θ ⊗ I_k; or full, (n, n, k, k) or flattened
        (n·k, n·k) with row i·k + a for output a of point i.
      k_ot: Θ(other, train): (m, n) traced, (m, n, k, k) or (m·k, n·k) full, or a function
        a (n, k) ↦ Θ(other, train) a (m, k). Its first ``len(y_val)`` rows are the validation points
        (used only when ``kc.steps == 0`` to pick the mse training time).
      f0_tr, f0_ot: outputs at init. y: (n,) labels. teacher: (n, k) logits or None.
      alpha, tau: distillation weight and temperature. kc: `KernelConfig`.
      eig: the eigendecomposition of the (flattened) k_tt, if known.

    Returns:
      (f_train (n, k), f_other (m, k), losses (T,), steps used (int; 0 for ridge)).
    """
    n, k = f0_tr.shape
    k_tt = _flatten_full(k_tt) if np.ndim(k_tt) == 4 else k_tt
    full = k > 1 and k_tt.shape[0] == n * k
    if not np.isfinite(k_tt).all() or (not callable(k_ot) and not np.isfinite(k_ot).all()):
        nan = np.full_like(f0_tr, np.nan), np.full_like(f0_ot, np.nan)
        return *nan, np.array([np.nan]), 0
    other = functools.partial(_apply_other, k_ot, full=full)  # a (n, k) -> Θ(other, train) a (m, k)
    targets = _targets(y, k, teacher, alpha, tau)
    mse = lambda f: np.array([0.5 * np.mean(np.sum((f - targets) ** 2, -1))])  # noqa: E731
    if kc.solver == "ridge":
        reg = kc.ridge * float(np.mean(np.diag(k_tt)))
        mat = np.asarray(k_tt, np.float64)
        a = np.linalg.solve(mat + reg * np.eye(len(mat)), (targets - f0_tr).reshape(len(mat), -1)).reshape(n, k)
        f_tr = f0_tr + (mat @ a.reshape(len(mat), -1)).reshape(n, k)
        return f_tr, f0_ot + other(a), mse(f_tr), 0
    if kc.solver == "mse":
        evals, evecs = eig = _eigh(k_tt, eig)
        eta = _step(kc, n, lambda: float(evals[-1]))
        grid = (kc.steps,) if kc.steps > 0 else AUTO_STEPS
        best = None
        nv = 0 if y_val is None else len(y_val)
        k4 = k_tt.reshape(n, k, n, k).transpose(0, 2, 1, 3) if full else k_tt  # a view: the layout kernels wants
        for steps in grid:  # one eigendecomposition, any number of training times
            predict = gradient_descent_mse(k4, targets, learning_rate=eta, n_steps=steps, eigh=eig)
            f_tr, f_ot = predict(f0_tr, f0_ot, lambda v: other(v.reshape(n, k)))
            score = np.mean(np.argmax(f_ot[:nv], -1) == y_val) if nv else 0.0
            if best is None or score > best[0]:
                best = (score, f_tr, f_ot, steps)
        _, f_tr, f_ot, steps = best
        return f_tr, f_ot, mse(f_tr), steps
    eta = _step(kc, n, lambda: float(_eigh(k_tt, eig)[0][-1] if eig is not None else _lambda_max(k_tt)))
    steps = kc.steps or XENT_DEFAULT_STEPS
    dt = jnp.asarray(k_tt[:1]).dtype  # float32 kernels: the whole loop in float32
    teacher_p = jnp.zeros((n, k), dt) if teacher is None else jax.nn.softmax(jnp.asarray(teacher, dt) / tau)
    inside = not (full or callable(k_ot))  # a traced array: the other rows move inside the jitted loop
    f_tr, f_ot, g_sum, loss = _xent_gd(
        jnp.asarray(k_tt, dt), jnp.asarray(k_ot, dt) if inside else None, jnp.asarray(f0_tr, dt),
        jnp.asarray(f0_ot, dt), jnp.asarray(y), teacher_p, float(alpha if teacher is not None else 0.0),
        float(tau), float(eta), int(steps),
    )  # fmt: skip
    f_ot = np.asarray(f_ot, np.float64)
    if not inside:
        f_ot = f_ot - (eta / n) * other(np.asarray(g_sum))
    return np.asarray(f_tr, np.float64), f_ot, np.asarray(loss, np.float64), steps


def _flatten_full(k4) -> np.ndarray:
    """(n, n, k, k) -> (n·k, n·k), row i·k + a; beyond ``SPILL_BYTES`` written to a temporary file
    (read back memory-mapped: the process keeps several members' kernels without holding them)."""
    n, _, k, _ = k4.shape
    k4 = np.asarray(k4)
    if k4.nbytes <= SPILL_BYTES:
        return np.ascontiguousarray(k4.transpose(0, 2, 1, 3)).reshape(n * k, n * k)
    fd, path = tempfile.mkstemp(suffix=".npy", dir=_spill_dir())
    os.close(fd)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=k4.dtype, shape=(n * k, n * k))
    for i in range(0, n, 256):
        out[i * k : (i + 256) * k] = k4[i : i + 256].transpose(0, 2, 1, 3).reshape(-1, n * k)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


@functools.cache
def _spill_dir() -> str:
    path = tempfile.mkdtemp(prefix="ntk_vs_nn-kernels-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _apply_other(k_ot, a, full: bool) -> np.ndarray:
    """Θ(other, train) a for a (n, k): k_ot an array (traced (m, n); full (m, n, k, k) or (m·k, n·k))
    or already a function of a."""
    if callable(k_ot):
        return np.asarray(k_ot(a), np.float64)
    a = np.asarray(a, np.float64)
    if not full:
        return np.asarray(k_ot, np.float64) @ a
    n, k = a.shape
    mat = k_ot if np.ndim(k_ot) == 2 else np.asarray(k_ot).transpose(0, 2, 1, 3).reshape(-1, n * k)
    return (np.asarray(mat, np.float64) @ a.reshape(-1)).reshape(-1, k)


def _jacobian_operator(f, params, x_tr, x_ot, bs: int = 500):
    """a (n, k) ↦ Θ(x_ot, x_tr) a = J(x_ot) (J(x_tr)ᵀ a): one vjp over the training inputs and one jvp
    over the others, in chunks of ``bs`` (padded chunks get zero cotangents); Θ(x_ot, x_tr) itself,
    (m, n, k, k), is never formed."""
    vjp = jax.jit(lambda p, x, a: jax.vjp(lambda q: f(q, x), p)[1](a)[0])
    jvp = jax.jit(lambda p, x, v: jax.jvp(lambda q: f(q, x), (p,), (v,))[1])
    dtype = jax.tree.leaves(params)[0].dtype

    def apply(a):
        a = np.asarray(a, dtype)
        v = None
        for i in range(0, len(x_tr), bs):
            xc, ac = x_tr[i : i + bs], a[i : i + bs]
            pad = bs - len(xc) if len(x_tr) > bs else 0
            if pad:
                xc = np.concatenate([xc, np.repeat(xc[-1:], pad, 0)])
                ac = np.concatenate([ac, np.zeros((pad,) + ac.shape[1:], ac.dtype)])
            g = vjp(params, jnp.asarray(xc), jnp.asarray(ac))
            v = g if v is None else jax.tree.map(jnp.add, v, g)
        return map_batches(lambda x: jvp(params, x, v), x_ot, bs).astype(np.float64)

    return apply


def _step(kc, n: int, lambda_max) -> float:
    """The GD step η of f ← f − (η/n) Θ ∂loss/∂f: ``kc.lr`` · n / λ_max, or ``kc.lr`` itself with
    ``kernel.lr_units=absolute`` (then η is the learning rate of weight-space GD on the mean loss:
    for the linearised net, one such step moves f by −(lr/n) J Jᵀ ∂loss/∂f = the step above)."""
    return float(kc.lr) if kc.lr_units == "absolute" else kc.lr * n / lambda_max()


def _lambda_max(k_tt: np.ndarray) -> float:
    n = len(k_tt)
    if n > 8192:  # a full (n·k)² kernel: Lanczos on matrix-vector products, not an O(n³) reduction
        return float(scipy.sparse.linalg.eigsh(k_tt, k=1, which="LA", tol=1e-6)[0][0])
    return float(scipy.linalg.eigh(k_tt.astype(np.float64), eigvals_only=True, subset_by_index=[n - 1, n - 1])[0])


@functools.partial(jax.jit, static_argnames=("steps",))
def _xent_gd(k_tt, k_ot, f_tr, f_ot, y, teacher_p, alpha, tau, eta, steps):
    """GD on the distillation loss in function space; the loss recorded at 30 evenly spaced steps.
    k_tt (n, n) traced or (n·k, n·k) full; k_ot (m, n) traced, or None: the caller moves the other
    rows by Θ(other, train) · (the returned sum of the gradients).
    Returns (f_train, f_other, sum of the gradients (n, k), losses)."""
    n, k = f_tr.shape
    full = k_tt.shape[0] == n * k and k > 1
    kernel_times = (lambda g: (k_tt @ g.reshape(-1)).reshape(n, k)) if full else (lambda g: k_tt @ g)
    onehot = jax.nn.one_hot(y, k, dtype=f_tr.dtype)
    every = max(steps // 30, 1)

    def loss_and_grad(f):
        logp, logp_t = jax.nn.log_softmax(f), jax.nn.log_softmax(f / tau)
        ce = -jnp.sum(onehot * logp, -1)
        kl = jnp.sum(teacher_p * (jnp.log(jnp.maximum(teacher_p, 1e-30)) - logp_t), -1)
        loss = jnp.mean((1 - alpha) * ce + alpha * tau**2 * kl)
        grad = (1 - alpha) * (jnp.exp(logp) - onehot) + alpha * tau * (jnp.exp(logp_t) - teacher_p)
        return loss, grad

    def body(s, carry):  # the test rows move by K_ot · (sum of the gradients): applied once at the end
        f_tr, g_sum, losses = carry
        loss, g = loss_and_grad(f_tr)
        losses = jax.lax.cond(s % every == 0, lambda: losses.at[s // every].set(loss), lambda: losses)
        return f_tr - (eta / n) * kernel_times(g), g_sum + g, losses

    losses = jnp.full(((steps - 1) // every + 2,), jnp.nan, f_tr.dtype)
    f_tr, g_sum, losses = jax.lax.fori_loop(0, steps, body, (f_tr, jnp.zeros_like(f_tr), losses))
    if k_ot is not None:
        f_ot = f_ot - (eta / n) * (k_ot @ g_sum)
    return f_tr, f_ot, g_sum, losses.at[-1].set(loss_and_grad(f_tr)[0])

"""Closed-form predictors in function space: a linear-in-weights model trained on a kernel.

Full-batch GD on a mean loss (1/n) Σ ℓ moves a linear-in-weights model by
f ← f − (η/n) Θ(·, X_train) ∂ℓ/∂f(X_train): closed forms for MSE (`gradient_descent_mse`,
`kernel_ridge`), a cheap recursion for cross-entropy (`gradient_descent_xent`). Written from the
math; neural-tangents is not imported. The kernels come from `ntk_vs_nn.kernels`
(``batch(empirical_ntk_fn(...))``) or the infinite-width `ntk_vs_nn.kernels.infinite`.

Predictors work in numpy float64 on the host. A kernel is either full (n1, n2, k, k), acting on
residuals flattened to (n k,), or traced (n1, n2), acting on each output column (Θ ⊗ I_k).

Example (``f``, ``params`` and the kernels as in the example of `ntk_vs_nn.kernels.empirical`):
    >>> predict = gradient_descent_mse(k_train_train, y_train, learning_rate=1.0, n_steps=100)
    >>> fx_train, fx_test = predict(f(params, x_train), f(params, x_test), k_test_train)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.special import softmax


def _mat(kernel) -> np.ndarray:
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim == 2:
        return kernel
    n1, n2, k, _ = kernel.shape
    return kernel.transpose(0, 2, 1, 3).reshape(n1 * k, n2 * k)


def _vec(y, full: bool) -> np.ndarray:
    y = np.asarray(y, np.float64)
    return y.reshape(-1, 1) if full else y


def gradient_descent_mse(
    k_train_train,
    y_train,
    learning_rate: float,
    n_steps: int | None = None,
    t: float | None = None,
    eigh: tuple | None = None,
) -> Callable:
    """Closed-form predictions of a linear-in-weights model under full-batch GD on MSE.

    Loss 1/(2n) Σ_i ||f(x_i) − y_i||². With Θ = V diag(λ) V^T (eigh of the symmetric PSD kernel)
    and r = f(X_train) − Y: discrete GD with step η gives r_s = (I − ηΘ/n)^s r_0 (``n_steps=s``);
    gradient flow dW/dτ = −η ∇L gives r_t = exp(−ηΘt/n) r_0 (``t``, in units of steps, so small η
    and ``n_steps = t`` agree; ``t=np.inf`` is the pseudo-inverse limit = `kernel_ridge` at ridge 0).
    Test outputs follow f_test = f_test_0 − Θ_test,train V diag(g) V^T r_0 with
    g(λ) = (1 − decay(λ))/λ, evaluated with expm1/log1p (g → η s/n as λ → 0).

    Args:
      k_train_train: (n, n, k, k) full or (n, n) traced (used as Θ ⊗ I_k) NTK on the training set.
      y_train: (n, k) targets.
      learning_rate: η.
      n_steps, t: discrete GD steps, or gradient-flow time (may be ``np.inf``); give exactly one.
      eigh: ``(evals, evecs)`` of the (flattened, symmetrised) kernel if already known, so that many
        times or targets on one kernel cost one decomposition.

    Returns:
      ``predict(fx_train_0 (n, k), fx_test_0 (m, k) | None = None, k_test_train (m, n[, k, k]) | None
      = None) -> (fx_train_t (n, k), fx_test_t (m, k) | None)`` as float64 numpy. ``k_test_train``
      may also be a function v ↦ Θ(test, train) v (v: (n·k, 1) full, (n, k) traced), for a test
      kernel that is never formed (function_space applies it as J_test (J_trainᵀ v)).
    """
    if (n_steps is None) == (t is None):
        raise ValueError("give exactly one of n_steps (discrete GD) and t (gradient flow)")
    full = np.ndim(k_train_train) == 4
    mat = _mat(k_train_train)
    evals, evecs = np.linalg.eigh((mat + mat.T) / 2) if eigh is None else eigh
    n = np.shape(y_train)[0]
    x = learning_rate * evals / n
    cut = len(evals) * np.finfo(np.float64).eps * max(evals.max(), 0.0) if t == np.inf else 0.0
    pos = evals > cut  # modes at or below the cut (rounding, or the pseudo-inverse at t = inf) stay put
    xp = np.where(pos, x, 0.5)  # keeps log1p/expm1 finite where the value is unused
    with np.errstate(all="ignore"):
        if n_steps is not None:  # 1 − (1 − x)^s via log1p/expm1: accurate to rounding also for tiny x
            done = np.where(xp < 1, -np.expm1(n_steps * np.log1p(-np.minimum(xp, 1))), 1 - (1 - xp) ** n_steps)
            limit = learning_rate * n_steps / n
        else:
            done = -np.expm1(-xp * t)
            limit = 0.0 if t == np.inf else learning_rate * t / n
    done = np.where(pos, done, 0.0)  # λ ≤ 0 (rounding): that mode does not move
    g = np.where(pos, done / np.where(pos, evals, 1.0), limit)
    y_vec = _vec(y_train, full)

    def predict(fx_train_0, fx_test_0=None, k_test_train=None):
        r0 = _vec(fx_train_0, full) - y_vec
        coef = evecs.T @ r0
        fx_train = np.asarray(fx_train_0, np.float64) - (evecs @ (done[:, None] * coef)).reshape(np.shape(fx_train_0))
        if fx_test_0 is None:
            return fx_train, None
        v = evecs @ (g[:, None] * coef)
        step = k_test_train(v) if callable(k_test_train) else _mat(k_test_train) @ v
        return fx_train, np.asarray(fx_test_0, np.float64) - step.reshape(np.shape(fx_test_0))

    return predict


def kernel_ridge(k_train_train, y_train, k_test_train, ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Kernel ridge regression: f(X) = Θ(X, X_train) (Θ_train + ridge · I)^{-1} Y.

    Equals GD/gradient flow on MSE from f_0 = 0 run to convergence (ridge = 0, full-rank Θ).

    Args:
      k_train_train, k_test_train: (n, n, k, k) and (m, n, k, k), or (n, n) and (m, n) (⊗ I_k).
      y_train: (n, k) targets.
      ridge: added to the diagonal of the (flattened) train kernel, unscaled.

    Returns:
      ``(fx_train (n, k), fx_test (m, k))`` in float64.
    """
    full = np.ndim(k_train_train) == 4
    mat = _mat(k_train_train)
    alpha = np.linalg.solve((mat + mat.T) / 2 + ridge * np.eye(len(mat)), _vec(y_train, full))
    k = np.shape(y_train)[1]
    return (mat @ alpha).reshape(-1, k), (_mat(k_test_train) @ alpha).reshape(-1, k)


def gradient_descent_xent(
    k_train_train, y_train_onehot, k_test_train, fx_train_0, fx_test_0, learning_rate: float, n_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Function-space GD of a linear-in-weights model on mean softmax cross-entropy.

    f_{s+1}(X) = f_s(X) − (η/n) Θ(X, X_train) (softmax(f_s(X_train)) − Y) for X = train and test.
    With the full (n, n, k, k) kernel this is exactly full-batch GD of the linearised network
    (any architecture); a traced (n, n) kernel is used as Θ ⊗ I_k, exact only when the kernel is
    block-diagonal ∝ I_k (e.g. the ``gp`` family), an approximation otherwise.

    Args:
      k_train_train, k_test_train: (n, n, k, k) and (m, n, k, k), or (n, n) and (m, n).
      y_train_onehot: (n, k) one-hot (or soft) labels.
      fx_train_0, fx_test_0: (n, k) and (m, k) outputs at initialisation.
      learning_rate, n_steps: η and the number of steps.

    Returns:
      ``(fx_train (n, k), fx_test (m, k))`` after n_steps, float64.
    """
    full = np.ndim(k_train_train) == 4
    y = np.asarray(y_train_onehot, np.float64)
    n, k = y.shape
    kern = np.concatenate([_mat(k_train_train), _mat(k_test_train)])  # train rows, then test rows
    f = np.concatenate([_vec(fx_train_0, full), _vec(fx_test_0, full)])
    rows = n * k if full else n
    for _ in range(n_steps):
        f = f - (learning_rate / n) * (kern @ _vec(softmax(f[:rows].reshape(n, k), axis=-1) - y, full))
    return f[:rows].reshape(n, k), f[rows:].reshape(-1, k)

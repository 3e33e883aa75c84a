"""scripts/budget_check.py with flax.linen.max_pool (2x2, stride 2, VALID) computed by reshape + max.

Same forward function and parameters as the suite's PlainCNN (which calls nn.max_pool); only the
backward pass differs in how it is computed (no XLA select_and_scatter, slow on XLA:CPU) and in how
exact ties inside a window share the gradient (after a relu these are almost all zeros, gradient 0).
Usage: as scripts/budget_check.py, e.g. python results/fmnist-sizing/fastpool_check.py kernels --out ... --set ...
"""
import os
import sys

import flax.linen as nn

_orig = nn.max_pool


def max_pool(x, window_shape, strides=None, padding="VALID"):
    if tuple(window_shape) == (2, 2) and tuple(strides or ()) == (2, 2) and padding == "VALID" and x.ndim == 4:
        n, h, w, c = x.shape
        return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max((2, 4))
    return _orig(x, window_shape, strides=strides, padding=padding)


nn.max_pool = max_pool
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import budget_check  # noqa: E402

if __name__ == "__main__":
    budget_check.main()

"""Why ntk / ntk' disagree between the backends while gp agrees: the traced kernel.

On a subsample small enough for the full (n, n, k, k) empirical NTK, one ResNet-10-1 member of the
quick preset (MNIST-1D) is trained three ways from the same init, full-batch GD on mean
cross-entropy, same learning rate and step count:
  weights  the linearised net in weight space (families.linearized, optax.sgd);
  full     function space with the full NTK (kernels.gradient_descent_xent) -- exact in theory;
  traced   function space with the traced kernel as Θ ⊗ I_k (what kernel.backend=function uses).
Prints and writes trace_check.json: test accuracy of each and the max |f - f_weights| on test.

    .venv/bin/python results/quick-mnist1d/backend-check/trace_check.py
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.engine.trainer import distill_loss
from ntk_vs_nn.families import make_family
from ntk_vs_nn.kernels.empirical import empirical_ntk_fn, gradient_descent_xent
from ntk_vs_nn.config.presets import get_preset

N, STEPS, LR, MODEL = 400, 300, 0.03, "ResNet-10-1"


def main():
    t0 = time.perf_counter()
    cfg = get_preset("quick")
    d = load_dataset("mnist1d", cfg.data, cfg.run.seed)
    x, y, xt, yt = d.x_train[:N], d.y_train[:N], d.x_test, d.y_test
    k = d.num_classes
    fam = make_family("ntk", MODEL, k, 1, cfg)
    v = fam.init(jax.random.key(0), x[:1])
    # weights: full-batch GD of the linearised net
    opt = optax.sgd(LR)
    p, s = v["params"], opt.init(v["params"])

    @jax.jit
    def step(p, s):
        def loss(q):
            return distill_loss(fam.apply({"params": q, "state": v["state"]}, x), y, jnp.zeros((N, k)), 0.0, 1.0)

        g = jax.grad(loss)(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s

    for _ in range(STEPS):
        p, s = step(p, s)
    w_te = np.asarray(fam.apply({"params": p, "state": v["state"]}, xt), np.float64)
    f0_tr = np.asarray(fam.apply(v, x), np.float64)
    f0_te = np.asarray(fam.apply(v, xt), np.float64)
    # the kernels of the linearised net = the net's NTK at W0 (family.state holds W0)
    net = make_family("nn", MODEL, k, 1, cfg)
    params0, base = v["state"]["anchor"], v["state"]["base"]
    f = lambda q, z: net.apply({"params": q, "state": base}, z)  # noqa: E731
    onehot = np.eye(k)[y]
    out = {"n_train": N, "n_test": len(xt), "steps": STEPS, "lr": LR, "model": MODEL}
    for name, axes in (("full", ()), ("traced", (-1,))):
        k_tt, k_te = empirical_ntk_fn(f, trace_axes=axes, tile_size=200).train_test(x, xt, params0)
        _, f_te = gradient_descent_xent(k_tt, onehot, k_te, f0_tr, f0_te, LR, STEPS)
        out[name] = {
            "test_acc": float(np.mean(np.argmax(f_te, -1) == yt) * 100),
            "max_abs_diff_vs_weights": float(np.abs(f_te - w_te).max()),
        }
    out["weights"] = {"test_acc": float(np.mean(np.argmax(w_te, -1) == yt) * 100)}
    out["max_abs_test_logit_weights"] = float(np.abs(w_te).max())
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["command"] = "python " + " ".join(sys.argv)
    print(json.dumps(out, indent=1))
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "trace_check.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

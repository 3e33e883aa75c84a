"""stage-2: background-vs-feature patch noise (hacked generator)."""
import sys, time, dataclasses, json, jax, jax.numpy as jnp, numpy as np
from ntk_vs_nn.experiments import multiview as mv
import importlib.util
ORIG = mv.sample
spec = importlib.util.spec_from_file_location("s1", "/tmp/mv/s1.py"); s1 = importlib.util.module_from_spec(spec); spec.loader.exec_module(s1)

def sample2_orig(key, cfg, feats, n, mu, bg, fg):
    c0 = dataclasses.replace(cfg, sigma_p=0.0)
    out = ORIG(key, c0, feats, n, mu)
    mask = (jnp.linalg.norm(out["x"], axis=2) > 0)[..., None]
    noise = jax.random.normal(jax.random.fold_in(key, 99), out["x"].shape) / np.sqrt(cfg.d)
    out["x"] = out["x"] + noise * jnp.where(mask, fg, bg)
    return out

if __name__ == "__main__":
    base = dict(k=10, d=100, P=16, n_train=400, mu=0.1, m=4, rho=0.05, gamma=0.2, patches_per_feature=1, varrho=1.0, lr=1.0)
    grid = json.loads(sys.argv[1]); seeds = int(sys.argv[2]); ckpts = json.loads(sys.argv[3])
    for g in grid:
        g = dict(g); bg = g.pop("bg"); fg = g.pop("fg")
        cfg = mv.MultiViewConfig(**{**base, **g})
        mv.sample = (lambda orig: (lambda key, cfg, feats, n, mu: sample2_orig(key, cfg, feats, n, mu, bg, fg)))(None)
        t = time.perf_counter(); rows = s1.run(cfg, seeds, ckpts); dt = time.perf_counter() - t
        for c in ckpts:
            r = [x for x in rows if x["step"] == c]
            m = {k2: np.mean([x[k2] for x in r]) for k2 in ("both", "none", "e_mv", "e_sv", "err_mu", "train_acc", "vmax", "ratio")}
            print(json.dumps({**g, "bg": bg, "fg": fg}), c, " ".join(f"{k2}={v:.3f}" for k2, v in m.items()), f"t={dt:.0f}s", flush=True)

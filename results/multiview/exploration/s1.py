"""stage-1 search: single-model lottery vs sigma0, varrho, q, lr, N (checkpoints along training)."""
import sys, time, dataclasses, itertools, json, jax, jax.numpy as jnp, numpy as np
from ntk_vs_nn.experiments import multiview as mv

def run(cfg, seeds, ckpts, key=0):
    kf, ktr, kte = (jax.random.fold_in(jax.random.key(key), i) for i in range(3))
    feats = mv.make_features(kf, cfg)
    tr = mv.sample(ktr, cfg, feats, cfg.n_train, cfg.mu)
    te = mv.sample(kte, cfg, feats, 2000, cfg.mu)
    rows = []
    for s in range(seeds):
        W = mv.init(jax.random.fold_in(jax.random.key(100), s), cfg)
        done = 0
        for c in ckpts:
            W = mv._gd(W, tr["x"], tr["y"], None, 0.0, 1.0, dataclasses.replace(cfg, steps=c - done)); done = c
            v, _ = mv.learned_views(W, feats); v = np.asarray(v)
            both = float(np.mean(v.min(1) > cfg.varrho * cfg.patches_per_feature / cfg.own_low))
            lo = float(np.mean(v.max(1) < 0.5))  # classes with no view above 0.5
            pr = np.asarray(jnp.argmax(mv.logits(W, te["x"], cfg), 1)); y = np.asarray(te["y"]); sv = np.asarray(te["is_single_view"])
            trp = np.asarray(jnp.argmax(mv.logits(W, tr["x"], cfg), 1)); tracc = float(np.mean(trp == np.asarray(tr["y"])))
            e_mv = float(np.mean(pr[~sv] != y[~sv])); e_sv = float(np.mean(pr[sv] != y[sv]))
            err_mu = ((1 - cfg.mu) * e_mv + cfg.mu * e_sv) / cfg.mu
            rows.append(dict(seed=s, step=c, both=both, none=lo, e_mv=e_mv, e_sv=e_sv, err_mu=err_mu, train_acc=tracc,
                             vmax=float(v.max()), vmin_of_max=float(v.max(1).min()), ratio=float(np.median(v.min(1) / v.max(1)))))
    return rows

if __name__ == "__main__":
    base = dict(k=10, d=100, P=16, n_train=1000, m=4, rho=0.05, gamma=0.2)
    grid = json.loads(sys.argv[1]); seeds = int(sys.argv[2]); ckpts = json.loads(sys.argv[3])
    for g in grid:
        cfg = mv.MultiViewConfig(**{**base, **g})
        t = time.perf_counter(); rows = run(cfg, seeds, ckpts); dt = time.perf_counter() - t
        for c in ckpts:
            r = [x for x in rows if x["step"] == c]
            m = {k2: np.mean([x[k2] for x in r]) for k2 in ("both", "none", "e_mv", "e_sv", "err_mu", "train_acc", "vmax", "ratio")}
            print(json.dumps(g), c, " ".join(f"{k2}={v:.3f}" for k2, v in m.items()), f"t={dt:.0f}s", flush=True)

"""stage-3: singles, ensemble, KD (alpha, tau grid), SD on one config (hacked bg/fg noise generator)."""
import sys, time, dataclasses, json, jax, jax.numpy as jnp, numpy as np
from ntk_vs_nn.experiments import multiview as mv
import importlib.util
spec = importlib.util.spec_from_file_location("s2", "/tmp/mv/s2.py"); s2 = importlib.util.module_from_spec(spec); spec.loader.exec_module(s2)

def ev(Lg, te, mu):
    pr = np.asarray(jnp.argmax(Lg, 1)); y = np.asarray(te["y"]); sv = np.asarray(te["is_single_view"])
    e_mv = float(np.mean(pr[~sv] != y[~sv])); e_sv = float(np.mean(pr[sv] != y[sv]))
    return ((1 - mu) * e_mv + mu * e_sv) / mu, e_mv, e_sv

def views(W, feats, cfg):
    v = np.asarray(mv.learned_views(W, feats)[0]); thr = cfg.varrho * cfg.patches_per_feature / cfg.own_low
    return float(np.mean(v.min(1) > thr)), float(np.mean(v.max(1) < thr))

if __name__ == "__main__":
    base = dict(k=10, d=100, P=16, n_train=400, mu=0.1, m=4, rho=0.05, gamma=0.4, patches_per_feature=1, varrho=4.0, lr=8.0, sigma0=0.04, n_other=4, steps=1500)
    g = json.loads(sys.argv[1]); L = int(sys.argv[2]); kds = json.loads(sys.argv[3])
    bg = g.pop("bg", 1.5); fg = g.pop("fg", 0.2)
    cfg = mv.MultiViewConfig(**{**base, **g})
    smp = lambda key, n, mu: s2.sample2_orig(key, cfg, feats, n, mu, bg, fg)
    kf, ktr, kte = (jax.random.fold_in(jax.random.key(0), i) for i in range(3))
    feats = mv.make_features(kf, cfg); tr = smp(ktr, cfg.n_train, cfg.mu); te = smp(kte, 4000, cfg.mu)
    t0 = time.perf_counter()
    Ws = [mv._gd(mv.init(jax.random.fold_in(jax.random.key(100), s), cfg), tr["x"], tr["y"], None, 0.0, 1.0, cfg) for s in range(L)]
    tl = [mv.logits(W, te["x"], cfg) for W in Ws]; trl = [mv.logits(W, tr["x"], cfg) for W in Ws]
    r = [ev(x, te, cfg.mu) for x in tl]; vw = [views(W, feats, cfg) for W in Ws]
    print(json.dumps(g), f"bg={bg} fg={fg}", "single err_mu", " ".join(f"{x[0]:.3f}" for x in r), f"mean={np.mean([x[0] for x in r]):.3f}",
          "both", np.mean([x[0] for x in vw]), "none", np.mean([x[1] for x in vw]), f"t={time.perf_counter()-t0:.0f}s", flush=True)
    print("  ensemble err_mu=%.3f e_mv=%.3f e_sv=%.3f" % ev(sum(tl) / L, te, cfg.mu), "train-logit mean/max", float(jnp.mean(sum(trl) / L)), float(jnp.max(sum(trl) / L)), flush=True)
    T = sum(trl) / L
    for a, tau in kds:
        W = mv._gd(mv.init(jax.random.key(7), cfg), tr["x"], tr["y"], T, a, tau, cfg)
        print(f"  KD a={a} tau={tau}: err_mu=%.3f e_mv=%.3f e_sv=%.3f" % ev(mv.logits(W, te["x"], cfg), te, cfg.mu), "both/none", views(W, feats, cfg), flush=True)
        sds = []
        for i in range(2):
            W = mv._gd(mv.init(jax.random.key(70 + i), cfg), tr["x"], tr["y"], trl[i], a, tau, cfg)
            sds.append((ev(mv.logits(W, te["x"], cfg), te, cfg.mu), views(W, feats, cfg)))
        print(f"  SD a={a} tau={tau}:", " | ".join("err_mu=%.3f both=%.2f" % (e[0][0], e[1][0]) for e in sds), flush=True)

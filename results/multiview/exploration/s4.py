"""stage-4 (new module): singles, ensemble, KD/SD with kl vs one_sided losses."""
import sys, time, dataclasses, json, jax, jax.numpy as jnp, numpy as np
from ntk_vs_nn.experiments import multiview as mv
def ev(Lg, te, mu):
    pr = np.asarray(jnp.argmax(Lg, 1)); y = np.asarray(te["y"]); sv = np.asarray(te["is_single_view"])
    e_mv = float(np.mean(pr[~sv] != y[~sv])); e_sv = float(np.mean(pr[sv] != y[sv]))
    return ((1 - mu) * e_mv + mu * e_sv) / mu
def views(W, feats, cfg):
    v = np.asarray(mv.learned_views(W, feats)[0]); thr = mv.view_threshold(cfg)
    return float(np.mean(v.min(1) > thr))
g = json.loads(sys.argv[1]); L = int(sys.argv[2]); kds = json.loads(sys.argv[3]); fam = sys.argv[4] if len(sys.argv) > 4 else "nn"
cfg = mv.MultiViewConfig(**g)
kf, ktr, kte = (jax.random.fold_in(jax.random.key(0), i) for i in range(3))
feats = mv.make_features(kf, cfg); tr = mv.sample(ktr, cfg, feats, cfg.n_train, cfg.mu); te = mv.sample(kte, cfg, feats, cfg.n_test, cfg.mu)
t0 = time.perf_counter()
ms = [mv.fit(fam, jax.random.fold_in(jax.random.key(100), s), cfg, tr["x"], tr["y"]) for s in range(L)]
tl = [mv.predict(fam, m, te["x"], cfg) for m in ms]; trl = [mv.predict(fam, m, tr["x"], cfg) for m in ms]
vb = [views(m[0], feats, cfg) for m in ms] if fam != "gp" else [float("nan")]
print(json.dumps(g), fam, "single", " ".join(f"{ev(x, te, cfg.mu):.3f}" for x in tl), f"mean={np.mean([ev(x, te, cfg.mu) for x in tl]):.3f} both={np.mean(vb):.2f} ens={ev(sum(tl)/L, te, cfg.mu):.3f} tracc={np.mean([float(jnp.mean(jnp.argmax(x,1)==tr['y'])) for x in trl]):.3f} t={time.perf_counter()-t0:.0f}s", flush=True)
T = sum(trl) / L
for a, tau in kds:
    t0 = time.perf_counter()
    m = mv.fit(fam, jax.random.key(7), cfg, tr["x"], tr["y"], T, a, tau)
    sd = [mv.fit(fam, jax.random.key(70 + i), cfg, tr["x"], tr["y"], trl[i], a, tau) for i in range(2)]
    print(f"  a={a} tau={tau}: KD={ev(mv.predict(fam, m, te['x'], cfg), te, cfg.mu):.3f}", f"both={views(m[0], feats, cfg) if fam != 'gp' else float('nan'):.2f}",
          "SD", " ".join(f"{ev(mv.predict(fam, s, te['x'], cfg), te, cfg.mu):.3f}/b{views(s[0], feats, cfg) if fam != 'gp' else float('nan'):.2f}" for s in sd), f"t={time.perf_counter()-t0:.0f}s", flush=True)

import sys, json, jax, jax.numpy as jnp, numpy as np, dataclasses
from ntk_vs_nn.experiments import multiview as mv
g = json.loads(sys.argv[1]); cfg = mv.MultiViewConfig(**g)
kf, ktr, kte = (jax.random.fold_in(jax.random.key(0), i) for i in range(3))
feats = mv.make_features(kf, cfg); tr = mv.sample(ktr, cfg, feats, cfg.n_train, cfg.mu)
W = mv.init(jax.random.fold_in(jax.random.key(100), int(sys.argv[2])), cfg)
v0 = np.asarray(mv.learned_views(W, feats)[0]); print("init", np.round(v0.T, 3))
done = 0
y = np.asarray(tr["y"]); sv = np.asarray(tr["is_single_view"]); view = np.asarray(tr["view"])
for c in [50, 100, 150, 200, 300, 500, 1000, 1500]:
    W = mv._fit(W, None, tr["x"], tr["y"], None, 0.0, 1.0, jnp.float32(cfg.lr), "nn", cfg, c - done); done = c
    v = np.asarray(mv.learned_views(W, feats)[0]); pr = np.asarray(jnp.argmax(mv.logits(W, tr["x"], cfg), 1))
    print(c, "acc mv %.3f sv %.3f" % (np.mean(pr[~sv] == y[~sv]), np.mean(pr[sv] == y[sv])))
    print("   v1", " ".join(f"{a:6.2f}" for a in v[:, 0])); print("   v2", " ".join(f"{a:6.2f}" for a in v[:, 1]))
print("single-view train counts per (class, view):", [(j, int(np.sum((y == j) & sv & (view == 0))), int(np.sum((y == j) & sv & (view == 1)))) for j in range(cfg.k)])

"""The regime search behind ntk_vs_nn.experiments.multiview's defaults: one factor at a time around them.

Every row trains, for the nn learner on one data draw (seed 0), ``L`` single models, their ensemble,
one KD student and ``S`` SD students (ntk_vs_nn.experiments.multiview_report.run_family) and records the errors
in units of mu and the lottery (share of (model, class) pairs with both views / no view learned).

    .venv/bin/python results/multiview/search.py            # writes results/multiview/search.csv
    .venv/bin/python results/multiview/search.py --bench    # fori_loop vs Python loop, bench.json
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import pandas as pd

from ntk_vs_nn.experiments import multiview as mv
from ntk_vs_nn.experiments import multiview_report as mr

HERE = os.path.dirname(os.path.abspath(__file__))

# The previous defaults (PROTOCOLS §6 values at this file's small size): threshold at the init scale,
# uniform patch noise 1/sqrt(d), rho > Gamma, N mu / 2k = 2 leftovers per (class, view) only via mu.
OLD = dict(varrho=0.1, sigma0=0.1, lr=0.05, steps=2000, patches_per_feature=2, n_other=2, rho=0.1, gamma=0.05)
OLD.update(noise=1.0, feature_noise=1.0, mu=0.2, n_train=2000)

ROWS = [  # (stage, overrides, KD/SD variants (alpha, tau) run on the same singles)
    ("chosen", {}, [(0.5, 4.0), (0.5, 10.0), (0.9, 4.0), (1.0, 10.0)]),
    ("old defaults", OLD, [(0.5, 4.0)]),
    ("init/threshold", {"varrho": 1.0, "sigma0": 0.01, "lr": 2.0}, [(0.5, 4.0)]),
    ("init/threshold", {"sigma0": 0.4}, [(0.5, 4.0)]),
    ("leftovers", {"mu": 0.1}, [(0.5, 4.0)]),
    ("leftovers", {"mu": 0.2}, [(0.5, 4.0)]),
    ("leftovers", {"n_train": 2000, "mu": 0.2}, [(0.5, 4.0)]),
    ("noise", {"noise": 1.0, "feature_noise": 1.0}, [(0.5, 4.0)]),
    ("noise", {"noise": 0.5, "feature_noise": 0.5}, [(0.5, 4.0)]),
    ("noise", {"noise": 2.5}, [(0.5, 4.0)]),
    ("weights", {"rho": 0.2, "gamma": 0.05}, [(0.5, 4.0)]),
    ("weights", {"n_other": 2}, [(0.5, 4.0)]),
    ("weights", {"patches_per_feature": 2}, [(0.5, 4.0)]),
    ("learner", {"m": 2}, [(0.5, 4.0)]),
    ("learner", {"m": 8}, [(0.5, 4.0)]),
    ("learner", {"q": 4, "sigma0": 0.4}, [(0.5, 4.0)]),
    ("init/threshold", {"sigma0": 0.1}, [(0.5, 4.0)]),
    ("init/threshold", {"sigma0": 0.2}, [(0.5, 4.0)]),
]


def lottery(views: pd.DataFrame, protocol: str) -> tuple[float, float]:
    v = views[views.protocol == protocol]
    return float((v.learned == "1+2").mean()), float((v.learned == "-").mean())


def run_row(stage, over, variants, L, S):
    cfg = dataclasses.replace(mv.MultiViewConfig(), n_test=4000, **over)
    cfg.check()
    data = mr.draw_data(cfg, 0)
    out = []
    t0 = time.perf_counter()
    spec = mr.RunSpec(kd_alpha=variants[0][0], kd_tau=variants[0][1])
    res = mr.run_family("nn", cfg, spec, data, L, S)
    for a, tau in variants:
        if (a, tau) != variants[0]:  # the same singles, new students
            spec = mr.RunSpec(kd_alpha=a, kd_tau=tau)
            res = _students(cfg, spec, data, res, L, S)
        models, views = pd.DataFrame(res["models"]), pd.DataFrame(res["views"])
        agg = mr.aggregate(models).set_index("protocol")
        row = {"stage": stage, "overrides": json.dumps(over), "kd_alpha": a, "kd_tau": tau, "L": L, "S": S}
        for p in mr.PROTOCOLS:
            row[f"{p}_mu"] = round(float(agg.loc[p, "error_mu"]), 4)
            row[f"{p}_se"] = round(float(agg.loc[p, "error_mu_se"]), 4)
        row["single_err_mv_pct"] = round(float(agg.loc["single", "err_mv_pct"]), 2)
        for p in ("single", "kd", "sd"):
            both, none = lottery(views, p)
            row[f"{p}_both"], row[f"{p}_none"] = round(both, 3), round(none, 3)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def _students(cfg, spec, data, res, L, S):
    """KD and SD students of new (alpha, tau) on the singles already in ``res``."""
    from ntk_vs_nn.engine import rng

    root, tr, te = rng.root_key(spec.seed), data["train"], data["test"]
    keep_m = [r for r in res["models"] if r["protocol"] in ("single", "ensemble")]
    keep_v = [r for r in res["views"] if r["protocol"] == "single"]
    singles = [mv.fit("nn", rng.member_key(root, "init", i), cfg, tr["x"], tr["y"]) for i in range(L)]
    logits = [mv.predict("nn", m, tr["x"], cfg) for m in singles]
    for protocol, i, teacher in [("kd", 0, sum(logits) / L)] + [("sd", i, logits[i]) for i in range(S)]:
        stream = "kd" if protocol == "kd" else "sd"
        m = mv.fit("nn", rng.member_key(root, stream, i), cfg, tr["x"], tr["y"], teacher, spec.kd_alpha, spec.kd_tau)
        member = -1 if protocol == "kd" else i
        err = mr._error_row(mv.predict("nn", m, te["x"], cfg), te, cfg.mu)
        keep_m.append({"family": "nn", "protocol": protocol, "member": member, "seconds": 0.0, **err})
        keep_v.extend(mr._view_rows("nn", protocol, member, m[0], data["features"], cfg))
    return {"models": keep_m, "views": keep_v}


def bench(steps=300):
    """Seconds per GD step at the default config: one jitted fori_loop vs a Python loop of jitted steps."""
    cfg = mv.MultiViewConfig()
    data = mr.draw_data(cfg, 0)
    x, y = data["train"]["x"], data["train"]["y"]
    lcfg = mv.learner_config(cfg)
    W0 = mv.init(jax.random.key(1), cfg)
    lr = jnp.float32(cfg.lr)

    @jax.jit
    def step(W):
        return W - lr * jax.grad(mv._family_loss)(W, None, x, y, None, 0.0, 1.0, "nn", lcfg)

    jax.block_until_ready(mv._fit(W0, None, x, y, None, 0.0, 1.0, lr, "nn", lcfg, steps))  # compile
    jax.block_until_ready(step(W0))
    out = {}
    for name in ("fori_loop", "python_loop", "fori_loop_again"):
        t = time.perf_counter()
        if name.startswith("fori"):
            jax.block_until_ready(mv._fit(W0, None, x, y, None, 0.0, 1.0, lr, "nn", lcfg, steps))
        else:
            W = W0
            for _ in range(steps):
                W = step(W)
            jax.block_until_ready(W)
        out[name] = round((time.perf_counter() - t) / steps * 1e3, 3)
    out.update(unit="ms per step", steps=steps, n_train=cfg.n_train, load_avg=os.getloadavg()[0])
    with open(os.path.join(HERE, "bench.json"), "w") as f:
        json.dump(out, f, indent=1)
    print(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--rows", default="", help="comma-separated row indices (default all)")
    ap.add_argument("-L", type=int, default=5)
    ap.add_argument("-S", type=int, default=2)
    args = ap.parse_args()
    if args.bench:
        bench()
        sys.exit(0)
    idx = [int(i) for i in args.rows.split(",")] if args.rows else range(len(ROWS))
    path = os.path.join(HERE, "search.csv")
    # --rows appends to (and replaces matching rows of) an existing search.csv; its '#' lines are commands
    old, cmds = pd.DataFrame(), []
    if args.rows and os.path.exists(path):
        with open(path) as f:
            cmds = [line.rstrip("\n") for line in f if line.startswith("#")]
        old = pd.read_csv(path, comment="#")
    cmds.append("# made by: .venv/bin/python results/multiview/search.py " + " ".join(sys.argv[1:]))
    rows = []
    for i in idx:
        stage, over, variants = ROWS[i]
        L = 3 if over.get("n_train", 0) >= 2000 else args.L  # the N = 2000 rows cost 5x per step
        rows += run_row(stage, over, variants, L, args.S)
        new = pd.DataFrame(rows)
        keys = ["stage", "overrides", "kd_alpha", "kd_tau"]
        both = pd.concat([old, new], ignore_index=True).drop_duplicates(keys, keep="last") if len(old) else new
        with open(path, "w") as f:
            f.write("\n".join(c.strip() for c in cmds) + "\n" + both.to_csv(index=False))

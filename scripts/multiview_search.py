"""The regime search behind the multi-view experiment's defaults: one factor at a time around a base.

Every row trains, for the nn learner on one data draw (seed 0), ``L`` single models, their ensemble,
one KD student and ``S`` SD students per (alpha, tau) variant through the experiment itself
(`ntk_vs_nn.experiments.run_experiment("multiview", ...)` into one scratch store, so a rerun or a
variant reuses every model already trained), and records the errors in units of mu and the lottery
(share of (model, class) pairs with both views / no view learned). The search base is the defaults
with ``learner.sigma0 = 0.04`` (the defaults when the search was run; ``results/multiview/search.md``).

    .venv/bin/python scripts/multiview_search.py                 # writes results/multiview/search.csv
    .venv/bin/python scripts/multiview_search.py --rows 16,17    # replaces those rows
    .venv/bin/python scripts/multiview_search.py --bench         # the old GD loop vs the shared engine
    .venv/bin/python scripts/multiview_search.py --preset smoke --rows 0 -L 2 -S 1 --csv /tmp/s.csv  # seconds
    .venv/bin/python scripts/multiview_search.py --kernel-budget     # results/multiview-explore/kernel-budget/

``--kernel-budget`` is an exploratory search for the kernel rows' GD budget (seed 0 only; a confirmatory
run uses other seeds): one ntk and one gp single (single 0's init) at the default regime for every
(``learner.kernel_lr``, ``kernel_momentum``, ``kernel_steps``) of ``KERNEL_GRID``, through the experiment's
own trainer (`experiments.multiview._trainer`, `fit_one`): training accuracy and loss, multi- and
single-view test error, wall seconds (compilation included), and ``status`` = ``diverged`` where the
training loss is not finite.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import pandas as pd

from ntk_vs_nn.experiments import multiview as mv
from ntk_vs_nn.experiments import run_experiment
from ntk_vs_nn.report import multiview as report
from ntk_vs_nn.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {"sigma0": 0.04}  # the search base: the defaults of the time

# The previous defaults (PROTOCOLS §6 values at this search's small size): threshold at the init scale,
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
_SECTION = {f.name: "data" for f in dataclasses.fields(mv.MultiViewData)}
_SECTION.update({f.name: "learner" for f in dataclasses.fields(mv.LearnerSection)})


def sets(over: dict, preset: str, L: int, S: int, alpha: float, tau: float) -> list[str]:
    """The ``--set`` items of one row and variant (the base, then the row's flat overrides)."""
    items = [] if preset == "smoke" else [f"learner.{k}={v}" for k, v in BASE.items()]
    items += [f"{_SECTION[k]}.{k}={v}" for k, v in over.items()]
    return items + [f"protocol.seeds={L}", f"protocol.sd_students={S}", "protocol.families=nn", "sweep.mus=()",
                    f"protocol.kd_alpha={alpha}", f"protocol.kd_tau={tau}"]  # fmt: skip


def run_row(stage, over, variants, L, S, preset, store_dir):
    out = []
    for a, tau in variants:
        t0 = time.perf_counter()
        items = sets(over, preset, L, S, a, tau)
        run_experiment("multiview", preset, items, store_dir)
        cfg = mv.EXPERIMENT.configure(preset, items)
        done = Store(store_dir).done((cfg.science_hash(students=False), cfg.science_hash()))
        recs = [done[u] for u, *_ in mv.units(cfg, cfg.data.mu, ("nn",), L, S)]
        views = report.views_frame(recs, mv.view_threshold(cfg))
        agg = report.aggregate(report.models_frame(recs), cfg.data.mu, cfg.claim).set_index("protocol")
        row = {"stage": stage, "overrides": json.dumps(over), "kd_alpha": a, "kd_tau": tau, "L": L, "S": S}
        for p in report.PROTOCOLS:
            row[f"{p}_mu"] = round(float(agg.loc[p, "error_mu"]), 4)
            row[f"{p}_se"] = round(float(agg.loc[p, "error_mu_se"]), 4)
        row["single_err_mv_pct"] = round(float(agg.loc["single", "err_mv_pct"]), 2)
        for p in ("single", "kd", "sd"):
            v = views[views.protocol == p]
            row[f"{p}_both"], row[f"{p}_none"] = (
                round(float((v.learned == "1+2").mean()), 3),
                round(float((v.learned == "-").mean()), 3),
            )
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def _old_loop(commit: str):
    """The learner's own GD loop (``_fit``: one jitted ``lax.fori_loop``) as it was at ``commit``."""
    import importlib.util
    import subprocess
    import tempfile

    src = subprocess.run(["git", "show", f"{commit}:ntk_vs_nn/experiments/multiview.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    path = os.path.join(tempfile.mkdtemp(), "old_multiview.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("old_multiview", path)
    module = sys.modules["old_multiview"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(repeats: int = 3, commit: str = "5bd0065") -> dict:
    """Wall time of one model per family at the committed configuration (1,500 full-batch GD steps,
    the same init): the old loop against `fit_one` on the shared engine, interleaved, after a warm-up
    call of each (compilation excluded); the median of ``repeats`` calls. Writes bench.json."""
    import jax
    import numpy as np

    from ntk_vs_nn import rng
    from ntk_vs_nn.data.multiview import draw_data

    old, cfg = _old_loop(commit), mv.MultiViewConfig()
    ocfg = old.MultiViewConfig(**dataclasses.asdict(cfg.data), **dataclasses.asdict(cfg.learner))
    data = draw_data(cfg.data, cfg.protocol.seed)
    x, y = data["train"]["x"], data["train"]["y"]
    key, trainers = rng.member_key(rng.root_key(0), "init", 0), {}
    out = {"steps": cfg.learner.steps, "n_train": cfg.data.n_train, "commit_of_old_loop": commit, "families": {}}
    for fam in mv.FAMILIES:
        trainer = mv._trainer(fam, cfg, trainers)
        run_old = lambda: jax.block_until_ready(old.fit(fam, key, ocfg, x, y)[0])  # noqa: E731, B023
        run_new = lambda: jax.block_until_ready(jax.tree.leaves(mv.fit_one(trainer, key, x, y)[0]["params"])[0])  # noqa: E731, B023
        w_old, w_new = run_old(), run_new()  # warm-up: compile both
        times = {"old": [], "shared": []}
        for _ in range(repeats):
            for name, fn in (("old", run_old), ("shared", run_new)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        o, s = float(np.median(times["old"])), float(np.median(times["shared"]))
        diff = float(np.abs(np.asarray(w_old) - np.asarray(w_new)).max())
        out["families"][fam] = {"old_s": round(o, 3), "shared_s": round(s, 3), "ratio": round(s / o, 3),
                                "old_all_s": [round(t, 3) for t in times["old"]],
                                "shared_all_s": [round(t, 3) for t in times["shared"]],
                                "max_abs_param_diff": diff}  # fmt: skip
        print(fam, json.dumps(out["families"][fam]), flush=True)
    out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    out["cpu_count"] = os.cpu_count()
    with open(os.path.join(ROOT, "results", "multiview", "bench.json"), "w") as f:
        json.dump(out, f, indent=1)
    return out


KERNEL_GRID = {"kernel_lr": (1.0, 3.0, 6.0), "kernel_momentum": (0.0, 0.9, 0.99), "kernel_steps": (1500, 4000)}
KERNEL_OUT = os.path.join(ROOT, "results", "multiview-explore", "kernel-budget")


def kernel_budget(out_dir: str, preset: str = "default", seed: int = 0, grid: dict = KERNEL_GRID) -> pd.DataFrame:
    """One ntk and one gp single per grid point on data draw ``seed`` (init: single 0's): grid.csv in
    ``out_dir``, rewritten after every row (a cut-short run keeps what it measured)."""
    import itertools

    import numpy as np
    import optax

    from ntk_vs_nn import rng
    from ntk_vs_nn.data.multiview import draw_data

    os.makedirs(out_dir, exist_ok=True)
    base = mv.EXPERIMENT.configure(preset, [f"protocol.seed={seed}"])
    data = draw_data(base.data, seed)
    tr, te = data["train"], data["test"]
    key = rng.member_key(rng.root_key(seed), "init", 0)
    rows = []
    for lr, mom, steps in itertools.product(*grid.values()):
        items = [f"protocol.seed={seed}", f"learner.kernel_lr={lr}", f"learner.kernel_momentum={mom}",
                 f"learner.kernel_steps={steps}"]  # fmt: skip
        cfg = mv.EXPERIMENT.configure(preset, items)
        for fam in ("ntk", "gp"):
            trainer = mv._trainer(fam, cfg, {})
            model, secs = mv.fit_one(trainer, key, tr["x"], tr["y"])
            train, test = np.asarray(trainer.predict(model, tr["x"])), np.asarray(trainer.predict(model, te["x"]))
            loss = float(optax.softmax_cross_entropy_with_integer_labels(train, np.asarray(tr["y"])).mean())
            row = {"family": fam, "kernel_lr": lr, "kernel_momentum": mom, "kernel_steps": steps, "seed": seed,
                   "status": "ok" if np.isfinite(loss) and np.isfinite(test).all() else "diverged",
                   "seconds": round(secs, 2)}  # fmt: skip
            if row["status"] == "ok":
                err = report.error_row(test, te, cfg.data.mu)
                row.update(train_acc_pct=round(100 * float(np.mean(train.argmax(1) == np.asarray(tr["y"]))), 2),
                           train_loss=float(f"{loss:.4g}"), err_mv_pct=round(err["err_mv_pct"], 2),
                           err_sv_pct=round(err["err_sv_pct"], 2), error_mu=round(err["error_mu"], 4))  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            frame = pd.DataFrame(rows)
            frame.to_csv(os.path.join(out_dir, "grid.csv"), index=False)
    env = {"load_avg_1min_at_end": round(os.getloadavg()[0], 2), "cpu_count": os.cpu_count(), "preset": preset}
    with open(os.path.join(out_dir, "environment.json"), "w") as f:
        json.dump(env, f, indent=1)
    return frame


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", action="store_true", help="time the old GD loop against the shared engine")
    ap.add_argument("--kernel-budget", action="store_true", help="exploratory: the kernel rows' GD budget grid")
    ap.add_argument("--seed", type=int, default=0, help="--kernel-budget: the data draw and init (exploratory: 0)")
    ap.add_argument("--out", default=KERNEL_OUT, help="--kernel-budget: the output folder")
    ap.add_argument("--rows", default="", help="comma-separated row indices (default all)")
    ap.add_argument("-L", type=int, default=5)
    ap.add_argument("-S", type=int, default=2)
    ap.add_argument("--preset", default="default", choices=list(mv.PRESETS))
    ap.add_argument("--csv", default=os.path.join(ROOT, "results", "multiview", "search.csv"))
    ap.add_argument("--repeats", type=int, default=3, help="--bench: timed calls per path and family")
    ap.add_argument(
        "--commit", default="5bd0065", help="--bench: the commit whose experiments/multiview.py is the old loop"
    )
    ap.add_argument("--store", default=os.path.join(ROOT, "runs", "multiview-search"), help="scratch store")
    args = ap.parse_args(argv)
    if args.bench:
        bench(args.repeats, args.commit)
        return 0
    if args.kernel_budget:
        kernel_budget(args.out, args.preset, args.seed)
        return 0
    idx = [int(i) for i in args.rows.split(",")] if args.rows else range(len(ROWS))
    # --rows appends to (and replaces matching rows of) an existing csv; its '#' lines are commands
    old, cmds = pd.DataFrame(), []
    if args.rows and os.path.exists(args.csv):
        with open(args.csv) as f:
            cmds = [line.rstrip("\n") for line in f if line.startswith("#")]
        old = pd.read_csv(args.csv, comment="#")
    cmds.append(
        "# made by: .venv/bin/python scripts/multiview_search.py " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    rows = []
    for i in idx:
        stage, over, variants = ROWS[i]
        L = 3 if over.get("n_train", 0) >= 2000 else args.L  # the N = 2000 rows cost 5x per step
        rows += run_row(stage, over, variants, L, args.S, args.preset, args.store)
        new = pd.DataFrame(rows)
        keys = ["stage", "overrides", "kd_alpha", "kd_tau"]
        both = pd.concat([old, new], ignore_index=True).drop_duplicates(keys, keep="last") if len(old) else new
        with open(args.csv, "w") as f:
            f.write("\n".join(c.strip() for c in cmds) + "\n" + both.to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How far a distillation perturbation moves the teachers: for a finished `ntk-vs-nn run diversity`
store, load one seed's DE-M teachers and, for each perturbation kind and step, report on test images

  kl_own     mean KL(T_m(x) || T_m(x~)) of the teacher whose gradient made the step (ODS/ConfODS; all, Gaussian),
  moved %    how often that teacher's top-1 class changes,
  disagree % the members' mean pairwise top-1 disagreement on x~ (on x: the first line),
  pair_kl    their mean pairwise KL on x~,

with temperature 1 (the perturbation's own softmax uses the config's tau). Usage:

  python scripts/perturb_probe.py runs/diversity-diversity --eta 1/255 8/255 32/255 [--n 2000] [--seed 0]

Reads the store's config.json and the teachers' checkpoints; trains nothing, writes nothing.
"""

from __future__ import annotations

import argparse
import fractions
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ntk_vs_nn import experiments
from ntk_vs_nn.analysis import metrics
from ntk_vs_nn.data import load_dataset
from ntk_vs_nn.engine.perturb import choose_teacher, perturb, perturb_keys
from ntk_vs_nn.protocols import Row
from ntk_vs_nn.store import Store


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--eta", nargs="+", default=["1/255", "8/255"])
    ap.add_argument("--n", type=int, default=2000, help="test images used")
    ap.add_argument("--seed", type=int, default=0, help="replicate index")
    ap.add_argument("--family", default="nn")
    args = ap.parse_args(argv)

    _, cfg = experiments.load_config(args.out)
    rcfg = cfg.replicate_configs[args.seed]
    data = load_dataset(rcfg.dataset, rcfg.data, rcfg.run.seed)
    row = Row(args.family, rcfg.table.nn_models[0], rcfg, data, Store(args.out))
    teachers = row.teacher_variables(range(rcfg.protocol.members))
    apply = jax.jit(row.fam.apply)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *teachers)
    x = jnp.asarray(data.x_test[: args.n])
    scale, offset = data.pixels or (1.0, 0.0)
    clip = (0.0, 1.0) if data.pixels else None
    tau = rcfg.kd_tau_for(data.num_classes)
    clean = [np.asarray(apply(v, x)) for v in teachers]
    div = metrics.diversity(clean)
    out = [{"kind": "clean", "eta": 0.0, "disagree": div["disagreement"], "pair_kl": div["pairwise_kl"]}]
    for eta_s in args.eta:
        eta = float(fractions.Fraction(eta_s))
        for kind in ("gaussian", "ods", "confods"):
            moved_kl, moved_top, outs = [], [], [[] for _ in teachers]
            for b in range(0, args.n, 250):  # one teacher m per minibatch, as in training
                xb = x[b : b + 250]
                key = jax.random.fold_in(jax.random.key(args.seed), b)
                xt = perturb(kind, key, xb, row.fam.apply, stacked, tau=tau, eta=eta, scale=scale, offset=offset,
                             clip=clip)  # fmt: skip
                m = int(choose_teacher(perturb_keys(key)[0], len(teachers)))  # the teacher perturb used
                for i, v in enumerate(teachers):
                    outs[i].append(np.asarray(apply(v, xt)))
                for i in range(len(teachers)) if kind == "gaussian" else [m]:
                    f = metrics.fidelity(clean[i][b : b + 250], outs[i][-1])
                    moved_kl.append(f["kl_teacher"])
                    moved_top.append(100.0 - f["agreement"])
            div = metrics.diversity([np.concatenate(o) for o in outs])
            out.append({"kind": kind, "eta": eta_s, "kl_own": float(np.mean(moved_kl)),
                        "moved": float(np.mean(moved_top)), "disagree": div["disagreement"],
                        "pair_kl": div["pairwise_kl"]})  # fmt: skip
    n_t = len(teachers)
    print(f"{args.out}: seed {rcfg.run.seed}, {n_t} {args.family} teachers, {args.n} test images, tau {tau:g}")
    print("| kind | eta | KL(T_m(x) || T_m(x~)) | top-1 moved % | members' disagreement % | pairwise KL |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in out:
        kl = f"{r['kl_own']:.2e}" if "kl_own" in r else ""
        mv = f"{r['moved']:.2f}" if "moved" in r else ""
        print(f"| {r['kind']} | {r['eta']} | {kl} | {mv} | {r['disagree']:.2f} | {r['pair_kl']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

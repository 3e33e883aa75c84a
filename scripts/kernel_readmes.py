"""The kernel rows' generated READMEs (issue 30): every number in them is read from the runs' records and
CSVs, and tests/report/test_kernel_readmes.py regenerates them, so none can go stale.

  attribution ROOT [--run]   what message ① is for ntk: one small setting's kernel rows trained four
                             ways, and weight-space descent checked against the exact solve
  gd-table FOLDER ADAM       a kernel table by gradient descent (FOLDER) read beside the same table's
                             Adam-trained rows (ADAM): ①–③ under each, the units' train accuracies

attribution: ROOT holds one `ntk-vs-nn table ntk` run per variant, all of one setting (`SETTING`: MNIST-1D, 400
training points, 100 validation, 5,000 test, L = 5, K = S = 2, ntk and gp, R = 3):

  gd        weight-space gradient descent on the linearised model: the default (heavy ball 0.99, step
            6 / lambda_max, cosine, batch 128, 300 epochs for every unit, member-scaled train-sum)
  function  the same models solved in function space on the exact full NTK (n·k × n·k,
            `kernel.trace=false`): gradient flow on the squared error, stopped at the time chosen on
            validation (`kernel.solver=mse`, `kernel.steps=0`)
  adam      gd's budget (300 epochs, cosine) with Adam at peak lr 0.1: the recipe of the committed
            Adam-trained kernel rows
  shared    gd with `protocol.data_order=shared`: every single takes member 0's data order, the one
            the train-sum model's members see

    .venv/bin/python scripts/kernel_readmes.py attribution ROOT --run   # trains what is missing, then writes
    .venv/bin/python scripts/kernel_readmes.py attribution ROOT         # writes from the records alone

Writes ROOT/comparison.{md,csv} (function − gd, every protocol of ntk and gp, a paired-bootstrap
interval over test points, replicates and members), ROOT/attribution.{md,csv} (message ①'s two
comparisons under each variant, from each variant's messages.csv, with the units' train accuracies)
and ROOT/README.md. Every number in them is read from the variants' records and CSVs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

import pandas as pd

from ntk_vs_nn.analysis import bootstrap as bs
from ntk_vs_nn.analysis import intervals
from ntk_vs_nn.analysis.tables import group
from ntk_vs_nn.experiments import load_config
from ntk_vs_nn.store import Store

SETTING = (
    "--preset quick --set data.n_train=500 --set data.val_fraction=0.2 --set data.n_test=5000 "
    "--set protocol.members=5 --set protocol.kd_students=2 --set protocol.sd_students=2 "
    "--set protocol.kd_inputs=clean --set table.ntk_families=ntk,gp --set run.replicates=3 --set run.progress=false"
)
VARIANTS = {  # name: (flags beyond SETTING, what it is)
    "gd": ("", "gradient descent (default)"),
    "function": ("--set kernel.backend=function --set kernel.trace=false", "exact solve (full NTK, function space)"),
    "adam": (
        "--set kernel.optimizer=adam --set kernel.weights_lr_units=absolute --set kernel.weights_lr=0.1",
        "Adam (peak lr 0.1)",
    ),
    "shared": ("--set protocol.data_order=shared", "gradient descent, one data order"),
}
FAMILIES = ("ntk", "gp")
PROTOCOLS = ("single", "ensemble", "train_sum", "kd", "sd")
TOLERANCE = 1.0  # points: the two backends agree in a cell when its whole interval lies within ±1


def command(root: str, name: str) -> str:
    return f"ntk-vs-nn table ntk {SETTING} {VARIANTS[name][0]} --out {os.path.join(root, name)}".replace("  ", " ")


def run_missing(root: str) -> None:
    """Runs every variant (the store resumes: finished units are not trained again)."""
    exe = os.path.join(os.path.dirname(sys.executable), "ntk-vs-nn")
    for name in VARIANTS:
        argv = shlex.split(command(root, name))
        subprocess.run([exe, *argv[1:]], check=True)


def _groups(folder: str) -> dict:
    """{(family, protocol): per-replicate (members, n_test) correctness} of one variant's run."""
    _, cfg = load_config(folder)
    reps = [c.science_hashes() for c in cfg.replicate_configs]
    by = group(Store(folder).records(), reps)
    out = {}
    for fam in FAMILIES:
        groups, _ = intervals.row_groups(by, fam, cfg.table.ntk_models[0], PROTOCOLS)
        out.update({(fam, p): g for p, g in groups.items()})
    return out


def _verdict(lo: float, hi: float) -> str:
    if -TOLERANCE <= lo and hi <= TOLERANCE:
        return "agree"
    return "differ" if lo > TOLERANCE or hi < -TOLERANCE else "unclear"


def comparison(root: str, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """function − gd per (family, protocol): the mean accuracy (single: also the best member), with a
    bootstrap interval paired over test points, replicates and members (the two backends share the seeds:
    member i of one is member i of the other, `bootstrap(tied=...)`)."""
    w, f = _groups(os.path.join(root, "gd")), _groups(os.path.join(root, "function"))
    rows = []
    for fam in FAMILIES:
        both = [p for p in PROTOCOLS if (fam, p) in w and (fam, p) in f]
        groups = {f"{side}:{p}": g[(fam, p)] for side, g in (("w", w), ("f", f)) for p in both}
        draws = bs.bootstrap(groups, n_boot, seed, tied={f"f:{p}": f"w:{p}" for p in both})
        for p in both:
            for stat in ("mean", "best") if p == "single" else ("mean",):
                pick = lambda g, side, p=p, stat=stat: getattr(g[f"{side}:{p}"], stat)  # noqa: E731
                c = bs.compare(draws, lambda g: pick(g, "f") - pick(g, "w"))
                rows.append(dict(
                    family=fam, protocol=p, statistic=stat, gd=pick(draws.point, "w"), function=pick(draws.point, "f"),
                    d=c.d, ci_low=c.lo, ci_high=c.hi, verdict=_verdict(c.lo, c.hi),
                ))  # fmt: skip
    return pd.DataFrame(rows)


def attribution(root: str) -> pd.DataFrame:
    """Message ①'s comparisons under each variant (its messages.csv), with its units' train accuracies."""
    rows = []
    for name, (_, label) in VARIANTS.items():
        folder = os.path.join(root, name)
        msgs = pd.read_csv(os.path.join(folder, "messages.csv"))
        table = pd.read_csv(os.path.join(folder, "table_ntk.csv")).set_index(["family", "protocol"])
        cell = lambda fam, p, col="acc_mean": table.loc[(fam, p), col]  # noqa: E731
        for fam in FAMILIES:
            one = msgs[(msgs["message"] == 1) & (msgs["family"] == fam)].set_index("comparison")
            for comp in ("train-sum - ens", "ens - single-best"):
                r = one.loc[comp]
                rows.append(dict(
                    variant=name, training=label, family=fam, comparison=comp, d=r["d"], ci_low=r["ci_low"],
                    ci_high=r["ci_high"], verdict=r["verdict"], single=cell(fam, "single"),
                    ensemble=cell(fam, "ensemble"), train_sum=cell(fam, "train_sum"),
                    train_acc_single=cell(fam, "single", "train_acc_mean"),
                    train_acc_sum=cell(fam, "train_sum", "train_acc_mean"),
                    state_flags="" if pd.isna(r["state_flags"]) else r["state_flags"],
                ))  # fmt: skip
    return pd.DataFrame(rows)


def _ci(r) -> str:
    return f"{r['d']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"


def _table(columns: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def comparison_md(df: pd.DataFrame) -> str:
    cols = ["family", "protocol", "statistic", "gd", "function", "function − gd [95 % CI]", "within ±1"]
    return _table(cols, [[r["family"], r["protocol"], r["statistic"], f"{r['gd']:.2f}", f"{r['function']:.2f}",
                          _ci(r), r["verdict"]] for _, r in df.iterrows()])  # fmt: skip


def attribution_md(df: pd.DataFrame) -> str:
    cols = ["family", "training", "comparison", "d [95 % CI]", "verdict", "single", "ensemble", "train-sum",
            "train acc single / sum"]  # fmt: skip
    return _table(cols, [[r["family"], r["training"], r["comparison"], _ci(r), r["verdict"], f"{r['single']:.2f}",
                          f"{r['ensemble']:.2f}", f"{r['train_sum']:.2f}",
                          f"{r['train_acc_single']:.1f} / {r['train_acc_sum']:.1f}"]
                         for _, r in df.iterrows()])  # fmt: skip


def _reading(cmp: pd.DataFrame, att: pd.DataFrame) -> str:
    """The README's reading: sentences whose every number is read from the two tables."""
    one = att[(att["family"] == "ntk") & (att["comparison"] == "train-sum - ens")].set_index("variant")
    parts = [f"{VARIANTS[v][1]} {_ci(r)} ({r['verdict']})" for v, r in one.iterrows()]
    signs = {v: ("train-sum above" if r["ci_low"] > 0 else "ensemble above" if r["ci_high"] < 0 else "undecided")
             for v, r in one.iterrows()}  # fmt: skip
    out = ["- **① for ntk, train-sum − ensemble, by training:** " + "; ".join(parts) + "."]
    same = len(set(signs.values())) == 1
    out.append(
        "- The sign is the same under every training"
        + (f" ({next(iter(signs.values()))}): it is not the optimiser's, the data order's nor the solver's doing."
           if same else "; it differs: " + ", ".join(f"{v}: {s}" for v, s in signs.items()) + ".")
    )  # fmt: skip
    counts = cmp["verdict"].value_counts()
    n = {v: int(counts.get(v, 0)) for v in ("agree", "differ", "unclear")}
    line = (f"- Weights vs function space, {len(cmp)} cells: {n['agree']} agree within ±{TOLERANCE:g} point (the "
            f"whole interval inside), {n['differ']} differ by more (the whole interval outside), {n['unclear']} are "
            "unclear.")  # fmt: skip
    if n["agree"] < len(cmp):
        worst = cmp.loc[cmp["d"].abs().idxmax()]
        line += (
            f" The largest gap: {worst['family']} {worst['protocol']} {worst['statistic']}, {_ci(worst)}. The two are "
            "not one estimator: weight-space descent minimises the cross-entropy with mini-batches to a fixed "
            "budget, the function-space solve the squared error (KD and SD: to the softened teacher's "
            "probabilities) and stops where its validation accuracy peaks."
        )
    out.append(line)
    gd, fn = one.loc["gd"], one.loc["function"]
    out.append(
        f"- ① itself does not hang on the backend: train-sum − ensemble for ntk is {_ci(gd)} by weight-space descent "
        f"and {_ci(fn)} by the exact solve, each backend's train-sum and ensemble moving together."
    )
    return "\n".join(out) + "\n"


def readme(root: str, cmp: pd.DataFrame, att: pd.DataFrame) -> str:
    cmds = "\n".join(command(root, name) for name in VARIANTS)
    return (
        "# Message ① for ntk, attributed: gradient descent, Adam, one data order and the exact solve\n\n"
        "One small MNIST-1D setting (400 training points, 100 validation, 5,000 test; ResNet-10-1; L = 5,\n"
        "K = S = 2; ntk and gp; 3 replicates) in which the full NTK (4,000 × 4,000) fits, trained four\n"
        "ways. Made by `scripts/kernel_readmes.py attribution` (its docstring says what each variant is):\n\n"
        f"```bash\n{cmds}\n.venv/bin/python scripts/kernel_readmes.py attribution {root}\n```\n\n"
        "`attribution.md`: message ①'s two comparisons under each training, from each folder's\n"
        "`messages.csv`. `comparison.md`: the function-space solve against weight-space descent, cell by\n"
        "cell, with a paired-bootstrap interval (test points, replicates, members). Every number below is\n"
        "read from them by the script (`tests/report/test_kernel_readmes.py` regenerates this file).\n\n"
        "## Reading\n\n" + _reading(cmp, att) + "\n## ① under each training\n\n" + attribution_md(att)
        + "\n## Function space − weight space\n\n" + comparison_md(cmp)
    )  # fmt: skip


def write(root: str) -> dict[str, str]:
    """The generated files of ROOT: {name: text}."""
    cmp, att = comparison(root), attribution(root)
    return {
        "comparison.csv": cmp.to_csv(index=False),
        "comparison.md": comparison_md(cmp),
        "attribution.csv": att.to_csv(index=False),
        "attribution.md": attribution_md(att),
        "README.md": readme(root, cmp, att),
    }


# -- gd-table: a kernel table by gradient descent beside its Adam-trained rows ----------------------------
GD_ROWS = (
    (1, "ens - single-best"), (1, "train-sum - ens"), (2, "(ens - best)/2 - (KD - best)"),
    (2, "(ens - mean)/2 - (KD - mean)"), (3, "best - SD"), (3, "mean - SD"),
)  # fmt: skip
CIRCLED = "①②③"


def gd_vs_adam(gd: str, adam: str) -> pd.DataFrame:
    """①–③'s comparisons for ntk and gp in the two folders' messages.csv, side by side."""
    g, a = (pd.read_csv(os.path.join(f, "messages.csv")).set_index(["family", "comparison"]) for f in (gd, adam))
    rows = []
    for msg, comp in GD_ROWS:
        for fam in FAMILIES:
            r, q = g.loc[(fam, comp)], a.loc[(fam, comp)]
            rows.append(dict(
                message=msg, family=fam, comparison=comp, gd=_ci(r), gd_verdict=r["verdict"],
                gd_message=r["message_verdict"], gd_state_flags="" if pd.isna(r["state_flags"]) else r["state_flags"],
                adam=_ci(q), adam_verdict=q["verdict"], adam_message=q["message_verdict"],
                vs_cifar10=r.get("vs_cifar10", ""), paper_lo=r.get("paper_cifar10_lo"),
                paper_hi=r.get("paper_cifar10_hi"),
            ))  # fmt: skip
    return pd.DataFrame(rows)


def train_accuracies(folder: str) -> pd.DataFrame:
    """Train accuracy (%) of every finished unit, min and max by family and protocol."""
    recs = [r for r in Store(folder).records() if r["status"] == "ok" and "train_acc" in r["metrics"]]
    df = pd.DataFrame([dict(family=r["family"], protocol=r["protocol"], acc=r["metrics"]["train_acc"]) for r in recs])
    return df.groupby(["family", "protocol"])["acc"].agg(["min", "max"])


BUDGET = "results/quick-mnist1d/budget/kernel-gd"  # where the quick preset's kernel budget was measured


def gd_readme(gd: str, adam: str, budget: str = BUDGET) -> str:
    """The README of the gradient-descent kernel table ``gd`` beside ``adam``; ``budget``: the folder whose
    measurements chose its kernel budget."""
    _, cfg = load_config(gd)
    k, p = cfg.kernel, cfg.protocol
    reps = cfg.run.replicates
    seeds = ", ".join(str(cfg.run.seed + r) for r in range(reps))
    cmp = gd_vs_adam(gd, adam)
    cols = ["#", "family", "comparison", "d [95 % CI], GD", "verdict", "message", "d [95 % CI], Adam", "verdict",
            "message"]  # fmt: skip
    table = _table(cols, [[CIRCLED[r["message"] - 1], r["family"], r["comparison"], r["gd"], r["gd_verdict"],
                           f"**{r['gd_message']}**", r["adam"], r["adam_verdict"], r["adam_message"]]
                          for _, r in cmp.iterrows()])  # fmt: skip
    acc = train_accuracies(gd)
    prot = ("single", "train_sum", "kd", "sd")
    span = lambda fam, q: f"{acc.loc[(fam, q), 'min']:.2f}–{acc.loc[(fam, q), 'max']:.2f}"  # noqa: E731
    accs = _table(["family", *prot], [[fam] + [span(fam, q) if (fam, q) in acc.index else "–" for q in prot]
                                      for fam in FAMILIES])  # fmt: skip
    primary = ("ens - single-best", "train-sum - ens", "(ens - best)/2 - (KD - best)", "best - SD")
    by = cmp.set_index(["family", "comparison"])
    one = by.loc[("ntk", "train-sum - ens")]
    heads = primary[:1] + primary[2:]  # one comparison per message (its verdict is the message's)
    verdicts = lambda fam, which: ", ".join(  # noqa: E731
        f"{CIRCLED[m - 1]} {by.loc[(fam, c), which]}" for m, c in GD_ROWS if c in heads)  # fmt: skip
    flags = "no unequal states on it" if not one["gd_state_flags"] else f"it is flagged: {one['gd_state_flags']}"
    paper = (f"; against the paper's CIFAR-10 NTK rows ({one['paper_lo']:+.2f} to {one['paper_hi']:+.2f}) it is "
             f"{one['vs_cifar10']}" if isinstance(one["vs_cifar10"], str) and one["vs_cifar10"] else "")  # fmt: skip
    flagged = cmp[cmp["comparison"].isin(primary) & (cmp["gd_state_flags"] != "")]
    reading = [
        f"- **① for ntk under gradient descent: train-sum − ensemble = {one['gd']} ({one['gd_verdict']})**; "
        f"under Adam {one['adam']} ({one['adam_verdict']}). messages.md reports {flags}{paper}.",
        f"- Message verdicts by gradient descent — ntk: {verdicts('ntk', 'gd_message')}; gp: "
        f"{verdicts('gp', 'gd_message')}. Under Adam — ntk: {verdicts('ntk', 'adam_message')}; gp: "
        f"{verdicts('gp', 'adam_message')}.",
    ]
    if len(flagged):
        reading.append(
            "- Flagged for unequal training states under gradient descent: "
            + "; ".join(f"{CIRCLED[r['message'] - 1]} {r['family']} {r['comparison']} ({r['gd_state_flags']})"
                        for _, r in flagged.iterrows()) + "."
        )  # fmt: skip
    # the kernel rows train on the clean points unless kernels are augmented: kd_inputs=auto means clean here
    inputs = p.kd_inputs if p.kd_inputs != "auto" or cfg.train.augment_kernels else "clean"
    n_test = next(r["n_test"] for r in Store(gd).records() if "n_test" in r)  # data.n_test = 0: the whole set
    cmd = (f"ntk-vs-nn table ntk --preset {cfg.preset} --set protocol.kd_inputs={p.kd_inputs} "
           f"--set run.progress=false --out {gd}")  # fmt: skip
    return (
        f"# {cfg.preset.capitalize()} preset kernel table by kernel gradient descent ({cfg.dataset}, "
        f"{cfg.table.ntk_models[0]})\n\n"
        f"The {cfg.preset} preset's kernel rows ({', '.join(cfg.table.ntk_families)}) as kernel methods: gradient "
        f"descent on the linearised model, heavy-ball momentum {k.momentum:g}, {cfg.train.schedule} schedule, batch "
        f"{cfg.train.batch_size}, the step {k.weights_lr:g}/λ_max (λ_max: the top eigenvalue of JᵀJ/n at W0), "
        f"{k.epochs} epochs for every unit (singles, the train-sum model, KD and SD students: one budget, measured "
        f"in `{os.path.relpath(budget, gd)}/`); the train-sum model with each member's gradient scaled to a "
        f"single's (`protocol.sum_grad={p.sum_grad}`). L = {p.members}, K = {p.kd_students} KD and "
        f"S = {cfg.sd_students} SD students on the {inputs} training points, {n_test:,} test "
        f"points, **{reps} replicate(s) (root seeds {seeds})**.\n\n"
        f"Made by\n\n    {cmd}\n\n(in a scratch folder, then `config.json` and `records.jsonl` copied here; "
        f"the predictions, `units/`, are not committed), then `ntk-vs-nn messages --out {gd}` and "
        f"`.venv/bin/python scripts/kernel_readmes.py gd-table {gd} {adam}"
        + ("" if budget == BUDGET else f" --budget {budget}") + "` (this file; "
        "`tests/report/test_kernel_readmes.py` regenerates it).\n\n"
        f"## ①–③ under gradient descent, beside the Adam-trained rows of `{os.path.relpath(adam, gd)}/`\n\n"
        + table + "\nTrain accuracy (%) per unit, by protocol (min–max):\n\n" + accs
        + "\n## Reading\n\n" + "\n".join(reading) + "\n"
    )  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    at = sub.add_parser("attribution", help="message 1 for ntk, four trainings; weights vs function space")
    at.add_argument("root", help="the folder of the variants (gd/, function/, adam/, shared/)")
    at.add_argument("--run", action="store_true", help="train the variants first (resumes)")
    gt = sub.add_parser("gd-table", help="a gradient-descent kernel table beside its Adam-trained rows")
    gt.add_argument("folder", help="the gradient-descent run (its README.md is written)")
    gt.add_argument("adam", help="the run with the same table's Adam-trained kernel rows")
    gt.add_argument("--budget", default=BUDGET, help=f"the folder that measured its kernel budget (default {BUDGET})")
    args = ap.parse_args(argv)
    if args.command == "gd-table":
        text = gd_readme(args.folder, args.adam, args.budget)
        with open(os.path.join(args.folder, "README.md"), "w") as fh:
            fh.write(text)
        print(text)
        return 0
    if args.run:
        run_missing(args.root)
    missing = [n for n in VARIANTS if not os.path.isfile(os.path.join(args.root, n, "messages.csv"))]
    if missing:
        print(f"error: {args.root}: no finished run of {', '.join(missing)}; add --run", file=sys.stderr)
        return 2
    for name, text in write(args.root).items():
        with open(os.path.join(args.root, name), "w") as fh:
            fh.write(text)
    print(open(os.path.join(args.root, "README.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one command line, for every experiment:

  ntk-vs-nn run EXPERIMENT [--preset P] [--set section.field=value ...] [--out DIR]
  ntk-vs-nn table nn|ntk [--preset P] [--dataset D] [--set ...] [--out DIR] [--executor local|ray]
      either with --registration FILE instead of --preset/--set/--dataset: a registered (confirmatory)
      run of the committed configuration in FILE (ntk_vs_nn/experiments/registration.py)
  ntk-vs-nn messages --out DIR      (rewrite a folder's tables and verdicts from its records)
  ntk-vs-nn report --out DIR [--against DIR2]
                                    (report.md/.html + figures: our tables beside the paper's;
                                     --against: DIR/stability.{csv,md}, verdicts vs another seed block)
  ntk-vs-nn presets                 (every experiment's presets)

Bad input (unknown experiment, preset, model, dataset or family, a malformed --set, an unreadable
npz) is one line on stderr and exit code 2, before anything is written. Ctrl-C stops at a unit
boundary (exit 130); the same command resumes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from ntk_vs_nn import experiments
from ntk_vs_nn.config import UserError, override
from ntk_vs_nn.experiments.tables import TABLES
from ntk_vs_nn.store import INTERRUPTED, Store


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too by default)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _common(p, out_help: str) -> None:
    p.add_argument("--preset", default=None, help="default: the experiment's first preset (`ntk-vs-nn presets`)")
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--registration", default=None, metavar="FILE",
                   help="a registered (confirmatory) run: the committed configuration in FILE alone")  # fmt: skip


def _parser():
    p = _Parser(prog="ntk-vs-nn", description="Ensembles, KD and SD: neural networks vs NTK models.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="train what is missing, then write the experiment's tables and verdicts")
    r.add_argument("experiment", choices=tuple(experiments.REGISTRY))
    _common(r, "output folder (default: the experiment's, under runs/)")
    t = sub.add_parser("table", help="one table of the tables experiment (train what is missing, write it)")
    t.add_argument("which", choices=TABLES)
    _common(t, "output folder (default runs/<preset>-<dataset>)")
    t.add_argument("--dataset", default=None, help="mnist1d (default), fashion_mnist, cifar10, cifar100 or npz:PATH")
    t.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="where the (model, family) rows run: this process, or Ray tasks (pip install -e '.[ray]')",
    )
    t.add_argument("--ray-address", default=None, help="existing Ray cluster (default $RAY_ADDRESS, else a local one)")
    t.add_argument("--ray-max-retries", type=int, default=3, help="retries of a row whose worker died (default 3)")
    t.add_argument("--ray-cpus-per-task", type=float, default=1.0, help="CPUs Ray reserves per row (default 1)")
    m = sub.add_parser("messages", help="rewrite tables and verdicts from the records in --out")
    m.add_argument("--out", required=True)
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    rp = sub.add_parser("report", help="report.md/.html + figures: our tables beside the paper's")
    rp.add_argument("--out", required=True)
    rp.add_argument(
        "--against",
        default=None,
        metavar="DIR",
        help="another folder of the same experiment and preset, another root-seed block (e.g. --set run.seed=3): "
        "also write OUT/stability.{csv,md}, each comparison's verdict in both",
    )
    sub.add_parser("presets", help="list every experiment's presets")
    d = sub.add_parser("docs", help="rewrite the numbers README.md and docs/ quote from results files")
    d.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 listing every stale quote")
    d.add_argument("--root", default=".", help="the repository root (default: here)")
    return p


def _log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def _finish(out: str, written: experiments.Written, t0: float, text: str | None = None) -> int:
    print(written.text if text is None else text)
    for line in written.verdicts:
        print(line)
    _log(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_run(args) -> int:
    t0 = time.perf_counter()
    written = experiments.run_experiment(args.experiment, args.preset, args.set, args.out, _log,
                                         registration=args.registration)  # fmt: skip
    return _finish(written.out, written, t0)


def cmd_table(args) -> int:
    t0 = time.perf_counter()
    sets = ([f"dataset={args.dataset}"] if args.dataset else []) + args.set
    written = experiments.run_experiment(
        "tables", args.preset, sets, args.out, _log, registration=args.registration, which=(args.which,),
        executor=args.executor,
        ray_address=args.ray_address, ray_max_retries=args.ray_max_retries, ray_cpus_per_task=args.ray_cpus_per_task,
    )  # fmt: skip
    if not written.parts:  # another process of a multi-host run: process 0 writes the tables
        return 0
    return _finish(written.out, written, t0, written.parts[args.which])


def cmd_messages(args) -> int:
    exp, cfg = experiments.load_config(args.out)
    cfg = override(cfg, args.set, top_level=exp.top_level)
    written = experiments.write_outputs(exp, cfg, Store(args.out))
    print(written.parts.get("messages", written.text))
    return 0


def cmd_report(args) -> int:
    from ntk_vs_nn.report import write_report  # lazy: matplotlib

    paths = write_report(args.out, against=args.against)
    from ntk_vs_nn.experiments import registration

    registration.stamp(args.out)  # report.md says confirmatory or exploratory, as every output does
    print(f"wrote {paths['md']}, {paths['html']} and {len(paths['figures'])} figure(s)")
    if "stability_md" in paths:
        with open(paths["stability_md"]) as f:
            summary = f.read().rstrip().rsplit("\n", 1)[-1]
        print(f"wrote {paths['stability_csv']} and {paths['stability_md']}: {summary}")
    return 0


def cmd_presets(args) -> int:
    from ntk_vs_nn.config import presets

    for name in experiments.REGISTRY:
        exp = experiments.get(name)
        print(f"{name}: {exp.description}; presets {', '.join(exp.presets)} (default {next(iter(exp.presets))})")
    print()
    print(presets.__doc__)
    return 0


def cmd_docs(args) -> int:
    from ntk_vs_nn.report import quotes

    paths = quotes.docs_files(args.root)
    if args.check:
        found = quotes.stale(paths, args.root)
        for q in found:
            print(f"{q.path}:{q.line}: quotes {q.have!r}, its source gives {q.want!r} ({q.spec})")
        print(f"{len(found)} stale quote(s) in {len(paths)} file(s)")
        return 1 if found else 0
    changed = quotes.rewrite(paths, args.root)
    print(f"rewrote {len(changed)} of {len(paths)} file(s)" + (f": {', '.join(changed)}" if changed else ""))
    return 0


def _on_sigint(signum, frame):
    INTERRUPTED.set()  # in case a library swallows the KeyboardInterrupt: the store raises it again
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main else None
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        return _run(args)
    finally:
        if previous is signal.default_int_handler:  # in-process callers (tests) get theirs back
            signal.signal(signal.SIGINT, previous)


COMMANDS = {
    "run": cmd_run, "table": cmd_table, "messages": cmd_messages, "report": cmd_report, "presets": cmd_presets,
    "docs": cmd_docs,
}  # fmt: skip


def _run(args) -> int:
    try:  # tensorflow-datasets logs through absl; keep errors to our one line
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception:
        # A Ctrl-C inside library cleanup (zipfile's close after the KeyboardInterrupt, seen in CI)
        # surfaces as that library's own error: it is still the interrupt, not a failure.
        if not INTERRUPTED.is_set():
            raise
        _interrupted()
    except KeyboardInterrupt:
        _interrupted()


def _interrupted():
    print("interrupted: finished units are recorded; rerun the same command to resume", file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    # Records are fsynced; exit now rather than wait for worker threads (orbax's) that an
    # interrupt may have left blocked.
    os._exit(130)


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of both quick tables (nn + kernel rows, 10 members, 5 protocols) end to end.

Command: ``.venv/bin/python benchmarks/quick_tables_wall.py [--set KEY=VALUE ...]`` (``make bench``).
Runs the real CLI into a fresh temporary folder (nothing recorded; the XLA compilation cache as a
user has it), one process per table as `make table-nn` / `make table-ntk` do, and writes
results/benchmarks/quick_tables_wall.json with the number of replicates the timed run had.

Configuration timed: the quick preset as it was before the statistics issue (``V1``: one replicate,
1,000 test points, one KD student, students and kernel rows on the nets' 30-epoch budget, kernel rows
ntk, ntk' and gp), the configuration of the 622 s measured in session 3, with the preset's current
execution settings (``run.workers``). Goal: <= 360 s (issue 16). The replicated preset (R = 3, 10,000
test points, K = 3, 90-epoch students and kernel rows) is ~30x the work; its wall times are those of
the committed run (results/quick-mnist1d/README.md).

In the same run, side by side, the nn table again with ``run.workers=0`` (one single-threaded worker
process per core, the train-sum model beside the students) against ``run.workers=1`` (units in the
command's process): ``default_workers`` is the faster on this machine kind (the kernel table is timed
once, with the default, to keep the benchmark under ~30 minutes on the 2-core CPU).
"""

import subprocess
import sys
import tempfile
import time

from _common import ROOT, write

GOAL_S = 360.0
V1 = [
    "run.replicates=1",
    "data.n_test=1000",
    "protocol.kd_students=1",
    "protocol.student_epochs=0",
    "kernel.epochs=0",
    "kernel.weights_lr=0",
    "kernel.student_epochs=0",
    "table.ntk_families=ntk,ntk_prime,gp",
]


def tables_wall(sets: list[str], tables=("nn", "ntk")) -> dict:
    """Seconds per table, the tables into one fresh folder."""
    times = {}
    with tempfile.TemporaryDirectory() as out:
        for which in tables:
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "ntk_vs_nn", "table", which, "--preset", "quick", "--out", out, *sets],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            times[which] = round(time.perf_counter() - t0, 1)
    print(sets[-1], times, flush=True)
    return times


def main():
    extra = sys.argv[1:]  # more --set overrides
    sets = [a for s in V1 for a in ("--set", s)] + extra
    default = tables_wall(sets + ["--set", "run.workers=1"])
    pool = tables_wall(sets + ["--set", "run.workers=0"], tables=("nn",))
    total = round(sum(default.values()), 1)
    best = 0 if pool["nn"] < default["nn"] else 1
    write(
        "quick_tables_wall", total, "s", GOAL_S, round(total / GOAL_S, 3), total <= GOAL_S, per_table_s=default,
        replicates=1, overrides=V1 + [a for a in extra if a != "--set"],
        nn_table_s_by_workers={"run.workers=1": default["nn"], "run.workers=0": pool["nn"]},
        nn_ratio_workers_0_to_1=round(pool["nn"] / default["nn"], 3), default_workers=best,
    )  # fmt: skip


if __name__ == "__main__":
    main()

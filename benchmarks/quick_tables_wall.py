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


def main():
    extra = sys.argv[1:]  # e.g. --set run.workers=1
    sets = [a for s in V1 for a in ("--set", s)] + extra
    times = {}
    with tempfile.TemporaryDirectory() as out:
        for which in ("nn", "ntk"):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "ntk_vs_nn", "table", which, "--preset", "quick", "--out", out, *sets],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            times[which] = round(time.perf_counter() - t0, 1)
    total = sum(times.values())
    write(
        "quick_tables_wall", total, "s", GOAL_S, round(total / GOAL_S, 3), total <= GOAL_S, per_table_s=times,
        replicates=1, overrides=V1 + [a for a in extra if a != "--set"],
    )  # fmt: skip


if __name__ == "__main__":
    main()

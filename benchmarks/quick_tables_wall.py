"""Wall time of both quick tables (10 members, 5 protocols, nn + ntk/ntk'/gp) end to end.

Command: ``.venv/bin/python benchmarks/quick_tables_wall.py`` (``make bench``). Goal: <= 600 s on
the 2-core CPU. Runs the real CLI into a fresh temporary folder (nothing cached), one process per
table as `make table-nn` / `make table-ntk` do, and writes results/benchmarks/quick_tables_wall.json.
"""

import subprocess
import sys
import tempfile
import time

from _common import ROOT, write

GOAL_S = 600.0


def main():
    extra = sys.argv[1:]  # e.g. --set train.epochs=10
    times = {}
    with tempfile.TemporaryDirectory() as out:
        for which in ("nn", "ntk"):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "ntk_vs_nn", "table", which, "--preset", "quick", "--out", out, *extra],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            times[which] = round(time.perf_counter() - t0, 1)
    total = sum(times.values())
    write("quick_tables_wall", total, "s", GOAL_S, round(total / GOAL_S, 3), total <= GOAL_S, per_table_s=times)


if __name__ == "__main__":
    main()

"""Shared helpers for the benchmarks: the JSON result format and where it goes."""

import json
import os
import sys
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "results", "benchmarks")


def device() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()} ({os.cpu_count()} cpus)"


def best_of(fn, repeats: int) -> dict:
    """run_s: the fastest of ``repeats`` timed calls of ``fn`` after one (compiling) call; compile_s."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):  # interference only slows a run down
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"run_s": min(runs), "compile_s": first - min(runs)}


def write(name: str, value: float, unit: str, goal: float, ratio: float, holds: bool, **extra) -> dict:
    """Write results/benchmarks/<name>.json with the fields every benchmark reports."""
    rec = {
        "name": name,
        "value": value,
        "unit": unit,
        "ratio": ratio,
        "goal": goal,
        "holds": holds,
        "device": device(),
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        **extra,
    }
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(json.dumps(rec, indent=1))
    return rec

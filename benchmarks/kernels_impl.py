"""Which empirical-NTK implementation should be the default? structured_derivatives vs
jacobian_contraction (vmapped jacrev) vs ntk_vector_products.

Command: ``PYTHONPATH=. .venv/bin/python benchmarks/kernels_impl.py`` (from the repo root). Builds
SimpleCNN-4-1 on 16x16x1 inputs with 10 classes (24,058 params) and times the kernel as the
function-space backend computes it, ``batch(empirical_ntk_fn(f, trace_axes, vmap_axes=0,
implementation=impl), tile, store_on_device=False)(x, None, params)`` (`ntk_vs_nn.kernels`), on
N = 128 random inputs (one 128x128 tile; tiles of VP_TILE = 32 for ntk_vector_products, which
vmaps over every pair of examples of a tile pair), traced (N, N) and full (N, N, 10, 10), in
float32, best of REPEATS runs after a warm-up call that compiles. Each implementation runs in its own spawned
process, so its peak RSS (resource.getrusage) is its own. Writes
results/benchmarks/empirical_ntk_impls.json: value = seconds of the fastest implementation (traced),
ratio = structured_derivatives / jacobian_contraction (traced seconds; < 1: the structured Jacobian,
which ``implementation="auto"`` picks for such nets, wins); every kernel is compared with
jacobian_contraction's (max relative difference, float32).
"""

import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from _common import write

MODEL, SHAPE, CLASSES, N, REPEATS, VP_TILE = "SimpleCNN-4-1", (16, 16, 1), 10, 128, 3, 32
IMPLS = ("structured_derivatives", "jacobian_contraction", "ntk_vector_products")


def time_impl(impl: str) -> dict:
    import jax

    import ntk_vs_nn.kernels as api
    from ntk_vs_nn.models import build_model

    module = build_model(MODEL, CLASSES, len(SHAPE) - 1)
    x = jax.random.normal(jax.random.key(0), (N, *SHAPE))
    params = module.init(jax.random.key(1), x[:1])["params"]
    f = lambda p, xb: module.apply({"params": p}, xb)
    out = {"params": sum(a.size for a in jax.tree.leaves(params))}
    for name, trace_axes in [("traced", (-1,)), ("full", ())]:
        kernel_fn = api.empirical_ntk_fn(f, trace_axes=trace_axes, vmap_axes=0, implementation=impl)
        fn = api.batch(kernel_fn, VP_TILE if impl == "ntk_vector_products" else N, store_on_device=False)
        t0 = time.perf_counter()
        kern = fn(x, None, params)  # compiles; returns host numpy, so it has finished
        first = time.perf_counter() - t0
        runs = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            kern = fn(x, None, params)
            runs.append(time.perf_counter() - t0)
        out[f"{name}_s"] = round(min(runs), 4)
        out[f"{name}_runs_s"] = [round(r, 4) for r in runs]
        out[f"{name}_compile_s"] = round(first - min(runs), 3)
        out[f"{name}_kernel"] = kern
        print(impl, name, out[f"{name}_runs_s"], flush=True)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> dict:
    ctx = multiprocessing.get_context("spawn")  # fresh process per impl: clean peak RSS, no forked JAX
    res = {}
    for impl in IMPLS:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            res[impl] = pool.submit(time_impl, impl).result()
    jc, sd = res["jacobian_contraction"], res["structured_derivatives"]
    agree = {
        f"{impl}/{name}": float(
            np.max(np.abs(res[impl][f"{name}_kernel"] - jc[f"{name}_kernel"])) / np.max(np.abs(jc[f"{name}_kernel"]))
        )
        for impl in IMPLS
        if impl != "jacobian_contraction"
        for name in ("traced", "full")
    }
    timings = {impl: {k: v for k, v in r.items() if not k.endswith("_kernel")} for impl, r in res.items()}
    best = min(res, key=lambda i: res[i]["traced_s"])
    print(f"{MODEL} on {SHAPE}: {jc['params']} params; max rel. difference between impls {agree}", file=sys.stderr)
    return write(
        "empirical_ntk_impls",
        value=res[best]["traced_s"],
        unit="s",
        goal=None,
        ratio=round(sd["traced_s"] / jc["traced_s"], 4),
        holds=None,
        best_impl=best,
        model=MODEL,
        input_shape=list(SHAPE),
        num_classes=CLASSES,
        n=N,
        params=jc["params"],
        dtype="float32",
        repeats=REPEATS,
        max_rel_diff_vs_jacobian_contraction=agree,
        timings=timings,
    )


if __name__ == "__main__":
    main()

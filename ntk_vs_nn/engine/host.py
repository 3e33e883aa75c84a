"""Splitting the host CPU into several XLA devices (``run.cpu_devices``). Must run before jax is
imported, so this module imports no jax."""

from __future__ import annotations

import os
import sys

from ntk_vs_nn.config import IMAGE_SETS

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def host_device_count(requested: int) -> int:
    """``run.cpu_devices``: 0 = one XLA device per core (at most 8), else the number asked for."""
    return max(1, min(os.cpu_count() or 1, 8)) if requested == 0 else max(1, int(requested))


def configure_host_devices(requested: int = 0) -> bool:
    """Split the host CPU into ``host_device_count(requested)`` XLA devices, over which the engine
    trains each member data-parallel (`sharding.data_mesh`): on XLA:CPU one program uses the cores
    poorly (a 2-D ResNet-10-1 step, batch 256, ran at 748 img/s on one device and 1,163 img/s as two
    halves of the batch on two, this 2-core machine). Only possible before jax starts: returns False,
    changing nothing, if jax is already imported, XLA_FLAGS already sets the count, or in a
    multi-host run (JAX_COORDINATOR_ADDRESS)."""
    n = host_device_count(requested)
    return n > 1 and not os.environ.get("JAX_COORDINATOR_ADDRESS") and _add_xla_flag(_DEVICE_FLAG, str(n))


def _add_xla_flag(flag: str, value: str) -> bool:
    """Append ``flag=value`` to XLA_FLAGS; False, changing nothing, once jax is imported (XLA reads the
    flags when it starts) or when XLA_FLAGS already sets ``flag`` (the user's choice wins)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" in sys.modules or flag in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {flag}={value}".strip()
    return True


YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def configure_xla_cpu(dataset: str) -> bool:
    """XLA:CPU's YNNPACK fusion off (``--xla_cpu_experimental_ynn_fusion_type=``, empty: no op is handed to
    YNNPACK) for the 2-D image datasets. Measured (results/benchmarks/ynn_fusion.json, one jitted gradient,
    batch 128, the two settings alternating): jax's default took 1.22-1.69x the time on the presets' 2-D
    nets with XLA's convolution and 0.97-1.10x with the matmul one, with the same gradients to float32
    rounding on every net that uses XLA's convolution (<= 4e-5 of the largest entry); the 1-D net of MNIST-1D
    0.9-1.0x, so it keeps jax's default. Only before jax starts (workers inherit it) and when XLA_FLAGS
    names no YNNPACK setting of its own (a user's choice wins); the records keep XLA_FLAGS."""
    return dataset.removeprefix("synthetic:") in IMAGE_SETS and _add_xla_flag(YNN_FLAG, "")


CACHE_ENV = "NTK_VS_NN_XLA_CACHE"


def compile_cache_dir() -> str | None:
    """Where compiled XLA programs persist: ``$NTK_VS_NN_XLA_CACHE`` (``off`` or empty: nowhere),
    default ``~/.cache/ntk_vs_nn/xla``."""
    path = os.environ.get(CACHE_ENV, os.path.join(os.path.expanduser("~"), ".cache", "ntk_vs_nn", "xla"))
    return None if path.strip().lower() in ("", "off", "0", "none") else path


def enable_compile_cache() -> str | None:
    """Turn on jax's persistent compilation cache (`compile_cache_dir`); returns the folder or None.

    Every unit of a table builds its trainer afresh, and every replicate, worker process and rerun
    compiles the same programs again (a ResNet-10-1 train step ~5 s, its init ~4 s on this CPU);
    the cache loads them instead. A loaded program is the very executable XLA compiled (the key
    covers the program, the XLA flags, the device and the jax version), so numbers do not change."""
    path = compile_cache_dir()
    if path is None:
        return None
    import jax  # here, not at the top: this module must be importable before jax starts

    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # an unwritable home: compile every time, as without the cache
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path

"""The compatibility layer through which neural-tangents imports on this environment's jax.

neural-tangents 0.6.5 (the last release) is optional. Install it with ``make install-nt``
(``scripts/install_nt.sh``: ``pip install --no-deps --require-hashes -r requirements-nt.lock``, i.e.
neural-tangents 0.6.5 and frozendict: 2.7 MB installed, ~4 s); nothing else of ours needs it. It is
used beside our own kernels: a cross-check of the empirical NTK (`ntk_vs_nn.kernels.nt`) and
infinite-width kernels (`ntk_vs_nn.kernels.infinite`).

**Compatibility layer.** As released, 0.6.5 does not import on jax >= 0.6 (``cannot import name
'Jaxpr' from 'jax.core'``) and its package ``__init__`` imports tensorflow (1.9 GB) through
``neural_tangents.experimental``. `import_neural_tangents` imports it on this environment's jax (0.10)
unchanged on disk, by providing during the import only what the import itself looks up:

1. ``neural_tangents.experimental`` (``empirical_ntk_fn_tf``: NTKs of TensorFlow models through
   jax2tf/tf2jax) is replaced by a stub module whose attributes raise ImportError: it is the only
   part that needs tensorflow and tf2jax, and we never use it.
2. ``jax.core.Jaxpr, JaxprEqn, Literal, Var, Primitive`` (moved to ``jax.extend.core``): set on
   ``jax.core`` from ``jax.extend.core`` for the import, removed afterwards.
3. ``jax.util`` (``safe_map``, ``safe_zip``; the module was removed): a module with two equivalent
   length-checked functions, in ``sys.modules`` for the import only.
4. ``jax.interpreters.ad.zeros_like_p`` (removed): a placeholder primitive, used only as a key of
   the STRUCTURED_DERIVATIVES rule tables, for the import only.

Nothing of jax is left changed after the import. ``stax`` (infinite-width kernels), ``batch``,
``monte_carlo_kernel_fn`` and ``empirical_ntk_fn`` with ``JACOBIAN_CONTRACTION`` and
``NTK_VECTOR_PRODUCTS`` work and are cross-checked in ``tests/kernels/test_nt_crosscheck.py`` (against our
kernels to 1e-10 in float64, and against Monte-Carlo estimates from our own wide Flax nets). The same
neural-tangents code on its own pinned jax 0.4.38 gave the same numbers (measured once, float64:
empirical NTKs to 3e-15, infinite-width NNGP to 5e-16, NTK to 2e-9 relative, on ResNet-10-1 1-D and
SimpleCNN-4-1 2-D), so the layer changes nothing but the import.
``STRUCTURED_DERIVATIVES`` and ``AUTO`` (which tries it) use jax internals that changed (they fail,
as STRUCTURED_DERIVATIVES also does on 0.6.5's own pinned jax 0.4.38); `nt_empirical_ntk_fn` refuses
them. On a jax that still has the names (e.g. 0.4.38) the layer only stubs ``experimental``.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types

from ntk_vs_nn.config import UserError

NT_VERSION = "0.6.5"
INSTALL_HINT = (
    "run `make install-nt` (bash scripts/install_nt.sh: pip install --no-deps --require-hashes "
    "-r requirements-nt.lock, neural-tangents 0.6.5 + frozendict into .venv)"
)
_ABSENT = object()


def _safe_map(f, *args):
    args = [list(a) for a in args]
    if any(len(a) != len(args[0]) for a in args[1:]):
        raise ValueError(f"length mismatch: {[len(a) for a in args]}")
    return list(map(f, *args))


def _safe_zip(*args):
    args = [list(a) for a in args]
    if any(len(a) != len(args[0]) for a in args[1:]):
        raise ValueError(f"length mismatch: {[len(a) for a in args]}")
    return list(zip(*args))


@contextlib.contextmanager
def _attrs_added(obj, attrs: dict):
    """Set the attributes of ``obj`` that it lacks, for the duration of the block."""
    added = {k: v for k, v in attrs.items() if not hasattr(obj, k)}
    for k, v in added.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k in added:
            if getattr(obj, k, _ABSENT) is added[k]:
                delattr(obj, k)


@contextlib.contextmanager
def _modules_added(mods: dict):
    """Put the modules that are not importable into ``sys.modules`` for the duration of the block."""
    added = {}
    for name, mod in mods.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = added[name] = mod
    try:
        yield
    finally:
        for name, mod in added.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]


def _experimental_stub() -> types.ModuleType:
    stub = types.ModuleType("neural_tangents.experimental")
    stub.__doc__ = "Stub of ntk_vs_nn.kernels.nt_compat: the tensorflow-only part of neural-tangents is not loaded."

    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"neural_tangents.experimental.{name} needs tensorflow; ntk_vs_nn loads neural-tangents without it"
        )

    stub.__getattr__ = __getattr__
    return stub


def import_neural_tangents() -> types.ModuleType:
    """The ``neural_tangents`` module, imported through the compatibility layer (see the module doc).

    Raises:
      UserError: one line with how to install it, when it is not installed or does not import.
    """
    if "neural_tangents" in sys.modules and sys.modules["neural_tangents"] is not None:
        return sys.modules["neural_tangents"]
    import jax
    import jax.core
    import jax.extend.core as jex_core
    import jax.interpreters.ad as jax_ad

    util = types.ModuleType("jax.util")
    util.safe_map, util.safe_zip = _safe_map, _safe_zip
    core_names = ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive")
    before = set(sys.modules)
    sys.modules.setdefault("neural_tangents.experimental", _experimental_stub())
    try:
        with (
            _modules_added({"jax.util": util}),
            _attrs_added(jax.core, {n: getattr(jex_core, n) for n in core_names}),
            _attrs_added(jax_ad, {"zeros_like_p": jex_core.Primitive("ntk_vs_nn_nt_compat_placeholder")}),
        ):
            nt = importlib.import_module("neural_tangents")
    except Exception as e:  # noqa: BLE001 - any import failure is one line for the user
        for name in set(sys.modules) - before:  # no half-imported package left behind
            if name == "neural_tangents" or name.startswith("neural_tangents.") or name == "frozendict":
                del sys.modules[name]
        if isinstance(e, ModuleNotFoundError) and e.name in ("neural_tangents", "frozendict"):
            raise UserError(f"neural-tangents is not installed: {INSTALL_HINT}") from None
        raise UserError(
            f"neural-tangents did not import on jax {jax.__version__} ({type(e).__name__}: {e}); "
            f"the compatibility layer is tested with neural-tangents {NT_VERSION}: {INSTALL_HINT}"
        ) from None
    return nt


def available() -> bool:
    """Whether neural-tangents imports (through the compatibility layer)."""
    try:
        import_neural_tangents()
    except UserError:
        return False
    return True

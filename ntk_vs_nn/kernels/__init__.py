"""Kernels of finite and infinite networks.

The package itself is neural-tangents' empirical-kernel API (`ntk_vs_nn.kernels.api`, with
neural-tangents 0.6.5's arguments and semantics): ``import ntk_vs_nn.kernels as nt`` gives
``nt.empirical_ntk_fn``, ``nt.empirical_nngp_fn``, ``nt.empirical_kernel_fn``,
``nt.empirical_ntk_vp_fn``, ``nt.NtkImplementation`` and ``nt.batch`` (`ntk_vs_nn.kernels.batching`).
The names load on first use, so importing a submodule does not import the API.
"""

_EXPORTS = {
    "NtkImplementation": "api",
    "DEFAULT_NTK_IMPLEMENTATION": "api",
    "EmpiricalKernel": "api",
    "empirical_ntk_fn": "api",
    "empirical_nngp_fn": "api",
    "empirical_kernel_fn": "api",
    "empirical_ntk_vp_fn": "api",
    "flax_apply_fn": "api",
    "batch": "batching",
    "check_kernel": "batching",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

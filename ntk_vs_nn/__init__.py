"""ntk_vs_nn: do ensembles, knowledge distillation and self-distillation work the same way for
finite-width neural-tangent-kernel models as for trained neural networks (Allen-Zhu & Li)?

The public API (everything else is internal and may change):

- configs: `Config` (the tables experiment's sections), `get_preset`, `PRESETS`, `override`
  (``section.field=value`` items), `UserError`;
- data: `load_dataset`, `Dataset`; models: `build_model`, the BatchEnsemble layers `BEDense`, `BEConv`;
- metrics: the module `metrics` (`nll`, `brier`, `ece`, `calibrate`, `dee`, `disagreement`, ... on logits);
- families: `ModelFamily`, `network`, `linearized`, `last_layer`, `summed`, `make_family`;
- engine: `Trainer`, `distill_loss`, `perturb` (Gaussian / ODS / ConfODS distillation inputs);
- kernels: `empirical_ntk_fn`, `empirical_nngp_fn`, `empirical_kernel_fn` (neural-tangents' empirical-kernel
  API with its semantics; `ntk_vs_nn.kernels` also has `batch`; docs/kernels.md), `nngp_fn`, `head_features`;
- protocols: `PROTOCOLS`, `run_row` (single, ensemble, train-sum, KD, SD of one family and model);
- store: `Store`;
- experiments: `run_experiment`, `EXPERIMENTS` (their names), `get_experiment`, `load_config`.

Names are imported on first use (PEP 562), so ``import ntk_vs_nn`` starts no jax: the command line
may still split the host CPU into several XLA devices before jax starts.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Config": "ntk_vs_nn.config",
    "override": "ntk_vs_nn.config",
    "UserError": "ntk_vs_nn.config",
    "PROTOCOLS": "ntk_vs_nn.config",
    "get_preset": "ntk_vs_nn.config.presets",
    "PRESETS": "ntk_vs_nn.config.presets",
    "load_dataset": "ntk_vs_nn.data",
    "Dataset": "ntk_vs_nn.data",
    "build_model": "ntk_vs_nn.models",
    "BEDense": "ntk_vs_nn.models.batch_ensemble",
    "BEConv": "ntk_vs_nn.models.batch_ensemble",
    "perturb": "ntk_vs_nn.engine.perturb",
    "ModelFamily": "ntk_vs_nn.families",
    "network": "ntk_vs_nn.families",
    "linearized": "ntk_vs_nn.families",
    "last_layer": "ntk_vs_nn.families",
    "summed": "ntk_vs_nn.families",
    "make_family": "ntk_vs_nn.families",
    "Trainer": "ntk_vs_nn.engine.trainer",
    "distill_loss": "ntk_vs_nn.engine.losses",
    "empirical_ntk_fn": "ntk_vs_nn.kernels",
    "empirical_nngp_fn": "ntk_vs_nn.kernels",
    "empirical_kernel_fn": "ntk_vs_nn.kernels",
    "nngp_fn": "ntk_vs_nn.kernels.empirical",
    "head_features": "ntk_vs_nn.kernels.empirical",
    "run_row": "ntk_vs_nn.protocols",
    "Store": "ntk_vs_nn.store",
    "run_experiment": "ntk_vs_nn.experiments",
    "load_config": "ntk_vs_nn.experiments",
}
_RENAMED = {"EXPERIMENTS": ("ntk_vs_nn.experiments", "REGISTRY"), "get_experiment": ("ntk_vs_nn.experiments", "get")}
_MODULES = {"metrics": "ntk_vs_nn.metrics"}

__all__ = sorted([*_EXPORTS, *_RENAMED, *_MODULES])


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _RENAMED:
        module, attr = _RENAMED[name]
        return getattr(importlib.import_module(module), attr)
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    raise AttributeError(f"module 'ntk_vs_nn' has no attribute {name!r}")


def __dir__():
    return __all__

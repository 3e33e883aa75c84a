"""Presets: functions returning a `Config`. ``--set section.field=value`` overrides any field.

smoke  seconds: tiny MNIST-1D, SimpleCNN-3-1, 3 members, 2 epochs. Both tables < 60 s; used by
       the tests and CI. Its numbers mean nothing.
quick  the real default: MNIST-1D (4,000 train of which 400 validate, 1,000 test), ResNet-10-1
       (1-D, LayerNorm-style GroupNorm), 10 members, Adam lr 2e-3 with cosine decay, 30 epochs,
       batch 128; KD alpha 0.9, tau 4; S = 5. Both tables ~9 min on the 2-core CPU (README.md).
"""

from __future__ import annotations

import dataclasses

from ntk_vs_nn.config import Config, DataConfig, ProtocolConfig, TableConfig, TrainConfig, UserError


def quick() -> Config:
    return Config(preset="quick")


def smoke() -> Config:
    return Config(
        preset="smoke",
        data=DataConfig(n_train=240, n_test=200, val_fraction=0.2),
        train=TrainConfig(epochs=2, batch_size=32, lr=3e-3),
        protocol=ProtocolConfig(members=3, sd_students=2),
        table=TableConfig(nn_models=("SimpleCNN-3-1",), ntk_models=("SimpleCNN-3-1",)),
    )


PRESETS = {"smoke": smoke, "quick": quick}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]()


def from_dict(d: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. OUT/config.json)."""
    try:
        sections = {}
        for f in dataclasses.fields(Config):
            if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
                typ = f.default_factory
                vals = {k: tuple(v) if isinstance(v, list) else v for k, v in d[f.name].items()}
                sections[f.name] = typ(**vals)
            else:
                sections[f.name] = d[f.name]
        return Config(**sections)
    except (KeyError, TypeError) as e:
        raise UserError(f"saved config is not readable by this version ({e})") from None

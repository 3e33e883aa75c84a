"""Experiments: each is a config (a frozen dataclass of sections), its presets and two functions
on the shared store, registered here by name:

- ``prepare(cfg, **options)`` (optional) checks every input and loads what ``run`` needs, before
  anything is written;
- ``run(cfg, store, log, **options)`` trains every unit of ``cfg`` that ``store`` does not hold yet,
  appending one record per finished unit (`Store.record`: provenance, date), so a rerun after Ctrl-C
  or SIGKILL retrains nothing that finished;
- ``write(cfg, store)`` derives every output (tables, claims, figures) from the records alone and
  returns a `Written`: ``ntk-vs-nn messages --out DIR`` calls it to regenerate a committed folder.

``ntk-vs-nn run NAME --preset P --set key=value --out DIR`` (`run_experiment`) is the one entry point.
A new experiment is a module with an ``EXPERIMENT`` and a line in `REGISTRY`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ntk_vs_nn.config import UserError, from_dict, override
from ntk_vs_nn.engine.host import configure_xla_cpu, enable_compile_cache
from ntk_vs_nn.store import Store, atomic_write

REGISTRY = {
    "tables": "ntk_vs_nn.experiments.tables",
    "multiview": "ntk_vs_nn.experiments.multiview",
    "gaussian": "ntk_vs_nn.experiments.gaussian",
    "channels": "ntk_vs_nn.experiments.channels",
    "diversity": "ntk_vs_nn.experiments.diversity",
}


class Written(NamedTuple):
    """What `write` produced: the text the CLI prints, one line per claim with its verdict, named
    parts of the text (e.g. each table) a command may print alone, and (set by `run_experiment`)
    the output folder it used."""

    text: str
    verdicts: list[str]
    parts: dict = {}
    out: str = ""


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    config: type  # the config class (rebuilt from config.json by `config.from_dict`)
    presets: Mapping[str, Callable[[], Any]]  # name -> config; the first is the default
    run: Callable[..., None]  # run(cfg, store, log, **options)
    write: Callable[[Any, Any], Written]  # write(cfg, store)
    default_out: Callable[[Any], str] | None = None  # the output folder without --out (None: runs/NAME-PRESET)
    top_level: tuple[str, ...] | None = None  # top-level config fields --set may change (None: all)
    # prepare(cfg, **options) -> dict: every check (and input loading) before anything is written;
    # what it returns is passed on to run as keyword arguments
    prepare: Callable[..., dict] = lambda cfg, **options: {}

    def out_dir(self, cfg) -> str:
        """Where a run goes without --out: under the git-ignored runs/, so a fresh clone stays clean."""
        return self.default_out(cfg) if self.default_out else os.path.join("runs", f"{self.name}-{cfg.preset}")

    def preset(self, name: str | None = None):
        name = name or next(iter(self.presets))
        if name not in self.presets:
            raise UserError(f"{self.name}: unknown preset {name!r}; valid: {', '.join(self.presets)}")
        return self.presets[name]()

    def configure(self, preset: str | None = None, overrides: list[str] = ()):
        return override(self.preset(preset), list(overrides), top_level=self.top_level)


def get(name: str) -> Experiment:
    if name not in REGISTRY:
        raise UserError(f"unknown experiment {name!r}; valid: {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).EXPERIMENT


def save_config(out: str, name: str, cfg) -> None:
    """OUT/config.json: the experiment's name and its whole config."""
    d = {"experiment": name, **dataclasses.asdict(cfg)}
    atomic_write(os.path.join(out, "config.json"), json.dumps(d, indent=1, default=list))


def load_config(out: str) -> tuple[Experiment, Any]:
    """The experiment and config saved in OUT/config.json (a folder written before experiments had
    names holds the tables' config)."""
    path = os.path.join(out, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found; run `ntk-vs-nn run EXPERIMENT --out {out}` first")
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a saved config")
    exp = get(d.pop("experiment", "tables"))
    return exp, from_dict(exp.config, d)


def run_experiment(
    name: str,
    preset: str | None = None,
    overrides: list[str] = (),
    out: str | None = None,
    log: Callable[[str], None] = lambda s: None,
    registration: str | None = None,
    **options,
) -> Written:
    """Configure experiment ``name`` (preset, then ``section.field=value`` overrides; or the registered
    configuration of the file ``registration``, `experiments.registration`), train what the store in
    ``out`` lacks, write every output and return it. Bad input raises `UserError` before anything is
    written."""
    from ntk_vs_nn.experiments import registration as registered

    exp = get(name)
    reg = registered.load(registration) if registration else None
    if reg is not None:
        cfg = exp.configure(reg.preset, reg.overrides)
        registered.check(reg, name, cfg, preset, overrides, options.get("which", ()))
        registered.commit_of(reg.path)
    else:
        cfg = exp.configure(preset, overrides)
    configure_xla_cpu(getattr(cfg, "dataset", ""))  # before jax starts: image data without YNNPACK fusion
    options = {**options, **exp.prepare(cfg, log=log, **options)}
    enable_compile_cache()  # after prepare: the tables may split the host CPU before jax starts
    out = out or exp.out_dir(cfg)
    store = Store.prepare(out)
    if store.writer:
        if reg is not None:
            registered.begin(reg, out)
        elif registered.recorded(out) is not None:
            raise UserError(f"{out}: a registered run's folder; continue it with --registration FILE")
        save_config(out, name, cfg)
    exp.run(cfg, store, log, **options)
    written = write_outputs(exp, cfg, store) if store.writer else Written("", [])
    return written._replace(out=out)


def write_outputs(exp: Experiment, cfg, store) -> Written:
    """``exp.write``, then every Markdown output stamped confirmatory or exploratory (`registration.stamp`)."""
    from ntk_vs_nn.experiments import registration

    written = exp.write(cfg, store)
    line = registration.status(store.out_dir)  # the files and what the command prints say it alike
    registration.stamp(store.out_dir, line)
    parts = {k: registration.stamp_text(v, line) if isinstance(v, str) else v for k, v in written.parts.items()}
    return written._replace(text=registration.stamp_text(written.text, line) if written.text else "", parts=parts)

"""Registered (confirmatory) runs: a configuration decided, and committed, before any of its units trains.

A registration is a JSON file (``registrations/NAME.json``) that names the experiment, its preset and
overrides, the seeds (never used while the regime was chosen), the claims it tests with their direction,
and the science hash of the configuration they resolve to. ``ntk-vs-nn run EXPERIMENT --registration FILE``
(or ``ntk-vs-nn table WHICH --registration FILE``) then

- builds the config from the file alone (a ``--preset`` or ``--set`` beside it is refused);
- refuses a file that is not committed, or that differs from its last commit (git), and a config whose hash
  differs from the registered one (the code resolves the registered settings to other numbers now);
- copies the file into the output folder (``OUT/registration.json``, with its sha256 and commit) when the
  run starts, and refuses to go on (resume, or write results) when the file no longer has that sha256.

Every Markdown output of a run says which it is, in the line under its title (`stamp`, called by
`experiments.write_outputs` after an experiment writes): the registration's name and sha256, or "Exploratory
run" for a run without one (a search, a sizing run, every run made before registrations existed), whose
regime may have been chosen on its own seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess

from ntk_vs_nn.config import UserError
from ntk_vs_nn.store import atomic_write

RECORD = "registration.json"  # the copy in the output folder
CONFIRMATORY = "**Confirmatory run**, registered in"
EXPLORATORY_MARK = "**Exploratory run**"
EXPLORATORY = (
    f"{EXPLORATORY_MARK}: not registered, so its regime may have been chosen on these seeds; its verdicts "
    'describe this run, not a confirmatory test (docs/protocols.md, "Registered (confirmatory) runs").'
)
NOT_STAMPED = ("README.md",)  # Markdown in an output folder that is not an output (a folder's own prose)
FIELDS = {"name": str, "experiment": str, "preset": str, "overrides": list, "seeds": str, "claims": list,
          "config_hash": str}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Registration:
    path: str
    name: str
    experiment: str
    preset: str
    overrides: list
    seeds: str
    claims: list
    config_hash: str
    sha256: str
    which: tuple = ()  # the tables experiment: the tables it registers (table nn, table ntk)
    data: dict = dataclasses.field(default_factory=dict)  # the file's JSON object, as read

    def header(self) -> str:
        """The line every output of the run carries."""
        return f"{CONFIRMATORY} `{self.name}` (sha256 {self.sha256[:12]}) before it trained."


def load(path: str) -> Registration:
    """The registration at ``path``, every field checked (one `UserError` naming what is wrong)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        d = json.loads(raw)
    except OSError as e:
        raise UserError(f"registration {path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"registration {path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"registration {path}: not a JSON object")
    for key, kind in FIELDS.items():
        if not isinstance(d.get(key), kind):
            raise UserError(f"registration {path}: needs {key!r} ({kind.__name__})")
    return _build(path, d, hashlib.sha256(raw).hexdigest())


def _build(path: str, d: dict, sha256: str) -> Registration:
    """A `Registration` from its JSON object ``d`` (a file's, or the copy recorded in an output folder)."""
    return Registration(path, d["name"], d["experiment"], d["preset"], [str(o) for o in d["overrides"]], d["seeds"],
                        d["claims"], d["config_hash"], sha256, tuple(d.get("which", ())), d)  # fmt: skip


def commit_of(path: str) -> str:
    """The commit that last changed ``path``, or a `UserError` when it is not committed as it is now."""
    where = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)

    def git(*args):
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=30)

    try:
        status, log = git("status", "--porcelain", "--", name), git("log", "-1", "--format=%H", "--", name)
    except (OSError, subprocess.SubprocessError):
        raise UserError(f"registration {path}: git is not available to show it was committed before the run") from None
    if status.returncode or log.returncode or not log.stdout.strip():
        raise UserError(f"registration {path}: not committed; commit it (its own commit) before the run trains")
    if status.stdout.strip():
        raise UserError(f"registration {path}: changed since its last commit; a registered run uses it as committed")
    return log.stdout.strip()


def check(reg: Registration, experiment: str, cfg, preset: str | None, overrides, which=()) -> None:
    """Refuse a run that is not the registered one: another experiment (or table), settings beside the file,
    or a config whose hash is not the registered hash."""
    if reg.experiment != experiment:
        raise UserError(f"registration {reg.path}: registers experiment {reg.experiment!r}, not {experiment!r}")
    if reg.which and not set(which) <= set(reg.which):
        raise UserError(f"registration {reg.path}: registers table(s) {', '.join(reg.which)}, not {', '.join(which)}")
    if preset is not None or list(overrides):
        raise UserError(f"registration {reg.path}: a registered run takes its preset and settings from the file "
                        "alone (no --preset, --set or --dataset)")  # fmt: skip
    got = cfg.science_hash()
    if got != reg.config_hash:
        raise UserError(f"registration {reg.path}: registers config {reg.config_hash}, but its settings now resolve "
                        f"to {got} (the code changed what they mean); register again")  # fmt: skip


def begin(reg: Registration, out: str) -> None:
    """Record the registration in the output folder, or check it against the one recorded there."""
    path = os.path.join(out, RECORD)
    if os.path.exists(path):
        with open(path) as f:
            had = json.load(f)
        if had.get("sha256") != reg.sha256:
            was = str(had.get("sha256", ""))[:12]
            raise UserError(f"registration {reg.path} changed since this run started (sha256 {was} -> "
                            f"{reg.sha256[:12]}): a confirmatory run uses its registration unchanged")  # fmt: skip
        return
    d = {"file": os.path.basename(reg.path), "sha256": reg.sha256, "commit": commit_of(reg.path),
         "registration": reg.data}  # fmt: skip
    atomic_write(path, json.dumps(d, indent=1) + "\n")


def recorded(out: str) -> Registration | None:
    """The registration recorded in an output folder (None: an exploratory run)."""
    path = os.path.join(out, RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        d = json.load(f)
    return _build(d["file"], d["registration"], d["sha256"])


def status(out: str) -> str:
    """The line that says whether the run in ``out`` is confirmatory (registered) or exploratory."""
    reg = recorded(out)
    return reg.header() if reg is not None else EXPLORATORY


def stamp_text(text: str, line: str) -> str:
    """``text`` (Markdown) with ``line`` under its ``#`` title (first, without one), replacing an earlier stamp."""
    lines, keep = text.split("\n"), []
    for i, x in enumerate(lines):  # an earlier stamp goes with the blank line stamping put under it
        if x.startswith((CONFIRMATORY, EXPLORATORY_MARK)) or (
            x == "" and i and lines[i - 1].startswith((CONFIRMATORY, EXPLORATORY_MARK))
        ):
            continue
        keep.append(x)
    at = 1 if keep and keep[0].startswith("#") else 0
    if at and len(keep) > 1 and keep[1] == "":
        keep = keep[:1] + keep[2:]  # the blank line under the title is put back below
    return "\n".join(keep[:at] + ([""] if at else []) + [line, ""] + keep[at:])


def stamp(out: str, line: str | None = None) -> list[str]:
    """Put ``line`` (default `status`) under the title of every Markdown output in ``out`` (`NOT_STAMPED`
    aside; `stamp_text`); returns the files changed."""
    line, changed = line or status(out), []
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if not name.endswith(".md") or name in NOT_STAMPED or not os.path.isfile(path):
            continue
        with open(path) as f:
            text = f.read()
        new = stamp_text(text, line)
        if new != text:
            atomic_write(path, new)
            changed.append(name)
    return changed


def run_command(experiment: str, cfg, presets: dict, out: str) -> str:
    """The command line that made the run in ``out`` (without ``--out``: the folder holding it, wherever it
    was moved): ``--registration FILE`` for a registered run (made by its file alone), else the preset and
    one ``--set`` per field of ``cfg`` that differs from its preset's config (``presets[cfg.preset]()``, or the
    config class's defaults for a preset not in ``presets``):
    ``section.field=value`` inside a section, ``field=value`` for a top-level field."""
    reg = recorded(out)
    if reg is not None:
        return f"ntk-vs-nn run {experiment} --registration registrations/{reg.path}"

    def text(v):
        return ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)

    base = presets[cfg.preset]() if cfg.preset in presets else type(cfg)()
    sets = []
    for f in dataclasses.fields(cfg):
        if f.name == "preset":
            continue
        a, b = getattr(cfg, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(a):
            da, db = dataclasses.asdict(a), dataclasses.asdict(b)
            sets += [f"--set {f.name}.{k}={text(v)}" for k, v in da.items() if v != db.get(k)]
        elif a != b:
            sets.append(f"--set {f.name}={text(a)}")
    return " ".join([f"ntk-vs-nn run {experiment}", "--preset", cfg.preset, *sets])

"""Config machinery shared by every experiment: frozen dataclasses whose fields are sections
(themselves frozen dataclasses), one ``--set section.field=value`` parser, one config hash and one
loader of a saved ``config.json``.

Values are parsed with `ast.literal_eval` (bare words are taken as strings, ``a,b`` as a tuple of
strings) and must match the field's type; unknown keys are errors (`UserError`: one line, exit 2).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import typing


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, exit code 2."""


@dataclasses.dataclass(frozen=True)
class IntervalConfig:
    """The bootstrap settings of a claims section (as the tables' `messages` section): draws, level, seed."""

    SECTION: typing.ClassVar[str] = "claim"  # the section's name in error messages

    n_boot: int = 2000  # bootstrap draws of every claim's confidence interval
    level: float = 0.95  # their confidence level
    boot_seed: int = 0  # their random draws

    def __post_init__(self):
        if self.n_boot < 100 or not 0.5 < self.level < 1.0:
            s = self.SECTION
            raise UserError(f"{s}.n_boot must be >= 100 and {s}.level in (0.5, 1)")


# Fields added to a section class after experiments hashed it, with the value that reproduces the
# older behaviour: `hash_dict` leaves them out of any section (a dict holding all of the class's
# fields) at that value, so every experiment that embeds the section keeps its hashes.
LATER_SECTION_FIELDS: dict[str, dict[str, object]] = {
    "TrainConfig": {"crop_pad": 0, "shift": 3, "noise": 0.1, "mixup": 0.0},
}
_SECTION_KEYS: dict[str, frozenset] = {}  # class name -> its field names (filled by `section_fields`)


def section_fields(cls) -> None:
    """Register a section class whose `LATER_SECTION_FIELDS` `hash_dict` must leave out at neutral."""
    _SECTION_KEYS[cls.__name__] = frozenset(f.name for f in dataclasses.fields(cls))


def _strip_later(d):
    if not isinstance(d, dict):
        return d
    d = {k: _strip_later(v) for k, v in d.items()}
    for name, later in LATER_SECTION_FIELDS.items():
        keys = _SECTION_KEYS.get(name)
        if keys and set(d) == keys:
            d = {k: v for k, v in d.items() if not (k in later and v == later[k])}
    return d


def hash_dict(d: dict, strip_later: bool = True) -> str:
    """The 12-hex-digit config hash of a JSON-able dict (what each config's ``science_hash`` keeps);
    fields added to a section later are left out at their neutral value (`LATER_SECTION_FIELDS`;
    ``strip_later=False``: the tables' `Config`, whose own generations of fields handle them)."""
    d = _strip_later(d) if strip_later else d
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:12]


# config class -> {(section, field): value}: the value a saved config that lacks the field ran with (the
# field's behaviour before it existed), where `from_dict` must not take the class default
NEUTRAL_WHEN_MISSING: dict[type, dict[tuple[str, str], object]] = {}


def from_dict(cls, d: dict):
    """Rebuild a sectioned config of type ``cls`` from ``dataclasses.asdict`` output (a saved
    config.json). A section saved by an older version may lack fields added since: they take the value
    that reproduces the older behaviour (`NEUTRAL_WHEN_MISSING`), else their defaults; lists become
    tuples. Unknown or malformed content is a UserError."""
    hints = typing.get_type_hints(cls)
    neutral = NEUTRAL_WHEN_MISSING.get(cls, {})
    try:
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            typ = hints[f.name]
            if dataclasses.is_dataclass(typ):
                saved = {k: tuple(v) if isinstance(v, list) else v for k, v in d[f.name].items()}
                missing = {k: v for (s, k), v in neutral.items() if s == f.name and k not in saved}
                kw[f.name] = typ(**missing, **saved)
            else:
                kw[f.name] = tuple(d[f.name]) if isinstance(d[f.name], list) else d[f.name]
        return cls(**kw)
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"saved config is not readable by this version ({e})") from None


_BOOL_WORDS = {"true": True, "false": False}  # any case; 1/0 and yes/no stay errors (ambiguous types)


def _parse_value(key: str, raw: str, typ):
    origin = typing.get_origin(typ)
    if origin is tuple:
        item = typing.get_args(typ)[0] if typing.get_args(typ) else str
        if item is not str:  # numbers: each comma-separated item parsed as one (``0.1,0.2``; ``()`` = none)
            parts = () if raw.strip() in ("", "()") else [s.strip() for s in raw.strip("()[] ").split(",") if s.strip()]
            try:
                return tuple(_parse_value(key, p, item) for p in parts)
            except UserError:
                raise UserError(f"--set {key}: expected comma-separated numbers, got {raw!r}") from None
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = tuple(s.strip() for s in raw.split(",") if s.strip())
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
            raise UserError(f"--set {key}: expected a comma-separated list of names, got {raw!r}")
        return tuple(value)
    if typ is str:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if not isinstance(value, str):
            value = raw
        return value
    if typ is bool and raw.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[raw.strip().lower()]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise UserError(f"--set {key}: cannot parse {raw!r} as {typ.__name__}") from None
    if typ is bool:
        if not isinstance(value, bool):
            raise UserError(f"--set {key}: expected true or false, got {raw!r}")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"--set {key}: expected an integer, got {raw!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"--set {key}: expected a number, got {raw!r}")
        value = float(value)
    return value


def override(cfg, items: list[str], top_level: tuple[str, ...] | None = None):
    """Apply ``section.field=value`` (or top-level ``field=value``) items to any frozen dataclass
    config whose sections are dataclasses (Config, and the experiment configs of gaussian.py and
    channels.py). Values are parsed by `_parse_value` (literal_eval, type-checked; bare words are
    strings, ``a,b`` a tuple of strings). ``top_level``: the top-level fields that may be set (default:
    every field that is not a section). Unknown keys are a UserError listing the valid ones."""
    hints = typing.get_type_hints(type(cfg))
    settable = tuple(k for k, t in hints.items() if not dataclasses.is_dataclass(t)) if top_level is None else top_level
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        parts = key.split(".")
        if len(parts) == 1 and key in settable:
            cfg = dataclasses.replace(cfg, **{key: _parse_value(key, raw, hints[key])})
            continue
        unknown = UserError(f"--set: unknown key {key!r}; valid keys: {', '.join(valid_keys(cfg, settable))}")
        if len(parts) != 2 or parts[0] not in hints or not dataclasses.is_dataclass(hints[parts[0]]):
            raise unknown
        section = getattr(cfg, parts[0])
        sec_hints = typing.get_type_hints(type(section))
        if parts[1] not in sec_hints:
            raise unknown
        value = _parse_value(key, raw, sec_hints[parts[1]])
        cfg = dataclasses.replace(cfg, **{parts[0]: dataclasses.replace(section, **{parts[1]: value})})
    return cfg


def valid_keys(cfg, top_level: tuple[str, ...] = ()) -> list[str]:
    """``section.field`` keys of ``cfg``'s type, then the settable top-level fields."""
    keys = []
    for name, typ in typing.get_type_hints(type(cfg)).items():
        if dataclasses.is_dataclass(typ):
            keys += [f"{name}.{f.name}" for f in dataclasses.fields(typ)]
    return keys + list(top_level)

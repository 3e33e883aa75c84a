"""Numbers quoted in README.md and docs/ from committed results files, kept current (`ntk-vs-nn docs`).

A quote is a marked span of markdown whose text is generated from one row of a results CSV:

    <!-- q results/quick-mnist1d/messages.csv message=1 family=ntk comparison="train-sum - ens"
         {d:+.2f} [{ci_low:+.2f}, {ci_high:+.2f}] -->-3.15 [-3.61, -2.71]<!-- /q -->

The opening comment names the CSV (relative to the repository root), selects its one row by
``column=value`` pairs (a value with spaces in double quotes; compared as text, and as a number where
both sides are numbers) and gives the text as a Python format string over that row's columns. The
comments are invisible in rendered markdown; the text between them is what a reader sees.
`render` rewrites every quote's text from its source; `stale` lists the quotes whose text differs,
which tests/test_docs.py asserts is none, so a number in the docs cannot drift from its results file.
"""

from __future__ import annotations

import glob
import math
import os
import re
import shlex
from typing import NamedTuple

import pandas as pd

from ntk_vs_nn.config.base import UserError

QUOTE = re.compile(r"<!-- q (?P<spec>.+?) -->(?P<text>.*?)<!-- /q -->", re.S)
_FIELD = re.compile(r"\{[^{}]*\}")


class Stale(NamedTuple):
    path: str
    line: int
    spec: str
    have: str
    want: str


def docs_files(root: str) -> list[str]:
    """The files whose quotes are kept: README.md, docs/*.md and the results folders' README.md under ``root``."""
    return [
        os.path.join(root, "README.md"),
        *sorted(glob.glob(os.path.join(root, "docs", "*.md"))),
        *sorted(glob.glob(os.path.join(root, "results", "**", "README.md"), recursive=True)),
    ]


def _parse(spec: str) -> tuple[str, dict[str, str], str]:
    """(csv path, {column: value}, format string) of a quote's opening comment."""
    fmt_at = _FIELD.search(spec)
    if fmt_at is None:
        raise UserError(f"quote {spec!r}: no {{column}} to show")
    head, fmt = spec[: fmt_at.start()], spec[fmt_at.start() :]
    try:
        words = shlex.split(head)
    except ValueError as e:
        raise UserError(f"quote {spec!r}: {e}") from None
    if not words or "=" in words[0]:
        raise UserError(f"quote {spec!r}: no results file named")
    where = {}
    for w in words[1:]:
        col, sep, value = w.partition("=")
        if not sep:
            raise UserError(f"quote {spec!r}: {w!r} is not column=value")
        where[col] = value
    return words[0], where, fmt.strip()


def _matches(cell, value: str) -> bool:
    if str(cell) == value:
        return True
    try:
        return math.isclose(float(cell), float(value))
    except (TypeError, ValueError):
        return False


def quote_text(spec: str, root: str, cache: dict | None = None) -> str:
    """The text a quote shows: its format string over the one row its selection picks."""
    path, where, fmt = _parse(spec)
    cache = {} if cache is None else cache
    full = os.path.join(root, path)
    if full not in cache:
        if not os.path.isfile(full):
            raise UserError(f"quote {spec!r}: {path} not found")
        cache[full] = pd.read_csv(full, dtype=object, keep_default_na=False)
    df = cache[full]
    missing = [c for c in where if c not in df.columns]
    if missing:
        raise UserError(f"quote {spec!r}: {path} has no column {', '.join(missing)}")
    rows = df[[all(_matches(r[c], v) for c, v in where.items()) for _, r in df.iterrows()]]
    if len(rows) != 1:
        raise UserError(f"quote {spec!r}: {len(rows)} rows of {path} match, not one")
    row = {k: _value(v) for k, v in rows.iloc[0].items()}
    try:
        return fmt.format(**row)
    except (KeyError, ValueError, IndexError) as e:
        raise UserError(f"quote {spec!r}: cannot format {fmt!r} ({e})") from None


def _value(v: str):
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def render(text: str, root: str, cache: dict | None = None) -> str:
    """``text`` with every quote's text generated again from its source."""
    cache = {} if cache is None else cache

    def sub(m):
        spec = " ".join(m.group("spec").split())
        return f"<!-- q {m.group('spec')} -->{quote_text(spec, root, cache)}<!-- /q -->"

    return QUOTE.sub(sub, text)


def stale(paths: list[str], root: str) -> list[Stale]:
    """Every quote in ``paths`` whose text differs from what its source gives now."""
    out, cache = [], {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for m in QUOTE.finditer(text):
            spec = " ".join(m.group("spec").split())
            want = quote_text(spec, root, cache)
            if m.group("text") != want:
                line = text.count("\n", 0, m.start()) + 1
                out.append(Stale(os.path.relpath(path, root), line, spec, m.group("text"), want))
    return out


def rewrite(paths: list[str], root: str) -> list[str]:
    """Rewrite the quotes of ``paths`` in place; the paths that changed."""
    changed, cache = [], {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        new = render(text, root, cache)
        if new != text:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(new)
            changed.append(path)
    return changed

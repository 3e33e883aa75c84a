"""Numbers quoted in README.md and docs/ from committed results files, kept current (`ntk-vs-nn docs`).

A quote is a marked span of markdown whose text is generated from one row of a results CSV:

    <!-- q results/quick-mnist1d/messages.csv message=1 family=ntk comparison="train-sum - ens"
         {d:+.2f} [{ci_low:+.2f}, {ci_high:+.2f}] -->-3.15 [-3.61, -2.71]<!-- /q -->

The opening comment names the CSV (relative to the repository root), selects its one row by
``column=value`` pairs (a value with spaces in double quotes; compared as text, and as a number where
both sides are numbers) and gives the text as a Python format string over that row's columns. The
comments are invisible in rendered markdown; the text between them is what a reader sees.

The source may also be a JSON file (one object: the row is the object, ``column=value`` pairs only
check its top-level fields, and the format reaches nested fields by index, ``{ms_per_step[ntk]:.1f}``
or ``{cases[0][ratio]}``; a list of objects: rows as in a CSV) or a JSON-lines file (one row a line).
A bare ``-`` between two selections quotes their difference: every numeric field of the first row
minus the same field of the second (other fields from the first); the second selection may name its
own file first:

    <!-- q results/diversity-fashion_mnist/diversity.csv student="DE-4 (ntk)" - student="DE-1 (ntk)"
         {acc_mean:+.2f} -->+1.84<!-- /q -->

`render` rewrites every quote's text from its source; `stale` lists the quotes whose text differs,
which tests/report/test_docs.py asserts is none, so a number in the docs cannot drift from its results file.
"""

from __future__ import annotations

import glob
import json
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


def _parse(spec: str) -> tuple[list[tuple[str, dict[str, str]]], str]:
    """([(file, {column: value}) per selection], format string) of a quote's opening comment."""
    fmt_at = _FIELD.search(spec)
    if fmt_at is None:
        raise UserError(f"quote {spec!r}: no {{column}} to show")
    head, fmt = spec[: fmt_at.start()], spec[fmt_at.start() :]
    try:
        words = shlex.split(head)
    except ValueError as e:
        raise UserError(f"quote {spec!r}: {e}") from None
    groups, group = [], []
    for w in words:
        if w == "-":
            groups.append(group)
            group = []
        else:
            group.append(w)
    groups.append(group)
    if len(groups) > 2:
        raise UserError(f"quote {spec!r}: a difference takes two selections, not {len(groups)}")
    selections, path = [], None
    for g in groups:
        if g and "=" not in g[0]:
            path, g = g[0], g[1:]
        if path is None:
            raise UserError(f"quote {spec!r}: no results file named")
        where = {}
        for w in g:
            col, sep, value = w.partition("=")
            if not sep:
                raise UserError(f"quote {spec!r}: {w!r} is not column=value")
            where[col] = value
        selections.append((path, where))
    return selections, fmt.strip()


def _matches(cell, value: str) -> bool:
    if str(cell) == value:
        return True
    try:
        return math.isclose(float(cell), float(value))
    except (TypeError, ValueError):
        return False


def _rows(full: str) -> list[dict]:
    """The rows of a results file: a CSV's lines (numbers parsed), a JSON object, a JSON list's objects, JSON lines."""
    if full.endswith(".jsonl"):
        with open(full, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    if full.endswith(".json"):
        with open(full, encoding="utf-8") as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, list) else [doc]
    df = pd.read_csv(full, dtype=object, keep_default_na=False)
    return [{k: _value(v) for k, v in r.items()} for r in df.to_dict("records")]


def _row(spec: str, path: str, where: dict[str, str], root: str, cache: dict) -> dict:
    """The one row of ``path`` that ``where`` selects."""
    full = os.path.join(root, path)
    if full not in cache:
        if not os.path.isfile(full):
            raise UserError(f"quote {spec!r}: {path} not found")
        cache[full] = _rows(full)
    rows = cache[full]
    missing = [c for c in where if not any(c in r for r in rows)]
    if missing:
        raise UserError(f"quote {spec!r}: {path} has no column {', '.join(missing)}")
    picked = [r for r in rows if all(c in r and _matches(r[c], v) for c, v in where.items())]
    if len(picked) != 1:
        raise UserError(f"quote {spec!r}: {len(picked)} rows of {path} match, not one")
    return picked[0]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def quote_text(spec: str, root: str, cache: dict | None = None) -> str:
    """The text a quote shows: its format string over the one row its selection picks (or two rows' difference)."""
    selections, fmt = _parse(spec)
    cache = {} if cache is None else cache
    row, *other = (_row(spec, path, where, root, cache) for path, where in selections)
    if other:
        (b,) = other
        row = {k: v - b[k] if _number(v) and _number(b.get(k)) else v for k, v in row.items()}
    try:
        return fmt.format(**row)
    except (KeyError, ValueError, IndexError, TypeError) as e:
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

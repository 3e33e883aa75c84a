"""Numbers README.md and docs/ quote from results files (`report.quotes`, `ntk-vs-nn docs`): current on the
tree, and a planted stale number, or a changed source, is caught."""

import os
import re
import shutil

import pytest

from ntk_vs_nn.cli import main
from ntk_vs_nn.config.base import UserError
from ntk_vs_nn.report import quotes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_docs_quotes_are_current():
    """Every quote in README.md and docs/*.md shows what its results file gives now (run `make docs`)."""
    paths = quotes.docs_files(REPO)
    n = sum(len(quotes.QUOTE.findall(open(p, encoding="utf-8").read())) for p in paths)
    assert n >= 20  # the README's headline tables are quoted: the check is not vacuous
    found = quotes.stale(paths, REPO)
    assert not found, "\n".join(f"{q.path}:{q.line}: {q.have!r} != {q.want!r}" for q in found)


def _tree(tmp_path, readme: str):
    """A repository root with ``readme`` and the real results/ (a link)."""
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    (tmp_path / "docs").mkdir()
    os.symlink(os.path.join(REPO, "results"), tmp_path / "results")
    return str(tmp_path)


def test_a_planted_stale_number_is_caught_and_rewritten(tmp_path, capsys):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    m = next(m for m in quotes.QUOTE.finditer(text) if re.search(r"\d\.\d\d", m.group("text")))
    good = m.group("text")
    bad = re.sub(r"(\d)\.(\d)(\d)", lambda d: f"{d[1]}.{d[2]}{(int(d[3]) + 1) % 10}", good, count=1)
    assert bad != good
    root = _tree(tmp_path, text[: m.start("text")] + bad + text[m.end("text") :])
    found = quotes.stale(quotes.docs_files(root), root)
    assert [(q.have, q.want) for q in found] == [(bad, good)]
    assert found[0].line == text.count("\n", 0, m.start()) + 1
    assert main(["docs", "--check", "--root", root]) == 1
    assert f"quotes {bad!r}, its source gives {good!r}" in capsys.readouterr().out
    assert main(["docs", "--root", root]) == 0  # rewrites it
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == text
    assert main(["docs", "--check", "--root", root]) == 0


def test_a_changed_source_makes_its_quote_stale(tmp_path):
    """The same quote against a copy of its CSV with the number changed: stale."""
    spec = 'results/quick-mnist1d/messages.csv message=1 family=ntk comparison="train-sum - ens" {d:+.2f}'
    readme = f"ours: <!-- q {spec} -->{quotes.quote_text(spec, REPO)}<!-- /q -->\n"
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    (tmp_path / "docs").mkdir()
    src = tmp_path / "results" / "quick-mnist1d"
    src.mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "results", "quick-mnist1d", "messages.csv"), src)
    root = str(tmp_path)
    assert quotes.stale(quotes.docs_files(root), root) == []
    csv = (src / "messages.csv").read_text()
    row = next(line for line in csv.splitlines() if line.startswith("1,ntk,") and ",train-sum - ens," in line)
    d = row.split(",train-sum - ens,")[1].split(",")[2]  # strict, primary, d
    (src / "messages.csv").write_text(csv.replace(row, row.replace(d, str(float(d) - 1.0), 1)))
    assert len(quotes.stale(quotes.docs_files(root), root)) == 1


@pytest.mark.parametrize(
    "spec, match",
    [
        ("results/quick-mnist1d/messages.csv message=1 {d}", "rows of .* match, not one"),
        ("results/quick-mnist1d/messages.csv message=9 {d}", "0 rows"),
        ("results/quick-mnist1d/messages.csv flavour=1 {d}", "no column flavour"),
        ("results/no-such/messages.csv message=1 {d}", "not found"),
        ("results/quick-mnist1d/messages.csv message=1 family=ntk", r"no \{column\}"),
        ("results/quick-mnist1d/messages.csv message=1 family=ntk comparison=\"ens - single-best\" {nope}",
         "cannot format"),
    ],
)  # fmt: skip
def test_a_bad_quote_is_one_clear_error(spec, match):
    with pytest.raises(UserError, match=match):
        quotes.quote_text(spec, REPO)


def test_a_json_source_and_a_difference_of_two_rows(tmp_path):
    """A JSON object's nested fields by index, a JSON list's rows, JSON lines, and `-` between two selections."""
    (tmp_path / "b.json").write_text(
        '{"name": "b", "ms": {"nn": 8.5, "ntk": 10.0}, "cases": [{"net": "A", "r": 1.25}, {"net": "B", "r": 2.5}]}'
    )
    (tmp_path / "l.json").write_text('[{"net": "A", "r": 1.25}, {"net": "B", "r": 2.5}]')
    (tmp_path / "r.jsonl").write_text('{"unit": "a", "acc": 90.5}\n{"unit": "b", "acc": 88.0}\n')
    (tmp_path / "t.csv").write_text("family,protocol,acc\nnn,ensemble,98.47\nnn,single,97.28\n")
    root = str(tmp_path)
    assert quotes.quote_text("b.json name=b {ms[ntk]:.1f} / {cases[1][r]}", root) == "10.0 / 2.5"
    assert quotes.quote_text("l.json net=B {r:.2f}", root) == "2.50"
    assert quotes.quote_text("r.jsonl unit=a - unit=b {acc:+.1f} ({unit})", root) == "+2.5 (a)"
    assert quotes.quote_text("t.csv protocol=ensemble - protocol=single {acc:+.2f}", root) == "+1.19"
    assert quotes.quote_text("t.csv protocol=ensemble - l.json net=A {acc:.2f}", root) == "98.47"  # no r in t.csv
    with pytest.raises(UserError, match="0 rows"):
        quotes.quote_text("b.json name=c {name}", root)
    with pytest.raises(UserError, match="two selections"):
        quotes.quote_text("t.csv protocol=ensemble - protocol=single - protocol=kd {acc}", root)
    with pytest.raises(UserError, match="cannot format"):
        quotes.quote_text("b.json {ms[gp]}", root)

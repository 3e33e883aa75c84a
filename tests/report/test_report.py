"""The paper's numbers as package data (`ntk_vs_nn.paper`) and the report (`ntk_vs_nn.report`) on
hand-made output folders: files, valid PNGs, our and the paper's numbers, deltas, verdicts."""

import dataclasses
import json
import math

import matplotlib.image
import pandas as pd
import pytest

from ntk_vs_nn import paper
from ntk_vs_nn.analysis import intervals, published
from ntk_vs_nn.analysis.messages import CLAIMS
from ntk_vs_nn.analysis.tables import COLUMNS
from ntk_vs_nn.cli import main
from ntk_vs_nn.config import Config, MessagesConfig, UserError
from ntk_vs_nn.report import markdown_to_html, stability, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- the paper's tables ------------------------------------------------------------------------
def test_parse_cell_lost_digits_oom_and_plus_minus():
    c = paper.parse_cell("73.?")
    assert math.isnan(c.value) and c.status == "lost digit" and (c.lo, c.hi) == (73.0, 74.0)
    c = paper.parse_cell("78.4?")
    assert math.isnan(c.value) and c.lo == pytest.approx(78.4) and c.hi == pytest.approx(78.5)
    c = paper.parse_cell("oom")
    assert math.isnan(c.value) and c.status == "oom"
    assert paper.parse_cell("").status == "not reported"
    c = paper.parse_cell("95.22")
    assert (c.value, c.status, c.lo, c.hi) == (95.22, "ok", 95.22, 95.22)
    c = paper.parse_cell("93.37±0.11")
    assert (c.value, c.std, c.status) == (93.37, 0.11, "ok")
    assert paper.parse_cell("1.86M").status == "text"


def test_load_parses_question_marks_and_oom_to_nan_with_status():
    k = paper.load("kernel")
    r16 = k[(k.model == "ResNet16-2") & (k.dataset == "cifar10")].iloc[0]
    assert math.isnan(r16.ensemble_acc) and r16.single_best_of_10_acc == 68.32
    assert r16.status == "lost digit" and "ensemble_acc=73.?" in r16.status_detail
    r165 = k[k.model == "ResNet16-5"].iloc[0]
    assert "lost digit" in r165.status and "oom" in r165.status
    assert "knowledge_distillation_acc=70.2?" in r165.status_detail and math.isnan(r165.knowledge_distillation_acc)
    oom = k[(k.model == "ResNet10-2") & (k.dataset == "cifar100")].iloc[0]
    assert oom.status.startswith("oom") and math.isnan(oom.single_best_of_10_acc)
    nn = paper.load("allenzhu_li_fig1_neural_networks.csv")  # a file name works too
    assert (nn.status == "ok").all() and nn.single_mean_acc.notna().all()
    nam = paper.load("nam")
    assert nam.loc[1, "acc"] == 93.37 and nam.loc[1, "acc_std"] == 0.11 and nam.loc[0, "params"] == "1.86M"
    assert paper.load_raw("kernel").loc[3, "ensemble_acc"] == "73.?"
    assert "Published figures" in paper.read_text("README.md")
    with pytest.raises(KeyError):
        paper.load("table_of_nothing")


def test_paper_tidy_uses_our_families_models_and_columns():
    t = published.tidy()
    assert list(t.columns[: len(COLUMNS)]) == COLUMNS
    assert set(t.family) == {"nn", "ntk", "ntk_prime", "gp"}
    row = t[(t.family == "ntk") & (t.model == "ResNet-10-2") & (t.dataset == "cifar10") & (t.protocol == "single")]
    assert row.iloc[0].paper_model == "ResNet10-2" and row.iloc[0].acc_best == 69.15
    assert math.isnan(row.iloc[0].acc_mean) and math.isnan(row.iloc[0].acc_std)  # not published
    lost = t[(t.model == "ResNet-16-2") & (t.protocol == "ensemble")].iloc[0]
    assert lost.status == "lost digit" and lost.raw == "73.?" and math.isnan(lost.acc_mean)


def test_paper_verdicts_are_computed_from_the_paper_numbers():
    v = published.verdicts(MessagesConfig())
    get = lambda m, fam, model, ds: v[  # noqa: E731
        (v.message == m) & (v.family == fam) & (v.model == model) & (v.dataset == ds)
    ].iloc[0]
    # ResNet-28-2 on CIFAR-10: ens 96.33 - single 95.22 = 1.11 > 3 * 0.14 -> message 7 holds
    r = get(7, "nn", "ResNet-28-2", "cifar10")
    assert r.verdict == "holds" and "+0.69" in r.evidence
    assert get(7, "nn", "ResNet-28-10", "cifar10").verdict == "fails"  # 0.50 < 3 * 0.21 (- band 0.10)
    assert get(5, "nn", "ResNet-34", "cifar100").verdict == "fails"
    # kernels: no σ published -> band = noise floor 0.10, and said so
    r = get(3, "ntk", "SimpleCNN-10-3", "cifar10")
    assert r.verdict == "fails" and "not published" in r.note and "band ±0.10" in r.evidence
    # lost digits: 78.4? and 70.2? decide message 2 over their whole range; oom leaves ① inconclusive
    r = get(2, "ntk", "ResNet-16-5", "cifar10")
    assert r.verdict == "holds" and "78.4?" in r.note and "every value" in r.note
    assert get(1, "ntk", "ResNet-16-5", "cifar10").verdict == "inconclusive"
    assert (v[(v.model == "ResNet-10-2") & (v.dataset == "cifar100")].verdict == "inconclusive").all()


# -- the report --------------------------------------------------------------------------------
def _rows(family, model, dataset, single, ens, tsum, kd, sd, by_size, status=None):
    """Tidy rows; single = (mean, std, best), sd = (mean, std, ensemble)."""
    status = status or {}
    out = []
    for protocol, (mean, std, best, extra) in {
        "single": (single[0], single[1], single[2], {}),
        "ensemble": (ens, math.nan, ens, {"acc_by_size": by_size}),
        "train_sum": (tsum, math.nan, tsum, {}),
        "kd": (kd, math.nan, kd, {}),
        "sd": (sd[0], sd[1], max(sd[0], sd[2]), {"acc_ensemble": sd[2]}),
    }.items():
        st = status.get(protocol, "ok")
        n = {"single": 10, "ensemble": 10, "train_sum": 10, "kd": 1, "sd": 5}[protocol] if st == "ok" else 0
        row = dict.fromkeys(COLUMNS, math.nan)
        row.update(family=family, model=model, dataset=dataset, protocol=protocol, n_members=n, status=st)
        row.update(acc_mean=mean, acc_std=std, acc_best=best, acc_by_size="", wall_s=1.0)
        row.update(extra)
        if st != "ok":
            row.update(acc_mean=math.nan, acc_best=math.nan, acc_by_size="")
        out.append(row)
    return out


def _sizes(start, stop, n=10):
    return " ".join(f"{start + (stop - start) * i / (n - 1):.2f}" for i in range(n))


def make_out(tmp_path, dataset="cifar10", kernels=True, with_messages=True, name=None, seed=0, replicates=1):
    out = tmp_path / (name or f"out-{dataset}")
    out.mkdir()
    cfg = dataclasses.replace(Config(preset="quick"), dataset=dataset)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed, replicates=replicates))
    h = cfg.science_hash()
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=list))
    nn = pd.DataFrame(
        _rows(
            "nn",
            "ResNet-28-2",
            dataset,
            (95.40, 0.20, 95.70),
            96.90,
            95.10,
            96.50,
            (96.00, 0.10, 96.60),
            _sizes(95.4, 96.9),
        ),
        columns=COLUMNS,
    )
    (out / "table_nn.csv").write_text(nn.to_csv(index=False))
    tables = [nn]
    if kernels:
        ntk = pd.DataFrame(
            _rows(
                "ntk",
                "ResNet-10-2",
                dataset,
                (68.00, 1.50, 70.00),
                74.00,
                75.00,
                69.00,
                (66.00, 1.00, 69.00),
                _sizes(70.0, 74.0),
            )
            + _rows(
                "gp",
                "ResNet-10-2",
                dataset,
                (40.00, 2.00, 43.00),
                48.00,
                math.nan,
                39.00,
                (38.00, 1.00, 41.00),
                _sizes(43.0, 48.0),
                status={"train_sum": "oom"},
            ),
            columns=COLUMNS,
        )
        (out / "table_ntk.csv").write_text(ntk.to_csv(index=False))
        tables.append(ntk)
    if with_messages:
        from ntk_vs_nn.analysis.messages import messages

        mdf = messages(pd.concat(tables), MessagesConfig())
        (out / "messages.csv").write_text(mdf.to_csv(index=False))
    records = [
        dict(
            config_hash=h,
            dataset=dataset,
            date=f"2026-11-22T23:{50 + i}:00+00:00",
            wall_s=30.0,
            git_sha="abc1234",
            device="cpu:cpu x1",
            family="nn",
            model="ResNet-28-2",
            protocol="single",
            member=i,
            status="ok",
            unit=f"{h}/nn/ResNet-28-2/single-{i}",
            versions={"jax": "0.10.2"},
            metrics={"acc": 95.0},
        )
        for i in range(3)
    ]
    records.append(dict(records[0], config_hash="someotherhash", unit="x/y", git_sha="zzz9999"))
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out, h


def _check_png(path):
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300 and img.shape[2] in (3, 4)
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_write_report_same_dataset_shows_paper_numbers_and_deltas(tmp_path):
    out, h = make_out(tmp_path)
    paths = write_report(str(out))
    assert set(paths) == {"md", "html", "figures"}
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert len(paths["figures"]) == 2
    for p in paths["figures"]:
        _check_png(out / "figures" / p.rsplit("/", 1)[-1])
    # provenance
    assert f"`{h}`" in md and "`abc1234`" in md and "zzz9999" not in md and "preset `quick`" in md
    assert (
        "2026-11-22 23:49:30 → 2026-11-22 23:52:00 UTC" in md
        and "90 s" in md
        and "1 record of other configs ignored" in md
    )
    # our numbers, the paper's numbers for the same cell, and the delta
    assert "95.40 ± 0.20 (n=10)" in md and "95.22 ± 0.14 (n=10)" in md
    assert "+0.18 (95.40 vs 95.22)" in md  # nn single: mean vs mean
    assert "+0.57 (96.90 vs 96.33)" in md  # nn ensemble
    assert "+0.85 (70.00 vs 69.15)" in md  # ntk single: best vs best of 10
    assert "qualitative" not in md
    # our oom cell stays visible; the paper's lost digits are shown as printed
    assert "| ResNet-10-2 | gp | 43.00 (best of 10) | 48.00 | oom |" in md
    assert "73.? (lost digit)" in md
    # message verdicts side by side: the paper's for the same setting (ResNet-28-2, cifar10)
    line7 = next(x for x in md.splitlines() if x.startswith("| ⑦ | the ensemble gain"))
    assert line7.count("**holds** (ResNet-28-2)") == 2 and "1 fails: ResNet-28-10" in line7
    # HTML: the same content, tables and the figures
    assert "<table>" in html and 'src="figures/protocols.png"' in html and 'src="figures/ensemble_size.png"' in html
    assert "+0.18 (95.40 vs 95.22)" in html and "<h1>" in html


def test_write_report_other_dataset_is_qualitative_and_recomputes_messages(tmp_path):
    out, _ = make_out(tmp_path, dataset="mnist1d", kernels=False, with_messages=False)
    paths = write_report(str(out))
    md = (out / "report.md").read_text()
    assert "**The comparison is qualitative.**" in md and "`cifar10` (for reference only" in md
    assert "96.33" in md and "None: no row of the paper has our setting (different dataset)" in md
    assert "| ⑦ | the ensemble gain is not the variance of singles | nn | **holds** (ResNet-28-2) | — |" in md
    for p in paths["figures"]:
        _check_png(out / "figures" / p.rsplit("/", 1)[-1])


def test_write_report_needs_a_table(tmp_path):
    with pytest.raises(UserError, match="table_nn.csv"):
        write_report(str(tmp_path))


def test_markdown_to_html_subset():
    html = markdown_to_html("# T `x`\n\npara **b** <i>\nmore\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n- one\n- two\n")
    assert "<h1>T <code>x</code></h1>" in html and "<p>para <strong>b</strong> &lt;i&gt; more</p>" in html
    assert "<th>a</th><th>b</th>" in html and "<td>1</td><td>2</td>" in html and "<li>two</li>" in html


def test_backend_comparison_cells_and_noise():
    from ntk_vs_nn.report import backend_markdown

    def table(single_best, std, ens):
        return pd.DataFrame(
            [
                dict(
                    model="M",
                    family="ntk",
                    protocol="single",
                    acc_mean=single_best - 1,
                    acc_std=std,
                    acc_best=single_best,
                ),
                dict(model="M", family="ntk", protocol="ensemble", acc_mean=ens, acc_std=float("nan"), acc_best=ens),
            ]
        )

    md = backend_markdown(table(70.0, 1.5, 80.0), table(71.0, 9.0, 75.0))
    rows = [line for line in md.splitlines() if line.startswith("| M |")]
    # single compares the best member (+1.00, inside 2σ = 3.00 of the weights singles); ensemble -5.00 is outside
    assert rows[0].split(" | ")[3:] == ["70.00", "71.00", "+1.00", "3.00", "yes |"]
    assert rows[1].split(" | ")[3:] == ["80.00", "75.00", "-5.00", "3.00", "no |"]


def test_infinite_width_rows_beside_finite_ensembles():
    from ntk_vs_nn.report import infinite_width_markdown

    def row(family, protocol, acc, n=3, status="ok"):
        return dict(
            model="M",
            family=family,
            protocol=protocol,
            n_members=n,
            acc_mean=acc,
            nll_mean=1.5,
            ece_mean=20.0,
            status=status,
        )

    # the weights table predates the ECE column: its cells say "–"
    weights = pd.DataFrame([row("ntk", "single", 60.0), row("ntk", "ensemble", 65.0)]).drop(columns="ece_mean")
    function = pd.DataFrame(
        [
            row("ntk", "ensemble", 70.0),
            row("ntk_inf", "single", 80.0, n=1),
            row("ntk_inf", "ensemble", 80.0, n=1),
            row("nngp_inf", "ensemble", float("nan"), n=1, status="oom"),
        ]
    )
    md = infinite_width_markdown(weights, function)
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| M |")]
    assert [(r[1], r[2], r[4], r[6]) for r in rows] == [
        ("ntk", "finite, weight space", "65.00", "– |"),
        ("ntk", "finite, function space", "70.00", "20.00 |"),
        ("ntk_inf", "∞ (stax)", "80.00", "20.00 |"),
    ]
    assert infinite_width_markdown(weights, function[function["family"] == "ntk"]) == ""


# -- messages.csv with one row per comparison: evidence and seed stability ---------------------
def comparison_frame(cis, family="nn", model="ResNet-28-2", dataset="cifar10", n_test=1000, n_replicates=2):
    """A messages.csv of `analysis.intervals` by hand: ``cis`` = {(message, comparison): (d, lo, hi)};
    each verdict by the interval rule, each message's verdict from its primary comparisons."""
    flags = {
        (m, name): (strict, primary) for m, comps in intervals.COMPARISONS.items() for name, _, strict, primary in comps
    }
    rows = []
    for (msg, name), (d, lo, hi) in cis.items():
        strict, primary = flags[(msg, name)]
        verdict = "holds" if (lo > 0 if strict else lo >= 0) else "fails" if hi < 0 else "inconclusive"
        rows.append(dict(
            message=msg, family=family, model=model, dataset=dataset, claim=CLAIMS[msg][1], comparison=name,
            strict=strict, primary=primary, d=d, ci_low=lo, ci_high=hi, verdict=verdict,
            min_detectable=(hi - lo) / 2, n_test=n_test, n_replicates=n_replicates, n_boot=2000, flags="",
            evidence=f"{name} = {d:+.2f} [{lo:+.2f}, {hi:+.2f}]",
        ))  # fmt: skip
    df = pd.DataFrame(rows)
    from ntk_vs_nn.analysis.verdict import combine

    df["message_verdict"] = [combine(list(df[(df.message == m) & df.primary]["verdict"])) for m in df["message"]]
    return pd.DataFrame(df, columns=intervals.COLUMNS)


BLOCK_A = {
    (1, "ens - single-best"): (1.0, 0.4, 1.6),  # holds
    (1, "train-sum - ens"): (-0.8, -1.3, -0.3),  # fails
    (4, "ens - (mean + 2σ)"): (0.1, -0.2, 0.4),  # inconclusive
    (4, "ens - train-sum"): (-0.5, -0.9, -0.1),  # fails
    (7, "ens - mean - 3σ"): (0.3, 0.1, 0.5),  # only in A
}
BLOCK_B = {
    (1, "ens - single-best"): (0.9, 0.2, 1.6),  # holds: agrees
    (1, "train-sum - ens"): (0.5, 0.1, 0.9),  # holds where A fails: disagrees
    (4, "ens - (mean + 2σ)"): (-0.6, -1.0, -0.2),  # fails where A is inconclusive: —
    (4, "ens - train-sum"): (-0.4, -0.7, -0.1),  # fails: agrees
    (6, "SD - (mean + σ)"): (0.2, -0.1, 0.5),  # only in B
}


def test_stability_agrees_disagrees_and_leaves_inconclusive_open(tmp_path):
    from ntk_vs_nn.report.tables import agreement

    assert [agreement(a, b) for a, b in [("holds", "holds"), ("fails", "fails"), ("holds", "fails"),
            ("fails", "holds"), ("inconclusive", "holds"), ("fails", "inconclusive"),
            ("inconclusive", "inconclusive")]] == ["yes", "yes", "no", "no", "—", "—", "—"]  # fmt: skip
    # through a CSV, as the report reads them
    a, b = (tmp_path / "a.csv", tmp_path / "b.csv")
    comparison_frame(BLOCK_A).to_csv(a, index=False)
    comparison_frame(BLOCK_B).to_csv(b, index=False)
    st = stability(pd.read_csv(a), pd.read_csv(b))
    got = {(r.message, r.comparison): (r.verdict_a, r.verdict_b, r.agree) for r in st.itertuples()}
    assert got == {
        (1, "ens - single-best"): ("holds", "holds", "yes"),
        (1, "train-sum - ens"): ("fails", "holds", "no"),
        (4, "ens - (mean + 2σ)"): ("inconclusive", "fails", "—"),
        (4, "ens - train-sum"): ("fails", "fails", "yes"),
    }
    row = st[st.comparison == "train-sum - ens"].iloc[0]
    assert (row.d_a, row.ci_low_a, row.ci_high_a) == (-0.8, -1.3, -0.3)
    assert (row.d_b, row.ci_low_b, row.ci_high_b) == (0.5, 0.1, 0.9)
    # another family or model is another comparison
    other = comparison_frame(BLOCK_B, model="ResNet-10-1")
    assert stability(comparison_frame(BLOCK_A), other).empty


def _two_blocks(tmp_path):
    a, _ = make_out(tmp_path, name="block-a", seed=0, replicates=3)
    b, _ = make_out(tmp_path, name="block-b", seed=3, replicates=3)
    (a / "messages.csv").write_text(comparison_frame(BLOCK_A).to_csv(index=False))
    (b / "messages.csv").write_text(comparison_frame(BLOCK_B).to_csv(index=False))
    return a, b


def test_report_evidence_shows_intervals_and_smallest_detectable(tmp_path):
    a, _ = _two_blocks(tmp_path)
    write_report(str(a))
    md = (a / "report.md").read_text()
    evidence = md.split("### Our evidence", 1)[1].split("\n## ", 1)[0]
    line = next(x for x in evidence.splitlines() if "| train-sum - ens ≥ 0 |" in x)
    assert line == "| ① | nn | ResNet-28-2 | train-sum - ens ≥ 0 | -0.80 [-1.30, -0.30] | fails | **fails** | ±0.50 |"
    assert "| ⑦ | nn | ResNet-28-2 | ens - mean - 3σ | +0.30 [+0.10, +0.50] | holds | **holds** | ±0.20 |" in evidence
    assert "smallest detectable" in evidence
    # how our verdicts were decided; the paper's keep the noise band
    assert "paired-bootstrap" in md and "n_test = 1000" in md and "(R = 2)" in md and "2000 draws" in md
    assert "holds if ci_low > 0 and fails if ci_high < 0" in md
    assert "publishes no per-example predictions" in md and "noise band = max(noise_sigma·σ, noise_floor)" in md
    assert "by the same tests and thresholds as ours" not in md and "Seed stability" not in md
    # the side-by-side table has the messages' verdicts, once per message
    line1 = next(x for x in md.splitlines() if x.startswith("| ① |") and "ours" not in x and "| nn |" in x)
    assert "**fails** (ResNet-28-2)" in line1 and line1.count("(ResNet-28-2)") <= 2


def test_report_against_writes_seed_stability(tmp_path, capsys):
    a, b = _two_blocks(tmp_path)
    assert main(["report", "--out", str(a), "--against", str(b)]) == 0
    out = capsys.readouterr().out
    assert "stability.md" in out and "1 disagree" in out
    st = pd.read_csv(a / "stability.csv")
    assert list(st["agree"]) == ["yes", "no", "—", "yes"]
    assert list(st["verdict_b"]) == ["holds", "holds", "fails", "fails"]
    for text in ((a / "stability.md").read_text(), (a / "report.md").read_text()):
        assert "Seed stability" in text
        assert "run.seed = 0, run.replicates = 3: root seeds 0, 1, 2" in text
        assert "run.seed = 3, run.replicates = 3: root seeds 3, 4, 5" in text
        assert (
            "| ① | nn | ResNet-28-2 | train-sum - ens ≥ 0 | -0.80 [-1.30, -0.30] | fails | +0.50 [+0.10, +0.90] "
            "| holds | **no** |" in text
        )
        assert "4 comparisons in both blocks, 3 conclusive in both: 2 agree, 1 disagree" in text
        assert "not independent" not in text and "differ outside the run section" not in text
    html = (a / "report.html").read_text()
    assert "Seed stability" in html


def test_report_against_overlapping_seeds_and_other_config_is_said(tmp_path):
    a, _ = make_out(tmp_path, name="a", seed=0, replicates=2)
    b, _ = make_out(tmp_path, dataset="mnist1d", name="b", seed=1, replicates=2)
    (a / "messages.csv").write_text(comparison_frame(BLOCK_A).to_csv(index=False))
    (b / "messages.csv").write_text(comparison_frame(BLOCK_B, dataset="mnist1d").to_csv(index=False))
    write_report(str(a), against=str(b))
    md = (a / "stability.md").read_text()
    assert "share root seed(s) 1: they are not independent" in md
    assert "dataset (cifar10 vs mnist1d)" in md


@pytest.mark.parametrize("case", ["missing", "old format", "no messages", "ours old format"])
def test_report_against_bad_folder_is_one_line_exit_2(tmp_path, capsys, case):
    a, b = _two_blocks(tmp_path)
    if case == "missing":
        b, needle = tmp_path / "nope", "no such folder"
    elif case == "old format":
        b, _ = make_out(tmp_path, name="old")  # messages.csv: one row per message
        needle = "no comparison rows"
    elif case == "no messages":
        (b / "messages.csv").unlink()
        needle = "has no messages.csv"
    else:
        a, _ = make_out(tmp_path, name="old")
        needle = "no comparison rows"
    assert main(["report", "--out", str(a), "--against", str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert not (a / "report.md").exists() and not (a / "stability.csv").exists()

"""A report of one output folder: our two tables beside the paper's, the message verdicts side by
side (paper vs ours), and figures.

    >>> from ntk_vs_nn.report import write_report
    >>> write_report("results/quick-mnist1d")  # doctest: +SKIP
    {'md': 'results/quick-mnist1d/report.md', 'html': ..., 'figures': [...]}

Reads OUT/table_nn.csv and OUT/table_ntk.csv (either may be missing, not both), OUT/messages.csv
(recomputed from the tables if missing), OUT/config.json and OUT/records.jsonl (run dates, wall
time, git SHA); writes OUT/report.md, OUT/report.html and OUT/figures/{protocols,ensemble_size}.png.
When messages.csv has one row per comparison (`analysis.intervals`), the report lists every
comparison's interval and says how those verdicts were decided; older folders (one row per message,
noise band) keep the older text. ``write_report(OUT, against=B)`` (`ntk-vs-nn report --against B`)
also compares each comparison's verdict with another root-seed block B: OUT/stability.{csv,md} and
a "Seed stability" section.
Only `read_run`, `save_figure`, `write_report` (and `report_markdown`, for the optional
OUT/kernel-function/table_ntk.csv) touch files; everything else maps data to Markdown strings or
matplotlib `Figure` objects (drawn with the Agg canvas, no pyplot state).

The modules, by job: `run` (reading a folder, provenance), `tables` (Markdown tables, deltas,
verdicts), `figures` (matplotlib), `html` (Markdown -> HTML page); this one puts them together.

The paper's numbers come from `ntk_vs_nn.paper` (Figure 1 of Allen-Zhu & Li). Per-cell deltas
are shown only where the setting matches: same model (spelling normalised by
`paper.canonical_model`) and same dataset (`paper.canonical_dataset`). When our dataset is not one
of the paper's, the comparison is qualitative and the paper's CIFAR-10 rows are shown for
reference.
"""

from __future__ import annotations

import os

import pandas as pd

from ntk_vs_nn import paper
from ntk_vs_nn.analysis import published
from ntk_vs_nn.config import MessagesConfig
from ntk_vs_nn.report.figures import figure_ensemble_size, figure_protocols, save_figure
from ntk_vs_nn.report.html import markdown_to_html
from ntk_vs_nn.report.run import (
    TABLES,
    RunData,
    config_differences,
    config_hash,
    our_messages,
    provenance_markdown,
    read_comparisons,
    read_run,
    reference_dataset,
    run_info,
    seed_block,
    seeds_of,
)
from ntk_vs_nn.report.tables import (
    CIRCLED,
    backend_markdown,
    comparisons_markdown,
    delta_markdown,
    delta_rows,
    format_cell,
    has_comparisons,
    infinite_width_markdown,
    messages_markdown,
    paper_verdicts_markdown,
    stability,
    stability_markdown,
    table_markdown,
    values_text,
)
from ntk_vs_nn.store import atomic_write

VERDICT_DOC = "docs/protocols.md, “The verdict rule”"

__all__ = [
    "RunData",
    "backend_markdown",
    "comparisons_markdown",
    "config_hash",
    "delta_markdown",
    "delta_rows",
    "figure_ensemble_size",
    "figure_protocols",
    "format_cell",
    "infinite_width_markdown",
    "markdown_to_html",
    "messages_markdown",
    "our_messages",
    "paper_verdicts_markdown",
    "read_run",
    "report_markdown",
    "run_info",
    "save_figure",
    "stability",
    "stability_markdown",
    "stability_report",
    "table_markdown",
    "write_report",
]


def report_markdown(
    run: RunData,
    paper_tidy: pd.DataFrame,
    paper_msgs: pd.DataFrame,
    ours_msgs: pd.DataFrame,
    figures: dict,
    stability_section: str | None = None,
) -> str:
    """The whole report as Markdown (``figures``: name -> path relative to the report;
    ``stability_section``: the body of a "Seed stability" section, `stability_report`)."""
    cfg = run.cfg
    dataset = str(cfg.get("dataset", next(iter(run.tables.values()))["dataset"].iloc[0]))
    info = run_info(cfg, run.records)
    ref, same_data = reference_dataset(dataset)
    ref_paper = paper_tidy[paper_tidy["dataset"] == ref]
    lines = [f"# ntk_vs_nn report: `{dataset}`, preset `{cfg.get('preset', '?')}`", ""]
    lines += [provenance_markdown(cfg, info), ""]
    if same_data:
        lines += [
            f"Our dataset is the paper's `{ref}`: its rows for `{ref}` are shown beside ours, with per-cell "
            "deltas (ours − paper) where the model matches too. Training budgets may still differ (see "
            "the training row above; the paper trains full CIFAR for hundreds of epochs).",
            "",
        ]
    else:
        lines += [
            f"**The comparison is qualitative.** Our dataset (`{dataset}`) is not one of the paper's "
            "(CIFAR-10, CIFAR-100), so no cell can be compared number for number: the paper's CIFAR-10 rows "
            "are shown for reference, and what carries over is the direction of each effect (the messages).",
            "",
        ]
    lines += ["## Figures", ""]
    if "protocols" in figures:
        lines += [
            f"![The five protocols per model, networks vs kernel models]({figures['protocols']})",
            "",
            "Test accuracy of the five protocols. Networks: single = mean ± std over the L members; "
            "kernel models: single = best of the L members (as in the paper). SD = mean ± std over the "
            "S students. The y axis does not start at 0 where the label says so.",
            "",
        ]
    if "ensemble_size" in figures:
        lines += [
            f"![Accuracy vs ensemble size]({figures['ensemble_size']})",
            "",
            "Accuracy of the ensemble of the first k members (k = 1..L), one line per family; the dotted "
            "line in the same colour is that family's train-sum model (the L members trained jointly).",
            "",
        ]
    for which, title in TABLES.items():
        if which not in run.tables:
            continue
        ours = run.tables[which]
        fams = {"nn"} if which == "nn" else {"ntk", "ntk_prime", "gp"}
        theirs = ref_paper[ref_paper["family"].isin(fams)]
        lines += [f"## Table {which}: {title}", "", "### Ours", "", table_markdown(ours), ""]
        label = "same dataset" if same_data else "for reference only, a different dataset"
        lines += [f"### Paper (Allen-Zhu & Li, Figure 1), `{ref}` ({label})", ""]
        lines += [table_markdown(theirs) if len(theirs) else "No rows.", ""]
        deltas = delta_rows(ours, theirs) if same_data else []
        lines += ["### Deltas (ours − paper), same model and dataset", ""]
        if deltas:
            lines += [
                delta_markdown(deltas),
                "",
                "Each cell: ours − paper (ours vs paper), in accuracy points; single compares the mean for "
                "networks and the best member for kernel models.",
                "",
            ]
        else:
            why = "different dataset" if not same_data else "no model in common"
            lines += [f"None: no row of the paper has our setting ({why}).", ""]
    fn_path = os.path.join(run.out_dir, "kernel-function", "table_ntk.csv")
    if "ntk" in run.tables and os.path.isfile(fn_path):
        fn = pd.read_csv(fn_path, dtype={"acc_by_size": str})
        lines += [
            "## Kernel backends: weight space vs function space",
            "",
            "The same kernel families solved two ways (PROTOCOLS §1): trained in weight space like the nets "
            "(this table_ntk), and in function space on the empirical kernel (`kernel.backend=function`, "
            "`kernel-function/table_ntk.md`). The two use different losses and optimisers (weights: the "
            "nets' optimiser on cross-entropy; function: the configured kernel.solver), so they agree only "
            "as well as their training budgets match; the last column says whether each cell is within 2σ "
            "of the weight-space singles.",
            "",
            backend_markdown(run.tables["ntk"], fn),
            "",
        ]
        inf_md = infinite_width_markdown(run.tables["ntk"], fn)
        if inf_md:
            lines += [
                "### Infinite width",
                "",
                "`ntk_inf` / `nngp_inf`: the neural-tangents `stax` kernel of the same architecture, solved "
                "like the function-space rows — the limit of an infinitely wide net and of an infinite "
                "ensemble, so one deterministic member. Beside it, each finite family's ensemble of L "
                "members (accuracy %, NLL in nats, ECE in %). NLL and ECE treat the solver's outputs as "
                "logits: an MSE-regression kernel predictor outputs near one-hot scores, so its softmax is "
                "underconfident and its ECE large whatever its accuracy.",
                "",
                inf_md,
                "",
            ]
    comps = run.messages if has_comparisons(run.messages) else None
    mcfg = cfg.get("messages", {})

    def band(where: str) -> str:
        return (
            f"({where}; noise band = max(noise_sigma·σ, noise_floor) with "
            f"noise_sigma = {mcfg.get('noise_sigma', '?')}, noise_floor = {mcfg.get('noise_floor', '?')}). The "
            "paper does not publish the std of its kernel singles (only the best of 10), so its kernel messages "
            "use the noise floor alone; a cell with a lost digit (`73.?`) gives a verdict only when every value "
            "of the digit gives the same one; `oom` cells leave a message inconclusive."
        )

    lines += ["## Messages ①–⑦: ours vs the paper", "", messages_markdown(ours_msgs, paper_msgs, ref), ""]
    if comps is None:
        lines += [
            "The paper's verdicts are computed here from its published numbers by the same tests and "
            "thresholds as ours " + band("PROTOCOLS.md §3"),
            "",
        ]
    else:
        level = mcfg.get("level", 0.95)
        lines += [
            "Our verdicts are decided on confidence intervals from our per-example test predictions "
            f"({VERDICT_DOC}, `ntk_vs_nn.analysis.intervals`): each comparison's difference d (minus the "
            f"claim's threshold) gets a {100 * level:g} % paired-bootstrap interval, "
            f"{values_text(comps['n_boot'])} draws that resample the n_test = {values_text(comps['n_test'])} "
            "test examples (the same for every protocol), the replicates "
            f"(R = {values_text(comps['n_replicates'])}) and the members together. A strict comparison holds "
            "if ci_low > 0 and fails if ci_high < 0 (a non-strict one, `≥ 0`, holds if ci_low ≥ 0), "
            "otherwise it is inconclusive; a message holds when all its primary comparisons hold and fails "
            "when any fails. Each comparison's interval and the smallest difference the run could detect "
            "are under Our evidence.",
            "",
            "The paper publishes no per-example predictions, so its verdicts are computed here from its "
            "published numbers by the noise-band tests with the same thresholds " + band(VERDICT_DOC),
            "",
        ]
    if comps is not None:
        lines += [
            "### Our evidence",
            "",
            "Every comparison of each message, family and model: d = the difference minus the claim's "
            f"threshold with its {100 * level:g} % CI, the comparison's verdict, the message's verdict (from "
            "its primary comparisons; `vs single mean` rows are secondary), and the smallest detectable "
            "difference (± the CI half-width), all in accuracy points.",
            "",
            comparisons_markdown(comps, level),
            "",
        ]
    elif ours_msgs is not None and len(ours_msgs):
        lines += ["### Our evidence", "", "| # | family | model | verdict | evidence |", "|" + " --- |" * 5]
        for _, r in ours_msgs.sort_values(["message"], kind="stable").iterrows():
            lines.append(
                f"| {CIRCLED[int(r['message']) - 1]} | {r['family']} | {r['model']} | **{r['verdict']}** | "
                f"{r['evidence']} |"
            )
        lines.append("")
    if stability_section:
        lines += ["## Seed stability", "", stability_section, ""]
    lines += [
        "## Appendix: the paper's verdicts, computed from its numbers",
        "",
        paper_verdicts_markdown(paper_msgs),
        "",
        "## Sources",
        "",
        f"- Ours: `table_nn.csv`, `table_ntk.csv`, `messages.csv`, `config.json`, `records.jsonl` in `{run.out_dir}`.",
        f"- Paper: {paper.SOURCE} (`ntk_vs_nn/paper/tables/{paper.FILES['nn']}`, "
        f"`{paper.FILES['kernel']}`). Model names normalised (`ResNet10-2` → `ResNet-10-2`).",
        "",
    ]
    return "\n".join(lines)


def stability_report(a_dir: str, a_cfg: dict, b_dir: str, b_cfg: dict, table: pd.DataFrame) -> str:
    """The body of the "Seed stability" section (and of OUT/stability.md): both blocks' seeds, a note
    where their configs differ beyond the run section or their seeds overlap, the table
    (`stability_markdown`) and its summary line."""
    lines = [
        f"The comparisons of this run (A, `{a_dir}`: {seed_block(a_cfg)}) against another root-seed block of "
        f"the same experiment (B, `{b_dir}`: {seed_block(b_cfg)}), one row per comparison present in both. "
        "agree: yes when both verdicts are equal, — when either is inconclusive, **no** when one holds and "
        "the other fails.",
        "",
    ]
    shared = sorted(seeds_of(a_cfg) & seeds_of(b_cfg))
    if shared:
        lines += [f"**The blocks share root seed(s) {', '.join(map(str, shared))}: they are not independent.**", ""]
    diff = config_differences(a_cfg, b_cfg)
    if diff:
        lines += [f"**The configs also differ outside the run section:** {'; '.join(diff)} (A vs B).", ""]
    lines.append(stability_markdown(table))
    return "\n".join(lines)


def write_report(out_dir: str, cfg_dict: dict | None = None, against: str | None = None) -> dict:
    """Write OUT/report.md, OUT/report.html and OUT/figures/*.png; return their paths
    ({'md': ..., 'html': ..., 'figures': [...]}). With ``against`` (another folder of the same
    experiment and preset, another root-seed block), also OUT/stability.csv and OUT/stability.md
    (`stability`) and a "Seed stability" section, and the paths under 'stability_csv' and
    'stability_md'; both folders need a messages.csv with one row per comparison (UserError
    otherwise, before anything is written)."""
    run = read_run(out_dir, cfg_dict)
    section = None
    if against is not None:
        if not has_comparisons(run.messages):
            read_comparisons(out_dir, "--out")  # raises: which file is missing, or no comparison rows
        b_msgs, b_cfg = read_comparisons(against)
        stab = stability(run.messages, b_msgs)
        section = stability_report(out_dir, run.cfg, against, b_cfg, stab)
    table = pd.concat(run.tables.values(), ignore_index=True)
    mcfg = MessagesConfig(**run.cfg.get("messages", {}))
    figs = {"protocols": figure_protocols(table), "ensemble_size": figure_ensemble_size(table)}
    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    fig_paths = [save_figure(fig, os.path.join(fig_dir, f"{name}.png")) for name, fig in figs.items()]
    md = report_markdown(
        run,
        published.tidy(),
        published.verdicts(mcfg),
        our_messages(run),
        {n: f"figures/{n}.png" for n in figs},
        section,
    )
    md_path, html_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")
    atomic_write(md_path, md)
    atomic_write(html_path, markdown_to_html(md, f"ntk_vs_nn report: {run.cfg.get('dataset', '')}"))
    paths = {"md": md_path, "html": html_path, "figures": fig_paths}
    if section is not None:
        paths["stability_csv"] = os.path.join(out_dir, "stability.csv")
        paths["stability_md"] = os.path.join(out_dir, "stability.md")
        atomic_write(paths["stability_csv"], stab.to_csv(index=False))
        atomic_write(paths["stability_md"], f"# Seed stability\n\n{section}\n")
    return paths

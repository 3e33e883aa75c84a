"""A report of one output folder: our two tables beside the paper's, the message verdicts side by
side (paper vs ours), and figures.

    >>> from ntk_vs_nn.report import write_report
    >>> write_report("results/quick-mnist1d")  # doctest: +SKIP
    {'md': 'results/quick-mnist1d/report.md', 'html': ..., 'figures': [...]}

Reads OUT/table_nn.csv and OUT/table_ntk.csv (either may be missing, not both), OUT/messages.csv
(recomputed from the tables if missing), OUT/config.json and OUT/records.jsonl (run dates, wall
time, git SHA); writes OUT/report.md, OUT/report.html and OUT/figures/{protocols,ensemble_size}.png.
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
from ntk_vs_nn.config import MessagesConfig
from ntk_vs_nn.report.figures import figure_ensemble_size, figure_protocols, save_figure
from ntk_vs_nn.report.html import markdown_to_html
from ntk_vs_nn.report.run import (
    TABLES,
    RunData,
    config_hash,
    our_messages,
    provenance_markdown,
    read_run,
    reference_dataset,
    run_info,
)
from ntk_vs_nn.report.tables import (
    CIRCLED,
    backend_markdown,
    delta_markdown,
    delta_rows,
    format_cell,
    infinite_width_markdown,
    messages_markdown,
    paper_verdicts_markdown,
    table_markdown,
)
from ntk_vs_nn.store import atomic_write

__all__ = [
    "RunData",
    "backend_markdown",
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
    "table_markdown",
    "write_report",
]


def report_markdown(
    run: RunData, paper_tidy: pd.DataFrame, paper_msgs: pd.DataFrame, ours_msgs: pd.DataFrame, figures: dict
) -> str:
    """The whole report as Markdown (``figures``: name -> path relative to the report)."""
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
    lines += [
        "## Messages ①–⑦: ours vs the paper",
        "",
        messages_markdown(ours_msgs, paper_msgs, ref),
        "",
        "The paper's verdicts are computed here from its published numbers by the same tests and "
        "thresholds as ours (PROTOCOLS.md §3; noise band = max(noise_sigma·σ, noise_floor) with "
        f"noise_sigma = {cfg.get('messages', {}).get('noise_sigma', '?')}, "
        f"noise_floor = {cfg.get('messages', {}).get('noise_floor', '?')}). The paper does not publish "
        "the std of its kernel singles (only the best of 10), so its kernel messages use the noise "
        "floor alone; a cell with a lost digit (`73.?`) gives a verdict only when every value of the "
        "digit gives the same one; `oom` cells leave a message inconclusive.",
        "",
    ]
    if ours_msgs is not None and len(ours_msgs):
        lines += ["### Our evidence", "", "| # | family | model | verdict | evidence |", "|" + " --- |" * 5]
        for _, r in ours_msgs.sort_values(["message"], kind="stable").iterrows():
            lines.append(
                f"| {CIRCLED[int(r['message']) - 1]} | {r['family']} | {r['model']} | **{r['verdict']}** | "
                f"{r['evidence']} |"
            )
        lines.append("")
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


def write_report(out_dir: str, cfg_dict: dict | None = None) -> dict:
    """Write OUT/report.md, OUT/report.html and OUT/figures/*.png; return their paths
    ({'md': ..., 'html': ..., 'figures': [...]})."""
    run = read_run(out_dir, cfg_dict)
    table = pd.concat(run.tables.values(), ignore_index=True)
    mcfg = MessagesConfig(**run.cfg.get("messages", {}))
    figs = {"protocols": figure_protocols(table), "ensemble_size": figure_ensemble_size(table)}
    fig_dir = os.path.join(out_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    fig_paths = [save_figure(fig, os.path.join(fig_dir, f"{name}.png")) for name, fig in figs.items()]
    md = report_markdown(
        run, paper.tidy(), paper.verdicts(mcfg), our_messages(run), {n: f"figures/{n}.png" for n in figs}
    )
    md_path, html_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")
    atomic_write(md_path, md)
    atomic_write(html_path, markdown_to_html(md, f"ntk_vs_nn report: {run.cfg.get('dataset', '')}"))
    return {"md": md_path, "html": html_path, "figures": fig_paths}

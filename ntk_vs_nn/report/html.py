"""report.md as one self-contained HTML page, parsed by markdown-it-py (CommonMark plus pipe tables).

Raw HTML in the Markdown is escaped, not passed through (the report quotes config values and
evidence strings verbatim). A paragraph that is only an image becomes a ``<figure>``; soft line
breaks render as spaces and table cells without newlines between them, so a paragraph or a table
row stays one line of the page source.
"""

from __future__ import annotations

import html

from markdown_it import MarkdownIt

_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.45}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 7px;"
    "vertical-align:top}th{background:#f3f3f3}code{background:#f3f3f3;padding:0 3px}img{max-width:100%}"
    "figure{margin:1em 0}"
)


def _only_image(tokens, idx: int) -> bool:
    """Whether the paragraph whose inline token is ``tokens[idx]`` holds one image and nothing else."""
    children = tokens[idx].children or []
    return len(children) == 1 and children[0].type == "image"


def _paragraph_open(self, tokens, idx, options, env):
    if not tokens[idx].hidden and _only_image(tokens, idx + 1):
        return "<figure>"
    return self.renderToken(tokens, idx, options, env)


def _paragraph_close(self, tokens, idx, options, env):
    if not tokens[idx].hidden and _only_image(tokens, idx - 1):
        return "</figure>\n"
    return self.renderToken(tokens, idx, options, env)


def _cell_close(self, tokens, idx, options, env):
    return f"</{tokens[idx].tag}>"


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "xhtmlOut": False}).enable("table")
    md.add_render_rule("paragraph_open", _paragraph_open)
    md.add_render_rule("paragraph_close", _paragraph_close)
    md.add_render_rule("th_close", _cell_close)
    md.add_render_rule("td_close", _cell_close)
    md.add_render_rule("softbreak", lambda self, tokens, idx, options, env: " ")
    return md


_MD = _parser()


def markdown_to_html(md: str, title: str = "ntk_vs_nn report") -> str:
    """``md`` (CommonMark with pipe tables) as a whole HTML page titled ``title``, with the report's CSS."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n" + _MD.render(md) + "</body></html>\n"
    )

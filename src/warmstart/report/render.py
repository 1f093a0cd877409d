"""The report as text: Markdown (plots linked as PNG files) and one self-contained HTML page."""

from __future__ import annotations

import base64
import html

from warmstart.report.blocks import Bullets, Cell, Figure, Paragraph, Report, Table

__all__ = ["PLOT_DIR", "render_markdown", "render_html"]

PLOT_DIR = "report_plots"
"""Folder of the plot PNGs, beside ``report.md``."""


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: Report) -> str:
    """Markdown text; figures link to ``report_plots/<name>.png``."""
    lines = [f"# {report.title}", ""]
    for sec in report.sections:
        lines += [f"## {sec.title}", ""]
        for blk in sec.blocks:
            if isinstance(blk, Paragraph):
                lines += [blk.text, ""]
            elif isinstance(blk, Bullets):
                lines += [f"- {item}" for item in blk.items] + [""]
            elif isinstance(blk, Table):
                lines += [f"### {blk.title}", ""]
                lines.append("| " + " | ".join(_md_escape(h) for h in blk.header) + " |")
                lines.append("|" + "---|" * len(blk.header))
                for row in blk.rows:
                    cells = [
                        f"**{_md_escape(c.text)}**"
                        if c.strong or c.tone in ("supported", "contradicted")
                        else _md_escape(c.text)
                        for c in row
                    ]
                    lines.append("| " + " | ".join(cells) + " |")
                lines += ["", blk.note, ""]
            elif isinstance(blk, Figure):
                lines += [
                    f"### {blk.title}",
                    "",
                    f"![{blk.title}]({PLOT_DIR}/{blk.name}.png)",
                    "",
                    f"{blk.caption} Inputs: {report.refs(blk.sources)}.",
                    "",
                ]
    return "\n".join(lines)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; white-space: nowrap; }
th { background: #f0f0f0; white-space: normal; max-width: 16em; vertical-align: bottom; }
div.table { overflow-x: auto; }
td.strong { font-weight: bold; background: #fff6d5; }
p.note, p.sources, figcaption { font-size: 12px; color: #555; max-width: 1100px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
h3 { margin-top: 1.6em; }
table.wrap td { white-space: normal; max-width: 26em; vertical-align: top; }
td.v-supported { background: #dff3df; font-weight: bold; }
td.v-contradicted { background: #f8d7d7; font-weight: bold; }
td.v-inconclusive { background: #f3f3f3; }
td.v-not { background: #fff; color: #888; }
p.rule { font-size: 12px; color: #333; max-width: 1100px; }
"""


def _png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, so the page reserves the figure's space before it decodes."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _cell_class(c: Cell) -> str:
    if c.tone:
        return f' class="v-{html.escape(c.tone)}"'
    return ' class="strong"' if c.strong else ""


def render_html(report: Report) -> str:
    """One self-contained HTML page: inline CSS, plots as base64 PNG data URIs, no external asset."""
    e = html.escape
    title = report.title
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for sec in report.sections:
        anchor = f' id="{e(sec.anchor)}"' if sec.anchor else ""
        parts.append(f"<section{anchor}><h2>{e(sec.title)}</h2>")
        for blk in sec.blocks:
            if isinstance(blk, Paragraph):
                parts.append(f"<p>{e(blk.text)}</p>")
            elif isinstance(blk, Bullets):
                parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in blk.items) + "</ul>")
            elif isinstance(blk, Table):
                cls = ' class="wrap"' if blk.wrap else ""
                parts.append(f'<h3>{e(blk.title)}</h3><div class="table"><table{cls}><thead><tr>')
                parts.append("".join(f"<th>{e(h)}</th>" for h in blk.header) + "</tr></thead><tbody>")
                for row in blk.rows:
                    cells = "".join(f"<td{_cell_class(c)}>{e(c.text)}</td>" for c in row)
                    parts.append(f"<tr>{cells}</tr>")
                parts.append("</tbody></table></div>")
                parts.append(f'<p class="note">{e(blk.note.replace("**bold**", "bold"))}</p>')
            elif isinstance(blk, Figure):
                data = base64.b64encode(blk.png).decode("ascii")
                w, h = _png_size(blk.png)
                parts.append(f"<h3>{e(blk.title)}</h3>")
                parts.append(
                    f'<figure><img alt="{e(blk.title)}" width="{w}" height="{h}" '
                    f'src="data:image/png;base64,{data}">'
                )
                parts.append(
                    f"<figcaption>{e(blk.caption)} Inputs: {e(report.refs(blk.sources))}.</figcaption></figure>"
                )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)

"""The report as text: Markdown (plots linked as PNG files) and one self-contained HTML page."""

from __future__ import annotations

import base64
import html

from warmstart.report.blocks import Bullets, Figure, Paragraph, Report, Table

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
                    cells = [f"**{_md_escape(c.text)}**" if c.strong else _md_escape(c.text) for c in row]
                    lines.append("| " + " | ".join(cells) + " |")
                lines += ["", blk.note, "", f"Sources: {report.sources_line(blk.sources)}", ""]
            elif isinstance(blk, Figure):
                lines += [
                    f"### {blk.title}",
                    "",
                    f"![{blk.title}]({PLOT_DIR}/{blk.name}.png)",
                    "",
                    blk.caption,
                    "",
                    f"Sources: {report.sources_line(blk.sources)}",
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
img { max-width: 100%; border: 1px solid #eee; }
h3 { margin-top: 1.6em; }
"""


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
        parts.append(f"<h2>{e(sec.title)}</h2>")
        for blk in sec.blocks:
            if isinstance(blk, Paragraph):
                parts.append(f"<p>{e(blk.text)}</p>")
            elif isinstance(blk, Bullets):
                parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in blk.items) + "</ul>")
            elif isinstance(blk, Table):
                parts.append(f'<h3>{e(blk.title)}</h3><div class="table"><table><thead><tr>')
                parts.append("".join(f"<th>{e(h)}</th>" for h in blk.header) + "</tr></thead><tbody>")
                for row in blk.rows:
                    cells = "".join(
                        f'<td class="strong">{e(c.text)}</td>' if c.strong else f"<td>{e(c.text)}</td>"
                        for c in row
                    )
                    parts.append(f"<tr>{cells}</tr>")
                parts.append("</tbody></table></div>")
                parts.append(f'<p class="note">{e(blk.note.replace("**bold**", "bold"))}</p>')
                parts.append(f'<p class="sources">Sources: {e(report.sources_line(blk.sources))}</p>')
            elif isinstance(blk, Figure):
                data = base64.b64encode(blk.png).decode("ascii")
                parts.append(f"<h3>{e(blk.title)}</h3>")
                parts.append(f'<figure><img alt="{e(blk.title)}" src="data:image/png;base64,{data}">')
                parts.append(f"<figcaption>{e(blk.caption)}</figcaption></figure>")
                parts.append(f'<p class="sources">Sources: {e(report.sources_line(blk.sources))}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)

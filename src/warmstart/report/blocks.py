"""The report's building blocks: cell formatting, and the tables, figures and sections it is made of.

Tables and figures are plain data here; :mod:`warmstart.report.render` turns them into
Markdown and HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from warmstart.evaluate_schema import EvalResult, Interval, metric_info

__all__ = [
    "MISSING",
    "format_interval",
    "metric_header",
    "sampling_note",
    "Cell",
    "Table",
    "Figure",
    "Paragraph",
    "Bullets",
    "Block",
    "Section",
    "Report",
    "SourceIds",
]

MISSING = "—"
"""Cell text of a number whose input file is missing or unreadable."""


# ----------------------------------------------------------------------------- formatting


def format_interval(metric: str, iv: Interval | None, diff: bool = False) -> str:
    """``"41.5 [36.0, 47.0]"``: fractions in percent (differences in points), entropies 3 decimals."""
    if iv is None:
        return MISSING
    kind = metric_info(metric).kind
    scale, digits = {"fraction": (100.0, 1), "nats": (1.0, 3), "count": (1.0, 2), "tokens": (1.0, 1)}[kind]
    sign = "+" if diff else ""
    v, lo, hi = iv.value * scale, iv.lo * scale, iv.hi * scale
    return f"{v:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def metric_header(metric: str, diff: bool = False) -> str:
    """Column title with unit: ``pass@4 (%)``, ``entropy/token (nats)``; differences in ``pp``."""
    info = metric_info(metric)
    unit = {"fraction": "pp" if diff else "%", "nats": "nats", "count": "#", "tokens": "tokens"}[info.kind]
    return f"{info.label} ({unit})"


def sampling_note(ev: EvalResult) -> str:
    """``"T=1.0, top_p=1.0, n=8"``: how the sampled metrics of one file were drawn."""
    s = ev.settings
    return f"T={s.temperature:g}, top_p={s.top_p:g}, n={s.n}"


# ------------------------------------------------------------------------- report blocks


@dataclass
class Cell:
    """A table cell; ``strong`` marks a difference whose interval excludes 0; ``tone`` a verdict's colour."""

    text: str
    strong: bool = False
    tone: str = ""  # "supported" | "contradicted" | "inconclusive" | "not" (not testable) | ""


@dataclass
class Table:
    """A table; ``wrap``: its cells may wrap (prose columns), otherwise cells keep to one line."""

    title: str
    header: list[str]
    rows: list[list[Cell]]
    note: str = ""
    sources: list[str] = field(default_factory=list)  # relative paths
    wrap: bool = False


@dataclass
class Figure:
    title: str
    name: str  # file stem in report_plots/
    png: bytes
    caption: str
    sources: list[str] = field(default_factory=list)


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


Block = Table | Figure | Paragraph | Bullets


@dataclass
class Section:
    """A titled part of the report; ``anchor`` is its HTML id (``claims``, ``entropy``)."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""


@dataclass
class Report:
    """The built report: sections in order, and the number of every source file (``[n]``)."""

    title: str
    sections: list[Section]
    source_ids: dict[str, int]

    def sources_line(self, paths: list[str]) -> str:
        return "; ".join(f"[{self.source_ids[p]}] {p}" for p in paths) if paths else "none"

    def refs(self, paths: list[str]) -> str:
        """``[3] [4] [7]``: source numbers only (the paths are listed once, in the Sources section)."""
        return " ".join(f"[{self.source_ids[p]}]" for p in paths) if paths else "none"


class SourceIds:
    """Numbers sources ``[1]``, ``[2]``, ... in order of first use."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def ref(self, rel: str) -> str:
        if rel not in self.ids:
            self.ids[rel] = len(self.ids) + 1
        return f"[{self.ids[rel]}]"

    def refs(self, rels: list[str]) -> str:
        return " ".join(self.ref(r) for r in rels) if rels else MISSING

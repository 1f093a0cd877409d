"""``warmstart report RUN_DIR``: the study's tables, paired differences and plots as Markdown + HTML.

Reads a run directory in the layout of ``docs/ARCHITECTURE.md`` (file names:
:mod:`warmstart.evaluate_schema`, "Run-directory naming"):

* ``eval/<model>__<split>.json`` for the models ``base``, ``teacher``, ``sft_early``,
  ``sft_over``, ``opd`` and the Stage-2 endpoints ``<arm>+grpo``, on the splits
  ``validation`` (in-domain) and ``ood`` (out-of-domain); other ``eval/*.json`` files
  named ``<model>__<split>.json`` are reported too, after the study's models;
* ``stage1/<arm>/metrics.jsonl`` and ``stage2/<arm>/metrics.jsonl`` (training logs).

and writes ``report.md`` (plots as PNG files in ``report_plots/`` beside it) and a
self-contained ``report.html`` (the same content, plots inlined as base64 PNG, inline
CSS, no external asset). Sections: accuracy (greedy and pass@1, per split); pass@k and
answer diversity at each Stage-1 init vs its Stage-2 endpoint; entropy at init and end
(evaluation samples and training logs); paired differences (endpoint minus its init, and
each arm minus ``sft_early``); plots of entropy trajectories, rewards, pass@k and accuracy.

Traceability: every table row names its input files by source number (``[3]``), every
table and figure lists the files it used, and the last section maps every number to a
relative path with its status (read / missing / unreadable). Missing or unreadable
files never stop the report; they are listed at the top and shown as ``—`` in cells.

Single-model intervals are the ones stored in each eval file (its own ``bootstrap``
settings); paired differences are computed here, resampling problems jointly
(``--bootstrap`` resamples, ``--seed``).
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from warmstart import metrics as M
from warmstart.evaluate_schema import (
    BASE_MODEL,
    REFERENCE_ARM,
    SPLITS,
    STAGE1_ARMS,
    STAGE2_SUFFIX,
    TEACHER_MODEL,
    EvalResult,
    EvalSchemaError,
    Interval,
    eval_relpath,
    metric_info,
    metrics_relpath,
    paired_compare,
    parse_eval_filename,
    stage2_model,
    study_models,
)
from warmstart.evaluate_schema import read_eval as _read_eval

__all__ = [
    "RunData",
    "Report",
    "load_run",
    "make_report",
    "render_markdown",
    "render_html",
    "build_report",
    "format_interval",
    "add_arguments",
    "run",
]

MISSING = "—"
PLOT_DIR = "report_plots"
PLOT_NAMES = ("accuracy", "pass_at_k", "entropy_trajectories", "reward_curves")
# Paired-difference columns (pass@K, the largest k every model of the split has, is added).
DIFF_METRICS = ("greedy_accuracy", "pass@1", "distinct_answers_mean", "entropy_token_mean")
ARM_LABELS = {"sft_early": "SFT (early-stopped)", "sft_over": "SFT (over-trained)", "opd": "OPD"}
# One colour per Stage-1 arm (its Stage-2 endpoint shares it; init dashed, endpoint solid).
COLORS = {
    BASE_MODEL: "#7f7f7f",
    TEACHER_MODEL: "#222222",
    "sft_early": "#1f77b4",
    "sft_over": "#ff7f0e",
    "opd": "#2ca02c",
}
_EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728"]


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


def model_role(model: str) -> str:
    """What a model name stands for in the study."""
    if model == BASE_MODEL:
        return "student before post-training"
    if model == TEACHER_MODEL:
        return "OPD teacher"
    if model in STAGE1_ARMS:
        return f"Stage-1: {ARM_LABELS.get(model, model)}"
    if model.endswith(STAGE2_SUFFIX) and model[: -len(STAGE2_SUFFIX)] in STAGE1_ARMS:
        return f"Stage-2: GRPO from {model[: -len(STAGE2_SUFFIX)]}"
    return "other"


def sampling_note(ev: EvalResult) -> str:
    """``"T=1.0, top_p=1.0, n=8"``: how the sampled metrics of one file were drawn."""
    s = ev.settings
    return f"T={s.temperature:g}, top_p={s.top_p:g}, n={s.n}"


# ------------------------------------------------------------------------- report blocks


@dataclass
class Cell:
    """A table cell; ``strong`` marks a difference whose interval excludes 0."""

    text: str
    strong: bool = False


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    note: str = ""
    sources: list[str] = field(default_factory=list)  # relative paths


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
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Report:
    """The built report: sections in order, and the number of every source file (``[n]``)."""

    title: str
    sections: list[Section]
    source_ids: dict[str, int]

    def sources_line(self, paths: list[str]) -> str:
        return "; ".join(f"[{self.source_ids[p]}] {p}" for p in paths) if paths else "none"


# ---------------------------------------------------------------------------- run data


@dataclass
class RunData:
    """Everything read from a run directory, plus what could not be read."""

    run_dir: Path
    evals: dict[tuple[str, str], EvalResult]  # (model, split) -> eval
    logs: dict[tuple[int, str], list[dict]]  # (stage, arm) -> metrics rows
    models: list[str]  # study models, then others found, in report order
    splits: list[str]
    status: dict[str, str]  # relative path -> "read" | "missing" | "unreadable: ..."
    notes: list[str] = field(default_factory=list)

    def eval(self, model: str, split: str) -> EvalResult | None:
        return self.evals.get((model, split))

    @property
    def missing(self) -> list[str]:
        return [p for p, s in self.status.items() if s == "missing"]

    @property
    def unreadable(self) -> dict[str, str]:
        return {p: s for p, s in self.status.items() if s.startswith("unreadable")}


def _read_metrics_jsonl(path: Path, rel: str, notes: list[str]) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            notes.append(f"{rel} line {i}: not JSON ({e.msg}); line skipped")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            notes.append(f"{rel} line {i}: no integer 'step'; line skipped")
            continue
        rows.append(row)
    return rows


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read every expected (and every other well-named) file of a run directory; never raises on bad files."""
    run_dir = Path(run_dir)
    models, splits = study_models(), list(SPLITS)
    extra: list[tuple[str, str]] = []
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        for p in sorted(eval_dir.glob("*.json")):
            parsed = parse_eval_filename(p.name)
            if parsed is None:
                continue
            extra.append(parsed)
            if parsed[0] not in models:
                models.append(parsed[0])
            if parsed[1] not in splits:
                splits.append(parsed[1])
    data = RunData(run_dir=run_dir, evals={}, logs={}, models=models, splits=splits, status={})
    wanted = [(m, s) for m in study_models() for s in SPLITS]
    wanted += [ms for ms in extra if ms not in wanted]
    for model, split in wanted:
        rel = eval_relpath(model, split)
        path = run_dir / rel
        if not path.exists():
            data.status[rel] = "missing"
            continue
        try:
            ev = _read_eval(path)
        except EvalSchemaError as e:
            data.status[rel] = f"unreadable: {e}"
            continue
        data.status[rel] = "read"
        if ev.model.name != model or ev.data.split != split:
            data.notes.append(
                f"{rel}: the file says model {ev.model.name!r}, split {ev.data.split!r}; "
                f"reported under its file name ({model!r}, {split!r})"
            )
        data.evals[(model, split)] = ev
    for stage in (1, 2):
        for arm in STAGE1_ARMS:
            rel = metrics_relpath(stage, arm)
            path = run_dir / rel
            if not path.exists():
                data.status[rel] = "missing"
                continue
            try:
                data.logs[(stage, arm)] = _read_metrics_jsonl(path, rel, data.notes)
                data.status[rel] = "read"
            except (OSError, UnicodeDecodeError) as e:
                data.status[rel] = f"unreadable: {e}"
    return data


# ------------------------------------------------------------------------------ tables


class _SourceIds:
    """Numbers sources ``[1]``, ``[2]``, ... in order of first use."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def ref(self, rel: str) -> str:
        if rel not in self.ids:
            self.ids[rel] = len(self.ids) + 1
        return f"[{self.ids[rel]}]"

    def refs(self, rels: list[str]) -> str:
        return " ".join(self.ref(r) for r in rels) if rels else MISSING


def _init_end_models(run: RunData) -> list[str]:
    """Rows of the init-vs-end tables: base, teacher, then each arm followed by its endpoint, then others."""
    order = [BASE_MODEL, TEACHER_MODEL]
    for arm in STAGE1_ARMS:
        order += [arm, stage2_model(arm)]
    return order + [m for m in run.models if m not in order]


def _uniform_sampling(evs: list[EvalResult]) -> str | None:
    notes = {sampling_note(ev) for ev in evs if ev.settings.n > 0}
    return notes.pop() if len(notes) == 1 else None


def accuracy_table(run: RunData, src: _SourceIds) -> Table:
    """Greedy accuracy and pass@1 per model and split, with intervals."""
    header, used = ["model", "role"], []
    uniform = {}
    for split in run.splits:
        evs = [ev for (m, s), ev in run.evals.items() if s == split]
        uniform[split] = _uniform_sampling(evs)
        domain = SPLITS.get(split, "other split")
        header.append(f"{split} ({domain}) greedy, T=0 (%)")
        header.append(
            f"{split} ({domain}) pass@1, sampled" + (f" {uniform[split]}" if uniform[split] else "") + " (%)"
        )
    header.append("sources")
    rows = []
    for model in run.models:
        row, rels = [Cell(model), Cell(model_role(model))], []
        for split in run.splits:
            ev = run.eval(model, split)
            rel = eval_relpath(model, split)
            if ev is None:
                row += [Cell(MISSING), Cell(MISSING)]
                continue
            rels.append(rel)
            used.append(rel)
            row.append(Cell(format_interval("greedy_accuracy", ev.summary.get("greedy_accuracy"))))
            p1 = format_interval("pass@1", ev.summary.get("pass@1"))
            if p1 != MISSING and uniform[split] is None:
                p1 += f" ({sampling_note(ev)})"
            row.append(Cell(p1))
        if not rels:
            continue
        row.append(Cell(src.refs(rels)))
        rows.append(row)
    return Table(
        title="Accuracy per model (greedy and sampled)",
        header=header,
        rows=rows,
        note="Percent correct with 95% bootstrap intervals over problems (from each eval file). "
        "greedy: one temperature-0 response per problem. pass@1: mean accuracy of the n sampled "
        "responses per problem at temperature T (top_p).",
        sources=used,
    )


def passk_table(run: RunData, split: str, src: _SourceIds) -> Table | None:
    """pass@k and answer diversity for every model on ``split``, each init row followed by its endpoint."""
    models = [m for m in _init_end_models(run) if run.eval(m, split) is not None]
    if not models:
        return None
    ks = sorted({k for m in models for k in _ks(run.eval(m, split))})
    cols = [f"pass@{k}" for k in ks] + ["distinct_answers_mean", "answer_entropy_mean"]
    rows, used = [], []
    for m in models:
        ev = run.eval(m, split)
        rel = eval_relpath(m, split)
        used.append(rel)
        cells = [Cell(format_interval(c, ev.summary.get(c))) for c in cols]
        rows.append([Cell(m), Cell(model_role(m)), Cell(sampling_note(ev)), *cells, Cell(src.ref(rel))])
    return Table(
        title=f"pass@k and answer diversity, {split} ({SPLITS.get(split, 'other split')}): Stage-1 init vs Stage-2 endpoint",
        header=["model", "role", "sampling", *[metric_header(c) for c in cols], "sources"],
        rows=rows,
        note="Sampled responses (settings per row). pass@k: unbiased estimator averaged over problems, in %. "
        "Distinct answers: mean number of distinct normalised final answers among the n samples (unparseable "
        "= one answer 'none'); answer H: mean Shannon entropy of that distribution. 95% bootstrap intervals.",
        sources=used,
    )


def _ks(ev: EvalResult | None) -> list[int]:
    if ev is None:
        return []
    return [int(k[5:]) for k in ev.summary if k.startswith("pass@")]


def entropy_table(run: RunData, split: str, src: _SourceIds) -> Table | None:
    """Policy entropy of the evaluation samples (and teacher-forced entropy when present) per model."""
    models = [m for m in _init_end_models(run) if run.eval(m, split) is not None]
    if not models:
        return None
    has_tf = any(run.eval(m, split).teacher_forced_entropy is not None for m in models)
    header = [
        "model",
        "role",
        "sampling",
        metric_header("entropy_token_mean"),
        metric_header("entropy_seq_mean"),
    ]
    if has_tf:
        header += ["teacher-forced entropy/token (nats)", "probe"]
    rows, used = [], []
    for m in models:
        ev = run.eval(m, split)
        rel = eval_relpath(m, split)
        used.append(rel)
        row = [Cell(m), Cell(model_role(m)), Cell(sampling_note(ev))]
        row += [
            Cell(format_interval(k, ev.summary.get(k))) for k in ("entropy_token_mean", "entropy_seq_mean")
        ]
        if has_tf:
            tf = ev.teacher_forced_entropy
            row += [
                Cell(format_interval("entropy_token_mean", tf.token_mean if tf else None)),
                Cell(tf.probe if tf else MISSING),
            ]
        rows.append([*row, Cell(src.ref(rel))])
    return Table(
        title=f"Policy entropy, {split} ({SPLITS.get(split, 'other split')}): Stage-1 init vs Stage-2 endpoint",
        header=[*header, "sources"],
        rows=rows,
        note="Full-vocabulary Shannon entropy (nats) of the next-token distribution at every token of the "
        "sampled responses: token-weighted mean (entropy/token) and mean of per-sequence means (entropy/seq). "
        "95% bootstrap intervals over problems.",
        sources=used,
    )


def _first_last(rows: list[dict], key: str) -> tuple[tuple[int, float], tuple[int, float]] | None:
    pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), int | float)]
    return (pts[0], pts[-1]) if pts else None


def training_table(run: RunData, src: _SourceIds) -> Table:
    """Entropy (and Stage-2 reward) at the first and last logged step of every arm's training runs."""
    rows, used = [], []

    def span(stage: int, arm: str, key: str) -> str:
        fl = _first_last(run.logs.get((stage, arm), []), key)
        if fl is None:
            return MISSING
        (s0, v0), (s1, v1) = fl
        return f"{v0:.3f} (step {s0}) → {v1:.3f} (step {s1})"

    for arm in STAGE1_ARMS:
        rels = [metrics_relpath(st, arm) for st in (1, 2) if (st, arm) in run.logs]
        used += rels
        rows.append(
            [
                Cell(arm),
                Cell(span(1, arm, "entropy")),
                Cell(span(2, arm, "entropy")),
                Cell(span(2, arm, "reward_mean")),
                Cell(src.refs(rels)),
            ]
        )
    return Table(
        title="Training logs: entropy and reward at the first and last logged step",
        header=[
            "arm",
            "Stage-1 entropy (nats)",
            "Stage-2 (GRPO) entropy (nats)",
            "Stage-2 reward_mean",
            "sources",
        ],
        rows=rows,
        note="From metrics.jsonl: 'entropy' is the full-vocabulary entropy, token mean over the step's own "
        "samples (training batch, not the evaluation set); 'reward_mean' is the mean reward of the step's samples.",
        sources=used,
    )


def _diff_metrics(run: RunData, split: str) -> list[str]:
    evs = [ev for (m, s), ev in run.evals.items() if s == split]
    common = [set(_ks(ev)) for ev in evs if _ks(ev)]
    kmax = max(set.intersection(*common)) if common else 1
    cols = list(DIFF_METRICS)
    if kmax > 1:
        cols.insert(2, f"pass@{kmax}")
    return cols


def diff_table(
    run: RunData,
    split: str,
    pairs: list[tuple[str, str, str]],
    title: str,
    note: str,
    src: _SourceIds,
    B: int,
    seed: int,
) -> Table | None:
    """Paired differences ``a - b`` for the (label, a, b) pairs on ``split``; bold where the interval excludes 0."""
    cols = _diff_metrics(run, split)
    rows, used, problems = [], [], []
    for label, a, b in pairs:
        ea, eb = run.eval(a, split), run.eval(b, split)
        rels = [eval_relpath(a, split), eval_relpath(b, split)]
        if ea is None or eb is None:
            missing = [r for r, e in zip(rels, (ea, eb)) if e is None]
            rows.append([Cell(label), *[Cell(MISSING) for _ in cols], Cell("missing: " + ", ".join(missing))])
            continue
        try:
            avail = [c for c in cols if c in ea.summary and c in eb.summary]
            diffs = paired_compare(ea, eb, avail, B=B, seed=seed)
        except (ValueError, M.ProblemMismatchError) as e:
            problems.append(f"{label}: {e}")
            rows.append([Cell(label), *[Cell(MISSING) for _ in cols], Cell(src.refs(rels))])
            continue
        used += rels
        cells = [
            Cell(format_interval(c, diffs.get(c), diff=True), strong=c in diffs and diffs[c].excludes_zero())
            for c in cols
        ]
        rows.append([Cell(label), *cells, Cell(src.refs(rels))])
    if all(all(c.text == MISSING for c in r[1:-1]) for r in rows):
        return None
    extra = (" Not computed: " + "; ".join(problems)) if problems else ""
    sampling = _uniform_sampling([ev for (m, s), ev in run.evals.items() if s == split])
    return Table(
        title=title,
        header=["difference", *[metric_header(c, diff=True) for c in cols], "sources (a, b)"],
        rows=rows,
        note=note
        + f" Paired bootstrap over problems (B={B}, seed={seed}), 95% intervals; **bold**: the interval "
        "excludes 0. Accuracy differences in percentage points; greedy = temperature 0; sampled metrics at "
        + (sampling or "the settings of each file (see Sources)")
        + "."
        + extra,
        sources=used,
    )


# ------------------------------------------------------------------------------- plots


def _color(model: str, extra: dict[str, str]) -> str:
    arm = model[: -len(STAGE2_SUFFIX)] if model.endswith(STAGE2_SUFFIX) else model
    if arm in COLORS:
        return COLORS[arm]
    if arm not in extra:
        extra[arm] = _EXTRA_COLORS[len(extra) % len(_EXTRA_COLORS)]
    return extra[arm]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _new_figure(ncols: int, width: float = 5.2, height: float = 3.6):
    # matplotlib's object API (no pyplot): no global figure state, renders with Agg.
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width * ncols, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def accuracy_plot(run: RunData) -> Figure | None:
    """Grouped bars: greedy and pass@1 per model with interval bars, one panel per split."""
    splits = [s for s in run.splits if any(k[1] == s for k in run.evals)]
    if not splits:
        return None
    fig, axes = _new_figure(len(splits), width=6.0)
    extra: dict[str, str] = {}
    used = []
    for ax, split in zip(axes, splits):
        models = [m for m in run.models if run.eval(m, split) is not None]
        for i, m in enumerate(models):
            ev = run.eval(m, split)
            used.append(eval_relpath(m, split))
            for j, (metric, hatch) in enumerate((("greedy_accuracy", ""), ("pass@1", "//"))):
                iv = ev.summary.get(metric)
                if iv is None:
                    continue
                x = i + (j - 0.5) * 0.38
                err = [[100 * (iv.value - iv.lo)], [100 * (iv.hi - iv.value)]]
                ax.bar(
                    x,
                    100 * iv.value,
                    width=0.36,
                    color=_color(m, extra),
                    hatch=hatch,
                    alpha=0.9 if j == 0 else 0.55,
                    yerr=err,
                    capsize=2,
                    edgecolor="white",
                )
        ax.set_xticks(range(len(models)), models, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{split} ({SPLITS.get(split, 'other')}): greedy (solid) / pass@1 (hatched)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return Figure(
        title="Accuracy with 95% intervals",
        name="accuracy",
        png=_png(fig),
        caption="Solid bars: greedy (T=0) accuracy; hatched: pass@1 (mean sampled accuracy at the settings of the "
        "accuracy table). Error bars: 95% bootstrap intervals stored in each eval file.",
        sources=used,
    )


def passk_plot(run: RunData) -> Figure | None:
    """pass@k vs k per model, init dashed and endpoint solid, one panel per split."""
    splits = [s for s in run.splits if any(len(_ks(run.eval(m, s))) > 1 for m in run.models)]
    if not splits:
        return None
    fig, axes = _new_figure(len(splits))
    extra: dict[str, str] = {}
    used = []
    for ax, split in zip(axes, splits):
        for m in _init_end_models(run):
            ev = run.eval(m, split)
            ks = _ks(ev)
            if len(ks) < 2:
                continue
            used.append(eval_relpath(m, split))
            ivs = [ev.summary[f"pass@{k}"] for k in ks]
            style = "-" if m.endswith(STAGE2_SUFFIX) else (":" if m in (BASE_MODEL, TEACHER_MODEL) else "--")
            c = _color(m, extra)
            ax.plot(ks, [100 * iv.value for iv in ivs], style, color=c, marker="o", ms=3, label=m)
            ax.fill_between(ks, [100 * iv.lo for iv in ivs], [100 * iv.hi for iv in ivs], color=c, alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.set_title(f"{split} ({SPLITS.get(split, 'other')})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return Figure(
        title="pass@k curves",
        name="pass_at_k",
        png=_png(fig),
        caption="Unbiased pass@k (sampled responses) with 95% bands. Dashed: Stage-1 init; solid: its Stage-2 "
        "endpoint (same colour); dotted: base and teacher.",
        sources=used,
    )


def _moving_average(v: np.ndarray, window: int) -> np.ndarray:
    if len(v) < window or window < 2:
        return v
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


def trajectory_plot(
    run: RunData, key: str, stages: tuple[int, ...], name: str, title: str, ylabel: str, caption: str
) -> Figure | None:
    """``key`` from metrics.jsonl vs step for every arm, one panel per stage (raw thin + moving average)."""
    stages = tuple(
        st for st in stages if any(any(key in r for r in run.logs.get((st, a), [])) for a in STAGE1_ARMS)
    )
    if not stages:
        return None
    fig, axes = _new_figure(len(stages))
    extra: dict[str, str] = {}
    used = []
    for ax, st in zip(axes, stages):
        for arm in STAGE1_ARMS:
            pts = [
                (r["step"], float(r[key]))
                for r in run.logs.get((st, arm), [])
                if isinstance(r.get(key), int | float)
            ]
            if not pts:
                continue
            used.append(metrics_relpath(st, arm))
            steps, vals = np.array(pts).T
            c = _color(arm, extra)
            ax.plot(steps, vals, color=c, alpha=0.3, lw=0.8)
            w = max(1, len(vals) // 10)
            ax.plot(steps[w - 1 :], _moving_average(vals, w), color=c, lw=1.8, label=arm)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Stage-{st} ({'warm-start' if st == 1 else 'GRPO'})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return Figure(title=title, name=name, png=_png(fig), caption=caption, sources=used)


# ------------------------------------------------------------------------------ report


def make_report(run: RunData, B: int = M.DEFAULT_B, seed: int = 0, title: str = "warmstart report") -> Report:
    """All sections of the report, in order, with their source numbering."""
    src = _SourceIds()
    out: list[Section] = []
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    intro = Section("Run")
    intro.blocks.append(
        Paragraph(
            f"Run directory: {run.run_dir}. Generated {now}. {len(run.evals)} eval files and "
            f"{len(run.logs)} training logs read. Paired differences: B={B} resamples of problems, seed={seed}."
        )
    )
    bad = [f"missing: {p}" for p in run.missing] + [f"{p}: {s}" for p, s in run.unreadable.items()]
    intro.blocks.append(
        Paragraph("Missing or unreadable inputs:" if bad else "Missing or unreadable inputs: none.")
    )
    if bad:
        intro.blocks.append(Bullets(bad))
    if run.notes:
        intro.blocks.append(Paragraph("Notes:"))
        intro.blocks.append(Bullets(run.notes))
    out.append(intro)

    acc = Section("Accuracy")
    acc.blocks.append(accuracy_table(run, src))
    acc.blocks.append(accuracy_plot(run) or Paragraph("Accuracy plot: no eval files."))
    out.append(acc)

    div = Section("pass@k and answer diversity")
    for split in run.splits:
        t = passk_table(run, split, src)
        div.blocks.append(t or Paragraph(f"{split}: no eval files."))
    div.blocks.append(passk_plot(run) or Paragraph("pass@k plot: no eval file with samples."))
    out.append(div)

    ent = Section("Entropy")
    for split in run.splits:
        t = entropy_table(run, split, src)
        if t is not None:
            ent.blocks.append(t)
    ent.blocks.append(training_table(run, src))
    ent.blocks.append(
        trajectory_plot(
            run,
            "entropy",
            (1, 2),
            "entropy_trajectories",
            "Entropy along training",
            "entropy (nats/token)",
            "Full-vocabulary entropy of each step's own samples (metrics.jsonl 'entropy'), thin: raw, "
            "thick: moving average; one colour per arm.",
        )
        or Paragraph("Entropy trajectories: no metrics.jsonl with 'entropy'.")
    )
    ent.blocks.append(
        trajectory_plot(
            run,
            "reward_mean",
            (2,),
            "reward_curves",
            "Stage-2 reward",
            "reward_mean",
            "Mean reward of each GRPO step's samples (metrics.jsonl 'reward_mean'); thin: raw, thick: "
            "moving average.",
        )
        or Paragraph("Reward curves: no Stage-2 metrics.jsonl with 'reward_mean'.")
    )
    out.append(ent)

    diff = Section("Paired differences")
    for split in run.splits:
        domain = SPLITS.get(split, "other split")
        pairs = [(f"{stage2_model(a)} − {a}", stage2_model(a), a) for a in STAGE1_ARMS]
        t = diff_table(
            run,
            split,
            pairs,
            f"Stage-2 endpoint minus its Stage-1 init, {split} ({domain})",
            "a − b where a is the GRPO endpoint and b the Stage-1 model it started from.",
            src,
            B,
            seed,
        )
        diff.blocks.append(t or Paragraph(f"{split}: endpoint − init: no pair with both files."))
        pairs = []
        for stage_of in (lambda a: a, stage2_model):
            ref = stage_of(REFERENCE_ARM)
            pairs += [(f"{stage_of(a)} − {ref}", stage_of(a), ref) for a in STAGE1_ARMS if a != REFERENCE_ARM]
        t = diff_table(
            run,
            split,
            pairs,
            f"Each arm minus {REFERENCE_ARM}, {split} ({domain})",
            f"a − b with b the {REFERENCE_ARM} arm at the same stage (Stage-1 rows, then Stage-2 rows).",
            src,
            B,
            seed,
        )
        diff.blocks.append(t or Paragraph(f"{split}: arm − {REFERENCE_ARM}: no pair with both files."))
    out.append(diff)

    # every file referenced anywhere gets a number; then the rest of the expected files
    for rel in run.status:
        src.ref(rel)
    sources = Section("Sources")
    sources.blocks.append(
        Paragraph("Every [n] in the tables and figures refers to one file, relative to the run directory.")
    )
    items = []
    for rel, n in src.ids.items():
        status = run.status.get(rel, "read")
        desc = f"[{n}] {rel}: {status}"
        ev = next((e for (m, s), e in run.evals.items() if eval_relpath(m, s) == rel), None)
        if ev is not None:
            desc += (
                f" (model {ev.model.name} from {ev.model.path}; split {ev.data.split}, {ev.data.n_problems} "
                f"problems; greedy={ev.settings.greedy}, {sampling_note(ev)}, max_new_tokens="
                f"{ev.settings.max_new_tokens}; bootstrap B={ev.bootstrap.B}, seed={ev.bootstrap.seed}; "
                f"created {ev.created})"
            )
        items.append(desc)
    sources.blocks.append(Bullets(items))
    out.append(sources)
    for sec in out:
        for blk in sec.blocks:
            if isinstance(blk, Figure | Table):
                blk.sources = list(dict.fromkeys(blk.sources))  # once each, in order of use
                for rel in blk.sources:
                    src.ref(rel)
    return Report(title=title, sections=out, source_ids=src.ids)


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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_report(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, B: int = M.DEFAULT_B, seed: int = 0
) -> dict:
    """Read ``run_dir`` and write ``report.md`` (+ ``report_plots/*.png``) and ``report.html`` to ``out_dir``.

    ``out_dir`` defaults to ``run_dir``. Never fails on missing or bad input files (they are
    listed in the report). Returns a JSON-able summary: the two paths, the number of
    plots, eval files and training logs read, and the number of expected files missing
    or unreadable.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    report = make_report(run, B=B, seed=seed, title=f"warmstart report: {Path(run_dir).resolve().name}")
    out.mkdir(parents=True, exist_ok=True)
    figures = [b for s in report.sections for b in s.blocks if isinstance(b, Figure)]
    (out / PLOT_DIR).mkdir(exist_ok=True)
    for name in PLOT_NAMES:  # a plot not made this time must not linger from an earlier report
        (out / PLOT_DIR / f"{name}.png").unlink(missing_ok=True)
    for fig in figures:
        _atomic_write(out / PLOT_DIR / f"{fig.name}.png", fig.png)
    md, page = out / "report.md", out / "report.html"
    _atomic_write(md, render_markdown(report).encode("utf-8"))
    _atomic_write(page, render_html(report).encode("utf-8"))
    return {
        "report_md": str(md),
        "report_html": str(page),
        "plots": len(figures),
        "evals_read": len(run.evals),
        "logs_read": len(run.logs),
        "missing": len(run.missing),
        "unreadable": len(run.unreadable),
    }


# --------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (eval/, stage1/, stage2/ inside)")
    parser.add_argument(
        "--out", metavar="DIR", default=None, help="where to write report.md/.html (default: RUN_DIR)"
    )
    parser.add_argument(
        "--bootstrap", "-B", type=int, default=M.DEFAULT_B, help="resamples for paired differences"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed for paired differences")


def run(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        print(f"error: {args.run_dir}: not a directory", file=sys.stderr)
        return 2
    info = build_report(args.run_dir, args.out, B=args.bootstrap, seed=args.seed)
    print(f"wrote {info['report_md']} and {info['report_html']}")
    if info["missing"] or info["unreadable"]:
        print(
            f"{info['missing']} expected files missing, {info['unreadable']} unreadable (listed in the report)"
        )
    return 0

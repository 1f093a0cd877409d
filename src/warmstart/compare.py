"""``warmstart compare EVAL.json ...``: summary metrics of eval files side by side, and paired differences.

Prints one table of every summary metric (value and 95% interval, as stored in each
file) and one table of paired differences ``model - baseline`` (problems resampled
jointly, :func:`warmstart.evaluate_schema.paired_compare`). The baseline is the first
file unless ``--baseline`` names a model (or a file). ``--json`` prints the same as one
JSON object instead. Fractions are shown in percent (differences in points).

Exit status: 0; 2 when a file cannot be read, the baseline or a metric is unknown, or a
file is not on the baseline's problems (the message names both files; the summary
table is still printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from warmstart import metrics as M
from warmstart.evaluate_schema import (
    EvalResult,
    EvalSchemaError,
    Interval,
    metric_names,
    paired_compare,
    read_eval,
)
from warmstart.report import format_interval, metric_header


def _labels(evals: list[EvalResult]) -> list[str]:
    """Model names; ``name (split)`` where names repeat; the file path where that repeats too."""
    names = [ev.model.name for ev in evals]
    labels = [n if names.count(n) == 1 else f"{n} ({ev.data.split})" for n, ev in zip(names, evals)]
    return [lab if labels.count(lab) == 1 else str(ev.source) for lab, ev in zip(labels, evals)]


def _find_baseline(name: str | None, evals: list[EvalResult], labels: list[str]) -> int:
    if name is None:
        return 0
    for i, ev in enumerate(evals):
        if name in (
            labels[i],
            ev.model.name,
            ev.source,
            Path(str(ev.source)).name,
            Path(str(ev.source)).stem,
        ):
            return i
    raise ValueError(f"--baseline {name!r} matches none of: {', '.join(labels)}")


def compare_evals(
    evals: list[EvalResult],
    baseline: str | None = None,
    metrics: list[str] | None = None,
    B: int = M.DEFAULT_B,
    seed: int = 0,
) -> dict:
    """The comparison as a JSON-able dict: models with summaries, differences vs the baseline, errors."""
    labels = _labels(evals)
    base = _find_baseline(baseline, evals, labels)
    if metrics is None:
        metrics = []
        for ev in evals:
            metrics += [m for m in ev.summary if m not in metrics]
    else:
        known = {m for ev in evals for m in metric_names(ev.per_problem, ev.settings.n)}
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise ValueError(f"unknown or unavailable metrics {unknown}; available: {sorted(known)}")
    out: dict = {
        "baseline": labels[base],
        "metrics": metrics,
        "bootstrap": {"B": B, "seed": seed, "alpha": M.DEFAULT_ALPHA},
        "models": [],
        "differences": {},
        "errors": [],
    }
    for label, ev in zip(labels, evals):
        out["models"].append(
            {
                "label": label,
                "file": ev.source,
                "model": ev.model.name,
                "split": ev.data.split,
                "n_problems": ev.data.n_problems,
                "settings": asdict(ev.settings),
                "summary": {m: asdict(ev.summary[m]) for m in metrics if m in ev.summary},
            }
        )
    for i, (label, ev) in enumerate(zip(labels, evals)):
        if i == base:
            continue
        wanted = [m for m in metrics if m in ev.summary and m in evals[base].summary]
        try:
            diffs = paired_compare(ev, evals[base], wanted, B=B, seed=seed)
        except ValueError as e:  # ProblemMismatchError included
            out["errors"].append(str(e))
            continue
        out["differences"][label] = {m: asdict(iv) for m, iv in diffs.items()}
    return out


def _print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    models = result["models"]
    t = Table(title="Summary (95% bootstrap intervals over problems, as stored in each file)")
    t.add_column("metric")
    for m in models:
        s = m["settings"]
        t.add_column(f"{m['label']}\n{m['split']}, T={s['temperature']:g}, n={s['n']}", overflow="fold")
    for metric in result["metrics"]:
        cells = []
        for m in models:
            iv = m["summary"].get(metric)
            cells.append(format_interval(metric, Interval(**iv) if iv else None))
        t.add_row(metric_header(metric), *cells)
    console.print(t)
    diffs = result["differences"]
    if diffs:
        bs = result["bootstrap"]
        d = Table(
            title=f"Paired differences: model − {result['baseline']} (B={bs['B']}, seed={bs['seed']}; * interval excludes 0)"
        )
        d.add_column("metric")
        for label in diffs:
            d.add_column(label, overflow="fold")
        for metric in result["metrics"]:
            cells = []
            for label in diffs:
                iv = diffs[label].get(metric)
                iv = Interval(**iv) if iv else None
                text = format_interval(metric, iv, diff=True)
                cells.append(f"[bold]{text} *[/bold]" if iv is not None and iv.excludes_zero() else text)
            d.add_row(metric_header(metric, diff=True), *cells)
        console.print(d)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("evals", nargs="+", metavar="EVAL.json", help="eval files (schema warmstart.eval/v1)")
    parser.add_argument(
        "--baseline", metavar="NAME", help="model name or file of the baseline (default: the first file)"
    )
    parser.add_argument(
        "--metrics", nargs="+", metavar="METRIC", help="summary metrics to show (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--bootstrap", "-B", type=int, default=M.DEFAULT_B, help="resamples for paired differences"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed for paired differences")


def run(args: argparse.Namespace) -> int:
    try:
        evals = [read_eval(p) for p in args.evals]
        result = compare_evals(evals, args.baseline, args.metrics, B=args.bootstrap, seed=args.seed)
    except (EvalSchemaError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        _print_tables(result)
    for err in result["errors"]:
        print(f"error: {err}", file=sys.stderr)
    return 2 if result["errors"] else 0

"""``warmstart data inspect PATH``: load a problem file or folder and summarise it.

Prints the detected format, the number of problems, the skipped rows and why, the
answer types, how many problems have images, the splits and sources, and the prompt
text of the first problem (the plain format of :func:`prompts.prompt_text`, since no
processor is loaded here). ``--json`` prints the same as one JSON object. Bad data
(a :class:`DataError`) is reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from warmstart.data.loaders import FORMATS, DataError, LoadResult, load_problems
from warmstart.data.prompts import prompt_text

EXIT_DATA_ERROR = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``warmstart data inspect``."""
    parser.add_argument("path", help="problem file or folder")
    parser.add_argument(
        "--format", default="auto", choices=("auto", *FORMATS), help="input format (default: detect)"
    )
    parser.add_argument("--split", default=None, help="load only this split (val = validation)")
    parser.add_argument("--skip-bad", action="store_true", help="skip bad rows instead of stopping")
    parser.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="accept image paths that leave the data set's folder (../, absolute paths)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def summarize(result: LoadResult) -> dict[str, Any]:
    """The summary of a load as a JSON-able dict (the ``--json`` output)."""
    problems = result.problems
    return {
        "format": result.format,
        "n_problems": len(problems),
        "n_skipped": len(result.skipped),
        "skipped": [{"row": row, "reason": reason} for row, reason in result.skipped],
        "answer_types": dict(sorted(Counter(p.answer_type for p in problems).items())),
        "n_with_images": sum(1 for p in problems if p.images),
        "splits": dict(Counter(p.split for p in problems)),
        "sources": dict(Counter(p.source for p in problems)),
        "example_prompt": prompt_text(problems[0]) if problems else None,
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "-"


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable summary."""
    lines = [
        f"format:        {summary['format']}",
        f"problems:      {summary['n_problems']}",
        f"with images:   {summary['n_with_images']}",
        f"answer types:  {_counts(summary['answer_types'])}",
        f"splits:        {_counts(summary['splits'])}",
        f"sources:       {_counts(summary['sources'])}",
        f"skipped:       {summary['n_skipped']}",
    ]
    lines += [f"  {item['row']}: {item['reason']}" for item in summary["skipped"]]
    if summary["example_prompt"] is not None:
        lines += ["example prompt:", summary["example_prompt"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load ``args.path`` and print its summary; 2 on bad data."""
    try:
        result = load_problems(
            args.path,
            format=args.format,
            skip_bad=args.skip_bad,
            split=args.split,
            allow_outside_images=args.allow_outside_images,
        )
    except DataError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the source error held
        print(f"error: {message}", file=sys.stderr)
        return EXIT_DATA_ERROR
    summary = summarize(result)
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(format_summary(summary))
    return 0

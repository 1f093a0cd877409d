"""``warmstart report RUN_DIR``: the study's tables, paired differences and plots as Markdown + HTML.

Reads a run directory in the layout of ``docs/ARCHITECTURE.md`` (file names:
:mod:`warmstart.evaluate_schema.naming`):

* ``study_config.json``: the study's arms (names, labels, report order; the first is the
  reference arm); without it the arms are the models the eval file names show
  (:mod:`warmstart.report.data`);
* ``eval/<model>__<split>.json`` for the models ``base``, ``teacher``, every arm and its
  Stage-2 endpoint ``<arm>+grpo``, on the splits ``validation`` (in-domain) and ``ood``
  (out-of-domain); other ``eval/*.json`` files named ``<model>__<split>.json`` are
  reported too, after the study's models;
* ``stage1/<arm>/metrics.jsonl`` and ``stage2/<arm>/metrics.jsonl`` (training logs).

and writes ``report.md`` (plots as PNG files in ``report_plots/`` beside it) and a
self-contained ``report.html`` (the same content, plots inlined as base64 PNG, inline
CSS, no external asset). The answer comes first:

1. **Claims of the paper** (:mod:`.claims`, :mod:`.claim_tables`): one row per claim, the
   toy's measured figure, its paired problem-bootstrap interval, the seed spread and a
   verdict (supported / contradicted / inconclusive at this power) from a rule fixed in
   code and printed under the table;
2. **entropy of every arm along Stage-1 and Stage-2** (training logs) and on the eval
   samples, one figure;
3. **accuracy per question family** (families from ``data/<split>.jsonl``);

then every claim test, accuracy, pass@k and answer diversity, entropy tables, Stage-2
dynamics (reward, KL, clip fraction, response length), paired differences (endpoint
minus its init, each arm minus the reference arm), the blank-image ablation, the inputs
(missing / unreadable files, notes) and the sources.

Seeds: an arm trained with several seeds is a group of replicas ``<arm>@s<k>``
(:mod:`.data`); claims pool them per problem and show each seed's own estimate.

Traceability: every table row names its input files by source number (``[3]``), every
figure caption lists the numbers of its inputs, and the last section maps every number
to a relative path with its status (read / missing / unreadable), once. Missing or
unreadable files never stop the report; they are counted at the top, listed under
"Inputs" and shown as ``—`` in cells.

Single-model intervals are the ones stored in each eval file (its own ``bootstrap``
settings); paired differences and claims are computed here, resampling problems jointly
(``--bootstrap`` resamples, ``--seed``).

One module per job: :mod:`.data` (reading the run), :mod:`.claims` (the claims as data,
pure verdict rules), :mod:`.claim_tables` (claims measured on a run), :mod:`.blocks`
(cells, tables, figures), :mod:`.tables`, :mod:`.plots`, :mod:`.render` (Markdown, HTML)
and :mod:`.build` (assembling and writing); this module is the CLI.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from warmstart import metrics as M
from warmstart.report.blocks import (
    MISSING,
    Cell,
    Figure,
    Report,
    Section,
    Table,
    format_interval,
    metric_header,
    sampling_note,
)
from warmstart.report.build import build_report, make_report
from warmstart.report.claim_tables import evaluate_claims
from warmstart.report.claims import CLAIMS, VERDICT_RULE, ClaimSpec, TestSpec
from warmstart.report.data import STUDY_CONFIG, ArmInfo, RunData, load_run, model_role
from warmstart.report.plots import PALETTE, PLOT_NAMES, model_colors
from warmstart.report.render import PLOT_DIR, render_html, render_markdown
from warmstart.report.tables import DIFF_METRICS

__all__ = [
    "CLAIMS",
    "VERDICT_RULE",
    "ClaimSpec",
    "TestSpec",
    "evaluate_claims",
    "MISSING",
    "PLOT_DIR",
    "PLOT_NAMES",
    "DIFF_METRICS",
    "PALETTE",
    "STUDY_CONFIG",
    "ArmInfo",
    "Cell",
    "Figure",
    "Section",
    "Table",
    "RunData",
    "Report",
    "load_run",
    "make_report",
    "model_colors",
    "model_role",
    "render_markdown",
    "render_html",
    "build_report",
    "format_interval",
    "metric_header",
    "sampling_note",
    "add_arguments",
    "run",
]


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

"""The ``warmstart`` command line.

Each command lives in the module that implements it; that module exposes
``add_arguments(parser)`` and ``run(args) -> int``. This file only lists them, so
``warmstart --help`` stays fast (modules are imported when their command runs, or
when ``--help`` of that command is asked for).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, module, one-line help). Sub-command groups (``data``) are modules whose
# ``add_arguments`` adds their own sub-parsers.
COMMANDS: list[tuple[str, str, str]] = [
    ("data", "warmstart.data.cli", "inspect problem files; generate the synthetic geometry world"),
    ("serve", "warmstart.serve", "serve a local model's prompt log-probs over the OpenAI/vLLM chat API"),
    ("pretrain", "warmstart.stages.pretrain", "stage 0 (toy only): train a toy student/teacher from scratch"),
    ("sft", "warmstart.stages.sft", "Stage-1 SFT on worked solutions (early-stopped or over-trained arm)"),
    ("opd", "warmstart.stages.opd", "Stage-1 on-policy distillation from a teacher (local or HTTP)"),
    ("grpo", "warmstart.stages.grpo", "Stage-2 GRPO with a verifiable reward from a warm-start checkpoint"),
    ("eval", "warmstart.evaluate", "evaluate one model on one split -> eval.json"),
    ("run", "warmstart.study", "the whole study: data, stage 0, Stage-1 arms, Stage-2, eval, report"),
    ("compare", "warmstart.compare", "summary metrics of eval.json files side by side + paired differences"),
    ("report", "warmstart.report", "Markdown + HTML report of a run: tables, plots, paired differences"),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that command's arguments are built (its module imported).

    Building every command's arguments imports every module (and torch); ``main``
    builds only the command being run, so ``warmstart --help`` stays instant.
    """
    parser = argparse.ArgumentParser(
        prog="warmstart",
        description="Two-stage post-training of VLMs (Stage-1 warm-start, Stage-2 RL) and its measurements.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_ in COMMANDS:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if only is None or only == name:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = {name for name, _, _ in COMMANDS}
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in names else "")
    args = parser.parse_args(argv)
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

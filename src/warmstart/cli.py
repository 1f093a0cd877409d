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
    ("compare", "warmstart.compare", "summary metrics of eval.json files side by side + paired differences"),
    ("report", "warmstart.report", "Markdown + HTML report of a run: tables, plots, paired differences"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="warmstart",
        description="Two-stage post-training of VLMs (Stage-1 warm-start, Stage-2 RL) and its measurements.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_ in COMMANDS:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

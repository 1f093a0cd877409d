"""``warmstart data inspect`` and ``warmstart data synth``."""

from __future__ import annotations

import argparse
import importlib

# sub-command -> module exposing add_arguments(parser) and run(args)
SUBCOMMANDS = {
    "inspect": ("warmstart.data.inspect", "load a problem file/folder and print a summary"),
    "synth": (
        "warmstart.data.synthetic",
        "generate the synthetic geometry world (train/validation/test/ood)",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    sub.required = True
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_data_module=module)
        importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._data_module).run(args) or 0)

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
import time
import traceback
from pathlib import Path

# (command, module, one-line help). Sub-command groups (``data``) are modules whose
# ``add_arguments`` adds their own sub-parsers.
COMMANDS: list[tuple[str, str, str]] = [
    ("data", "warmstart.data.cli", "inspect problem files; generate the synthetic geometry world"),
    (
        "serve",
        "warmstart.serve",
        "serve a teacher's log-probs: torch engine (OpenAI chat API) or vLLM engine (exact token ids)",
    ),
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
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the full traceback of an error (it is always appended to the run's error.log)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, help_ in COMMANDS:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if only is None or only == name:
            importlib.import_module(module).add_arguments(p)
    return parser


# Errors that mean "your input is wrong" (data, config, teacher, a missing file, a
# stage's abort): one line naming the file/row/field/URL/key, exit 2. Looked up in
# sys.modules only: an error of a module that was never imported cannot have occurred,
# and importing them here would slow ``warmstart --help``.
_USER_ERRORS = [
    ("warmstart.config", "ConfigError"),
    ("warmstart.data.rows", "DataError"),
    ("warmstart.teacher", "TeacherError"),
    ("warmstart.evaluate_schema.records", "EvalSchemaError"),
    ("warmstart.metrics", "ProblemMismatchError"),
]
_MAX_MESSAGE = 2000  # characters of an error message on the terminal (the log has it all)


def _is_user_error(e: BaseException) -> bool:
    known = tuple(getattr(sys.modules[m], n) for m, n in _USER_ERRORS if m in sys.modules)
    # RuntimeError: what the stages raise when they abort (non-finite updates, no usable data).
    return isinstance(e, (*known, OSError, RuntimeError))


def _one_line(e: BaseException) -> str:
    msg = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    return msg if len(msg) <= _MAX_MESSAGE else msg[:_MAX_MESSAGE] + " ..."


def _log_file(args: argparse.Namespace) -> Path | None:
    """Where the command's traceback goes: ``args._log_file`` (set once the run dir is known)."""
    f = getattr(args, "_log_file", None)
    return Path(f) if f else None


def _append_log(path: Path, argv: list[str]) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} warmstart {' '.join(argv)}\n")
            fh.write(traceback.format_exc())
        return True
    except OSError:  # never let the log hide the error itself
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = {name for name, _, _ in COMMANDS}
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=first if first in names else "")
    # --debug is accepted anywhere on the line (before or after the command).
    debug = "--debug" in argv
    args = parser.parse_args([a for a in argv if a != "--debug"])
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        log = _log_file(args)
        logged = log is not None and _append_log(log, argv)
        if debug:
            traceback.print_exc()
        user = _is_user_error(e)
        line = f"error: {_one_line(e)}" if user else f"error: {type(e).__name__}: {_one_line(e)}"
        print(line, file=sys.stderr)
        if not debug:
            where = f" (also in {log})" if logged else ""
            print(f"run with --debug for the traceback{where}", file=sys.stderr)
        return 2 if user else 1


if __name__ == "__main__":
    sys.exit(main())

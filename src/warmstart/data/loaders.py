"""Load visual math problems from the formats the study uses, into :class:`Problem` records.

Formats (``format=`` or detected from the path's layout by :func:`detect_format`):

``geometry3k-intergps``
    The InterGPS release of Geometry3K: ``<root>/<split>/<id>/data.json`` plus
    ``img_diagram.png``. ``path`` is the root (every split, or the one named by
    ``split=``) or a single split folder. Each record is a multiple-choice problem: the
    answer is the letter, ``choices`` the four option texts. The split folder ``val`` is
    reported as ``validation``. Fields other than the question, choices and answer
    (``precise_value``, ``problem_type_graph``, ``annotat_text``, ...) go to ``meta``.

``geometry3k-table``
    The single-table layout RL recipes use: a parquet or JSONL file (or a folder of
    them, also under ``data/``) with columns ``images`` (HF image cells
    ``{"bytes", "path"}`` or plain paths), ``problem`` (text with ``<image>``
    placeholders, removed here) and ``answer`` (free form: ``"60"``, ``"2\\sqrt{3}"``).
    The answer type is inferred by :func:`infer_answer_type`; a ``float`` answer gets
    ``precision`` = its number of decimals (``"14.5"`` counts to one place). The split
    comes from the file name (``train-00000-of-00001.parquet`` -> ``train``), else the
    file's stem; ids are ``<split>-<row index>`` since the table has no id column.

``mathvista``
    MathVista ``testmini.json`` (one JSON object keyed by ``pid``, as published), a JSON
    list, JSONL or parquet. ``image`` paths are resolved against the file's folder; a
    parquet ``decoded_image`` cell with bytes is preferred when present. Multiple-choice
    answers are published as the choice *text*; they become the letter. Free-form
    ``answer_type`` maps ``integer``/``float``/``text`` to themselves and ``list`` to
    ``text``: a list answer (``"[2, 3]"``) is ordered and compared as a normalised
    string; treating it as an ``expression`` would let a symbolic verifier read it as an
    interval or a set, which is not what the benchmark scores. The source's own
    ``question_type``, ``answer_type``, ``query`` and ``metadata`` are kept in ``meta``.
    Given a folder and no ``split``, only the ``testmini`` file is loaded when there is
    one (the ``test`` split publishes no answers).

``warmstart-jsonl``
    The project's own format (docs/ARCHITECTURE.md): a folder with ``<split>.jsonl``
    files or one ``problems.jsonl``, plus ``images/``. Each line holds every
    :class:`Problem` field, ``images`` as paths relative to the folder.
    :func:`write_problems` writes it; loading what it wrote gives the same problems back.

Bad rows (missing or unreadable image, no answer, unknown answer type, broken JSON,
a choice letter out of range, a duplicate id) raise :class:`DataError` naming the file,
the row or id and the field; with ``skip_bad=True`` they are skipped, listed in
``LoadResult.skipped`` and summarised in one logged warning. Images stay on disk
(``Problem.images`` holds paths) but each one is opened and verified at load time.
Images given as bytes become lazily decoded PIL images.

Code layout: this module is the entry point (:func:`load_problems`,
:func:`detect_format`); the per-format parsers are in :mod:`warmstart.data.formats`,
the bad-row policy and shared field/image/file readers in :mod:`warmstart.data.rows`,
and :func:`write_problems` in :mod:`warmstart.data.writer` (re-exported here).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from warmstart.data.formats import (
    _LOADERS,
    _first_record_keys,
    _format_from_keys,
    _intergps_split_dirs,
    _table_files,
)
from warmstart.data.rows import (
    SPLIT_ALIASES,
    SPLIT_ORDER,
    DataError,
    _Collector,
    check_image_file,
    infer_answer_type,
    normalize_split,
    split_from_filename,
)
from warmstart.data.schema import Problem
from warmstart.data.writer import write_problems

__all__ = [
    "FORMATS",
    "SPLIT_ALIASES",
    "SPLIT_ORDER",
    "DataError",
    "LoadResult",
    "check_image_file",
    "detect_format",
    "infer_answer_type",
    "load_problems",
    "normalize_split",
    "split_from_filename",
    "write_problems",
]

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("geometry3k-intergps", "geometry3k-table", "mathvista", "warmstart-jsonl")


@dataclass
class LoadResult:
    """What :func:`load_problems` returns.

    Attributes:
        problems: the problems, in file order (splits in :data:`SPLIT_ORDER`).
        format: the format that was read (one of :data:`FORMATS`).
        skipped: ``(row, reason)`` for every row skipped with ``skip_bad=True``; ``row``
            names the file and the line/row/id, ``reason`` the field and what is wrong.
    """

    problems: list[Problem]
    format: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ----------------------------------------------------------------------------- detection


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path`` from its layout and first record (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        found = _format_from_keys(_first_record_keys(path))
        if found is None:
            raise DataError(f"{path}: cannot detect the format (pass format=one of {', '.join(FORMATS)})")
        return found
    if _intergps_split_dirs(path):
        return "geometry3k-intergps"
    empty = []
    for file in _table_files(path, (".jsonl", ".json", ".parquet")):
        if file.stat().st_size == 0:
            empty.append(file)
            continue
        found = _format_from_keys(_first_record_keys(file))
        if found is not None:
            return found
    if empty:
        raise DataError(f"{empty[0]}: empty file (no records), so the format of {path} cannot be detected")
    raise DataError(f"{path}: cannot detect the format (pass format=one of {', '.join(FORMATS)})")


def load_problems(
    path: str | os.PathLike,
    format: str = "auto",
    skip_bad: bool = False,
    split: str | None = None,
    allow_outside_images: bool = False,
) -> LoadResult:
    """Load problems from ``path`` (a file or folder in one of :data:`FORMATS`).

    Args:
        path: file or folder; see the module docstring for each format's layout.
        format: one of :data:`FORMATS`, or ``"auto"`` to detect it.
        skip_bad: skip bad rows (recorded in ``LoadResult.skipped``, one warning logged)
            instead of raising :class:`DataError` at the first one.
        split: keep only this split (``val`` and ``validation`` are the same split).
        allow_outside_images: accept image paths that leave the data set's folder
            (``../``, absolute paths); by default such a row is bad.

    Raises:
        DataError: the path is missing or unreadable, the format unknown, the split
            absent, or (strict mode) a row is bad. The message names file, row/id, field.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if format == "auto":
        format = detect_format(path)
    if format not in _LOADERS:
        raise DataError(f"unknown format {format!r} (valid: auto, {', '.join(FORMATS)})")
    out = _Collector(path, skip_bad, allow_outside_images)
    _LOADERS[format](path, split, out)
    if split is not None and not out.problems and not out.skipped:
        raise DataError(f"{path}: no problems with split {split!r}")
    if out.skipped:
        row, reason = out.skipped[0]
        logger.warning("%s: skipped %d bad row(s); first: %s: %s", path, len(out.skipped), row, reason)
    return LoadResult(problems=out.problems, format=format, skipped=out.skipped)

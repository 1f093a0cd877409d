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
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from warmstart.atomic import atomic_write_text, write_via
from warmstart.data.schema import ANSWER_TYPES, Problem

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("geometry3k-intergps", "geometry3k-table", "mathvista", "warmstart-jsonl")
SPLIT_ORDER: tuple[str, ...] = ("train", "validation", "test", "testmini", "ood")
# Split names sources use for the same thing -> the name the project uses.
SPLIT_ALIASES: dict[str, str] = {"val": "validation", "valid": "validation", "dev": "validation"}
_KNOWN_SPLITS = set(SPLIT_ORDER) | set(SPLIT_ALIASES)
_PROBLEM_FIELDS = (
    "id",
    "question",
    "images",
    "answer",
    "answer_type",
    "choices",
    "precision",
    "unit",
    "split",
    "source",
    "rationale",
    "meta",
)
_REQUIRED_FIELDS = ("id", "question", "answer", "answer_type")
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_MATHVISTA_ANSWER_TYPES = {"integer": "integer", "float": "float", "text": "text", "list": "text"}
_IMAGE_PLACEHOLDER = "<image>"


class DataError(ValueError):
    """Bad input data. The message names the file, the row or id, and the field."""


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


class _BadRow(Exception):
    """One row is bad; the loader adds the file and row and applies the skip policy."""

    def __init__(self, field_name: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field_name = field_name
        self.reason = reason

    def describe(self) -> str:
        if self.field_name is None:
            return self.reason
        return f"field '{self.field_name}': {self.reason}"


class _Collector:
    """Turns rows into problems one at a time, raising or recording each bad one."""

    def __init__(self, root: Path, skip_bad: bool, allow_outside_images: bool = False) -> None:
        self.root = root
        self.skip_bad = skip_bad
        self.allow_outside_images = allow_outside_images
        self.problems: list[Problem] = []
        self.skipped: list[tuple[str, str]] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, file: Path, row: str, make: Callable[[], Problem | None]) -> None:
        """Run ``make`` (which may raise :class:`_BadRow`); keep its problem unless None."""
        try:
            problem = make()
            if problem is None:
                return
            key = (problem.split, problem.id)
            if key in self._seen:
                raise _BadRow("id", f"duplicate id {_short(problem.id)} in split {_short(problem.split)}")
            if not self.allow_outside_images:
                self._check_inside(problem)
        except _BadRow as bad:
            where = f"{file}: {row}" if row else str(file)
            reason = _cap(bad.describe())
            if not self.skip_bad:
                raise DataError(f"{where}: {reason}") from None
            self.skipped.append((_relative(file, self.root) + (f" {row}" if row else ""), reason))
            return
        self._seen.add(key)
        self.problems.append(problem)

    def _check_inside(self, problem: Problem) -> None:
        """Image paths must stay inside the data set's folder (no ``../``, no absolute paths).

        A path that climbs out would read (and, with an HTTP teacher, send) a file the
        data set does not own. The check is lexical, so a symlinked image folder is fine.
        """
        base = Path(os.path.normpath(self.root if self.root.is_dir() else self.root.parent))
        for image in problem.images:
            if isinstance(image, Path) and not Path(os.path.normpath(image)).is_relative_to(base):
                raise _BadRow(
                    "images",
                    f"image path {_short(str(image))} is outside the data set folder {base} "
                    "(pass allow_outside_images=True / --allow-outside-images to allow it)",
                )


_MAX_REASON = 300  # characters of a bad-row reason: a 50 MB field must not make a 50 MB message


def _cap(text: str, limit: int = _MAX_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 30] + f"... [{len(text)} characters]"


def _relative(file: Path, root: Path) -> str:
    """``file`` relative to the loaded path when inside it (short labels), else as is."""
    base = root if root.is_dir() else root.parent
    try:
        return file.relative_to(base).as_posix()
    except ValueError:
        return str(file)


# ----------------------------------------------------------------------------- helpers


def normalize_split(name: str) -> str:
    """The project's name for a split (``val`` -> ``validation``); others unchanged."""
    low = name.strip().lower()
    return SPLIT_ALIASES.get(low, low)


def split_from_filename(path: Path) -> str:
    """The split a file holds, from its name: ``train-00000-of-00001.parquet`` -> ``train``.

    The first ``-``/``_``/``.`` separated token that is a known split name wins; else the
    file's stem itself (the source's own name for the split).
    """
    stem = path.name.split(".")[0]
    for token in re.split(r"[-_.]", stem.lower()):
        if token in _KNOWN_SPLITS:
            return normalize_split(token)
    return stem


def infer_answer_type(answer: str) -> str:
    """``integer`` (``"60"``), ``float`` (``"14.5"``) or ``expression`` (``"2\\sqrt{3}"``)."""
    text = answer.strip()
    if _INT_RE.fullmatch(text):
        return "integer"
    if _FLOAT_RE.fullmatch(text):
        return "float"
    return "expression"


def _split_sort_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def _natural_key(path: Path) -> tuple[int, int, str]:
    """Numeric folder names in numeric order (``2`` before ``10``), then the rest by name."""
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _decode_fully(source: Any) -> None:
    """Open, verify (checksums) and decode every pixel of ``source``, or raise.

    ``verify()`` alone passes a PNG whose checksums are valid but whose pixel data is
    broken; such a file then fails minutes later inside evaluation. Decoding here
    makes it a bad row at load time, named by file and row.
    """
    with Image.open(source) as im:
        im.verify()
    if hasattr(source, "seek"):
        source.seek(0)
    with Image.open(source) as im:
        im.load()


def check_image_file(path: Path, field_name: str = "image") -> Path:
    """``path`` if it is a readable image (opened, verified and fully decoded), else a bad row."""
    if not path.is_file():
        raise _BadRow(field_name, f"image file not found: {_short(str(path), 200)}")
    try:
        _decode_fully(path)
    # PIL reports broken files through many exception types (OSError, SyntaxError,
    # struct.error, ...); any failure here means the file is not a usable image.
    except Exception as exc:
        raise _BadRow(field_name, f"unreadable image {path}: {exc}") from None
    return path


def _image_from_bytes(data: bytes, field_name: str) -> Image.Image:
    """A PIL image from encoded bytes, verified and decoded first."""
    try:
        _decode_fully(io.BytesIO(data))
    except Exception as exc:  # see check_image_file
        raise _BadRow(field_name, f"unreadable image bytes: {exc}") from None
    return Image.open(io.BytesIO(data))


def _image_ref(cell: Any, base_dir: Path, field_name: str) -> Image.Image | Path:
    """One image cell: HF ``{"bytes", "path"}`` dict (bytes preferred), raw bytes, or a path."""
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return _image_from_bytes(cell["bytes"], field_name)
        cell = cell.get("path")
    if isinstance(cell, bytes | bytearray):
        return _image_from_bytes(bytes(cell), field_name)
    if isinstance(cell, str) and cell.strip():
        return check_image_file(base_dir / cell, field_name)
    raise _BadRow(field_name, f"no image bytes or path in {_short(cell)}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scalar_str(value: Any, name: str) -> str:
    """A string or number field as a string; any other type (object, list, bool) is a bad row."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _BadRow(name, f"expected a string or number, got {type(value).__name__} {_short(value)}")


def _answer_str(rec: dict, name: str = "answer") -> str:
    """The record's answer as a non-empty string, else a bad row."""
    value = rec.get(name)
    if value is None:
        raise _BadRow(name, "missing or empty answer")
    text = _scalar_str(value, name).strip()
    if not text:
        raise _BadRow(name, "missing or empty answer")
    return text


def _text(rec: dict, name: str) -> str:
    value = rec.get(name)
    if not isinstance(value, str) or not value.strip():
        raise _BadRow(name, "missing or empty text")
    return value


def _choices(rec: dict, name: str = "choices") -> tuple[str, ...]:
    value = rec.get(name)
    if not isinstance(value, list | tuple) or len(value) < 2:
        raise _BadRow(name, f"expected a list of at least 2 choices, got {_short(value)}")
    if len(value) > 26:
        raise _BadRow(name, f"{len(value)} choices; letters only go to Z")
    return tuple(_scalar_str(c, f"{name}[{i}]") for i, c in enumerate(value))


def _check_letter(answer: str, choices: tuple[str, ...], name: str = "answer") -> str:
    """The upper-case choice letter if it names one of ``choices``, else a bad row."""
    letter = answer.strip().upper()
    last = chr(ord("A") + len(choices) - 1)
    if len(letter) != 1 or not "A" <= letter <= "Z":
        raise _BadRow(name, f"expected a choice letter A-{last}, got {_short(answer)}")
    if ord(letter) - ord("A") >= len(choices):
        raise _BadRow(name, f"choice letter {letter!r} out of range A-{last}")
    return letter


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise _BadRow(name, f"expected a whole number, got {_short(value)}") from None
    if not as_float.is_integer():
        raise _BadRow(name, f"expected a whole number, got {_short(value)}")
    return int(as_float)


def _optional_str(value: Any, name: str = "field") -> str | None:
    if value is None:
        return None
    text = _scalar_str(value, name)
    return text if text.strip() else None


def _parse_json_line(line: bytes | str) -> dict:
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _BadRow(None, f"not valid UTF-8 (byte {exc.start} of the line)") from None
    try:
        rec = json.loads(line)
    except RecursionError:
        raise _BadRow(None, "invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _BadRow(None, f"invalid JSON: {exc}") from None
    if not isinstance(rec, dict):
        raise _BadRow(None, f"expected a JSON object, got {type(rec).__name__}")
    return rec


def _read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read JSON: {exc}") from None


def _read_parquet(path: Path) -> list[dict]:
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for bad files
        raise DataError(f"{path}: cannot read parquet: {exc}") from None


def _jsonl_lines(path: Path) -> Iterable[tuple[str, bytes]]:
    """``("line N", raw bytes)`` for every non-blank line (N counts from 1).

    Lines are split on bytes and decoded one by one (in :func:`_parse_json_line`), so
    one non-UTF-8 line is one bad row (skippable) rather than an unreadable file, and a
    U+2028 inside a JSON string does not split a record.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            yield f"line {number}", line


def _first_record_keys(path: Path) -> set[str]:
    """Column/key names of the first record of a parquet, JSONL or JSON file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return set(pq.read_schema(path).names)
        except Exception as exc:
            raise DataError(f"{path}: cannot read parquet schema: {exc}") from None
    if suffix == ".jsonl":
        for _row, line in _jsonl_lines(path):
            try:  # the first line that parses: a broken line is a bad row, not a format
                return set(_parse_json_line(line))
            except _BadRow:
                continue
        return set()
    if suffix == ".json":
        data = _read_json_file(path)
        if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
            return set(next(iter(data.values())))  # MathVista: {pid: record}
        if isinstance(data, dict):
            return set(data)
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return set(data[0])
        return set()
    return set()


def _format_from_keys(keys: set[str]) -> str | None:
    if {"pid", "question"} <= keys:
        return "mathvista"
    if {"problem", "answer"} <= keys:
        return "geometry3k-table"
    if set(_REQUIRED_FIELDS) <= keys:
        return "warmstart-jsonl"
    return None


def _table_files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Data files directly in ``path`` or in ``path/data`` (the HF hub layout)."""
    found: list[Path] = []
    for folder in (path, path / "data"):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    return found


def _intergps_split_dirs(path: Path) -> list[Path] | None:
    """The split folders under an InterGPS root, ``[path]`` for a split folder, else None."""
    if any((child / "data.json").is_file() for child in path.iterdir() if child.is_dir()):
        return [path]
    splits = [
        child
        for child in path.iterdir()
        if child.is_dir() and any((g / "data.json").is_file() for g in child.iterdir() if g.is_dir())
    ]
    return sorted(splits, key=lambda p: _split_sort_key(normalize_split(p.name))) or None


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


# ----------------------------------------------------------------------------- formats


def _intergps_problem(data_file: Path, split: str) -> Problem:
    folder = data_file.parent
    try:
        data = json.loads(data_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRow(None, f"cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _BadRow(None, f"expected a JSON object, got {type(data).__name__}")
    question = _text(data, "problem_text")
    choices = _choices(data)
    answer = _check_letter(_answer_str(data), choices)
    image = check_image_file(folder / "img_diagram.png", "img_diagram.png")
    used = {"id", "problem_text", "choices", "answer", "unit"}
    return Problem(
        id=str(data.get("id", folder.name)),
        question=question.strip(),
        images=(image,),
        answer=answer,
        answer_type="choice",
        choices=choices,
        unit=_optional_str(data.get("unit"), "unit"),
        split=split,
        source="geometry3k",
        meta={k: v for k, v in data.items() if k not in used},
    )


def _load_intergps(path: Path, split: str | None, out: _Collector) -> None:
    split_dirs = _intergps_split_dirs(path) if path.is_dir() else None
    if not split_dirs:
        raise DataError(f"{path}: no <split>/<id>/data.json or <id>/data.json folders (geometry3k-intergps)")
    if split is not None:
        wanted = normalize_split(split)
        chosen = [d for d in split_dirs if normalize_split(d.name) == wanted]
        if not chosen:
            names = ", ".join(normalize_split(d.name) for d in split_dirs)
            raise DataError(f"{path}: no split {split!r} (available: {names})")
        split_dirs = chosen
    for split_dir in split_dirs:
        name = normalize_split(split_dir.name)
        for folder in sorted((p for p in split_dir.iterdir() if p.is_dir()), key=_natural_key):
            data_file = folder / "data.json"
            if not data_file.exists():
                continue  # a stray folder, not a problem
            out.add(data_file, "", lambda f=data_file, s=name: _intergps_problem(f, s))


def _table_problem(rec: dict, index: int, split: str, base_dir: Path) -> Problem:
    question = _text(rec, "problem").replace(_IMAGE_PLACEHOLDER, " ")
    question = re.sub(r"[ \t]+", " ", question).strip()
    answer = _answer_str(rec)
    answer_type = infer_answer_type(answer)
    precision = len(answer.split(".")[1]) if answer_type == "float" else None
    cells = rec.get("images")
    if cells is None:
        cells = []
    elif isinstance(cells, dict | str | bytes):
        cells = [cells]
    images = tuple(_image_ref(cell, base_dir, "images") for cell in cells)
    rid = rec.get("id")
    return Problem(
        id=str(rid) if rid is not None else f"{split}-{index}",
        question=question,
        images=images,
        answer=answer,
        answer_type=answer_type,
        precision=precision,
        split=split,
        source="geometry3k",
        meta={k: v for k, v in rec.items() if k not in {"problem", "answer", "images", "id"}},
    )


def _load_table(path: Path, split: str | None, out: _Collector) -> None:
    files = [path] if path.is_file() else _table_files(path, (".parquet", ".jsonl"))
    if not files:
        raise DataError(f"{path}: no .parquet or .jsonl files (geometry3k-table)")
    files = _select_split_files(path, files, split)
    for file in files:
        file_split = split_from_filename(file)
        for index, (row, get) in enumerate(_rows(file)):

            def make(get=get, index=index, file=file, file_split=file_split) -> Problem:
                return _table_problem(get(), index, file_split, file.parent)

            out.add(file, row, make)


def _select_split_files(path: Path, files: list[Path], split: str | None) -> list[Path]:
    files = sorted(files, key=lambda f: _split_sort_key(split_from_filename(f)))
    if split is None:
        return files
    chosen = [f for f in files if split_from_filename(f) == normalize_split(split)]
    if not chosen:
        names = ", ".join(sorted({split_from_filename(f) for f in files}))
        raise DataError(f"{path}: no split {split!r} (available: {names})")
    return chosen


def _rows(file: Path) -> list[tuple[str, Callable[[], dict]]]:
    """``(row label, record getter)`` per row of a JSONL, parquet or JSON file.

    Getters defer JSON parsing of each JSONL line so that a broken line is a bad row
    (skippable), not a broken file.
    """
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return [(row, lambda line=line: _parse_json_line(line)) for row, line in _jsonl_lines(file)]
    if suffix == ".parquet":
        return [(f"row {i}", lambda rec=rec: rec) for i, rec in enumerate(_read_parquet(file))]
    if suffix == ".json":
        data = _read_json_file(file)
        if isinstance(data, dict):  # MathVista testmini.json: {pid: record}
            return [(f"pid {pid}", _keyed_getter(pid, rec)) for pid, rec in data.items()]
        if isinstance(data, list):
            return [(f"row {i}", _keyed_getter(None, rec)) for i, rec in enumerate(data)]
        raise DataError(f"{file}: expected a JSON object keyed by id or a list of records")
    raise DataError(f"{file}: unsupported file type {suffix!r} (use .json, .jsonl or .parquet)")


def _keyed_getter(pid: str | None, rec: Any) -> Callable[[], dict]:
    def get() -> dict:
        if not isinstance(rec, dict):
            raise _BadRow(None, f"expected a JSON object, got {type(rec).__name__}")
        if pid is not None and "pid" not in rec:
            return {**rec, "pid": pid}
        return rec

    return get


def _mathvista_problem(rec: dict, base_dir: Path, file_split: str) -> Problem:
    pid = rec.get("pid")
    if pid is None or not str(pid).strip():
        raise _BadRow("pid", "missing pid")
    question = _text(rec, "question")
    question_type = rec.get("question_type")
    if question_type not in ("multi_choice", "free_form"):
        raise _BadRow("question_type", f"unknown question type {_short(question_type)}")
    source_type = rec.get("answer_type")
    if source_type not in _MATHVISTA_ANSWER_TYPES:
        raise _BadRow("answer_type", f"unknown answer type {_short(source_type)}")
    answer = _answer_str(rec)
    choices: tuple[str, ...] | None = None
    if question_type == "multi_choice":
        choices = _choices(rec)
        answer = _letter_of_choice(answer, choices)
        answer_type = "choice"
    else:
        answer_type = _MATHVISTA_ANSWER_TYPES[source_type]
        _check_number(answer, answer_type)
    decoded = rec.get("decoded_image")
    if (isinstance(decoded, dict) and decoded.get("bytes")) or isinstance(decoded, bytes):
        image = _image_ref(decoded, base_dir, "decoded_image")
    elif rec.get("image"):
        image = _image_ref(rec["image"], base_dir, "image")
    else:
        raise _BadRow("image", "missing image")
    metadata = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    split = metadata.get("split") or file_split
    return Problem(
        id=str(pid),
        question=question.strip(),
        images=(image,),
        answer=answer,
        answer_type=answer_type,
        choices=choices,
        precision=_optional_int(rec.get("precision"), "precision"),
        unit=_optional_str(rec.get("unit")),
        split=str(split),
        source="mathvista",
        meta={
            "question_type": question_type,
            "answer_type": source_type,
            "query": rec.get("query"),
            "metadata": metadata,
        },
    )


def _letter_of_choice(answer: str, choices: tuple[str, ...]) -> str:
    """The letter of the choice whose text is ``answer`` (exact, then trimmed/case-folded)."""
    for index, choice in enumerate(choices):
        if choice == answer:
            return chr(ord("A") + index)
    folded = answer.strip().casefold()
    for index, choice in enumerate(choices):
        if choice.strip().casefold() == folded:
            return chr(ord("A") + index)
    raise _BadRow("answer", f"answer {answer!r} is not one of the choices {list(choices)}")


def _check_number(answer: str, answer_type: str) -> None:
    if answer_type == "integer" and not _INT_RE.fullmatch(answer):
        raise _BadRow("answer", f"answer_type integer but answer is {answer!r}")
    if answer_type == "float":
        try:
            float(answer)
        except ValueError:
            raise _BadRow("answer", f"answer_type float but answer is {answer!r}") from None


def _load_mathvista(path: Path, split: str | None, out: _Collector) -> None:
    if path.is_file():
        files = [path]
    else:
        files = _table_files(path, (".json", ".jsonl", ".parquet"))
        files = [f for f in files if _format_from_keys(_first_record_keys(f)) == "mathvista"]
        if not files:
            raise DataError(f"{path}: no MathVista .json/.jsonl/.parquet files")
        if split is None and any(split_from_filename(f) == "testmini" for f in files):
            split = "testmini"  # the test split publishes no answers
        files = _select_split_files(path, files, split)
    for file in files:
        file_split = split_from_filename(file)
        for row, get in _rows(file):

            def make(get=get, file=file, file_split=file_split) -> Problem | None:
                problem = _mathvista_problem(get(), file.parent, file_split)
                if split is not None and normalize_split(problem.split) != normalize_split(split):
                    return None
                return problem

            out.add(file, row, make)


def _warmstart_problem(rec: dict, base_dir: Path) -> Problem:
    unknown = sorted(set(rec) - set(_PROBLEM_FIELDS))
    if unknown:
        raise _BadRow(unknown[0], f"unknown field (valid: {', '.join(_PROBLEM_FIELDS)})")
    for name in _REQUIRED_FIELDS:
        if rec.get(name) is None:
            raise _BadRow(name, "missing")
    answer = rec["answer"]
    if not isinstance(answer, str) or not answer.strip():
        raise _BadRow("answer", f"expected a non-empty string, got {_short(answer)}")
    answer_type = rec["answer_type"]
    if answer_type not in ANSWER_TYPES:
        raise _BadRow("answer_type", f"unknown answer type {_short(answer_type)} (valid: {ANSWER_TYPES})")
    choices = _choices(rec) if rec.get("choices") is not None else None
    if answer_type == "choice":
        choices = _choices(rec)
        if answer != _check_letter(answer, choices):
            raise _BadRow("answer", f"choice letter must be upper case, got {answer!r}")
    images = rec.get("images") or []
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise _BadRow("images", f"expected a list of relative paths, got {_short(images)}")
    meta = rec.get("meta") or {}
    if not isinstance(meta, dict):
        raise _BadRow("meta", f"expected an object, got {_short(meta)}")
    for name in ("unit", "rationale", "split", "source"):
        if rec.get(name) is not None and not isinstance(rec[name], str):
            raise _BadRow(name, f"expected a string, got {type(rec[name]).__name__} {_short(rec[name])}")
    return Problem(
        id=_scalar_str(rec["id"], "id"),
        question=_text(rec, "question"),
        images=tuple(check_image_file(base_dir / p, "images") for p in images),
        answer=answer,
        answer_type=answer_type,
        choices=choices,
        precision=_optional_int(rec.get("precision"), "precision"),
        unit=rec.get("unit"),
        split=str(rec.get("split", "test")),
        source=str(rec.get("source", "unknown")),
        rationale=rec.get("rationale"),
        meta=meta,
    )


def _load_warmstart(path: Path, split: str | None, out: _Collector) -> None:
    if path.is_file():
        files = [path]
    else:
        files = sorted(path.glob("*.jsonl"), key=lambda f: _split_sort_key(f.stem))
        if not files:
            raise DataError(f"{path}: no <split>.jsonl or problems.jsonl (warmstart-jsonl)")
        if split is not None:
            exact = path / f"{split}.jsonl"
            if exact.is_file() and not exact.read_bytes().strip():
                raise DataError(f"{exact}: empty file (no problems)")
            files = [exact] if exact.is_file() else [f for f in files if f.name == "problems.jsonl"]
            if not files:
                names = ", ".join(f.stem for f in sorted(path.glob("*.jsonl")))
                raise DataError(f"{path}: no split {split!r} (available: {names})")
    for file in files:
        filter_split = split is not None and file.stem != split
        for row, get in _rows(file):

            def make(get=get, file=file, filter_split=filter_split) -> Problem | None:
                problem = _warmstart_problem(get(), file.parent)
                return None if filter_split and problem.split != split else problem

            out.add(file, row, make)


_LOADERS: dict[str, Callable[[Path, str | None, _Collector], None]] = {
    "geometry3k-intergps": _load_intergps,
    "geometry3k-table": _load_table,
    "mathvista": _load_mathvista,
    "warmstart-jsonl": _load_warmstart,
}


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


# ----------------------------------------------------------------------------- writing


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60] or "x"


def write_problems(problems: Iterable[Problem], out_dir: str | os.PathLike, split: str) -> Path:
    """Write ``problems`` as ``<out_dir>/<split>.jsonl`` (format ``warmstart-jsonl``).

    PIL images are saved as PNG under ``images/<split>/``; image paths outside
    ``out_dir`` are copied there byte for byte (so the folder is self-contained), paths
    inside it are referenced where they are. Each problem keeps its own ``split`` field;
    the file name is ``split``. The JSONL file is written atomically. Returns its path.
    """
    out_dir = Path(out_dir)
    if not split or _safe_name(split) != split:
        raise ValueError(f"split {split!r} must be a plain file name (letters, digits, . _ -)")
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir.resolve()
    lines = []
    for index, problem in enumerate(problems):
        rel_images = []
        for k, image in enumerate(problem.images):
            stem = f"{index:06d}_{_safe_name(problem.id)}_{k}"
            if isinstance(image, Image.Image):
                target = image_dir / f"{stem}.png"
                write_via(target, lambda tmp, image=image: image.save(tmp, format="PNG"))
            else:
                source = Path(image).resolve()
                if source.is_relative_to(root):
                    target = source
                else:
                    target = image_dir / f"{stem}{source.suffix.lower()}"
                    shutil.copyfile(source, target)
            rel_images.append(target.resolve().relative_to(root).as_posix())
        record = {
            "id": problem.id,
            "question": problem.question,
            "images": rel_images,
            "answer": problem.answer,
            "answer_type": problem.answer_type,
            "choices": list(problem.choices) if problem.choices is not None else None,
            "precision": problem.precision,
            "unit": problem.unit,
            "split": problem.split,
            "source": problem.source,
            "rationale": problem.rationale,
            "meta": problem.meta,
        }
        try:
            lines.append(json.dumps(record, ensure_ascii=False))
        except TypeError as exc:
            raise DataError(f"problem {problem.id!r}: field 'meta' is not JSON-serialisable: {exc}") from None
    target_file = out_dir / f"{split}.jsonl"
    atomic_write_text(target_file, "".join(line + "\n" for line in lines))
    return target_file

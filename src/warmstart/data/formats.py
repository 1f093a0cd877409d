"""The per-format parsers behind :func:`warmstart.data.loaders.load_problems`.

Each ``_load_<format>(path, split, out)`` finds the files of one layout (described in
the :mod:`warmstart.data.loaders` docstring) and hands every row to ``out``, a
:class:`_Collector`, as a function that builds its :class:`Problem` or raises
:class:`_BadRow`. :data:`_LOADERS` maps format names to them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from warmstart.data.rows import (
    _INT_RE,
    DataError,
    _answer_str,
    _BadRow,
    _check_letter,
    _choices,
    _Collector,
    _image_ref,
    _jsonl_lines,
    _natural_key,
    _optional_int,
    _optional_str,
    _parse_json_line,
    _read_json_file,
    _read_parquet,
    _scalar_str,
    _short,
    _split_sort_key,
    _text,
    check_image_file,
    infer_answer_type,
    normalize_split,
    split_from_filename,
)
from warmstart.data.schema import ANSWER_TYPES, Problem

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
_MATHVISTA_ANSWER_TYPES = {"integer": "integer", "float": "float", "text": "text", "list": "text"}
_IMAGE_PLACEHOLDER = "<image>"


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

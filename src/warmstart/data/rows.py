"""One row at a time: the bad-row policy and the field, image and file readers every format uses.

:class:`_BadRow` marks one bad row; :class:`_Collector` adds the file and row to it and
applies ``skip_bad`` (see :mod:`warmstart.data.loaders`). The readers below raise
:class:`_BadRow` for what is wrong with one row and :class:`DataError` for a file that
cannot be read at all.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from warmstart.data.schema import Problem

SPLIT_ORDER: tuple[str, ...] = ("train", "validation", "test", "testmini", "ood")
# Split names sources use for the same thing -> the name the project uses.
SPLIT_ALIASES: dict[str, str] = {"val": "validation", "valid": "validation", "dev": "validation"}
_KNOWN_SPLITS = set(SPLIT_ORDER) | set(SPLIT_ALIASES)
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")


class DataError(ValueError):
    """Bad input data. The message names the file, the row or id, and the field."""


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

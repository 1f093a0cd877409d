"""Hostile data: each case is a clear, short error naming file/row/field, or a counted skip."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from warmstart.data.loaders import DataError, load_problems

from .test_loaders import make_png


def record(i: int, image: str = "images/a.png", **over) -> dict:
    base = {
        "id": f"p{i}",
        "question": f"What is {i}?",
        "images": [image],
        "answer": str(i),
        "answer_type": "integer",
        "split": "test",
    }
    return {**base, **over}


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def dumps(rec: dict) -> bytes:
    return json.dumps(rec).encode()


def broken_pixels_png(path: Path) -> Path:
    """A PNG whose every chunk CRC is valid but whose IDAT inflates to too few bytes."""
    make_png(path)
    data = path.read_bytes()
    out, pos = [data[:8]], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            body = zlib.compress(b"\x00" * 5)  # 8x8 RGB needs 8 * (1 + 24) bytes
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
        pos += 12 + length
    path.write_bytes(b"".join(out))
    return path


def test_png_with_valid_checksums_but_broken_pixels_is_a_bad_row(tmp_path):
    make_png(tmp_path / "images" / "a.png")
    broken_pixels_png(tmp_path / "images" / "b.png")
    write_lines(tmp_path / "test.jsonl", [dumps(record(1)), dumps(record(2, "images/b.png"))])
    with pytest.raises(DataError) as e:
        load_problems(tmp_path, split="test")
    msg = str(e.value)
    assert "test.jsonl: line 2" in msg and "images" in msg and "b.png" in msg
    res = load_problems(tmp_path, split="test", skip_bad=True)
    assert [p.id for p in res.problems] == ["p1"] and len(res.skipped) == 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("answer", {"value": 3}),
        ("question", ["what", "is"]),
        ("id", {"x": 1}),
        ("unit", 5),
        ("choices", [{}, {}]),
    ],
)
def test_wrong_type_fields_are_bad_rows_not_strings(tmp_path, field, value):
    make_png(tmp_path / "images" / "a.png")
    write_lines(tmp_path / "test.jsonl", [dumps(record(1, **{field: value}))])
    with pytest.raises(DataError) as e:
        load_problems(tmp_path, split="test")
    assert f"field '{field}" in str(e.value) and "line 1" in str(e.value)


def test_huge_field_gives_a_short_message(tmp_path):
    make_png(tmp_path / "images" / "a.png")
    huge = "X" * 5_000_000
    rec = record(1, answer=huge, answer_type="choice", choices=["a", "b"])
    write_lines(tmp_path / "test.jsonl", [dumps(rec)])
    with pytest.raises(DataError) as e:
        load_problems(tmp_path, split="test")
    assert len(str(e.value)) < 600 and "line 1" in str(e.value)


def test_non_utf8_line_is_one_skippable_row(tmp_path):
    make_png(tmp_path / "images" / "a.png")
    write_lines(
        tmp_path / "test.jsonl", [dumps(record(1)), b'{"id": "\xff\xfe"}', dumps(record(3)), dumps(record(4))]
    )
    with pytest.raises(DataError) as e:
        load_problems(tmp_path, split="test")
    assert "line 2" in str(e.value) and "UTF-8" in str(e.value)
    res = load_problems(tmp_path, split="test", skip_bad=True)
    assert [p.id for p in res.problems] == ["p1", "p3", "p4"]
    assert len(res.skipped) == 1 and "line 2" in res.skipped[0][0]


def test_line_separator_inside_a_string_does_not_split_the_record(tmp_path):
    make_png(tmp_path / "images" / "a.png")
    rec = record(1, question="a\u2028b")
    (tmp_path / "test.jsonl").write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_problems(tmp_path, split="test").problems[0].question == "a\u2028b"


def test_empty_split_file_is_named(tmp_path):
    make_png(tmp_path / "images" / "a.png")
    write_lines(tmp_path / "train.jsonl", [dumps(record(1))])
    (tmp_path / "validation.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match=r"validation\.jsonl: empty file"):
        load_problems(tmp_path, split="validation")
    only_empty = tmp_path / "only"
    only_empty.mkdir()
    (only_empty / "test.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match=r"only/test\.jsonl: empty file"):
        load_problems(only_empty)


@pytest.mark.parametrize("kind", ["climb", "absolute"])
def test_image_paths_outside_the_data_set_are_refused(tmp_path, kind):
    outside = make_png(tmp_path / "secret.png")
    data = tmp_path / "data"
    data.mkdir()
    image = "../secret.png" if kind == "climb" else str(outside)
    write_lines(data / "test.jsonl", [dumps(record(1, image))])
    with pytest.raises(DataError, match="outside the data set folder"):
        load_problems(data, split="test")
    res = load_problems(data, split="test", allow_outside_images=True)
    assert res.problems[0].images[0].resolve() == outside.resolve()

"""Loaders: every format in its real layout, and every bad-input path (strict and skip_bad)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from warmstart.data.loaders import (
    DataError,
    detect_format,
    infer_answer_type,
    load_problems,
    split_from_filename,
    write_problems,
)
from warmstart.data.schema import Problem

# ----------------------------------------------------------------------------- builders
# Plain functions (also used by test_inspect.py) that write tiny data sets in the exact
# layouts the real releases use.


def make_png(path: Path, color: tuple[int, int, int] = (200, 10, 10), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path, format="PNG")
    return path


def make_jpg(path: Path, color: tuple[int, int, int] = (10, 10, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, format="JPEG")
    return path


def png_bytes(color: tuple[int, int, int] = (10, 200, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 6), color).save(buf, format="PNG")
    return buf.getvalue()


def intergps_record(pid: int, answer: str = "B") -> dict:
    """A data.json record with the fields of the InterGPS Geometry3K release."""
    return {
        "problem_text": f"Find x. Problem {pid}.",
        "choices": ["3", "4", "5", "2 \\sqrt { 3 }"],
        "answer": answer,
        "precise_value": [3.0, 4.0, 5.0, 3.4641016151377544],
        "rough_value": [3, 4, 5, 3.46],
        "problem_type_graph": ["Triangle"],
        "problem_type_goal": ["Length"],
        "source": "textbook1_chapter_7.pdf",
        "id": pid,
        "comment": "",
        "annotat_text": f"Find x. Problem {pid}.",
        "unit": "",
        "compact_text": f"Find x {pid}.",
        "annotator": "someone",
        "data_type": "train",
    }


def make_intergps(root: Path) -> Path:
    """``root/{train,val,test}/<id>/data.json`` + ``img_diagram.png``; ids 0, 1, 2101, 2401."""
    for split, pid in (("train", 0), ("train", 1), ("val", 2101), ("test", 2401)):
        folder = root / split / str(pid)
        folder.mkdir(parents=True)
        (folder / "data.json").write_text(json.dumps(intergps_record(pid)), encoding="utf-8")
        make_png(folder / "img_diagram.png")
        (folder / "logic_form.json").write_text("{}", encoding="utf-8")
    return root


def image_cell(data: bytes, name: str) -> dict:
    return {"bytes": data, "path": name}


def make_table_parquet(folder: Path) -> Path:
    """The hub layout ``data/<split>-00000-of-00001.parquet`` with HF image cells."""
    data_dir = folder / "data"
    data_dir.mkdir(parents=True)
    image_type = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    schema = pa.schema([("images", image_type), ("problem", pa.string()), ("answer", pa.string())])
    rows = {
        "train": [
            ("<image>Find x.", "60", (255, 0, 0)),
            ("<image>Find the area. Round to the nearest tenth.", "14.5", (0, 255, 0)),
            ("<image>\nFind y.", "2\\sqrt{3}", (0, 0, 255)),
        ],
        "test": [("<image>Find z.", "7", (9, 9, 9))],
    }
    for split, items in rows.items():
        table = pa.Table.from_pylist(
            [
                {"images": [image_cell(png_bytes(c), f"{i}.png")], "problem": q, "answer": a}
                for i, (q, a, c) in enumerate(items)
            ],
            schema=schema,
        )
        pq.write_table(table, data_dir / f"{split}-00000-of-00001.parquet")
    return folder


def mathvista_records() -> dict[str, dict]:
    """testmini.json records (keyed by pid) with the published fields."""

    def rec(pid, question, answer, qtype, atype, choices=None, precision=None, unit=None):
        return {
            "question": question,
            "image": f"images/{pid}.jpg",
            "choices": choices,
            "unit": unit,
            "precision": precision,
            "answer": answer,
            "question_type": qtype,
            "answer_type": atype,
            "pid": pid,
            "metadata": {"split": "testmini", "source": "Geometry3K", "language": "english"},
            "query": f"Hint: ...\nQuestion: {question}",
        }

    return {
        "1": rec("1", "Which angle is largest?", "145°", "multi_choice", "text", ["30°", "145°", "60°"]),
        "2": rec("2", "How many cubes?", "7", "free_form", "integer"),
        "3": rec("3", "What is the ratio?", "1.25", "free_form", "float", precision=2.0),
        "4": rec("4", "Which years?", "[2007, 2008]", "free_form", "list"),
        "5": rec("5", "How long is AB?", "12", "free_form", "integer", unit="cm"),
    }


def make_mathvista(folder: Path, records: dict | None = None) -> Path:
    """``folder/testmini.json`` (one object keyed by pid) + ``folder/images/<pid>.jpg``."""
    records = mathvista_records() if records is None else records
    folder.mkdir(parents=True, exist_ok=True)
    for pid in records:
        make_jpg(folder / "images" / f"{pid}.jpg")
    path = folder / "testmini.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def sample_problems(tmp: Path) -> list[Problem]:
    """Problems covering every field, PIL and path images."""
    return [
        Problem(
            id="tri-1",
            question="The side is 3. Perimeter?",
            images=(Image.new("RGB", (8, 8), (1, 2, 3)),),
            answer="9",
            answer_type="integer",
            split="train",
            source="synthetic",
            rationale="<think>3*3=9</think> \\boxed{9}",
            meta={"family": "triangle", "difficulty": 1},
        ),
        Problem(
            id="sq/2",
            question="Which shape?",
            images=(make_png(tmp / "elsewhere" / "sq.png", (5, 6, 7)), Image.new("L", (4, 4), 128)),
            answer="C",
            answer_type="choice",
            choices=("triangle", "pentagon", "square"),
            split="train",
            source="synthetic",
        ),
        Problem(
            id="f3",
            question="Ratio?",
            images=(),
            answer="1.25",
            answer_type="float",
            precision=2,
            unit="cm",
            split="train",
        ),
    ]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- helpers


def test_infer_answer_type() -> None:
    assert infer_answer_type("60") == "integer"
    assert infer_answer_type("-3") == "integer"
    assert infer_answer_type("14.5") == "float"
    assert infer_answer_type(".5") == "float"
    assert infer_answer_type("2\\sqrt{3}") == "expression"
    assert infer_answer_type("\\frac{40}{3}") == "expression"


def test_split_from_filename() -> None:
    assert split_from_filename(Path("train-00000-of-00001.parquet")) == "train"
    assert split_from_filename(Path("validation.jsonl")) == "validation"
    assert split_from_filename(Path("geo_val.parquet")) == "validation"
    assert split_from_filename(Path("testmini.json")) == "testmini"
    assert split_from_filename(Path("mine.parquet")) == "mine"


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_problems(tmp_path / "nope")
    with pytest.raises(DataError, match="unknown format 'csv'"):
        load_problems(tmp_path, format="csv")
    (tmp_path / "x.jsonl").write_text('{"foo": 1}\n', encoding="utf-8")
    with pytest.raises(DataError, match="cannot detect the format"):
        load_problems(tmp_path)


# ----------------------------------------------------------------------------- geometry3k-intergps


def test_intergps_root_loads_every_split(tmp_path: Path) -> None:
    root = make_intergps(tmp_path / "geometry3k")
    result = load_problems(root)
    assert result.format == "geometry3k-intergps"
    assert result.skipped == []
    assert [(p.split, p.id) for p in result.problems] == [
        ("train", "0"),
        ("train", "1"),
        ("validation", "2101"),
        ("test", "2401"),
    ]
    p = result.problems[0]
    assert p.question == "Find x. Problem 0."
    assert p.answer == "B" and p.answer_type == "choice"
    assert p.choices == ("3", "4", "5", "2 \\sqrt { 3 }")
    assert p.answer_text == "4"
    assert p.images == (root / "train" / "0" / "img_diagram.png",)
    assert isinstance(p.images[0], Path)
    assert p.unit is None and p.source == "geometry3k"
    assert p.meta["precise_value"][3] == pytest.approx(3.4641016151377544)
    assert p.meta["problem_type_goal"] == ["Length"]
    assert p.load_images()[0].size == (8, 8)


def test_intergps_split_selection(tmp_path: Path) -> None:
    root = make_intergps(tmp_path / "geometry3k")
    assert [p.id for p in load_problems(root, split="validation").problems] == ["2101"]
    assert [p.id for p in load_problems(root, split="val").problems] == ["2101"]
    one_split = load_problems(root / "test")
    assert one_split.format == "geometry3k-intergps"
    assert [(p.split, p.id) for p in one_split.problems] == [("test", "2401")]
    with pytest.raises(DataError, match="no split 'ood'.*train, validation, test"):
        load_problems(root, split="ood")
    with pytest.raises(DataError, match="no split 'train'"):
        load_problems(root / "test", split="train")


def test_intergps_numeric_folder_order(tmp_path: Path) -> None:
    root = tmp_path / "g"
    for pid in (10, 2, 1):
        folder = root / "train" / str(pid)
        folder.mkdir(parents=True)
        (folder / "data.json").write_text(json.dumps(intergps_record(pid)), encoding="utf-8")
        make_png(folder / "img_diagram.png")
    assert [p.id for p in load_problems(root).problems] == ["1", "2", "10"]


def _break_image_missing(folder: Path) -> None:
    (folder / "img_diagram.png").unlink()


def _break_image_garbage(folder: Path) -> None:
    (folder / "img_diagram.png").write_bytes(b"not a png at all")


def _break_answer_out_of_range(folder: Path) -> None:
    (folder / "data.json").write_text(json.dumps(intergps_record(1, answer="E")), encoding="utf-8")


def _break_answer_missing(folder: Path) -> None:
    rec = intergps_record(1)
    del rec["answer"]
    (folder / "data.json").write_text(json.dumps(rec), encoding="utf-8")


def _break_json(folder: Path) -> None:
    (folder / "data.json").write_text('{"problem_text": "Find x.", ', encoding="utf-8")


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (_break_image_missing, "field 'img_diagram.png': image file not found"),
        (_break_image_garbage, "field 'img_diagram.png': unreadable image"),
        (_break_answer_out_of_range, "field 'answer': choice letter 'E' out of range A-D"),
        (_break_answer_missing, "field 'answer': missing"),
        (_break_json, "invalid JSON|cannot read JSON"),
    ],
)
def test_intergps_bad_rows(tmp_path: Path, caplog, breaker, expected: str) -> None:
    root = make_intergps(tmp_path / "geometry3k")
    breaker(root / "train" / "1")
    bad_file = str(root / "train" / "1" / "data.json")
    with pytest.raises(DataError, match=expected) as info:
        load_problems(root)
    assert str(info.value).startswith(bad_file)

    with caplog.at_level(logging.WARNING, logger="warmstart.data.loaders"):
        result = load_problems(root, skip_bad=True)
    assert [p.id for p in result.problems] == ["0", "2101", "2401"]
    assert len(result.skipped) == 1
    row, reason = result.skipped[0]
    assert row == "train/1/data.json"
    assert re.search(expected, reason)
    assert "skipped 1 bad row" in caplog.text


# ----------------------------------------------------------------------------- geometry3k-table


def test_table_parquet_hub_layout(tmp_path: Path) -> None:
    folder = make_table_parquet(tmp_path / "geometry3k")
    assert detect_format(folder) == "geometry3k-table"
    result = load_problems(folder)
    assert result.format == "geometry3k-table"
    assert [(p.split, p.id) for p in result.problems] == [
        ("train", "train-0"),
        ("train", "train-1"),
        ("train", "train-2"),
        ("test", "test-0"),
    ]
    p0, p1, p2, _ = result.problems
    assert p0.question == "Find x."
    assert p2.question == "Find y."
    assert (p0.answer, p0.answer_type, p0.precision) == ("60", "integer", None)
    assert (p1.answer, p1.answer_type, p1.precision) == ("14.5", "float", 1)
    assert (p2.answer, p2.answer_type) == ("2\\sqrt{3}", "expression")
    assert p0.choices is None and p0.source == "geometry3k"
    # bytes images become PIL images with the original pixels
    assert isinstance(p0.images[0], Image.Image)
    assert p0.load_images()[0].getpixel((0, 0)) == (255, 0, 0)
    assert p2.load_images()[0].getpixel((5, 5)) == (0, 0, 255)
    assert [p.id for p in load_problems(folder, split="test").problems] == ["test-0"]
    with pytest.raises(DataError, match="no split 'validation'"):
        load_problems(folder, split="validation")


def test_table_single_parquet_file(tmp_path: Path) -> None:
    folder = make_table_parquet(tmp_path / "geometry3k")
    result = load_problems(folder / "data" / "test-00000-of-00001.parquet")
    assert result.format == "geometry3k-table"
    assert [(p.id, p.answer) for p in result.problems] == [("test-0", "7")]


def test_table_jsonl_with_image_paths(tmp_path: Path) -> None:
    make_png(tmp_path / "imgs" / "a.png")
    path = write_jsonl(
        tmp_path / "validation.jsonl",
        [
            {"images": ["imgs/a.png"], "problem": "<image>Find x.", "answer": "5"},
            {"images": [{"bytes": None, "path": "imgs/a.png"}], "problem": "Find y.<image>", "answer": "0.5"},
        ],
    )
    result = load_problems(path)
    assert result.format == "geometry3k-table"
    assert [(p.id, p.split, p.question, p.answer_type) for p in result.problems] == [
        ("validation-0", "validation", "Find x.", "integer"),
        ("validation-1", "validation", "Find y.", "float"),
    ]
    assert result.problems[0].images == (tmp_path / "imgs" / "a.png",)
    assert result.problems[1].images == (tmp_path / "imgs" / "a.png",)


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        (
            {"images": ["imgs/missing.png"], "problem": "<image>Q", "answer": "1"},
            "field 'images': image file not found",
        ),
        ({"images": ["imgs/a.png"], "problem": "<image>Q"}, "field 'answer': missing"),
        ({"images": ["imgs/a.png"], "problem": "<image>Q", "answer": " "}, "field 'answer': missing"),
        (
            {"images": ["imgs/bad.png"], "problem": "<image>Q", "answer": "1"},
            "field 'images': unreadable image",
        ),
        (
            {"images": [{"bytes": None, "path": None}], "problem": "Q", "answer": "1"},
            "field 'images': no image",
        ),
        ("{broken json", "line 2: invalid JSON"),
    ],
)
def test_table_bad_rows(tmp_path: Path, bad_row, expected: str) -> None:
    make_png(tmp_path / "imgs" / "a.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG garbage")
    good = {"images": ["imgs/a.png"], "problem": "<image>Find x.", "answer": "5"}
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(good), bad_row if isinstance(bad_row, str) else json.dumps(bad_row), json.dumps(good)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=expected) as info:
        load_problems(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line 2")

    result = load_problems(path, skip_bad=True)
    # ids are row indices, so they stay stable when a row is skipped
    assert [p.id for p in result.problems] == ["train-0", "train-2"]
    assert result.skipped[0][0] == "train.jsonl line 2"


def test_table_parquet_bad_image_bytes(tmp_path: Path) -> None:
    image_type = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    schema = pa.schema([("images", image_type), ("problem", pa.string()), ("answer", pa.string())])
    rows = [
        {"images": [image_cell(png_bytes(), "0.png")], "problem": "<image>Q0", "answer": "1"},
        {"images": [image_cell(b"\x89PNG\r\n broken", "1.png")], "problem": "<image>Q1", "answer": "2"},
    ]
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    with pytest.raises(DataError, match=r"row 1: field 'images': unreadable image bytes"):
        load_problems(path)
    result = load_problems(path, skip_bad=True)
    assert [p.id for p in result.problems] == ["train-0"]
    assert result.skipped[0][0].endswith("row 1")


# ----------------------------------------------------------------------------- mathvista


def test_mathvista_testmini_object_keyed_by_pid(tmp_path: Path) -> None:
    path = make_mathvista(tmp_path / "MathVista")
    result = load_problems(path)
    assert result.format == "mathvista"
    by_id = {p.id: p for p in result.problems}
    assert list(by_id) == ["1", "2", "3", "4", "5"]
    mc = by_id["1"]
    assert (mc.answer, mc.answer_type, mc.choices) == ("B", "choice", ("30°", "145°", "60°"))
    assert mc.answer_text == "145°"
    assert mc.images == (tmp_path / "MathVista" / "images" / "1.jpg",)
    assert mc.split == "testmini" and mc.source == "mathvista"
    assert mc.meta["question_type"] == "multi_choice" and mc.meta["query"].startswith("Hint")
    assert (by_id["2"].answer, by_id["2"].answer_type, by_id["2"].precision) == ("7", "integer", None)
    assert (by_id["3"].answer, by_id["3"].answer_type, by_id["3"].precision) == ("1.25", "float", 2)
    # list answers are graded as text (see the loaders docstring); the source type stays in meta
    assert (by_id["4"].answer, by_id["4"].answer_type) == ("[2007, 2008]", "text")
    assert by_id["4"].meta["answer_type"] == "list"
    assert by_id["5"].unit == "cm" and by_id["2"].unit is None


def test_mathvista_folder_list_jsonl_and_parquet_agree(tmp_path: Path) -> None:
    folder = tmp_path / "MathVista"
    reference = load_problems(make_mathvista(folder)).problems
    assert [p.id for p in load_problems(folder).problems] == [p.id for p in reference]
    records = list(mathvista_records().values())

    as_list = folder / "list.json"
    as_list.write_text(json.dumps(records), encoding="utf-8")
    as_jsonl = write_jsonl(folder / "rows.jsonl", records)
    for path in (as_list, as_jsonl):
        result = load_problems(path)
        assert result.format == "mathvista"
        assert result.problems == reference

    # parquet as on the hub: decoded_image bytes, image path not on disk
    rows = [
        {**r, "image": f"missing/{r['pid']}.jpg", "decoded_image": image_cell(png_bytes(), r["image"])}
        for r in records
    ]
    as_parquet = tmp_path / "hub" / "data" / "testmini-00000-of-00001-x.parquet"
    as_parquet.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), as_parquet)
    result = load_problems(tmp_path / "hub")
    assert result.format == "mathvista"
    assert [(p.id, p.answer, p.answer_type, p.choices) for p in result.problems] == [
        (p.id, p.answer, p.answer_type, p.choices) for p in reference
    ]
    assert isinstance(result.problems[0].images[0], Image.Image)
    assert result.problems[0].load_images()[0].getpixel((0, 0)) == (10, 200, 10)


def test_mathvista_folder_prefers_testmini(tmp_path: Path) -> None:
    folder = tmp_path / "MathVista"
    make_mathvista(folder)
    unanswered = {
        pid: {**r, "answer": "", "metadata": {"split": "test"}} for pid, r in mathvista_records().items()
    }
    (folder / "test.json").write_text(json.dumps(unanswered), encoding="utf-8")
    assert len(load_problems(folder).problems) == 5  # the answerless test split is not read
    with pytest.raises(DataError, match="test.json: pid 1: field 'answer': missing"):
        load_problems(folder, split="test")


def _mv(**changes) -> dict:
    records = mathvista_records()
    records["2"].update(changes)
    return records


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (_mv(answer_type="complex"), "field 'answer_type': unknown answer type 'complex'"),
        (_mv(question_type="cloze"), "field 'question_type': unknown question type"),
        (_mv(answer=None), "field 'answer': missing"),
        (_mv(answer="seven"), "field 'answer': answer_type integer but answer is 'seven'"),
        (_mv(question_type="multi_choice", choices=["1", "2"]), "field 'answer': answer '7' is not one of"),
        (_mv(question_type="multi_choice", choices=None), "field 'choices': expected a list"),
        (_mv(image="images/none.jpg"), "field 'image': image file not found"),
        (_mv(image=None), "field 'image': missing image"),
        (_mv(precision="two"), "field 'precision': expected a whole number"),
    ],
)
def test_mathvista_bad_rows(tmp_path: Path, records: dict, expected: str) -> None:
    path = make_mathvista(tmp_path / "mv", records)
    with pytest.raises(DataError, match=expected) as info:
        load_problems(path)
    assert str(info.value).startswith(f"{path}: pid 2: ")
    result = load_problems(path, skip_bad=True)
    assert [p.id for p in result.problems] == ["1", "3", "4", "5"]
    assert result.skipped == [("testmini.json pid 2", result.skipped[0][1])]
    assert expected.split(": ")[0] in result.skipped[0][1]


def test_mathvista_unreadable_image_and_broken_file(tmp_path: Path) -> None:
    path = make_mathvista(tmp_path / "mv")
    (tmp_path / "mv" / "images" / "3.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="pid 3: field 'image': unreadable image"):
        load_problems(path)
    path.write_text('{"1": {"pid": "1",', encoding="utf-8")
    with pytest.raises(DataError, match="testmini.json: cannot read JSON"):
        load_problems(path, format="mathvista", skip_bad=True)  # no rows to skip in a broken file


# ----------------------------------------------------------------------------- warmstart-jsonl


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    originals = sample_problems(tmp_path)
    out = tmp_path / "world"
    written = write_problems(originals, out, "train")
    assert written == out / "train.jsonl"
    lines = written.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[1])["images"] == [
        "images/train/000001_sq_2_0.png",
        "images/train/000001_sq_2_1.png",
    ]

    result = load_problems(out)
    assert result.format == "warmstart-jsonl"
    loaded = result.problems
    assert len(loaded) == len(originals)
    for orig, back in zip(originals, loaded, strict=True):
        assert back == dataclasses.replace(orig, images=back.images)
        assert back.meta == orig.meta
        assert all(isinstance(im, Path) and im.is_relative_to(out.resolve()) for im in back.images)
        for a, b in zip(orig.load_images(), back.load_images(), strict=True):
            assert a.tobytes() == b.tobytes() and a.size == b.size
    # path images outside the folder are copied byte for byte
    assert loaded[1].images[0].read_bytes() == (tmp_path / "elsewhere" / "sq.png").read_bytes()
    # writing what was loaded gives the same file (paths inside the folder stay where they are)
    assert write_problems(loaded, out, "train").read_text(encoding="utf-8") == "\n".join(lines) + "\n"


def test_warmstart_splits(tmp_path: Path) -> None:
    out = tmp_path / "world"
    p = sample_problems(tmp_path)[2]
    write_problems([p], out, "train")
    write_problems([dataclasses.replace(p, id="v1", split="validation")], out, "validation")
    write_problems([dataclasses.replace(p, id="o1", split="ood")], out, "ood")
    result = load_problems(out)
    assert [(q.split, q.id) for q in result.problems] == [
        ("train", "f3"),
        ("validation", "v1"),
        ("ood", "o1"),
    ]
    assert [q.id for q in load_problems(out, split="validation").problems] == ["v1"]
    assert [q.id for q in load_problems(out / "ood.jsonl").problems] == ["o1"]
    with pytest.raises(DataError, match="no split 'test'.*ood, train, validation"):
        load_problems(out, split="test")


def test_warmstart_problems_jsonl_filters_by_split_field(tmp_path: Path) -> None:
    p = sample_problems(tmp_path)[2]
    folder = tmp_path / "one"
    write_problems([p, dataclasses.replace(p, id="v", split="validation")], folder, "problems")
    assert [q.id for q in load_problems(folder).problems] == ["f3", "v"]
    assert [q.id for q in load_problems(folder, split="validation").problems] == ["v"]
    with pytest.raises(DataError, match="no problems with split 'ood'"):
        load_problems(folder, split="ood")


def _ws_record(**changes) -> dict:
    rec = {
        "id": "p2",
        "question": "Which?",
        "images": ["images/a.png"],
        "answer": "B",
        "answer_type": "choice",
        "choices": ["x", "y"],
        "precision": None,
        "unit": None,
        "split": "test",
        "source": "synthetic",
        "rationale": None,
        "meta": {},
    }
    rec.update(changes)
    return rec


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (_ws_record(answer_type="number"), "field 'answer_type': unknown answer type 'number'"),
        (_ws_record(answer="C"), "field 'answer': choice letter 'C' out of range A-B"),
        (_ws_record(answer="yes"), "field 'answer': expected a choice letter"),
        (_ws_record(answer=""), "field 'answer': expected a non-empty string"),
        ({k: v for k, v in _ws_record().items() if k != "answer"}, "field 'answer': missing"),
        (_ws_record(images=["images/gone.png"]), "field 'images': image file not found"),
        (_ws_record(choices=None), "field 'choices': expected a list"),
        (_ws_record(answr="B"), "field 'answr': unknown field"),
        (_ws_record(id="p1"), "field 'id': duplicate id 'p1'"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": "p2", ', "invalid JSON"),
    ],
)
def test_warmstart_bad_rows(tmp_path: Path, bad, expected: str) -> None:
    make_png(tmp_path / "images" / "a.png")
    lines = [json.dumps(_ws_record(id="p1")), bad if isinstance(bad, str) else json.dumps(bad)]
    lines.append(json.dumps(_ws_record(id="p3")))
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=expected) as info:
        load_problems(tmp_path, format="warmstart-jsonl")
    assert str(info.value).startswith(f"{path.resolve()}: line 2: ")
    result = load_problems(tmp_path, skip_bad=True)
    assert [p.id for p in result.problems] == ["p1", "p3"]
    assert result.skipped[0][0] == "test.jsonl line 2"


def test_write_problems_rejects_bad_split_and_meta(tmp_path: Path) -> None:
    p = sample_problems(tmp_path)[2]
    with pytest.raises(ValueError, match="plain file name"):
        write_problems([p], tmp_path / "w", "../escape")
    with pytest.raises(DataError, match="'f3'.*meta"):
        write_problems([dataclasses.replace(p, meta={"x": object()})], tmp_path / "w", "train")
    assert not (tmp_path / "w" / "train.jsonl").exists()

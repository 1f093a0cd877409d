"""``warmstart data inspect`` through the real command line, for every format."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from warmstart.cli import main
from warmstart.data.loaders import write_problems
from warmstart.data.prompts import INSTRUCTION

from .test_loaders import make_intergps, make_mathvista, make_table_parquet, sample_problems


@pytest.fixture(autouse=True)
def _data_synth_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """``warmstart data`` imports every sub-command; stand in for ``synth`` until it exists."""
    if importlib.util.find_spec("warmstart.data.synthetic") is None:
        stub = types.ModuleType("warmstart.data.synthetic")
        stub.add_arguments = lambda parser: None
        stub.run = lambda args: 0
        monkeypatch.setitem(sys.modules, "warmstart.data.synthetic", stub)


def inspect_json(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["data", "inspect", *args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def test_inspect_intergps_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_intergps(tmp_path / "g3k")
    summary = inspect_json(capsys, str(root))
    assert summary["format"] == "geometry3k-intergps"
    assert summary["n_problems"] == 4 and summary["n_with_images"] == 4
    assert summary["n_skipped"] == 0 and summary["skipped"] == []
    assert summary["answer_types"] == {"choice": 4}
    assert summary["splits"] == {"train": 2, "validation": 1, "test": 1}
    assert "Find x. Problem 0.\nA. 3\nB. 4" in summary["example_prompt"]
    assert inspect_json(capsys, str(root), "--split", "val")["n_problems"] == 1


def test_inspect_table_text_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = make_table_parquet(tmp_path / "table")
    assert main(["data", "inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "format:        geometry3k-table" in out
    assert "problems:      4" in out
    assert "answer types:  expression 1, float 1, integer 2" in out
    assert "splits:        train 3, test 1" in out
    assert "example prompt:\n" in out and INSTRUCTION in out


def test_inspect_mathvista_skip_bad(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = make_mathvista(tmp_path / "mv")
    (tmp_path / "mv" / "images" / "4.jpg").unlink()
    assert main(["data", "inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("error: ") and "pid 4" in err and "field 'image'" in err
    assert "\n" not in err and "Traceback" not in err

    summary = inspect_json(capsys, str(path), "--skip-bad", "--format", "mathvista")
    assert summary["n_problems"] == 4 and summary["n_skipped"] == 1
    assert summary["skipped"][0]["row"] == "testmini.json pid 4"
    assert "image file not found" in summary["skipped"][0]["reason"]
    assert summary["answer_types"] == {"choice": 1, "float": 1, "integer": 2}


def test_inspect_warmstart_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_problems(sample_problems(tmp_path), tmp_path / "world", "train")
    summary = inspect_json(capsys, str(tmp_path / "world"), "--split", "train")
    assert summary["format"] == "warmstart-jsonl"
    assert summary["n_problems"] == 3 and summary["n_with_images"] == 2
    assert summary["answer_types"] == {"choice": 1, "float": 1, "integer": 1}
    assert summary["example_prompt"].startswith("You solve")


def test_inspect_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    write_problems(sample_problems(tmp_path)[2:], tmp_path / "world", "train")
    assert main(["data", "inspect", str(tmp_path / "world"), "--split", "test"]) == 2
    assert "no split 'test'" in capsys.readouterr().err

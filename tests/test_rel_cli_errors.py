"""Bad input to a stage command: one line naming the file/row/key, exit 2; the traceback
only under ``--debug`` and always in the run's ``error.log``. Real subprocesses, real files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def _warmstart(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "warmstart.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _short(r: subprocess.CompletedProcess) -> list[str]:
    lines = r.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, r.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in r.stderr
    return lines


def test_unknown_config_key_is_one_line_naming_file_and_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('data = "x"\nbatch_sise = 8\n')
    out = tmp_path / "run"
    r = _warmstart("sft", "--config", str(cfg), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2
    first = _short(r)[0]
    assert "bad.toml" in first and "batch_sise" in first and "batch_size" in first
    log = (out / "error.log").read_text()
    assert "Traceback" in log and "ConfigError" in log and "batch_sise" in log

    r = _warmstart("--debug", "sft", "--config", str(cfg), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" in r.stderr and "batch_sise" in r.stderr.strip().splitlines()[-1]
    assert (out / "error.log").read_text().count("Traceback") == 2  # appended, not replaced


def test_bad_data_row_names_file_line_and_field(tmp_path, synth_dir):
    data = tmp_path / "world"
    shutil.copytree(synth_dir, data)
    with (data / "train.jsonl").open("a") as f:
        f.write('{"id": "x", "question": "What?"}\n')
    n = len((data / "train.jsonl").read_text().splitlines())
    cfg = tmp_path / "sft.toml"
    cfg.write_text(f'data = "{data}"\ninit = "{tmp_path / "no-model"}"\n')
    r = _warmstart("sft", "--config", str(cfg), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2
    first = _short(r)[0]
    assert "train.jsonl" in first and f"line {n}" in first and "answer" in first
    assert "DataError" in (tmp_path / "run" / "error.log").read_text()


def test_eval_of_a_missing_checkpoint_names_it(tmp_path, synth_dir):
    missing = tmp_path / "no-such-checkpoint"
    args = ["eval", "--model", str(missing), "--data", str(synth_dir), "--split", "validation"]
    r = _warmstart(*args, "--out", str(tmp_path / "e.json"), cwd=tmp_path)
    assert r.returncode == 2
    assert str(missing) in _short(r)[0]
    assert "Traceback" in (tmp_path / "e.json.error.log").read_text()

    r = _warmstart("--debug", *args, "--out", str(tmp_path / "e.json"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_set_through_a_value_is_a_config_error(tmp_path):
    """``--set a.b.c=1`` where ``a.b`` is a number: was a TypeError traceback."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[a]\nb = 1\n")
    r = _warmstart("sft", "--config", str(cfg), "--set", "a.b.c=1", cwd=tmp_path)
    assert r.returncode == 2 and "'b' is a value" in _short(r)[0]


def test_unreachable_teacher_is_one_line_naming_the_url(tmp_path, synth_dir, toy_dir):
    import socket

    with socket.socket() as s:  # a port on 127.0.0.1 that nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = tmp_path / "opd.toml"
    cfg.write_text(
        f'init = "{toy_dir}"\ndata = "{synth_dir}"\nteacher = "{url}"\n'
        "steps = 1\nprompts_per_step = 2\nn = 2\nmax_new_tokens = 8\nteacher_retries = 0\n"
    )
    r = _warmstart("opd", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert url in _short(r)[0]
    assert "TeacherError" in (tmp_path / "run" / "error.log").read_text()

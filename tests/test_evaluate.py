"""warmstart eval on the toy family: file schema, printed labels, resume after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from warmstart.cli import main
from warmstart.evaluate_schema import SCHEMA, read_eval


def test_eval_cli_writes_schema_and_labels_every_accuracy(toy_dir, synth_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(
        [
            "eval",
            "--model",
            str(toy_dir),
            "--data",
            str(synth_dir),
            "--split",
            "validation",
            "--n",
            "4",
            "--max-new-tokens",
            "12",
            "--limit",
            "6",
            "--bootstrap",
            "200",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "greedy accuracy [validation, temperature 0]" in text
    assert "sampled accuracy pass@1 [validation, temperature 1.0, n=4]" in text
    res = read_eval(out)
    assert res.schema == SCHEMA and res.data.split == "validation" and res.data.n_problems == 6
    assert all(len(p.samples) == 4 for p in res.per_problem)
    s = res.summary
    assert {
        "greedy_accuracy",
        "pass@1",
        "pass@2",
        "pass@4",
        "distinct_answers_mean",
        "answer_entropy_mean",
        "entropy_token_mean",
        "entropy_seq_mean",
        "response_length_mean",
        "format_rate",
    } <= set(s)
    assert s["entropy_token_mean"].value > 0  # an untrained model has high entropy
    assert 1.0 <= s["distinct_answers_mean"].value <= 4.0
    assert not (tmp_path / "eval.json.partial.jsonl").exists()


def test_eval_bad_data_is_a_clear_error(toy_dir, tmp_path, capsys):
    rc = main(
        ["eval", "--model", str(toy_dir), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "e.json")]
    )
    assert rc == 2
    assert "nope" in capsys.readouterr().err


SCRIPT = r"""
import sys, torch
torch.set_num_threads(1)
from warmstart.evaluate import evaluate_to_file
evaluate_to_file(model=sys.argv[1], data=sys.argv[2], split="validation", out=sys.argv[3], n=3, max_new_tokens=16,
                 limit=16, bootstrap=100, show_progress=False, chunk=2)
"""


def test_killed_eval_resumes_with_the_same_samples(toy_dir, synth_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full.json", tmp_path / "killed.json"
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(toy_dir), str(synth_dir), str(full)], env=env, check=True
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(toy_dir), str(synth_dir), str(killed)], env=env
    )
    partial = tmp_path / "killed.json.partial.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and len(partial.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "eval finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_done = len(partial.read_text().splitlines())
    assert 4 <= n_done < 16
    subprocess.run(
        [sys.executable, "-c", SCRIPT, str(toy_dir), str(synth_dir), str(killed)], env=env, check=True
    )
    a, b = json.loads(full.read_text()), json.loads(killed.read_text())
    assert a["per_problem"] == b["per_problem"] and a["summary"] == b["summary"]

"""warmstart eval on the toy family: file schema, printed labels, resume after a real kill."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from warmstart.cli import main
from warmstart.config import ConfigError, from_dict
from warmstart.evaluate import EvalSettings, evaluate_to_file
from warmstart.evaluate_schema import SCHEMA, read_eval
from warmstart.sampler import RolloutConfig


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
from warmstart.evaluate import EvalSettings, evaluate_to_file
settings = EvalSettings(n=3, max_new_tokens=16, limit=16, bootstrap=100)
evaluate_to_file(model=sys.argv[1], data=sys.argv[2], split="validation", out=sys.argv[3], settings=settings,
                 show_progress=False, chunk=2)
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


def test_eval_settings_is_one_validated_config():
    s = EvalSettings()
    assert (s.n, s.temperature, s.top_p, s.max_new_tokens, s.greedy, s.limit, s.bootstrap, s.seed) == (
        16,
        1.0,
        1.0,
        64,
        True,
        0,
        10_000,
        0,
    )
    assert s.blank_ablation and s.rollout == RolloutConfig()
    with pytest.raises(ConfigError, match="did you mean 'top_p'"):
        from_dict(EvalSettings, {"top_pp": 0.9})
    with pytest.raises(ConfigError, match="evaluates nothing"):
        from_dict(EvalSettings, {"n": 0, "greedy": False})
    with pytest.raises(ConfigError, match="max_batch_rows"):
        from_dict(EvalSettings, {"rollout": {"max_batch_rows": -1}})
    # the file records the decoding part only (schema warmstart.eval/v1 unchanged)
    rec = from_dict(EvalSettings, {"n": 4, "temperature": 0.7, "seed": 3, "limit": 5}).decoding()
    assert dataclasses.asdict(rec) == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 1.0,
        "max_new_tokens": 64,
        "seed": 3,
        "greedy": True,
    }


def test_eval_cli_rejects_settings_that_evaluate_nothing(tmp_path, capsys):
    rc = main(
        ["eval", "--model", "m", "--data", "d", "--n", "0", "--no-greedy", "--out", str(tmp_path / "e.json")]
    )
    assert rc == 2
    assert "n = 0 and greedy = false" in capsys.readouterr().err


def test_cli_flags_and_settings_object_give_the_same_file(toy_dir, synth_dir, tmp_path):
    flags = ["--n", "2", "--max-new-tokens", "8", "--limit", "3", "--bootstrap", "50", "--seed", "5"]
    flags += ["--temperature", "0.8", "--top-p", "0.9", "--no-greedy", "--quiet"]
    by_cli = tmp_path / "cli.json"
    common = ["--model", str(toy_dir), "--data", str(synth_dir), "--split", "ood"]
    assert main(["eval", *common, *flags, "--out", str(by_cli)]) == 0
    settings = EvalSettings(n=2, max_new_tokens=8, limit=3, bootstrap=50, seed=5, temperature=0.8, top_p=0.9)
    by_api = evaluate_to_file(
        model=str(toy_dir),
        data=str(synth_dir),
        split="ood",
        out=tmp_path / "api.json",
        settings=dataclasses.replace(settings, greedy=False),
        show_progress=False,
    )
    a, b = read_eval(by_cli), read_eval(tmp_path / "api.json")
    assert a.per_problem == b.per_problem and a.summary == b.summary and a.settings == b.settings
    assert by_api == {k: v.value for k, v in a.summary.items()}
    assert a.settings.greedy is False and all(p.greedy is None for p in a.per_problem)

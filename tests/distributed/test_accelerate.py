"""The shipped accelerate FSDP config starts 2 real processes here (CPU variant) and they shard.

``configs/accelerate/fsdp-2gpu.yaml`` with ``use_cpu: true`` (no GPU on this machine): a
real ``accelerate launch``, gloo process group, FSDP2 units, bf16 mixed precision and
activation checkpointing; and the stage refuses a strategy that contradicts the file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("accel_step.py")


def _launch(tmp_path, toy_dir, synth_dir, strategy: str) -> subprocess.CompletedProcess:
    text = (ROOT / "configs" / "accelerate" / "fsdp-2gpu.yaml").read_text()
    assert "use_cpu: false" in text
    cfg = tmp_path / "fsdp-2cpu.yaml"
    cfg.write_text(text.replace("use_cpu: false", "use_cpu: true"))
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(cfg), "--main_process_port", "0",
           str(SCRIPT), str(toy_dir), str(synth_dir), str(tmp_path / strategy), strategy]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_accelerate_fsdp_config_runs_two_sharded_processes(tmp_path, toy_dir, synth_dir):
    r = _launch(tmp_path, toy_dir, synth_dir, "fsdp")
    assert r.returncode == 0, r.stderr[-3000:]
    # the two ranks' lines may interleave on the shared stdout: pick the objects out
    rows = [json.loads(m) for m in re.findall(r"RESULT (\{[^}]*\})", r.stdout)]
    assert sorted(x["rank"] for x in rows) == [0, 1]
    assert all(x["world"] == 2 and x["sharded"] for x in rows)
    assert rows[0]["loss"] == rows[1]["loss"] > 0  # the all-reduced loss of the global batch


def test_accelerate_fsdp_config_refuses_a_ddp_stage(tmp_path, toy_dir, synth_dir):
    r = _launch(tmp_path, toy_dir, synth_dir, "ddp")
    assert r.returncode != 0
    assert (
        "accelerate was launched with an FSDP config but the stage's parallel.strategy is 'ddp'" in r.stderr
    )

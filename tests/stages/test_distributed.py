"""The shared training step gives the same update on 1 process and on 2 (gloo, CPU).

The two processes are started by torchrun; inside, ``accelerate.Accelerator`` sets up
the process group exactly as under ``accelerate launch --multi_gpu --num_processes N``
on GPUs. (``accelerate launch --cpu --num_processes 2`` in accelerate 1.15 starts a
single process unless an MPI launcher is configured, so it cannot serve this test.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_update.py")


def test_two_process_update_equals_single_process(toy_dir, synth_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(SCRIPT), str(toy_dir), str(synth_dir), str(tmp_path / "one.pt")],
        env=env,
        check=True,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(SCRIPT),
            str(toy_dir),
            str(synth_dir),
            str(tmp_path / "two.pt"),
        ],
        env=env,
        check=True,
        timeout=600,
    )
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["world"] == 1 and two["world"] == 2
    assert one["params"].keys() == two["params"].keys()
    # two micro-batches: 1 process sums them in order, 2 processes all-reduce the same two sums
    diffs = {n: (one["params"][n] - two["params"][n]).abs().max().item() for n in one["params"]}
    assert max(diffs.values()) == 0.0, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    for k in ("loss", "num_tokens", "entropy", "clip_frac"):
        assert one["stats"][k] == pytest.approx(two["stats"][k], rel=1e-6)
    assert one["stats"]["grad_norm"] == pytest.approx(two["stats"]["grad_norm"], rel=1e-6)

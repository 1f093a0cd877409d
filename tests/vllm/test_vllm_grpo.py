"""GRPO on the vLLM backend: a smoke run on the trained toy, its reward curve against the local backend's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from warmstart.config import from_dict
from warmstart.stages.grpo import GRPOConfig, train_grpo

from .conftest import VLLM_ROLLOUT

pytestmark = pytest.mark.vllm

STEPS, PROMPTS, N = 4, 4, 4


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_wilson_interval_against_hand_numbers():
    lo, hi = wilson_interval(5, 10)
    assert abs(lo - 0.2366) < 1e-4 and abs(hi - 0.7634) < 1e-4


def _run(trained_toy, synth_dir, out, rollout):
    cfg = from_dict(
        GRPOConfig,
        {
            "init": str(trained_toy),
            "data": str(synth_dir),
            "out_dir": str(out),
            "steps": STEPS,
            "prompts_per_step": PROMPTS,
            "n": N,
            "max_new_tokens": 32,
            "micro_batch": 16,
            "checkpoint_every": 1000,
            "optim": {"lr": 1e-3, "weight_decay": 0.0},
            "rollout": rollout,
        },
    )
    result = train_grpo(cfg, show_progress=False)
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return result, rows


def test_grpo_on_vllm_completes_and_its_rewards_are_within_noise_of_local(trained_toy, synth_dir, tmp_path):
    res_v, rows_v = _run(trained_toy, synth_dir, tmp_path / "vllm", VLLM_ROLLOUT)
    res_l, rows_l = _run(trained_toy, synth_dir, tmp_path / "local", {"backend": "local"})
    assert res_v["steps"] == STEPS and (Path(res_v["model"]) / "model.safetensors").exists()
    assert [r["step"] for r in rows_v] == list(range(1, STEPS + 1))
    assert all(not r.get("skipped") and math.isfinite(r["entropy"]) for r in rows_v)
    # Noise: each step's reward is the mean of PROMPTS x N binary rewards; pooled over the run,
    # each backend's mean must lie inside the other's 95% Wilson interval (samples treated as
    # independent, which groups of one prompt are not: a lenient test of a smoke run).
    total = STEPS * PROMPTS * N
    mean_v = sum(r["reward_mean"] for r in rows_v) / STEPS
    mean_l = sum(r["reward_mean"] for r in rows_l) / STEPS
    lo_v, hi_v = wilson_interval(mean_v * total, total)
    lo_l, hi_l = wilson_interval(mean_l * total, total)
    print(
        f"GRPO reward: vllm {[r['reward_mean'] for r in rows_v]} mean {mean_v:.3f} [{lo_v:.3f}, {hi_v:.3f}]; "
        f"local {[r['reward_mean'] for r in rows_l]} mean {mean_l:.3f} [{lo_l:.3f}, {hi_l:.3f}]"
    )
    assert 0 < mean_v and 0 < mean_l  # the trained toy earns rewards: the comparison means something
    assert lo_l <= mean_v <= hi_l and lo_v <= mean_l <= hi_v

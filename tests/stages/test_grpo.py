"""Stage-2 GRPO on the toy family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from warmstart.config import ConfigError, from_dict
from warmstart.data.loaders import load_problems
from warmstart.models import load_policy
from warmstart.rollout import SamplingParams
from warmstart.sampler import RolloutConfig, make_sampler
from warmstart.stages.grpo import GRPOConfig, combine_reward, train_grpo
from warmstart.train import LossConfig, OptimConfig, TrainBatch, Trainer

from .crash import run_full_then_killed_and_resumed


def _cfg(init, synth_dir, out, **over):
    base = {
        "init": str(init),
        "data": str(synth_dir),
        "out_dir": str(out),
        "steps": 2,
        "prompts_per_step": 4,
        "n": 4,
        "max_new_tokens": 12,
        "micro_batch": 16,
        "optim": {"lr": 1e-3, "weight_decay": 0.0},
    }
    return from_dict(GRPOConfig, {**base, **over})


def _weights(d):
    return load_file(str(Path(d) / "model.safetensors"))


def test_reward_combinations():
    assert combine_reward("accuracy", 1.0, 0.0) == 1.0
    assert combine_reward("accuracy*format", 1.0, 0.0) == 0.0
    assert combine_reward("0.9*accuracy+0.1*format", 1.0, 1.0) == pytest.approx(1.0)
    assert combine_reward("0.9*accuracy+0.1*format", 0.0, 1.0) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="accuracy"):
        from_dict(GRPOConfig, {"reward": "acc"})
    with pytest.raises(ConfigError, match="drgrpo"):
        from_dict(GRPOConfig, {"advantage": "ppo"})
    with pytest.raises(ConfigError, match="did you mean 'clip_high'"):
        from_dict(GRPOConfig, {"loss": {"clip_hig": 0.3}})


def test_one_update_changes_every_trainable_parameter(toy_dir, synth_dir):
    pol = load_policy(toy_dir, trainable=True)
    for p in pol.model.parameters():
        p.requires_grad_(True)
    probs = load_problems(synth_dir, split="train").problems[:4]
    sampler = make_sampler(RolloutConfig(), pol.model, pol.processor)
    ro = sampler.sample(probs, SamplingParams(n=4, max_new_tokens=8, seed=0))
    before = {n: p.detach().clone() for n, p in pol.model.named_parameters()}
    adv_BT = (
        torch.randn(ro.response_mask_BT.shape[0], 1, generator=torch.Generator().manual_seed(0))
        .expand(ro.response_mask_BT.shape)
        .contiguous()
    )
    st = Trainer(pol.model, OptimConfig(lr=1e-3), LossConfig(), total_steps=1).update(
        TrainBatch(ro, adv_BT), micro_batch=8
    )
    assert not st.skipped and st.grad_norm > 0
    unchanged = [n for n, p in pol.model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def test_all_equal_rewards_change_nothing(toy_dir, synth_dir, tmp_path):
    # an untrained toy never answers correctly: every group's rewards are all 0
    res = train_grpo(_cfg(toy_dir, synth_dir, tmp_path / "g"), show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    assert [r["frac_all_equal_groups"] for r in rows] == [1.0, 1.0]
    a, b = _weights(toy_dir), _weights(res["model"])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_grpo_raises_training_reward(trained_toy, synth_dir, tmp_path):
    # the same 8 prompts every step, so the per-step reward is comparable along the run
    from warmstart.data.loaders import write_problems

    write_problems(load_problems(synth_dir, split="train").problems[8:16], tmp_path / "tiny", "train")
    cfg = _cfg(
        trained_toy,
        tmp_path / "tiny",
        tmp_path / "rl",
        steps=24,
        prompts_per_step=8,
        n=8,
        max_new_tokens=40,
        micro_batch=32,
        optim={"lr": 3e-4},
    )
    train_grpo(cfg, show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    rew = [r["reward_mean"] for r in rows]
    assert len(rew) == 24
    for key in (
        "entropy",
        "neg_logp",
        "kl",
        "clip_frac",
        "response_len",
        "grad_norm",
        "frac_all_equal_groups",
        "step_time_s",
        "accuracy",
        "format_rate",
    ):
        assert key in rows[-1]
    # one sampled run: the mean of its last 8 steps against its first 4 (16 steps of 64
    # samples each were within 0.01 of the bar when float rounding moved the samples)
    assert sum(rew[-8:]) / 8 > sum(rew[:4]) / 4 + 0.08, rew


RESUME_SCRIPT = r"""
import sys, json, torch
torch.set_num_threads(1)
from warmstart.config import from_dict
from warmstart.stages.grpo import GRPOConfig, train_grpo
train_grpo(from_dict(GRPOConfig, json.loads(sys.argv[1])), resume=sys.argv[2] == "resume", show_progress=False)
"""


def test_kill_and_resume_gives_identical_weights(trained_toy, synth_dir, tmp_path):
    over = dict(steps=6, checkpoint_every=2, prompts_per_step=4, n=4, max_new_tokens=24, optim={"lr": 1e-3})
    full, killed = (
        _cfg(trained_toy, synth_dir, tmp_path / "full", **over),
        _cfg(trained_toy, synth_dir, tmp_path / "k", **over),
    )
    ckpts = tmp_path / "k" / "checkpoints"
    run_full_then_killed_and_resumed(
        RESUME_SCRIPT,
        full,
        killed,
        lambda: any((p / "trainer_state.pt").exists() for p in ckpts.glob("step_*")),
    )
    a, b = _weights(tmp_path / "full" / "final"), _weights(tmp_path / "k" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [
        json.loads(x)["step"] for x in (tmp_path / "k" / "metrics.jsonl").read_text().splitlines()
    ] == list(range(1, 7))

"""Stage-1 SFT on the toy family: loss falls, arm selection, over-training length, kill-and-resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from warmstart.config import from_dict
from warmstart.stages.common import batch_indices
from warmstart.stages.sft import SFTConfig, train_sft

from .crash import run_full_then_killed_and_resumed


def _cfg(toy_dir, synth_dir, out, **over):
    base = {
        "init": str(toy_dir),
        "data": str(synth_dir),
        "out_dir": str(out),
        "batch_size": 8,
        "micro_batch": 4,
        "max_steps": 12,
        "eval_every": 3,
        "patience": 2,
        "val_problems": 8,
        "max_new_tokens": 12,
        "checkpoint_every": 100,
        "optim": {"lr": 3e-3},
    }
    return from_dict(SFTConfig, {**base, **over})


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _weights(model_dir):
    return load_file(str(Path(model_dir) / "model.safetensors"))


def test_batch_indices_cover_each_epoch_once():
    seen = [i for s in range(5) for i in batch_indices(10, 4, s, seed=3)]  # 20 items = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert batch_indices(10, 4, 2, seed=3) == batch_indices(10, 4, 2, seed=3)
    assert batch_indices(10, 4, 0, seed=3) != batch_indices(10, 4, 0, seed=4)


def test_sft_loss_falls_and_early_arm_keeps_best(toy_dir, synth_dir, tmp_path):
    res = train_sft(
        _cfg(toy_dir, synth_dir, tmp_path / "early", max_steps=12, patience=100), show_progress=False
    )
    rows = _metrics(tmp_path / "early")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3  # training loss falls
    vals = [r for r in rows if "val_accuracy" in r]
    assert [r["step"] for r in vals] == [0, 3, 6, 9, 12]
    assert vals[-1]["val_loss"] < vals[0]["val_loss"]  # held-out rationale NLL falls too
    # best = highest accuracy, ties broken by lower validation loss (the first such step)
    best = vals[0]
    for r in vals[1:]:
        if r["val_accuracy"] > best["val_accuracy"] or (
            r["val_accuracy"] == best["val_accuracy"] and r["val_loss"] < best["val_loss"]
        ):
            best = r
    assert res["best_step"] == best["step"]
    assert res["best_val_loss"] == best["val_loss"]
    assert (tmp_path / "early" / "best" / "model.safetensors").exists()


def test_early_stop_and_over_multiple(toy_dir, synth_dir, tmp_path):
    # lr 0 after step 0: validation never improves, so early stopping triggers after `patience` evals
    cfg = dict(max_steps=40, eval_every=2, patience=2, optim={"lr": 1e-12})
    early = train_sft(_cfg(toy_dir, synth_dir, tmp_path / "e", arm="early", **cfg), show_progress=False)
    # ties at equal accuracy are broken by validation loss, which moves by float noise only at lr 1e-12
    vals = [r for r in _metrics(tmp_path / "e") if "val_accuracy" in r]
    assert early["steps"] == vals[-1]["step"] < 40
    assert early["steps"] - early["best_step"] == 2 * 2  # patience evals x eval_every after the best
    over = train_sft(
        _cfg(toy_dir, synth_dir, tmp_path / "o", arm="over", over_multiple=3.0, **cfg), show_progress=False
    )
    assert over["best_step"] == early["best_step"]
    assert over["steps"] == max(early["steps"], round(3.0 * max(early["best_step"], 1)))
    # the over run's best/ is the early arm's checkpoint, bit for bit
    a, b = _weights(tmp_path / "e" / "best"), _weights(tmp_path / "o" / "best")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _assert_unfinished(run_dir):
    assert not (run_dir / "final").exists(), "the killed run must not have finished"


RESUME_SCRIPT = r"""
import sys, json, torch
torch.set_num_threads(1)
from warmstart.config import from_dict
from warmstart.stages.sft import SFTConfig, train_sft
cfg = from_dict(SFTConfig, json.loads(sys.argv[1]))
train_sft(cfg, resume=sys.argv[2] == "resume", show_progress=False)
"""


def test_kill_and_resume_gives_identical_weights(toy_dir, synth_dir, tmp_path):
    common = {
        "max_steps": 10,
        "eval_every": 5,
        "patience": 100,
        "checkpoint_every": 2,
        "arm": "over",
        "over_multiple": 1.0,
    }
    full = _cfg(toy_dir, synth_dir, tmp_path / "full", **common)
    killed = _cfg(toy_dir, synth_dir, tmp_path / "killed", **common)
    ckpts = tmp_path / "killed" / "checkpoints"
    # kill once a checkpoint at step >= 4 exists
    run_full_then_killed_and_resumed(
        RESUME_SCRIPT,
        full,
        killed,
        lambda: any(
            (p / "trainer_state.pt").exists() and int(p.name.split("_")[1]) >= 4 for p in ckpts.glob("step_*")
        ),
        after_kill=lambda: _assert_unfinished(tmp_path / "killed"),
    )
    a, b = _weights(tmp_path / "full" / "final"), _weights(tmp_path / "killed" / "final")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in _metrics(tmp_path / "killed") if "loss" in r]
    assert steps == list(range(1, 11))  # no step lost or logged twice


def test_families_filter_restricts_training_items(toy_dir, synth_dir, tmp_path):
    res = train_sft(
        _cfg(toy_dir, synth_dir, tmp_path / "f", max_steps=1, eval_every=1, families=["polygon_perimeter"]),
        show_progress=False,
    )
    from warmstart.data.loaders import load_problems

    n = sum(p.meta["family"] == "polygon_perimeter" for p in load_problems(synth_dir, split="train").problems)
    assert res["n_train_items"] == n > 0

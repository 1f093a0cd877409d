"""The per-GPU memory plan: hand-computed numbers, the toy's real parameter count, the dry run's refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from warmstart.memory_plan import KNOWN_SHAPES, GiB, ModelShape, TrainSetup, lora_params, plan_memory

ROOT = Path(__file__).resolve().parents[1]
QWEN7B = KNOWN_SHAPES["Qwen/Qwen2.5-VL-7B-Instruct"]


def test_parameter_count_equals_the_real_toy_model(toy_dir):
    from transformers import Qwen2_5_VLForConditionalGeneration

    shape = ModelShape.from_hf_config(json.loads((Path(toy_dir) / "config.json").read_text()))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(toy_dir)
    assert shape.num_params == sum(p.numel() for p in model.parameters())
    assert shape.vision_params == sum(p.numel() for p in model.model.visual.parameters())
    assert shape.vision_block_params == sum(p.numel() for p in model.model.visual.blocks[0].parameters())


def test_qwen25_vl_7b_has_its_published_8_29b_parameters():
    assert QWEN7B.num_params == 8_292_166_656
    assert QWEN7B.largest_unit == 152064 * 3584  # the LM head / embedding
    assert QWEN7B.kv_bytes_per_token(2) == 28 * 2 * 4 * 128 * 2


def test_state_bytes_by_hand():
    """7B-class P params, fsdp over 8: fp32 master 4P/8, grads 4P/8, Adam 8P/8; ddp: unsharded."""
    P = QWEN7B.num_params
    fsdp = plan_memory(QWEN7B, TrainSetup("t", "fsdp", 8, bf16=True, micro_batch=1, seq_len=1024))
    assert fsdp.items["master weights"] == 4 * P / 8
    assert fsdp.items["gradients"] == 4 * P / 8
    assert fsdp.items["optimizer"] == 8 * P / 8
    assert fsdp.items["compute copy"] == 2 * 2 * 152064 * 3584
    ddp = plan_memory(QWEN7B, TrainSetup("t", "ddp", 8, bf16=True, micro_batch=1, seq_len=1024))
    assert ddp.items["master weights"] == 4 * P and ddp.items["optimizer"] == 8 * P
    assert ddp.items["compute copy"] == 2 * P  # autocast's bf16 weight cache
    # 16 bytes/param of training state: 123.6 GiB on one GPU, a sixth of it on six
    assert (4 + 4 + 8) * P / GiB == pytest.approx(123.57, abs=0.01)


def test_activations_by_hand():
    """One toy-sized layer: per token 8H + 4I values; checkpointing keeps H per layer plus one layer."""
    shape = ModelShape(vocab=10, hidden=4, layers=3, intermediate=8, heads=2, kv_heads=1, head_dim=2)
    s = TrainSetup("t", "ddp", 1, bf16=False, micro_batch=2, seq_len=5, chunk=3)
    tokens = 10
    per_layer = tokens * (8 * 4 + 4 * 8) * 4  # 2560 bytes
    head = 2 * 3 * 10 * 4 + tokens * 4 * 4  # chunk buffers + saved hidden
    assert plan_memory(shape, s).items["activations"] == 3 * per_layer + head
    ac = TrainSetup(
        "t", "ddp", 1, bf16=False, micro_batch=2, seq_len=5, chunk=3, activation_checkpointing=True
    )
    assert plan_memory(shape, ac).items["activations"] == 3 * tokens * 4 * 4 + per_layer + head


def test_rollout_kv_cache_and_lora_by_hand():
    s = TrainSetup("t", "fsdp", 6, bf16=True, micro_batch=1, seq_len=4096, rollout_rows=64, rollout_len=4096)
    plan = plan_memory(QWEN7B, s)
    assert plan.items["rollout KV cache"] == 64 * 4096 * 28 * 2 * 4 * 128 * 2  # 14 GiB
    assert plan.items["rollout KV cache"] / GiB == 14.0
    assert plan.items["rollout weights"] == 2 * 2 * QWEN7B.num_params  # gathered + packed copy
    # LoRA r=16 on q and v: r * (in + out) per layer
    assert lora_params(QWEN7B, 16, ("q_proj", "v_proj")) == 28 * 16 * ((3584 + 3584) + (3584 + 512))
    lora = plan_memory(QWEN7B, TrainSetup("t", "ddp", 1, micro_batch=1, seq_len=1024, lora_params=1000))
    assert lora.items["optimizer"] == 8 * 1000 and lora.items["gradients"] == 4 * 1000


def _dry_run(tmp_path, extra: str) -> subprocess.CompletedProcess:
    text = (ROOT / "configs" / "paper-qwen2.5-vl-7b.toml").read_text() + extra
    cfg = tmp_path / "paper.toml"
    cfg.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "warmstart.cli", "run", "--dry-run", "--config", str(cfg), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_paper_config_plan_fits_8_gpus_of_48_gb(tmp_path):
    r = _dry_run(tmp_path, "")
    assert r.returncode == 1, r.stderr  # data, weights, server and GPUs are missing here; the plan fits
    assert "teacher GPUs: 0,1" in r.stdout and "student GPUs: 2,3,4,5,6,7" in r.stdout
    assert "is read by stage1:sft_over, stage1:opd" in r.stdout  # SFT needs the teacher server too
    assert "DOES NOT FIT" not in r.stdout
    totals = [line for line in r.stdout.splitlines() if "total per GPU" in line]
    assert len(totals) == 3 and all("fits in 45 GiB" in t for t in totals), totals


def test_a_plan_that_does_not_fit_is_refused_in_one_line(tmp_path):
    # the in-process engine instead of vLLM: its weight copies do not fit beside training
    text = (
        (ROOT / "configs" / "paper-qwen2.5-vl-7b.toml")
        .read_text()
        .replace('backend = "vllm"', 'backend = "local"')
    )
    cfg = tmp_path / "local.toml"
    cfg.write_text(text)
    r = subprocess.run(
        [sys.executable, "-m", "warmstart.cli", "run", "--dry-run", "--config", str(cfg), "--out", str(tmp_path / "r")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: memory plan does not fit: stage1 sft needs")
    assert "rollout KV cache" in r.stdout and "DOES NOT FIT" in r.stdout

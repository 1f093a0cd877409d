"""Mixed precision, LoRA, activation checkpointing and device checks on one process (CPU)."""

from __future__ import annotations

import pytest
import torch

from warmstart import distributed
from warmstart.config import ConfigError, from_dict
from warmstart.distributed import ParallelConfig
from warmstart.models.load import LoraSpec
from warmstart.train import LossConfig, OptimConfig, RunDir, TrainBatch, Trainer, open_training


def _batch(policy, synth_dir, rows=(0, 6)):
    from warmstart.data.loaders import load_problems
    from warmstart.stages.common import teacher_forced

    probs = load_problems(synth_dir, split="train").problems[rows[0] : rows[1]]
    return TrainBatch.supervised(teacher_forced(probs, [p.rationale for p in probs], policy.processor))


def _snapshot(model):
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def _changed_fraction(before, model):
    after = {n: p.detach().float() for n, p in model.named_parameters() if n in before}
    moved = sum(int((after[n] != before[n]).sum()) for n in before)
    return moved / sum(t.numel() for t in before.values())


def test_bf16_mixed_precision_keeps_fp32_master_weights_and_learns(toy_dir, synth_dir, tmp_path):
    """At lr 1e-6 fp32 master weights move; pure bf16 weights (the old behaviour) mostly cannot."""
    from warmstart.models import load_policy

    loss = LossConfig(policy_loss="vanilla_pg")
    optim = OptimConfig(lr=1e-6, dtype="bfloat16")
    policy, trainer, _ = open_training(RunDir(tmp_path / "mp", "sft", tensorboard=False), str(toy_dir),
                                       False, optim, loss, 3)  # fmt: skip
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())
    assert distributed.compute_dtype(policy.model) == torch.bfloat16
    batch = _batch(policy, synth_dir)
    before = _snapshot(policy.model)
    for _ in range(3):
        trainer.update(batch, micro_batch=6)
    mixed = _changed_fraction(before, policy.model)

    pure = load_policy(toy_dir, dtype="bfloat16", trainable=True)
    for p in pure.model.parameters():
        p.requires_grad_(True)
    pure_trainer = Trainer(pure.model, OptimConfig(lr=1e-6), loss, 3)
    before = _snapshot(pure.model)
    for _ in range(3):
        pure_trainer.update(batch, micro_batch=6)
    pure_frac = _changed_fraction(before, pure.model)
    assert mixed > 0.5, mixed
    assert pure_frac < 0.2 * mixed, (pure_frac, mixed)


def test_bf16_autocast_scores_close_to_fp32(toy_dir, synth_dir):
    from warmstart.models import load_policy
    from warmstart.scoring import score_rollouts

    policy = load_policy(toy_dir)
    ro = _batch(policy, synth_dir).rollouts
    fp32 = score_rollouts(policy.model, ro).logp_BT
    distributed.set_compute_dtype(policy.model, torch.bfloat16)
    bf16 = score_rollouts(policy.model, ro).logp_BT
    distributed.set_compute_dtype(policy.model, None)
    mask = ro.response_mask_BT
    err = (fp32 - bf16)[mask].abs().max().item()
    assert 0 < err < 0.1, err  # bf16 compute really ran (not bit-equal), and stays close


def test_activation_checkpointing_gives_the_same_update(toy_dir, synth_dir, tmp_path):
    loss = LossConfig(policy_loss="vanilla_pg")
    stats, params = [], []
    for ac in (False, True):
        policy, trainer, _ = open_training(
            RunDir(tmp_path / f"ac{ac}", "sft", tensorboard=False), str(toy_dir), False,
            OptimConfig(lr=1e-3), loss, 1, parallel=ParallelConfig(activation_checkpointing=ac),
        )  # fmt: skip
        assert policy.model.is_activation_checkpointing == ac
        stats.append(trainer.update(_batch(policy, synth_dir), micro_batch=3))
        params.append(_snapshot(policy.model))
    assert stats[0].pg_loss == pytest.approx(stats[1].pg_loss, rel=1e-6)
    assert stats[0].grad_norm == pytest.approx(stats[1].grad_norm, rel=1e-5)
    assert max((params[0][n] - params[1][n]).abs().max().item() for n in params[0]) < 1e-6


def test_lora_trains_adapters_only_and_saves_a_plain_merged_checkpoint(toy_dir, synth_dir, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from warmstart.train import load_resume_state

    run = RunDir(tmp_path / "lora", "sft", tensorboard=False)
    spec = LoraSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj"))
    policy, trainer, _ = open_training(run, str(toy_dir), False, OptimConfig(lr=1e-2),
                                       LossConfig(policy_loss="vanilla_pg"), 4,
                                       parallel=ParallelConfig(lora=spec))  # fmt: skip
    trainable = [n for n, p in policy.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if not p.requires_grad}
    batch = _batch(policy, synth_dir)
    losses = [trainer.update(batch, micro_batch=6).pg_loss for _ in range(2)]
    assert losses[1] < losses[0]
    assert all(torch.equal(p, base_before[n]) for n, p in policy.model.named_parameters() if n in base_before)
    ckpt = run.save_checkpoint(trainer, policy.processor)
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt).eval()
    ids = torch.tensor([[7, 8, 9, 10, 11, 12]])
    policy.model.eval()
    with torch.no_grad():
        a, b = plain(input_ids=ids).logits, policy.model(input_ids=ids).logits
    assert (a - b).abs().max().item() < 1e-5
    # resume: init + the saved adapters give the same function and the next update agrees
    state = load_resume_state(ckpt)
    from warmstart.models.load import unwrap_model

    inner_trainable = [n for n, p in unwrap_model(policy.model).named_parameters() if p.requires_grad]
    assert set(state["lora"]) == set(inner_trainable)
    third = trainer.update(batch, micro_batch=6).pg_loss
    policy2, trainer2, _ = open_training(run, str(toy_dir), True, OptimConfig(lr=1e-2),
                                         LossConfig(policy_loss="vanilla_pg"), 4,
                                         parallel=ParallelConfig(lora=spec))  # fmt: skip
    assert trainer2.step == 2
    assert trainer2.update(batch, micro_batch=6).pg_loss == pytest.approx(third, rel=1e-6)


def test_parallel_config_is_validated():
    with pytest.raises(ConfigError, match="'cpu', 'cuda' or 'cuda:N'"):
        from_dict(ParallelConfig, {"device": "gpu"})
    with pytest.raises(ConfigError, match="lora with strategy 'fsdp'"):
        from_dict(ParallelConfig, {"strategy": "fsdp", "lora": {"r": 4}})
    with pytest.raises(ConfigError, match="did you mean 'strategy'"):
        from_dict(ParallelConfig, {"strategy_": "fsdp"})
    assert from_dict(ParallelConfig, {"device": "cuda:1"}).device == "cuda:1"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(ConfigError, match="no GPU is visible"):
        distributed.resolve_device("cuda")
    assert distributed.resolve_device("cpu") == torch.device("cpu")


def test_launcher_config_must_agree(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(ConfigError, match="parallel.strategy = 'fsdp'"):
        distributed.check_launch_env(ParallelConfig(), "float32")
    distributed.check_launch_env(ParallelConfig(strategy="fsdp"), "float32")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match="optim.dtype"):
        distributed.check_launch_env(ParallelConfig(strategy="fsdp"), "float32")
    distributed.check_launch_env(ParallelConfig(strategy="fsdp"), "bfloat16")


def test_full_weights_is_a_no_op_unsharded(toy_dir):
    from warmstart.models import load_policy

    model = load_policy(toy_dir).model
    w = model.lm_head.weight
    with distributed.full_weights(model) as m:
        assert m is model and model.lm_head.weight is w
    assert not distributed.is_sharded(model)


def test_missing_local_checkpoint_is_one_line(tmp_path):
    from warmstart.models import load_policy

    with pytest.raises(ConfigError, match=r"model checkpoint .*nope does not exist") as e:
        load_policy(tmp_path / "nope")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no config.json"):
        load_policy(tmp_path)

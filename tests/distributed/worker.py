"""Three SFT updates then three GRPO steps on the toy, under one process or under torchrun.

Usage: python worker.py MODEL_DIR DATA_DIR OUT_DIR MODE

MODE: ``ddp`` or ``fsdp``, optionally with ``-bf16`` (mixed precision, fp32 master weights)
and ``-ac`` (activation checkpointing), e.g. ``fsdp-bf16-ac``.

Every process runs the same loop on the same data and seeds (as the stages do). With
STRATEGY ``fsdp`` the policy and the GRPO reference are sharded with FSDP2; the local
engine samples inside ``full_weights``. Rank 0 writes ``OUT_DIR/result.json`` (the losses,
the first rollout's tokens) and ``OUT_DIR/gathered.pt`` (the full state dict gathered
from the shards); ``OUT_DIR/final`` is the ``save_pretrained`` checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)


def main() -> None:
    from warmstart import distributed, losses
    from warmstart.data.loaders import load_problems
    from warmstart.engine import sample
    from warmstart.rollout import SamplingParams
    from warmstart.scoring import score_rollouts
    from warmstart.stages.common import load_frozen, teacher_forced
    from warmstart.train import LossConfig, OptimConfig, RunDir, TrainBatch, open_training

    model_dir, data_dir, out_dir, mode = sys.argv[1:5]
    out = Path(out_dir)
    strategy, *flags = mode.split("-")
    parallel = distributed.ParallelConfig(strategy=strategy, activation_checkpointing="ac" in flags)
    dtype = "bfloat16" if "bf16" in flags else "float32"
    problems = load_problems(data_dir, split="train").problems

    # --- SFT: teacher-forced rationales, vanilla policy gradient = token-mean NLL ---------------
    sft_run = RunDir(out / "sft", "sft", tensorboard=False)
    sft_loss = LossConfig(policy_loss="vanilla_pg")
    policy, trainer, _ = open_training(
        sft_run, model_dir, False, OptimConfig(lr=3e-3, dtype=dtype), sft_loss, 3, parallel=parallel
    )
    sft = []
    for step in range(3):
        chunk = problems[step * 6 : step * 6 + 6]
        tf = teacher_forced(chunk, [p.rationale for p in chunk], policy.processor)
        # 6 rows in micro-batches of 2: rank 0 takes two, rank 1 one (and a zero-loss pass)
        st = trainer.update(TrainBatch.supervised(tf), micro_batch=2)
        sft.append({"loss": st.pg_loss, "grad_norm": st.grad_norm, "entropy": st.entropy})
    sft_run.save_checkpoint(trainer, policy.processor)

    # --- GRPO: sample, group advantages, PPO-clip + k3 KL to a frozen (sharded) reference --------
    grpo_run = RunDir(out / "grpo", "grpo", tensorboard=False)
    grpo_loss = LossConfig(policy_loss="ppo_clip", kl_coef=0.1, kl_estimator="k3")
    policy, trainer, _ = open_training(
        grpo_run,
        str(out / "sft" / "checkpoints" / "step_000003"),
        False,
        OptimConfig(lr=3e-3, dtype=dtype),
        grpo_loss,
        6,
        parallel=parallel,
    )
    ref = load_frozen(model_dir, parallel)
    grpo, first_tokens = [], None
    for step in range(3):
        chunk = problems[20 + 3 * step : 23 + 3 * step]
        params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=100 + step)
        with distributed.full_weights(policy.model):
            ro = sample(policy.model, policy.processor, chunk, params)
        if first_tokens is None:
            first_tokens = ro.response_ids_BT.tolist()
        # a deterministic reward of the tokens (parity of their id sum) so that groups differ
        rewards_GN = ((ro.response_ids_BT * ro.response_mask_BT).sum(1) % 2).float().view(-1, 2)
        adv_B = losses.grpo_advantages(rewards_GN).reshape(-1)
        batch = TrainBatch(
            ro,
            adv_B[:, None].expand_as(ro.response_mask_BT).float(),
            old_logp_BT=ro.logp_BT,
            ref_logp_BT=score_rollouts(ref.model, ro, with_entropy=False).logp_BT,
        )
        for _epoch in range(2):  # the second pass sees ratios != 1
            st = trainer.update(batch, micro_batch=2, with_entropy=False)
            grpo.append({"loss": st.loss, "kl": st.kl, "grad_norm": st.grad_norm, "clip_frac": st.clip_frac})
    grpo_run.save_checkpoint(trainer, policy.processor)
    grpo_run.save_model(policy, "final")
    gathered = distributed.full_state_dict(policy.model)  # every rank: a collective
    if distributed.rank() == 0:
        torch.save(gathered, out / "gathered.pt")
        (out / "result.json").write_text(
            json.dumps(
                {
                    "world": distributed.world_size(),
                    "sft": sft,
                    "grpo": grpo,
                    "first_tokens": first_tokens,
                    "master_dtypes": sorted({str(p.dtype) for p in policy.model.parameters()}),
                    "checkpointing": policy.model.is_activation_checkpointing,
                }
            )
        )


if __name__ == "__main__":
    main()

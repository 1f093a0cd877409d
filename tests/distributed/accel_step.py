"""One sharded SFT update under ``accelerate launch``; prints one JSON line per rank.

Usage: python accel_step.py MODEL_DIR DATA_DIR OUT_DIR STRATEGY
"""

import json
import os
import sys

import torch

torch.set_num_threads(1)


def main() -> None:
    from warmstart.data.loaders import load_problems
    from warmstart.distributed import ParallelConfig, is_sharded, world_size
    from warmstart.stages.common import teacher_forced
    from warmstart.train import LossConfig, OptimConfig, RunDir, TrainBatch, open_training

    model_dir, data_dir, out_dir, strategy = sys.argv[1:5]
    run = RunDir(out_dir, "sft", tensorboard=False)
    parallel = ParallelConfig(strategy=strategy, activation_checkpointing=True)
    optim = OptimConfig(lr=1e-3, dtype="bfloat16")
    policy, trainer, _ = open_training(run, model_dir, False, optim, LossConfig(policy_loss="vanilla_pg"), 1,
                                       parallel=parallel)  # fmt: skip
    probs = load_problems(data_dir, split="train").problems[:4]
    tf = teacher_forced(probs, [p.rationale for p in probs], policy.processor)
    st = trainer.update(TrainBatch.supervised(tf), micro_batch=2)
    row = {"rank": int(os.environ["RANK"]), "world": world_size(), "sharded": is_sharded(policy.model)}
    print("RESULT " + json.dumps({**row, "loss": st.pg_loss}), flush=True)


if __name__ == "__main__":
    main()

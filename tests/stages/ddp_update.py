"""One Trainer.update on a fixed global batch; run plainly or under ``accelerate launch``.

Usage: python ddp_update.py MODEL_DIR DATA_DIR OUT.pt
Rank 0 saves the updated parameters to OUT.pt.
"""

import sys

import torch

torch.set_num_threads(1)


def main() -> None:
    from accelerate import Accelerator

    from warmstart.data.loaders import load_problems
    from warmstart.models import load_policy
    from warmstart.stages.common import teacher_forced
    from warmstart.train import LossConfig, OptimConfig, TrainBatch, Trainer

    model_dir, data_dir, out = sys.argv[1:4]
    acc = Accelerator(cpu=True)
    pol = load_policy(model_dir, trainable=True)
    for p in pol.model.parameters():
        p.requires_grad_(True)
    probs = load_problems(data_dir, split="train").problems[:8]
    tf = teacher_forced(probs, [p.rationale for p in probs], pol.processor)
    # per-row advantages of both signs so the update is not plain SFT
    adv_BT = torch.linspace(-1, 1, 8)[:, None].expand(tf.response_mask_BT.shape).contiguous()
    trainer = Trainer(
        pol.model,
        OptimConfig(lr=1e-3, grad_clip=1.0),
        LossConfig(),
        total_steps=1,
        accelerator=acc if acc.num_processes > 1 else None,
    )
    # 2 micro-batches: one per rank
    stats = trainer.update(TrainBatch(tf, adv_BT), micro_batch=4, with_entropy=True)
    if acc.process_index == 0:
        torch.save(
            {
                "params": {n: p.detach().clone() for n, p in pol.model.named_parameters()},
                "stats": stats.as_dict(),
                "world": acc.num_processes,
            },
            out,
        )


if __name__ == "__main__":
    main()

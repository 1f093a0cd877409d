"""Stage 0 (embedded default only): train a toy student or teacher from scratch.

The toy models must learn the synthetic world for real (read the diagram, do the
arithmetic, keep the format), so this is plain teacher-forced training on the
worked rationales of the training split, starting from a freshly built toy
Qwen2.5-VL. It reuses the SFT loop (same loss path, checkpoints and resume) with
no early stopping: a fixed number of steps, and a tokenizer trained on the
training texts.

How strong each model gets is set by its size and its number of steps; the study
config picks them so that the teacher is clearly stronger than the base student
and the base student is weak but not hopeless (see configs/toy.toml).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from warmstart.config import ConfigError, from_dict, to_dict
from warmstart.sampler import RolloutConfig
from warmstart.stages.common import add_config_arguments, config_from_args, load_split
from warmstart.train import OptimConfig, require_set


@dataclass(frozen=True)
class PretrainConfig:
    """Stage-0 pretraining of a toy model.

    Attributes:
        data: the synthetic world (a warmstart-jsonl directory); must be set when the stage runs.
        out_dir: run directory; the trained model ends up in ``<out_dir>/final``.
        size: toy size name (``xs``, ``s``, ``m``; see ``warmstart.models.toy.SIZES``).
        init_seed: seed of the random initialisation.
        families: train only on these problem families (``meta["family"]``; empty: all).
        vocab_size: target vocabulary of the toy tokenizer (trained on the training texts).
        image_size: image side in pixels (multiple of 28).
        steps: optimizer steps.
        batch_size: problems per step.
        micro_batch: rows per forward/backward.
        eval_every: greedy validation every N steps (logged; no early stopping).
        val_problems: validation problems used (first N).
        max_new_tokens: generation length for validation.
        max_bad_steps: abort (``TrainingDiverged``) after this many skipped updates in a row
            (non-finite loss or gradient; each is logged with ``skipped: true`` and ``loss: null``).
            Exploded weights (parameter norm above ``train.EXPLODED_NORM_FACTOR`` x its start)
            abort at once. 0 never aborts on skipped updates.
        seed: seed of data order.
        optim: optimizer and schedule.
        rollout: the sampler of greedy validation (passed to the SFT loop).
    """

    data: str = ""
    out_dir: str = "runs/pretrain"
    size: str = "s"
    init_seed: int = 0
    families: tuple[str, ...] = ()
    vocab_size: int = 768
    image_size: int = 56
    steps: int = 600
    batch_size: int = 32
    micro_batch: int = 32
    eval_every: int = 100
    val_problems: int = 100
    max_new_tokens: int = 48
    max_bad_steps: int = 5
    seed: int = 0
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=2e-3, warmup_steps=20, schedule="cosine", vision_lr_mult=3.0, grad_clip=1.0
        )
    )
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def validate(self) -> None:
        from warmstart.models.toy import SIZES

        if self.size not in SIZES:
            raise ConfigError(f"size {self.size!r} is not one of {sorted(SIZES)}")


def pretrain(cfg: PretrainConfig, resume: bool = False, show_progress: bool = True) -> dict:
    """Build the toy model and train it; returns the SFT result dict (model in ``final``)."""
    from warmstart.models.toy import is_complete_toy, save_toy
    from warmstart.stages.sft import SFTConfig, train_sft

    require_set(cfg, "pretrain", "data")
    out = Path(cfg.out_dir)
    init = out / "init"
    # save_toy writes atomically with a marker last, so a kill mid-write leaves no (or an
    # incomplete, pre-atomic) init/: rebuild it then (deterministic given the seed and data)
    if not is_complete_toy(init):
        from warmstart.data import prompts

        train = load_split(cfg.data, "train")
        # the tokenizer learns the words of the prompts and rationales it will see
        texts = (
            [prompts.SYSTEM_PROMPT]
            + [prompts.user_text(p) for p in train]
            + [p.rationale for p in train if p.rationale]
        )
        save_toy(
            init,
            cfg.size,
            seed=cfg.init_seed,
            image_size=cfg.image_size,
            corpus=texts,
            vocab_size=cfg.vocab_size,
        )
    sft = from_dict(
        SFTConfig,
        {
            "init": str(init),
            "data": cfg.data,
            "out_dir": str(out),
            "arm": "over",
            "max_steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "micro_batch": cfg.micro_batch,
            "eval_every": cfg.eval_every,
            "patience": 10**9,
            "val_problems": cfg.val_problems,
            "max_new_tokens": cfg.max_new_tokens,
            "checkpoint_every": max(cfg.eval_every, 50),
            "seed": cfg.seed,
            "max_bad_steps": cfg.max_bad_steps,
            "optim": to_dict(cfg.optim),
            "rollout": to_dict(cfg.rollout),
            "over_multiple": 1.0,
            "families": list(cfg.families),
        },
    )
    return train_sft(sft, resume=resume, show_progress=show_progress, stage="pretrain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(PretrainConfig, args)
    print(json.dumps(pretrain(cfg, resume=args.resume, show_progress=not args.quiet), indent=2))
    return 0

"""Stage 0 (embedded default only): train a toy student or teacher from scratch.

The toy models must learn the synthetic world for real (read the diagram, do the
arithmetic, keep the format), so this is plain teacher-forced training on the
worked rationales of the training split, starting from a freshly built toy
Qwen2.5-VL. It reuses the SFT loop (same loss path, checkpoints and resume) with
no early stopping: a fixed number of steps, and a tokenizer trained on the
training texts.

How strong each model gets is set by its size and its number of steps, or by a stop
rule on the model alone (``stop_split``): training ends at the first validation where
every family's pass@k on that split reaches ``stop_min_pass``, the weakest model that
has every skill (the base student of configs/toy.toml). The study then checks that the
teacher is clearly stronger on every family (:mod:`warmstart.study.stage0`).
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
        steps: optimizer steps (with a stop rule: the most it may take).
        batch_size: problems per step.
        micro_batch: rows per forward/backward.
        eval_every: greedy validation every N steps (logged), and the stop rule's checks.
        val_problems: validation problems used (first N).
        max_new_tokens: generation length for validation.
        max_bad_steps: abort (``TrainingDiverged``) after this many skipped updates in a row
            (non-finite loss or gradient; each is logged with ``skipped: true`` and ``loss: null``).
            Exploded weights (parameter norm above ``train.EXPLODED_NORM_FACTOR`` x its start)
            abort at once. 0 never aborts on skipped updates.
        stop_split: split of the stop rule, e.g. ``"test"`` (never the reported split); empty:
            no stop rule, train ``steps`` steps.
        stop_problems: problems of ``stop_split`` the rule samples (first N; 0 = all).
        stop_k: samples per problem of the rule's pass@k (temperature 1).
        stop_min_pass: stop at the first validation where every family's pass@k is at least this.
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
    stop_split: str = ""
    stop_problems: int = 0
    stop_k: int = 8
    stop_min_pass: float = 0.3
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
        if self.stop_k < 1 or not 0.0 < self.stop_min_pass <= 1.0 or self.stop_problems < 0:
            raise ConfigError("stop_k must be >= 1, stop_min_pass in (0, 1] and stop_problems >= 0")


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
    return train_sft(
        sft, resume=resume, show_progress=show_progress, stage="pretrain", stop_rule=stop_rule(cfg)
    )


def stop_rule(cfg: PretrainConfig):
    """The stop rule of ``cfg`` as ``train_sft``'s ``stop_rule`` callback, or ``None`` without one.

    At each validation: pass@``stop_k`` per family on ``stop_split`` (the trained families
    only); ``stop`` when every family reaches ``stop_min_pass``.
    """
    if not cfg.stop_split:
        return None
    from warmstart.stages.common import family_pass_at_k

    problems = load_split(cfg.data, cfg.stop_split, cfg.stop_problems or None)
    if cfg.families:
        problems = [p for p in problems if p.meta.get("family") in cfg.families]
    if not problems:
        raise ConfigError(f"pretrain: stop_split {cfg.stop_split!r} of {cfg.data} has no problem to check")
    rule = f"first validation with every family's pass@{cfg.stop_k} >= {cfg.stop_min_pass} on split {cfg.stop_split}"

    def check(sampler, step: int) -> dict:
        per = family_pass_at_k(sampler, problems, cfg.stop_k, cfg.max_new_tokens, seed=cfg.seed + step)
        return {
            "stop": all(v >= cfg.stop_min_pass for v in per.values()),
            "rule": rule,
            "k": cfg.stop_k,
            "step": step,
            "per_family_pass_at_k": per,
        }

    return check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(PretrainConfig, args)
    print(json.dumps(pretrain(cfg, resume=args.resume, show_progress=not args.quiet), indent=2))
    return 0

"""Our GRPO and SFT steps against TRL's ``GRPOTrainer`` / ``SFTTrainer`` on the same toy Qwen2.5-VL.

Prints one JSON object: seconds per step of each side (median of the timed steps) and
``ratio`` = ours / TRL (targets: GRPO <= 0.5, SFT <= 0.7, issue 15).

Same for both sides: the toy checkpoint (one ``save_toy``, reloaded fresh for every block
of steps), the synthetic problems and their prompts (``warmstart.data.prompts``: TRL gets
the same chat messages and images), group size, prompts per step, response length, the
loss (PPO clip 0.2, token-mean aggregation = TRL's ``dapo``, group-std advantages, no KL,
one update per batch), AdamW with the same learning rate, betas, weight decay and
gradient clip, the reward (``warmstart.grading.grade``), the suppressed tokens (vision
special tokens and pad), sampling at temperature 1 without top-k/top-p, fp32, and the
torch thread count. SFT: the same problems and reference rationales, completion-only
loss, the same batch size (no truncation: TRL's ``max_length`` is set above the longest
row).

Interleaved: ``--rounds`` rounds, each running a block of ``--steps`` steps of TRL, then
of ours (GRPO), then the same for SFT. The first step of each block is a warm-up and not
timed. TRL's step time is the wall time between consecutive ``on_step_end`` callbacks
(generation, rewards, forward, backward and optimizer all happen in between); ours is
the stage's own ``step_time_s`` (rollout + grading + scoring + update).

TRL is a benchmark extra, not a dependency: ``pip install -e '.[bench]'``.

    python benchmarks/vs_trl.py [--size xs] [--prompts 8] [--n 8] [--max-new-tokens 64]
        [--rounds 3] [--steps 4] [--threads 1] [--sft-batch 16] [--only grpo|sft]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def _problems(root: Path, n_train: int):
    from warmstart.data.loaders import load_problems
    from warmstart.data.synthetic import SynthConfig, generate

    generate(SynthConfig(seed=0, n_train=n_train, n_validation=8, n_test=8, n_ood=8), root / "data")
    return load_problems(root / "data", split="train").problems


def _trl_step_times(trainer) -> list[float]:
    """Run ``trainer.train()``; the wall seconds of each step after the first."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its end-of-training dict would land on stdout
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    trainer.add_callback(StepClock())
    trainer.train()
    return [b - a for a, b in zip(ends, ends[1:])]


def _common_trl_args(out: Path, steps: int, lr: float) -> dict:
    return dict(
        output_dir=str(out),
        max_steps=steps,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        gradient_accumulation_steps=1,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )


# ---------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------


def trl_grpo_block(toy: Path, problems, args, out: Path) -> tuple[list[float], float]:
    """A fresh TRL GRPOTrainer on the toy: seconds of its timed steps, mean completion length."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from warmstart.data.prompts import build_messages
    from warmstart.grading import grade
    from warmstart.models import load_policy
    from warmstart.rollout import suppressed_token_ids

    policy = load_policy(toy, trainable=True)
    by_id = {p.id: p for p in problems}
    rows = [{"prompt": build_messages(p), "images": list(p.load_images()), "pid": p.id} for p in problems]
    dataset = Dataset.from_list(rows)
    lengths: list[int] = []

    def accuracy(completions, pid, completion_ids=None, **_):
        if completion_ids is not None:
            lengths.extend(len(c) for c in completion_ids)
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(grade(t, by_id[i]).correct) for t, i in zip(texts, pid)]

    rows_per_step = args.prompts * args.n
    cfg = GRPOConfig(
        **_common_trl_args(out, args.steps, args.lr),
        per_device_train_batch_size=rows_per_step,
        generation_batch_size=rows_per_step,
        num_generations=args.n,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        disable_dropout=True,
        log_completions=False,
        remove_unused_columns=False,
        # the sampler's suppressed ids (vision special tokens + pad), as ours suppresses
        generation_kwargs={"suppress_tokens": suppressed_token_ids(policy.model, policy.processor.tokenizer)},
    )
    trainer = GRPOTrainer(
        model=policy.model,
        reward_funcs=accuracy,
        args=cfg,
        train_dataset=dataset,
        processing_class=policy.processor,
    )
    times = _trl_step_times(trainer)
    return times, (sum(lengths) / len(lengths) if lengths else float("nan"))


def ours_grpo_block(toy: Path, data: Path, args, out: Path) -> tuple[list[float], float, dict]:
    """Our GRPO stage for ``--steps`` steps: seconds of its timed steps, mean response length, split."""
    from warmstart.config import from_dict
    from warmstart.stages.grpo import GRPOConfig, train_grpo

    cfg = from_dict(
        GRPOConfig,
        {
            "init": str(toy),
            "data": str(data),
            "out_dir": str(out),
            "steps": args.steps,
            "prompts_per_step": args.prompts,
            "n": args.n,
            "temperature": 1.0,
            "top_p": 1.0,
            "max_new_tokens": args.max_new_tokens,
            "micro_batch": args.prompts * args.n,
            "mini_batches": 1,
            "update_epochs": 1,
            "reward": "accuracy",
            "advantage": "grpo",
            "checkpoint_every": 10**6,
            "loss": {"policy_loss": "ppo_clip", "agg": "token-mean", "clip_low": 0.2, "clip_high": 0.2},
            "optim": {"lr": args.lr, "grad_clip": 1.0, "weight_decay": 0.0},
        },
    )
    train_grpo(cfg, show_progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][1:]
    split = {
        k: statistics.median(r[k] for r in rows)
        for k in ("rollout_time_s", "scoring_time_s", "update_time_s")
    }
    return [r["step_time_s"] for r in rows], statistics.mean(r["response_len"] for r in rows), split


# ---------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------


def trl_sft_block(toy: Path, problems, args, out: Path) -> list[float]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from warmstart.data.prompts import build_messages
    from warmstart.models import load_policy

    policy = load_policy(toy, trainable=True)
    rows = [
        {
            "prompt": build_messages(p),
            "completion": [{"role": "assistant", "content": [{"type": "text", "text": p.rationale}]}],
            "images": list(p.load_images()),
        }
        for p in problems
        if p.rationale
    ]
    cfg = SFTConfig(
        **_common_trl_args(out, args.steps, args.lr),
        per_device_train_batch_size=args.sft_batch,
        max_length=args.sft_max_length,
        completion_only_loss=True,
        packing=False,
        padding_free=False,
        remove_unused_columns=False,
    )
    trainer = SFTTrainer(
        model=policy.model,
        args=cfg,
        train_dataset=Dataset.from_list(rows),
        processing_class=policy.processor,
    )
    return _trl_step_times(trainer)


def ours_sft_block(toy: Path, data: Path, args, out: Path) -> list[float]:
    from warmstart.config import from_dict
    from warmstart.stages.sft import SFTConfig, train_sft

    cfg = from_dict(
        SFTConfig,
        {
            "init": str(toy),
            "data": str(data),
            "out_dir": str(out),
            "arm": "early",
            "max_steps": args.steps,
            "batch_size": args.sft_batch,
            "micro_batch": args.sft_batch,
            # no validation inside the timed steps (the stage validates the init before step 1)
            "eval_every": 10**6,
            "patience": 10**6,
            "val_problems": 1,
            "max_new_tokens": 4,
            "checkpoint_every": 10**6,
            "optim": {"lr": args.lr, "grad_clip": 1.0, "weight_decay": 0.0},
        },
    )
    train_sft(cfg, show_progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] >= 1][1:]
    return [r["step_time_s"] for r in steps]


def _summary(ours: list[float], trl: list[float], target: float) -> dict:
    med_ours, med_trl = statistics.median(ours), statistics.median(trl)
    return {
        "ours_s_per_step": round(med_ours, 4),
        "trl_s_per_step": round(med_trl, 4),
        "ratio": round(med_ours / med_trl, 3),
        "ratio_of_best": round(min(ours) / min(trl), 3),
        "target_ratio": target,
        "meets_target": med_ours / med_trl <= target,
        "timed_steps": {"ours": len(ours), "trl": len(trl)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="xs")
    ap.add_argument("--prompts", type=int, default=8, help="GRPO prompts per step")
    ap.add_argument("--n", type=int, default=8, help="GRPO group size")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sft-batch", type=int, default=16)
    ap.add_argument(
        "--sft-max-length", type=int, default=1024, help="TRL max_length (above every row: no truncation)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="steps per block (the first is not timed)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--only", choices=["grpo", "sft"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.disable(logging.WARNING)
    import transformers
    import trl

    from warmstart.data import prompts
    from warmstart.models.toy import save_toy

    transformers.logging.set_verbosity_error()
    result: dict = {
        "size": args.size,
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "rounds": args.rounds,
        "steps_per_block": args.steps,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        problems = _problems(root, n_train=256)
        corpus = (
            [prompts.SYSTEM_PROMPT]
            + [prompts.user_text(p) for p in problems]
            + [p.rationale for p in problems]
        )
        toy = save_toy(root / "toy", args.size, seed=0, corpus=corpus, vocab_size=768)
        data = root / "data"
        if args.only in (None, "grpo"):
            ours, trl_t, ours_len, trl_len, splits = [], [], [], [], []
            for r in range(args.rounds):
                t, length = trl_grpo_block(toy, problems, args, root / f"trl_grpo{r}")
                trl_t += t
                trl_len.append(length)
                t, length, split = ours_grpo_block(toy, data, args, root / f"ours_grpo{r}")
                ours += t
                ours_len.append(length)
                splits.append(split)
                print(f"[vs_trl] grpo round {r}: trl {trl_t[-len(t) :]} ours {t}", file=sys.stderr)
            result["grpo"] = {
                "prompts": args.prompts,
                "n": args.n,
                "completions_per_step": args.prompts * args.n,
                "max_new_tokens": args.max_new_tokens,
                **_summary(ours, trl_t, 0.5),
                "mean_completion_len": {
                    "ours": round(statistics.mean(ours_len), 1),
                    "trl": round(statistics.mean(trl_len), 1),
                },
                "ours_split_s": {k: round(statistics.median(s[k] for s in splits), 4) for k in splits[0]},
            }
        if args.only in (None, "sft"):
            ours, trl_t = [], []
            for r in range(args.rounds):
                trl_t += trl_sft_block(toy, problems, args, root / f"trl_sft{r}")
                ours += ours_sft_block(toy, data, args, root / f"ours_sft{r}")
            result["sft"] = {"batch": args.sft_batch, **_summary(ours, trl_t, 0.7)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

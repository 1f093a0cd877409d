"""GRPO step time split into rollout / scoring / update, on the toy model.

Prints one JSON object. Fixed batch: --prompts prompts x --n samples, --max-new-tokens
response tokens (an untrained toy rarely stops early, so responses run to the limit),
one KL term (so the frozen reference is scored) and two mini-batches (so the old
log-probs are scored). Medians over the timed steps after --warmup steps.

    python benchmarks/grpo_step.py [--size xs] [--prompts 16] [--n 8] [--max-new-tokens 48] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="xs")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from warmstart.config import from_dict
    from warmstart.data import prompts
    from warmstart.data.loaders import load_problems
    from warmstart.data.synthetic import SynthConfig, generate
    from warmstart.models.toy import save_toy
    from warmstart.stages.grpo import GRPOConfig, train_grpo

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(SynthConfig(seed=0, n_train=256, n_validation=8, n_test=8, n_ood=8), tmp / "data")
        train = load_problems(tmp / "data", split="train").problems
        corpus = [prompts.user_text(p) for p in train] + [p.rationale for p in train]
        save_toy(tmp / "toy", args.size, seed=0, corpus=corpus, vocab_size=768)
        cfg = from_dict(
            GRPOConfig,
            {
                "init": str(tmp / "toy"),
                "data": str(tmp / "data"),
                "out_dir": str(tmp / "run"),
                "steps": args.warmup + args.steps,
                "prompts_per_step": args.prompts,
                "n": args.n,
                "max_new_tokens": args.max_new_tokens,
                "micro_batch": 64,
                "mini_batches": 2,
                "reward": "accuracy",
                "loss": {"kl_coef": 0.01, "kl_estimator": "k3"},
                "optim": {"lr": 1e-5},
            },
        )
        train_grpo(cfg, show_progress=False)
        rows = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()][
            args.warmup :
        ]
    med = {
        k: statistics.median(r[k] for r in rows)
        for k in ("rollout_time_s", "scoring_time_s", "update_time_s", "step_time_s", "response_len")
    }
    print(
        json.dumps(
            {
                "size": args.size,
                "prompts": args.prompts,
                "n": args.n,
                "rows": args.prompts * args.n,
                "max_new_tokens": args.max_new_tokens,
                "threads": args.threads,
                "timed_steps": len(rows),
                "mini_batches": 2,
                "kl_coef": 0.01,
                **{k: round(v, 4) for k, v in med.items()},
                "response_tokens_per_s_rollout": round(
                    med["response_len"] * args.prompts * args.n / med["rollout_time_s"], 1
                ),
            }
        )
    )


if __name__ == "__main__":
    main()

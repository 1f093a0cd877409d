"""Rollout throughput: the vLLM backend vs the in-process engine, same toy, same batch.

Prints one JSON object. Both samplers are built by ``make_sampler`` as the stages build
them, on the same toy Qwen2.5-VL and the same prompts, and decode ``--batch`` rows
(``--batch / --n`` prompts x ``--n`` samples) of exactly ``--new-tokens`` tokens
(``ignore_eos``) at temperature 1. They are timed alternately, after a warm-up of
each; medians of ``--repeats``:

* ``local_tok_s``: :class:`~warmstart.sampler.LocalSampler` (its log-probs and entropy
  come out of the decode itself);
* ``vllm_tok_s``: :class:`~warmstart.vllm_engine.VLLMSampler`, the whole ``sample()``:
  the HTTP request, vLLM's generation in its own process, and our scoring pass for the
  contract's log-probs and entropy; ``vllm_generate_tok_s`` counts the request alone;
* ``ratio`` = vllm_tok_s / local_tok_s (> 1: vLLM faster);
* ``sync_s``: one weight sync (state dict -> safetensors file -> vLLM ``load_weights``),
  median of ``--repeats``, with its parts; ``start_s``: the server's start (checkpoint
  write + engine load).

tok/s counts response tokens (rows x new tokens), prefill included. On a CPU at toy
size the in-process engine may well win: vLLM's CPU build pays per-step scheduling and
HTTP costs that a 0.6M-parameter model never amortises; the figure is for the record,
not a claim about GPUs.

Usage::

    python benchmarks/vllm_rollout.py --size xs --batch 16 --n 4 --new-tokens 32 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from rollout import make_problems  # benchmarks/rollout.py (same prompts as the engine benchmark)

from warmstart.models import load_policy
from warmstart.models.toy import save_toy
from warmstart.rollout import SamplingParams, encode_prompts
from warmstart.sampler import RolloutConfig, make_sampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="xs")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", help="vLLM dtype")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        policy = load_policy(save_toy(f"{tmp}/toy", args.size, seed=0), trainable=True)
        batch = encode_prompts(make_problems(args.batch // args.n), policy.processor)
        params = SamplingParams(n=args.n, max_new_tokens=args.new_tokens, ignore_eos=True, seed=0)
        local = make_sampler(RolloutConfig(), policy.model, policy.processor)
        t0 = time.perf_counter()
        vllm = make_sampler(
            RolloutConfig(
                backend="vllm",
                vllm_dtype=args.dtype,
                vllm_max_model_len=1024,
                vllm_engine_args=("--enforce-eager",),
            ),
            policy.model,
            policy.processor,
        )
        start_s = time.perf_counter() - t0
        try:
            local.sample(batch, params)  # warm-up of both
            vllm.sample(batch, params)
            times: dict[str, list[float]] = {"local": [], "vllm": [], "vllm_generate": [], "vllm_score": []}
            for _ in range(args.repeats):
                t = time.perf_counter()
                ro_l = local.sample(batch, params)
                times["local"].append(time.perf_counter() - t)
                t = time.perf_counter()
                ro_v = vllm.sample(batch, params)
                times["vllm"].append(time.perf_counter() - t)
                times["vllm_generate"].append(vllm.last_timings["generate_s"])
                times["vllm_score"].append(vllm.last_timings["score_s"])
            syncs = []
            for _ in range(args.repeats):
                vllm.sync_weights(policy.model)
                syncs.append(vllm.push_weights())
        finally:
            vllm.close()
    tokens = int(ro_l.response_mask_BT.sum())
    assert tokens == int(ro_v.response_mask_BT.sum()) == args.batch * args.new_tokens
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in policy.model.parameters())
    out = {
        "size": args.size,
        "params": n_params,
        "batch": args.batch,
        "n": args.n,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "vllm_dtype": args.dtype,
        "local_tok_s": tokens / med["local"],
        "vllm_tok_s": tokens / med["vllm"],
        "vllm_generate_tok_s": tokens / med["vllm_generate"],
        "vllm_score_s": med["vllm_score"],
        "ratio": med["local"] / med["vllm"],
        "times_s": times,
        "start_s": start_s,
        "sync_s": statistics.median(s["total_s"] for s in syncs),
        "sync_parts_s": {k: statistics.median(s[k] for s in syncs) for k in syncs[0] if k != "bytes"},
        "sync_bytes": syncs[0]["bytes"],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

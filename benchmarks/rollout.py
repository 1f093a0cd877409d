"""Rollout throughput: a :class:`warmstart.sampler.Sampler` vs transformers ``generate`` on a toy Qwen2.5-VL.

Prints one JSON object. Every variant decodes ``--batch`` rows of exactly
``--new-tokens`` tokens (ours with ``ignore_eos``; ``generate`` with
``min_new_tokens``) from the same prompts (built by ``warmstart.data.prompts``):

* ``ours_tok_s`` / ``generate_tok_s`` / ``ratio``: sampling at temperature 1, top_p 1
  (``generate`` also gets ``top_k=0``, which 5.x otherwise leaves unset, BASELINES),
  ``--batch / --n`` prompts x ``--n`` samples each (``generate``: ``num_return_sequences``);
* ``n1_*``: the same with ``--batch`` distinct prompts, one sample each;
* ``greedy_*``: greedy, ``--batch`` distinct prompts (``generate`` refuses
  ``num_return_sequences > 1`` without sampling).

Each pair is timed alternately, after a warm-up of both, and the medians of
``--repeats`` are compared (``ratio``; ``ratio_of_best`` compares the fastest runs):
absolute numbers move with the machine's load (other jobs share the cores), the
ratio of two figures measured side by side much less. With 2 threads and a busy
machine, a run can stall for seconds waiting for a thread that is descheduled
(either engine); ``--threads 1`` gives steadier figures there.
``tok/s`` counts response tokens (rows x new tokens), prefill included in the time.
"ours" is the sampler ``--backend`` names, built by ``make_sampler`` as the stages build it.

Usage::

    python benchmarks/rollout.py --size s --batch 64 --n 4 --new-tokens 64 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from PIL import Image

from warmstart.data.schema import Problem
from warmstart.models import load_policy
from warmstart.models.toy import save_toy
from warmstart.rollout import PromptBatch, SamplingParams, encode_prompts
from warmstart.sampler import SAMPLERS, RolloutConfig, make_sampler


def make_problems(n_prompts: int) -> list[Problem]:
    """Problems with a coloured 56 px image each and questions of slightly different lengths."""
    shapes = ["triangle", "square", "pentagon", "hexagon"]
    out = []
    for i in range(n_prompts):
        image = Image.new("RGB", (56, 56), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
        question = f"The {shapes[i % 4]} in the image has side length {3 + i % 9}. Find its perimeter."
        out.append(Problem(id=str(i), question=question, images=(image,), answer="0", answer_type="integer"))
    return out


def timed_pair(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run of each function, run alternately after one warm-up run each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="s", help="toy size: xs | s | m")
    parser.add_argument("--batch", type=int, default=64, help="rows (samples) decoded together")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt in the main variant")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each engine (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--backend", default="local", choices=sorted(SAMPLERS), help="rollout.backend")
    args = parser.parse_args()
    if args.batch % args.n:
        parser.error("--batch must be a multiple of --n")
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        policy = load_policy(save_toy(tmp, args.size, seed=0))
    model, processor = policy.model, policy.processor
    sampler = make_sampler(RolloutConfig(backend=args.backend), model, processor)
    new = args.new_tokens

    def engines(batch: PromptBatch, n: int, greedy: bool) -> dict[str, Callable[[], object]]:
        params = SamplingParams(n=n, max_new_tokens=new, greedy=greedy, ignore_eos=True, seed=1)
        mode = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        inputs = dict(
            input_ids=batch.input_ids_QP,
            attention_mask=batch.attention_mask_QP,
            mm_token_type_ids=batch.mm_token_type_ids_QP,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw_I3,
        )
        return {
            "ours": lambda: sampler.sample(batch, params),
            "generate": lambda: model.generate(
                **inputs, max_new_tokens=new, min_new_tokens=new, num_return_sequences=n, **mode
            ),
        }

    grouped = encode_prompts(make_problems(args.batch // args.n), processor)
    distinct = encode_prompts(make_problems(args.batch), processor)
    result: dict = {
        "size": args.size,
        "backend": args.backend,
        "batch": args.batch,
        "n": args.n,
        "prompts": args.batch // args.n,
        "prompt_len": int(grouped.input_ids_QP.shape[1]),
        "new_tokens": new,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
    }
    tokens = args.batch * new
    for prefix, batch, n, greedy in (
        ("", grouped, args.n, False),
        ("n1_", distinct, 1, False),
        ("greedy_", distinct, 1, True),
    ):
        times = timed_pair(engines(batch, n, greedy), args.repeats)
        med = {name: statistics.median(t) for name, t in times.items()}
        result[f"{prefix}ours_tok_s"] = round(tokens / med["ours"], 1)
        result[f"{prefix}generate_tok_s"] = round(tokens / med["generate"], 1)
        result[f"{prefix}ratio"] = round(med["generate"] / med["ours"], 3)
        # Fastest run against fastest run: less sensitive to a stall from another job.
        result[f"{prefix}ratio_of_best"] = round(min(times["generate"]) / min(times["ours"]), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""``warmstart eval``: evaluate one model on one split -> ``eval.json``.

For every problem: one greedy response (temperature 0) and ``n`` samples at the
given temperature, each graded, with its length and the full-vocabulary entropy of
the model's sampling distribution at each of its tokens (the rollout engine computes
it while sampling; at temperature 1 it is the policy entropy of DESIGN.md). The file
format and the summary (pass@k, diversity, entropy, bootstrap intervals) are defined
in :mod:`warmstart.evaluate_schema`.

Resumable: finished problems are appended to ``<out>.partial.jsonl`` chunk by chunk;
a killed eval continues with the problems not yet done, and the partial file is
removed once ``eval.json`` is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from warmstart.evaluate_schema import (
    EvalSettings,
    GreedyResult,
    ModelInfo,
    ProblemResult,
    SampleResult,
    build_eval,
    write_eval,
)


def _entropy_stats(entropy_T: torch.Tensor, n_tokens: int) -> tuple[float, float]:
    s = float(entropy_T[:n_tokens].sum()) if n_tokens else 0.0
    return (s / n_tokens if n_tokens else 0.0), s


@torch.no_grad()
def evaluate_problems(
    model,
    processor,
    problems,
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    greedy: bool,
    seed: int,
    chunk: int = 32,
    on_chunk=None,
    skip_ids=frozenset(),
) -> list[ProblemResult]:
    """Greedy + sampled responses for ``problems``, graded; ``on_chunk(rows)`` after each chunk."""
    from warmstart.grading import grade, normalize_answer
    from warmstart.rollout import SamplingParams, sample

    out: list[ProblemResult] = []
    model.eval()
    # Chunks are fixed slices of the full list and each is seeded by its start, and
    # finished chunks are written whole: a resumed eval draws exactly the same samples.
    for s in range(0, len(problems), chunk):
        probs = [p for p in problems[s : s + chunk] if p.id not in skip_ids]
        if not probs:
            continue
        g_ro = (
            sample(model, processor, probs, SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens))
            if greedy
            else None
        )
        s_ro = (
            sample(
                model,
                processor,
                probs,
                SamplingParams(
                    n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + s
                ),
            )
            if n
            else None
        )
        rows = []
        for q, p in enumerate(probs):
            gr = None
            if g_ro is not None:
                L = int(g_ro.response_mask_BT[q].sum())
                g = grade(g_ro.texts_B[q], p)
                gr = GreedyResult(
                    text=g_ro.texts_B[q],
                    extracted=g.extracted,
                    correct=g.correct,
                    format_ok=g.format_ok,
                    length=L,
                    entropy_mean=_entropy_stats(g_ro.entropy_BT[q], L)[0],
                )
            samples = []
            for j in range(n):
                b = q * n + j
                L = int(s_ro.response_mask_BT[b].sum())
                g = grade(s_ro.texts_B[b], p)
                mean, tot = _entropy_stats(s_ro.entropy_BT[b], L)
                samples.append(
                    SampleResult(
                        extracted=g.extracted,
                        normalized=normalize_answer(g.extracted, p),
                        correct=g.correct,
                        format_ok=g.format_ok,
                        length=L,
                        entropy_mean=mean,
                        entropy_sum=tot,
                    )
                )
            rows.append(ProblemResult(id=p.id, answer=p.answer, greedy=gr, samples=samples))
        out.extend(rows)
        if on_chunk is not None:
            on_chunk(rows)
    return out


def _row_from_json(d: dict) -> ProblemResult:
    return ProblemResult(
        id=d["id"],
        answer=d["answer"],
        greedy=GreedyResult(**d["greedy"]) if d["greedy"] else None,
        samples=[SampleResult(**x) for x in d["samples"]],
    )


def evaluate_to_file(
    *,
    model: str,
    data: str,
    out: str | Path,
    split: str | None = None,
    model_name: str | None = None,
    n: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    greedy: bool = True,
    limit: int | None = None,
    bootstrap: int = 10_000,
    seed: int = 0,
    show_progress: bool = True,
    device: str = "cpu",
    chunk: int = 32,
    blank_images: bool = False,
) -> dict:
    """Evaluate checkpoint ``model`` on ``data``/``split`` and write ``out`` (resumable).

    ``blank_images`` replaces every image by a plain white one of the same size: the
    text-only ablation that shows how much of the accuracy comes from reading the diagram.
    """
    from warmstart.data.loaders import load_problems
    from warmstart.models import load_policy
    from warmstart.stages.common import progress

    out = Path(out)
    problems = load_problems(data, split=split).problems
    if limit:
        problems = problems[:limit]
    if blank_images:
        problems = [blank_problem(p) for p in problems]
    partial = out.with_name(out.name + ".partial.jsonl")
    done: dict[str, ProblemResult] = {}
    if partial.exists():  # resume: keep finished problems (a torn last line is dropped)
        for ln in partial.read_text().splitlines():
            try:
                r = _row_from_json(json.loads(ln))
                done[r.id] = r
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    policy = load_policy(model, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        progress(
            f"eval {model_name or Path(model).name} [{split}]", len(problems), len(done), show_progress
        ) as bar,
        open(partial, "a") as f,
    ):

        def on_chunk(rows):
            for r in rows:
                f.write(json.dumps(dataclasses.asdict(r)) + "\n")
                done[r.id] = r
            f.flush()
            bar(len(rows))

        evaluate_problems(
            policy.model,
            policy.processor,
            problems,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            seed=seed,
            on_chunk=on_chunk,
            skip_ids=frozenset(done),
            chunk=chunk,
        )
    result = build_eval(
        model=ModelInfo(name=model_name or Path(model).name, path=str(model)),
        data_path=str(data),
        split=split or "all",
        settings=EvalSettings(
            n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, greedy=greedy
        ),
        per_problem=[done[p.id] for p in problems],
        B=bootstrap,
        seed=seed,
    )
    write_eval(out, result)
    partial.unlink(missing_ok=True)
    return {k: v.value for k, v in result.summary.items()}


def blank_problem(problem):
    """The problem with each image replaced by a white image of the same size."""
    from PIL import Image

    blanks = tuple(Image.new("RGB", im.size, (255, 255, 255)) for im in problem.load_images())
    return dataclasses.replace(problem, images=blanks)


def describe(summary: dict, split: str, n: int, temperature: float) -> str:
    """Accuracy lines that say their split, greedy or sampled, temperature and n."""
    lines = []
    if "greedy_accuracy" in summary:
        lines.append(f"greedy accuracy [{split}, temperature 0]: {summary['greedy_accuracy']:.3f}")
    if "pass@1" in summary:
        lines.append(
            f"sampled accuracy pass@1 [{split}, temperature {temperature}, n={n}]: {summary['pass@1']:.3f}"
        )
    if f"pass@{n}" in summary and n > 1:
        lines.append(f"pass@{n} [{split}, temperature {temperature}, n={n}]: {summary[f'pass@{n}']:.3f}")
    if "entropy_token_mean" in summary:
        lines.append(
            f"policy entropy [{split}, temperature {temperature}]: {summary['entropy_token_mean']:.4f} nats/token"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--data", required=True, help="problem file/folder (any format load_problems reads)")
    parser.add_argument("--split", default=None, help="split inside --data (e.g. validation, ood, testmini)")
    parser.add_argument(
        "--out", default="eval.json", help="output eval.json (resumes from <out>.partial.jsonl)"
    )
    parser.add_argument(
        "--name", default=None, help="model name stored in the file (default: the folder name)"
    )
    parser.add_argument("--n", type=int, default=16, help="samples per problem (default 16)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus for the samples (default 1.0)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="max response tokens (default 64)")
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy response")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument(
        "--blank-images",
        action="store_true",
        help="text-only ablation: replace every image by a white one of the same size",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from warmstart.data.loaders import DataError

    try:
        summary = evaluate_to_file(
            model=args.model,
            data=args.data,
            out=args.out,
            split=args.split,
            model_name=args.name,
            n=args.n,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            greedy=not args.no_greedy,
            limit=args.limit,
            bootstrap=args.bootstrap,
            seed=args.seed,
            show_progress=not args.quiet,
            device=args.device,
            blank_images=args.blank_images,
        )
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(describe(summary, args.split or "all", args.n, args.temperature))
    print(f"wrote {args.out}")
    return 0

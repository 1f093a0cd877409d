"""``warmstart eval``: evaluate one model on one split -> ``eval.json``.

For every problem: one greedy response (temperature 0) and ``n`` samples at the
given temperature, each graded, with its length and the full-vocabulary entropy of
the model's sampling distribution at each of its tokens (the rollout engine computes
it while sampling; at temperature 1 it is the policy entropy of DESIGN.md). The file
format and the summary (pass@k, diversity, entropy, bootstrap intervals) are defined
in :mod:`warmstart.evaluate_schema`.

How a model is evaluated is one frozen config, :class:`EvalSettings` (the CLI flags
and the study's ``[eval]`` table build the same object); the part of it an eval file
records is its ``settings`` block (:meth:`EvalSettings.decoding`).

Resumable: finished problems are appended to ``<out>.partial.jsonl`` chunk by chunk;
a killed eval continues with the problems not yet done, and the partial file is
removed once ``eval.json`` is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from warmstart.config import ConfigError
from warmstart.evaluate_schema import (
    DecodingSettings,
    EvalSchemaError,
    GreedyResult,
    ModelInfo,
    ProblemResult,
    SampleResult,
    build_eval,
    write_eval,
)
from warmstart.evaluate_schema.jsonio import problem_result_from_json
from warmstart.sampler import RolloutConfig, Sampler
from warmstart.thread_share import follow_share

__all__ = ["EvalSettings", "evaluate_problems", "evaluate_to_file", "blank_problem", "describe"]

EVAL_CHUNK = 32
"""Problems per chunk: the resume unit, and chunk ``s`` (its first problem's index) samples
with seed ``seed + s``, so changing it changes which samples a seed gives."""


@dataclass(frozen=True)
class EvalSettings:
    """How every model is evaluated (``warmstart eval`` flags; the study's ``[eval]`` table).

    Attributes:
        n: sampled responses per problem (pass@k up to n; 0 = greedy only).
        temperature: sampling temperature of those samples.
        top_p: nucleus of those samples.
        max_new_tokens: max response tokens (greedy and sampled).
        greedy: also decode one greedy (temperature 0) response per problem.
        limit: evaluate only the first N problems of the split (0 = all).
        bootstrap: bootstrap resamples of the summary intervals.
        seed: sampling seed (a chunk starting at problem ``s`` samples with ``seed + s``)
            and bootstrap seed.
        blank_ablation: (study) also evaluate the base student and the teacher on the
            in-domain split with every image blanked (text-only ablation), as split
            ``validation_blank``. A single ``warmstart eval`` ignores it (its
            ``--blank-images`` blanks that one evaluation).
        rollout: the sampling engine (:class:`warmstart.sampler.RolloutConfig`).
    """

    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = True
    limit: int = 0
    bootstrap: int = 10_000
    seed: int = 0
    blank_ablation: bool = True
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def validate(self) -> None:
        for name in ("n", "limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_new_tokens", "bootstrap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        if self.n == 0 and not self.greedy:
            raise ConfigError("eval: n = 0 and greedy = false evaluates nothing")
        self.rollout.validate()

    def decoding(self) -> DecodingSettings:
        """What an eval file records of these settings (its ``settings`` block)."""
        # The record's fields are a subset of these, by name.
        return DecodingSettings(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(DecodingSettings)}
        )


def _entropy_stats(entropy_T: torch.Tensor, n_tokens: int) -> tuple[float, float]:
    s = float(entropy_T[:n_tokens].sum()) if n_tokens else 0.0
    return (s / n_tokens if n_tokens else 0.0), s


@torch.no_grad()
def evaluate_problems(
    sampler: Sampler,
    problems,
    settings: EvalSettings,
    *,
    chunk: int = EVAL_CHUNK,
    on_chunk: Callable[[list[ProblemResult]], None] | None = None,
    skip_ids: frozenset[str] = frozenset(),
) -> list[ProblemResult]:
    """Greedy + sampled responses for ``problems``, graded; ``on_chunk(rows)`` after each chunk.

    ``sampler`` is built by :func:`warmstart.sampler.make_sampler` from ``settings.rollout``.
    """
    from warmstart.grading import grade, normalize_answer
    from warmstart.rollout import SamplingParams

    n = settings.n
    out: list[ProblemResult] = []
    # Chunks are fixed slices of the full list and each is seeded by its start, and
    # finished chunks are written whole: a resumed eval draws exactly the same samples.
    for s in range(0, len(problems), chunk):
        follow_share()  # the study scheduler's thread share (no-op outside a study)
        probs = [p for p in problems[s : s + chunk] if p.id not in skip_ids]
        if not probs:
            continue
        g_ro = (
            sampler.sample(probs, SamplingParams(n=1, greedy=True, max_new_tokens=settings.max_new_tokens))
            if settings.greedy
            else None
        )
        s_ro = (
            sampler.sample(
                probs,
                SamplingParams(
                    n=n,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    max_new_tokens=settings.max_new_tokens,
                    seed=settings.seed + s,
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


def _read_partial(partial: Path) -> dict[str, ProblemResult]:
    """Finished problems of an interrupted eval (a torn last line is dropped)."""
    done: dict[str, ProblemResult] = {}
    if partial.exists():
        for ln in partial.read_text().splitlines():
            try:
                r = problem_result_from_json(json.loads(ln))
            except (json.JSONDecodeError, EvalSchemaError):
                continue
            done[r.id] = r
    return done


def evaluate_to_file(
    *,
    model: str,
    data: str,
    out: str | Path,
    settings: EvalSettings,
    split: str | None = None,
    model_name: str | None = None,
    blank_images: bool = False,
    show_progress: bool = True,
    device: str = "cpu",
    chunk: int = EVAL_CHUNK,
) -> dict:
    """Evaluate checkpoint ``model`` on ``data``/``split`` with ``settings`` and write ``out`` (resumable).

    ``blank_images`` replaces every image by a plain white one of the same size: the
    text-only ablation that shows how much of the accuracy comes from reading the diagram.
    ``chunk`` is :data:`EVAL_CHUNK` except in tests (resume granularity; it sets the seeds).
    Returns the summary values (metric name -> value).
    """
    from warmstart.data.loaders import load_problems
    from warmstart.models import load_policy
    from warmstart.sampler import make_sampler
    from warmstart.stages.common import progress

    settings.validate()
    out = Path(out)
    problems = load_problems(data, split=split).problems
    if settings.limit:
        problems = problems[: settings.limit]
    if blank_images:
        problems = [blank_problem(p) for p in problems]
    partial = out.with_name(out.name + ".partial.jsonl")
    done = _read_partial(partial)
    policy = load_policy(model, device=device)
    policy.model.eval()
    sampler = make_sampler(settings.rollout, policy.model, policy.processor)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = model_name or Path(model).name
    with (
        progress(f"eval {name} [{split}]", len(problems), len(done), show_progress) as bar,
        open(partial, "a") as f,
    ):

        def on_chunk(rows: list[ProblemResult]) -> None:
            for r in rows:
                f.write(json.dumps(dataclasses.asdict(r)) + "\n")
                done[r.id] = r
            f.flush()
            bar(len(rows))

        evaluate_problems(
            sampler, problems, settings, chunk=chunk, on_chunk=on_chunk, skip_ids=frozenset(done)
        )
    result = build_eval(
        model=ModelInfo(name=name, path=str(model)),
        data_path=str(data),
        split=split or "all",
        settings=settings.decoding(),
        per_problem=[done[p.id] for p in problems],
        B=settings.bootstrap,
        seed=settings.seed,
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


_DEFAULTS = EvalSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = _DEFAULTS  # flag defaults are the config's (one definition)
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--data", required=True, help="problem file/folder (any format load_problems reads)")
    parser.add_argument("--split", default=None, help="split inside --data (e.g. validation, ood, testmini)")
    parser.add_argument(
        "--out", default="eval.json", help="output eval.json (resumes from <out>.partial.jsonl)"
    )
    parser.add_argument(
        "--name", default=None, help="model name stored in the file (default: the folder name)"
    )
    parser.add_argument("--n", type=int, default=d.n, help=f"samples per problem (default {d.n})")
    parser.add_argument(
        "--temperature",
        type=float,
        default=d.temperature,
        help=f"sampling temperature (default {d.temperature})",
    )
    parser.add_argument(
        "--top-p", type=float, default=d.top_p, help=f"nucleus for the samples (default {d.top_p})"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=d.max_new_tokens,
        help=f"max response tokens (default {d.max_new_tokens})",
    )
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy response")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    parser.add_argument(
        "--bootstrap", type=int, default=d.bootstrap, help=f"bootstrap resamples (default {d.bootstrap})"
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="sampling and bootstrap seed")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument(
        "--blank-images",
        action="store_true",
        help="text-only ablation: replace every image by a white one of the same size",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    """The :class:`EvalSettings` the ``warmstart eval`` flags describe."""
    return EvalSettings(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        greedy=not args.no_greedy,
        limit=args.limit or 0,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    # Errors (bad data, config, a missing model) reach cli.main: one line, exit 2, traceback logged here.
    args._log_file = f"{args.out}.error.log"
    settings = settings_from_args(args)
    m = args.model
    if m.startswith((".", "/", "~")) or m.count("/") > 1:  # a local path, not a hub id
        if not Path(m).expanduser().exists():
            raise FileNotFoundError(f"model {m} does not exist (no such checkpoint directory)")
    summary = evaluate_to_file(
        model=args.model,
        data=args.data,
        out=args.out,
        settings=settings,
        split=args.split,
        model_name=args.name,
        blank_images=args.blank_images,
        show_progress=not args.quiet,
        device=args.device,
    )
    print(describe(summary, args.split or "all", settings.n, settings.temperature))
    print(f"wrote {args.out}")
    return 0

"""What an ``eval.json`` summarises: metric names and display info, per-problem values, the bootstrap
summary, and the paired comparison of two files (problems resampled jointly).

Pure: numbers in, numbers out (intervals from :mod:`warmstart.metrics`); the records are
those of :mod:`warmstart.evaluate_schema.records`.
"""

from __future__ import annotations

import datetime as _dt
import typing
from dataclasses import dataclass

import numpy as np

from warmstart import metrics as M
from warmstart.evaluate_schema.records import (
    BootstrapInfo,
    DataInfo,
    DecodingSettings,
    EvalResult,
    GreedyResult,
    Interval,
    ModelInfo,
    ProblemResult,
    SampleResult,
    TeacherForcedEntropy,
    validate,
)


@dataclass(frozen=True)
class MetricInfo:
    """How to show a summary metric: ``kind`` is ``fraction`` (shown in %), ``count``, ``nats`` or ``tokens``."""

    name: str
    label: str
    kind: str
    description: str


_FIXED_METRICS: dict[str, tuple[str, str, str]] = {
    "greedy_accuracy": ("greedy acc", "fraction", "greedy (temperature 0) accuracy"),
    "greedy_format_rate": ("greedy format", "fraction", "greedy responses with <think> + \\boxed{} kept"),
    "greedy_length_mean": ("greedy len", "tokens", "mean greedy response length"),
    "distinct_answers_mean": ("distinct ans", "count", "mean number of distinct normalised answers"),
    "answer_entropy_mean": ("answer H", "nats", "mean Shannon entropy of the answer distribution"),
    "entropy_token_mean": ("entropy/token", "nats", "policy entropy, token-weighted mean over samples"),
    "entropy_seq_mean": ("entropy/seq", "nats", "policy entropy, mean over problems of per-sequence means"),
    "response_length_mean": ("sample len", "tokens", "mean sampled response length"),
    "format_rate": ("format", "fraction", "sampled responses with <think> + \\boxed{} kept"),
}
_RATIO_METRICS = {"entropy_token_mean"}


def pass_k_values(n: int) -> list[int]:
    """The k of the summary's pass@k: 1, 2, 4, ... up to ``n``, and ``n`` itself (empty for n = 0)."""
    ks = []
    k = 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


def metric_info(name: str) -> MetricInfo:
    """Display information for a summary metric name (``pass@k`` for any k included)."""
    if name in _FIXED_METRICS:
        return MetricInfo(name, *_FIXED_METRICS[name])
    k = _pass_k(name)
    if k is not None:
        what = "mean sampled accuracy" if k == 1 else f"unbiased pass@{k}"
        return MetricInfo(name, name, "fraction", what)
    raise KeyError(name)


def _pass_k(name: str) -> int | None:
    if name.startswith("pass@") and name[5:].isdigit() and int(name[5:]) >= 1:
        return int(name[5:])
    return None


def _has_entropy(per_problem: list[ProblemResult]) -> bool:
    samples = [s for p in per_problem for s in p.samples]
    return bool(samples) and all(s.entropy_mean is not None and s.entropy_sum is not None for s in samples)


def metric_names(per_problem: list[ProblemResult], n: int) -> list[str]:
    """The summary metrics these rows support, in the canonical order of the file."""
    names: list[str] = []
    if per_problem and all(p.greedy is not None for p in per_problem):
        names += ["greedy_accuracy", "greedy_format_rate", "greedy_length_mean"]
    if n >= 1:
        names += [f"pass@{k}" for k in pass_k_values(n)]
        names += ["distinct_answers_mean", "answer_entropy_mean"]
        if _has_entropy(per_problem):
            names += ["entropy_token_mean", "entropy_seq_mean"]
        names += ["response_length_mean", "format_rate"]
    return names


def problem_values(per_problem: list[ProblemResult], name: str) -> np.ndarray:
    """Per-problem values of summary metric ``name``.

    Shape ``(P,)`` for metrics that are means over problems; for the one ratio metric
    (``entropy_token_mean``) shape ``(2, P)``: row 0 the numerator (entropy sums), row 1 the
    denominator (token counts) of each problem. Raises ``ValueError`` when a problem lacks
    what the metric needs.
    """

    def greedy(p: ProblemResult) -> GreedyResult:
        if p.greedy is None:
            raise ValueError(f"metric {name}: problem {p.id!r} has no greedy result")
        return p.greedy

    def samples(p: ProblemResult) -> list[SampleResult]:
        if not p.samples:
            raise ValueError(f"metric {name}: problem {p.id!r} has no samples")
        return p.samples

    def entropies(p: ProblemResult, attr: str) -> list[float]:
        vals = [getattr(s, attr) for s in samples(p)]
        if any(v is None for v in vals):
            raise ValueError(f"metric {name}: problem {p.id!r} has samples without {attr}")
        return vals

    k = _pass_k(name)
    if k is not None:
        n_P = [len(samples(p)) for p in per_problem]
        c_P = [sum(s.correct for s in p.samples) for p in per_problem]
        return M.pass_at_k_array(n_P, c_P, k)
    if name == "entropy_token_mean":
        num = [sum(entropies(p, "entropy_sum")) for p in per_problem]
        den = [sum(s.length for s in p.samples) for p in per_problem]
        return np.array([num, den], dtype=np.float64)
    per: dict[str, typing.Callable[[ProblemResult], float]] = {
        "greedy_accuracy": lambda p: float(greedy(p).correct),
        "greedy_format_rate": lambda p: float(greedy(p).format_ok),
        "greedy_length_mean": lambda p: float(greedy(p).length),
        "distinct_answers_mean": lambda p: M.answer_diversity([s.normalized for s in samples(p)])[0],
        "answer_entropy_mean": lambda p: M.answer_diversity([s.normalized for s in samples(p)])[1],
        "entropy_seq_mean": lambda p: float(np.mean(entropies(p, "entropy_mean"))),
        "response_length_mean": lambda p: float(np.mean([s.length for s in samples(p)])),
        "format_rate": lambda p: float(np.mean([s.format_ok for s in samples(p)])),
    }
    if name not in per:
        valid = [*_FIXED_METRICS, "pass@<k>"]
        raise ValueError(f"unknown metric {name!r}; valid: {valid}")
    return np.array([per[name](p) for p in per_problem], dtype=np.float64)


def _intervals(
    names: list[str],
    values_P: typing.Callable[[str], np.ndarray],
    ratio_ci: typing.Callable[[str], M.CI],
    B: int,
    seed: int,
    alpha: float,
) -> dict[str, Interval]:
    """Bootstrap intervals of ``names``, in that order.

    Means over problems (``values_P(m)``, shape ``(P,)``) are resampled together, on one
    set of resamples; the ratio metrics come from ``ratio_ci(m)`` (same seed, so the same
    resampled problems).
    """
    mean_names = [m for m in names if m not in _RATIO_METRICS]
    out: dict[str, Interval] = {}
    if mean_names:
        point, lo, hi = M.bootstrap_many(np.stack([values_P(m) for m in mean_names]), B, seed, alpha)
        for i, m in enumerate(mean_names):
            out[m] = Interval(float(point[i]), float(lo[i]), float(hi[i]))
    for m in names:
        if m in _RATIO_METRICS:
            out[m] = Interval.from_ci(ratio_ci(m))
    return {m: out[m] for m in names}


def summarize(
    per_problem: list[ProblemResult],
    n: int,
    B: int = M.DEFAULT_B,
    seed: int = 0,
    alpha: float = M.DEFAULT_ALPHA,
) -> dict[str, Interval]:
    """The ``summary`` block: every supported metric (:func:`metric_names`) with its bootstrap interval.

    All metrics are resampled on the same problem sets (one seed). ``n`` is the number
    of samples per problem (``settings.n``); every problem must have exactly ``n``.
    """
    if not per_problem:
        raise ValueError("summarize: no problems")
    for p in per_problem:
        if len(p.samples) != n:
            raise ValueError(f"summarize: problem {p.id!r} has {len(p.samples)} samples, settings say n={n}")

    def ratio_ci(m: str) -> M.CI:
        num_P, den_P = problem_values(per_problem, m)
        return M.bootstrap_ratio(num_P, den_P, B, seed, alpha)

    names = metric_names(per_problem, n)
    return _intervals(names, lambda m: problem_values(per_problem, m), ratio_ci, B, seed, alpha)


def teacher_forced_summary(
    probe: str,
    entropy_per_seq: list[np.ndarray] | list[list[float]],
    B: int = M.DEFAULT_B,
    seed: int = 0,
    alpha: float = M.DEFAULT_ALPHA,
) -> TeacherForcedEntropy:
    """Summarise per-token entropies on a probe set (one array per reference response).

    Probe sequences are the resampling unit; the token mean is bootstrapped as a ratio of sums.
    """
    arrays = [np.asarray(e, dtype=np.float64).ravel() for e in entropy_per_seq]
    nonempty = [a for a in arrays if a.size]
    if not nonempty:
        raise ValueError(f"teacher_forced_summary: probe {probe!r} has no tokens")
    token_mean, seq_mean = M.token_entropy_summary(arrays)
    tok = M.bootstrap_ratio([a.sum() for a in nonempty], [a.size for a in nonempty], B, seed, alpha)
    seq = M.bootstrap_ci([a.mean() for a in nonempty], B, seed, alpha)
    return TeacherForcedEntropy(
        probe=probe,
        n_sequences=len(arrays),
        n_tokens=int(sum(a.size for a in arrays)),
        token_mean=Interval(token_mean, tok.lo, tok.hi),
        seq_mean=Interval(seq_mean, seq.lo, seq.hi),
    )


def build_eval(
    *,
    model: ModelInfo,
    data_path: str,
    split: str,
    settings: DecodingSettings,
    per_problem: list[ProblemResult],
    B: int = M.DEFAULT_B,
    seed: int = 0,
    alpha: float = M.DEFAULT_ALPHA,
    teacher_forced_entropy: TeacherForcedEntropy | None = None,
    created: str | None = None,
) -> EvalResult:
    """Assemble a complete, validated :class:`EvalResult` from per-problem rows (summary computed here)."""
    result = EvalResult(
        created=created or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model=model,
        data=DataInfo(
            path=data_path, split=split, n_problems=len(per_problem), problem_ids=[p.id for p in per_problem]
        ),
        settings=settings,
        bootstrap=BootstrapInfo(B=B, seed=seed, alpha=alpha),
        per_problem=per_problem,
        summary=summarize(per_problem, settings.n, B, seed, alpha),
        teacher_forced_entropy=teacher_forced_entropy,
    )
    validate(result)
    return result


# ---------------------------------------------------------------------- paired comparison


def _align(a: EvalResult, b: EvalResult) -> list[ProblemResult]:
    """``b``'s rows in ``a``'s problem order; raises when the problem sets (or their answers) differ."""
    ids_a = [p.id for p in a.per_problem]
    ids_b = [p.id for p in b.per_problem]
    if set(ids_a) != set(ids_b) or len(ids_a) != len(ids_b):
        M.check_same_problems(ids_a, ids_b, a.label, b.label)  # raises, naming both files
    by_id = {p.id: p for p in b.per_problem}
    rows = [by_id[i] for i in ids_a]
    for pa, pb in zip(a.per_problem, rows):
        if pa.answer != pb.answer:
            raise M.ProblemMismatchError(
                f"paired comparison: problem {pa.id!r} has answer {pa.answer!r} in {a.label} "
                f"but {pb.answer!r} in {b.label}: not the same data"
            )
    return rows


def paired_compare(
    eval_a: EvalResult,
    eval_b: EvalResult,
    metrics: list[str] | None = None,
    B: int = M.DEFAULT_B,
    seed: int = 0,
    alpha: float = M.DEFAULT_ALPHA,
) -> dict[str, Interval]:
    """Paired differences ``a - b`` of summary metrics, with problems resampled jointly.

    ``metrics`` defaults to every metric both files support. Problems are matched by
    id (``b`` is reordered to ``a``'s order); different problem sets or different
    ground truths raise :class:`warmstart.metrics.ProblemMismatchError` naming both files.
    """
    rows_b = _align(eval_a, eval_b)
    rows_a = eval_a.per_problem
    avail_a = metric_names(rows_a, eval_a.settings.n)
    avail_b = metric_names(rows_b, eval_b.settings.n)
    if metrics is None:
        metrics = [m for m in avail_a if m in avail_b]
    for m in metrics:
        for ev, avail in ((eval_a, avail_a), (eval_b, avail_b)):
            if m not in avail:
                raise ValueError(f"metric {m!r} is not available in {ev.label} (available: {avail})")

    def ratio_ci(m: str) -> M.CI:
        num_a, den_a = problem_values(rows_a, m)
        num_b, den_b = problem_values(rows_b, m)
        return M.paired_ratio_diff_ci(num_a, den_a, num_b, den_b, B, seed, alpha)

    # Resampling the per-problem differences is resampling both sides on the same problems.
    return _intervals(
        metrics, lambda m: problem_values(rows_a, m) - problem_values(rows_b, m), ratio_ci, B, seed, alpha
    )

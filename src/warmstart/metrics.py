"""Pure metrics: pass@k, answer diversity, entropy summaries and the problem-level bootstrap.

Definitions are those of ``DESIGN.md`` ("Definitions"); every function here is pure
(no I/O, no global random state) and works on plain numbers / numpy arrays, so the
evaluator, the report and the tests share one implementation.

Shape suffixes: ``P`` problems (the bootstrap's resampling unit), ``B`` bootstrap
resamples, ``M`` rows (models or metrics) evaluated on the same problems.

The bootstrap
-------------
Every bootstrap function draws its resamples from :func:`bootstrap_indices`-style
chunks of one local ``numpy.random.default_rng(seed)``: for a given ``(P, B, seed)``
they all see *the same* resampled problem sets. That is what makes a paired
difference paired, and it also means the intervals of different metrics of one
evaluation (computed with one seed) come from the same resamples.

A resample's mean over problems is computed from per-problem *counts*: if
resample ``b`` draws problem ``p`` ``counts_BP[b, p]`` times, its mean of
``values_P`` is ``counts_BP[b] @ values_P / P``. One counts matrix times a
``P x M`` value matrix gives all rows at once, which is why 10,000 resamples x
1,000 problems x 8 models takes a fraction of a second
(``benchmarks/bootstrap_speed.py``).

Intervals are percentile intervals: the ``alpha/2`` and ``1 - alpha/2`` quantiles
of the resampled statistic; the point estimate is the statistic on the data itself.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "CI",
    "pass_at_k",
    "pass_at_k_array",
    "answer_diversity",
    "token_entropy_summary",
    "bootstrap_indices",
    "bootstrap_counts",
    "resampled_sums",
    "bootstrap_ci",
    "bootstrap_many",
    "bootstrap_ratio",
    "paired_diff_ci",
    "paired_ratio_diff_ci",
    "paired_bootstrap_diff",
    "check_same_problems",
    "ProblemMismatchError",
]

DEFAULT_B = 10_000
DEFAULT_ALPHA = 0.05

# Resamples are drawn and reduced this many at a time, so memory stays at
# ``_CHUNK_ROWS x P`` whatever B is. Changing it changes which resamples a seed gives.
_CHUNK_ROWS = 1024


class CI(NamedTuple):
    """A point estimate with a percentile bootstrap interval ``[lo, hi]``."""

    point: float
    lo: float
    hi: float


class ProblemMismatchError(ValueError):
    """Two paired inputs are not on the same problems (in the same order)."""


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021).

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{j<k} (n-c-j) / (n-j)`` so no
    binomial coefficient (which overflows floats near n = 1000) is ever formed.
    """
    if not (0 <= c <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not (1 <= k <= n):
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    fail = 1.0
    for j in range(k):
        fail *= (n - c - j) / (n - j)
    return 1.0 - fail


def pass_at_k_array(n_P: Sequence[int] | np.ndarray, c_P: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """:func:`pass_at_k` for every problem at once; ``n_P`` may differ between problems.

    Returns a float64 array of shape ``(P,)``.
    """
    n_P = np.asarray(n_P, dtype=np.int64)
    c_P = np.asarray(c_P, dtype=np.int64)
    if n_P.shape != c_P.shape or n_P.ndim != 1:
        raise ValueError(
            f"pass_at_k_array: n_P and c_P must be 1-D of one shape, got {n_P.shape}, {c_P.shape}"
        )
    if np.any(c_P < 0) or np.any(c_P > n_P):
        raise ValueError("pass_at_k_array: need 0 <= c <= n for every problem")
    if k < 1 or np.any(n_P < k):
        raise ValueError(f"pass_at_k_array: need 1 <= k <= n for every problem (k={k}, min n={n_P.min()})")
    j_K = np.arange(k)
    # term (n-c-j)/(n-j); once n-c-j reaches 0 the product is 0 (clip the negatives after it)
    terms_PK = np.clip(n_P[:, None] - c_P[:, None] - j_K[None, :], 0, None) / (n_P[:, None] - j_K[None, :])
    return 1.0 - np.prod(terms_PK, axis=1)


# ------------------------------------------------------------------- diversity, entropy


def answer_diversity(answers: Sequence[str]) -> tuple[int, float]:
    """Distinct answers among one problem's samples and the Shannon entropy (nats) of their distribution.

    ``answers`` are already normalised (the caller maps unparseable answers to ``"none"``,
    which then counts as one answer like any other).
    """
    if len(answers) == 0:
        raise ValueError("answer_diversity: no answers")
    counts = np.fromiter(Counter(answers).values(), dtype=np.float64)
    p = counts / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    return len(counts), max(entropy, 0.0)  # max: a single answer gives -0.0


def token_entropy_summary(entropy_per_seq: Sequence[Sequence[float] | np.ndarray]) -> tuple[float, float]:
    """``(token_mean, seq_mean)`` of per-token entropies, one array per sequence.

    ``token_mean`` weights every response token equally (sum over all tokens / number of
    tokens); ``seq_mean`` is the mean over sequences of each sequence's own mean, so long
    responses do not dominate it. Empty sequences add no tokens and are left out of the
    sequence mean. Both are ``nan`` when there is no token at all.
    """
    arrays = [np.asarray(e, dtype=np.float64).ravel() for e in entropy_per_seq]
    n_tokens = sum(a.size for a in arrays)
    if n_tokens == 0:
        return math.nan, math.nan
    token_mean = float(sum(a.sum() for a in arrays) / n_tokens)
    seq_mean = float(np.mean([a.mean() for a in arrays if a.size > 0]))
    return token_mean, seq_mean


# ---------------------------------------------------------------------------- bootstrap


def _index_chunks(n_problems: int, B: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled problem indices, ``_CHUNK_ROWS`` resamples at a time, from one local generator."""
    if n_problems < 1:
        raise ValueError("bootstrap: need at least one problem")
    if B < 1:
        raise ValueError(f"bootstrap: need B >= 1, got {B}")
    rng = np.random.default_rng(seed)
    for start in range(0, B, _CHUNK_ROWS):
        rows = min(_CHUNK_ROWS, B - start)
        # int32 draws are about twice as fast as int64 ones; P < 2**31 always holds here
        yield rng.integers(0, n_problems, size=(rows, n_problems), dtype=np.int32)


def _counts_from_indices(idx_BP: np.ndarray, n_problems: int) -> np.ndarray:
    """``counts_BP[b, p]`` = how often resample ``b`` drew problem ``p`` (one flat bincount)."""
    rows = idx_BP.shape[0]
    flat = (np.arange(rows, dtype=np.int64)[:, None] * n_problems + idx_BP).ravel()
    return np.bincount(flat, minlength=rows * n_problems).reshape(rows, n_problems)


def bootstrap_indices(n_problems: int, B: int = DEFAULT_B, seed: int = 0) -> np.ndarray:
    """The ``B x P`` matrix of resampled problem indices (with replacement) for this seed.

    Every bootstrap function in this module uses exactly these resamples.
    """
    return np.concatenate(list(_index_chunks(n_problems, B, seed)), axis=0)


def bootstrap_counts(n_problems: int, B: int = DEFAULT_B, seed: int = 0) -> np.ndarray:
    """``B x P`` counts: how many times resample ``b`` contains problem ``p`` (rows sum to ``P``)."""
    return np.concatenate(
        [_counts_from_indices(idx, n_problems) for idx in _index_chunks(n_problems, B, seed)], axis=0
    )


def _as_matrix(values: np.ndarray | Sequence, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise ValueError(f"{name}: expected a 1-D (P,) or 2-D (M, P) array, got shape {v.shape}")
    if v.shape[1] == 0:
        raise ValueError(f"{name}: no problems")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: values must be finite (found nan or inf)")
    return v


def resampled_sums(values_MP: np.ndarray, B: int = DEFAULT_B, seed: int = 0) -> np.ndarray:
    """Sum of each row over every resample: ``sums_BM[b, m] = sum_p counts_BP[b, p] * values_MP[m, p]``."""
    v_MP = _as_matrix(values_MP, "resampled_sums")
    P = v_MP.shape[1]
    out = [_counts_from_indices(idx, P).astype(np.float64) @ v_MP.T for idx in _index_chunks(P, B, seed)]
    return np.concatenate(out, axis=0)


def _percentiles(stat_BM: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"bootstrap: alpha must be in (0, 1), got {alpha}")
    lo, hi = np.nanquantile(stat_BM, [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi


def bootstrap_many(
    values_MP: np.ndarray, B: int = DEFAULT_B, seed: int = 0, alpha: float = DEFAULT_ALPHA
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over problems with a percentile interval for every row of ``values_MP``.

    All rows use the same resampled problems. Returns ``(point_M, lo_M, hi_M)``.
    """
    v_MP = _as_matrix(values_MP, "bootstrap_many")
    means_BM = resampled_sums(v_MP, B, seed) / v_MP.shape[1]
    lo, hi = _percentiles(means_BM, alpha)
    return v_MP.mean(axis=1), lo, hi


def bootstrap_ci(
    values_P: np.ndarray | Sequence[float], B: int = DEFAULT_B, seed: int = 0, alpha: float = DEFAULT_ALPHA
) -> CI:
    """Mean of per-problem values with its percentile bootstrap interval (problems resampled)."""
    v = np.asarray(values_P, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"bootstrap_ci: values_P must be 1-D, got shape {v.shape}")
    point, lo, hi = bootstrap_many(v, B, seed, alpha)
    return CI(float(point[0]), float(lo[0]), float(hi[0]))


def _ratio_stats(num_P: np.ndarray, den_P: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    num = np.asarray(num_P, dtype=np.float64)
    den = np.asarray(den_P, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"{name}: num_P and den_P must be 1-D of one shape, got {num.shape}, {den.shape}")
    if np.any(den < 0) or den.sum() <= 0:
        raise ValueError(f"{name}: denominators must be >= 0 with a positive total")
    return num, den


def bootstrap_ratio(
    num_P: np.ndarray | Sequence[float],
    den_P: np.ndarray | Sequence[float],
    B: int = DEFAULT_B,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
) -> CI:
    """A ratio of sums, ``sum(num_P) / sum(den_P)``, with problems resampled.

    For token-weighted means: ``num_P`` = summed token entropy of problem ``p``'s
    samples, ``den_P`` = their token count. A resample whose denominator is 0 is
    left out of the quantiles.
    """
    num, den = _ratio_stats(num_P, den_P, "bootstrap_ratio")
    sums_B2 = resampled_sums(np.stack([num, den]), B, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_B = np.where(sums_B2[:, 1] > 0, sums_B2[:, 0] / sums_B2[:, 1], np.nan)
    lo, hi = _percentiles(ratio_B, alpha)
    return CI(float(num.sum() / den.sum()), float(lo), float(hi))


def check_same_problems(
    ids_a: Sequence[str] | None, ids_b: Sequence[str] | None, label_a: str = "a", label_b: str = "b"
) -> None:
    """Raise :class:`ProblemMismatchError` unless the two problem-id lists are equal (order included).

    ``None`` on either side skips the check. The message names both inputs, counts the
    ids only one side has and shows a few of them.
    """
    if ids_a is None or ids_b is None:
        return
    ids_a, ids_b = list(ids_a), list(ids_b)
    if ids_a == ids_b:
        return
    set_a, set_b = set(ids_a), set(ids_b)
    only_a = [i for i in ids_a if i not in set_b]
    only_b = [i for i in ids_b if i not in set_a]
    if not only_a and not only_b:
        if len(ids_a) != len(ids_b):
            detail = f"the same ids but different counts ({len(ids_a)} vs {len(ids_b)}: duplicates)"
        else:
            first = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y)
            detail = f"the same ids in a different order (first difference at position {first})"
    else:
        detail = (
            f"{len(only_a)} ids only in {label_a} (e.g. {only_a[:3]}), "
            f"{len(only_b)} ids only in {label_b} (e.g. {only_b[:3]})"
        )
    raise ProblemMismatchError(
        f"paired comparison needs the same problems in the same order: {label_a} ({len(ids_a)} problems) "
        f"and {label_b} ({len(ids_b)} problems) have {detail}"
    )


def paired_diff_ci(
    a_P: np.ndarray | Sequence[float],
    b_P: np.ndarray | Sequence[float],
    B: int = DEFAULT_B,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
    ids_a: Sequence[str] | None = None,
    ids_b: Sequence[str] | None = None,
) -> CI:
    """Mean of ``a - b`` over problems with a paired percentile interval.

    Both inputs are evaluated on the same resampled problems (resampling the per-problem
    differences is exactly that), so identical inputs give ``CI(0, 0, 0)`` exactly. Pass
    the problem ids to have them checked (:func:`check_same_problems`).
    """
    check_same_problems(ids_a, ids_b)
    a = np.asarray(a_P, dtype=np.float64)
    b = np.asarray(b_P, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ProblemMismatchError(
            f"paired_diff_ci: a_P and b_P must be 1-D of one shape, got {a.shape}, {b.shape}"
        )
    return bootstrap_ci(a - b, B, seed, alpha)


def paired_ratio_diff_ci(
    num_a: np.ndarray | Sequence[float],
    den_a: np.ndarray | Sequence[float],
    num_b: np.ndarray | Sequence[float],
    den_b: np.ndarray | Sequence[float],
    B: int = DEFAULT_B,
    seed: int = 0,
    alpha: float = DEFAULT_ALPHA,
) -> CI:
    """``sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b)`` with both ratios on the same resampled problems."""
    na, da = _ratio_stats(num_a, den_a, "paired_ratio_diff_ci")
    nb, db = _ratio_stats(num_b, den_b, "paired_ratio_diff_ci")
    if na.shape != nb.shape:
        raise ProblemMismatchError(f"paired_ratio_diff_ci: a has {na.size} problems, b has {nb.size}")
    sums_B4 = resampled_sums(np.stack([na, da, nb, db]), B, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = (sums_B4[:, 1] > 0) & (sums_B4[:, 3] > 0)
        diff_B = np.where(ok, sums_B4[:, 0] / sums_B4[:, 1] - sums_B4[:, 2] / sums_B4[:, 3], np.nan)
    lo, hi = _percentiles(diff_B, alpha)
    return CI(float(na.sum() / da.sum() - nb.sum() / db.sum()), float(lo), float(hi))


# The name docs/ARCHITECTURE.md's contract uses for the paired difference.
paired_bootstrap_diff = paired_diff_ci

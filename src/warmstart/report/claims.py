"""The paper's claims as data, and the pure rules that turn a measured interval into a verdict.

A claim (:class:`ClaimSpec`) is one sentence of the paper and the tests (:class:`TestSpec`)
that would show it on a run: a paired difference ``a - b`` of one summary metric on one
split, or the spread (max - min) of one metric over several models. Models are named by
*role* (``sft_early``, ``opd+grpo``, ``base``); :mod:`warmstart.report.claim_tables`
resolves roles to the run's arms, pools their seeds and computes the intervals with
:mod:`warmstart.metrics`. Everything here is pure: numbers in, verdicts out.

The verdict rule (:data:`VERDICT_RULE`, printed in the report) is fixed here, before any
run is looked at:

* ``greater`` (the claim says ``a - b > 0``): *supported* when the 95% interval lies above
  0, *contradicted* when it lies below 0, else *inconclusive at this power*;
* ``less``: the mirror image;
* ``at_most`` with margin ``m`` (the claim says something is small: a band of
  accuracies, an advantage that is gone): *supported* when the whole interval is
  ``<= m``, *contradicted* when the whole interval is ``> m``, else inconclusive;
* with two or more seeds, a pooled verdict other than inconclusive also needs every
  seed's own estimate on the same side (of 0, or of ``m``); otherwise it is inconclusive
  ("seeds disagree");
* a claim is contradicted when any of its tests is, supported when all are, else
  inconclusive; a test whose inputs are missing is *not testable* and makes its claim
  at best inconclusive;
* a claim that presupposes another ("the advantage is gone after RL" presupposes an
  advantage at init) is not testable unless that one is supported;
* a test of a matched-outcome checkpoint that was never reached is inconclusive: the
  two methods never met at the target, so there is no matched pair to compare.

The matched-outcome claims (``C3m``, ``C4m``; v2) are C3's and C4's comparisons at RL
init between the checkpoints of equal Stage-1 outcome (``sft_matched``, ``opd_matched``:
each method's first validation at the stage-0 target). Matched arms have no Stage-2 run,
so C3's "after RL" half and C5 have no matched version.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from warmstart import metrics as M

__all__ = [
    "SUPPORTED",
    "CONTRADICTED",
    "INCONCLUSIVE",
    "NOT_TESTABLE",
    "VERDICT_RULE",
    "POOLING_RULE",
    "TestSpec",
    "ClaimSpec",
    "CLAIMS",
    "BAND_MARGIN",
    "DIVERSITY_MARGIN",
    "interval_verdict",
    "seed_verdict",
    "combine_verdicts",
    "presupposed_verdict",
    "decisive_test",
    "spread_ci",
    "pool_mean",
    "pool_ratio",
]

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive at this power"
NOT_TESTABLE = "not testable"

Direction = Literal["greater", "less", "at_most"]

BAND_MARGIN = 0.05
"""5 pp: what "a narrow band", "close" and "gone" allow for accuracies and pass@k (fractions).

Fixed before the runs: about the half-width of a greedy interval on 500 problems, so a
v2 run can support a band claim while today's 200 problems rarely can."""
DIVERSITY_MARGIN = 0.5
"""Half a distinct answer per problem: what "gone" allows for the distinct-answers count."""

VERDICT_RULE = (
    "Verdict rule (fixed in warmstart/report/claims.py before any run): for a claim that a - b > 0, "
    "supported if the 95% interval lies above 0, contradicted if it lies below 0, else inconclusive at "
    "this power (and the mirror image for < 0). For a claim that something is small (a band of "
    "accuracies, an advantage that is gone) with margin m: supported if the whole interval is <= m, "
    "contradicted if the whole interval is > m, else inconclusive. With two or more seeds, a verdict "
    "other than inconclusive also needs every seed's own estimate on the same side; otherwise it is "
    "inconclusive (seeds disagree). A claim is contradicted if any of its tests is, supported if all "
    "are, else inconclusive; a test with missing inputs is not testable. C5 presupposes C4 (an advantage "
    "that never was cannot be gone): it is not testable unless C4 is supported. A test of a matched-outcome "
    "checkpoint that was never reached is inconclusive (the methods never met at the target)."
)
POOLING_RULE = (
    "Intervals: paired problem bootstrap (the same resampled problems for every model of a test, "
    "B resamples, percentile 95%). Seeds are pooled per problem: a mean metric is averaged over an "
    "arm's seeds on each problem, the token-weighted entropy sums every seed's entropy and token "
    "counts on each problem, then problems are resampled. Pooling needs every seed evaluated on the "
    "same problems with the same answers (checked); the interval therefore measures problem sampling "
    "for the seed-averaged arm, and the training randomness shows in the seed column: each seed's own "
    "estimate (seeds matched by number; base and teacher have one model for every seed)."
)


@dataclass(frozen=True)
class TestSpec:
    """One measurable statement: a paired difference or a spread, with the direction the claim expects.

    Attributes:
        kind: ``diff`` (``a - b``, paired on problems) or ``spread`` (max - min of the
            models' values, all on the same resampled problems).
        split: evaluation split (``validation`` in-domain, ``ood``).
        metric: a summary metric of the eval files (``greedy_accuracy``, ``pass@16``,
            ``entropy_token_mean``, ...). ``pass@k`` falls back to the largest k every
            model has when some have fewer than k samples (the report says so).
        direction: what the claim says of the statistic: ``greater`` (> 0), ``less``
            (< 0) or ``at_most`` (<= ``margin``).
        a: role of the first model of a ``diff`` (``opd``, ``sft_early+grpo``, ``base``).
        b: role of the second model of a ``diff``.
        models: roles of a ``spread``.
        margin: the ``at_most`` bound, in the metric's own unit (fractions for accuracies).
        what: the test in words, for the report.
    """

    kind: Literal["diff", "spread"]
    split: str
    metric: str
    direction: Direction
    a: str = ""
    b: str = ""
    models: tuple[str, ...] = ()
    margin: float = 0.0
    what: str = ""

    def __post_init__(self) -> None:
        if self.kind == "diff" and not (self.a and self.b):
            raise ValueError(f"diff test {self.what!r}: needs roles a and b")
        if self.kind == "spread" and (len(self.models) < 2 or self.direction != "at_most"):
            raise ValueError(f"spread test {self.what!r}: needs >= 2 models and direction 'at_most'")
        if self.direction == "at_most" and self.margin <= 0:
            raise ValueError(f"test {self.what!r}: direction 'at_most' needs a positive margin")

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.a, self.b) if self.kind == "diff" else self.models


@dataclass(frozen=True)
class ClaimSpec:
    """One claim of the paper and the tests that would show it.

    Attributes:
        key: short id (``C1``).
        claim: the claim, as the paper makes it.
        tests: the tests; the claim's verdict combines theirs (:func:`combine_verdicts`).
        optional: leave the claim out (with a note) when a role has no arm in the run,
            instead of reporting it "not testable" (the matched-outcome claims, which
            need v2's matched checkpoints).
        presupposes: key of a claim this one only makes sense after ("the advantage is
            gone" needs an advantage first): unless that claim is supported, this one is
            not testable (:func:`presupposed_verdict`).
    """

    key: str
    claim: str
    tests: tuple[TestSpec, ...]
    optional: bool = False
    presupposes: str = ""


def _diff(split, metric, a, b, direction, what, margin=0.0) -> TestSpec:
    return TestSpec("diff", split, metric, direction, a=a, b=b, margin=margin, what=what)


def _vs_sft(split, metric, opd, sfts, direction, what, margin=0.0) -> tuple[TestSpec, ...]:
    return tuple(_diff(split, metric, opd, s, direction, f"{what}: {opd} − {s}", margin) for s in sfts)


_SFT = ("sft_early", "sft_over")
_SFT2 = ("sft_early+grpo", "sft_over+grpo")


def _opd_claims(suffix: str, opd: str, sfts: tuple[str, ...], optional: bool) -> tuple[ClaimSpec, ...]:
    """Claims C3-C5 for one set of Stage-1 roles and their Stage-2 endpoints."""
    opd2, sfts2 = f"{opd}+grpo", tuple(f"{s}+grpo" for s in sfts)
    at = " (at matched outcome)" if suffix else ""
    return (
        ClaimSpec(
            f"C3{suffix}",
            f"OPD enters RL at higher policy entropy than SFT{at}, and the separation persists after RL",
            _vs_sft("validation", "entropy_token_mean", opd, sfts, "greater", "entropy at RL init")
            + _vs_sft("validation", "entropy_token_mean", opd2, sfts2, "greater", "entropy after RL"),
            optional,
        ),
        ClaimSpec(
            f"C4{suffix}",
            f"At RL init{at} OPD has higher answer diversity and pass@16 than SFT",
            _vs_sft("validation", "distinct_answers_mean", opd, sfts, "greater", "distinct answers at init")
            + _vs_sft("validation", "pass@16", opd, sfts, "greater", "pass@16 at init"),
            optional,
        ),
        ClaimSpec(
            f"C5{suffix}",
            f"After RL{at} OPD's diversity and pass@16 advantage is gone",
            _vs_sft(
                "validation",
                "distinct_answers_mean",
                opd2,
                sfts2,
                "at_most",
                "distinct answers after RL",
                DIVERSITY_MARGIN,
            )
            + _vs_sft("validation", "pass@16", opd2, sfts2, "at_most", "pass@16 after RL", BAND_MARGIN),
            optional,
            presupposes=f"C4{suffix}",
        ),
    )


def _matched_claims() -> tuple[ClaimSpec, ...]:
    """C3 and C4 at RL init between the matched-outcome checkpoints (Stage-1 only: no after-RL half)."""
    opd, sfts = "opd_matched", ("sft_matched",)
    at = "at matched Stage-1 outcome (equal selection accuracy)"
    return (
        ClaimSpec(
            "C3m",
            f"OPD enters RL at higher policy entropy than SFT, {at}",
            _vs_sft("validation", "entropy_token_mean", opd, sfts, "greater", "entropy at matched outcome"),
            optional=True,
        ),
        ClaimSpec(
            "C4m",
            f"OPD enters RL with higher answer diversity and pass@16 than SFT, {at}",
            _vs_sft(
                "validation",
                "distinct_answers_mean",
                opd,
                sfts,
                "greater",
                "distinct answers at matched outcome",
            )
            + _vs_sft("validation", "pass@16", opd, sfts, "greater", "pass@16 at matched outcome"),
            optional=True,
        ),
    )


CLAIMS: tuple[ClaimSpec, ...] = (
    ClaimSpec(
        "C1",
        "After Stage-1 the warm-starts end in a narrow in-domain accuracy band",
        (
            TestSpec(
                "spread",
                "validation",
                "greedy_accuracy",
                "at_most",
                models=("sft_early", "sft_over", "opd"),
                margin=BAND_MARGIN,
                what="in-domain greedy accuracy, max − min over the Stage-1 arms",
            ),
        ),
    ),
    ClaimSpec(
        "C2",
        "Early-stopped SFT helps out-of-domain accuracy, over-trained SFT hurts it",
        (
            _diff(
                "ood",
                "greedy_accuracy",
                "sft_early",
                "sft_over",
                "greater",
                "OOD greedy: sft_early − sft_over",
            ),
            _diff("ood", "greedy_accuracy", "sft_early", "base", "greater", "OOD greedy: sft_early − base"),
            _diff("ood", "greedy_accuracy", "sft_over", "base", "less", "OOD greedy: sft_over − base"),
        ),
    ),
    *_opd_claims("", "opd", _SFT, optional=False),
    ClaimSpec(
        "C6",
        "After RL the models are close out of domain",
        (
            TestSpec(
                "spread",
                "ood",
                "greedy_accuracy",
                "at_most",
                models=_SFT2 + ("opd+grpo",),
                margin=BAND_MARGIN,
                what="OOD greedy accuracy, max − min over the Stage-2 endpoints",
            ),
        ),
    ),
    # v2: C3's and C4's init comparisons between checkpoints of equal Stage-1 outcome (left out without them)
    *_matched_claims(),
)
"""The claims the report tests, in report order."""


# ---------------------------------------------------------------------------- verdicts


def interval_verdict(lo: float, hi: float, direction: Direction, margin: float = 0.0) -> str:
    """The verdict of one interval ``[lo, hi]`` under the rule of :data:`VERDICT_RULE`."""
    if not lo <= hi:
        raise ValueError(f"interval_verdict: need lo <= hi, got [{lo}, {hi}]")
    if direction == "greater":
        return SUPPORTED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE
    if direction == "less":
        return SUPPORTED if hi < 0 else CONTRADICTED if lo > 0 else INCONCLUSIVE
    if direction == "at_most":
        return SUPPORTED if hi <= margin else CONTRADICTED if lo > margin else INCONCLUSIVE
    raise ValueError(f"unknown direction {direction!r}")


def _side(x: float, direction: Direction, margin: float) -> str:
    """Which verdict a single estimate ``x`` would point to (no interval)."""
    return interval_verdict(x, x, direction, margin)


def seed_verdict(
    pooled: str, seed_points: Sequence[float], direction: Direction, margin: float = 0.0
) -> tuple[str, str]:
    """The pooled verdict checked against each seed's own estimate: ``(verdict, note)``.

    With fewer than two seeds the pooled verdict stands. Otherwise a supported or
    contradicted verdict needs every seed's estimate on that side (an estimate of exactly
    0, or exactly the margin, sits on neither side of a ``greater``/``less`` claim).
    """
    if len(seed_points) < 2 or pooled not in (SUPPORTED, CONTRADICTED):
        return pooled, ""
    sides = [_side(x, direction, margin) for x in seed_points]
    if all(s == pooled for s in sides):
        return pooled, f"all {len(sides)} seeds agree"
    agree = sum(s == pooled for s in sides)
    return INCONCLUSIVE, f"seeds disagree ({agree} of {len(sides)} on the pooled side)"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A claim's verdict from its tests': contradicted if any is, supported if all are, else inconclusive."""
    if not verdicts:
        return NOT_TESTABLE
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if all(v == NOT_TESTABLE for v in verdicts):
        return NOT_TESTABLE
    return INCONCLUSIVE


def presupposed_verdict(verdict: str, presupposed: str | None, key: str) -> tuple[str, str]:
    """A claim's verdict given the verdict of the claim it presupposes: ``(verdict, reason)``.

    ``presupposed`` is ``None`` when the claim presupposes nothing. Unless the presupposed
    claim is supported, the claim is not testable (an advantage that never was cannot be
    "gone"), whatever its own tests say.
    """
    if presupposed is None or presupposed == SUPPORTED:
        return verdict, ""
    return NOT_TESTABLE, f"presupposes {key}, which is {presupposed}"


def _distance(lo: float, hi: float, direction: Direction, margin: float) -> float:
    """How far the interval is from deciding the claim's way (negative: on the claimed side)."""
    if direction == "greater":
        return -lo
    if direction == "less":
        return hi
    return hi - margin


def decisive_test(verdicts: Sequence[str], intervals: Sequence[tuple[float, float] | None], specs) -> int:
    """Index of the test the claims table shows for a claim.

    The test behind the claim's verdict: the first contradicted test of a contradicted
    claim; for a supported claim its weakest support (the interval closest to the bound);
    otherwise the first test (in the spec's order, the primary comparison first) that is
    neither supported nor contradicted, and the first test when there is none.
    """
    verdict = combine_verdicts(verdicts)
    if verdict == CONTRADICTED:
        return verdicts.index(CONTRADICTED)
    if verdict == SUPPORTED:
        pick = [i for i in range(len(verdicts)) if intervals[i] is not None]
        return max(pick, key=lambda i: _distance(*intervals[i], specs[i].direction, specs[i].margin))
    undecided = [i for i, v in enumerate(verdicts) if v not in (SUPPORTED, CONTRADICTED)]
    computed = [i for i in undecided if intervals[i] is not None]
    return (computed or undecided or [0])[0]


# ------------------------------------------------------------------------ statistics


def pool_mean(values_KP: np.ndarray) -> np.ndarray:
    """A mean metric pooled over ``K`` seeds: per problem, the mean of the seeds' values, shape ``(P,)``."""
    v = np.asarray(values_KP, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 1:
        raise ValueError(f"pool_mean: expected (K, P) with K >= 1, got shape {v.shape}")
    return v.mean(axis=0)


def pool_ratio(num_KP: np.ndarray, den_KP: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ratio metric pooled over seeds: per problem, the summed numerators and denominators."""
    num, den = np.asarray(num_KP, dtype=np.float64), np.asarray(den_KP, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 2:
        raise ValueError(f"pool_ratio: num and den must be (K, P) of one shape, got {num.shape}, {den.shape}")
    return num.sum(axis=0), den.sum(axis=0)


def spread_ci(
    values_MP: np.ndarray, B: int = M.DEFAULT_B, seed: int = 0, alpha: float = M.DEFAULT_ALPHA
) -> M.CI:
    """``max - min`` over the ``M`` rows of their means over problems, with a percentile interval.

    Every resample draws one set of problems for all rows (paired), through
    :func:`warmstart.metrics.resampled_sums`; the point is the spread of the means on the
    data itself. The spread of noisy means is biased upwards (it is >= 0 even for equal
    models), so a spread claim needs its interval below the margin, not a point below it.
    """
    v = np.asarray(values_MP, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"spread_ci: expected (M, P) with M >= 2 rows, got shape {v.shape}")
    means_BM = M.resampled_sums(v, B, seed) / v.shape[1]
    spread_B = means_BM.max(axis=1) - means_BM.min(axis=1)
    lo, hi = np.quantile(spread_B, [alpha / 2, 1 - alpha / 2])
    point = v.mean(axis=1)
    return M.CI(float(point.max() - point.min()), float(lo), float(hi))

"""The claims' verdict rules and statistics (warmstart.report.claims), on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from warmstart import metrics as M
from warmstart.report.claims import (
    CLAIMS,
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_TESTABLE,
    SUPPORTED,
    combine_verdicts,
    decisive_test,
    interval_verdict,
    pool_mean,
    pool_ratio,
    presupposed_verdict,
    seed_verdict,
    spread_ci,
)
from warmstart.report.claims import (
    TestSpec as Spec,
)


@pytest.mark.parametrize(
    ("lo", "hi", "direction", "margin", "want"),
    [
        (0.01, 0.05, "greater", 0.0, SUPPORTED),
        (-0.05, -0.01, "greater", 0.0, CONTRADICTED),
        (-0.01, 0.05, "greater", 0.0, INCONCLUSIVE),
        (0.0, 0.05, "greater", 0.0, INCONCLUSIVE),  # touching 0 is not excluding it
        (0.0, 0.0, "greater", 0.0, INCONCLUSIVE),  # one model twice
        (-0.05, -0.01, "less", 0.0, SUPPORTED),
        (0.01, 0.05, "less", 0.0, CONTRADICTED),
        (-0.01, 0.01, "less", 0.0, INCONCLUSIVE),
        (0.015, 0.045, "at_most", 0.05, SUPPORTED),
        (0.0, 0.05, "at_most", 0.05, SUPPORTED),  # the margin itself is allowed
        (0.06, 0.15, "at_most", 0.05, CONTRADICTED),
        (0.015, 0.15, "at_most", 0.05, INCONCLUSIVE),
        (-0.81, -0.30, "at_most", 0.5, SUPPORTED),  # an advantage below the margin (even negative) is gone
    ],
)
def test_interval_verdict(lo, hi, direction, margin, want):
    assert interval_verdict(lo, hi, direction, margin) == want


def test_interval_verdict_rejects_bad_input():
    with pytest.raises(ValueError, match="lo <= hi"):
        interval_verdict(0.2, 0.1, "greater")
    with pytest.raises(ValueError, match="unknown direction"):
        interval_verdict(0.1, 0.2, "sideways")


def test_seed_verdict_needs_every_seed_on_the_pooled_side():
    # one seed: the pooled verdict stands
    assert seed_verdict(SUPPORTED, [0.03], "greater") == (SUPPORTED, "")
    # three seeds all above 0
    assert seed_verdict(SUPPORTED, [0.03, 0.01, 0.05], "greater") == (SUPPORTED, "all 3 seeds agree")
    # one seed below 0: the training randomness can flip the sign
    assert seed_verdict(SUPPORTED, [0.03, -0.01, 0.05], "greater") == (
        INCONCLUSIVE,
        "seeds disagree (2 of 3 on the pooled side)",
    )
    # a seed exactly at 0 is on neither side
    assert seed_verdict(CONTRADICTED, [-0.02, 0.0], "greater")[0] == INCONCLUSIVE
    # at_most: every seed's spread must be within the margin
    assert seed_verdict(SUPPORTED, [0.02, 0.04], "at_most", 0.05)[0] == SUPPORTED
    assert seed_verdict(SUPPORTED, [0.02, 0.07], "at_most", 0.05)[0] == INCONCLUSIVE
    # an inconclusive pooled verdict is not changed by seeds
    assert seed_verdict(INCONCLUSIVE, [0.03, 0.04], "greater") == (INCONCLUSIVE, "")


def test_combine_and_presupposed_verdicts():
    assert combine_verdicts([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert combine_verdicts([SUPPORTED, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine_verdicts([SUPPORTED, CONTRADICTED, INCONCLUSIVE]) == CONTRADICTED
    assert combine_verdicts([SUPPORTED, NOT_TESTABLE]) == INCONCLUSIVE
    assert combine_verdicts([NOT_TESTABLE, NOT_TESTABLE]) == NOT_TESTABLE
    assert combine_verdicts([]) == NOT_TESTABLE
    assert presupposed_verdict(SUPPORTED, None, "") == (SUPPORTED, "")
    assert presupposed_verdict(SUPPORTED, SUPPORTED, "C4") == (SUPPORTED, "")
    assert presupposed_verdict(SUPPORTED, CONTRADICTED, "C4") == (
        NOT_TESTABLE,
        "presupposes C4, which is contradicted",
    )


def _spec(direction="greater", margin=0.0):
    return Spec("diff", "validation", "pass@1", direction, a="x", b="y", margin=margin)


def test_decisive_test_shows_the_test_behind_the_verdict():
    g = _spec()
    # contradicted: the first contradicting test
    assert (
        decisive_test(
            [SUPPORTED, CONTRADICTED, CONTRADICTED], [(0.1, 0.2), (-0.2, -0.1), (-0.3, -0.2)], [g] * 3
        )
        == 1
    )
    # supported: the weakest support (lowest lower bound for "greater")
    assert decisive_test([SUPPORTED, SUPPORTED], [(0.05, 0.2), (0.01, 0.3)], [g, g]) == 1
    # supported at_most: the interval whose upper bound is closest to the margin
    m = _spec("at_most", 0.05)
    assert decisive_test([SUPPORTED, SUPPORTED], [(0.0, 0.049), (0.0, 0.01)], [m, m]) == 0
    # inconclusive: the first undecided test, in spec order, skipping supported and uncomputed ones
    verdicts = [SUPPORTED, NOT_TESTABLE, INCONCLUSIVE, INCONCLUSIVE]
    assert decisive_test(verdicts, [(0.1, 0.2), None, (-0.1, 0.1), (0.0, 0.0)], [g] * 4) == 2
    assert decisive_test([NOT_TESTABLE, NOT_TESTABLE], [None, None], [g, g]) == 0


def test_pooling_seeds_per_problem():
    # two seeds, three problems: the mean of each problem's seed values
    np.testing.assert_allclose(pool_mean([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]), [0.5, 0.0, 1.0])
    # the token-weighted entropy: sums of entropy and of tokens per problem
    num, den = pool_ratio([[2.0, 3.0], [4.0, 1.0]], [[10, 20], [30, 10]])
    np.testing.assert_allclose(num, [6.0, 4.0])
    np.testing.assert_allclose(den, [40.0, 30.0])
    with pytest.raises(ValueError, match=r"\(K, P\)"):
        pool_mean([1.0, 2.0])
    with pytest.raises(ValueError, match="one shape"):
        pool_ratio([[1.0, 2.0]], [[1.0]])


def test_spread_ci_point_and_interval_by_brute_force():
    values_MP = np.array(
        [
            [1, 0, 1, 1, 0, 1, 0, 1],
            [0, 0, 1, 0, 0, 1, 0, 1],
            [1, 1, 1, 1, 0, 1, 1, 1],
        ],
        dtype=np.float64,
    )
    ci = spread_ci(values_MP, B=400, seed=3)
    # means 5/8, 3/8, 7/8: spread 4/8
    assert ci.point == pytest.approx(0.5)
    # the interval is the percentile interval of the spread over the very resamples metrics.py draws
    idx_BP = M.bootstrap_indices(8, B=400, seed=3)
    spreads = [np.ptp(values_MP[:, idx].mean(axis=1)) for idx in idx_BP]
    lo, hi = np.quantile(spreads, [0.025, 0.975])
    assert (ci.lo, ci.hi) == pytest.approx((lo, hi))
    # identical models: spread 0 in every resample
    same = spread_ci(np.stack([values_MP[0]] * 3), B=200)
    assert (same.point, same.lo, same.hi) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="M >= 2"):
        spread_ci(values_MP[:1])


def test_test_specs_are_checked():
    with pytest.raises(ValueError, match="needs roles a and b"):
        Spec("diff", "ood", "greedy_accuracy", "greater", a="opd")
    with pytest.raises(ValueError, match=">= 2 models"):
        Spec("spread", "ood", "greedy_accuracy", "at_most", models=("opd",), margin=0.05)
    with pytest.raises(ValueError, match="positive margin"):
        Spec("diff", "ood", "greedy_accuracy", "at_most", a="opd", b="base")


def test_the_claims_cover_the_papers_six_statements():
    keys = [c.key for c in CLAIMS if not c.optional]
    assert keys == ["C1", "C2", "C3", "C4", "C5", "C6"]
    by_key = {c.key: c for c in CLAIMS}
    # the band claims are spreads over the three Stage-1 arms / their endpoints
    assert by_key["C1"].tests[0].models == ("sft_early", "sft_over", "opd")
    assert by_key["C6"].tests[0].models == ("sft_early+grpo", "sft_over+grpo", "opd+grpo")
    # early vs over OOD, in the claimed directions
    assert [(t.a, t.b, t.direction) for t in by_key["C2"].tests] == [
        ("sft_early", "sft_over", "greater"),
        ("sft_early", "base", "greater"),
        ("sft_over", "base", "less"),
    ]
    assert by_key["C5"].presupposes == "C4"
    assert all(c.optional for c in CLAIMS if c.key.endswith("m"))

"""Tests for warmstart.metrics against hand-computed numbers and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from warmstart import metrics as M

# ------------------------------------------------------------------------------ pass@k


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that hold a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_of_all_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert M.pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (
                    n,
                    c,
                    k,
                )


def test_pass_at_k_hand_values():
    assert M.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert M.pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 = c/n
    assert M.pass_at_k(10, 0, 3) == 0.0
    assert M.pass_at_k(10, 10, 1) == 1.0
    assert M.pass_at_k(8, 6, 3) == 1.0  # only 2 wrong samples: every 3-subset has a correct one
    # large n, where C(n, k) overflows a float: 1 - C(999,500)/C(1000,500) = 1 - 500/1000
    assert M.pass_at_k(1000, 1, 500) == pytest.approx(0.5, abs=1e-12)


def test_pass_at_k_array_matches_scalar_with_mixed_n():
    n_P = [4, 4, 7, 7, 7, 16]
    c_P = [0, 4, 1, 3, 7, 5]
    for k in (1, 2, 4):
        expected = [M.pass_at_k(n, c, k) for n, c in zip(n_P, c_P)]
        np.testing.assert_allclose(M.pass_at_k_array(n_P, c_P, k), expected, atol=1e-14)


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 2, 5), (4, 2, 0)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        M.pass_at_k(n, c, k)
    with pytest.raises(ValueError):
        M.pass_at_k_array([n], [c], k)


# ------------------------------------------------------------------- diversity, entropy


def test_answer_diversity_small_example():
    # p = (1/2, 1/4, 1/4): H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    n_distinct, h = M.answer_diversity(["4", "4", "5", "none"])
    assert n_distinct == 3
    assert h == pytest.approx(1.5 * math.log(2))


def test_answer_diversity_edge_cases():
    assert M.answer_diversity(["7"] * 5) == (1, 0.0)
    n_distinct, h = M.answer_diversity(["a", "b", "c", "d"])
    assert n_distinct == 4 and h == pytest.approx(math.log(4))
    with pytest.raises(ValueError):
        M.answer_diversity([])


def test_token_entropy_summary_token_weighted_vs_sequence_mean():
    token_mean, seq_mean = M.token_entropy_summary([np.array([1.0, 2.0, 3.0]), [4.0]])
    assert token_mean == pytest.approx(10 / 4)  # all 4 tokens weigh the same
    assert seq_mean == pytest.approx((2.0 + 4.0) / 2)  # each sequence weighs the same
    # an empty sequence adds no token and is not in the sequence mean
    assert M.token_entropy_summary([[1.0, 3.0], []]) == pytest.approx((2.0, 2.0))
    assert all(math.isnan(x) for x in M.token_entropy_summary([[], []]))


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_indices_are_seeded_and_local():
    a = M.bootstrap_indices(17, B=2000, seed=3)
    assert a.shape == (2000, 17) and a.min() >= 0 and a.max() < 17
    np.random.seed(123)  # the global generator must not matter
    np.testing.assert_array_equal(a, M.bootstrap_indices(17, B=2000, seed=3))
    assert not np.array_equal(a, M.bootstrap_indices(17, B=2000, seed=4))


def test_bootstrap_counts_are_the_indices_counted():
    idx = M.bootstrap_indices(9, B=1500, seed=1)
    counts = M.bootstrap_counts(9, B=1500, seed=1)
    assert counts.shape == (1500, 9)
    assert np.all(counts.sum(axis=1) == 9)
    for b in (0, 1023, 1024, 1499):  # either side of the internal chunk boundary
        np.testing.assert_array_equal(counts[b], np.bincount(idx[b], minlength=9))


def test_bootstrap_ci_equals_naive_loop_over_resamples():
    values = np.array([0.0, 1.0, 1.0, 0.5, 0.25, 0.0, 1.0])
    idx = M.bootstrap_indices(len(values), B=3000, seed=7)
    naive_means = np.array([values[row].mean() for row in idx])
    ci = M.bootstrap_ci(values, B=3000, seed=7)
    assert ci.point == pytest.approx(values.mean())
    assert ci.lo == pytest.approx(np.quantile(naive_means, 0.025))
    assert ci.hi == pytest.approx(np.quantile(naive_means, 0.975))
    assert ci.lo < ci.point < ci.hi


def test_bootstrap_constant_values_give_a_degenerate_interval():
    ci = M.bootstrap_ci([0.25] * 12, B=500)
    assert ci == pytest.approx((0.25, 0.25, 0.25))


def test_bootstrap_many_rows_use_the_same_resamples():
    rng = np.random.default_rng(0)
    values_MP = rng.random((3, 25))
    point, lo, hi = M.bootstrap_many(values_MP, B=1000, seed=5)
    for m in range(3):
        ci = M.bootstrap_ci(values_MP[m], B=1000, seed=5)
        assert (point[m], lo[m], hi[m]) == pytest.approx(tuple(ci))


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    """300 simulated data sets of 100 Bernoulli(0.3) problems: the 95% interval should cover 0.3 ~95%."""
    p_true, covered = 0.3, 0
    data_rng = np.random.default_rng(2024)
    for i in range(300):
        values = (data_rng.random(100) < p_true).astype(float)
        ci = M.bootstrap_ci(values, B=1000, seed=i)
        covered += ci.lo <= p_true <= ci.hi
    assert 0.90 <= covered / 300 <= 0.98


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        M.bootstrap_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="no problems"):
        M.bootstrap_ci([])
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_ci([0.1, 0.2], alpha=1.5)


def test_bootstrap_ratio_is_a_ratio_of_resampled_sums():
    num = np.array([2.0, 4.0, 9.0, 1.0])
    den = np.array([1.0, 3.0, 6.0, 2.0])
    ci = M.bootstrap_ratio(num, den, B=2000, seed=2)
    assert ci.point == pytest.approx(16 / 12)  # not the mean of the ratios (1.33 vs 1.29)
    idx = M.bootstrap_indices(4, B=2000, seed=2)
    naive = np.array([num[r].sum() / den[r].sum() for r in idx])
    assert ci.lo == pytest.approx(np.quantile(naive, 0.025))
    assert ci.hi == pytest.approx(np.quantile(naive, 0.975))


# ------------------------------------------------------------------------------ paired


def test_paired_diff_of_identical_inputs_is_exactly_zero():
    a = np.random.default_rng(1).random(40)
    assert tuple(M.paired_diff_ci(a, a.copy(), B=2000)) == (0.0, 0.0, 0.0)
    num, den = a * 50, np.full(40, 50.0)
    assert tuple(M.paired_ratio_diff_ci(num, den, num, den, B=2000)) == (0.0, 0.0, 0.0)


def test_paired_diff_removes_shared_problem_difficulty():
    rng = np.random.default_rng(3)
    difficulty = rng.random(60)
    a = difficulty + 0.1
    b = difficulty
    ci = M.paired_diff_ci(a, b, B=1000)
    assert ci == pytest.approx((0.1, 0.1, 0.1))  # every problem moved by exactly 0.1
    unpaired_a, unpaired_b = M.bootstrap_ci(a, B=1000, seed=1), M.bootstrap_ci(b, B=1000, seed=2)
    assert unpaired_a.lo < unpaired_b.hi  # unpaired intervals overlap: the pairing is what shows the gain


def test_paired_diff_on_different_problems_names_both_inputs():
    a, b = [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]
    with pytest.raises(M.ProblemMismatchError, match=r"only in a .*'p2'.*only in b .*'q9'"):
        M.paired_diff_ci(a, b, ids_a=["p0", "p1", "p2"], ids_b=["p0", "p1", "q9"])
    with pytest.raises(M.ProblemMismatchError, match="different order"):
        M.paired_diff_ci(a, b, ids_a=["p0", "p1", "p2"], ids_b=["p1", "p0", "p2"])
    with pytest.raises(M.ProblemMismatchError, match="run_a.json.*run_b.json"):
        M.check_same_problems(["x"], ["y"], "run_a.json", "run_b.json")
    with pytest.raises(M.ProblemMismatchError):
        M.paired_diff_ci([1.0, 0.0], [1.0, 0.0, 1.0])
    # same ids in the same order: fine
    assert M.paired_diff_ci(
        a, b, B=100, ids_a=["p0", "p1", "p2"], ids_b=["p0", "p1", "p2"]
    ).point == pytest.approx(1 / 3)

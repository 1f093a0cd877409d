"""Tests for warmstart.losses against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from warmstart import losses as L
from warmstart.batch import TrainBatch
from warmstart.config import ConfigError, from_dict
from warmstart.rollout import Rollouts
from warmstart.scoring import TokenScores

# A 2x3 masked example shared by the aggregation tests:
#   loss = [[1, 2, 3],        mask = [[1, 1, 0],
#           [4, 5, 6]]                [1, 0, 0]]
# valid tokens: 1, 2 (row 0) and 4 (row 1).
LOSS_BT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK_BT = torch.tensor([[True, True, False], [True, False, False]])


def close(a: torch.Tensor | float, b: float, tol: float = 1e-6) -> bool:
    a = float(a.detach()) if isinstance(a, torch.Tensor) else float(a)
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


# --------------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------------


def test_grpo_on_2x3_rewards_uses_unbiased_std():
    rewards_GN = torch.tensor([[1.0, 0.0, 0.0], [2.0, 4.0, 6.0]])
    adv = L.grpo_advantages(rewards_GN, eps=0.0)
    # group 0: mean = 1/3; deviations = 2/3, -1/3, -1/3
    #   unbiased var = (4/9 + 1/9 + 1/9) / (3 - 1) = 1/3  ->  std = 1/sqrt(3)
    #   adv = (2/3) * sqrt(3) = 2/sqrt(3) = 1.1547005,  (-1/3) * sqrt(3) = -1/sqrt(3) = -0.5773503
    # group 1: mean = 4; deviations = -2, 0, 2; unbiased var = (4 + 0 + 4) / 2 = 4 -> std = 2
    #   adv = -1, 0, 1      (a population std, sqrt(8/3) = 1.633, would give -1.2247, 0, 1.2247)
    expected = torch.tensor([[2 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)], [-1.0, 0.0, 1.0]])
    torch.testing.assert_close(adv, expected)


def test_grpo_default_eps_is_added_to_std():
    adv = L.grpo_advantages(torch.tensor([[2.0, 4.0, 6.0]]))
    # std = 2 (above), eps = 1e-6: adv[0] = -2 / (2 + 1e-6)
    assert close(adv[0, 0], -2 / (2 + 1e-6), tol=1e-7)
    assert adv[0, 0] > -1.0  # eps shrinks the magnitude


def test_drgrpo_on_2x3_rewards_is_mean_centred_only():
    rewards_GN = torch.tensor([[1.0, 0.0, 0.0], [2.0, 4.0, 6.0]])
    adv = L.drgrpo_advantages(rewards_GN)
    # group 0: mean 1/3 -> 2/3, -1/3, -1/3; group 1: mean 4 -> -2, 0, 2
    expected = torch.tensor([[2 / 3, -1 / 3, -1 / 3], [-2.0, 0.0, 2.0]])
    torch.testing.assert_close(adv, expected)


@pytest.mark.parametrize("name", ["grpo", "drgrpo"])
def test_all_equal_groups_get_exactly_zero(name):
    # 0.1 is not exact in binary: the float mean of [0.1]*3 need not equal 0.1, so the
    # zero must come from the explicit rule, not from the arithmetic.
    rewards_GN = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.1, 0.1, 0.1], [1.0, 0.0, 1.0]])
    assert L.all_equal_groups(rewards_GN).tolist() == [True, True, True, False]
    adv = L.get(L.ADVANTAGES, name)(rewards_GN, eps=1e-6)
    assert torch.equal(adv[:3], torch.zeros(3, 3))
    assert adv[3].abs().sum() > 0  # the mixed group still gets a signal


@pytest.mark.parametrize("name", ["grpo", "drgrpo"])
def test_groups_of_size_one_get_zero(name):
    rewards_GN = torch.tensor([[1.0], [0.0], [0.5]])
    assert L.all_equal_groups(rewards_GN).tolist() == [True, True, True]
    adv = L.ADVANTAGES[name](rewards_GN, eps=1e-6)
    assert torch.equal(adv, torch.zeros(3, 1))  # no NaN from the N-1 = 0 std


def test_integer_rewards_are_accepted_and_bad_shape_rejected():
    adv = L.drgrpo_advantages(torch.tensor([[1, 0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5]]))
    with pytest.raises(ValueError, match="2-D"):
        L.grpo_advantages(torch.tensor([1.0, 0.0]))


# --------------------------------------------------------------------------------------------------
# Policy losses
# --------------------------------------------------------------------------------------------------

RATIOS = [0.5, 0.9, 1.1, 1.25, 1.5]


def ppo(ratios, adv, **kw):
    """ppo_clip on one row with old_logp = 0 and logp = log(ratio)."""
    logp = torch.tensor([ratios]).log().requires_grad_(True)
    loss, clipped = L.ppo_clip_loss(logp, torch.zeros_like(logp), torch.full_like(logp, adv), **kw)
    return logp, loss, clipped


def test_ppo_clip_positive_advantage_with_clip_higher():
    # A = +1, band [1 - 0.2, 1 + 0.28] = [0.8, 1.28]. loss = max(-r, -clip(r)).
    #   r=0.5 : max(-0.5, -0.8)  = -0.5   (unclipped: a lower ratio is never clipped for A > 0)
    #   r=0.9 : max(-0.9, -0.9)  = -0.9
    #   r=1.1 : max(-1.1, -1.1)  = -1.1
    #   r=1.25: max(-1.25,-1.25) = -1.25  (inside the higher band; clipped if clip_high were 0.2)
    #   r=1.5 : max(-1.5, -1.28) = -1.28  clipped
    logp, loss, clipped = ppo(RATIOS, 1.0, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-0.5, -0.9, -1.1, -1.25, -1.28]]))
    assert clipped.tolist() == [[False, False, False, False, True]]
    # gradient wrt logp: d(-A * r)/dlogp = -A * r where unclipped, 0 where clipped
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.9, -1.1, -1.25, 0.0]]))


def test_ppo_clip_symmetric_band_clips_1_25():
    # Same A = +1 but clip_high = 0.2: r = 1.25 -> max(-1.25, -1.2) = -1.2, clipped.
    _, loss, clipped = ppo(RATIOS, 1.0, clip_low=0.2, clip_high=0.2)
    torch.testing.assert_close(loss, torch.tensor([[-0.5, -0.9, -1.1, -1.2, -1.2]]))
    assert clipped.tolist() == [[False, False, False, True, True]]


def test_ppo_clip_negative_advantage():
    # A = -2, band [0.8, 1.28]. loss = max(2r, 2 clip(r)).
    #   r=0.5 : max(1.0, 1.6) = 1.6  clipped (pushing a bad token's ratio lower is capped)
    #   r=0.9 : 1.8;  r=1.1: 2.2;  r=1.25: 2.5
    #   r=1.5 : max(3.0, 2.56) = 3.0 (unclipped: a higher ratio for A < 0 is always penalised)
    logp, loss, clipped = ppo(RATIOS, -2.0, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[1.6, 1.8, 2.2, 2.5, 3.0]]))
    assert clipped.tolist() == [[True, False, False, False, False]]
    loss.sum().backward()
    # gradient = -A * r = 2r where unclipped
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.8, 2.2, 2.5, 3.0]]))


def test_ppo_dual_clip_caps_negative_advantage_only():
    # dual_clip = 3, band [0.8, 1.28].
    #   A = -2, r = 4  : max(8, 2.56) = 8 -> min(8, 2 * 3 = 6) = 6, clipped (dual)
    #   A = -2, r = 1.5: 3 < 6, untouched
    #   A = +2, r = 4  : max(-8, -2.56) = -2.56 (ordinary clip; dual-clip is for A < 0 only)
    logp = torch.tensor([[4.0, 1.5, 4.0]]).log().requires_grad_(True)
    adv = torch.tensor([[-2.0, -2.0, 2.0]])
    loss, clipped = L.ppo_clip_loss(logp, torch.zeros_like(logp), adv, 0.2, 0.28, dual_clip=3.0)
    torch.testing.assert_close(loss, torch.tensor([[6.0, 3.0, -2.56]]))
    assert clipped.tolist() == [[True, False, True]]
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 3.0, 0.0]]))
    # without dual clip the first token's loss is the unbounded 8
    loss_nd, _ = L.ppo_clip_loss(logp, torch.zeros_like(logp), adv, 0.2, 0.28, dual_clip=None)
    assert close(loss_nd[0, 0], 8.0)


def test_ppo_clip_rejects_bad_dual_clip():
    with pytest.raises(ValueError, match="dual_clip"):
        ppo([1.0], -1.0, dual_clip=1.0)


def test_vanilla_pg_is_minus_adv_times_logp_and_matches_ppo_gradient_on_policy():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv = torch.tensor([[2.0, -1.0, 0.5]])
    loss, clipped = L.vanilla_pg_loss(logp, logp.detach(), adv)
    # -A * logp = [-2 * -1, 1 * -2, -0.5 * -0.5] = [2, -2, 0.25]
    torch.testing.assert_close(loss, torch.tensor([[2.0, -2.0, 0.25]]))
    assert not clipped.any()
    (g_pg,) = torch.autograd.grad(loss.sum(), logp)
    ppo_loss, _ = L.ppo_clip_loss(logp, logp.detach(), adv)  # ratio = 1
    (g_ppo,) = torch.autograd.grad(ppo_loss.sum(), logp)
    torch.testing.assert_close(g_pg, -adv)  # d(-A logp)/dlogp = -A
    torch.testing.assert_close(g_ppo, g_pg)


# --------------------------------------------------------------------------------------------------
# Aggregations
# --------------------------------------------------------------------------------------------------


def test_token_mean():
    # (1 + 2 + 4) / 3 valid tokens = 7/3
    assert close(L.AGGREGATIONS["token-mean"](LOSS_BT, MASK_BT), 7 / 3)


def test_seq_mean_token_sum():
    # row sums: 1 + 2 = 3, 4 -> mean (3 + 4) / 2 = 3.5
    assert close(L.AGGREGATIONS["seq-mean-token-sum"](LOSS_BT, MASK_BT), 3.5)


def test_seq_mean_token_mean():
    # row means: 3 / 2 = 1.5, 4 / 1 = 4 -> mean (1.5 + 4) / 2 = 2.75
    assert close(L.AGGREGATIONS["seq-mean-token-mean"](LOSS_BT, MASK_BT), 2.75)


def test_seq_mean_token_sum_norm():
    # norm = 3: 3 / 3 = 1, 4 / 3 -> mean (1 + 4/3) / 2 = 7/6
    assert close(L.AGGREGATIONS["seq-mean-token-sum-norm"](LOSS_BT, MASK_BT, norm=3.0), 7 / 6)
    with pytest.raises(ValueError, match="norm"):
        L.seq_mean_token_sum_norm(LOSS_BT, MASK_BT)


def test_token_mean_denom_makes_micro_batches_add_up():
    # denom overrides the count: 7 / 6 instead of 7 / 3
    assert close(L.token_mean(LOSS_BT, MASK_BT, denom=6), 7 / 6)
    # two micro-batches (one row each) with the global count 3 sum to the full-batch 7/3:
    #   row 0: 3 / 3 = 1, row 1: 4 / 3  -> 7/3
    parts = [L.token_mean(LOSS_BT[i : i + 1], MASK_BT[i : i + 1], denom=3) for i in range(2)]
    assert close(sum(parts), 7 / 3)
    # the same for the per-sequence aggregations with the global number of sequences (2)
    parts = [L.seq_mean_token_mean(LOSS_BT[i : i + 1], MASK_BT[i : i + 1], denom=2) for i in range(2)]
    assert close(sum(parts), 2.75)
    with pytest.raises(ValueError, match="denom"):
        L.token_mean(LOSS_BT, MASK_BT, denom=0)


@pytest.mark.parametrize("agg", sorted(L.AGGREGATIONS))
def test_empty_rows_and_padding_garbage_do_not_produce_nan(agg):
    # row 1 has no valid token and NaN/inf padding; row 0 = [1, 2, 3] all valid.
    loss = torch.tensor([[1.0, 2.0, 3.0], [float("nan"), float("inf"), -float("inf")]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    out = L.AGGREGATIONS[agg](loss, mask, norm=3.0)
    # the empty row is not counted as a sequence:
    #   token-mean 6/3 = 2; seq-mean-token-sum 6; seq-mean-token-mean 2; sum-norm 6/3 = 2
    expected = {"token-mean": 2.0, "seq-mean-token-sum": 6.0, "seq-mean-token-mean": 2.0}
    assert close(out, expected.get(agg, 2.0))
    out.backward()
    assert torch.isfinite(loss.grad).all()
    assert torch.equal(loss.grad[1], torch.zeros(3))
    # nothing valid at all: exactly 0, still differentiable
    none = L.AGGREGATIONS[agg](loss, torch.zeros_like(mask), norm=3.0)
    assert float(none.detach()) == 0.0 and none.requires_grad


# --------------------------------------------------------------------------------------------------
# KL estimators
# --------------------------------------------------------------------------------------------------

KL_LOGP = torch.tensor([[-1.0, -2.0, -0.5]])
KL_REF = torch.tensor([[-1.5, -1.0, -0.5]])


def test_k1_k2_k3_values():
    # d = logp - ref = [0.5, -1.0, 0.0]
    torch.testing.assert_close(L.kl_k1(KL_LOGP, KL_REF), torch.tensor([[0.5, -1.0, 0.0]]))
    # 0.5 d^2 = [0.125, 0.5, 0]
    torch.testing.assert_close(L.kl_k2(KL_LOGP, KL_REF), torch.tensor([[0.125, 0.5, 0.0]]))
    # x = ref - logp = [-0.5, 1.0, 0]; e^x - x - 1:
    #   e^-0.5 + 0.5 - 1 = 0.6065307 - 0.5 = 0.1065307;  e - 1 - 1 = 0.7182818;  1 - 0 - 1 = 0
    torch.testing.assert_close(L.kl_k3(KL_LOGP, KL_REF), torch.tensor([[0.1065307, 0.7182818, 0.0]]))


def test_low_var_kl_is_an_alias_of_k3():
    assert L.get("kl_estimators", "low_var_kl") is L.kl_k3
    assert L.KL_ESTIMATORS["low_var_kl"] is L.KL_ESTIMATORS["k3"]


def test_k3_clamps_the_log_ratio():
    logp = torch.tensor([[0.0, -100.0]])
    ref = torch.tensor([[-100.0, 0.0]])
    # x = ref - logp = [-100, 100], clamped to [-20, 20]:
    #   e^-20 + 20 - 1 = 19.000000002;  e^20 - 20 - 1 = 485165195.4 - 21 = 485165174.4
    k3 = L.kl_k3(logp, ref)
    assert close(k3[0, 0], 19.0) and close(k3[0, 1], math.exp(20) - 21)
    # without the clamp: e^-100 + 100 - 1 = 99, and e^100 overflows float32 to inf
    raw = L.kl_k3(logp, ref, clamp=None)
    assert close(raw[0, 0], 99.0) and math.isinf(float(raw[0, 1]))


def test_k3_is_nonnegative_and_matches_float64_on_random_values():
    gen = torch.Generator().manual_seed(1234)
    # log-ratios at several scales, including ~1e-7 where exp(x) - x - 1 rounds below 0 in float32
    scales = torch.tensor([1e-8, 1e-7, 1e-5, 1e-2, 1.0, 10.0]).repeat_interleave(2000)
    ref = -torch.rand(scales.shape, generator=gen) * 5
    logp = ref + (torch.rand(scales.shape, generator=gen) * 2 - 1) * scales
    k3 = L.kl_k3(logp, ref)
    assert (k3 >= 0).all()
    x = ref.double() - logp.double()
    torch.testing.assert_close(k3.double(), x.exp() - x - 1, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Registry lookup
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "name", "valid"),
    [
        (L.ADVANTAGES, "ppo", ["drgrpo", "grpo"]),
        ("policy_losses", "ppo", ["ppo_clip", "vanilla_pg"]),
        (L.AGGREGATIONS, "mean", ["seq-mean-token-mean", "seq-mean-token-sum", "token-mean"]),
        ("kl_estimators", "k4", ["k1", "k2", "k3", "low_var_kl"]),
        ("objectives", "pg", ["policy_gradient"]),
    ],
)
def test_unknown_name_lists_valid_names(registry, name, valid):
    with pytest.raises(ValueError) as info:
        L.get(registry, name)
    msg = str(info.value)
    assert repr(name) in msg
    assert all(v in msg for v in valid)


def test_unknown_registry_and_unknown_names_in_composites():
    with pytest.raises(ValueError, match="kl_estimators"):
        L.get("kl", "k1")
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ppo_clip"):
        L.policy_gradient_loss(x, x, x, x.bool(), loss="ppo")
    with pytest.raises(ValueError, match="token-mean"):
        L.entropy_bonus(x, x.bool(), 0.1, agg="tokenmean")


# --------------------------------------------------------------------------------------------------
# Entropy bonus and OPD advantage
# --------------------------------------------------------------------------------------------------


def test_entropy_bonus_is_negative_coef_times_aggregated_entropy():
    # token-mean of the 2x3 example = 7/3 -> -0.01 * 7/3; seq-mean-token-mean = 2.75 -> -0.0275
    assert close(L.entropy_bonus(LOSS_BT, MASK_BT, 0.01), -0.01 * 7 / 3)
    assert close(L.entropy_bonus(LOSS_BT, MASK_BT, 0.01, agg="seq-mean-token-mean"), -0.0275)


def test_reverse_kl_advantage():
    student = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    teacher = torch.tensor([[-0.5, -2.5, -3.0]])
    mask = torch.tensor([[True, True, False]])
    adv = L.reverse_kl_advantage(student, teacher, mask)
    # -(s - t): -(-1 + 0.5) = 0.5,  -(-2 + 2.5) = -0.5,  padding -> 0
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, 0.0]]))
    assert not adv.requires_grad  # an advantage is a constant


# --------------------------------------------------------------------------------------------------
# policy_gradient_loss
# --------------------------------------------------------------------------------------------------


def _logp_from_logits(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3), generator=gen)
    logp = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    return logits, logp


@pytest.mark.parametrize("loss_name", ["ppo_clip", "vanilla_pg"])
def test_sft_gradient_equals_mean_nll_gradient(loss_name):
    logits, logp = _logp_from_logits()
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss, stats = L.policy_gradient_loss(
        logp, logp.detach(), torch.ones(2, 3), mask, loss=loss_name, agg="token-mean"
    )
    (g,) = torch.autograd.grad(loss, logits, retain_graph=True)  # logp's graph is reused below
    nll = -(logp * mask).sum() / mask.sum()  # mean NLL over the 5 valid tokens
    (g_ref,) = torch.autograd.grad(nll, logits)
    torch.testing.assert_close(g, g_ref)
    assert stats == {"clip_frac": 0.0, "num_tokens": 5.0}
    if loss_name == "vanilla_pg":
        assert close(loss, float(nll.detach()))


def test_policy_gradient_loss_clip_frac_and_adv_B_broadcast():
    # row 0 = the five ratios of the clip-higher test with A = +1: only r = 1.5 is clipped;
    # row 1 is padding. clip_frac = 1 / 5; token-mean loss = (-0.5-0.9-1.1-1.25-1.28)/5 = -1.006
    logp = torch.tensor([RATIOS, [1.0] * 5]).log()
    mask = torch.tensor([[True] * 5, [False] * 5])
    loss, stats = L.policy_gradient_loss(
        logp, torch.zeros(2, 5), torch.tensor([1.0, 7.0]), mask, clip_low=0.2, clip_high=0.28
    )
    assert close(loss, -1.006)
    assert close(stats["clip_frac"], 0.2) and stats["num_tokens"] == 5.0


@pytest.mark.parametrize("loss_name", ["ppo_clip", "vanilla_pg"])
@pytest.mark.parametrize("agg", sorted(L.AGGREGATIONS))
def test_gradients_finite_with_all_masked_row_and_garbage_padding(loss_name, agg):
    logits, logp = _logp_from_logits(seed=1)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    # garbage where masked: -inf log-probs, NaN advantages, inf old log-probs
    pad = ~mask
    logp = torch.where(pad, torch.full_like(logp, -float("inf")), logp)
    old = torch.where(pad, torch.full_like(logp, float("inf")), logp.detach() - 0.1)
    adv = torch.where(pad, torch.full_like(logp, float("nan")), torch.tensor([[1.0, -1.0, 0.0]] * 2))
    loss, stats = L.policy_gradient_loss(
        logp, old, adv, mask, loss=loss_name, agg=agg, norm=3.0, dual_clip=3.0
    )
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[1], torch.zeros(3, 5))  # the empty row gets no gradient
    assert logits.grad[0, :2].abs().sum() > 0  # the valid tokens do
    assert stats["num_tokens"] == 2.0


def test_policy_gradient_loss_rejects_mismatched_shapes():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="adv"):
        L.policy_gradient_loss(x, x, torch.zeros(3), x.bool())
    with pytest.raises(ValueError, match="same shape"):
        L.policy_gradient_loss(x, torch.zeros(2, 4), x, x.bool())


# --------------------------------------------------------------------------------------------------
# masked_mean and aggregation_denom
# --------------------------------------------------------------------------------------------------


def test_masked_mean_is_token_weighted_and_zero_safe():
    # valid tokens of the 2x3 example: 1, 2 (row 0) and 4 (row 1): (1 + 2 + 4) / 3 = 7/3,
    # not the mean of row means ((1.5 + 4) / 2 = 2.75)
    assert close(L.masked_mean(LOSS_BT, MASK_BT), 7 / 3)
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert L.masked_mean(LOSS_BT, empty).item() == 0.0  # 0 / max(1, 0), not NaN
    with pytest.raises(ValueError, match="same shape"):
        L.masked_mean(LOSS_BT, MASK_BT[:, :2])


def test_masked_mean_keeps_the_reduction_of_the_logged_means():
    # the expression the stages logged before it existed, to the bit
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 13, generator=gen)
    m = torch.rand(7, 13, generator=gen) > 0.3
    assert L.masked_mean(x, m).item() == ((x * m).sum() / m.sum().clamp(min=1)).item()


def test_aggregation_denom_counts_tokens_or_nonempty_rows():
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, False]])
    assert L.aggregation_denom("token-mean", mask) == 3  # 2 + 0 + 1 valid tokens
    for agg in ("seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert L.aggregation_denom(agg, mask) == 2  # rows 0 and 2; the empty row does not count
    with pytest.raises(ValueError, match="token-mean"):
        L.aggregation_denom("mean", mask)


# --------------------------------------------------------------------------------------------------
# Objectives: what the trainer backpropagates
# --------------------------------------------------------------------------------------------------


def _rollouts(mask_BT: torch.Tensor) -> Rollouts:
    """Rows with only what the losses read (the response mask); no prompts are needed here."""
    B, T = mask_BT.shape
    return Rollouts(
        prompts=None,
        prompt_index_B=torch.arange(B),
        response_ids_BT=torch.zeros(B, T, dtype=torch.long),
        response_mask_BT=mask_BT,
        logp_BT=torch.zeros(B, T),
        entropy_BT=torch.zeros(B, T),
        finish_reason_B=["stop"] * B,
        texts_B=[""] * B,
    )


def test_policy_gradient_objective_is_the_sum_of_its_terms():
    logits, logp = _logp_from_logits(seed=2)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    adv = torch.tensor([[1.0, -0.5, 0.0], [2.0, 0.0, 0.0]])
    ref = logp.detach() - 0.3
    old = logp.detach() + 0.1
    cfg = L.LossConfig(kl_coef=0.1, kl_estimator="k1", entropy_coef=0.01, clip_low=0.05, clip_high=0.05)
    batch = TrainBatch(_rollouts(mask), adv, old_logp_BT=old, ref_logp_BT=ref)
    loss, stats = L.policy_gradient_objective(batch, TokenScores(logp, entropy), cfg, denom=3)
    pg, pg_stats = L.policy_gradient_loss(logp, old, adv, mask, clip_low=0.05, clip_high=0.05, denom=3)
    # k1 = logp - ref = 0.3 on every token: token-mean = 0.3 (3 valid tokens / denom 3)
    assert close(stats["kl"], 0.3, tol=1e-6)
    expected = pg + 0.1 * 0.3 - 0.01 * L.token_mean(entropy, mask, denom=3)
    assert close(loss, float(expected.detach()), tol=1e-6)
    assert stats["pg_loss"] == float(pg.detach())
    # ratio = exp(-0.1) = 0.905, below the band [0.95, 1.05] on all 3 valid tokens: for the two
    # A > 0 tokens the unclipped term wins the max, for the A = -0.5 token the clipped one does
    # -> 1 clipped token of 3
    assert pg_stats["clip_frac"] == pytest.approx(1 / 3)
    assert stats["clipped_tokens"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="ref_logp_BT"):
        L.policy_gradient_objective(TrainBatch(_rollouts(mask), adv), TokenScores(logp, None), cfg, 3)


def _sum_logp_objective(batch, scores, cfg, denom):
    """A toy directly-backpropagated loss: the NLL of each token weighted by its teacher_logp_BT entry."""
    del cfg
    loss_BT = -scores.logp_BT * batch.teacher_logp_BT
    return L.token_mean(loss_BT, batch.mask_BT, denom=denom), {"kl": 0.5}


def test_a_registered_objective_is_selected_by_config_and_backpropagated_directly(monkeypatch):
    monkeypatch.setitem(L.OBJECTIVES, "toy_weighted_nll", _sum_logp_objective)
    cfg = from_dict(L.LossConfig, {"objective": "toy_weighted_nll"})
    mask = torch.tensor([[True, True, False], [True, False, False]])
    logp = torch.tensor([[-1.0, -2.0, -7.0], [-0.5, -9.0, -9.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 3.0, 100.0], [4.0, 100.0, 100.0]])
    batch = TrainBatch(_rollouts(mask), torch.zeros(2, 3), teacher_logp_BT=teacher)
    denom = L.aggregation_denom(cfg.agg, mask)  # 3 valid tokens
    loss, stats = L.get("objectives", cfg.objective)(batch, TokenScores(logp, None), cfg, denom)
    # loss = -(-1 * 2 + -2 * 3 + -0.5 * 4) / 3 = 10 / 3; d loss / d logp = -teacher / 3 on valid tokens
    assert close(loss, 10 / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2 / 3, -1.0, 0.0], [-4 / 3, 0.0, 0.0]]))
    assert stats == {"kl": 0.5}


def test_loss_config_rejects_an_unknown_objective():
    with pytest.raises(ConfigError, match="policy_gradient"):
        from_dict(L.LossConfig, {"objective": "dense_kl"})

"""Pure loss and advantage math, behind registries keyed by config strings.

Everything here is a plain function of tensors (the objectives read them from a
typed `TrainBatch` and `TokenScores`): no models, no optimisers, no state, and
`LossConfig`, the config that names them. Stages pick functions by the names in their configs through `get`, so an
unknown name fails early with the list of valid ones.

Shapes use suffixes: `B` rows (sequences), `T` response tokens, `G` groups
(prompts) of `N` samples each. `mask_BT` is True on real response tokens.

Sign convention: every `loss` returned here is minimised. Advantages are
constants: they never carry gradient (they are detached where they enter).

Registries:
    ADVANTAGES      "grpo" | "drgrpo"                 (rewards_GN, eps) -> adv_GN
    POLICY_LOSSES   "ppo_clip" | "vanilla_pg"         (logp_BT, old_logp_BT, adv_BT, clip_low, clip_high,
                                                       dual_clip) -> (loss_BT, clipped_BT)
    AGGREGATIONS    "token-mean" | "seq-mean-token-sum" | "seq-mean-token-mean" | "seq-mean-token-sum-norm"
                                                      (loss_BT, mask_BT, norm=None, denom=None) -> scalar
    KL_ESTIMATORS   "k1" | "k2" | "k3" (alias "low_var_kl")
                                                      (logp_BT, ref_logp_BT, clamp=...) -> kl_BT
    OBJECTIVES      "policy_gradient"                 (batch, scores, cfg, denom) -> (loss, stats)
    OPD_ESTIMATORS  "sampled_rkl"                     (student_logp_BT, teacher_logp_BT, mask_BT) -> adv_BT
                    "full_rkl" | "topk_fkl" | "topk_rkl"
                                                      (student_logq_BTV, teacher_logq_BTV, mask_BT, k) -> kl_BT

`OBJECTIVES` (picked by `LossConfig.objective`) is what the trainer backpropagates;
`policy_gradient` composes the registries above. A loss backpropagated directly (a
dense distillation KL) is one more entry: a function here + its `OBJECTIVES` entry
(+ `LossConfig` fields for its knobs) + its test + `loss.objective = "<name>"`.

`policy_gradient_loss` composes a policy loss and an aggregation; SFT, OPD and
GRPO all train with it and differ only in the advantage they pass:
    SFT:  adv = 1, old_logp = logp.detach()        -> gradient of the mean NLL
    OPD:  adv = reverse_kl_advantage(student, teacher, mask)   (estimator "sampled_rkl"; the dense
          OPD_ESTIMATORS are a loss of their own: docs/OPD_ESTIMATORS.md)
    GRPO: adv = ADVANTAGES[...](rewards_GN) broadcast over each row's tokens
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from warmstart.config import ConfigError

if TYPE_CHECKING:
    from warmstart.batch import TrainBatch
    from warmstart.scoring import TokenScores

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "DENSE_OPD_ESTIMATORS",
    "KL_ESTIMATORS",
    "KL_LOG_RATIO_CLAMP",
    "OBJECTIVES",
    "OBJECTIVE_STATS",
    "OPD_ESTIMATORS",
    "POLICY_LOSSES",
    "REGISTRIES",
    "TOPK_OPD_ESTIMATORS",
    "LossConfig",
    "aggregation_denom",
    "all_equal_groups",
    "drgrpo_advantages",
    "entropy_bonus",
    "full_reverse_kl",
    "get",
    "grpo_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "mixture_logp",
    "opd_reward_advantage",
    "policy_gradient_loss",
    "policy_gradient_objective",
    "ppo_clip_loss",
    "reverse_kl_advantage",
    "seq_mean_token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_sum_norm",
    "token_mean",
    "topk_forward_kl",
    "topk_reverse_kl",
    "vanilla_pg_loss",
]


# --------------------------------------------------------------------------------------------------
# Advantages: rewards_GN -> adv_GN
# --------------------------------------------------------------------------------------------------


def _check_rewards(rewards_GN: Tensor) -> Tensor:
    if rewards_GN.dim() != 2:
        raise ValueError(
            f"rewards_GN must be 2-D (G groups x N samples), got shape {tuple(rewards_GN.shape)}"
        )
    # Rewards are data, not a differentiable quantity; integer/bool rewards are fine.
    rewards_GN = rewards_GN.detach()
    if not rewards_GN.is_floating_point():
        rewards_GN = rewards_GN.to(torch.float32)
    return rewards_GN


def all_equal_groups(rewards_GN: Tensor) -> Tensor:
    """Which groups have every sample's reward equal (exact comparison): BoolTensor_G.

    Such a group carries no learning signal under a group baseline (every
    sample is exactly as good as the mean), so its advantages are exactly 0.
    A group of size 1 is trivially all-equal. Trainers log the fraction of
    these groups (`frac_all_equal_groups`): when it nears 1, the batch teaches
    nothing.
    """
    rewards_GN = _check_rewards(rewards_GN)
    if rewards_GN.shape[1] == 0:
        return torch.ones(rewards_GN.shape[0], dtype=torch.bool, device=rewards_GN.device)
    return (rewards_GN == rewards_GN[:, :1]).all(dim=1)


def grpo_advantages(rewards_GN: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO group-normalised advantage (Shao et al., 2024, DeepSeekMath).

    For each group g (one prompt, N samples):
        A[g, i] = (r[g, i] - mean_g(r)) / (std_g(r) + eps)
    with std the *unbiased* (Bessel-corrected, divide by N - 1) sample standard
    deviation, i.e. `torch.std(..., correction=1)`. That is what verl's
    `compute_grpo_outcome_advantage` (and EasyR1, which follows it) uses; a
    population std would scale every advantage by sqrt(N / (N - 1)).

    Why: the group mean is a baseline that needs no value network; dividing by
    the std makes the advantage scale-free across prompts.

    Rule: groups whose rewards are all equal (including N = 1) get advantage
    exactly 0. Without this, float rounding in the mean can leave tiny
    nonzero numerators; and for N = 1 the unbiased std is undefined. (verl
    instead uses mean 0, std 1 for a singleton, i.e. A = r; we depart from that
    on purpose: a lone sample has no group to be compared with.)
    """
    rewards_GN = _check_rewards(rewards_GN)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    same_G = all_equal_groups(rewards_GN)
    if rewards_GN.shape[1] < 2:
        return torch.zeros_like(rewards_GN)
    mean_G1 = rewards_GN.mean(dim=1, keepdim=True)
    std_G1 = rewards_GN.std(dim=1, keepdim=True, correction=1)
    adv_GN = (rewards_GN - mean_G1) / (std_G1 + eps)
    return torch.where(same_G[:, None], torch.zeros_like(adv_GN), adv_GN)


def drgrpo_advantages(rewards_GN: Tensor, eps: float = 1e-6) -> Tensor:
    """Dr.GRPO advantage (Liu et al., 2025, "Understanding R1-Zero-Like Training").

        A[g, i] = r[g, i] - mean_g(r)

    No std division: dividing by the group std up-weights prompts that are
    nearly always solved or nearly always failed (small std), a
    difficulty-level bias the Dr.GRPO paper removes. `eps` is accepted for a
    uniform registry signature and unused. All-equal groups (and N = 1) give
    exactly 0, as in `grpo_advantages`.
    """
    del eps  # unused: no division
    rewards_GN = _check_rewards(rewards_GN)
    same_G = all_equal_groups(rewards_GN)
    if rewards_GN.shape[1] < 2:
        return torch.zeros_like(rewards_GN)
    adv_GN = rewards_GN - rewards_GN.mean(dim=1, keepdim=True)
    return torch.where(same_G[:, None], torch.zeros_like(adv_GN), adv_GN)


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
}


# --------------------------------------------------------------------------------------------------
# Per-token policy losses: -> (loss_BT, clipped_BT)
# --------------------------------------------------------------------------------------------------


def ppo_clip_loss(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate, per token (Schulman et al., 2017), with clip-higher and dual-clip.

        ratio = exp(logp - old_logp)
        loss  = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))
        if dual_clip is not None and A < 0:
            loss = min(loss, -A * dual_clip)

    Why: the max of the two terms is a pessimistic bound that removes the
    incentive to move the ratio outside the trust band [1 - clip_low,
    1 + clip_high]; tokens there get zero gradient.
    `clip_high > clip_low` is DAPO's "clip-higher": it lets low-probability
    tokens with A > 0 grow further, which keeps entropy from collapsing.
    Dual-clip (Ye et al., 2020) caps the loss of A < 0 tokens whose ratio has
    exploded (the plain PPO loss is unbounded there); needs dual_clip > 1.

    Returns `(loss_BT, clipped_BT)`; `clipped_BT` is True where clipping was
    active, i.e. the clipped term strictly won the max or the dual-clip cap
    applied: exactly the tokens whose gradient is zeroed. Callers average it
    over valid tokens to log `clip_frac`. Padding is not masked here.
    """
    if clip_low < 0 or clip_high < 0:
        raise ValueError(f"clip_low and clip_high must be >= 0, got {clip_low}, {clip_high}")
    if clip_low >= 1:
        raise ValueError(f"clip_low must be < 1 (the band's lower edge is 1 - clip_low), got {clip_low}")
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (or None to disable), got {dual_clip}")
    adv_BT = adv_BT.detach()
    ratio_BT = torch.exp(logp_BT - old_logp_BT.detach())
    unclipped_BT = -adv_BT * ratio_BT
    clipped_term_BT = -adv_BT * torch.clamp(ratio_BT, 1.0 - clip_low, 1.0 + clip_high)
    loss_BT = torch.maximum(unclipped_BT, clipped_term_BT)
    clipped_BT = clipped_term_BT > unclipped_BT
    if dual_clip is not None:
        cap_BT = -adv_BT * dual_clip
        dual_BT = (adv_BT < 0) & (loss_BT > cap_BT)
        loss_BT = torch.where(dual_BT, cap_BT, loss_BT)
        clipped_BT = clipped_BT | dual_BT
    return loss_BT, clipped_BT.detach()


def vanilla_pg_loss(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """On-policy REINFORCE loss, per token: loss = -A * logp.

    Why: the plain policy gradient, grad = -A * grad(logp). For on-policy data
    (ratio = 1) its gradient equals `ppo_clip_loss`'s, since
    grad(-A * ratio) = -A * ratio * grad(logp). With A = 1 it is the NLL, so
    SFT is this loss. `old_logp_BT` and the clip arguments are accepted for a
    uniform registry signature and ignored; `clipped_BT` is all False.
    Note the loss *value* is -A * logp, not -A * ratio.
    """
    del old_logp_BT, clip_low, clip_high, dual_clip  # not used by REINFORCE
    loss_BT = -adv_BT.detach() * logp_BT
    return loss_BT, torch.zeros_like(loss_BT, dtype=torch.bool)


POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "ppo_clip": ppo_clip_loss,
    "vanilla_pg": vanilla_pg_loss,
}


# --------------------------------------------------------------------------------------------------
# Aggregations: (loss_BT, mask_BT, norm=None, denom=None) -> scalar
# --------------------------------------------------------------------------------------------------
#
# Masked positions are *selected away* with torch.where (not multiplied by 0), so NaN or inf in
# padding cannot leak into the value. Rows with no valid token contribute 0 and are not counted as
# sequences. When nothing is valid the result is an exact 0 that still backpropagates (zeros).
#
# `denom` overrides the default denominator, so that gradient accumulation over micro-batches and
# data-parallel processes give the same loss as one big batch: the trainer computes the global
# denominator once per optimiser step (all micro-batches, all processes) and passes it to every
# micro-batch; the per-micro-batch losses (and gradients, summed over processes) add up to it.

Denom = float | Tensor | None  # an aggregation's denominator override; None: the micro-batch's own count


def _check_loss_mask(loss_BT: Tensor, mask_BT: Tensor) -> Tensor:
    if loss_BT.shape != mask_BT.shape or loss_BT.dim() != 2:
        raise ValueError(
            f"loss_BT and mask_BT must be 2-D with the same shape, got {tuple(loss_BT.shape)} "
            f"and {tuple(mask_BT.shape)}"
        )
    return mask_BT.bool()


def _check_denom(denom: Denom, what: str) -> None:
    if denom is not None and float(denom) <= 0:
        raise ValueError(f"denom ({what}) must be > 0, got {float(denom)}")


def _masked(loss_BT: Tensor, mask_BT: Tensor) -> Tensor:
    return torch.where(mask_BT, loss_BT, torch.zeros_like(loss_BT))


def _seq_mean(per_seq_B: Tensor, mask_BT: Tensor, denom: Denom) -> Tensor:
    """Mean over rows that have at least one valid token (or sum / denom)."""
    _check_denom(denom, "the global number of non-empty sequences")
    nonempty_B = mask_BT.any(dim=1)
    total = torch.where(nonempty_B, per_seq_B, torch.zeros_like(per_seq_B)).sum()
    if denom is None:
        denom = nonempty_B.sum().clamp_min(1)
    return total / denom


def token_mean(loss_BT: Tensor, mask_BT: Tensor, norm: float | None = None, denom: Denom = None) -> Tensor:
    """Token-level mean: sum of the loss over all valid tokens / number of valid tokens.

        L = sum_{b,t} m[b,t] * loss[b,t] / sum_{b,t} m[b,t]

    Why: every token weighs the same, whatever the length of its sequence
    (DAPO's token-level loss); long responses are not down-weighted.
    `denom` replaces the local token count: the trainer passes the *global*
    number of valid tokens of the optimiser step (all micro-batches and
    processes), so accumulated micro-batch losses add up to the one-big-batch
    token mean. `norm` is ignored (uniform signature).
    """
    del norm
    mask_BT = _check_loss_mask(loss_BT, mask_BT)
    _check_denom(denom, "the global number of valid tokens")
    total = _masked(loss_BT, mask_BT).sum()
    if denom is None:
        denom = mask_BT.sum().clamp_min(1)
    return total / denom


def seq_mean_token_sum(
    loss_BT: Tensor, mask_BT: Tensor, norm: float | None = None, denom: Denom = None
) -> Tensor:
    """Sum over each sequence's valid tokens, then mean over sequences.

        L = (1 / B') * sum_b sum_t m[b,t] * loss[b,t]     (B' = rows with a valid token)

    Why: the exact Monte-Carlo REINFORCE estimate of the sequence-level
    objective (longer sequences weigh more). `denom` replaces B' (the global
    number of non-empty sequences, for accumulation). `norm` is ignored.
    """
    del norm
    mask_BT = _check_loss_mask(loss_BT, mask_BT)
    return _seq_mean(_masked(loss_BT, mask_BT).sum(dim=1), mask_BT, denom)


def seq_mean_token_mean(
    loss_BT: Tensor, mask_BT: Tensor, norm: float | None = None, denom: Denom = None
) -> Tensor:
    """Mean over each sequence's valid tokens, then mean over sequences.

        L = (1 / B') * sum_b [ sum_t m[b,t] * loss[b,t] / sum_t m[b,t] ]

    Why: the original GRPO objective (every sequence weighs the same). Known
    length bias: a token of a short sequence weighs more than a token of a long
    one (Dr.GRPO). Empty rows contribute 0 and are not counted in B'. `denom`
    replaces B'. `norm` is ignored.
    """
    del norm
    mask_BT = _check_loss_mask(loss_BT, mask_BT)
    n_B = mask_BT.sum(dim=1).clamp_min(1)
    return _seq_mean(_masked(loss_BT, mask_BT).sum(dim=1) / n_B, mask_BT, denom)


def seq_mean_token_sum_norm(
    loss_BT: Tensor, mask_BT: Tensor, norm: float | None = None, denom: Denom = None
) -> Tensor:
    """Dr.GRPO aggregation: per-sequence sum / a constant `norm`, then mean over sequences.

        L = (1 / B') * sum_b [ sum_t m[b,t] * loss[b,t] / norm ]

    Why: dividing by a constant (e.g. the maximum response length) instead of
    each sequence's own length removes GRPO's length bias while keeping the
    loss scale stable. `norm` is required and > 0; `denom` replaces B'.
    """
    mask_BT = _check_loss_mask(loss_BT, mask_BT)
    if norm is None or norm <= 0:
        raise ValueError(f"seq-mean-token-sum-norm needs norm > 0 (e.g. the max response length), got {norm}")
    return _seq_mean(_masked(loss_BT, mask_BT).sum(dim=1) / norm, mask_BT, denom)


AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "token-mean": token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def aggregation_denom(agg: str, mask_BT: Tensor) -> int:
    """`agg`'s denominator on a whole batch: valid tokens (token-mean) or non-empty rows (seq-mean-*).

    Counted once per step on the global batch and passed to every micro-batch as `denom`.
    """
    get(AGGREGATIONS, agg)
    if agg == "token-mean":
        return int(mask_BT.sum())
    return int((mask_BT.sum(1) > 0).sum())


def masked_mean(x_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Token-weighted mean over the True entries of `mask_BT`: sum(x * m) / max(1, sum(m)).

    For the numbers the stages log (entropy, -log p, reverse KL of a step's tokens).
    The mask multiplies (the reduction those logs always used) rather than selects as
    the aggregations do, so `x_BT` must be finite on padding (rollouts and scores put 0).
    """
    if x_BT.shape != mask_BT.shape:
        raise ValueError(f"x_BT {tuple(x_BT.shape)} and mask_BT {tuple(mask_BT.shape)}: not the same shape")
    return (x_BT * mask_BT).sum() / mask_BT.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------------
# KL estimators between the policy and a frozen reference, per sampled token
# --------------------------------------------------------------------------------------------------

KL_LOG_RATIO_CLAMP = 20.0
"""Default bound for k3's log-ratio: exp(20) ~ 4.9e8 is finite in float32; exp(89) is not."""


def _log_ratio(logp_BT: Tensor, ref_logp_BT: Tensor, clamp: float | None) -> Tensor:
    if logp_BT.shape != ref_logp_BT.shape:
        raise ValueError(
            f"logp_BT and ref_logp_BT shapes differ: {tuple(logp_BT.shape)} vs {tuple(ref_logp_BT.shape)}"
        )
    log_ratio = logp_BT - ref_logp_BT  # log pi(y) - log pi_ref(y), y sampled from pi
    if clamp is not None:
        log_ratio = log_ratio.clamp(-clamp, clamp)
    return log_ratio


def kl_k1(logp_BT: Tensor, ref_logp_BT: Tensor, clamp: float | None = None) -> Tensor:
    """k1 = logp - ref_logp: the naive unbiased estimator of KL(pi || ref) (Schulman, 2020).

    Unbiased for samples y ~ pi, but high variance and often negative per token.
    `clamp` (None: off) bounds the log-ratio to [-clamp, clamp].
    """
    return _log_ratio(logp_BT, ref_logp_BT, clamp)


def kl_k2(logp_BT: Tensor, ref_logp_BT: Tensor, clamp: float | None = None) -> Tensor:
    """k2 = 0.5 * (logp - ref_logp)^2: biased, low variance, always >= 0 (Schulman, 2020).

    Its gradient equals that of the true KL for on-policy samples, which is
    why it is used as a differentiable penalty. `clamp` as in `kl_k1`.
    """
    return 0.5 * _log_ratio(logp_BT, ref_logp_BT, clamp).square()


def kl_k3(logp_BT: Tensor, ref_logp_BT: Tensor, clamp: float | None = KL_LOG_RATIO_CLAMP) -> Tensor:
    """k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1 (Schulman, 2020); verl: "low_var_kl".

    With x = ref_logp - logp: k3 = e^x - x - 1, unbiased for KL(pi || ref)
    (E_pi[e^x] = 1), lower variance than k1, and >= 0 always (e^x >= 1 + x).
    Stability: by default the log-ratio is clamped to [-20, 20] before the
    exponential (as verl does), so a token the reference finds very unlikely
    cannot give inf; clamped tokens get zero gradient. `clamp=None` disables.
    Computed as expm1(x) - x: in float32, exp(x) - x - 1 rounds to small
    *negative* values for |x| ~ 1e-7; expm1 keeps k3 >= 0.
    """
    x = -_log_ratio(logp_BT, ref_logp_BT, clamp)
    return torch.expm1(x) - x


KL_ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
    "low_var_kl": kl_k3,  # verl's name for k3
}


# --------------------------------------------------------------------------------------------------
# Composites used by the stages
# --------------------------------------------------------------------------------------------------


def entropy_bonus(
    entropy_BT: Tensor,
    mask_BT: Tensor,
    coef: float,
    agg: str = "token-mean",
    norm: float | None = None,
    denom: Denom = None,
) -> Tensor:
    """The entropy-bonus term to ADD to the loss: -coef * AGG(entropy_BT, mask_BT).

    Why: minimising the loss then raises the policy's entropy, which counters
    entropy collapse during RL. `entropy_BT` is the full-vocabulary entropy at
    each response token (must carry gradient to have an effect).
    """
    return -coef * get(AGGREGATIONS, agg)(entropy_BT, mask_BT, norm=norm, denom=denom)


def reverse_kl_advantage(student_logp_BT: Tensor, teacher_logp_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """On-policy distillation advantage: A = -(log pi_student(y_t) - log pi_teacher(y_t)), 0 on padding.

    Why: for tokens y_t sampled from the student, log pi_s - log pi_t is the
    per-token (k1) estimate of the reverse KL(student || teacher); using its
    negative as the advantage in the policy gradient minimises that KL, so
    OPD reuses the RL loss unchanged (tinker-cookbook's recipe). Detached: an
    advantage is a constant weight and must not carry gradient.
    """
    if not (student_logp_BT.shape == teacher_logp_BT.shape == mask_BT.shape):
        raise ValueError(
            "student_logp_BT, teacher_logp_BT and mask_BT must have the same shape, got "
            f"{tuple(student_logp_BT.shape)}, {tuple(teacher_logp_BT.shape)}, {tuple(mask_BT.shape)}"
        )
    adv_BT = -(student_logp_BT.detach() - teacher_logp_BT.detach())
    return torch.where(mask_BT.bool(), adv_BT, torch.zeros_like(adv_BT))


def policy_gradient_loss(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    mask_BT: Tensor,
    *,
    loss: str = "ppo_clip",
    agg: str = "token-mean",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    norm: float | None = None,
    denom: Denom = None,
) -> tuple[Tensor, dict[str, float]]:
    """The one policy-gradient loss that SFT, OPD and GRPO share.

        loss_BT, clipped_BT = POLICY_LOSSES[loss](logp, old_logp, adv, clip_low, clip_high, dual_clip)
        loss = AGGREGATIONS[agg](loss_BT, mask_BT, norm=norm, denom=denom)

    `logp_BT` carries gradient (current policy); `old_logp_BT` (behaviour
    policy at sampling time) and `adv_BT` are detached. `adv_BT` may be a
    per-sequence `adv_B` (1-D, as GRPO produces), broadcast over the row's
    tokens. Padding is replaced by 0 in every input *before* any arithmetic,
    so garbage there (e.g. -inf log-probs) yields neither NaN values nor NaN
    gradients.

    SFT: adv = 1, old_logp = logp.detach(): ratio = 1 and the gradient equals
    the gradient of the mean NLL under `agg`.

    Returns `(loss, stats)` with stats (python floats, for logging):
    `clip_frac` = clipped valid tokens / valid tokens (0 when there are none)
    and `num_tokens` = number of valid tokens (weight for averaging clip_frac
    across micro-batches).
    """
    if logp_BT.dim() != 2 or logp_BT.shape != old_logp_BT.shape or logp_BT.shape != mask_BT.shape:
        raise ValueError(
            "logp_BT, old_logp_BT and mask_BT must be 2-D with the same shape, got "
            f"{tuple(logp_BT.shape)}, {tuple(old_logp_BT.shape)}, {tuple(mask_BT.shape)}"
        )
    if adv_BT.dim() == 1:
        if adv_BT.shape[0] != logp_BT.shape[0]:
            raise ValueError(f"adv_B has {adv_BT.shape[0]} rows, logp_BT has {logp_BT.shape[0]}")
        adv_BT = adv_BT[:, None].expand_as(logp_BT)
    elif adv_BT.shape != logp_BT.shape:
        raise ValueError(f"adv must be adv_B or adv_BT, got shape {tuple(adv_BT.shape)}")
    loss_fn = get(POLICY_LOSSES, loss)
    agg_fn = get(AGGREGATIONS, agg)

    mask_BT = mask_BT.bool()
    zero = torch.zeros_like(logp_BT)
    logp_BT = torch.where(mask_BT, logp_BT, zero)
    old_logp_BT = torch.where(mask_BT, old_logp_BT.detach(), zero)
    adv_BT = torch.where(mask_BT, adv_BT.detach().to(logp_BT.dtype), zero)

    loss_BT, clipped_BT = loss_fn(
        logp_BT, old_logp_BT, adv_BT, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip
    )
    total = agg_fn(loss_BT, mask_BT, norm=norm, denom=denom)

    num_tokens = int(mask_BT.sum())
    clipped = int((clipped_BT & mask_BT).sum())
    stats = {
        "clip_frac": clipped / num_tokens if num_tokens else 0.0,
        "num_tokens": float(num_tokens),
    }
    return total, stats


# --------------------------------------------------------------------------------------------------
# On-policy distillation estimators (OPD_ESTIMATORS): what the student is taught from the teacher
# --------------------------------------------------------------------------------------------------
#
# Extra suffixes: `V` vocabulary entries, `K` top-k entries, `M` teachers of a mixture.
# `*_logq_BTV` are full-vocabulary log-probabilities (log_softmax of the logits) at every response
# position; padding positions may hold anything (they are replaced by 0 before any arithmetic and
# their result is selected away, so NaN there leaks into neither values nor gradients).
#
# Two kinds of estimator:
#   "sampled_rkl"  token-level: an ADVANTAGE for the policy-gradient loss, from the log-probs of the
#                  sampled tokens only (works with any teacher, remote ones included).
#   the dense ones a per-position LOSS kl_BT, differentiated directly, from both models' full
#                  distributions (an in-process teacher): "full_rkl", "topk_fkl", "topk_rkl".
#
# Gradients of the dense losses are written so that a teacher identical to the student gives an
# exactly zero gradient, not a rounding-sized one: Adam divides by the gradient's own scale, so a
# 1e-9 gradient moves a weight by about as much as lr would. Each dense loss's value is the KL; its
# gradient is the KL's exact gradient with the term sum_b P_s(b) grad log P_s(b) = grad sum_b P_s(b)
# = 0 dropped (zero in exact arithmetic, rounding noise in float), i.e.
#   reverse KL: loss = sum_b P_s(b) * sg(log P_s(b) - log P_t(b))       (sg = stop-gradient)
#   forward KL: gradient of sum_b sg(P_s(b) - P_t(b)) * log P_s(b), value the forward KL itself.


def mixture_logp(teacher_logp_M: Tensor) -> Tensor:
    """Log-prob under the equal-weight mixture of M teachers: log((1/M) sum_m p_m) = logsumexp_m - log M.

    `teacher_logp_M...`: the teachers' log-probs stacked on dim 0 (any trailing shape: `M x B x T`
    of sampled tokens, or `M x B x T x V` full distributions, which gives the mixture distribution
    itself, since the mixture of distributions is taken entry by entry). One teacher (M = 1) is
    returned unchanged (bit for bit). Why the mixture: "several teachers" distils the student
    towards the distribution that samples a teacher at random and then a token from it; it is the
    one combination that is itself a distribution, so every estimator applies to it unchanged.
    """
    if teacher_logp_M.dim() < 1 or teacher_logp_M.shape[0] < 1:
        raise ValueError(
            f"teacher_logp_M needs at least one teacher on dim 0, got {tuple(teacher_logp_M.shape)}"
        )
    n_teachers = teacher_logp_M.shape[0]
    if n_teachers == 1:
        return teacher_logp_M[0]
    return torch.logsumexp(teacher_logp_M, dim=0) - math.log(n_teachers)


def _check_dense(student_logq_BTV: Tensor, teacher_logq_BTV: Tensor, mask_BT: Tensor) -> tuple[Tensor, ...]:
    """Shapes checked; padding replaced by 0 (constants) in both inputs; the mask as bool."""
    if student_logq_BTV.dim() != 3 or student_logq_BTV.shape != teacher_logq_BTV.shape:
        raise ValueError(
            "student_logq_BTV and teacher_logq_BTV must be B x T x V with the same shape, got "
            f"{tuple(student_logq_BTV.shape)} and {tuple(teacher_logq_BTV.shape)}"
        )
    if tuple(mask_BT.shape) != tuple(student_logq_BTV.shape[:2]):
        raise ValueError(
            f"mask_BT {tuple(mask_BT.shape)} does not match B x T {tuple(student_logq_BTV.shape[:2])}"
        )
    mask_BT = mask_BT.bool().to(student_logq_BTV.device)
    m_BT1 = mask_BT[..., None]
    s = torch.where(m_BT1, student_logq_BTV, torch.zeros_like(student_logq_BTV))
    t = torch.where(m_BT1, teacher_logq_BTV.detach(), torch.zeros_like(student_logq_BTV))
    return s, t, mask_BT


def _rest_log(logq_BTK: Tensor) -> Tensor:
    """log(1 - sum_k p_k) of the mass outside K entries; a floor (-1e4) where it is (about) empty.

    The floor is taken by selection (torch.where), so no inf/NaN gradient leaves an empty rest.
    """
    rest_BT = -torch.expm1(torch.logsumexp(logq_BTK, dim=-1))  # 1 - sum_k p_k, >= 0 up to rounding
    tiny = torch.finfo(rest_BT.dtype).tiny
    ok_BT = rest_BT > tiny
    return torch.where(
        ok_BT, torch.where(ok_BT, rest_BT, torch.ones_like(rest_BT)).log(), torch.full_like(rest_BT, -1e4)
    )


def _reverse_kl_bins(s_logP_BTb: Tensor, t_logP_BTb: Tensor) -> Tensor:
    """sum_b P_s(b) * sg(log P_s(b) - log P_t(b)): value KL(P_s || P_t), gradient the exact one (see above)."""
    return (s_logP_BTb.exp() * (s_logP_BTb - t_logP_BTb).detach()).sum(-1)


def _forward_kl_bins(s_logP_BTb: Tensor, t_logP_BTb: Tensor) -> Tensor:
    """KL(P_t || P_s) = sum_b P_t (log P_t - log P_s) in value; gradient of sum_b sg(P_s - P_t) log P_s."""
    t_P = t_logP_BTb.exp()
    value_BT = (t_P * (t_logP_BTb - s_logP_BTb)).sum(-1).detach()
    sur_BT = ((s_logP_BTb.exp() - t_P).detach() * s_logP_BTb).sum(-1)
    return value_BT + (sur_BT - sur_BT.detach())


def full_reverse_kl(
    student_logq_BTV: Tensor, teacher_logq_BTV: Tensor, mask_BT: Tensor, k: int = 0
) -> Tensor:
    """Exact reverse KL per position: kl[b,t] = sum_v p_s(v) (log p_s(v) - log p_t(v)), 0 on padding.

    The quantity whose per-token sample estimate `sampled_rkl` uses, summed over the whole
    vocabulary instead of read at the one sampled token: no sampling noise at the visited
    states. Differentiated directly (gradient p_s(v) (d(v) - kl) w.r.t. the student's logit v,
    d = log p_s - log p_t; exactly 0 for an identical teacher). `k` is unused (uniform signature).
    The teacher carries no gradient.
    """
    del k
    s, t, mask_BT = _check_dense(student_logq_BTV, teacher_logq_BTV, mask_BT)
    kl_BT = _reverse_kl_bins(s, t)
    return torch.where(mask_BT, kl_BT, torch.zeros_like(kl_BT))


def _topk_bins(s: Tensor, t: Tensor, idx_BTK: Tensor) -> tuple[Tensor, Tensor]:
    """(student, teacher) log-probs of the K+1 bins: the K chosen entries, then the rest of V."""
    s_K, t_K = s.gather(-1, idx_BTK), t.gather(-1, idx_BTK)
    s_bins = torch.cat([s_K, _rest_log(s_K)[..., None]], dim=-1)
    t_bins = torch.cat([t_K, _rest_log(t_K)[..., None]], dim=-1)
    return s_bins, t_bins


def _check_k(k: int, vocab: int) -> int:
    if int(k) < 1:
        raise ValueError(f"top-k estimators need k >= 1, got {k}")
    return min(int(k), vocab)


def topk_forward_kl(student_logq_BTV: Tensor, teacher_logq_BTV: Tensor, mask_BT: Tensor, k: int) -> Tensor:
    """Forward KL on the teacher's top-k tokens plus one "rest" bin, per position; 0 on padding.

        S = the teacher's k most likely tokens at (b, t);  r_x = 1 - sum_{v in S} p_x(v)
        kl[b,t] = sum_{v in S} p_t(v) (log p_t(v) - log p_s(v)) + r_t (log r_t - log r_s)

    The exact forward KL(teacher || student) between the two distributions coarsened to the
    k + 1 bins {each v in S, everything else}: >= 0, 0 iff the student matches the teacher on S
    and on the rest's total mass, never above the full forward KL (data processing). The
    choice, against the two obvious alternatives: the bare partial sum over S (the first term
    alone) and renormalising the teacher over S both have their minimum at the teacher's
    distribution *renormalised to S*, not at the teacher: a student equal to the teacher still
    gets a gradient, towards a sharper, truncated copy. The rest bin removes that bias and
    costs one number per position. Forward KL is mass-covering (the student is pushed to put
    mass wherever the teacher does), the usual logit-distillation loss. k >= V is the full
    forward KL. Ties in the teacher's top-k are broken by `torch.topk`.
    """
    s, t, mask_BT = _check_dense(student_logq_BTV, teacher_logq_BTV, mask_BT)
    k = _check_k(k, s.shape[-1])
    idx_BTK = t.topk(k, dim=-1).indices
    kl_BT = _forward_kl_bins(*_topk_bins(s, t, idx_BTK))
    return torch.where(mask_BT, kl_BT, torch.zeros_like(kl_BT))


def topk_reverse_kl(student_logq_BTV: Tensor, teacher_logq_BTV: Tensor, mask_BT: Tensor, k: int) -> Tensor:
    """Reverse KL on the student's top-k tokens plus one "rest" bin, per position; 0 on padding.

        S = the student's k most likely tokens at (b, t) (chosen without gradient);
        r_x = 1 - sum_{v in S} p_x(v)
        kl[b,t] = sum_{v in S} p_s(v) (log p_s(v) - log p_t(v)) + r_s (log r_s - log r_t)

    The exact reverse KL(student || teacher) of the distributions coarsened to the k + 1 bins
    (why the rest bin: as `topk_forward_kl`): mode-seeking like `full_reverse_kl`, on the tokens
    the student would actually emit, with the teacher's log-prob needed at k entries only. A
    lower bound of `full_reverse_kl`, equal to it at k >= V.
    """
    s, t, mask_BT = _check_dense(student_logq_BTV, teacher_logq_BTV, mask_BT)
    k = _check_k(k, s.shape[-1])
    idx_BTK = s.detach().topk(k, dim=-1).indices
    kl_BT = _reverse_kl_bins(*_topk_bins(s, t, idx_BTK))
    return torch.where(mask_BT, kl_BT, torch.zeros_like(kl_BT))


def opd_reward_advantage(
    kl_adv_BT: Tensor, rewards_GN: Tensor, mask_BT: Tensor, reward_coef: float, eps: float = 1e-6
) -> Tensor:
    """OPD plus the verifiable reward: adv[b,t] = kl_adv[b,t] + reward_coef * grpo(rewards)[b], 0 on padding.

    `rewards_GN`: each row's reward, G prompts x N samples, rows ordered prompt-major
    (row b = g * N + i), as the sampler returns them; `grpo_advantages` normalises them
    within each group (all-equal groups: 0). `kl_adv_BT` is the distillation advantage
    (`reverse_kl_advantage` for `sampled_rkl`; zeros for a dense estimator, whose KL is a
    loss term of its own). reward_coef = 0 returns `kl_adv_BT` masked, unchanged.
    """
    if kl_adv_BT.shape != mask_BT.shape:
        raise ValueError(f"kl_adv_BT {tuple(kl_adv_BT.shape)} and mask_BT {tuple(mask_BT.shape)} differ")
    mask_BT = mask_BT.bool()
    adv_BT = kl_adv_BT.detach()
    if reward_coef:
        r_B = grpo_advantages(rewards_GN, eps).reshape(-1).to(adv_BT)
        if r_B.shape[0] != adv_BT.shape[0]:
            raise ValueError(f"rewards_GN has {r_B.shape[0]} rows, kl_adv_BT {adv_BT.shape[0]}")
        adv_BT = adv_BT + reward_coef * r_B[:, None]
    return torch.where(mask_BT, adv_BT, torch.zeros_like(adv_BT))


OPD_ESTIMATORS: dict[str, Callable[..., Tensor]] = {
    # token-level: (student_logp_BT, teacher_logp_BT, mask_BT) -> adv_BT, a policy-gradient advantage
    "sampled_rkl": reverse_kl_advantage,
    # dense: (student_logq_BTV, teacher_logq_BTV, mask_BT, k) -> kl_BT, a loss (differentiated)
    "full_rkl": full_reverse_kl,
    "topk_fkl": topk_forward_kl,
    "topk_rkl": topk_reverse_kl,
}
DENSE_OPD_ESTIMATORS = ("full_rkl", "topk_fkl", "topk_rkl")  # need full distributions of both models
TOPK_OPD_ESTIMATORS = ("topk_fkl", "topk_rkl")  # read k (OPDConfig.topk)


# --------------------------------------------------------------------------------------------------
# Training objectives: what the trainer backpropagates, one micro-batch at a time
# --------------------------------------------------------------------------------------------------
#
# objective(batch, scores, cfg, denom) -> (loss, stats). `batch`: the micro-batch TrainBatch;
# `scores`: the model's TokenScores of its response tokens (logp_BT with gradient; entropy_BT
# when asked for or entropy_coef > 0); `denom`: the step's global `aggregation_denom`. `loss` is
# backpropagated; `stats` are python floats, named in OBJECTIVE_STATS, that add up over
# micro-batches and processes: a fixed list, since every process must all-reduce the same keys.


def configured_pg_loss(
    logp_BT: Tensor,
    old_logp_BT: Tensor,
    adv_BT: Tensor,
    mask_BT: Tensor,
    cfg: LossConfig,
    denom: Denom = None,
) -> tuple[Tensor, dict[str, float]]:
    """:func:`policy_gradient_loss` with the loss, aggregation and clipping of a :class:`LossConfig`."""
    return policy_gradient_loss(
        logp_BT,
        old_logp_BT,
        adv_BT,
        mask_BT,
        loss=cfg.policy_loss,
        agg=cfg.agg,
        clip_low=cfg.clip_low,
        clip_high=cfg.clip_high,
        dual_clip=cfg.dual_clip,
        norm=cfg.norm,
        denom=denom,
    )


OBJECTIVE_STATS = ("pg_loss", "kl", "clipped_tokens")  # policy-gradient term, KL term, clipped tokens


@dataclass(frozen=True)
class LossConfig:
    """How per-token weights become a loss (names are registry keys of this module).

    Attributes:
        objective: what the trainer backpropagates, a key of `OBJECTIVES`: ``policy_gradient``
            = `policy_loss` aggregated by `agg` + the KL-to-reference and entropy-bonus terms.
        policy_loss: ``ppo_clip`` or ``vanilla_pg``.
        agg: ``token-mean`` | ``seq-mean-token-sum`` | ``seq-mean-token-mean`` | ``seq-mean-token-sum-norm``.
        clip_low: lower PPO clip (ratio >= 1 - clip_low).
        clip_high: upper PPO clip (ratio <= 1 + clip_high; DAPO's clip-higher when > clip_low).
        dual_clip: dual-clip constant (> 1) for negative advantages, or ``None``.
        norm: constant normaliser for ``seq-mean-token-sum-norm`` (Dr.GRPO), e.g. the max response length.
        kl_coef: coefficient of the KL-to-reference loss term (0: no reference model is loaded).
        kl_estimator: ``k1`` | ``k2`` | ``k3`` (alias ``low_var_kl``).
        entropy_coef: coefficient of the entropy bonus (0 disables).
    """

    objective: str = "policy_gradient"
    policy_loss: str = "ppo_clip"
    agg: str = "token-mean"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    norm: float | None = None
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0

    def validate(self) -> None:
        for reg, name in (
            ("objectives", self.objective),
            ("policy_losses", self.policy_loss),
            ("aggregations", self.agg),
            ("kl_estimators", self.kl_estimator),
        ):
            try:
                get(reg, name)
            except ValueError as e:
                raise ConfigError(str(e)) from None


def policy_gradient_objective(
    batch: TrainBatch, scores: TokenScores, cfg: LossConfig, denom: float
) -> tuple[Tensor, dict[str, float]]:
    """The objective SFT, OPD and GRPO train with (`batch.old_logp_BT` None: on-policy, ratio 1).

    `batch.adv_BT` None: the advantage is `reverse_kl_advantage(logp, teacher_logp)` of this
    forward's own (detached) log-probs: OPD without a separate scoring pass of the student.

    loss = policy_gradient_loss(logp, old_logp, adv)          (cfg.policy_loss, cfg.agg)
         + kl_coef * AGG(KL_ESTIMATORS[kl_estimator](logp, ref_logp))   if kl_coef > 0
         + entropy_bonus(entropy, entropy_coef)                           if entropy_coef > 0
    """
    mask_BT = batch.mask_BT
    logp_BT = scores.logp_BT
    old_logp_BT = logp_BT.detach() if batch.old_logp_BT is None else batch.old_logp_BT
    adv_BT = batch.adv_BT
    if adv_BT is None:  # OPD: the reverse-KL advantage from this very forward (no scoring pass)
        if batch.teacher_logp_BT is None:
            raise ValueError("adv_BT None (distillation advantage) needs teacher_logp_BT in the TrainBatch")
        adv_BT = reverse_kl_advantage(logp_BT, batch.teacher_logp_BT, mask_BT)
    pg, pg_stats = configured_pg_loss(logp_BT, old_logp_BT, adv_BT, mask_BT, cfg, denom)
    total = pg
    stats = {"pg_loss": float(pg.detach()), "kl": 0.0}
    if cfg.kl_coef > 0:
        if batch.ref_logp_BT is None:
            raise ValueError("kl_coef > 0 needs ref_logp_BT in the TrainBatch")
        kl_BT = get(KL_ESTIMATORS, cfg.kl_estimator)(logp_BT, batch.ref_logp_BT)
        kl = get(AGGREGATIONS, cfg.agg)(kl_BT, mask_BT, norm=cfg.norm, denom=denom)
        total = total + cfg.kl_coef * kl
        stats["kl"] = float(kl.detach())
    if cfg.entropy_coef > 0:
        total = total + entropy_bonus(
            scores.entropy_BT, mask_BT, cfg.entropy_coef, cfg.agg, norm=cfg.norm, denom=denom
        )
    # clip_frac x tokens (not the integer count): the number the step has always summed
    stats["clipped_tokens"] = pg_stats["clip_frac"] * int(mask_BT.sum())
    return total, stats


OBJECTIVES: dict[str, Callable[..., tuple[Tensor, dict[str, float]]]] = {
    "policy_gradient": policy_gradient_objective,
}


# --------------------------------------------------------------------------------------------------
# Registry lookup
# --------------------------------------------------------------------------------------------------

REGISTRIES: dict[str, Mapping[str, Callable[..., Any]]] = {
    "advantages": ADVANTAGES,
    "policy_losses": POLICY_LOSSES,
    "aggregations": AGGREGATIONS,
    "kl_estimators": KL_ESTIMATORS,
    "objectives": OBJECTIVES,
    "opd_estimators": OPD_ESTIMATORS,
}


def get(registry: str | Mapping[str, Callable[..., Any]], name: str) -> Callable[..., Any]:
    """Look up `name` in a registry (a dict above, or its name in `REGISTRIES`).

    Unknown names raise ValueError listing the valid ones, so a typo in a
    config fails at start-up with the fix in the message.
    """
    if isinstance(registry, str):
        if registry not in REGISTRIES:
            raise ValueError(f"unknown registry {registry!r}; valid registries: {', '.join(REGISTRIES)}")
        kind, table = registry, REGISTRIES[registry]
    else:
        table = registry
        kind = next((k for k, v in REGISTRIES.items() if v is registry), "registry")
    if name not in table:
        raise ValueError(f"unknown {kind} name {name!r}; valid names: {', '.join(sorted(table))}")
    return table[name]

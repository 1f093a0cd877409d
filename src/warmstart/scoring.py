"""Log-probabilities and full-vocabulary entropy of given tokens, without ever holding the logits.

Every stage needs the same two numbers per response token: ``log p(y_t | ctx)``
(policy-gradient ratios, KL to a reference, the OPD teacher signal, SFT loss)
and the full-vocabulary Shannon entropy ``H_t`` of the next-token distribution
(DESIGN.md's "policy entropy"). Computing them the textbook way materialises
``N x V`` float32 logits (V = 151,936 for Qwen2.5-VL) plus several same-sized
temporaries for log_softmax / exp / their gradients: about 19 GB for two
4,096-token sequences (shared/BASELINES.md).

Here the model is run only up to its last hidden states, and the LM head is
applied chunk by chunk over positions inside a custom autograd function that
keeps just ``hidden``, ``weight``, the targets and one logsumexp (and entropy)
per position, and *recomputes* each chunk's logits in backward. Peak memory is
then a couple of ``chunk x V`` buffers, independent of sequence length.

Public API:

* :func:`chunked_logp_entropy` -- the math, from hidden states and an LM-head weight.
* :func:`score_sequences` -- any model, any batch of prompt + continuation sequences.
* :func:`score_rollouts` -- the response tokens of a :class:`warmstart.rollout.Rollouts`.
* :func:`naive_logp_entropy` -- the textbook reference (materialises logits); tests and benchmarks only.
* :class:`ScoringHead` -- the LM head as a module that can also score tokens, so that under
  FSDP2 the chunked head runs inside the head unit's own forward (its weight gathered by
  FSDP's hooks, its gradient reduce-scattered by them) instead of reading a sharded weight.

Device: the model may live on a GPU while the batch tensors stay on the CPU (the
``Rollouts`` contract); inputs are moved to the model's device and the scores come back on
the device of ``input_ids_BL``, still differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from warmstart.distributed import autocast_for
from warmstart.models.load import unwrap_model

# The sampler's constant and vision-token rule, so that scores describe its distribution:
# a suppressed logit is *replaced* by SUPPRESS_LOGIT, then divided by the temperature.
from warmstart.rollout import SUPPRESS_LOGIT, vision_token_ids

# `suppress_ids="vision"`: the model's own vision special tokens (rollout.vision_token_ids).
VISION = "vision"
# `suppress_ids="auto"` (score_rollouts): the ids the sampler suppressed (Rollouts.suppressed_ids).
AUTO = "auto"


@dataclass
class TokenScores:
    """Per-token scores of given tokens under one model.

    Attributes:
        logp_BT: ``log softmax(logits / temperature)`` at each scored token; 0 where not scored.
        entropy_BT: full-vocabulary entropy (nats) of that distribution at each scored
            token; 0 where not scored; ``None`` when not requested.
    """

    logp_BT: Tensor
    entropy_BT: Tensor | None


# ---------------------------------------------------------------------------
# The math: chunked log-prob + entropy with recomputation in backward
# ---------------------------------------------------------------------------


def _chunk_logits(
    hidden_CH: Tensor,
    weight_VH: Tensor,
    bias_V: Tensor | None,
    temperature: float,
    suppress_S: Tensor | None,
) -> Tensor:
    """``z = (hidden @ weight.T + bias, suppressed columns set to SUPPRESS_LOGIT) / temperature``.

    Both operands are already in the compute dtype (float32, or float64 for gradcheck),
    so the matmul accumulates in at least float32 even for bf16 models. The order
    (replace, then divide) is the sampler's: ``softmax((suppressed logits) / T)``.
    """
    z_CV = hidden_CH @ weight_VH.T
    if bias_V is not None:
        z_CV += bias_V
    if suppress_S is not None:
        z_CV.index_fill_(1, suppress_S, SUPPRESS_LOGIT)
    if temperature != 1.0:
        z_CV /= temperature
    return z_CV


class _ChunkedLogpEntropy(torch.autograd.Function):
    """Autograd function behind :func:`chunked_logp_entropy` (see there for the contract).

    Saved for backward: hidden, weight, bias, targets, and per position the
    logits' row max, the logsumexp of the max-shifted logits and the entropy.
    No ``N x V`` tensor survives forward.
    """

    @staticmethod
    def forward(
        ctx, hidden_NH, weight_VH, bias_V, targets_N, chunk_size, with_entropy, temperature, suppress_S
    ):
        compute_dtype = torch.promote_types(hidden_NH.dtype, torch.float32)
        # One cast of the weight for the whole call (a no-op for float32 weights).
        weight_c = weight_VH.to(compute_dtype)
        bias_c = None if bias_V is None else bias_V.to(compute_dtype)
        n_pos = hidden_NH.shape[0]
        logp_N = torch.empty(n_pos, dtype=compute_dtype, device=hidden_NH.device)
        max_N = torch.empty_like(logp_N)  # row max of the logits
        lse_shift_N = torch.empty_like(logp_N)  # logsumexp of the max-shifted logits
        entropy_N = torch.empty_like(logp_N) if with_entropy else None
        for s in range(0, n_pos, chunk_size):
            e = min(s + chunk_size, n_pos)
            z_CV = _chunk_logits(hidden_NH[s:e].to(compute_dtype), weight_c, bias_c, temperature, suppress_S)
            # Work with logits shifted by their row max, z' = z - m <= 0 (in place). Then
            # lse' = log sum exp z' lies in [0, log V], and the entropy
            #   H = -sum p log p = -sum p (z' - lse') = lse' + sum p (-z')
            # is a sum of two non-negative terms: no cancellation between large
            # numbers, unlike `lse - sum p z` on raw logits (~10x worse in float32 at
            # |z| ~ 20) or `-sum exp(logp) * logp` (1.3e-5 off at V = 152k, BASELINES).
            max_C = z_CV.max(dim=-1).values
            z_CV -= max_C[:, None]
            e_CV = z_CV.exp()
            sum_C = e_CV.sum(dim=-1)
            lse_shift_C = sum_C.log()
            max_N[s:e] = max_C
            lse_shift_N[s:e] = lse_shift_C
            logp_N[s:e] = z_CV.gather(1, targets_N[s:e, None]).squeeze(1) - lse_shift_C
            if with_entropy:
                # p = exp(z') / sum exp(z'), then p * z', both in place: two C x V buffers peak.
                p_CV = e_CV.div_(sum_C[:, None])
                entropy_N[s:e] = lse_shift_C - p_CV.mul_(z_CV).sum(dim=-1)
            del z_CV, e_CV
        ctx.save_for_backward(
            hidden_NH, weight_VH, bias_V, targets_N, max_N, lse_shift_N, entropy_N, suppress_S
        )
        ctx.chunk_size = chunk_size
        ctx.temperature = temperature
        ctx.with_entropy = with_entropy
        # Unused outputs then arrive as None in backward, so a loss on logp alone
        # skips the entropy terms instead of multiplying by materialised zeros.
        ctx.set_materialize_grads(False)
        if not with_entropy:
            entropy_N = logp_N.new_zeros(0)
            ctx.mark_non_differentiable(entropy_N)
        return logp_N, entropy_N

    @staticmethod
    def backward(ctx, grad_logp_N, grad_entropy_N):
        hidden_NH, weight_VH, bias_V, targets_N, max_N, lse_shift_N, entropy_N, suppress_S = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        compute_dtype = max_N.dtype
        weight_c = weight_VH.to(compute_dtype)
        bias_c = None if bias_V is None else bias_V.to(compute_dtype)
        use_entropy = ctx.with_entropy and grad_entropy_N is not None
        if grad_logp_N is None:
            grad_logp_N = torch.zeros_like(max_N)
        grad_logp_N = grad_logp_N.to(compute_dtype)
        if use_entropy:
            grad_entropy_N = grad_entropy_N.to(compute_dtype)

        n_pos = hidden_NH.shape[0]
        grad_hidden_NH = (
            torch.empty(hidden_NH.shape, dtype=compute_dtype, device=max_N.device) if need_h else None
        )
        # Accumulated over chunks in the compute dtype, cast once at the end.
        grad_weight_VH = (
            torch.zeros(weight_VH.shape, dtype=compute_dtype, device=max_N.device) if need_w else None
        )
        grad_bias_V = (
            torch.zeros(weight_VH.shape[0], dtype=compute_dtype, device=max_N.device) if need_b else None
        )
        rows = torch.arange(ctx.chunk_size, device=hidden_NH.device)
        for s in range(0, n_pos, ctx.chunk_size):
            e = min(s + ctx.chunk_size, n_pos)
            h_CH = hidden_NH[s:e].to(compute_dtype)
            # Recompute this chunk's logits, then turn them into log p in place.
            logq_CV = _chunk_logits(h_CH, weight_c, bias_c, ctx.temperature, suppress_S)
            # log p = (z - max) - lse', in the same order as forward (same rounding).
            logq_CV -= max_N[s:e, None]
            logq_CV -= lse_shift_N[s:e, None]
            p_CV = logq_CV.exp()
            g_logp_C = grad_logp_N[s:e, None]
            # dL/dz = g_logp * (onehot - p) + g_H * (-p * (log p + H))
            #       = -p * (g_logp + g_H * (log p + H)) + g_logp * onehot
            # built in place in the log p buffer so only two C x V buffers are live.
            if use_entropy:
                g_z_CV = logq_CV.add_(entropy_N[s:e, None]).mul_(grad_entropy_N[s:e, None]).add_(g_logp_C)
            else:
                g_z_CV = logq_CV.copy_(g_logp_C.expand_as(logq_CV))
            g_z_CV.mul_(p_CV).neg_()
            del p_CV
            g_z_CV[rows[: e - s], targets_N[s:e]] += grad_logp_N[s:e]
            if suppress_S is not None:
                # Suppressed logits are a constant: no gradient flows through them
                # (their p is 0 anyway at any sane temperature; this makes it exact).
                g_z_CV.index_fill_(1, suppress_S, 0.0)
            # Chain rule through z = logits / temperature.
            if ctx.temperature != 1.0:
                g_z_CV /= ctx.temperature
            if need_h:
                grad_hidden_NH[s:e] = g_z_CV @ weight_c
            if need_w:
                grad_weight_VH.addmm_(g_z_CV.T, h_CH)
            if need_b:
                grad_bias_V += g_z_CV.sum(dim=0)
            del g_z_CV
        if need_h:
            grad_hidden_NH = grad_hidden_NH.to(hidden_NH.dtype)
        if need_w:
            grad_weight_VH = grad_weight_VH.to(weight_VH.dtype)
        if need_b:
            grad_bias_V = grad_bias_V.to(bias_V.dtype)
        return grad_hidden_NH, grad_weight_VH, grad_bias_V, None, None, None, None, None


def _suppress_index(suppress_ids: Sequence[int] | Tensor | None, vocab: int, device) -> Tensor | None:
    """The suppressed ids as a LongTensor (None when nothing is suppressed); checked against V."""
    if suppress_ids is None:
        return None
    ids = torch.as_tensor(list(suppress_ids) if not isinstance(suppress_ids, Tensor) else suppress_ids)
    if ids.numel() == 0:
        return None
    ids = ids.to(device=device, dtype=torch.long).flatten()
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise ValueError(f"suppress_ids must lie in [0, {vocab}), got {ids.tolist()}")
    return ids


def chunked_logp_entropy(
    hidden_NH: Tensor,
    weight_VH: Tensor,
    targets_N: Tensor,
    chunk_size: int = 1024,
    with_entropy: bool = True,
    temperature: float = 1.0,
    bias_V: Tensor | None = None,
    suppress_ids: Sequence[int] | Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of ``targets_N`` and full-vocabulary entropy under ``softmax(logits / temperature)``.

    ``logits = hidden @ weight.T (+ bias)`` is formed ``chunk_size`` positions at a
    time, in forward and again in backward, so neither the logits nor any other
    ``N x V`` tensor is ever held; memory is O(chunk_size x V). Values and
    gradients equal those of the naive full ``log_softmax`` (see
    :func:`naive_logp_entropy`) to float32 rounding.

    Args:
        hidden_NH: final hidden states of the N positions that predict the targets
            (any float dtype; bf16/fp16 are upcast chunk by chunk).
        weight_VH: LM-head weight (V x H).
        targets_N: token id predicted at each position.
        chunk_size: positions per chunk; peak extra memory is about
            ``2 * chunk_size * V * 4`` bytes.
        with_entropy: also return the entropy (a second pass over each chunk's probabilities).
        temperature: logits are divided by it (the sampling distribution's definition).
        bias_V: optional LM-head bias.
        suppress_ids: vocabulary ids whose logits are set to ``SUPPRESS_LOGIT`` before
            the temperature (the tokens the sampler never emits: vision special tokens,
            pad), exactly as :mod:`warmstart.rollout` does; no gradient flows through them.

    Returns:
        ``(logp_N, entropy_N)`` in float32 (float64 if the hidden states are float64);
        ``entropy_N`` is ``None`` when ``with_entropy`` is False. Both are
        differentiable with respect to ``hidden_NH``, ``weight_VH`` and ``bias_V``.
    """
    if hidden_NH.dim() != 2 or weight_VH.dim() != 2 or targets_N.dim() != 1:
        raise ValueError(
            f"expected hidden N x H, weight V x H, targets N; got {tuple(hidden_NH.shape)}, "
            f"{tuple(weight_VH.shape)}, {tuple(targets_N.shape)}"
        )
    if hidden_NH.shape[1] != weight_VH.shape[1] or hidden_NH.shape[0] != targets_N.shape[0]:
        raise ValueError(
            f"shape mismatch: hidden {tuple(hidden_NH.shape)}, weight {tuple(weight_VH.shape)}, "
            f"targets {tuple(targets_N.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    suppress_S = _suppress_index(suppress_ids, weight_VH.shape[0], weight_VH.device)
    logp_N, entropy_N = _ChunkedLogpEntropy.apply(
        hidden_NH,
        weight_VH,
        bias_V,
        targets_N.long(),
        int(chunk_size),
        bool(with_entropy),
        float(temperature),
        suppress_S,
    )
    return logp_N, (entropy_N if with_entropy else None)


class ScoringHead(torch.nn.Linear):
    """``nn.Linear`` LM head that, given ``score_targets``, returns chunked (logp, entropy) instead of logits.

    ``head(hidden)`` is the ordinary linear layer (generation, saving, vLLM export: the
    parameters and state dict are those of the ``nn.Linear`` it replaces).
    ``head(hidden_NH, score_targets=targets_N, ...)`` runs :func:`chunked_logp_entropy` on
    ``self.weight`` inside the module's forward, so module hooks (FSDP2's all-gather before,
    reshard after, gradient reduce-scatter in backward) apply to it as to any forward.
    """

    def forward(  # type: ignore[override]
        self,
        hidden: Tensor,
        score_targets: Tensor | None = None,
        chunk_size: int = 1024,
        with_entropy: bool = True,
        temperature: float = 1.0,
        suppress_ids: Sequence[int] | None = None,
    ):
        if score_targets is None:
            return super().forward(hidden)
        logp_N, entropy_N = chunked_logp_entropy(
            hidden,
            self.weight,
            score_targets,
            chunk_size=chunk_size,
            with_entropy=with_entropy,
            temperature=temperature,
            bias_V=self.bias,
            suppress_ids=suppress_ids,
        )
        # FSDP's forward hooks want tensors only: entropy as an empty tensor when not asked for.
        return logp_N, (entropy_N if entropy_N is not None else logp_N.new_zeros(0))


def make_scoring_head(head: torch.nn.Module) -> torch.nn.Module:
    """Turn an ``nn.Linear`` LM head into a :class:`ScoringHead` in place (same parameters)."""
    if isinstance(head, ScoringHead):
        return head
    if type(head) is not torch.nn.Linear:
        raise TypeError(
            f"the LM head must be a plain nn.Linear to score through it, got {type(head).__name__}"
        )
    head.__class__ = ScoringHead
    return head


def naive_logp_entropy(
    hidden_NH: Tensor,
    weight_VH: Tensor,
    targets_N: Tensor,
    temperature: float = 1.0,
    bias_V: Tensor | None = None,
    suppress_ids: Sequence[int] | Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The textbook computation (full logits, log_softmax, gather, ``-sum p log p``).

    Materialises several ``N x V`` tensors: a reference for tests and the memory
    benchmark only, never for training.
    """
    compute_dtype = torch.promote_types(hidden_NH.dtype, torch.float32)
    logits_NV = hidden_NH.to(compute_dtype) @ weight_VH.to(compute_dtype).T
    if bias_V is not None:
        logits_NV = logits_NV + bias_V.to(compute_dtype)
    suppress_S = _suppress_index(suppress_ids, weight_VH.shape[0], weight_VH.device)
    if suppress_S is not None:
        logits_NV = logits_NV.index_fill(1, suppress_S, SUPPRESS_LOGIT)
    logits_NV = logits_NV / temperature
    logq_NV = torch.log_softmax(logits_NV, dim=-1)
    del logits_NV
    logp_N = logq_NV.gather(1, targets_N.long()[:, None]).squeeze(1)
    entropy_N = -(logq_NV.exp() * logq_NV).sum(dim=-1)
    return logp_N, entropy_N


# ---------------------------------------------------------------------------
# Models: hidden states -> scores
# ---------------------------------------------------------------------------


def _base_and_head(model: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(base model returning hidden states, LM head) of a causal (VL) LM."""
    inner = unwrap_model(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        head = getattr(inner, "lm_head", None)
    prefix = getattr(inner, "base_model_prefix", "model") or "model"
    base = getattr(inner, prefix, None)
    if base is None or base is inner:
        base = getattr(inner, "model", None)
    if head is None or base is None:
        raise TypeError(f"cannot find the base model and LM head of {type(model).__name__}")
    if hasattr(head, "lora_A"):
        # The chunked head reads `head.weight` directly; a LoRA delta on the head would be
        # silently ignored. (peft's modules_to_save copy is fine: `.weight` is the active copy.)
        raise ValueError(
            "LoRA on the LM head is not supported by chunked scoring: leave lm_head out of target_modules"
        )
    return base, head


def _model_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (a sharded DTensor reports its local device)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _to(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def _resolve_suppress(model: Any, suppress_ids: Sequence[int] | str | None, vocab: int) -> list[int] | None:
    if suppress_ids is None:
        return None
    if isinstance(suppress_ids, str):
        if suppress_ids != VISION:
            raise ValueError(f"suppress_ids must be ids, None or {VISION!r} here; got {suppress_ids!r}")
        # Ids past the LM head's vocabulary (a config larger than the head) cannot be sampled anyway.
        return [i for i in vision_token_ids(model) if i < vocab]
    return list(suppress_ids)


def mm_token_types_from_ids(model: Any, input_ids_BL: Tensor) -> Tensor:
    """The processor's ``mm_token_type_ids``: 1 at image tokens, 2 at video tokens, 0 elsewhere.

    Without it, Qwen2.5-VL silently falls back to 1-D positions and log-probs are
    off by up to 8.6 nats (BASELINES); rebuilt here when a caller has none.
    """
    config = unwrap_model(model).config
    types_BL = torch.zeros_like(input_ids_BL, dtype=torch.int32)
    image_id = getattr(config, "image_token_id", None)
    video_id = getattr(config, "video_token_id", None)
    if image_id is not None:
        types_BL[input_ids_BL == image_id] = 1
    if video_id is not None:
        types_BL[input_ids_BL == video_id] = 2
    return types_BL


def score_sequences(
    model: Any,
    input_ids_BL: Tensor,
    attention_mask_BL: Tensor,
    mm_token_type_ids_BL: Tensor | None = None,
    pixel_values: Tensor | None = None,
    image_grid_thw: Tensor | None = None,
    *,
    response_start_B: int | Tensor | None = None,
    response_mask_BT: Tensor | None = None,
    target_mask_BL: Tensor | None = None,
    with_entropy: bool = True,
    chunk_size: int = 1024,
    grad: bool = False,
    temperature: float = 1.0,
    suppress_ids: Sequence[int] | str | None = VISION,
) -> TokenScores:
    """Score given tokens of a batch of sequences (prompt + continuation) under ``model``.

    One base forward (vision tower + language model, ``use_cache=False``) gives the
    last hidden states; the hidden state at column ``c - 1`` predicts the token at
    column ``c``, and only the scored positions go through the LM head, chunked.

    Which tokens are scored, in one of two ways:

    * ``response_start_B`` + ``response_mask_BT``: token ``t`` of row ``b``'s
      response sits at column ``response_start_B[b] + t`` (an int is the same for
      every row, e.g. the common width P of left-padded prompts); only tokens with
      ``response_mask_BT`` True are scored. Output is ``B x T``.
    * ``target_mask_BL``: score every column where it is True (column 0 cannot be,
      nothing predicts it). Output is ``B x L``, aligned with ``input_ids_BL``
      (what a teacher-forced SFT loss with a label mask wants).

    Args:
        model: a Qwen2.5-VL (or any HF causal LM with ``.model`` + ``lm_head``),
            possibly peft-wrapped: policy, frozen reference or teacher alike.
        input_ids_BL, attention_mask_BL: left-padded prompts followed by
            right-padded continuations, as the model is fed them.
        mm_token_type_ids_BL: the processor's token types; rebuilt from the image /
            video token ids when None (never silently dropped: see
            :func:`mm_token_types_from_ids`).
        pixel_values, image_grid_thw: every image of the batch, in row order.
        with_entropy: also compute the full-vocabulary entropy.
        chunk_size: positions per LM-head chunk.
        grad: False runs under ``torch.no_grad()``; True lets gradients reach the
            model (LM head, language model, vision tower).
        temperature: scores ``log softmax(logits / temperature)``.
        suppress_ids: vocabulary ids whose logits are set to ``SUPPRESS_LOGIT`` (as the
            sampler does); ``"vision"`` (default) = :func:`warmstart.rollout.vision_token_ids`;
            None = the raw model distribution. To match a sampler exactly pass its ids
            (``Rollouts.suppressed_ids`` / ``rollout.suppressed_token_ids``).

    Returns:
        :class:`TokenScores`, float32, zero where not scored.
    """
    if (target_mask_BL is None) == (response_mask_BT is None):
        raise ValueError("give exactly one of target_mask_BL or (response_start_B, response_mask_BT)")
    n_rows, seq_len = input_ids_BL.shape
    device = input_ids_BL.device
    cols_L = torch.arange(seq_len, device=device)
    if target_mask_BL is not None:
        if target_mask_BL.shape != input_ids_BL.shape:
            raise ValueError(
                f"target_mask_BL {tuple(target_mask_BL.shape)} != input_ids {tuple(input_ids_BL.shape)}"
            )
        if bool(target_mask_BL[:, 0].any()):
            raise ValueError("target_mask_BL[:, 0] must be False: no position predicts the first token")
        token_col_BT = cols_L.expand(n_rows, seq_len)
        scored_BT = target_mask_BL.bool()
    else:
        if response_start_B is None:
            raise ValueError("response_mask_BT needs response_start_B")
        n_resp = response_mask_BT.shape[1]
        start_B = torch.as_tensor(response_start_B, device=device, dtype=torch.long).expand(n_rows)
        token_col_BT = start_B[:, None] + torch.arange(n_resp, device=device)
        scored_BT = response_mask_BT.bool()
        if bool(scored_BT.any()):
            used_cols = token_col_BT[scored_BT]
            if int(used_cols.min()) < 1 or int(used_cols.max()) >= seq_len:
                raise ValueError(
                    f"scored response tokens fall outside columns [1, {seq_len}): "
                    f"response_start_B={start_B.tolist()}, T={n_resp}"
                )
    if mm_token_type_ids_BL is None and (pixel_values is not None or image_grid_thw is not None):
        mm_token_type_ids_BL = mm_token_types_from_ids(model, input_ids_BL)

    base, head = _base_and_head(model)
    out_device = input_ids_BL.device
    model_device = _model_device(base)
    if model_device != out_device:
        input_ids_BL, attention_mask_BL = input_ids_BL.to(model_device), attention_mask_BL.to(model_device)
        mm_token_type_ids_BL = _to(mm_token_type_ids_BL, model_device)
        pixel_values, image_grid_thw = _to(pixel_values, model_device), _to(image_grid_thw, model_device)
        token_col_BT, scored_BT = token_col_BT.to(model_device), scored_BT.to(model_device)
    through_head = isinstance(head, ScoringHead)
    # Under FSDP the head's weight is a shard here; its vocabulary size is in the config.
    vocab = head.out_features if isinstance(head, torch.nn.Linear) else head.weight.shape[0]
    suppress = _resolve_suppress(model, suppress_ids, vocab)

    with torch.set_grad_enabled(grad):
        kwargs = dict(input_ids=input_ids_BL, attention_mask=attention_mask_BL, use_cache=False)
        if mm_token_type_ids_BL is not None:
            kwargs["mm_token_type_ids"] = mm_token_type_ids_BL
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values
            kwargs["image_grid_thw"] = image_grid_thw
        # bf16 compute over fp32 master weights (ddp + optim.dtype bfloat16); the head below
        # stays out of autocast: it computes in float32 by design.
        with autocast_for(model, model_device):
            hidden_BLH = base(**kwargs).last_hidden_state
        # Only the positions that predict a scored token go through the LM head.
        rows_N, slots_N = scored_BT.nonzero(as_tuple=True)
        cols_N = token_col_BT[rows_N, slots_N]
        hidden_NH = hidden_BLH[rows_N, cols_N - 1]
        targets_N = input_ids_BL[rows_N, cols_N]
        opts = dict(chunk_size=chunk_size, with_entropy=with_entropy, temperature=temperature)
        if through_head:
            # Through the module: FSDP2 gathers the weight for this forward (and its backward).
            sup = (
                None if suppress is None else torch.as_tensor(suppress, dtype=torch.long, device=model_device)
            )
            logp_N, entropy_N = head(hidden_NH, score_targets=targets_N, suppress_ids=sup, **opts)
            entropy_N = entropy_N if with_entropy else None
        else:
            logp_N, entropy_N = chunked_logp_entropy(
                hidden_NH,
                head.weight,
                targets_N,
                bias_V=getattr(head, "bias", None),
                suppress_ids=suppress,
                **opts,
            )
        # Scatter back into zero-filled B x T tensors (index_put keeps the graph for grad=True).
        out_shape = scored_BT.shape
        logp_BT = logp_N.new_zeros(out_shape).index_put((rows_N, slots_N), logp_N).to(out_device)
        entropy_BT = None
        if entropy_N is not None:
            entropy_BT = entropy_N.new_zeros(out_shape).index_put((rows_N, slots_N), entropy_N).to(out_device)
    return TokenScores(logp_BT=logp_BT, entropy_BT=entropy_BT)


# ---------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------


def score_rollouts(
    model: Any,
    rollouts: Any,
    with_entropy: bool = True,
    chunk_size: int = 1024,
    grad: bool = False,
    temperature: float = 1.0,
    micro_batch: int | None = None,
    suppress_ids: Sequence[int] | str | None = AUTO,
) -> TokenScores:
    """Score the response tokens of ``rollouts`` under ``model`` (policy, reference or teacher).

    The sequences are ``rollouts.full_sequences()``: each row's left-padded prompt
    (width P) followed by its right-padded response (width T), so response token
    ``t`` sits at column ``P + t`` and is predicted by position ``P - 1 + t``.

    Args:
        model: any model of the rollouts' tokenizer (peft-wrapped too).
        rollouts: a :class:`warmstart.rollout.Rollouts`.
        with_entropy, chunk_size, grad, temperature: as :func:`score_sequences`.
        micro_batch: rows per forward (bounds activation memory when ``grad=False``;
            with ``grad=True`` every micro-batch's graph lives until the caller's backward).
        suppress_ids: ``"auto"`` (default) = ``rollouts.suppressed_ids``, the ids the
            sampler suppressed, so that these scores describe the very distribution
            the behaviour ``logp_BT`` / ``entropy_BT`` came from (falls back to
            ``"vision"`` when the rollouts record none); otherwise as :func:`score_sequences`.

    Returns:
        :class:`TokenScores` of shape ``B x T``, zero where ``response_mask_BT`` is False.
    """
    if isinstance(suppress_ids, str) and suppress_ids == AUTO:
        suppress_ids = list(getattr(rollouts, "suppressed_ids", ()) or ()) or VISION
    mask_BT = rollouts.response_mask_BT
    n_rows, n_resp = mask_BT.shape
    step = int(micro_batch) if micro_batch else max(n_rows, 1)
    logp_parts: list[Tensor] = []
    entropy_parts: list[Tensor] = []
    for s in range(0, n_rows, step):
        rows = list(range(s, min(s + step, n_rows)))
        seqs = rollouts.full_sequences(None if len(rows) == n_rows else rows)
        input_ids_BL = seqs.input_ids_BL
        scores = score_sequences(
            model,
            input_ids_BL,
            seqs.attention_mask_BL,
            seqs.mm_token_type_ids_BL,
            seqs.pixel_values,
            seqs.image_grid_thw,
            # Prompt then response: the response occupies the last T columns.
            response_start_B=input_ids_BL.shape[1] - n_resp,
            response_mask_BT=mask_BT[rows],
            with_entropy=with_entropy,
            chunk_size=chunk_size,
            grad=grad,
            temperature=temperature,
            suppress_ids=suppress_ids,
        )
        logp_parts.append(scores.logp_BT)
        if scores.entropy_BT is not None:
            entropy_parts.append(scores.entropy_BT)
    if len(logp_parts) == 1:
        return TokenScores(logp_BT=logp_parts[0], entropy_BT=entropy_parts[0] if with_entropy else None)
    return TokenScores(
        logp_BT=torch.cat(logp_parts),
        entropy_BT=torch.cat(entropy_parts) if with_entropy else None,
    )

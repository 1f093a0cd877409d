"""Scoring rollouts with each prompt run once for all of its rows: ``score_rollouts_shared_prompts``.

A GRPO batch has ``n`` rows per prompt (8 in the toy study) and the prompt is about half
of every row (75 of ~140 columns). :func:`warmstart.scoring.score_rollouts` feeds every
row's prompt through the model again, so the training forward (and its backward) spends
most of its time on ``n`` copies of the same prompt. Here:

1. the distinct prompts of the rows go through the model once (vision tower, merged image
   embeddings, 3-D positions: transformers' own forward), keeping their KV cache;
2. the cache is gathered to the rows (an index, differentiable: the gradients of the n
   rows that share a prompt add up in its K/V, as they would across n copies);
3. the responses run on top of that cache, at positions ``p_b + t`` (after the prompt
   every token is text, so the three mrope components are equal; ``p_b`` = the prompt's
   largest position + 1, what ``get_rope_index`` gives the full sequence);
4. the hidden state of the prompt's last column predicts response token 0, that of
   response column ``t - 1`` token ``t``; only those positions go through the chunked LM head
   (:func:`warmstart.scoring.chunked_logp_entropy`).

Causal attention makes this the very same computation as the full forward (prompt tokens
never see response tokens), so values and gradients equal ``score_rollouts``' to float
rounding (tested); it needs about ``(P + T) / (P / n + T)`` less work.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from warmstart.rollout import Rollouts
from warmstart.scoring import (
    AUTO,
    VISION,
    TokenScores,
    _base_and_head,
    _resolve_suppress,
    chunked_logp_entropy,
    mm_token_types_from_ids,
)

__all__ = ["response_logq", "rows_per_prompt", "score_rows", "score_rollouts_shared_prompts"]


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _response_states(model: Any, rollouts: Rollouts, grad: bool, suppress_ids: Sequence[int] | str | None):
    """The shared-prompt forward up to the LM head: what predicts each response token.

    Returns ``(pred_BTH, resp_ids_BT, mask_BT, head, suppress)``: ``pred_BTH[b, t]`` is the
    last hidden state that predicts response token ``t`` of row ``b`` (steps 1-4 above),
    ``head`` the LM head module and ``suppress`` the resolved suppressed ids.
    """
    if isinstance(suppress_ids, str) and suppress_ids == AUTO:
        suppress_ids = list(rollouts.suppressed_ids or ()) or VISION
    base, head = _base_and_head(model)
    weight_VH = head.weight
    suppress = _resolve_suppress(model, suppress_ids, weight_VH.shape[0])
    device = weight_VH.device
    mask_BT = rollouts.response_mask_BT.to(device)
    n_rows, n_resp = mask_BT.shape
    # The distinct prompts of these rows, and which of them each row answers.
    used_U, row_to_u_B = torch.unique(rollouts.prompt_index_B, return_inverse=True)
    prompts = rollouts.prompts.select(used_U)
    ids_UP = prompts.input_ids_QP.to(device)
    pmask_UP = prompts.attention_mask_QP.to(device)
    grid = None if prompts.image_grid_thw_I3 is None else prompts.image_grid_thw_I3.to(device)
    pixels = None if prompts.pixel_values is None else prompts.pixel_values.to(device)
    mm_UP = prompts.mm_token_type_ids_QP
    if mm_UP is None and pixels is not None:
        mm_UP = mm_token_types_from_ids(model, ids_UP)
    mm_UP = torch.zeros_like(ids_UP) if mm_UP is None else mm_UP.to(device)
    row_to_u_B = row_to_u_B.to(device)
    with torch.set_grad_enabled(grad):
        pos_3UP, _ = base.get_rope_index(ids_UP, mm_UP, image_grid_thw=grid, attention_mask=pmask_UP)
        prompt_out = base(
            input_ids=ids_UP,
            attention_mask=pmask_UP,
            position_ids=pos_3UP,
            pixel_values=pixels,
            image_grid_thw=grid,
            mm_token_type_ids=mm_UP,
            use_cache=True,
        )
        cache = _cache_of(prompt_out)
        cache.batch_select_indices(row_to_u_B)
        next_pos_B = (pos_3UP.amax(dim=(0, 2)) + 1)[row_to_u_B]
        pos_3BT = (next_pos_B[:, None] + torch.arange(n_resp, device=device)).expand(3, -1, -1)
        resp_ids_BT = rollouts.response_ids_BT.to(device)
        hidden_BTH = base(
            input_ids=resp_ids_BT,
            attention_mask=torch.cat([pmask_UP[row_to_u_B], mask_BT.to(pmask_UP.dtype)], dim=1),
            position_ids=pos_3BT,
            mm_token_type_ids=torch.zeros_like(resp_ids_BT),
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        # Predictors: the prompt's last column for token 0, response column t - 1 for token t.
        last_BH = prompt_out.last_hidden_state[:, -1][row_to_u_B]
        pred_BTH = torch.cat([last_BH[:, None], hidden_BTH[:, :-1]], dim=1)
    return pred_BTH, resp_ids_BT, mask_BT, head, suppress


def score_rollouts_shared_prompts(
    model: Any,
    rollouts: Rollouts,
    with_entropy: bool = True,
    chunk_size: int = 1024,
    grad: bool = False,
    temperature: float = 1.0,
    suppress_ids: Sequence[int] | str | None = AUTO,
) -> TokenScores:
    """:func:`warmstart.scoring.score_rollouts` (same arguments, same result) with one prompt forward per prompt.

    Returns :class:`TokenScores` of shape ``B x T``, zero where ``response_mask_BT`` is False.
    """
    pred_BTH, resp_ids_BT, mask_BT, head, suppress = _response_states(model, rollouts, grad, suppress_ids)
    with torch.set_grad_enabled(grad):
        rows_N, slots_N = mask_BT.nonzero(as_tuple=True)
        logp_N, entropy_N = chunked_logp_entropy(
            pred_BTH[rows_N, slots_N],
            head.weight,
            resp_ids_BT[rows_N, slots_N],
            chunk_size=chunk_size,
            with_entropy=with_entropy,
            temperature=temperature,
            bias_V=getattr(head, "bias", None),
            suppress_ids=suppress,
        )
        logp_BT = logp_N.new_zeros(mask_BT.shape).index_put((rows_N, slots_N), logp_N)
        entropy_BT = None
        if entropy_N is not None:
            entropy_BT = entropy_N.new_zeros(mask_BT.shape).index_put((rows_N, slots_N), entropy_N)
    return TokenScores(logp_BT=logp_BT, entropy_BT=entropy_BT)


def response_logq(
    model: Any,
    rollouts: Rollouts,
    grad: bool = False,
    temperature: float = 1.0,
    suppress_ids: Sequence[int] | str | None = AUTO,
    vocab: int | None = None,
) -> torch.Tensor:
    """The full next-token distribution at every response position: ``log_softmax`` logits, ``B x T x V``.

    What OPD's dense estimators (:data:`warmstart.losses.OPD_ESTIMATORS`) compare, student
    (``grad=True``) and in-process teacher alike, from the same forward as
    :func:`score_rollouts_shared_prompts` (each prompt once), so a teacher identical to the
    student gives the very same numbers. The logits are those the scorer and the sampler
    use (suppressed ids set to ``SUPPRESS_LOGIT``, then divided by ``temperature``), in float32.

    Unlike the chunked scorer this *materialises* ``N x V`` logits (N = real response tokens)
    and, with ``grad``, keeps them for backward: memory grows with the vocabulary (152k for
    Qwen2.5-VL); bound it with the update's micro-batch. ``vocab``: keep the first ``vocab``
    entries (renormalised over them): a teacher whose head is wider than the student's
    (padding ids, e.g. 152,064 vs 151,936) is compared on the student's vocabulary; a head
    narrower than ``vocab`` is an error. Zero at padding positions.
    """
    from warmstart.scoring import _chunk_logits, _suppress_index

    pred_BTH, _, mask_BT, head, suppress = _response_states(model, rollouts, grad, suppress_ids)
    weight_VH = head.weight
    n_vocab = weight_VH.shape[0]
    if vocab is not None and vocab > n_vocab:
        raise ValueError(f"this model's vocabulary ({n_vocab}) is smaller than the {vocab} asked for")
    with torch.set_grad_enabled(grad):
        rows_N, slots_N = mask_BT.nonzero(as_tuple=True)
        hidden_NH = pred_BTH[rows_N, slots_N]
        dtype = torch.promote_types(hidden_NH.dtype, torch.float32)
        bias_V = getattr(head, "bias", None)
        z_NV = _chunk_logits(
            hidden_NH.to(dtype),
            weight_VH.to(dtype),
            None if bias_V is None else bias_V.to(dtype),
            temperature,
            _suppress_index(suppress, n_vocab, weight_VH.device),
        )
        if vocab is not None and vocab < n_vocab:
            z_NV = z_NV[:, :vocab]
        logq_NV = torch.log_softmax(z_NV, dim=-1)
        out_BTV = logq_NV.new_zeros((*mask_BT.shape, logq_NV.shape[-1]))
        return out_BTV.index_put((rows_N, slots_N), logq_NV)


def rows_per_prompt(rollouts: Rollouts) -> float:
    """Mean rows per distinct prompt (how much :func:`score_rollouts_shared_prompts` saves on prompts)."""
    return rollouts.num_rows / max(1, int(torch.unique(rollouts.prompt_index_B).numel()))


def score_rows(model: Any, rollouts: Rollouts, share: bool = True, **kwargs: Any) -> TokenScores:
    """Score ``rollouts``: each shared prompt once when rows share one (and ``share``), else row by row.

    The one choice the trainer's update and the in-process teacher both make, so a teacher
    identical to the student scores a batch with the very computation the update runs
    (OPD's advantage is then exactly zero). ``kwargs`` go to the scorer
    (``with_entropy``, ``grad``, ``chunk_size``, ...).
    """
    from warmstart.scoring import score_rollouts

    if share and rows_per_prompt(rollouts) > 1:
        return score_rollouts_shared_prompts(model, rollouts, **kwargs)
    return score_rollouts(model, rollouts, **kwargs)

"""The in-process rollout engine: a KV-cache decoder over a Qwen2.5-VL's own weights.

:class:`warmstart.sampler.LocalSampler` runs it; callers go through a
:class:`~warmstart.sampler.Sampler`, never through this module. It turns a
:class:`~warmstart.rollout.PromptBatch` into :class:`~warmstart.rollout.Rollouts`
(the contract lives in :mod:`warmstart.rollout`). How it works, and why:

* **Prefill through the real HF forward, once per prompt.** The vision tower, the
  merge of image features into the token embeddings and the 3-D (mrope) positions
  are transformers' own code. Each prompt and its image are encoded once for all
  ``n`` samples. A text prefix that every prompt shares (a system prompt, the chat
  header) is run once and its KV cache reused for all prompts.
* **Decode with a small step of our own** over the language model's weights.
  ``generate`` spends only 3-14% of its time on its own overhead at toy scale
  (shared/BASELINES.md); the rest is the per-token forward, which here does less:
  q/k/v in one matmul and gate/up in one, residual adds fused into ``addmm``, a
  preallocated KV cache written in place (no ``torch.cat`` per step), the prompt's
  K/V stored and read once for its n samples, grouped-query attention without
  ``repeat_kv``, the token suppression folded into the LM head, and one uniform
  random number per row for the draw (inverse CDF) instead of ``torch.multinomial``.
* **Positions.** After the prompt every token is text, and for text the three mrope
  components are equal, so decoding is plain 1-D rope at position ``p_b + t``, where
  ``p_b`` = (largest prompt position of row b) + 1 = its real prompt length +
  ``rope_delta``. The cos/sin come from the model's own rotary module.
* **Suppressed tokens** (:func:`warmstart.rollout.suppressed_token_ids`) get the logit
  :data:`~warmstart.rollout.SUPPRESS_LOGIT`, folded into the LM head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from warmstart.data.schema import Problem
from warmstart.models.load import unwrap_model
from warmstart.rollout import (
    SUPPRESS_LOGIT,
    PromptBatch,
    Rollouts,
    SamplingParams,
    encode_prompts,
    eos_token_ids,
    suppressed_token_ids,
)

__all__ = ["sample", "sample_from_logits", "top_p_mask"]

# Shortest common prompt prefix worth a separate prefill forward (see _Decoder.prefill).
MIN_SHARED_PREFIX = 8


# ---------------------------------------------------------------------------
# Sampling math (pure functions)
# ---------------------------------------------------------------------------


def _nucleus_size(sorted_probs_BV: Tensor, top_p: float) -> Tensor:
    """How many of the probability-sorted tokens form the top-p nucleus (``B x 1``).

    A token is in when the mass of the tokens ranked above it is < ``top_p``, so the
    most likely token always is.
    """
    mass_before_BV = sorted_probs_BV.cumsum(-1) - sorted_probs_BV
    return (mass_before_BV < top_p).sum(-1, keepdim=True)


def top_p_mask(probs_BV: Tensor, top_p: float) -> Tensor:
    """True on the top-p nucleus of each row (the tokens :func:`sample_from_logits` may draw)."""
    sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
    ranks_V = torch.arange(probs_BV.shape[-1], device=probs_BV.device)
    keep_sorted_BV = ranks_V < _nucleus_size(sorted_BV, top_p)
    return torch.zeros_like(keep_sorted_BV).scatter_(-1, order_BV, keep_sorted_BV)


def sample_from_logits(
    logits_BV: Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw one token per row: (token_B, logp_B, entropy_B) of ``softmax(logits / temperature)``.

    Suppression is expected in ``logits_BV`` already. The draw is by inverse CDF: one
    uniform ``u`` per row, token = first v with ``cumsum(p)_v > u * sum(p)``. That is
    exact categorical sampling (what ``torch.multinomial`` does on CPU) with one random
    number per row; the exponential race ``argmax p / Exp(1)`` needs one per vocabulary
    entry and spent ~10x longer in the random number generator here. A zero-probability
    token is never drawn: its cumulative sum equals its predecessor's. The entropy is
    ``lse - sum_v p_v z_v``, from the same logits (closer to float64 than
    ``-sum p log p`` in float32, BASELINES).

    Args:
        logits_BV: next-token logits (any float dtype; the math is float32).
        temperature: softmax temperature (> 0).
        top_p: draw only from the nucleus (:func:`top_p_mask`); the returned logp and
            entropy stay those of the whole tempered distribution.
        greedy: take the argmax instead of drawing.
        generator: random source of the draw.
    """
    z_BV = logits_BV.float()
    if temperature != 1.0:
        z_BV = z_BV / temperature
    lse_B = torch.logsumexp(z_BV, dim=-1)
    probs_BV = torch.exp(z_BV - lse_B[:, None])
    entropy_B = lse_B - (probs_BV * z_BV).sum(-1)
    if greedy:
        token_B = z_BV.argmax(-1)
    elif top_p < 1.0:
        # The nucleus is a prefix of the probability-sorted tokens: draw within it.
        u_B1 = torch.rand(z_BV.shape[0], 1, generator=generator, device=z_BV.device)
        sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
        cum_BV = sorted_BV.cumsum(-1)
        n_kept_B1 = _nucleus_size(sorted_BV, top_p)
        pick_B1 = torch.searchsorted(cum_BV, u_B1 * cum_BV.gather(1, n_kept_B1 - 1), right=True)
        token_B = order_BV.gather(1, torch.minimum(pick_B1, n_kept_B1 - 1)).squeeze(1)
    else:
        u_B1 = torch.rand(z_BV.shape[0], 1, generator=generator, device=z_BV.device)
        cum_BV = probs_BV.cumsum(-1)
        pick_B1 = torch.searchsorted(cum_BV, u_B1 * cum_BV[:, -1:], right=True)
        # u < 1 keeps u * total below total, so the pick is in range; the clamp is only a guard.
        token_B = pick_B1.clamp_max_(z_BV.shape[1] - 1).squeeze(1)
    logp_B = z_BV.gather(1, token_B[:, None]).squeeze(1) - lse_B
    return token_B, logp_B, entropy_B


# ---------------------------------------------------------------------------
# Model plumbing
# ---------------------------------------------------------------------------


def _affine(module: torch.nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight_OI, bias_O) of a linear map, wrapped ones included (LoRA: base + adapters).

    A plain ``nn.Linear`` gives its parameters. Any other module (e.g. a peft LoRA layer
    in eval mode) is the affine map it computes, read off by probing: ``m(0)`` is the
    bias and ``m(I) - m(0)`` the transposed weight.
    """
    if type(module) is torch.nn.Linear:
        return module.weight, module.bias
    weight = next(module.parameters())
    n_in = getattr(module, "in_features", None) or weight.shape[1]
    eye = torch.eye(n_in, dtype=weight.dtype, device=weight.device)
    bias = module(torch.zeros_like(eye[:1]))[0]
    return (module(eye) - bias).T.contiguous(), bias


def _cache_of(output: Any) -> Any:
    """The KV cache of a transformers forward output (``cache``; ``past_key_values`` before 5.x renamed it)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _bias_or_zeros(bias: Tensor | None, weight: Tensor) -> Tensor:
    return bias if bias is not None else weight.new_zeros(weight.shape[0])


def _shared_text_prefix(ids_QP: Tensor, mm_QP: Tensor, start_Q: Tensor) -> int:
    """Length of the text prefix all left-padded prompts share, before any image token.

    At most the shortest prompt's length - 1, so every prompt keeps a token after it.
    """
    limit = int((ids_QP.shape[1] - start_Q).min()) - 1
    if limit <= 0:
        return 0
    # Row q's i-th real token sits at column start_q + i.
    cols_QC = start_Q[:, None] + torch.arange(limit, device=ids_QP.device)
    aligned_QC = ids_QP.gather(1, cols_QC)
    shared_C = (aligned_QC == aligned_QC[:1]).all(0) & (mm_QP.gather(1, cols_QC) == 0).all(0)
    first_difference = (~shared_C).nonzero()
    return int(first_difference[0]) if first_difference.numel() else limit


@dataclass
class _Layer:
    """One decoder layer's weights, packed for single-token steps."""

    ln1_H: Tensor
    w_qkv: Tensor  # ((H + 2 Hkv) D) x hidden: q, k, v stacked so that one matmul makes all three
    b_qkv: Tensor
    w_o_T: Tensor  # (H D) x hidden: transposed view, for addmm with the residual
    b_o: Tensor | None
    ln2_H: Tensor
    w_gate_up: Tensor  # (2 I) x hidden: gate and up stacked
    b_gate_up: Tensor | None
    w_down_T: Tensor  # I x hidden
    b_down: Tensor | None
    act: Callable[[Tensor], Tensor]
    eps: float


@dataclass
class _DecodeState:
    """The KV cache of one decode: each prompt's K/V once, each row's generated K/V.

    Shapes per layer: ``prompt_keys``/``prompt_values`` (Q Hkv) x P x D as the prefill
    left them; ``gen_keys``/``gen_values`` (B Hkv) x (max_new_tokens - 1) x D,
    preallocated and written in place; rows b = q * n + j (prompt-major).
    """

    rows_per_prompt: int
    prompt_keys: list[Tensor]
    prompt_values: list[Tensor]
    prompt_mask: Tensor  # (Q Hkv) x 1 x P: 0 on real prompt tokens, a large negative on padding
    gen_keys: list[Tensor]
    gen_values: list[Tensor]
    n_generated: int = 0  # generated tokens written so far per row


class _Decoder:
    """The language model of a Qwen2.5-VL as a prefill (HF) + one-token decode step (ours)."""

    def __init__(self, model: Any, suppress_ids: Sequence[int]) -> None:
        self.model = unwrap_model(model)
        self.vlm = self.model.model  # Qwen2_5_VLModel: vision tower + language model
        lm = self.vlm.language_model
        cfg = lm.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.hidden = cfg.hidden_size
        self.scale = self.head_dim**-0.5  # the HF attention's `scaling`
        self.rotary = lm.rotary_emb
        self.embed_VH = lm.embed_tokens.weight
        self.layers: list[_Layer] = []
        for layer in lm.layers:
            attn, mlp = layer.self_attn, layer.mlp
            (wq, bq), (wk, bk), (wv, bv) = (_affine(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
            (wg, bg), (wu, bu) = _affine(mlp.gate_proj), _affine(mlp.up_proj)
            w_o, b_o = _affine(attn.o_proj)
            w_down, b_down = _affine(mlp.down_proj)
            has_gate_up_bias = bg is not None or bu is not None
            self.layers.append(
                _Layer(
                    ln1_H=layer.input_layernorm.weight,
                    w_qkv=torch.cat([wq, wk, wv]),
                    b_qkv=torch.cat([_bias_or_zeros(b, w) for b, w in ((bq, wq), (bk, wk), (bv, wv))]),
                    w_o_T=w_o.T,
                    b_o=b_o,
                    ln2_H=layer.post_attention_layernorm.weight,
                    w_gate_up=torch.cat([wg, wu]),
                    b_gate_up=torch.cat([_bias_or_zeros(bg, wg), _bias_or_zeros(bu, wu)])
                    if has_gate_up_bias
                    else None,
                    w_down_T=w_down.T,
                    b_down=b_down,
                    act=mlp.act_fn,
                    eps=layer.input_layernorm.variance_epsilon,
                )
            )
        self.final_norm_H = lm.norm.weight
        self.final_eps = lm.norm.variance_epsilon
        # The suppression folded into the LM head: zero rows plus a bias of SUPPRESS_LOGIT
        # make those logits exactly SUPPRESS_LOGIT, in the matmul that makes the others.
        w_head, b_head = _affine(self.model.lm_head)
        ids = torch.as_tensor(list(suppress_ids), dtype=torch.long, device=w_head.device)
        self.w_head = w_head.clone()
        self.w_head[ids] = 0
        self.b_head = _bias_or_zeros(b_head, w_head).clone()
        self.b_head[ids] = SUPPRESS_LOGIT

    def head(self, hidden_BH: Tensor) -> Tensor:
        """Suppressed logits from final-normed hidden states."""
        return F.linear(hidden_BH, self.w_head, self.b_head)

    def rope_tables(self, n_positions: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos and signed sin of positions 0..n-1 (``N x D``), from the model's own rotary module.

        With the three mrope components equal (text tokens) the module gives plain rope.
        ``rotate_half(x) * sin == swap_halves(x) * signed_sin`` where signed_sin has its
        first half negated, so a step needs no ``cat`` of negated halves.
        """
        device = self.embed_VH.device
        pos_31N = torch.arange(n_positions, device=device).view(1, 1, -1).expand(3, 1, -1)
        cos_1ND, sin_1ND = self.rotary(torch.empty(0, dtype=dtype, device=device), pos_31N)
        sin_ND = sin_1ND[0].clone()
        sin_ND[:, : self.head_dim // 2] *= -1
        return cos_1ND[0], sin_ND

    def prefill(self, batch: PromptBatch) -> tuple[Tensor, list[tuple[Tensor, Tensor]], Tensor, Tensor]:
        """HF forward over the prompts.

        Returns the final hidden state of the last column (``Q x H``), per layer the
        (keys, values) of the prompt columns (``Q x Hkv x P x D``), the attention mask of
        those columns (``Q x P``) and each prompt's next position (``Q``).

        Prompts made from one template share their first tokens (system prompt, chat
        header). That shared text prefix is run once, for one row; its KV cache is
        repeated for every prompt and the rest of the prompts runs on top of it. The
        prefix ends before the first image token, and its positions are 0..C-1 in every
        row whatever the padding, so its K/V are those of every row. The cache columns
        are then ``[prefix | left padding | rest]``, which the returned mask describes.
        """
        device = self.embed_VH.device
        ids_QP = batch.input_ids_QP.to(device)
        mask_QP = batch.attention_mask_QP.to(device)
        mm_QP = torch.zeros_like(ids_QP) if batch.mm_token_type_ids_QP is None else batch.mm_token_type_ids_QP
        mm_QP = mm_QP.to(device)
        grid = None if batch.image_grid_thw_I3 is None else batch.image_grid_thw_I3.to(device)
        pixels = None if batch.pixel_values is None else batch.pixel_values.to(device)
        # The model's own 3-D positions (mask-aware). Passing them in keeps the forward
        # from recomputing them and from caching rope_deltas on the module.
        pos_3QP, _ = self.vlm.get_rope_index(ids_QP, mm_QP, image_grid_thw=grid, attention_mask=mask_QP)
        next_pos_Q = pos_3QP.amax(dim=(0, 2)) + 1  # = real length + rope_delta
        n_prompts, width = ids_QP.shape
        start_Q = (mask_QP == 0).sum(1)  # first real column of each row
        n_shared = _shared_text_prefix(ids_QP, mm_QP, start_Q) if n_prompts > 1 else 0
        cache = None
        if n_shared >= MIN_SHARED_PREFIX:
            first = int(start_Q[0])
            prefix = self.vlm(
                input_ids=ids_QP[:1, first : first + n_shared],
                attention_mask=mask_QP[:1, first : first + n_shared],
                position_ids=pos_3QP[:, :1, first : first + n_shared],
                use_cache=True,
            )
            cache = _cache_of(prefix)
            cache.batch_repeat_interleave(n_prompts)
            # Drop the prefix from each row, keeping the row's left padding on the left.
            col_S = torch.arange(width - n_shared, device=device)
            src_QS = col_S + n_shared * (col_S >= start_Q[:, None])
            ids_QP, mm_QP = ids_QP.gather(1, src_QS), mm_QP.gather(1, src_QS)
            pos_3QP = pos_3QP.gather(2, src_QS.expand(3, -1, -1))
            mask_QP = torch.cat([mask_QP.new_ones(n_prompts, n_shared), mask_QP.gather(1, src_QS)], dim=1)
        out = self.vlm(
            input_ids=ids_QP,
            attention_mask=mask_QP,
            position_ids=pos_3QP,
            pixel_values=pixels,
            image_grid_thw=grid,
            mm_token_type_ids=mm_QP,
            cache=cache,
            use_cache=True,
        )
        kv = [(layer.keys, layer.values) for layer in _cache_of(out).layers]
        return out.last_hidden_state[:, -1], kv, mask_QP, next_pos_Q

    def attend(self, q_BHD: Tensor, layer: int, state: _DecodeState) -> Tensor:
        """Attention of one query token per row over its prompt's and its own keys; ``B x (H D)``.

        Grouped-query attention without ``repeat_kv``: query head h reads KV head h // G
        (HF's order), so the query heads that read one block of keys become the query
        rows of one matmul:

        * prompt keys, stored once per prompt: the n rows x G heads of a (prompt, KV
          head) in one matmul, so a prompt's K/V are read once per step, not n times;
        * generated keys, per row: the G heads of a (row, KV head).

        The two blocks of scores are concatenated for one softmax, so the result is
        attention over all the row's keys.
        """
        n_rows = q_BHD.shape[0]
        n_kv, head_dim = self.n_kv, self.head_dim
        group = self.n_heads // n_kv
        n_per = state.rows_per_prompt
        n_prompts = n_rows // n_per
        n_gen = state.n_generated
        k_prompt, v_prompt = state.prompt_keys[layer], state.prompt_values[layer]
        k_gen, v_gen = state.gen_keys[layer][:, :n_gen], state.gen_values[layer][:, :n_gen]
        width = k_prompt.shape[1]
        q = q_BHD.contiguous().view(n_prompts, n_per, n_kv, group, head_dim)
        q_prompt = q.transpose(1, 2).reshape(n_prompts * n_kv, n_per * group, head_dim)
        s_prompt = torch.baddbmm(state.prompt_mask, q_prompt, k_prompt.transpose(1, 2), alpha=self.scale)
        s_gen = torch.bmm(q.view(n_rows * n_kv, group, head_dim), k_gen.transpose(1, 2)).mul_(self.scale)
        scores = torch.cat(
            [
                s_prompt.view(n_prompts, n_kv, n_per, group, width).transpose(1, 2),
                s_gen.view(n_prompts, n_per, n_kv, group, n_gen),
            ],
            dim=-1,
        )  # Q x n x Hkv x G x (P + t)
        probs = torch.softmax(scores, dim=-1)
        out = torch.bmm(probs.view(n_rows * n_kv, group, -1)[..., width:], v_gen)
        p_prompt = probs[..., :width].transpose(1, 2).reshape(n_prompts * n_kv, n_per * group, width)
        out_prompt = torch.bmm(p_prompt, v_prompt).view(n_prompts, n_kv, n_per, group, head_dim)
        out = out.view(n_prompts, n_per, n_kv, group, head_dim).add_(out_prompt.transpose(1, 2))
        return out.view(n_rows, self.n_heads * head_dim)

    def step(self, token_B: Tensor, cos_BD: Tensor, sin_BD: Tensor, state: _DecodeState) -> Tensor:
        """Feed one token per row through the language model; return suppressed next-token logits."""
        n_rows = token_B.shape[0]
        n_heads, n_kv, head_dim = self.n_heads, self.n_kv, self.head_dim
        n_qk = (n_heads + n_kv) * head_dim
        half = head_dim // 2
        cos, sin = cos_BD[:, None, :], sin_BD[:, None, :]
        slot = state.n_generated  # this token's K/V go to generated slot `slot`
        state.n_generated += 1
        h_BH = F.embedding(token_B, self.embed_VH)
        for i, layer in enumerate(self.layers):
            x = F.rms_norm(h_BH, (self.hidden,), layer.ln1_H, layer.eps)
            qkv = F.linear(x, layer.w_qkv, layer.b_qkv)
            # Rope on q and k at once (adjacent in qkv): x*cos + rotate_half(x)*sin.
            qk = qkv[:, :n_qk].view(n_rows, n_heads + n_kv, head_dim)
            swapped = qk.view(n_rows, n_heads + n_kv, 2, half).flip(2).view_as(qk)
            qk = torch.addcmul(qk * cos, swapped, sin)
            state.gen_keys[i].view(n_rows, n_kv, -1, head_dim)[:, :, slot] = qk[:, n_heads:]
            state.gen_values[i].view(n_rows, n_kv, -1, head_dim)[:, :, slot] = qkv[:, n_qk:].view(
                n_rows, n_kv, head_dim
            )
            h_BH = torch.addmm(h_BH, self.attend(qk[:, :n_heads], i, state), layer.w_o_T)
            if layer.b_o is not None:
                h_BH = h_BH + layer.b_o
            x = F.rms_norm(h_BH, (self.hidden,), layer.ln2_H, layer.eps)
            gate, up = F.linear(x, layer.w_gate_up, layer.b_gate_up).chunk(2, dim=-1)
            h_BH = torch.addmm(h_BH, layer.act(gate) * up, layer.w_down_T)
            if layer.b_down is not None:
                h_BH = h_BH + layer.b_down
        h_BH = F.rms_norm(h_BH, (self.hidden,), self.final_norm_H, self.final_eps)
        return self.head(h_BH)

    def generate(
        self,
        batch: PromptBatch,
        rows_per_prompt: int,
        params: SamplingParams,
        generator: torch.Generator,
        eos_ids: Sequence[int],
        pad_id: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Sample ``rows_per_prompt`` rows for each prompt of ``batch``, rows prompt-major.

        Returns (tokens_BT, mask_BT, logp_BT, entropy_BT, stopped_B).
        """
        device = self.embed_VH.device
        hidden_QH, kv, mask_QP, next_pos_Q = self.prefill(batch)
        n_prompts, width = mask_QP.shape
        n_rows = n_prompts * rows_per_prompt
        n_new = params.max_new_tokens
        dtype = hidden_QH.dtype
        prompt_mask = torch.zeros(n_prompts, 1, width, dtype=dtype, device=device)
        prompt_mask[:, 0].masked_fill_(mask_QP == 0, torch.finfo(dtype).min)
        gen_shape = (n_rows * self.n_kv, max(n_new - 1, 1), self.head_dim)  # the last token is never fed back
        state = _DecodeState(
            rows_per_prompt=rows_per_prompt,
            prompt_keys=[k.reshape(n_prompts * self.n_kv, width, self.head_dim) for k, _ in kv],
            prompt_values=[v.reshape(n_prompts * self.n_kv, width, self.head_dim) for _, v in kv],
            prompt_mask=prompt_mask.repeat_interleave(self.n_kv, dim=0),
            gen_keys=[torch.empty(gen_shape, dtype=dtype, device=device) for _ in kv],
            gen_values=[torch.empty(gen_shape, dtype=dtype, device=device) for _ in kv],
        )
        pos0_B = next_pos_Q.repeat_interleave(rows_per_prompt)
        cos_ND, sin_ND = self.rope_tables(int(pos0_B.max()) + n_new, dtype)
        eos_t = torch.tensor(sorted(eos_ids), device=device)

        finished_B = torch.zeros(n_rows, dtype=torch.bool, device=device)
        tokens, alive, logps, entropies = [], [], [], []
        logits_BV = self.head(hidden_QH).repeat_interleave(rows_per_prompt, dim=0)
        for t in range(n_new):
            token_B, logp_B, entropy_B = sample_from_logits(
                logits_BV, params.temperature, params.top_p, params.greedy, generator
            )
            if not params.ignore_eos:
                alive.append(~finished_B)
                token_B = torch.where(finished_B, pad_id, token_B)
                finished_B = finished_B | torch.isin(token_B, eos_t)
            tokens.append(token_B)
            logps.append(logp_B)
            entropies.append(entropy_B)
            if t == n_new - 1 or (not params.ignore_eos and bool(finished_B.all())):
                break
            # Feed the token (pad in finished rows, whose outputs are discarded).
            logits_BV = self.step(token_B, cos_ND[pos0_B + t], sin_ND[pos0_B + t], state)
        tokens_BT = torch.stack(tokens, 1)
        mask_BT = torch.ones_like(tokens_BT, dtype=torch.bool) if params.ignore_eos else torch.stack(alive, 1)
        logp_BT = torch.stack(logps, 1).masked_fill(~mask_BT, 0.0)
        entropy_BT = torch.stack(entropies, 1).masked_fill(~mask_BT, 0.0)
        return tokens_BT, mask_BT, logp_BT, entropy_BT, finished_B


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode while sampling (no dropout, LoRA dropout included), then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _chunks(n_prompts: int, n: int, max_rows: int | None) -> Iterator[tuple[int, int, int]]:
    """(first prompt, end prompt, rows per prompt) of each decode chunk, in row order.

    Every prompt of a chunk has the same number of rows (they share its K/V): whole
    groups of n rows when n <= max_rows, else one prompt's rows in pieces of max_rows.
    """
    if not max_rows or max_rows >= n_prompts * n:
        yield 0, n_prompts, n
    elif n <= max_rows:
        per_chunk = max_rows // n
        for start in range(0, n_prompts, per_chunk):
            yield start, min(start + per_chunk, n_prompts), n
    else:
        for q in range(n_prompts):
            for start in range(0, n, max_rows):
                yield q, q + 1, min(max_rows, n - start)


def sample(
    model: Any,
    processor: Any,
    problems_or_batch: Sequence[Problem] | PromptBatch,
    params: SamplingParams,
    *,
    max_batch_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Rollouts:
    """Sample ``params.n`` responses to each prompt.

    Args:
        model: a Qwen2.5-VL (possibly peft-wrapped); in eval mode while sampling.
        processor: its processor (tokenizer: EOS, pad, decoding).
        problems_or_batch: problems (encoded here by :func:`encode_prompts`) or a
            :class:`PromptBatch`.
        params: :class:`SamplingParams`.
        max_batch_rows: at most this many rows decode together (memory bound for big
            evaluations); chunks hold whole prompts, each prefilled once per chunk. The
            random stream runs through the chunks in order, so the same seed and the
            same ``max_batch_rows`` give the same tokens.
        progress: called as ``progress(rows_done, rows_total)`` after each chunk.

    Returns:
        :class:`Rollouts`; rows ``q*n .. q*n+n-1`` answer prompt q.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    batch = (
        problems_or_batch
        if isinstance(problems_or_batch, PromptBatch)
        else encode_prompts(problems_or_batch, processor)
    )
    n_prompts, n = batch.num_prompts, params.n
    suppress = suppressed_token_ids(model, tokenizer)
    eos = eos_token_ids(model, tokenizer)
    parts = []
    with _eval_mode(model), torch.inference_mode():
        decoder = _Decoder(model, suppress)
        generator = torch.Generator(device=decoder.embed_VH.device).manual_seed(params.seed)
        rows_done = 0
        for first, end, rows_per_prompt in _chunks(n_prompts, n, max_batch_rows):
            sub = batch.select(range(first, end))
            parts.append(decoder.generate(sub, rows_per_prompt, params, generator, eos, batch.pad_token_id))
            rows_done += (end - first) * rows_per_prompt
            if progress is not None:
                progress(rows_done, n_prompts * n)

    # Out of inference mode, clone into ordinary tensors: inference tensors cannot be
    # used by autograd later (e.g. as embedding indices in a training forward).
    width = max(p[0].shape[1] for p in parts)

    def joined(i: int, value: float) -> Tensor:
        return torch.cat([F.pad(p[i], (0, width - p[i].shape[1]), value=value) for p in parts]).cpu().clone()

    response_ids_BT, mask_BT = joined(0, batch.pad_token_id), joined(1, False)
    lengths_B = mask_BT.sum(1).tolist()
    stopped_B = torch.cat([p[4] for p in parts]).tolist()
    return Rollouts(
        prompts=batch,
        prompt_index_B=torch.arange(n_prompts).repeat_interleave(n),
        response_ids_BT=response_ids_BT,
        response_mask_BT=mask_BT,
        logp_BT=joined(2, 0.0),
        entropy_BT=joined(3, 0.0),
        finish_reason_B=["stop" if s else "length" for s in stopped_B],
        texts_B=tokenizer.batch_decode(
            [ids[:k] for ids, k in zip(response_ids_BT.tolist(), lengths_B)], skip_special_tokens=True
        ),
        suppressed_ids=tuple(suppress),
    )

"""The in-process rollout engine: a KV-cache decoder over a Qwen2.5-VL's own weights.

:class:`warmstart.sampler.LocalSampler` runs it; callers go through a
:class:`~warmstart.sampler.Sampler`, never through this module. It turns a
:class:`~warmstart.rollout.PromptBatch` into :class:`~warmstart.rollout.Rollouts`
(the contract lives in :mod:`warmstart.rollout`). How it works, and why:

* **Prefill once per prompt, on the same packed weights as the decode step.** The
  vision tower, the 3-D (mrope) positions and the rotary module are transformers' own
  code; the image features replace the image tokens' embeddings as the model's forward
  does, and the language model runs in chunks of a few prompts (see
  :meth:`_Decoder.prefill`). Each prompt and its image are encoded once for all ``n``
  samples. A text prefix that every prompt shares (a system prompt, the chat
  header) is run once and its KV cache reused for all prompts.
* **Decode with a small step of our own** over the language model's weights.
  ``generate`` spends only 3-14% of its time on its own overhead at toy scale
  (shared/BASELINES.md); the rest is the per-token forward, which here does less:
  q/k/v in one matmul and gate/up in one (written into one reused buffer, silu * up
  in place), weights stored input-major, residual adds fused into ``addmm``, a
  preallocated KV cache written in place (no ``torch.cat`` per step), the prompt's
  K/V stored and read once for its n samples, grouped-query attention without
  ``repeat_kv``, keys stored transposed (see :class:`_DecodeState`), the token
  suppression folded into the LM head, and one uniform
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
# Prompt tokens per chunk of the prefill (whole prompts; at least one per chunk).
PREFILL_CHUNK_TOKENS = 1024


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
    token is never drawn: its cumulative sum equals its predecessor's. The math is the
    scorer's (:mod:`warmstart.scoring`), op for op, so the two round alike: logits shifted
    by their row max, ``y = z - max``, ``lse' = log sum exp y``, log-prob ``y_token - lse'``
    and entropy ``lse' - sum_v p_v y_v`` (two non-negative terms: closer to float64 than
    ``-sum p log p`` in float32, BASELINES). The draw reads the unnormalised cumulative
    sum of ``exp y``; the greedy token is the index of the row max (the first one on a tie,
    as ``argmax``).

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
    max_B, argmax_B = z_BV.max(dim=-1)
    y_BV = z_BV - max_B[:, None]
    e_BV = y_BV.exp()
    sum_B = e_BV.sum(dim=-1)
    lse_B = sum_B.log()  # of the shifted logits
    if greedy:
        token_B = argmax_B
    elif top_p < 1.0:
        # The nucleus is a prefix of the probability-sorted tokens: draw within it.
        u_B1 = torch.rand(z_BV.shape[0], 1, generator=generator, device=z_BV.device)
        sorted_BV, order_BV = (e_BV / sum_B[:, None]).sort(dim=-1, descending=True)
        cum_BV = sorted_BV.cumsum(-1)
        n_kept_B1 = _nucleus_size(sorted_BV, top_p)
        pick_B1 = torch.searchsorted(cum_BV, u_B1 * cum_BV.gather(1, n_kept_B1 - 1), right=True)
        token_B = order_BV.gather(1, torch.minimum(pick_B1, n_kept_B1 - 1)).squeeze(1)
    else:
        u_B1 = torch.rand(z_BV.shape[0], 1, generator=generator, device=z_BV.device)
        cum_BV = e_BV.cumsum(-1)
        pick_B1 = torch.searchsorted(cum_BV, u_B1 * cum_BV[:, -1:], right=True)
        # u < 1 keeps u * total below total, so the pick is in range; the clamp is only a guard.
        token_B = pick_B1.clamp_max_(z_BV.shape[1] - 1).squeeze(1)
    # y of the greedy token is exactly 0 (its row max minus itself).
    logp_B = -lse_B if greedy else y_BV.gather(1, token_B[:, None]).squeeze(1) - lse_B
    entropy_B = lse_B - e_BV.div_(sum_B[:, None]).mul_(y_BV).sum(dim=-1)  # p = e / sum, in place
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


def _linear(x_NI: Tensor, weight_IO: Tensor, bias_O: Tensor | None) -> Tensor:
    """``x @ weight + bias`` with the weight stored input-major (``I x O``, contiguous)."""
    return torch.mm(x_NI, weight_IO) if bias_O is None else torch.addmm(bias_O, x_NI, weight_IO)


try:  # transformers' ACT2FN["silu"], whose forward is F.silu
    from transformers.activations import SiLUActivation

    _SILU_TYPES: tuple[type, ...] = (SiLUActivation,)
except ImportError:  # pragma: no cover - older transformers use torch.nn.SiLU
    _SILU_TYPES = ()


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _rms_norm(h_NH: Tensor, weight_H: Tensor, eps: Tensor | float, width: Tensor | float) -> Tensor:
    """``F.rms_norm(h, (H,), weight, eps)`` in its own ops, bit for bit, in fewer dispatches.

    ``eps`` and ``width`` (= H) may be 0-dim tensors of ``h``'s dtype: an in-place op with a
    Python float converts it to a tensor each call (``mean`` divides in place too). On CPU
    ``F.rms_norm`` runs ~12 ATen calls; these are 6 (~25% faster at decode size).
    """
    return torch.mul(h_NH, (h_NH * h_NH).sum(-1, keepdim=True).div_(width).add_(eps).rsqrt_()).mul_(weight_H)


def _bias_or_zeros(bias: Tensor | None, weight: Tensor) -> Tensor:
    return bias if bias is not None else weight.new_zeros(weight.shape[0])


# Image grids -> the vision tower's precomputed index tensors (see _vision_indices).
_VISION_INDICES: dict[tuple, dict[str, Tensor]] = {}
_VISION_INDICES_KEPT = 16


def _vision_indices(visual: torch.nn.Module, grid_I3: Tensor) -> dict[str, Tensor]:
    """Keyword arguments that give a Qwen2.5-VL vision tower its index tensors precomputed.

    transformers' vision encoders take ``position_ids``, ``cu_seqlens``, ``window_index``
    and ``cu_window_seqlens`` as keyword arguments (``transformers.vision_utils``: each is
    popped when given, else computed by a per-image Python loop). They depend only on the
    grids and the tower's config, so they are made by those same functions once per set
    of grids (the last few sets kept) and handed over as a fresh dict each call (the tower
    pops from it). Empty (the tower computes them) where those functions are missing.
    """
    try:
        from transformers.vision_utils import (
            get_vision_cu_seqlens,
            get_vision_position_ids,
            get_vision_window_index,
        )
    except ImportError:  # pragma: no cover - an older transformers computes them itself
        return {}
    merge = getattr(visual, "spatial_merge_size", None)
    window, patch = getattr(visual, "window_size", None), getattr(visual, "patch_size", None)
    if not all(isinstance(v, int) for v in (merge, window, patch)):
        return {}
    key = (merge, window, patch, str(grid_I3.device), tuple(map(tuple, grid_I3.tolist())))
    if key not in _VISION_INDICES:
        window_index, cu_window_seqlens = get_vision_window_index(
            grid_I3, spatial_merge_size=merge, window_size=window, patch_size=patch
        )
        if len(_VISION_INDICES) >= _VISION_INDICES_KEPT:
            del _VISION_INDICES[next(iter(_VISION_INDICES))]
        _VISION_INDICES[key] = {
            "position_ids": get_vision_position_ids(grid_I3, merge),
            "cu_seqlens": get_vision_cu_seqlens(grid_I3),
            "window_index": window_index,
            "cu_window_seqlens": cu_window_seqlens,
        }
    return dict(_VISION_INDICES[key])


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
    # ((H + 2 Hkv) D) x hidden: q, k, v stacked so that one matmul makes all three. (Folding
    # the attention's 1/sqrt(D) into the q rows saves an op but moved log-probs by up to
    # 1.3e-5 from a scoring pass on the test toy: the scale stays in the attention.)
    w_qkv_T: Tensor  # hidden x ((H + 2 Hkv) D), contiguous (as every weight here: see _Decoder)
    b_qkv: Tensor
    w_o_T: (
        Tensor  # (H D) x hidden, transposed and contiguous: addmm with the residual (faster than a .T view)
    )
    b_o: Tensor | None
    ln2_H: Tensor
    w_gate_up_T: Tensor  # hidden x (2 I): gate and up side by side, contiguous
    b_gate_up: Tensor | None
    w_down_T: Tensor  # I x hidden, contiguous
    b_down: Tensor | None
    act: Callable[[Tensor], Tensor]
    eps: Tensor | float  # 0-dim in the weights' dtype where that is exact (see _Decoder.scalar)


@dataclass
class _DecodeState:
    """The KV cache of one decode and the step's MLP buffer, preallocated and written in place.

    Rows b = q * n + j (prompt-major). Per layer, a block per row: ``keys_T`` (B Hkv) x D
    x C and ``values`` (B Hkv) x C x D. With n = 1 its C columns are the prompt's P then
    S = max_new_tokens - 1 slots for generated tokens; with n > 1 only the S slots, and
    each prompt's K/V sit once in ``prompt_keys_T`` (Q Hkv) x D x P / ``prompt_values``
    (Q Hkv) x P x D, read once per step for its n rows.

    Why this shape (measured on the toy, 1 thread; a decode step there is bound by the
    number of ops and by strided operands, not by the bytes it reads):

    * keys are stored transposed: ``bmm(q, K^T)`` with K^T contiguous is ~2.5x faster
      than with a transposed view of K;
    * with n = 1 every step reads the whole row block, the slots not yet written masked
      out (``mask`` holds a large negative there, zeroed as a slot is written): a
      contiguous operand is faster than a slice of the written columns, and a masked
      column adds exactly 0; with n > 1 (measured the other way round) the row blocks are
      sliced to the written slots and ``mask`` is unused;
    * with n = 1 one block per row makes attention three ops per layer; with n > 1 the
      shared prompt block saves more than its extra matmuls cost;
    * the MLP's gate/up output is written into one buffer (``mlp``, ``out=``) and
      activated in place: a fresh 2I-wide result per layer and step cost ~2x its matmul
      in the loop. (The same for the attention's results, n = 1 or n > 1, measured no
      faster: not kept. A strided ``out=`` there makes ``bmm`` loop over its batch.)
    """

    keys_T: list[Tensor]
    values: list[Tensor]
    mask: Tensor  # (B Hkv) x 1 x C: a large negative on prompt padding and unwritten slots, else 0
    first_slot: int  # column of the first generated token in the row block (P with n = 1, else 0)
    rows_per_prompt: int
    mlp: Tensor  # B x 2I: each layer's gate/up output, activated in place
    prompt_keys_T: list[Tensor] | None = None  # n > 1 only
    prompt_values: list[Tensor] | None = None
    prompt_mask: Tensor | None = None  # (Q Hkv) x 1 x P
    n_generated: int = 0  # generated tokens written so far per row


class _Decoder:
    """The language model of a Qwen2.5-VL as a prefill + one-token decode step on packed weights."""

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
        # 0-dim tensors for the in-place ops of a step (a Python float is converted each call).
        # Only in float32 / float64, where the op computes in that dtype anyway: a reduced-
        # precision op computes with a float scalar in float32, so there it stays a float.
        dtype, device = self.embed_VH.dtype, self.embed_VH.device

        def scalar(value: float) -> Tensor | float:
            exact = dtype in (torch.float32, torch.float64)
            return torch.tensor(value, dtype=dtype, device=device) if exact else value

        self.scalar = scalar
        self.hidden_t = scalar(float(self.hidden))  # the rms_norm's divisor
        self.scale_t = scalar(self.scale)
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
                    w_qkv_T=torch.cat([wq, wk, wv]).T.contiguous(),
                    b_qkv=torch.cat([_bias_or_zeros(bq, wq), _bias_or_zeros(bk, wk), _bias_or_zeros(bv, wv)]),
                    w_o_T=w_o.T.contiguous(),
                    b_o=b_o,
                    ln2_H=layer.post_attention_layernorm.weight,
                    w_gate_up_T=torch.cat([wg, wu]).T.contiguous(),
                    b_gate_up=torch.cat([_bias_or_zeros(bg, wg), _bias_or_zeros(bu, wu)])
                    if has_gate_up_bias
                    else None,
                    w_down_T=w_down.T.contiguous(),
                    b_down=b_down,
                    act=mlp.act_fn,
                    eps=self.scalar(layer.input_layernorm.variance_epsilon),
                )
            )
        self.final_norm_H = lm.norm.weight
        self.final_eps = self.scalar(lm.norm.variance_epsilon)
        # The step applies the MLP's activation in place when it is known to be F.silu.
        self.silu = all(
            type(layer.act) in (torch.nn.SiLU, *_SILU_TYPES) and not _has_hooks(layer.act)
            for layer in self.layers
        )
        # The suppression folded into the LM head: zero rows plus a bias of SUPPRESS_LOGIT
        # make those logits exactly SUPPRESS_LOGIT, in the matmul that makes the others.
        w_head, b_head = _affine(self.model.lm_head)
        ids = torch.as_tensor(list(suppress_ids), dtype=torch.long, device=w_head.device)
        w_head = w_head.clone()
        w_head[ids] = 0
        self.w_head_T = w_head.T.contiguous()
        self.b_head = _bias_or_zeros(b_head, w_head).clone()
        self.b_head[ids] = SUPPRESS_LOGIT

    def head(self, hidden_BH: Tensor) -> Tensor:
        """Suppressed logits from final-normed hidden states."""
        return torch.addmm(self.b_head, hidden_BH, self.w_head_T)

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

    def image_embeddings(self, pixels: Tensor, grid_I3: Tensor, dtype: torch.dtype) -> Tensor:
        """The merged features of all images, image by image (one row per image token), from the model's vision tower.

        The tower's index tensors (rope positions, windows, sequence bounds: per-image Python
        loops, ~5 ms for 64 toy images) come from :func:`_vision_indices`, computed once per
        set of image grids by transformers' own functions; the tower takes them precomputed.
        """
        indices = _vision_indices(self.vlm.visual, grid_I3)
        features = self.vlm.get_image_features(pixels, grid_I3, return_dict=True, **indices).pooler_output
        return torch.cat(list(features), dim=0).to(dtype)

    def prefill_layers(
        self,
        h_QSH: Tensor,
        pos_3QS: Tensor,
        allowed_QSK: Tensor,
        prefix_kv: list[tuple[Tensor, Tensor]] | None = None,
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Run S prompt columns through the language model with the step's packed weights.

        ``allowed_QSK`` says which keys each query may read: the K = C + S keys are the C
        columns of ``prefix_kv`` (per layer ``1 x Hkv x C x D``, shared by every row) then
        the S columns here. Returns the hidden state of the last column (``Q x H``, not
        final-normed) and per layer the (keys, values) of all K columns (``Q x Hkv x K x D``,
        contiguous, keys rotated). The last layer needs its K/V at every column but its
        output only at the last one, so its attention and MLP run for that column alone.
        """
        n_rows, width, _ = h_QSH.shape
        n_heads, n_kv, head_dim = self.n_heads, self.n_kv, self.head_dim
        n_qk = (n_heads + n_kv) * head_dim
        half = head_dim // 2
        # The model's own rotary module with its 3-D positions (mrope sections applied), as
        # cos and signed sin (see rope_tables) broadcast over the heads.
        cos_QSD, sin_QSD = self.rotary(h_QSH, pos_3QS)
        sin_QSD = sin_QSD.clone()
        sin_QSD[..., :half] *= -1
        cos, sin = cos_QSD[:, :, None], sin_QSD[:, :, None]
        mask = allowed_QSK[:, None]  # Q x 1 x S x K, for every head
        kv: list[tuple[Tensor, Tensor]] = []
        h = h_QSH.reshape(n_rows * width, self.hidden)
        last_layer = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = _rms_norm(h, layer.ln1_H, layer.eps, self.hidden_t)
            qkv = torch.addmm(layer.b_qkv, x, layer.w_qkv_T).view(n_rows, width, -1)
            qk = qkv[..., :n_qk].view(n_rows, width, n_heads + n_kv, head_dim)
            qk = (qk * cos).add_(qk.roll(half, -1).mul_(sin))  # HF's q*cos + rotate_half(q)*sin, in place
            q = qk[:, :, :n_heads].transpose(1, 2)
            k = qk[:, :, n_heads:].transpose(1, 2)
            v = qkv[..., n_qk:].view(n_rows, width, n_kv, head_dim).transpose(1, 2)
            if prefix_kv is not None:
                k_prefix, v_prefix = prefix_kv[i]
                k = torch.cat([k_prefix.expand(n_rows, -1, -1, -1), k], dim=2)
                v = torch.cat([v_prefix.expand(n_rows, -1, -1, -1), v], dim=2)
            else:
                k, v = k.contiguous(), v.contiguous()
            kv.append((k, v))
            if i == last_layer:  # from here on only the last column
                q, mask = q[:, :, -1:], mask[:, :, -1:]
                h = h.view(n_rows, width, self.hidden)[:, -1].contiguous()
                width = 1
            attn = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=n_heads != n_kv
            )  # Q x H x S x D
            attn = attn.transpose(1, 2).reshape(n_rows * width, n_heads * head_dim)
            h = torch.addmm(h, attn, layer.w_o_T)
            if layer.b_o is not None:
                h = h + layer.b_o
            x = _rms_norm(h, layer.ln2_H, layer.eps, self.hidden_t)
            h = torch.addmm(h, self.gated(x, layer), layer.w_down_T)
            if layer.b_down is not None:
                h = h + layer.b_down
        return h, kv

    def prefill(
        self, batch: PromptBatch
    ) -> tuple[Tensor, list[tuple[int, list[tuple[Tensor, Tensor]]]], Tensor, Tensor]:
        """The prompts through the language model, with the model's own vision tower and positions.

        Returns the final hidden state of the last column (``Q x H``, final-normed), the
        K/V of the prompt columns chunk by chunk (first prompt of the chunk, then per layer
        (keys, values) ``Q_chunk x Hkv x P x D``: the decode's cache reads each chunk once,
        with no concatenated copy in between), the attention mask of those columns
        (``Q x P``) and each prompt's next position (``Q``).

        What stays transformers' code: the 3-D positions (``get_rope_index``, mask-aware),
        the vision tower (``get_image_features``) and the rotary module. The image features
        replace the image tokens' embeddings (as the model's forward does); the language
        model then runs on the step's packed weights (one q/k/v matmul, fused residual
        adds, one SDPA per layer over a causal + padding mask). A padding query may read
        itself, so no row of the mask is empty (its output is never used).

        Prompts made from one template share their first tokens (system prompt, chat
        header). That shared text prefix is run once, for one row, and its K/V are read
        by every prompt. The prefix ends before the first image token, and its positions
        are 0..C-1 in every row whatever the padding, so its K/V are those of every row.
        The cache columns are then ``[prefix | left padding | rest]``, which the returned
        mask describes.
        """
        device = self.embed_VH.device
        ids_QP = batch.input_ids_QP.to(device)
        mask_QP = batch.attention_mask_QP.to(device)
        mm_QP = torch.zeros_like(ids_QP) if batch.mm_token_type_ids_QP is None else batch.mm_token_type_ids_QP
        mm_QP = mm_QP.to(device)
        grid = None if batch.image_grid_thw_I3 is None else batch.image_grid_thw_I3.to(device)
        pos_3QP, _ = self.vlm.get_rope_index(ids_QP, mm_QP, image_grid_thw=grid, attention_mask=mask_QP)
        next_pos_Q = pos_3QP.amax(dim=(0, 2)) + 1  # = real length + rope_delta
        h_QPH = F.embedding(ids_QP, self.embed_VH)
        if batch.pixel_values is not None and grid is not None:
            image_NH = self.image_embeddings(batch.pixel_values.to(device), grid, h_QPH.dtype)
            is_image_QP = ids_QP == self.vlm.config.image_token_id
            if int(is_image_QP.sum()) != image_NH.shape[0]:
                raise ValueError(
                    f"{int(is_image_QP.sum())} image tokens in the prompts but {image_NH.shape[0]} image features"
                )
            h_QPH = h_QPH.masked_scatter(is_image_QP[..., None], image_NH)
        n_prompts, width = ids_QP.shape
        start_Q = (mask_QP == 0).sum(1)  # first real column of each row
        n_shared = _shared_text_prefix(ids_QP, mm_QP, start_Q) if n_prompts > 1 else 0
        prefix_kv = None
        if n_shared >= MIN_SHARED_PREFIX:
            first = int(start_Q[0])
            span = slice(first, first + n_shared)
            causal_CC = torch.ones(n_shared, n_shared, dtype=torch.bool, device=device).tril()
            _, prefix_kv = self.prefill_layers(h_QPH[:1, span], pos_3QP[:, :1, span], causal_CC[None])
            # Drop the prefix from each row, keeping the row's left padding on the left.
            col_S = torch.arange(width - n_shared, device=device)
            src_QS = col_S + n_shared * (col_S >= start_Q[:, None])
            h_QPH = h_QPH.gather(1, src_QS[..., None].expand(-1, -1, self.hidden))
            pos_3QP = pos_3QP.gather(2, src_QS.expand(3, -1, -1))
            rest_QS = mask_QP.gather(1, src_QS)
            mask_QP = torch.cat([mask_QP.new_ones(n_prompts, n_shared), rest_QS], dim=1)
        else:
            n_shared, rest_QS = 0, mask_QP
        width = rest_QS.shape[1]
        # Query column i reads key column j of the rest when j <= i and j is real (or j == i).
        causal_SS = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        eye_SS = torch.eye(width, dtype=torch.bool, device=device)
        allowed_QSS = causal_SS & ((rest_QS != 0)[:, None, :] | eye_SS)
        if n_shared:
            allowed_QSS = torch.cat([allowed_QSS.new_ones(n_prompts, width, n_shared), allowed_QSS], dim=2)
        # A few prompts at a time: each chunk's activations stay in the core's cache
        # between the ops of a layer (measured: ~20% faster than all 64 prompts at once).
        rows = max(1, PREFILL_CHUNK_TOKENS // width)
        last, kv_chunks = [], []
        for a in range(0, n_prompts, rows):
            h_CH, kv_part = self.prefill_layers(
                h_QPH[a : a + rows], pos_3QP[:, a : a + rows], allowed_QSS[a : a + rows], prefix_kv
            )
            last.append(h_CH)
            kv_chunks.append((a, kv_part))
        hidden_QH = _rms_norm(torch.cat(last), self.final_norm_H, self.final_eps, self.hidden_t)
        return hidden_QH, kv_chunks, mask_QP, next_pos_Q

    def attend(self, q_BHD: Tensor, layer: int, state: _DecodeState) -> Tensor:
        """Attention of one query token per row over its prompt's and its own keys; ``B x (H D)``.

        Grouped-query attention without ``repeat_kv``: query head h reads KV head h // G
        (HF's order), so the query heads that read one block of keys are the query rows
        of one small matmul: the G heads of a (row, KV head) for the row block, and with
        n > 1 the n rows x G heads of a (prompt, KV head) for the shared prompt block,
        whose scores are concatenated with the row block's for one softmax.
        """
        n_rows = q_BHD.shape[0]
        n_kv, head_dim = self.n_kv, self.head_dim
        group = self.n_heads // n_kv
        q = q_BHD.reshape(n_rows * n_kv, group, head_dim)
        if state.prompt_keys_T is None:  # n = 1: the whole row block, unwritten slots masked
            scores = torch.baddbmm(state.mask, q, state.keys_T[layer], alpha=self.scale)  # (B Hkv) x G x C
            probs = torch.softmax(scores, dim=-1)
            return torch.bmm(probs, state.values[layer]).view(n_rows, self.n_heads * head_dim)
        assert state.prompt_values is not None and state.prompt_mask is not None
        n_per = state.rows_per_prompt
        n_prompts = n_rows // n_per
        n_cols = state.n_generated  # n > 1: the written slots only (no mask needed)
        width = state.prompt_values[layer].shape[1]
        scores = torch.bmm(q, state.keys_T[layer][..., :n_cols]).mul_(self.scale_t)
        q_prompt = q.view(n_prompts, n_per, n_kv, group, head_dim).transpose(1, 2)
        q_prompt = q_prompt.reshape(n_prompts * n_kv, n_per * group, head_dim)
        s_prompt = torch.baddbmm(state.prompt_mask, q_prompt, state.prompt_keys_T[layer], alpha=self.scale)
        both = torch.cat(
            [
                s_prompt.view(n_prompts, n_kv, n_per, group, width).transpose(1, 2),
                scores.view(n_prompts, n_per, n_kv, group, n_cols),
            ],
            dim=-1,
        )  # Q x n x Hkv x G x (P + C)
        probs = torch.softmax(both, dim=-1)
        out = torch.bmm(probs.view(n_rows * n_kv, group, -1)[..., width:], state.values[layer][:, :n_cols])
        p_prompt = probs[..., :width].transpose(1, 2).reshape(n_prompts * n_kv, n_per * group, width)
        out_prompt = torch.bmm(p_prompt, state.prompt_values[layer]).view(
            n_prompts, n_kv, n_per, group, head_dim
        )
        out = out.view(n_prompts, n_per, n_kv, group, head_dim).add_(out_prompt.transpose(1, 2))
        return out.view(n_rows, self.n_heads * head_dim)

    def gated(self, x_BH: Tensor, layer: _Layer, buffer_BI2: Tensor | None = None) -> Tensor:
        """``act(gate) * up`` of the MLP (``B x I``), computed in the gate/up output (in
        ``buffer_BI2`` when given) in place where the activation is known to be silu."""
        if buffer_BI2 is None:
            gate_up = _linear(x_BH, layer.w_gate_up_T, layer.b_gate_up)
        elif layer.b_gate_up is None:
            gate_up = torch.mm(x_BH, layer.w_gate_up_T, out=buffer_BI2)
        else:
            gate_up = torch.addmm(layer.b_gate_up, x_BH, layer.w_gate_up_T, out=buffer_BI2)
        gate, up = gate_up.chunk(2, dim=-1)
        if self.silu:
            return F.silu(gate, inplace=True).mul_(up)
        return layer.act(gate) * up

    def step(self, token_B: Tensor, cos_BD: Tensor, sin_BD: Tensor, state: _DecodeState) -> Tensor:
        """Feed one token per row through the language model; return suppressed next-token logits."""
        n_rows = token_B.shape[0]
        n_heads, n_kv, head_dim = self.n_heads, self.n_kv, self.head_dim
        n_qk = (n_heads + n_kv) * head_dim
        half = head_dim // 2
        cos, sin = cos_BD[:, None, :], sin_BD[:, None, :]
        col = state.first_slot + state.n_generated  # this token's K/V go to row-block column `col`
        state.n_generated += 1
        if state.prompt_keys_T is None:
            state.mask.select(2, col).zero_()
        h_BH = F.embedding(token_B, self.embed_VH)
        for i, layer in enumerate(self.layers):
            x = _rms_norm(h_BH, layer.ln1_H, layer.eps, self.hidden_t)
            qkv = torch.addmm(layer.b_qkv, x, layer.w_qkv_T)
            # Rope on q and k at once (adjacent in qkv): x*cos + rotate_half(x)*sin.
            qk = qkv[:, :n_qk].view(n_rows, n_heads + n_kv, head_dim)
            qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin)  # roll by D/2 swaps the halves
            state.keys_T[i].view(n_rows, n_kv, head_dim, -1).select(3, col).copy_(qk[:, n_heads:])
            state.values[i].view(n_rows, n_kv, -1, head_dim).select(2, col).copy_(
                qkv[:, n_qk:].view(n_rows, n_kv, head_dim)
            )
            h_BH = torch.addmm(h_BH, self.attend(qk[:, :n_heads], i, state), layer.w_o_T)
            if layer.b_o is not None:
                h_BH = h_BH + layer.b_o
            x = _rms_norm(h_BH, layer.ln2_H, layer.eps, self.hidden_t)
            h_BH = torch.addmm(h_BH, self.gated(x, layer, state.mlp), layer.w_down_T)
            if layer.b_down is not None:
                h_BH = h_BH + layer.b_down
        h_BH = _rms_norm(h_BH, self.final_norm_H, self.final_eps, self.hidden_t)
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
        hidden_QH, kv_chunks, mask_QP, next_pos_Q = self.prefill(batch)
        n_prompts, width = mask_QP.shape
        n_rows = n_prompts * rows_per_prompt
        n_new = params.max_new_tokens
        dtype = hidden_QH.dtype
        n_kv, head_dim = self.n_kv, self.head_dim
        n_slots = max(n_new - 1, 1)  # the last token is never fed back
        shared = rows_per_prompt > 1
        first_slot = 0 if shared else width
        n_cols = first_slot + n_slots
        low = torch.finfo(dtype).min
        prompt_mask_QKP = torch.zeros(n_prompts, n_kv, width, dtype=dtype, device=device)
        prompt_mask_QKP.masked_fill_((mask_QP == 0)[:, None, :], low)
        mask = torch.full((n_rows * n_kv, 1, n_cols), low, dtype=dtype, device=device)
        # Unwritten slots are zeros, not garbage: 0 * garbage could be NaN. (The prompt's
        # columns, n = 1, are written below.)
        n_layers = len(self.layers)
        keys_T = [
            torch.empty(n_rows * n_kv, head_dim, n_cols, dtype=dtype, device=device) for _ in range(n_layers)
        ]
        values = [
            torch.empty(n_rows * n_kv, n_cols, head_dim, dtype=dtype, device=device) for _ in range(n_layers)
        ]
        for k_T, v in zip(keys_T, values):
            k_T[..., first_slot:].zero_()
            v[:, first_slot:].zero_()
        state = _DecodeState(
            keys_T=keys_T,
            values=values,
            mask=mask,
            first_slot=first_slot,
            rows_per_prompt=rows_per_prompt,
            mlp=hidden_QH.new_empty(n_rows, self.layers[0].w_gate_up_T.shape[1]),
        )
        if shared:
            prompt_keys_T = [keys_T[0].new_empty(n_prompts * n_kv, head_dim, width) for _ in range(n_layers)]
            prompt_values = [keys_T[0].new_empty(n_prompts * n_kv, width, head_dim) for _ in range(n_layers)]
            state.prompt_keys_T, state.prompt_values = prompt_keys_T, prompt_values
            state.prompt_mask = prompt_mask_QKP.view(n_prompts * n_kv, 1, width)
        else:
            mask[..., :width] = prompt_mask_QKP.view(n_rows * n_kv, 1, width)
            prompt_keys_T = [k_T[..., :width] for k_T in keys_T]  # the row blocks' prompt columns
            prompt_values = [v[:, :width] for v in values]
        # Each chunk's K/V straight into place (rows = prompts here when n = 1), keys transposed.
        for first, part in kv_chunks:
            for (k_CKPD, v_CKPD), k_T, v in zip(part, prompt_keys_T, prompt_values):
                n_chunk = k_CKPD.shape[0]
                span = slice(first * n_kv, (first + n_chunk) * n_kv)
                k_T[span].view(n_chunk, n_kv, head_dim, width).copy_(k_CKPD.transpose(2, 3))
                v[span].view(n_chunk, n_kv, width, head_dim).copy_(v_CKPD)
        pos0_B = next_pos_Q.repeat_interleave(rows_per_prompt)
        cos_ND, sin_ND = self.rope_tables(int(pos0_B.max()) + n_new, dtype)
        pos_TB = pos0_B[None, :] + torch.arange(n_new, device=device)[:, None]
        cos_TBD, sin_TBD = cos_ND[pos_TB], sin_ND[pos_TB]
        eos_t = torch.tensor(sorted(eos_ids), device=device)
        pad_t = torch.tensor(pad_id, device=device)  # a Python int is converted each step

        finished_B = torch.zeros(n_rows, dtype=torch.bool, device=device)
        tokens, alive, logps, entropies = [], [], [], []
        logits_BV = self.head(hidden_QH).repeat_interleave(rows_per_prompt, dim=0)
        for t in range(n_new):
            token_B, logp_B, entropy_B = sample_from_logits(
                logits_BV, params.temperature, params.top_p, params.greedy, generator
            )
            if not params.ignore_eos:
                alive.append(~finished_B)
                token_B = torch.where(finished_B, pad_t, token_B)
                finished_B = finished_B | torch.isin(token_B, eos_t)
            tokens.append(token_B)
            logps.append(logp_B)
            entropies.append(entropy_B)
            if t == n_new - 1 or (not params.ignore_eos and bool(finished_B.all())):
                break
            # Feed the token (pad in finished rows, whose outputs are discarded).
            logits_BV = self.step(token_B, cos_TBD[t], sin_TBD[t], state)
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

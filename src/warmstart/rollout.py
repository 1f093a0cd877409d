"""The rollout seam's data: :class:`SamplingParams`, :class:`PromptBatch`, :class:`Rollouts`.

Every engine (today the in-process one, :mod:`warmstart.engine`; a vLLM one later)
takes a :class:`PromptBatch` and :class:`SamplingParams` and gives :class:`Rollouts`;
callers reach an engine through a :class:`warmstart.sampler.Sampler`. What every
engine must agree on is defined here too:

* **Suppressed tokens.** Vision special tokens and pad are never sampled (a sampled
  vision token breaks the next forward, BASELINES trap): their logits are set to
  :data:`SUPPRESS_LOGIT`, large and negative but *finite*, so their probability is
  exactly 0 in float32 while the entropy stays finite. :func:`vision_token_ids` is
  the one rule for which ids are vision tokens (the scorer and ``warmstart serve``
  use it too); :func:`suppressed_token_ids` adds pad and spares EOS.
* **Per-token outputs** (``logp_BT``, ``entropy_BT``) are those of the **sampling
  distribution before top-p**, ``softmax(suppressed logits / temperature)``: the
  quantity a trainer recomputes as the behaviour log-prob. At temperature 1
  ``entropy_BT`` is DESIGN.md's policy entropy. Top-p only restricts which token is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from warmstart.data.schema import Problem
from warmstart.models.load import unwrap_model

# Logit given to suppressed vocabulary entries, by the sampler and the scorer alike.
# Finite, so p * log p is 0 * finite = 0 (with -inf the entropy is NaN); low enough that
# exp() underflows to exactly 0 in float32 next to any realistic logit; representable in float16.
SUPPRESS_LOGIT = -1.0e4

# ---------------------------------------------------------------------------
# Parameters and prompt batches
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    Attributes:
        n: samples per prompt (a GRPO group).
        temperature: softmax temperature (> 0). With ``greedy`` it only sets the
            distribution whose log-prob and entropy are reported.
        top_p: nucleus sampling: draw only from the most likely tokens whose
            probability first reaches ``top_p``. 1.0 = the whole distribution.
        max_new_tokens: response length limit.
        greedy: take the argmax instead of drawing (temperature-0 decoding).
        seed: seed of the sampling generator: the same seed, model, prompts and
            ``max_batch_rows`` give the same tokens.
        ignore_eos: keep generating after EOS (benchmarks: exactly max_new_tokens).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    greedy: bool = False
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be > 0 (use greedy=True for argmax), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class PromptBatch:
    """Q encoded prompts, left padded to a common width P.

    Attributes:
        input_ids_QP: token ids, left padded with ``pad_token_id``.
        attention_mask_QP: 1 on real tokens, 0 on padding.
        mm_token_type_ids_QP: the processor's token types (0 text, 1 image, 2 video);
            the model needs them for its 3-D positions (BASELINES trap). None if the
            processor gives none.
        pixel_values: the patches of all images, prompt by prompt, image by image
            (``sum_i prod(image_grid_thw_I3[i]) x C``); None without images.
        image_grid_thw_I3: (t, h, w) patch grid of each of the I images, in order.
        num_images_Q: how many of the images belong to each prompt (in order).
        texts_Q: the prompt strings (for backends that take text, e.g. an HTTP scorer).
        problems: one per prompt.
        pad_token_id: the id used for padding.
    """

    input_ids_QP: Tensor
    attention_mask_QP: Tensor
    mm_token_type_ids_QP: Tensor | None
    pixel_values: Tensor | None
    image_grid_thw_I3: Tensor | None
    num_images_Q: Tensor
    texts_Q: list[str]
    problems: list[Problem]
    pad_token_id: int

    @property
    def num_prompts(self) -> int:
        return self.input_ids_QP.shape[0]

    def images_for(self, prompts: Sequence[int] | Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(pixel_values, image_grid_thw) of the images of ``prompts``, in that order (repeats allowed)."""
        if self.pixel_values is None or self.image_grid_thw_I3 is None:
            return None, None
        # A prompt's images are consecutive, and so are their patches.
        image_end_Q = torch.cumsum(self.num_images_Q, 0)
        image_start_Q = image_end_Q - self.num_images_Q
        patch_end_I = torch.cumsum(self.image_grid_thw_I3.prod(-1).cpu(), 0)
        patch_edges = torch.cat([patch_end_I.new_zeros(1), patch_end_I])
        image_idx, patch_idx = [], []
        for q in torch.as_tensor(prompts).tolist():
            i0, i1 = int(image_start_Q[q]), int(image_end_Q[q])
            image_idx.append(torch.arange(i0, i1))
            patch_idx.append(torch.arange(int(patch_edges[i0]), int(patch_edges[i1])))
        image_idx_t = torch.cat(image_idx) if image_idx else torch.zeros(0, dtype=torch.long)
        if image_idx_t.numel() == 0:
            return None, None
        device = self.pixel_values.device
        return self.pixel_values[torch.cat(patch_idx).to(device)], self.image_grid_thw_I3[
            image_idx_t.to(device)
        ]

    def select(self, prompts: Sequence[int] | Tensor) -> PromptBatch:
        """The given prompts (in that order), without leading columns that are padding in all of them."""
        idx = torch.as_tensor(prompts, dtype=torch.long)
        picks = idx.tolist()
        mask = self.attention_mask_QP[idx]
        real_cols = mask.any(0).nonzero()
        start = int(real_cols[0]) if real_cols.numel() else mask.shape[1]
        pixel_values, grid = self.images_for(idx)
        mm = self.mm_token_type_ids_QP
        return PromptBatch(
            input_ids_QP=self.input_ids_QP[idx, start:],
            attention_mask_QP=mask[:, start:],
            mm_token_type_ids_QP=None if mm is None else mm[idx, start:],
            pixel_values=pixel_values,
            image_grid_thw_I3=grid,
            num_images_Q=self.num_images_Q[idx],
            texts_Q=[self.texts_Q[i] for i in picks],
            problems=[self.problems[i] for i in picks],
            pad_token_id=self.pad_token_id,
        )

    @staticmethod
    def cat(batches: Sequence[PromptBatch]) -> PromptBatch:
        """Concatenate prompt batches, left padded again to the widest."""
        if not batches:
            raise ValueError("PromptBatch.cat needs at least one batch")
        width = max(b.input_ids_QP.shape[1] for b in batches)
        pad_id = batches[0].pad_token_id

        def left_pad(x: Tensor, value: int) -> Tensor:
            return F.pad(x, (width - x.shape[1], 0), value=value)

        with_mm = all(b.mm_token_type_ids_QP is not None for b in batches)
        with_images = [b for b in batches if b.pixel_values is not None]
        return PromptBatch(
            input_ids_QP=torch.cat([left_pad(b.input_ids_QP, pad_id) for b in batches]),
            attention_mask_QP=torch.cat([left_pad(b.attention_mask_QP, 0) for b in batches]),
            mm_token_type_ids_QP=(
                torch.cat([left_pad(b.mm_token_type_ids_QP, 0) for b in batches]) if with_mm else None
            ),
            pixel_values=torch.cat([b.pixel_values for b in with_images]) if with_images else None,
            image_grid_thw_I3=torch.cat([b.image_grid_thw_I3 for b in with_images]) if with_images else None,
            num_images_Q=torch.cat([b.num_images_Q for b in batches]),
            texts_Q=[t for b in batches for t in b.texts_Q],
            problems=[p for b in batches for p in b.problems],
            pad_token_id=pad_id,
        )


def encode_prompts(
    problems: Sequence[Problem], processor: Any, texts: Sequence[str] | None = None
) -> PromptBatch:
    """Tokenize problems and their images into one left-padded :class:`PromptBatch`.

    Args:
        problems: the problems; images come from ``Problem.load_images()``.
        processor: the model's processor (chat template, image processor, tokenizer).
        texts: prompt strings to use instead of ``warmstart.data.prompts.prompt_text``
            (one per problem, each with one image placeholder per image).
    """
    from warmstart.data.prompts import prompt_text

    problems = list(problems)
    if not problems:
        raise ValueError("encode_prompts needs at least one problem")
    texts_Q = list(texts) if texts is not None else [prompt_text(p, processor) for p in problems]
    if len(texts_Q) != len(problems):
        raise ValueError(f"{len(texts_Q)} texts for {len(problems)} problems")
    images = [p.load_images() for p in problems]
    flat_images = [im for ims in images for im in ims]
    tokenizer = getattr(processor, "tokenizer", processor)
    # Left padding whatever the tokenizer's default: responses are appended on the right.
    enc = processor(
        text=texts_Q, images=flat_images or None, return_tensors="pt", padding=True, padding_side="left"
    )
    if bool((enc["attention_mask"][:, -1] == 0).any()):
        raise RuntimeError("the processor did not left-pad the prompts")
    return PromptBatch(
        input_ids_QP=enc["input_ids"],
        attention_mask_QP=enc["attention_mask"],
        mm_token_type_ids_QP=enc.get("mm_token_type_ids"),
        pixel_values=enc.get("pixel_values") if flat_images else None,
        image_grid_thw_I3=enc.get("image_grid_thw") if flat_images else None,
        num_images_Q=torch.tensor([len(ims) for ims in images], dtype=torch.long),
        texts_Q=texts_Q,
        problems=problems,
        pad_token_id=int(tokenizer.pad_token_id),
    )


# ---------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------


class FullSequences(NamedTuple):
    """Prompt + response of each row as one model input (what scoring feeds the model).

    Row b is its prompt (left padded to P) followed by its response (right padded to T):
    response token t sits at column ``P + t`` and is predicted by position ``P + t - 1``.
    """

    input_ids_BL: Tensor
    attention_mask_BL: Tensor
    mm_token_type_ids_BL: Tensor | None
    pixel_values: Tensor | None  # each row's prompt images, row by row (repeated for shared prompts)
    image_grid_thw: Tensor | None  # one (t, h, w) per image, row by row

    def model_inputs(self) -> dict[str, Tensor]:
        """Keyword arguments for ``model(**...)`` (None entries left out)."""
        named = {
            "input_ids": self.input_ids_BL,
            "attention_mask": self.attention_mask_BL,
            "mm_token_type_ids": self.mm_token_type_ids_BL,
            "pixel_values": self.pixel_values,
            "image_grid_thw": self.image_grid_thw,
        }
        return {k: v for k, v in named.items() if v is not None}


@dataclass
class Rollouts:
    """Sampled responses: B rows; row b answers prompt ``prompt_index_B[b]`` of ``prompts``.

    Rows sharing a prompt are contiguous: every sampler gives rows ``q*n .. q*n+n-1``
    to prompt q (a GRPO group).

    Attributes:
        prompts: the Q prompts.
        prompt_index_B: which prompt each row answers.
        response_ids_BT: sampled tokens, right padded with the pad id.
        response_mask_BT: True on real response tokens (the EOS token included).
        logp_BT: behaviour log-prob of each sampled token, ``log_softmax(suppressed
            logits / temperature)`` (before top-p); 0 on padding.
        entropy_BT: full-vocabulary entropy (nats) of that same distribution at each
            step (= DESIGN.md policy entropy at temperature 1); 0 on padding.
        finish_reason_B: ``"stop"`` (EOS sampled) or ``"length"`` (max_new_tokens reached).
        texts_B: decoded responses, special tokens skipped.
        suppressed_ids: the vocabulary ids given ``SUPPRESS_LOGIT`` while sampling; a
            scorer suppressing the same ids reproduces ``logp_BT`` and ``entropy_BT``.
    """

    prompts: PromptBatch
    prompt_index_B: Tensor
    response_ids_BT: Tensor
    response_mask_BT: Tensor
    logp_BT: Tensor
    entropy_BT: Tensor
    finish_reason_B: list[str]
    texts_B: list[str]
    suppressed_ids: tuple[int, ...] = ()

    @property
    def num_rows(self) -> int:
        return self.response_ids_BT.shape[0]

    @property
    def response_lengths_B(self) -> Tensor:
        return self.response_mask_BT.sum(1)

    def full_sequences(self, rows: Sequence[int] | Tensor | None = None) -> FullSequences:
        """Model inputs (prompt + response) of ``rows``, all rows by default.

        The widths P and T are kept whole, so column ``P + t`` is response token t in every row.
        """
        rows_R = torch.arange(self.num_rows) if rows is None else torch.as_tensor(rows, dtype=torch.long)
        prompts = self.prompts
        q_R = self.prompt_index_B[rows_R]
        response_ids_RT = self.response_ids_BT[rows_R]
        input_ids = torch.cat([prompts.input_ids_QP[q_R], response_ids_RT], 1)
        attention = torch.cat(
            [
                prompts.attention_mask_QP[q_R],
                self.response_mask_BT[rows_R].to(prompts.attention_mask_QP.dtype),
            ],
            1,
        )
        mm = None
        if prompts.mm_token_type_ids_QP is not None:
            mm_prompt = prompts.mm_token_type_ids_QP[q_R]
            mm = torch.cat([mm_prompt, mm_prompt.new_zeros(response_ids_RT.shape)], 1)
        pixel_values, grid = prompts.images_for(q_R)
        return FullSequences(input_ids, attention, mm, pixel_values, grid)

    def select(self, rows: Sequence[int] | Tensor) -> Rollouts:
        """The given rows, in that order (the prompt batch is shared, not copied)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        picks = idx.tolist()
        return replace(
            self,
            prompt_index_B=self.prompt_index_B[idx],
            response_ids_BT=self.response_ids_BT[idx],
            response_mask_BT=self.response_mask_BT[idx],
            logp_BT=self.logp_BT[idx],
            entropy_BT=self.entropy_BT[idx],
            finish_reason_B=[self.finish_reason_B[i] for i in picks],
            texts_B=[self.texts_B[i] for i in picks],
        )

    @staticmethod
    def cat(parts: Sequence[Rollouts]) -> Rollouts:
        """Concatenate rollouts and their prompt batches; responses padded again to the longest."""
        if not parts:
            raise ValueError("Rollouts.cat needs at least one Rollouts")
        width = max(r.response_ids_BT.shape[1] for r in parts)
        pad_id = parts[0].prompts.pad_token_id

        def right_pad(x: Tensor, value: float) -> Tensor:
            return F.pad(x, (0, width - x.shape[1]), value=value)

        offsets = torch.cumsum(torch.tensor([0] + [r.prompts.num_prompts for r in parts[:-1]]), 0)
        suppressed = {r.suppressed_ids for r in parts}
        return Rollouts(
            prompts=PromptBatch.cat([r.prompts for r in parts]),
            prompt_index_B=torch.cat([r.prompt_index_B + int(off) for r, off in zip(parts, offsets)]),
            response_ids_BT=torch.cat([right_pad(r.response_ids_BT, pad_id) for r in parts]),
            response_mask_BT=torch.cat([right_pad(r.response_mask_BT, False) for r in parts]),
            logp_BT=torch.cat([right_pad(r.logp_BT, 0.0) for r in parts]),
            entropy_BT=torch.cat([right_pad(r.entropy_BT, 0.0) for r in parts]),
            finish_reason_B=[f for r in parts for f in r.finish_reason_B],
            texts_B=[t for r in parts for t in r.texts_B],
            suppressed_ids=suppressed.pop() if len(suppressed) == 1 else (),
        )


# ---------------------------------------------------------------------------
# The vocabulary every engine suppresses
# ---------------------------------------------------------------------------

VISION_TOKEN_ATTRS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def vision_token_ids(model: Any, tokenizer: Any = None) -> list[int]:
    """Ids of the vision special tokens (image/video pad, vision start/end): the one rule.

    From the model config (the top-level entry, else ``text_config``'s) and, when a
    tokenizer is given, its ids of the same four token strings (where it knows them).
    A sampled vision token makes the next forward fail ("Image features and image
    tokens do not match"), so no engine emits them and the scorer suppresses them too.
    """
    config = unwrap_model(model).config
    ids: set[int] = set()
    for name in VISION_TOKEN_ATTRS:
        value = getattr(config, name, None)
        if value is None and hasattr(config, "text_config"):
            value = getattr(config.text_config, name, None)
        if value is not None:
            ids.add(int(value))
    if tokenizer is not None:
        for token in VISION_TOKENS:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                ids.add(int(token_id))
    return sorted(ids)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end a response: the tokenizer's EOS and the generation config's (where ``generate`` stops)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(unwrap_model(model), "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update(int(i) for i in (config_eos if isinstance(config_eos, list | tuple) else [config_eos]))
    if not ids:
        raise ValueError("no EOS token: set tokenizer.eos_token_id")
    return sorted(ids)


def suppressed_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Ids never sampled: :func:`vision_token_ids` and pad, EOS ids excepted.

    A sampled pad token could not be told from padding. Every engine gives these ids
    :data:`SUPPRESS_LOGIT` and records them in ``Rollouts.suppressed_ids``.
    """
    ids = set(vision_token_ids(model, tokenizer))
    if tokenizer.pad_token_id is not None:
        ids.add(int(tokenizer.pad_token_id))
    return sorted(ids - set(eos_token_ids(model, tokenizer)))


# ---------------------------------------------------------------------------
# Names that moved to warmstart.engine (kept importable from here)
# ---------------------------------------------------------------------------

_MOVED_TO_ENGINE = frozenset({"sample", "sample_from_logits", "top_p_mask", "MIN_SHARED_PREFIX"})


def __getattr__(name: str) -> Any:
    # Lazy: warmstart.engine imports this module, so an eager import here would be circular.
    if name in _MOVED_TO_ENGINE:
        from warmstart import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

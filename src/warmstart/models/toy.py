"""The toy Qwen2.5-VL family: a tiny model, tokenizer and processor built locally.

Everything here is built with the real transformers classes
(``Qwen2_5_VLForConditionalGeneration``, a fast tokenizer, the Qwen2-VL image
processor) and saved with ``save_pretrained``, so :func:`warmstart.models.load_policy`
loads a toy checkpoint through exactly the code path that loads Qwen2.5-VL-7B.

Choices made for speed on a 2-core CPU (see shared/BASELINES.md):

* a byte-level BPE tokenizer trained on a small corpus (the synthetic world's
  text when given), digits split one per token so arithmetic generalises;
  vocabulary ~512 so the LM head is cheap;
* 56 px images = 4x4 patches of 14 px = 4 merged image tokens;
* vision attention window = the whole image (the windowed path loops in Python);
* ``mrope_section`` sized to ``head_dim / 2``;
* head_dim 32 in every size: the smallest head vLLM's CPU attention supports, so
  vLLM loads every toy checkpoint unchanged (as does plain transformers: the
  processor config saved is a full ``Qwen2_5_VLProcessor``'s).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from warmstart.atomic import atomic_dir
from warmstart.models.processor import ImageOnlyQwen2_5_VLProcessor

TOY_MARKER = "warmstart_toy.json"  # written last by save_toy: a folder with it is complete

PAD = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
# Not "special": they must survive decode(skip_special_tokens=True) so the grader sees them.
THINK_TOKENS = ["<think>", "</think>"]

# Same shape as Qwen2.5-VL's template (image placeholders inline), except that system
# messages are dropped: the toy models never need one, and the ~15 tokens they cost
# are ~10% of a toy training sequence.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A fixed seed corpus so a tokenizer built without data still covers the math vocabulary.
BASE_CORPUS = [
    "<think> </think> \\boxed{} \\frac{}{} \\sqrt{} ^\\circ degrees cm area perimeter angle",
    "The answer is A. B. C. D. Answer with the letter of the correct option.",
    "triangle square rectangle pentagon hexagon circle sector shaded region side length height base",
    "What is the sum of the interior angles? Find x. Find the area. Find the perimeter.",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] . , : ; ? !",
]


# head_dims vLLM's CPU attention accepts (it rejects 24: BASELINES, "Real vLLM runs on this CPU machine").
VLLM_CPU_HEAD_DIMS = frozenset({32, 64, 80, 96, 112, 128, 160, 192, 224, 256})


@dataclass(frozen=True)
class ToySize:
    """Sizes of a toy Qwen2.5-VL.

    Attributes:
        text_hidden: width of the language model.
        text_layers: decoder layers.
        heads: attention heads (head_dim = text_hidden / heads; must be divisible by 4
            so the three mrope sections are whole numbers).
        kv_heads: key/value heads (grouped-query attention).
        intermediate: MLP width of the language model.
        vision_depth: vision transformer blocks.
        vision_hidden: vision width.
        vision_heads: vision attention heads.
        vision_intermediate: vision MLP width.
        max_positions: maximum sequence length.
    """

    text_hidden: int = 128
    text_layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 384
    vision_depth: int = 2
    vision_hidden: int = 64
    vision_heads: int = 4
    vision_intermediate: int = 128
    max_positions: int = 1024

    def validate(self) -> None:
        head_dim = self.text_hidden // self.heads
        if self.text_hidden % self.heads or head_dim % 4:
            raise ValueError(
                f"text_hidden/heads must be a whole head_dim divisible by 4, got {self.text_hidden}/{self.heads}"
            )
        if head_dim not in VLLM_CPU_HEAD_DIMS:
            raise ValueError(
                f"head_dim {head_dim} (text_hidden/heads) is not one vLLM's CPU kernels support "
                f"({sorted(VLLM_CPU_HEAD_DIMS)}); toy checkpoints must load in vLLM too"
            )
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        if self.vision_hidden % self.vision_heads:
            raise ValueError("vision_hidden must be divisible by vision_heads")


SIZES: dict[str, ToySize] = {
    # ~0.6M parameters: the fastest learner at equal wall time in the BASELINES probe.
    # 3 heads of 32 (not 4 of 24): vLLM's CPU attention kernels take head_dim 32, 64, 80, 96, ...
    "xs": ToySize(text_hidden=96, text_layers=3, heads=3, kv_heads=1, intermediate=288, vision_depth=1),
    # ~1.2M parameters.
    "s": ToySize(),
    # ~5.7M parameters.
    "m": ToySize(
        text_hidden=256,
        text_layers=6,
        heads=8,
        kv_heads=4,
        intermediate=768,
        vision_depth=3,
        vision_hidden=96,
        vision_heads=4,
        vision_intermediate=192,
    ),
}


def mrope_sections(head_dim: int) -> list[int]:
    """Split ``head_dim / 2`` rotary frequencies into (temporal, height, width) sections.

    Qwen2.5-VL-7B uses [16, 24, 24] for head_dim 128 (1/4, 3/8, 3/8); keep those ratios.
    """
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_toy_tokenizer(corpus: Iterable[str] = (), vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``BASE_CORPUS`` + ``corpus`` (deterministic)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(BASE_CORPUS) + list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        padding_side="left",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_toy_processor(tokenizer: PreTrainedTokenizerFast, image_size: int = 56) -> ProcessorMixin:
    """An image-only Qwen2.5-VL processor whose images are exactly ``image_size`` square.

    min/max pixels are both set to ``image_size**2`` because the image processor
    silently resizes to its own bounds otherwise (BASELINES trap).
    """
    if image_size % 28:
        raise ValueError(f"image_size must be a multiple of 28 (patch 14 x merge 2), got {image_size}")
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": pixels, "longest_edge": pixels},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return ImageOnlyQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )


def toy_config(size: ToySize, tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLConfig:
    size.validate()
    head_dim = size.text_hidden // size.heads
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=size.text_hidden,
            intermediate_size=size.intermediate,
            num_hidden_layers=size.text_layers,
            num_attention_heads=size.heads,
            num_key_value_heads=size.kv_heads,
            max_position_embeddings=size.max_positions,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_sections(head_dim),
            },
            bos_token_id=ids[PAD],
            eos_token_id=ids[IM_END],
            pad_token_id=ids[PAD],
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=size.vision_depth,
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_intermediate,
            num_heads=size.vision_heads,
            out_hidden_size=size.text_hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            # A window covering any toy image: the windowed path loops over windows in Python.
            window_size=14 * 2 * 64,
            fullatt_block_indexes=list(range(size.vision_depth)),
        ),
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=False,
    )


def build_toy_model(
    size: ToySize, tokenizer: PreTrainedTokenizerFast, seed: int = 0
) -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised toy Qwen2.5-VL (deterministic given ``seed``)."""
    config = toy_config(size, tokenizer)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    return model.float().eval()


def save_toy(
    out_dir: str | Path,
    size: ToySize | str = "s",
    seed: int = 0,
    image_size: int = 56,
    corpus: Iterable[str] = (),
    vocab_size: int = 512,
) -> Path:
    """Build a toy model + processor and ``save_pretrained`` both into ``out_dir``, atomically.

    Everything is written into a temp folder beside ``out_dir`` that is renamed onto it at
    the end (:func:`warmstart.atomic.atomic_dir`), so a kill at any moment leaves either no
    ``out_dir`` or a complete one; :data:`TOY_MARKER` is written last inside it
    (:func:`is_complete_toy` checks it).
    """
    if isinstance(size, str):
        size = SIZES[size]
    from warmstart.models.load import quiet_transformers

    quiet_transformers()
    out = Path(out_dir)
    tokenizer = build_toy_tokenizer(corpus, vocab_size=vocab_size)
    processor = build_toy_processor(tokenizer, image_size)
    model = build_toy_model(size, tokenizer, seed)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / TOY_MARKER).write_text(  # last: its presence means the folder is complete
            json.dumps(
                {"size": asdict(size), "seed": seed, "image_size": image_size, "vocab_size": len(tokenizer)},
                indent=2,
            )
        )
    return out


def is_complete_toy(path: str | Path) -> bool:
    """Whether ``path`` holds a toy written completely by :func:`save_toy` (marker, config, weights)."""
    path = Path(path)
    return all((path / f).is_file() for f in (TOY_MARKER, "config.json", "model.safetensors"))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

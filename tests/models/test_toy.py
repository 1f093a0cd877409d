"""The toy family round-trips through save_pretrained / from_pretrained via load_policy."""

import torch
from PIL import Image

from warmstart.models import load_policy
from warmstart.models.toy import SIZES, build_toy_tokenizer, mrope_sections, save_toy


def _inputs(policy):
    msgs = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Each side is 7. Find the perimeter."}],
        }
    ]
    text = policy.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    img = Image.new("RGB", (56, 56), (200, 30, 30))
    return policy.processor(text=[text], images=[img], return_tensors="pt")


def test_mrope_sections_sum_to_half_head_dim():
    for head_dim in (16, 24, 32, 128):
        secs = mrope_sections(head_dim)
        assert sum(secs) == head_dim // 2 and min(secs) > 0
    assert mrope_sections(128) == [16, 24, 24]  # Qwen2.5-VL-7B's own split


def test_tokenizer_keeps_think_tags_and_splits_digits():
    tok = build_toy_tokenizer(["The shape is a pentagon, 5 sides. 5*7=35."])
    ids = tok("<think>5*17=85</think> \\boxed{85}")["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>5*17=85</think> \\boxed{85}"
    # digits are one token each, so "17" is two tokens
    assert tok.convert_ids_to_tokens(tok("17")["input_ids"]) == ["1", "7"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


def test_roundtrip_same_logits(tmp_path):
    out = save_toy(tmp_path / "toy", "xs", seed=3)
    a = load_policy(out)
    b = load_policy(out)
    enc = _inputs(a)
    assert enc["pixel_values"].shape[0] == 16  # 56 px -> 4x4 patches of 14 px
    assert (enc["input_ids"] == a.processor.image_token_id).sum() == 4  # merged 2x2 -> 4 image tokens
    with torch.no_grad():
        la = a.model(**enc).logits
        lb = b.model(**enc).logits
    assert torch.equal(la, lb)
    assert la.shape[-1] == len(a.tokenizer)
    assert not any(p.requires_grad for p in a.model.parameters())


def test_seed_determines_weights(tmp_path):
    w = []
    for i, seed in enumerate((1, 1, 2)):
        pol = load_policy(save_toy(tmp_path / f"m{i}", "xs", seed=seed))
        w.append(pol.model.lm_head.weight.detach().clone())
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_sizes_are_valid_and_ordered():
    for s in SIZES.values():
        s.validate()
    assert SIZES["xs"].text_hidden < SIZES["s"].text_hidden < SIZES["m"].text_hidden


def test_lora_adapters_train_and_merge_back(tmp_path):
    """load_policy(lora=...) trains only the adapters; save_policy merges them into a plain checkpoint."""
    from warmstart.models import LoraSpec, save_policy

    src = save_toy(tmp_path / "toy", "xs", seed=0)
    pol = load_policy(src, lora=LoraSpec(r=4, alpha=8, target_modules=("q_proj", "v_proj")), trainable=True)
    trainable = [n for n, p in pol.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    enc = _inputs(pol)
    loss = pol.model(**enc).logits.float().logsumexp(-1).mean()
    loss.backward()
    opt = torch.optim.SGD([p for p in pol.model.parameters() if p.requires_grad], lr=1.0)
    opt.step()
    save_policy(pol, pol.processor, tmp_path / "merged")
    merged = load_policy(tmp_path / "merged")
    with torch.no_grad():
        a = pol.model(**enc).logits
        b = merged.model(**enc).logits
        base = load_policy(src).model(**enc).logits
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, base, atol=1e-4)


def test_every_size_has_a_head_dim_vllm_cpu_supports():
    # vLLM's CPU attention rejected head_dim 24 (BASELINES); every toy must load there unchanged.
    for name, size in SIZES.items():
        assert size.text_hidden // size.heads == 32, name
    import pytest

    from warmstart.models.toy import ToySize

    with pytest.raises(ValueError, match="head_dim 24"):
        ToySize(text_hidden=96, heads=4, kv_heads=2).validate()


def test_saved_processor_config_is_the_full_qwen_processor(tmp_path):
    """AutoProcessor/vLLM need `Qwen2_5_VLProcessor` with a video processor; we still load it without torchvision."""
    import json

    out = save_toy(tmp_path / "toy", "xs", seed=0)
    cfg = json.loads((out / "processor_config.json").read_text())
    assert cfg["processor_class"] == "Qwen2_5_VLProcessor"
    video, image = cfg["video_processor"], cfg["image_processor"]
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor"
    for key in ("patch_size", "merge_size", "temporal_patch_size", "size", "image_mean", "image_std"):
        assert video[key] == image[key], key
    policy = load_policy(out)  # this venv has no torchvision: the image-only class reads the same file
    assert type(policy.processor).__name__ == "ImageOnlyQwen2_5_VLProcessor"
    enc = policy.processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>hi"],
        images=[Image.new("RGB", (56, 56))],
        return_tensors="pt",
    )
    # start + 4 image tokens (56 px = 4x4 patches, merged 2x2) + end + the text
    assert enc["input_ids"].shape[1] == 1 + 4 + 1 + len(policy.tokenizer("hi")["input_ids"])
    # a checkpoint saved again (as every stage does) keeps the full config
    policy.processor.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "processor_config.json").read_text())["processor_class"] == (
        "Qwen2_5_VLProcessor"
    )

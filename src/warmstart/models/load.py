"""Load a Qwen2.5-VL (or Qwen2-VL) checkpoint and its processor.

One path for every model: the toy checkpoints this project builds and a 7B/72B
checkpoint from a local directory or a hub id both go through
:func:`load_policy`, using transformers' own classes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def quiet_transformers() -> None:
    """Silence transformers' per-file load/save progress bars (stages show their own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (via ``peft``) on the language model.

    Attributes:
        r: rank.
        alpha: scaling numerator (``lora_alpha``).
        dropout: dropout on the adapter input.
        target_modules: module names to adapt.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


@dataclass
class Policy:
    """A loaded model with its processor."""

    model: Any  # Qwen2_5_VLForConditionalGeneration (possibly wrapped by peft)
    processor: Any
    path: str

    @property
    def tokenizer(self):
        return self.processor.tokenizer


def unwrap_model(model: Any) -> Any:
    """The transformers ``...ForConditionalGeneration`` inside peft / ``.module`` wrappers.

    peft's ``PeftModel`` forwards attribute lookups, so ``peft_model.model`` would be
    the LoRA wrapper's inner *CausalLM*, not the base ``Qwen2_5_VLModel``: unwrap
    explicitly. The LoRA layers stay injected in the unwrapped modules, so it still
    computes the adapted function. DistributedDataParallel / accelerate-style wrappers
    keep the model in ``.module``; calling that bypasses DDP's forward hook, so use the
    unwrapped model only where gradients are not synchronised by DDP.
    """
    for _ in range(8):
        inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
        if inner is model and isinstance(getattr(model, "module", None), torch.nn.Module):
            inner = model.module
        if inner is model:
            break
        model = inner
    return model


def _model_class(model_type: str):
    from transformers import (
        AutoModelForImageTextToText,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLForConditionalGeneration,
    )

    return {
        "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
        "qwen2_vl": Qwen2VLForConditionalGeneration,
    }.get(model_type, AutoModelForImageTextToText)


def _has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def load_processor(path_or_id: str | Path):
    """The checkpoint's processor; an image-only Qwen2.5-VL processor where the full one cannot build.

    The full processor needs a video processor, which needs torchvision; on machines
    without it (this project's CPU machines) the image-only subclass is built from
    the checkpoint's own tokenizer and image processor instead.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    from warmstart.models.processor import ImageOnlyQwen2_5_VLProcessor

    local = Path(path_or_id)
    cfg_file = local / "processor_config.json"
    named = json.loads(cfg_file.read_text()).get("processor_class") if cfg_file.exists() else None
    # Our own saves name the full class (so vLLM and AutoProcessor load them); without
    # torchvision the full class cannot build, and the image-only one reads the same file.
    if named == ImageOnlyQwen2_5_VLProcessor.__name__ or (
        named == "Qwen2_5_VLProcessor" and not _has_torchvision()
    ):
        return ImageOnlyQwen2_5_VLProcessor.from_pretrained(str(path_or_id))
    try:
        return AutoProcessor.from_pretrained(str(path_or_id))
    except (ImportError, ValueError, TypeError, OSError) as e:
        if isinstance(e, OSError) and not local.exists():
            raise
        log.info("full processor unavailable (%s); using the image-only processor", e)
        tok = AutoTokenizer.from_pretrained(str(path_or_id))
        ip = AutoImageProcessor.from_pretrained(str(path_or_id))
        return ImageOnlyQwen2_5_VLProcessor(
            image_processor=ip, tokenizer=tok, chat_template=tok.chat_template
        )


def looks_local(path_or_id: str | Path) -> bool:
    """Whether ``path_or_id`` names a local folder rather than a hub id (``org/name``).

    Absolute or ``./`` / ``../`` / ``~`` paths, paths with more than one ``/``, and anything
    that exists are local; ``org/name`` that does not exist here is a hub id.
    """
    text = str(path_or_id)
    if Path(text).expanduser().exists() or text.startswith(("/", ".", "~")):
        return True
    return len(text.split("/")) != 2 or not all(text.split("/"))


def check_checkpoint_path(path_or_id: str | Path) -> None:
    """One clear line for a local checkpoint path that is missing or not a checkpoint.

    Without it, transformers takes the missing folder for a hub repo id and ends in a long
    traceback about the hub (issue 13, item 10).
    """
    from warmstart.config import ConfigError

    if not looks_local(path_or_id):
        return
    local = Path(path_or_id).expanduser()
    if not local.exists():
        raise ConfigError(
            f"model checkpoint {path_or_id} does not exist (a local path; hub ids look like org/name)"
        )
    if not (local / "config.json").exists():
        raise ConfigError(f"{local} is not a model checkpoint (no config.json)")


def load_policy(
    path_or_id: str | Path,
    dtype: str = "float32",
    device: str = "cpu",
    lora: LoraSpec | None = None,
    trainable: bool = False,
    attn_implementation: str = "sdpa",
) -> Policy:
    """Load model + processor from a local directory or a hub id.

    Args:
        path_or_id: checkpoint directory (``save_pretrained`` layout) or hub id.
        dtype: ``float32`` | ``bfloat16`` | ``float16``.
        device: torch device string.
        lora: add LoRA adapters (only the adapters train) when given.
        trainable: ``train()`` mode with gradients on; otherwise ``eval()`` and frozen.
        attn_implementation: transformers attention backend.
    """
    from transformers import AutoConfig

    quiet_transformers()
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {sorted(DTYPES)}")
    check_checkpoint_path(path_or_id)
    config = AutoConfig.from_pretrained(str(path_or_id))
    cls = _model_class(config.model_type)
    model = cls.from_pretrained(str(path_or_id), dtype=DTYPES[dtype], attn_implementation=attn_implementation)
    model.to(device)
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
            ),
        )
    if trainable:
        model.train()
    else:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return Policy(model=model, processor=load_processor(path_or_id), path=str(path_or_id))


def _lora_layers(model: Any) -> dict[str, Any]:
    """name -> peft LoRA layer of every adapted module (empty for a model without LoRA)."""
    inner = unwrap_model(model)
    return {n: m for n, m in inner.named_modules() if hasattr(m, "lora_A") and hasattr(m, "get_delta_weight")}


def lora_state_dict(model: Any) -> dict[str, torch.Tensor] | None:
    """The LoRA adapters' weights (name -> CPU tensor), or None for a model without LoRA."""
    if not _lora_layers(model):
        return None
    inner = unwrap_model(model)
    return {n: p.detach().cpu().clone() for n, p in inner.named_parameters() if "lora_" in n}


def load_lora_state_dict(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Copy :func:`lora_state_dict` weights back into a model with the same adapters."""
    params = dict(unwrap_model(model).named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise ValueError(f"LoRA state has weights this model lacks: {missing[:3]} ...")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def merged_state_dict(model: Any) -> dict[str, torch.Tensor] | None:
    """The state dict of the plain model a LoRA model computes (base + delta), or None without LoRA.

    Keys are those of the model without adapters (``...q_proj.weight``), so
    ``save_pretrained(state_dict=...)`` writes a checkpoint any loader reads. Nothing is
    merged in place: the live model keeps training on its unchanged base and adapters.
    """
    layers = _lora_layers(model)
    if not layers:
        return None
    inner = unwrap_model(model)
    out: dict[str, torch.Tensor] = {}
    for key, t in inner.state_dict().items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = t.detach()
    with torch.no_grad():
        for name, layer in layers.items():
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    w = out[f"{name}.weight"]
                    out[f"{name}.weight"] = w + layer.get_delta_weight(adapter).to(w.dtype)
    return out


def save_policy(policy_or_model, processor, out_dir: str | Path) -> None:
    """``save_pretrained`` of model (LoRA merged) and processor into ``out_dir``."""
    model = getattr(policy_or_model, "model", policy_or_model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)

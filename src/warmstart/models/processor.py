"""An image-only Qwen2.5-VL processor.

In transformers 5.x ``Qwen2_5_VLProcessor`` will not build without a video
processor, and every video processor imports torchvision, which does not import
beside the local CPU torch build. Images are all this project needs, so this
subclass drops the video part and keeps everything else (image token expansion,
``mm_token_type_ids``, chat template) from the real class.

Checkpoints must still load in plain transformers and in vLLM, which build the
processor through ``AutoProcessor`` and know only ``Qwen2_5_VLProcessor``. So
:meth:`ImageOnlyQwen2_5_VLProcessor.save_pretrained` writes the *full* processor
config (``processor_class: Qwen2_5_VLProcessor`` with a ``video_processor`` entry
sized like the image processor): where torchvision imports, ``AutoProcessor`` builds
the real class from it; here :func:`warmstart.models.load.load_processor` builds this
subclass from the same file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import Qwen2_5_VLProcessor
from transformers.processing_utils import ProcessorMixin

FULL_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"
PROCESSOR_CONFIG = "processor_config.json"


def video_processor_entry(image_processor: dict[str, Any]) -> dict[str, Any]:
    """A ``Qwen2VLVideoProcessor`` config matching an image processor's config (never used for video here)."""
    keys = ("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean", "image_std")
    keys += ("merge_size", "patch_size", "resample", "rescale_factor", "size", "temporal_patch_size")
    entry = {k: image_processor[k] for k in keys if k in image_processor}
    entry["video_processor_type"] = "Qwen2VLVideoProcessor"
    return entry


def write_full_processor_config(folder: str | Path) -> None:
    """Rewrite ``folder/processor_config.json`` as a full ``Qwen2_5_VLProcessor`` config."""
    path = Path(folder) / PROCESSOR_CONFIG
    cfg = json.loads(path.read_text())
    cfg["processor_class"] = FULL_PROCESSOR_CLASS
    cfg.setdefault("video_processor", video_processor_entry(cfg["image_processor"]))
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``ProcessorMixin.save_pretrained``, then the config rewritten as a full ``Qwen2_5_VLProcessor``'s."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        write_full_processor_config(save_directory)
        return out

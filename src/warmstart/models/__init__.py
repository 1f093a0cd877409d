"""Models: loading any Qwen2.5-VL checkpoint, and the toy family built here."""

from warmstart.models.load import LoraSpec, Policy, load_policy, load_processor, save_policy, unwrap_model

__all__ = ["LoraSpec", "Policy", "load_policy", "load_processor", "save_policy", "unwrap_model"]

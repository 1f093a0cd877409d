"""The pieces of the vLLM protocol that need no engine: constants shared across venvs, the image-pad
rule, the weight export the server loads, and the config checks."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from warmstart import vllm_server
from warmstart.config import ConfigError, from_dict
from warmstart.models import load_policy
from warmstart.models.load import LoraSpec
from warmstart.rollout import SUPPRESS_LOGIT
from warmstart.sampler import RolloutConfig
from warmstart.vllm_engine import hf_state_dict, server_command

pytestmark = pytest.mark.vllm


def test_the_server_suppresses_with_the_training_sides_constant():
    # vllm_server cannot import warmstart.rollout (other venv): the constant is copied, and must agree.
    assert vllm_server.SUPPRESS_LOGIT == SUPPRESS_LOGIT


def test_collapse_image_pads_keeps_one_pad_per_image():
    two_images = [1, 3, 5, 5, 5, 5, 4, 9, 3, 5, 5, 4]  # 3 = vision start, 5 = image pad, 4 = vision end
    assert vllm_server.collapse_image_pads(two_images, 5) == [1, 3, 5, 4, 9, 3, 5, 4]
    assert vllm_server.collapse_image_pads([1, 5, 2], 5) == [1, 5, 2]
    assert vllm_server.collapse_image_pads([1, 5, 5], None) == [1, 5, 5]


def test_exported_weights_are_named_as_save_pretrained_writes_them(toy_dir):
    saved = load_file(str(toy_dir / "model.safetensors"))
    exported = hf_state_dict(load_policy(toy_dir).model)
    assert sorted(exported) == sorted(saved)
    for name, tensor in saved.items():
        assert torch.equal(exported[name], tensor), name


def test_lora_weights_are_exported_merged_and_the_model_is_left_as_it_was(toy_dir):
    policy = load_policy(toy_dir, lora=LoraSpec(r=4, alpha=8), trainable=True)
    with torch.no_grad():  # non-zero adapters (peft starts lora_B at zero)
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    exported = hf_state_dict(policy.model)
    merged = copy.deepcopy(policy.model).merge_and_unload()
    want = hf_state_dict(merged)
    assert sorted(exported) == sorted(want) == sorted(load_file(str(toy_dir / "model.safetensors")))
    for name in want:
        torch.testing.assert_close(exported[name], want[name], atol=1e-6, rtol=0, msg=name)
    assert any(
        not torch.equal(exported[n], v) for n, v in load_file(str(toy_dir / "model.safetensors")).items()
    )
    after = policy.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_rollout_config_checks_its_vllm_fields():
    cfg = from_dict(RolloutConfig, {"backend": "vllm", "vllm_engine_args": ["--tensor-parallel-size", "2"]})
    assert cfg.vllm_engine_args == ("--tensor-parallel-size", "2")
    with pytest.raises(ConfigError, match="'--dtype=bfloat16' is set by RolloutConfig's own fields"):
        from_dict(RolloutConfig, {"backend": "vllm", "vllm_engine_args": ["--dtype=bfloat16"]})
    with pytest.raises(ConfigError, match="vllm_kv_cache_gib must be > 0, got 0"):
        from_dict(RolloutConfig, {"vllm_kv_cache_gib": 0})
    with pytest.raises(ConfigError, match="'fp8' is not one of"):
        from_dict(RolloutConfig, {"vllm_dtype": "fp8"})
    with pytest.raises(ConfigError, match="did you mean 'vllm_dtype'"):
        from_dict(RolloutConfig, {"vllm_dtyp": "float32"})


def test_server_command_line():
    cmd = server_command("/py", "/m", "127.0.0.1", 9, "float32", 512, 2.0, ["--enforce-eager"])
    assert cmd == [
        "/py", "-m", "warmstart.vllm_server", "--model", "/m", "--host", "127.0.0.1", "--port", "9",
        "--dtype", "float32", "--kv-cache-gib", "2.0", "--max-model-len", "512", "--enforce-eager",
    ]  # fmt: skip

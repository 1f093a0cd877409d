"""Shared pieces of the real-vLLM tests (``make test-vllm``).

Every test here runs vLLM for real: :mod:`warmstart.vllm_server` from ``.venv-vllm``,
our clients from the training venv, HTTP on 127.0.0.1. Without the vLLM venv they fail
(never skip) with the command that creates it. Servers are started once per module.
"""

from __future__ import annotations

import pytest

from warmstart.sampler import RolloutConfig
from warmstart.vllm_engine import default_vllm_python

# CPU build: no torch.compile at start (seconds instead of minutes), fp32 so that tokens
# can be compared with the in-process engine, a short context and a 1 GiB KV cache.
VLLM_ROLLOUT = {
    "backend": "vllm",
    "vllm_dtype": "float32",
    "vllm_max_model_len": 512,
    "vllm_kv_cache_gib": 1.0,
    "vllm_engine_args": ["--enforce-eager"],
}


def vllm_rollout_config(**over) -> RolloutConfig:
    from warmstart.config import from_dict

    return from_dict(RolloutConfig, {**VLLM_ROLLOUT, **over})


@pytest.fixture(autouse=True, scope="session")
def _require_vllm_venv():
    python = default_vllm_python()
    if not python.exists():
        pytest.fail(
            f"the vLLM tests need vLLM's venv, and {python} does not exist: run `make setup-vllm` "
            "(or set WARMSTART_VLLM_PYTHON to a python with vLLM and warmstart installed)",
            pytrace=False,
        )

"""The rollout seam: make_sampler, RolloutConfig, and LocalSampler == the in-process engine, bit for bit."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from warmstart import engine
from warmstart.config import ConfigError, from_dict
from warmstart.data.schema import Problem
from warmstart.models import load_policy
from warmstart.models.toy import save_toy
from warmstart.rollout import SamplingParams, encode_prompts
from warmstart.sampler import SAMPLERS, LocalSampler, RolloutConfig, Sampler, make_sampler


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """Two xs toys with different weights (seeds 0 and 1), same tokenizer."""
    root = tmp_path_factory.mktemp("toys")
    return [load_policy(save_toy(root / f"seed{s}", "xs", seed=s)) for s in (0, 1)]


def make_problems(k: int) -> list[Problem]:
    out = []
    for i in range(k):
        image = Image.new("RGB", (56, 56), ((60 * i) % 256, 90, (180 - 40 * i) % 256))
        question = f"Side {i + 3}. Find the perimeter." + " Be careful." * (i % 2)
        out.append(Problem(id=f"p{i}", question=question, images=(image,), answer="0", answer_type="integer"))
    return out


def test_make_sampler_gives_a_local_sampler_that_is_a_sampler(toys):
    policy = toys[0]
    sampler = make_sampler(RolloutConfig(), policy.model, policy.processor)
    assert type(sampler) is LocalSampler
    assert isinstance(sampler, Sampler)
    assert SAMPLERS["local"] is LocalSampler
    chunked = make_sampler(RolloutConfig(max_batch_rows=3), policy.model, policy.processor)
    assert chunked.max_batch_rows == 3


def test_unknown_backend_is_a_config_error_naming_the_valid_ones(toys):
    policy = toys[0]
    with pytest.raises(ConfigError, match=r"'sglang' is not one of \['local', 'vllm'\]"):
        make_sampler(RolloutConfig(backend="sglang"), policy.model, policy.processor)
    with pytest.raises(ConfigError, match=r"backend: 'sglang' is not one of \['local', 'vllm'\]"):
        from_dict(RolloutConfig, {"backend": "sglang"})


def test_rollout_config_from_dict_rejects_unknown_keys_and_negative_rows():
    assert from_dict(RolloutConfig, {}) == RolloutConfig(backend="local", max_batch_rows=0)
    assert from_dict(RolloutConfig, {"max_batch_rows": 8}).max_batch_rows == 8
    with pytest.raises(ConfigError, match="unknown key 'max_rows'.*did you mean 'max_batch_rows'"):
        from_dict(RolloutConfig, {"max_rows": 8})
    with pytest.raises(ConfigError, match="max_batch_rows must be >= 0, got -1"):
        from_dict(RolloutConfig, {"max_batch_rows": -1})


@pytest.mark.parametrize("max_batch_rows", [0, 3])
def test_local_sampler_equals_the_engine_exactly(toys, max_batch_rows):
    policy = toys[0]
    batch = encode_prompts(make_problems(3), policy.processor)
    params = SamplingParams(n=2, max_new_tokens=8, seed=5)
    sampler = make_sampler(RolloutConfig(max_batch_rows=max_batch_rows), policy.model, policy.processor)
    calls: list[tuple[int, int]] = []
    got = sampler.sample(batch, params, progress=lambda d, t: calls.append((d, t)))
    want = engine.sample(policy.model, policy.processor, batch, params, max_batch_rows=max_batch_rows or None)
    assert torch.equal(got.response_ids_BT, want.response_ids_BT)
    assert torch.equal(got.logp_BT, want.logp_BT)
    assert torch.equal(got.entropy_BT, want.entropy_BT)
    assert got.texts_B == want.texts_B and got.suppressed_ids == want.suppressed_ids
    # 6 rows: one chunk without a bound; 3 rows = one prompt's 2 rows per chunk with it.
    assert calls == ([(6, 6)] if max_batch_rows == 0 else [(2, 6), (4, 6), (6, 6)])


def test_sync_weights_makes_the_next_sample_come_from_the_new_model(toys):
    first, second = toys
    problems = make_problems(2)
    params = SamplingParams(n=2, max_new_tokens=6, seed=2)
    sampler = make_sampler(RolloutConfig(), first.model, first.processor)
    before = sampler.sample(problems, params)
    sampler.sync_weights(second.model)
    after = sampler.sample(problems, params)
    from_second = engine.sample(second.model, second.processor, problems, params)
    assert torch.equal(after.response_ids_BT, from_second.response_ids_BT)
    assert torch.equal(after.logp_BT, from_second.logp_BT)
    assert not torch.equal(before.logp_BT, after.logp_BT)

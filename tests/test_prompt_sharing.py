"""score_rollouts_shared_prompts: each prompt run once, the same scores and gradients as score_rollouts."""

from __future__ import annotations

import pytest
import torch

from warmstart.data.loaders import load_problems
from warmstart.models import load_policy
from warmstart.prompt_sharing import rows_per_prompt, score_rollouts_shared_prompts
from warmstart.rollout import SamplingParams
from warmstart.sampler import RolloutConfig, make_sampler
from warmstart.scoring import score_rollouts


@pytest.fixture(scope="module")
def setup(toy_dir, synth_dir):
    pol = load_policy(toy_dir, trainable=True)
    pol.model.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # sharper distributions than a fresh init, so the scores differ by row
        for p in pol.model.model.language_model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    probs = load_problems(synth_dir, split="train").problems[:4]
    ro = make_sampler(RolloutConfig(), pol.model, pol.processor).sample(
        probs, SamplingParams(n=3, max_new_tokens=16, seed=5)
    )
    assert not bool(ro.response_mask_BT.all()) or ro.num_rows > 0
    return pol, ro


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("rows", [None, [7, 0, 11, 3, 4]])  # all rows; a shuffled subset (mini-batches)
def test_same_scores_and_gradients_as_score_rollouts(setup, rows):
    pol, ro = setup
    if rows is not None:
        ro = ro.select(rows)
    full = score_rollouts(pol.model, ro, with_entropy=True, grad=True)
    shared = score_rollouts_shared_prompts(pol.model, ro, with_entropy=True, grad=True)
    mask = ro.response_mask_BT
    assert int(mask.sum()) > 20
    assert float((full.logp_BT - shared.logp_BT).abs().max()) < 1e-5
    assert float((full.entropy_BT - shared.entropy_BT).abs().max()) < 1e-5
    assert (shared.logp_BT[~mask] == 0).all()
    # a loss on both outputs: the gradients reach every weight (vision tower included) alike
    weights = torch.linspace(-1, 1, mask.shape[1])
    loss_full = ((full.logp_BT + 0.5 * full.entropy_BT) * weights).sum()
    loss_shared = ((shared.logp_BT + 0.5 * shared.entropy_BT) * weights).sum()
    for g_full, g_shared in zip(_grads(pol.model, loss_full), _grads(pol.model, loss_shared)):
        assert (g_full is None) == (g_shared is None)
        if g_full is not None:
            assert torch.allclose(g_full, g_shared, atol=1e-5, rtol=1e-4)


def test_temperature_and_rows_per_prompt(setup):
    pol, ro = setup
    a = score_rollouts(pol.model, ro, with_entropy=False, temperature=0.7)
    b = score_rollouts_shared_prompts(pol.model, ro, with_entropy=False, temperature=0.7)
    assert b.entropy_BT is None
    assert float((a.logp_BT - b.logp_BT).abs().max()) < 1e-5
    assert rows_per_prompt(ro) == 3.0

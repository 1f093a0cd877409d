"""Rollouts: the in-process engine's tokens, log-probs and entropies against the HF model itself.

One toy checkpoint ("xs") is saved per module. Its text weights are re-drawn with a
larger scale so that next-token distributions depend clearly on the context: greedy
sequences then vary from token to token (a freshly initialised toy repeats one token)
and argmax near-ties, which could make "equal to generate" flaky, are rare.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from PIL import Image

import warmstart.engine as engine
import warmstart.rollout as rollout
from warmstart.data.prompts import prompt_text
from warmstart.data.schema import Problem
from warmstart.engine import _shared_text_prefix, sample, sample_from_logits, top_p_mask
from warmstart.models import load_policy
from warmstart.models.toy import IMAGE_PAD, PAD, VIDEO_PAD, VISION_END, VISION_START, save_toy
from warmstart.rollout import (
    SUPPRESS_LOGIT,
    PromptBatch,
    Rollouts,
    SamplingParams,
    encode_prompts,
    suppressed_token_ids,
    vision_token_ids,
)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = save_toy(tmp_path_factory.mktemp("toy") / "xs", "xs", seed=0)
    pol = load_policy(path)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in list(pol.model.model.language_model.parameters()) + [pol.model.lm_head.weight]:
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    return pol


def make_problems(k: int, offset: int = 0) -> list[Problem]:
    """k problems whose questions have different lengths (so prompts get left padding)."""
    out = []
    for i in range(offset, offset + k):
        image = Image.new("RGB", (56, 56), ((70 * i) % 256, 40, (200 - 30 * i) % 256))
        question = f"Side {i + 2}. Find the perimeter." + " Be careful." * (i % 3)
        out.append(Problem(id=f"p{i}", question=question, images=(image,), answer="0", answer_type="integer"))
    return out


def reference_scores(
    model, rollouts: Rollouts, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """logp / entropy of the response tokens from one fresh full HF forward (naive log_softmax)."""
    seqs = rollouts.full_sequences()
    with torch.no_grad():
        logits = model(**seqs.model_inputs()).logits.float()
    width = rollouts.prompts.input_ids_QP.shape[1]
    n_resp = rollouts.response_ids_BT.shape[1]
    z = logits[:, width - 1 : width - 1 + n_resp].clone()
    z[..., list(rollouts.suppressed_ids)] = SUPPRESS_LOGIT
    logp_all = torch.log_softmax(z / temperature, dim=-1)
    logp = logp_all.gather(-1, rollouts.response_ids_BT[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    mask = rollouts.response_mask_BT
    return logp * mask, entropy * mask


def with_lm_head_bias(model, bias_by_id: dict[int, float]):
    """A copy of ``model`` whose LM head adds a bias to some vocabulary entries."""
    model = copy.deepcopy(model)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        for token, value in bias_by_id.items():
            head.bias[token] = value
    head.requires_grad_(False)
    model.lm_head = head
    return model


def test_same_seed_same_tokens_different_seed_different(policy):
    problems = make_problems(3)
    a = sample(policy.model, policy.processor, problems, SamplingParams(n=2, max_new_tokens=16, seed=7))
    b = sample(policy.model, policy.processor, problems, SamplingParams(n=2, max_new_tokens=16, seed=7))
    c = sample(policy.model, policy.processor, problems, SamplingParams(n=2, max_new_tokens=16, seed=8))
    assert torch.equal(a.response_ids_BT, b.response_ids_BT)
    assert torch.equal(a.logp_BT, b.logp_BT)
    assert a.texts_B == b.texts_B
    width = min(a.response_ids_BT.shape[1], c.response_ids_BT.shape[1])
    assert not torch.equal(a.response_ids_BT[:, :width], c.response_ids_BT[:, :width])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logp_and_entropy_match_a_full_forward(policy, temperature):
    problems = make_problems(3)
    params = SamplingParams(n=2, max_new_tokens=20, temperature=temperature, seed=3)
    r = sample(policy.model, policy.processor, problems, params)
    ref_logp, ref_entropy = reference_scores(policy.model, r, temperature)
    mask = r.response_mask_BT
    assert mask.any()
    assert torch.allclose(r.logp_BT, ref_logp, atol=1e-4, rtol=0)
    assert torch.allclose(r.entropy_BT, ref_entropy, atol=1e-4, rtol=0)
    assert (r.logp_BT[~mask] == 0).all() and (r.entropy_BT[~mask] == 0).all()
    # Ordinary tensors, usable by a training forward later (not inference tensors).
    assert not r.response_ids_BT.is_inference() and not r.logp_BT.is_inference()


def test_greedy_matches_hf_generate(policy):
    problems = make_problems(3)
    r = sample(policy.model, policy.processor, problems, SamplingParams(greedy=True, max_new_tokens=24))
    batch = r.prompts
    with torch.no_grad():
        out = policy.model.generate(
            input_ids=batch.input_ids_QP,
            attention_mask=batch.attention_mask_QP,
            mm_token_type_ids=batch.mm_token_type_ids_QP,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw_I3,
            do_sample=False,
            max_new_tokens=24,
            suppress_tokens=list(r.suppressed_ids),
        )
    theirs = out[:, batch.input_ids_QP.shape[1] :]
    ours = r.response_ids_BT
    assert theirs.shape == ours.shape
    assert torch.equal(ours, theirs)
    assert len(set(ours[0].tolist())) > 5  # a real sequence, not one repeated token


def test_eos_stops_a_row_and_pads_after(policy):
    eos = policy.tokenizer.eos_token_id
    pad = policy.tokenizer.pad_token_id
    model = with_lm_head_bias(policy.model, {eos: 5.0})  # EOS about one step in four
    r = sample(model, policy.processor, make_problems(2), SamplingParams(n=4, max_new_tokens=24, seed=1))
    lengths = r.response_lengths_B.tolist()
    assert "stop" in r.finish_reason_B and min(lengths) < r.response_ids_BT.shape[1]
    for b, (reason, length) in enumerate(zip(r.finish_reason_B, lengths)):
        ids = r.response_ids_BT[b]
        if reason == "stop":
            assert ids[length - 1] == eos and eos not in ids[: length - 1].tolist()
            assert (ids[length:] == pad).all() and not r.response_mask_BT[b, length:].any()
            assert (r.logp_BT[b, length:] == 0).all()
        else:
            assert length == 24 and eos not in ids.tolist()
        assert r.response_mask_BT[b, :length].all()
    ref_logp, _ = reference_scores(model, r)
    assert torch.allclose(r.logp_BT, ref_logp, atol=1e-4, rtol=0)


def test_n_samples_share_their_prompt_and_rows_are_contiguous(policy):
    problems = make_problems(3)
    r = sample(policy.model, policy.processor, problems, SamplingParams(n=3, max_new_tokens=10, seed=2))
    assert r.prompt_index_B.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    seqs = r.full_sequences()
    width = r.prompts.input_ids_QP.shape[1]
    for b in range(r.num_rows):
        q = int(r.prompt_index_B[b])
        assert torch.equal(seqs.input_ids_BL[b, :width], r.prompts.input_ids_QP[q])
        assert torch.equal(seqs.input_ids_BL[b, width:], r.response_ids_BT[b])
    # Each row carries its prompt's image patches (16 per 56 px image).
    patches = r.prompts.pixel_values.view(3, 16, -1)
    assert torch.equal(seqs.pixel_values.view(9, 16, -1), patches.repeat_interleave(3, dim=0))
    assert seqs.image_grid_thw.shape == (9, 3)
    # Samples of one prompt differ (temperature 1 over a wide distribution).
    assert not torch.equal(r.response_ids_BT[0], r.response_ids_BT[1])


def test_left_padded_batch_equals_each_prompt_alone_greedy(policy):
    problems = make_problems(3)
    batch = encode_prompts(problems, policy.processor)
    assert len(set(batch.attention_mask_QP.sum(1).tolist())) > 1  # really different lengths
    params = SamplingParams(greedy=True, max_new_tokens=16)
    together = sample(policy.model, policy.processor, batch, params)
    for q, problem in enumerate(problems):
        alone = sample(policy.model, policy.processor, [problem], params)
        length = int(alone.response_lengths_B[0])
        assert torch.equal(together.response_ids_BT[q, :length], alone.response_ids_BT[0, :length])
        assert torch.allclose(together.logp_BT[q, :length], alone.logp_BT[0, :length], atol=1e-5)
        assert torch.allclose(together.entropy_BT[q, :length], alone.entropy_BT[0, :length], atol=1e-5)


def test_shared_prompt_prefix_is_prefilled_once_and_scores_exactly(policy, monkeypatch):
    """Prompts with a long common head (a system turn) take the shared-prefix prefill path."""
    problems = make_problems(3)
    system = "<|im_start|>system\nYou are a careful geometry tutor. Think step by step.<|im_end|>\n"
    texts = [system + prompt_text(p, policy.processor) for p in problems]
    batch = encode_prompts(problems, policy.processor, texts=texts)
    start_Q = (batch.attention_mask_QP == 0).sum(1)
    shared = _shared_text_prefix(batch.input_ids_QP, batch.mm_token_type_ids_QP, start_Q)
    assert shared >= engine.MIN_SHARED_PREFIX
    sampled = sample(policy.model, policy.processor, batch, SamplingParams(n=2, max_new_tokens=12, seed=4))
    ref_logp, ref_entropy = reference_scores(policy.model, sampled)
    assert torch.allclose(sampled.logp_BT, ref_logp, atol=1e-4, rtol=0)
    assert torch.allclose(sampled.entropy_BT, ref_entropy, atol=1e-4, rtol=0)
    # Same greedy tokens with the shared-prefix prefill switched off.
    greedy = SamplingParams(greedy=True, max_new_tokens=12)
    with_prefix = sample(policy.model, policy.processor, batch, greedy)
    monkeypatch.setattr(engine, "MIN_SHARED_PREFIX", 10**9)
    without_prefix = sample(policy.model, policy.processor, batch, greedy)
    assert torch.equal(with_prefix.response_ids_BT, without_prefix.response_ids_BT)
    assert torch.allclose(with_prefix.logp_BT, without_prefix.logp_BT, atol=1e-5)


def test_vision_special_tokens_are_never_sampled(policy):
    tok = policy.tokenizer
    vision = [
        tok.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    ]
    banned = set(vision) | {tok.pad_token_id}
    assert banned <= set(suppressed_token_ids(policy.model, tok))
    assert tok.eos_token_id not in suppressed_token_ids(policy.model, tok)
    # Without suppression these tokens would take almost all the probability mass.
    model = with_lm_head_bias(policy.model, {t: 30.0 for t in banned})
    r = sample(model, policy.processor, make_problems(2), SamplingParams(n=4, max_new_tokens=12, seed=0))
    assert not banned & set(r.response_ids_BT[r.response_mask_BT].tolist())
    assert torch.isfinite(r.logp_BT).all() and torch.isfinite(r.entropy_BT).all()
    ref_logp, ref_entropy = reference_scores(model, r)
    assert torch.allclose(r.logp_BT, ref_logp, atol=1e-4, rtol=0)
    assert torch.allclose(r.entropy_BT, ref_entropy, atol=1e-4, rtol=0)


def test_toy_vision_and_suppressed_ids_are_pinned(policy):
    """The one vision-token rule gives the toy the ids both old rules gave (sampled tokens unchanged).

    The toy tokenizer's special tokens come first: pad 0, <|im_start|> 1, <|im_end|> (EOS)
    2, vision start 3, vision end 4, image pad 5, video pad 6.
    """
    tok = policy.tokenizer
    names = {t: tok.convert_tokens_to_ids(t) for t in (PAD, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)}
    assert names == {PAD: 0, VISION_START: 3, VISION_END: 4, IMAGE_PAD: 5, VIDEO_PAD: 6}
    assert tok.eos_token_id == 2
    # The scorer's and serve's set (config only) and the sampler's (config + tokenizer) agree.
    assert vision_token_ids(policy.model) == [3, 4, 5, 6]
    assert vision_token_ids(policy.model, tok) == [3, 4, 5, 6]
    # The sampler adds pad; EOS is never suppressed.
    assert suppressed_token_ids(policy.model, tok) == [0, 3, 4, 5, 6]
    ro = sample(policy.model, policy.processor, make_problems(1), SamplingParams(max_new_tokens=2))
    assert ro.suppressed_ids == (0, 3, 4, 5, 6)


def test_moved_engine_names_stay_importable_from_rollout():
    assert rollout.sample is engine.sample
    assert rollout.sample_from_logits is engine.sample_from_logits
    assert rollout.top_p_mask is engine.top_p_mask
    with pytest.raises(AttributeError):
        rollout.no_such_name  # noqa: B018


def test_top_p_draws_only_from_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    # Mass before each token: 0, 0.5, 0.8, 0.95 -> top_p 0.7 keeps the first two.
    assert top_p_mask(probs[None], 0.7).tolist() == [[True, True, False, False]]
    assert top_p_mask(probs[None], 0.5).tolist() == [[True, False, False, False]]
    assert top_p_mask(probs[None], 1.0).all()
    # Shuffled vocabulary order: the nucleus follows probability, not position.
    order = torch.tensor([2, 0, 3, 1])
    logits = probs[order].log().expand(40_000, 4).contiguous()
    gen = torch.Generator().manual_seed(0)
    token, logp, entropy = sample_from_logits(logits, top_p=0.7, generator=gen)
    picked = order[token]  # back to indices into `probs`
    assert set(picked.tolist()) == {0, 1}
    assert abs((picked == 0).float().mean().item() - 0.5 / 0.8) < 0.01
    # Reported log-probs and entropy are those of the full distribution (before top-p).
    assert torch.allclose(logp, probs[picked].log(), atol=1e-6)
    assert torch.allclose(entropy, -(probs * probs.log()).sum().expand(40_000), atol=1e-5)


def test_full_distribution_draw_frequencies_and_suppressed_zero():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    logits = probs.clamp_min(1e-45).log()
    logits[1] = SUPPRESS_LOGIT
    gen = torch.Generator().manual_seed(1)
    token, logp, entropy = sample_from_logits(logits.expand(60_000, 4).contiguous(), generator=gen)
    freq = torch.bincount(token, minlength=4).float() / token.numel()
    assert freq[1] == 0
    assert torch.allclose(freq, probs, atol=0.01)
    assert torch.isfinite(entropy).all()
    assert abs(entropy[0].item() - (-sum(p * math.log(p) for p in (0.1, 0.6, 0.3)))) < 1e-5
    greedy, _, _ = sample_from_logits(logits[None], greedy=True)
    assert greedy.tolist() == [2]


def test_max_batch_rows_chunks_give_the_same_greedy_rows_and_report_progress(policy):
    problems = make_problems(2)
    params = SamplingParams(n=3, greedy=True, max_new_tokens=8)
    whole = sample(policy.model, policy.processor, problems, params)
    calls: list[tuple[int, int]] = []
    chunked = sample(
        policy.model,
        policy.processor,
        problems,
        params,
        max_batch_rows=2,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert torch.equal(whole.response_ids_BT, chunked.response_ids_BT)
    assert torch.allclose(whole.logp_BT, chunked.logp_BT, atol=1e-5)
    assert chunked.prompt_index_B.tolist() == [0, 0, 0, 1, 1, 1]
    assert [t for _, t in calls] == [6] * len(calls) and len(calls) == 4  # n=3 > 2 rows: 2 + 1 per prompt
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] == 6
    sampled = sample(
        policy.model, policy.processor, problems, SamplingParams(n=3, max_new_tokens=8), max_batch_rows=4
    )
    ref_logp, _ = reference_scores(policy.model, sampled)
    assert torch.allclose(sampled.logp_BT, ref_logp, atol=1e-4, rtol=0)


def test_select_and_cat_keep_rows_and_prompts_consistent(policy):
    a = sample(
        policy.model, policy.processor, make_problems(2), SamplingParams(n=2, max_new_tokens=6, seed=0)
    )
    b = sample(
        policy.model,
        policy.processor,
        make_problems(1, offset=5),
        SamplingParams(n=2, max_new_tokens=9, seed=0),
    )
    picked = a.select([3, 0])
    assert picked.prompt_index_B.tolist() == [1, 0]
    assert torch.equal(picked.response_ids_BT, a.response_ids_BT[[3, 0]])
    assert picked.texts_B == [a.texts_B[3], a.texts_B[0]]
    both = Rollouts.cat([a, b])
    assert both.num_rows == 6 and both.prompts.num_prompts == 3
    assert both.prompt_index_B.tolist() == [0, 0, 1, 1, 2, 2]
    assert both.response_ids_BT.shape[1] == max(a.response_ids_BT.shape[1], b.response_ids_BT.shape[1])
    # The concatenation scores like its parts.
    logp, _ = reference_scores(policy.model, both)
    assert torch.allclose(logp[:4, : a.logp_BT.shape[1]], a.logp_BT, atol=1e-4, rtol=0)
    assert torch.allclose(logp[4:, : b.logp_BT.shape[1]], b.logp_BT, atol=1e-4, rtol=0)
    assert isinstance(PromptBatch.cat([a.prompts, b.prompts]), PromptBatch)


def test_sampling_params_validation():
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="n must"):
        SamplingParams(n=0)


def test_behaviour_logp_equals_a_scoring_pass_within_1e_5(policy):
    """The stages use ``Rollouts.logp_BT`` as old (GRPO) / student (OPD) log-probs at temperature 1
    instead of a scoring forward (batch.sampler_logp_is_exact): it must equal that pass to 1e-5."""
    from warmstart.batch import sampler_logp_is_exact
    from warmstart.sampler import RolloutConfig, make_sampler
    from warmstart.scoring import score_rollouts

    sampler = make_sampler(RolloutConfig(), policy.model, policy.processor)
    assert sampler_logp_is_exact(sampler, 1.0) and not sampler_logp_is_exact(sampler, 0.7)
    r = sampler.sample(make_problems(4), SamplingParams(n=4, max_new_tokens=24, seed=11))
    scored = score_rollouts(policy.model, r, with_entropy=True)
    mask = r.response_mask_BT
    assert int(mask.sum()) > 200
    assert float((r.logp_BT - scored.logp_BT).abs().max()) <= 1e-5
    assert float((r.entropy_BT - scored.entropy_BT).abs().max()) <= 1e-5
    # and the same holds for a real toy checkpoint as the stages save it (no re-drawn weights)
    with torch.no_grad():
        plain = load_policy(policy.path)
    r = make_sampler(RolloutConfig(), plain.model, plain.processor).sample(
        make_problems(3, offset=5), SamplingParams(n=2, max_new_tokens=24, seed=2)
    )
    assert float((r.logp_BT - score_rollouts(plain.model, r, with_entropy=False).logp_BT).abs().max()) <= 1e-5


def test_decode_layouts_and_prefill_chunks_agree(policy, monkeypatch):
    """n = 1 decodes from one KV block per row, n > 1 from a shared prompt block plus row blocks,
    and the prefill runs a few prompts at a time: all give the same greedy rows and log-probs."""
    problems = make_problems(3)
    one = sample(policy.model, policy.processor, problems, SamplingParams(greedy=True, max_new_tokens=16))
    two = sample(
        policy.model, policy.processor, problems, SamplingParams(n=2, greedy=True, max_new_tokens=16)
    )
    assert torch.equal(two.response_ids_BT[0::2], one.response_ids_BT)
    assert torch.equal(two.response_ids_BT[1::2], one.response_ids_BT)
    assert torch.allclose(two.logp_BT[0::2], one.logp_BT, atol=1e-5, rtol=0)
    assert torch.allclose(two.entropy_BT[1::2], one.entropy_BT, atol=1e-5, rtol=0)
    monkeypatch.setattr(engine, "PREFILL_CHUNK_TOKENS", 1)  # one prompt per prefill chunk
    chunked = sample(policy.model, policy.processor, problems, SamplingParams(greedy=True, max_new_tokens=16))
    assert torch.equal(chunked.response_ids_BT, one.response_ids_BT)
    assert torch.allclose(chunked.logp_BT, one.logp_BT, atol=1e-5, rtol=0)

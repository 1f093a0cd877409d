"""Chunked log-prob + entropy: exact against the naive full log_softmax, and against a full HF forward."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from warmstart.data.schema import Problem
from warmstart.models import load_policy
from warmstart.models.toy import save_toy
from warmstart.rollout import SUPPRESS_LOGIT, Rollouts, SamplingParams, encode_prompts, vision_token_ids
from warmstart.sampler import RolloutConfig, make_sampler
from warmstart.scoring import (
    TokenScores,
    chunked_logp_entropy,
    naive_logp_entropy,
    score_rollouts,
    score_sequences,
)

ATOL = 1e-5


def _problem(n=37, h=16, v=300, seed=0, dtype=torch.float32, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype)
    weight = (torch.randn(v, h, generator=g, dtype=dtype) * scale).requires_grad_(True)
    targets = torch.randint(0, v, (n,), generator=g)
    # Random loss weights (not plain sums), so every position's gradient is checked separately.
    w_logp = torch.randn(n, generator=g, dtype=dtype)
    w_ent = torch.randn(n, generator=g, dtype=dtype)
    return hidden.requires_grad_(True), weight, targets, w_logp, w_ent


def _values_and_grads(fn, hidden, weight, targets, w_logp, w_ent, bias=None, **kw):
    hidden = hidden.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    params = [hidden, weight]
    if bias is not None:
        bias = bias.detach().clone().requires_grad_(True)
        params.append(bias)
    logp, ent = fn(hidden, weight, targets, bias_V=bias, **kw)
    ((logp * w_logp).sum() + (ent * w_ent).sum()).backward()
    return [logp.detach(), ent.detach()] + [p.grad for p in params]


def _assert_all_close(got, want, atol=ATOL):
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert torch.isfinite(a).all()
        assert (a - b).abs().max().item() <= atol, (a - b).abs().max().item()


# ---------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------


def test_gradcheck_float64():
    hidden, weight, targets, _, _ = _problem(n=7, h=5, v=11, dtype=torch.float64, scale=1.0)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)

    def f(h, w, b):
        return chunked_logp_entropy(h, w, targets, chunk_size=3, temperature=0.7, bias_V=b, suppress_ids=[2])

    assert torch.autograd.gradcheck(f, (hidden, weight, bias), eps=1e-6, atol=1e-7)

    def f_logp_only(h, w):
        return chunked_logp_entropy(h, w, targets, chunk_size=4, with_entropy=False)[0]

    assert torch.autograd.gradcheck(f_logp_only, (hidden, weight), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 8, 10, 37, 1024])  # 10 does not divide N = 37
def test_chunked_equals_naive_values_and_grads(chunk_size):
    hidden, weight, targets, w_logp, w_ent = _problem()
    bias = torch.randn(300) * 0.1
    got = _values_and_grads(
        chunked_logp_entropy, hidden, weight, targets, w_logp, w_ent, bias=bias, chunk_size=chunk_size
    )
    want = _values_and_grads(naive_logp_entropy, hidden, weight, targets, w_logp, w_ent, bias=bias)
    _assert_all_close(got, want)
    # Sanity of the numbers themselves: log-probs <= 0, entropy within [0, log V].
    assert (got[0] <= 0).all() and (got[1] >= 0).all() and (got[1] <= torch.log(torch.tensor(300.0))).all()


def test_entropy_is_full_vocabulary_shannon_entropy():
    hidden, weight, targets, _, _ = _problem(n=5, v=50)
    _, ent = chunked_logp_entropy(hidden, weight, targets, chunk_size=2)
    p = torch.softmax((hidden @ weight.T).double(), -1)
    want = -(p * p.log()).sum(-1)
    assert torch.allclose(ent.double(), want, atol=ATOL)


def test_temperature():
    hidden, weight, targets, w_logp, w_ent = _problem(seed=1)
    for temp in (0.6, 1.7):
        got = _values_and_grads(
            chunked_logp_entropy, hidden, weight, targets, w_logp, w_ent, chunk_size=10, temperature=temp
        )
        want = _values_and_grads(naive_logp_entropy, hidden, weight, targets, w_logp, w_ent, temperature=temp)
        _assert_all_close(got, want)
    # Temperature is a division of the logits: T = 2 equals halving the weight.
    logp_t, ent_t = chunked_logp_entropy(hidden, weight, targets, temperature=2.0)
    logp_h, ent_h = chunked_logp_entropy(hidden, weight / 2, targets)
    assert torch.allclose(logp_t, logp_h, atol=ATOL) and torch.allclose(ent_t, ent_h, atol=ATOL)
    # A hotter distribution has more entropy, a colder one less.
    ent_1 = chunked_logp_entropy(hidden, weight, targets)[1]
    assert (ent_t > ent_1).all() and (
        chunked_logp_entropy(hidden, weight, targets, temperature=0.5)[1] < ent_1
    ).all()


def test_suppress_ids_is_the_distribution_without_those_columns():
    hidden, weight, targets, w_logp, w_ent = _problem(seed=2, v=40)
    suppressed = [0, 5, 39]
    targets = torch.where(torch.isin(targets, torch.tensor(suppressed)), 1, targets)
    got = _values_and_grads(
        chunked_logp_entropy, hidden, weight, targets, w_logp, w_ent, chunk_size=8, suppress_ids=suppressed
    )
    want = _values_and_grads(
        naive_logp_entropy, hidden, weight, targets, w_logp, w_ent, suppress_ids=suppressed
    )
    _assert_all_close(got, want)
    # Same numbers as a softmax over the kept columns only (and no NaN from -inf).
    keep = torch.tensor([i for i in range(40) if i not in suppressed])
    logq = torch.log_softmax((hidden @ weight.T)[:, keep].double(), -1)
    remap = {int(k): j for j, k in enumerate(keep)}
    want_logp = logq[torch.arange(len(targets)), torch.tensor([remap[int(t)] for t in targets])]
    want_ent = -(logq.exp() * logq).sum(-1)
    assert torch.allclose(got[0].double(), want_logp, atol=ATOL)
    assert torch.allclose(got[1].double(), want_ent, atol=ATOL)
    # Gradients never reach the suppressed rows of the LM head (their logits are constants).
    assert got[3][suppressed].abs().max() == 0
    # A suppressed target gets about SUPPRESS_LOGIT of log-prob: finite, hugely negative.
    logp, ent = chunked_logp_entropy(hidden, weight, torch.full_like(targets, 5), suppress_ids=suppressed)
    assert torch.isfinite(logp).all() and (logp < SUPPRESS_LOGIT / 2).all() and torch.isfinite(ent).all()


def test_bf16_hidden_accumulates_in_float32():
    hidden, weight, targets, _, _ = _problem(seed=3)
    hidden_bf = hidden.detach().to(torch.bfloat16).requires_grad_(True)
    logp, ent = chunked_logp_entropy(hidden_bf, weight, targets, chunk_size=10)
    assert logp.dtype == torch.float32 and ent.dtype == torch.float32
    # Exactly the float32 computation on the (bf16-exact) upcast hidden states.
    ref_logp, ref_ent = naive_logp_entropy(hidden_bf.detach().float(), weight.detach(), targets)
    assert torch.allclose(logp, ref_logp, atol=ATOL) and torch.allclose(ent, ref_ent, atol=ATOL)
    (logp.sum() + ent.sum()).backward()
    assert hidden_bf.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32


def test_without_entropy_and_logp_only_loss():
    hidden, weight, targets, w_logp, _ = _problem(seed=4)
    logp, ent = chunked_logp_entropy(hidden, weight, targets, chunk_size=10, with_entropy=False)
    assert ent is None
    (logp * w_logp).sum().backward()
    g_chunk = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    # With entropy computed but left out of the loss, the gradient is the same.
    logp2, _ = chunked_logp_entropy(hidden, weight, targets, chunk_size=10)
    (logp2 * w_logp).sum().backward()
    _assert_all_close([hidden.grad, weight.grad], list(g_chunk))
    hidden.grad = weight.grad = None
    ref_logp, _ = naive_logp_entropy(hidden, weight, targets)
    (ref_logp * w_logp).sum().backward()
    _assert_all_close([logp.detach(), *g_chunk], [ref_logp.detach(), hidden.grad, weight.grad])


def test_bad_shapes_raise():
    hidden, weight, targets, _, _ = _problem()
    with pytest.raises(ValueError, match="shape mismatch"):
        chunked_logp_entropy(hidden, weight, targets[:-1])
    with pytest.raises(ValueError, match="suppress_ids"):
        chunked_logp_entropy(hidden, weight, targets, suppress_ids=[300])


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

PROMPTS = ["Each side is 7. Find the perimeter of the shape.", "Hi", "Side 3. Area?"]
COLORS = [(200, 30, 30), (20, 30, 230), (30, 200, 40)]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return save_toy(tmp_path_factory.mktemp("toy") / "xs", "xs", seed=0)


@pytest.fixture(scope="module")
def policy(toy_dir):
    return load_policy(toy_dir)


def _messages(i):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[i]}]}]


def _encode(processor, idx):
    texts = [
        processor.apply_chat_template(_messages(i), tokenize=False, add_generation_prompt=True) for i in idx
    ]
    images = [Image.new("RGB", (56, 56), COLORS[i]) for i in idx]
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def _responses(tokenizer, idx, lengths=(9, 4, 6), seed=0):
    """Right-padded random responses of the given lengths, drawn from non-special tokens."""
    specials = set(tokenizer.all_special_ids)
    pool = torch.tensor([i for i in range(len(tokenizer)) if i not in specials])
    width = max(lengths[i] for i in idx)
    ids_BT = torch.full((len(idx), width), tokenizer.pad_token_id)
    mask_BT = torch.zeros(len(idx), width, dtype=torch.bool)
    for b, i in enumerate(idx):
        rg = torch.Generator().manual_seed(seed * 100 + i)
        ids_BT[b, : lengths[i]] = pool[torch.randint(0, len(pool), (lengths[i],), generator=rg)]
        mask_BT[b, : lengths[i]] = True
    return ids_BT, mask_BT


def _batch(policy, idx=(0, 1, 2)):
    enc = _encode(policy.processor, idx)
    resp_BT, rmask_BT = _responses(policy.tokenizer, idx)
    seq = dict(
        input_ids=torch.cat([enc["input_ids"], resp_BT], 1),
        attention_mask=torch.cat([enc["attention_mask"], rmask_BT.long()], 1),
        mm_token_type_ids=torch.cat([enc["mm_token_type_ids"], torch.zeros_like(resp_BT)], 1),
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
    )
    return seq, enc["input_ids"].shape[1], resp_BT, rmask_BT


def _score(model, seq, prompt_width, rmask_BT, **kw):
    return score_sequences(
        model,
        seq["input_ids"],
        seq["attention_mask"],
        seq["mm_token_type_ids"],
        seq["pixel_values"],
        seq["image_grid_thw"],
        response_start_B=prompt_width,
        response_mask_BT=rmask_BT,
        **kw,
    )


def _hf_reference(model, seq, prompt_width, resp_BT):
    """log_softmax of a fresh full HF forward's logits at the response tokens, and the entropy."""
    logits_BLV = model(**seq, use_cache=False).logits.double()
    logq_BTV = torch.log_softmax(logits_BLV[:, prompt_width - 1 : -1], -1)
    logp_BT = logq_BTV.gather(-1, resp_BT[..., None]).squeeze(-1)
    return logp_BT, -(logq_BTV.exp() * logq_BTV).sum(-1)


def test_score_sequences_matches_full_hf_forward(policy):
    seq, pw, resp_BT, rmask_BT = _batch(policy)
    assert (seq["attention_mask"][:, 0] == 0).any()  # prompts really are left-padded
    assert (~rmask_BT).any()  # and responses right-padded
    with torch.no_grad():
        want_logp, want_ent = _hf_reference(policy.model, seq, pw, resp_BT)
    got = _score(policy.model, seq, pw, rmask_BT, chunk_size=5, suppress_ids=None)
    assert isinstance(got, TokenScores) and got.logp_BT.shape == rmask_BT.shape
    assert got.logp_BT.grad_fn is None
    m = rmask_BT
    assert (got.logp_BT[m].double() - want_logp[m]).abs().max() <= ATOL
    assert (got.entropy_BT[m].double() - want_ent[m]).abs().max() <= ATOL
    assert (got.logp_BT[~m] == 0).all() and (got.entropy_BT[~m] == 0).all()

    # The BL target-mask form scores the same tokens, aligned with input_ids.
    target_BL = torch.zeros_like(seq["input_ids"], dtype=torch.bool)
    target_BL[:, pw:] = rmask_BT
    got_bl = score_sequences(
        policy.model,
        seq["input_ids"],
        seq["attention_mask"],
        seq["mm_token_type_ids"],
        seq["pixel_values"],
        seq["image_grid_thw"],
        target_mask_BL=target_BL,
        chunk_size=5,  # the same chunks as `got`: same matmuls, so the same bits
        suppress_ids=None,
    )
    assert torch.equal(got_bl.logp_BT[:, pw:], got.logp_BT)
    assert (got_bl.logp_BT[:, :pw] == 0).all()

    # mm_token_type_ids left out is rebuilt from the image token ids, not silently dropped.
    got_rebuilt = _score(policy.model, {**seq, "mm_token_type_ids": None}, pw, rmask_BT, suppress_ids=None)
    assert torch.allclose(got_rebuilt.logp_BT, got.logp_BT, atol=ATOL)


def test_batched_equals_single_row(policy):
    seq, pw, _, rmask_BT = _batch(policy)
    batched = _score(policy.model, seq, pw, rmask_BT)
    for b in range(3):
        one, pw1, _, rmask1 = _batch(policy, idx=(b,))
        assert (one["attention_mask"] == 1).all()  # alone, no padding at all
        single = _score(policy.model, one, pw1, rmask1)
        n = int(rmask1.sum())
        assert torch.allclose(single.logp_BT[0, :n], batched.logp_BT[b, :n], atol=ATOL)
        assert torch.allclose(single.entropy_BT[0, :n], batched.entropy_BT[b, :n], atol=ATOL)


def test_default_suppresses_vision_tokens(policy):
    seq, pw, resp_BT, rmask_BT = _batch(policy)
    vision = vision_token_ids(policy.model)
    cfg = policy.model.config
    assert set(vision) == {
        cfg.image_token_id,
        cfg.video_token_id,
        cfg.vision_start_token_id,
        cfg.vision_end_token_id,
    }
    got = _score(policy.model, seq, pw, rmask_BT)  # default: suppress_ids="vision"
    with torch.no_grad():
        logits_BLV = policy.model(**seq, use_cache=False).logits[:, pw - 1 : -1]
    logits_BLV[..., vision] = SUPPRESS_LOGIT  # replaced, as the sampler does
    logq = torch.log_softmax(logits_BLV.double(), -1)
    want_logp = logq.gather(-1, resp_BT[..., None]).squeeze(-1)
    want_ent = -(logq.exp() * logq).sum(-1)
    assert (got.logp_BT[rmask_BT].double() - want_logp[rmask_BT]).abs().max() <= ATOL
    assert (got.entropy_BT[rmask_BT].double() - want_ent[rmask_BT]).abs().max() <= ATOL
    raw = _score(policy.model, seq, pw, rmask_BT, suppress_ids=None)
    assert not torch.allclose(raw.logp_BT, got.logp_BT, atol=1e-4)  # the suppression really changed something


def test_grad_reaches_lm_head_and_vision_tower_and_matches_hf(toy_dir, policy):
    model = load_policy(toy_dir, trainable=True).model
    seq, pw, resp_BT, rmask_BT = _batch(policy)
    g = torch.Generator().manual_seed(5)
    w_logp, w_ent = torch.randn(rmask_BT.shape, generator=g), torch.randn(rmask_BT.shape, generator=g)
    got = _score(model, seq, pw, rmask_BT, chunk_size=4, grad=True, suppress_ids=None)
    ((got.logp_BT * w_logp).sum() + (got.entropy_BT * w_ent).sum()).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert ours["lm_head.weight"].abs().sum() > 0
    vision = [g_ for n, g_ in ours.items() if n.startswith("model.visual.")]
    assert (
        vision and all(torch.isfinite(g_).all() for g_ in vision) and sum(g_.abs().sum() for g_ in vision) > 0
    )
    model.zero_grad(set_to_none=True)
    # The same loss through the full HF forward gives the same gradients.
    logits = model(**seq, use_cache=False).logits[:, pw - 1 : -1]
    logq = torch.log_softmax(logits, -1)
    logp = logq.gather(-1, resp_BT[..., None]).squeeze(-1)
    ent = -(logq.exp() * logq).sum(-1)
    ((logp * w_logp * rmask_BT).sum() + (ent * w_ent * rmask_BT).sum()).backward()
    for name, p in model.named_parameters():
        if name in ours:
            assert (ours[name] - p.grad).abs().max() <= ATOL * max(1.0, p.grad.abs().max().item()), name
    # grad=False: nothing to differentiate.
    assert _score(model, seq, pw, rmask_BT).logp_BT.grad_fn is None


def test_peft_wrapped_model(toy_dir, policy):
    peft = pytest.importorskip("peft")
    base = load_policy(toy_dir, trainable=True).model
    wrapped = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    seq, pw, _, rmask_BT = _batch(policy)
    want = _score(policy.model, seq, pw, rmask_BT)
    got = _score(wrapped, seq, pw, rmask_BT, grad=True)
    # LoRA starts as a no-op (B = 0): same scores as the plain model.
    assert torch.allclose(got.logp_BT, want.logp_BT, atol=ATOL)
    got.logp_BT.sum().backward()
    lora_grads = [p.grad for n, p in wrapped.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora_grads and any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    # LoRA on the LM head itself would be bypassed by the chunked head: refused, not ignored.
    head_lora = peft.get_peft_model(
        load_policy(toy_dir).model, peft.LoraConfig(r=4, target_modules=["lm_head"])
    )
    with pytest.raises(ValueError, match="LM head"):
        _score(head_lora, seq, pw, rmask_BT)


def _prompt_batch(processor, idx=(0, 1, 2)):
    problems = [
        Problem(
            id=str(i),
            question=PROMPTS[i],
            images=(Image.new("RGB", (56, 56), COLORS[i]),),
            answer="1",
            answer_type="integer",
        )
        for i in idx
    ]
    texts = [
        processor.apply_chat_template(_messages(i), tokenize=False, add_generation_prompt=True) for i in idx
    ]
    return encode_prompts(problems, processor, texts=texts)


def test_score_rollouts_of_given_responses(policy):
    """Rollouts built from fixed responses: micro-batches, shared prompts, and == score_sequences."""
    batch = _prompt_batch(policy.processor)
    prompt_index_B = torch.tensor([0, 0, 1, 1, 2, 2])
    resp_BT, rmask_BT = _responses(policy.tokenizer, (0, 1, 2))
    resp_BT, rmask_BT = resp_BT[prompt_index_B], rmask_BT[prompt_index_B]
    zeros_BT = torch.zeros(rmask_BT.shape)
    ro = Rollouts(batch, prompt_index_B, resp_BT, rmask_BT, zeros_BT, zeros_BT, ["stop"] * 6, [""] * 6)
    whole = score_rollouts(policy.model, ro)
    parts = score_rollouts(policy.model, ro, micro_batch=4)
    assert whole.logp_BT.shape == rmask_BT.shape
    assert torch.allclose(whole.logp_BT, parts.logp_BT, atol=ATOL)
    assert torch.allclose(whole.entropy_BT, parts.entropy_BT, atol=ATOL)
    # Rows sharing a prompt and a response score identically; masked slots are zero.
    assert torch.allclose(whole.logp_BT[0], whole.logp_BT[1], atol=ATOL)
    assert (whole.logp_BT[~rmask_BT] == 0).all() and (whole.logp_BT[rmask_BT] < 0).all()
    # Same numbers as score_sequences on the processor's own batch (no suppressed ids recorded -> "vision").
    seq, pw, _, rmask3 = _batch(policy)
    direct = _score(policy.model, seq, pw, rmask3)
    assert torch.allclose(whole.logp_BT[::2], direct.logp_BT, atol=ATOL)
    assert score_rollouts(policy.model, ro, with_entropy=False).entropy_BT is None


def test_score_rollouts_reproduces_the_samplers_logp_and_entropy(policy):
    """The sampler's behaviour log-probs / entropies are what scoring recomputes (suppressed ids included)."""
    batch = _prompt_batch(policy.processor)
    sampler = make_sampler(RolloutConfig(), policy.model, policy.processor)
    for temperature in (1.0, 0.7):
        ro = sampler.sample(batch, SamplingParams(n=2, max_new_tokens=12, temperature=temperature, seed=1))
        # The sampler suppressed the vision tokens and the pad token; scoring must use the same ids.
        assert set(vision_token_ids(policy.model)) < set(ro.suppressed_ids)
        assert ro.response_mask_BT.sum() >= 6
        got = score_rollouts(policy.model, ro, temperature=temperature, chunk_size=7)
        m = ro.response_mask_BT
        assert (got.logp_BT[m] - ro.logp_BT[m]).abs().max() <= ATOL
        assert (got.entropy_BT[m] - ro.entropy_BT[m]).abs().max() <= ATOL
        assert (got.logp_BT[~m] == 0).all()

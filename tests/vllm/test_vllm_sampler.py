"""The vLLM rollout backend against the in-process engine: real vLLM in its own process, real HTTP.

One server (one :class:`VLLMSampler`) for the whole module, on a trainable copy of the
SFT-trained toy; every comparison is against :class:`LocalSampler` on the same model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from warmstart.data.loaders import load_problems
from warmstart.models import load_policy
from warmstart.rollout import SamplingParams, encode_prompts, suppressed_token_ids
from warmstart.sampler import LocalSampler, RolloutConfig, Sampler, make_sampler
from warmstart.scoring import score_rollouts
from warmstart.vllm_engine import VLLMSampler, VLLMServer, VLLMServerError

from .conftest import vllm_rollout_config

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def policy(trained_toy):
    pol = load_policy(trained_toy, trainable=True)
    for p in pol.model.parameters():
        p.requires_grad_(True)
    return pol


@pytest.fixture(scope="module")
def vllm_sampler(policy):
    sampler = make_sampler(vllm_rollout_config(), policy.model, policy.processor)
    yield sampler
    sampler.close()


@pytest.fixture(scope="module")
def problems(synth_dir):
    return load_problems(synth_dir, split="validation").problems[:4]


def test_make_sampler_gives_a_vllm_sampler_that_is_a_sampler(vllm_sampler):
    assert type(vllm_sampler) is VLLMSampler and isinstance(vllm_sampler, Sampler)
    info = vllm_sampler.server.info()
    assert info["dtype"] == "float32" and info["max_model_len"] == 512


def test_greedy_tokens_equal_the_local_engine(policy, vllm_sampler, problems):
    params = SamplingParams(n=2, greedy=True, max_new_tokens=32)
    got = vllm_sampler.sample(problems, params)
    want = LocalSampler(policy.model, policy.processor).sample(problems, params)
    assert torch.equal(got.response_ids_BT, want.response_ids_BT)
    assert torch.equal(got.response_mask_BT, want.response_mask_BT)
    assert got.finish_reason_B == want.finish_reason_B and got.texts_B == want.texts_B
    assert "stop" in got.finish_reason_B  # the trained toy ends answers: EOS handling is exercised
    torch.testing.assert_close(got.logp_BT, want.logp_BT, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.entropy_BT, want.entropy_BT, atol=1e-5, rtol=0)


def test_rollouts_contract_holds_for_sampled_rows(policy, vllm_sampler, problems):
    n = 4
    ro = vllm_sampler.sample(problems, SamplingParams(n=n, temperature=1.0, max_new_tokens=24, seed=7))
    B = len(problems) * n
    assert ro.num_rows == B and ro.prompt_index_B.tolist() == [
        q for q in range(len(problems)) for _ in range(n)
    ]
    mask = ro.response_mask_BT
    # Right padded with pad; a "stop" row ends with EOS, a "length" row fills max_new_tokens.
    pad = policy.processor.tokenizer.pad_token_id
    assert bool((ro.response_ids_BT[~mask] == pad).all())
    eos = policy.processor.tokenizer.eos_token_id
    for b in range(B):
        k = int(mask[b].sum())
        assert bool(mask[b, :k].all()) and not bool(mask[b, k:].any())
        if ro.finish_reason_B[b] == "stop":
            assert int(ro.response_ids_BT[b, k - 1]) == eos
        else:
            assert k == 24
    # No suppressed (vision / pad) token is ever sampled.
    suppressed = suppressed_token_ids(policy.model, policy.processor.tokenizer)
    assert ro.suppressed_ids == tuple(suppressed)
    assert not bool(torch.isin(ro.response_ids_BT[mask], torch.tensor(suppressed)).any())
    # logp / entropy are our scorer's, on the training model, with the sampler's suppression.
    ref = score_rollouts(policy.model, ro, with_entropy=True)
    torch.testing.assert_close(ro.logp_BT, ref.logp_BT.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ro.entropy_BT, ref.entropy_BT.detach(), atol=1e-6, rtol=0)
    assert float(ro.entropy_BT[mask].min()) > 0
    # vLLM's own log-probs of the tokens it drew describe the same distribution (fp32, suppressed ids too).
    engine = vllm_sampler.last_engine_logp_BT
    assert float((engine - ro.logp_BT)[mask].abs().max()) < 1e-4
    # The seed decides the draw: the same seed repeats it, another seed does not.
    again = vllm_sampler.sample(problems, SamplingParams(n=n, temperature=1.0, max_new_tokens=24, seed=7))
    other = vllm_sampler.sample(problems, SamplingParams(n=n, temperature=1.0, max_new_tokens=24, seed=8))
    assert torch.equal(again.response_ids_BT, ro.response_ids_BT)
    assert not torch.equal(other.response_ids_BT, ro.response_ids_BT)


def test_max_batch_rows_splits_requests_without_changing_greedy_tokens(vllm_sampler, problems):
    params = SamplingParams(n=2, greedy=True, max_new_tokens=16)
    whole = vllm_sampler.sample(problems, params)
    calls: list[tuple[int, int]] = []
    vllm_sampler.max_batch_rows = 4  # two prompts of two rows per request
    try:
        split = vllm_sampler.sample(problems, params, progress=lambda d, t: calls.append((d, t)))
    finally:
        vllm_sampler.max_batch_rows = 0
    assert calls == [(4, 8), (8, 8)]
    assert torch.equal(split.response_ids_BT[:, : whole.response_ids_BT.shape[1]], whole.response_ids_BT)


def test_after_an_update_and_sync_the_samples_come_from_the_new_weights(policy, vllm_sampler, problems):
    local = LocalSampler(policy.model, policy.processor)
    params = SamplingParams(n=1, greedy=True, max_new_tokens=24)
    before = vllm_sampler.sample(problems, params)
    # One Adam step pushing up the greedy answers' likelihood of other tokens: a real update.
    opt = torch.optim.Adam(policy.model.parameters(), lr=3e-3)
    ro = local.sample(problems, SamplingParams(n=2, temperature=1.0, max_new_tokens=24, seed=1))
    scores = score_rollouts(policy.model, ro, with_entropy=False, grad=True)
    (-(scores.logp_BT * ro.response_mask_BT).sum() / ro.response_mask_BT.sum()).backward()
    opt.step()
    opt.zero_grad()
    synced_before = dict(vllm_sampler.last_sync)
    vllm_sampler.sync_weights(policy.model)
    assert vllm_sampler.last_sync == synced_before  # lazy: copied at the next sample, not now
    after = vllm_sampler.sample(problems, params)
    want = local.sample(problems, params)
    assert vllm_sampler.last_sync != synced_before and vllm_sampler.last_sync["total_s"] > 0
    assert torch.equal(after.response_ids_BT, want.response_ids_BT)
    assert not torch.equal(after.response_ids_BT, before.response_ids_BT)
    print("weight sync (toy):", vllm_sampler.last_sync)


def test_bad_requests_get_400_naming_the_field(vllm_sampler, policy, problems):
    batch = encode_prompts(problems[:1], policy.processor)
    ids = batch.input_ids_QP[0].tolist()
    server = vllm_sampler.server
    with pytest.raises(VLLMServerError, match=r"/generate answered HTTP 400: 'n' must be an integer"):
        server.request("/generate", {"prompts": [{"token_ids": ids}], "n": "two"})
    with pytest.raises(VLLMServerError, match=r"HTTP 400: 'prompts\[0\]\.token_ids' holds ids outside"):
        server.request("/generate", {"prompts": [{"token_ids": [10**7]}]})
    with pytest.raises(VLLMServerError, match=r"HTTP 400: 'prompts\[0\]\.images\[0\]' is not a base64 image"):
        server.request("/score", {"prompts": [{"token_ids": ids, "images": ["@@@"], "score_from": 1}]})
    with pytest.raises(VLLMServerError, match=r"HTTP 400: 'prompts\[0\]\.score_from' must be in"):
        server.request("/score", {"prompts": [{"token_ids": ids, "score_from": 0}]})
    with pytest.raises(VLLMServerError, match=r"HTTP 400: 'path' must name a readable safetensors file"):
        server.request("/load_weights", {"path": "/nonexistent.safetensors"})
    with pytest.raises(VLLMServerError, match=r"HTTP 404: no route POST /nope"):
        server.request("/nope", {})


def test_a_missing_vllm_python_is_a_clear_error(tmp_path, policy):
    missing = tmp_path / "no-venv" / "bin" / "python"
    with pytest.raises(VLLMServerError, match=rf"no vLLM python at {missing}: .*make setup-vllm"):
        VLLMSampler(
            policy.model, policy.processor, config=RolloutConfig(backend="vllm", vllm_python=str(missing))
        )


CHILD = textwrap.dedent(
    """
    import os, sys, time
    from warmstart.vllm_engine import VLLMServer
    server = VLLMServer(sys.argv[1], dtype="float32", max_model_len=256, engine_args=["--enforce-eager"])
    print(os.getpgid(server.proc.pid), flush=True)
    time.sleep(600)
    """
)


def _group_alive(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # field 5 of stat: the process group
                pids.append(int(entry))
    return pids


def test_the_server_and_vllms_engine_processes_die_with_a_killed_trainer(toy_dir):
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(toy_dir)], stdout=subprocess.PIPE, text=True)
    try:
        pgid = int(parent.stdout.readline())
        assert len(_group_alive(pgid)) >= 2  # the server and vLLM's engine process(es)
        parent.send_signal(signal.SIGKILL)  # a crash: no finalizer, no atexit runs
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _group_alive(pgid) == []
    finally:
        if parent.poll() is None:
            parent.kill()


def test_close_stops_the_server(toy_dir):
    server = VLLMServer(toy_dir, dtype="float32", max_model_len=256, engine_args=["--enforce-eager"])
    pgid = os.getpgid(server.proc.pid)
    assert server.info()["weights_version"] == 0
    server.close()
    assert not server.alive and _group_alive(pgid) == []
    with pytest.raises(VLLMServerError, match=rf"no reply from the vLLM server at {server.url}/info"):
        server.info()


def test_a_batch_whose_prefill_spans_several_engine_steps_samples(vllm_sampler, synth_dir):
    # vLLM 0.32's CPU runner crashed seeded requests with a split prefill ("CPU Generator does
    # not use offset"); the server turns chunked prefill off on CPU. 64 rows of ~100 prompt
    # tokens are more than one engine step's token budget.
    problems = load_problems(synth_dir, split="train").problems[:16]
    ro = vllm_sampler.sample(problems, SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=11))
    assert ro.num_rows == 64 and int(ro.prompts.attention_mask_QP.sum()) > 16 * 60

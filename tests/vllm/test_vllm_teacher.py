"""The exact-token teacher: ``warmstart serve --engine vllm`` (real vLLM, its own process, 127.0.0.1).

The teacher is the SFT-trained toy served by vLLM; the student is the untrained toy (same
tokenizer). The reference is :class:`InProcessScorer` on the same teacher checkpoint.
Faults are injected by a proxy in front of the real server.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from warmstart.config import from_dict
from warmstart.data.loaders import load_problems
from warmstart.models import load_policy
from warmstart.rollout import Rollouts, SamplingParams
from warmstart.sampler import LocalSampler
from warmstart.serve import start_server
from warmstart.stages.opd import OPDConfig, make_teacher, train_opd
from warmstart.teacher import HTTPScorer, InProcessScorer, TeacherError

pytestmark = pytest.mark.vllm

TOLERANCE = 2e-3  # nats, on every response token


@pytest.fixture(scope="module")
def teacher_url(trained_toy):
    """``warmstart serve --engine vllm`` on the trained toy, as a user starts it."""
    cmd = [sys.executable, "-m", "warmstart.cli", "serve", "--engine", "vllm", "--model", str(trained_toy)]
    cmd += ["--port", "0", "--dtype", "float32", "--max-model-len", "512", "--", "--enforce-eager"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        pytest.fail(f"warmstart serve --engine vllm did not start: {url!r} {proc.stderr.read()[-3000:]}")
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


@pytest.fixture(scope="module")
def in_process(trained_toy):
    return InProcessScorer(load_policy(trained_toy).model)


@pytest.fixture(scope="module")
def student(toy_dir):
    return load_policy(toy_dir)


@pytest.fixture(scope="module")
def rollouts(student, synth_dir):
    problems = load_problems(synth_dir, split="train").problems[:3]
    sampler = LocalSampler(student.model, student.processor)
    return sampler.sample(problems, SamplingParams(n=2, max_new_tokens=16, seed=3))


def _max_diff(a: Rollouts, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y)[a.response_mask_BT].abs().max())


def test_token_teacher_equals_the_in_process_teacher(teacher_url, in_process, rollouts):
    got = HTTPScorer(teacher_url, protocol="tokens", batch_size=4).score(rollouts)
    want = in_process.score(rollouts)
    assert got.entropy_BT is None
    assert float(got.logp_BT[~rollouts.response_mask_BT].abs().max()) == 0.0
    diff = _max_diff(rollouts, got.logp_BT, want.logp_BT)
    print(
        f"token teacher: max |vLLM - in-process| = {diff:.2e} nats over {int(rollouts.response_mask_BT.sum())} tokens"
    )
    assert diff < TOLERANCE


def test_a_non_canonical_sample_is_scored_exactly_where_the_text_protocol_must_refuse(
    teacher_url, in_process, rollouts, student, trained_toy
):
    tok = student.processor.tokenizer
    text = " the perimeter is"
    pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    chars = [c for piece in pieces for c in piece]  # byte-level pieces split into one-character tokens
    ids = tok.convert_tokens_to_ids(chars)
    assert tok.unk_token_id not in ids and tok(text, add_special_tokens=False)["input_ids"] != ids
    one = rollouts.select([0])
    ro = Rollouts(
        prompts=one.prompts,
        prompt_index_B=one.prompt_index_B,
        response_ids_BT=torch.tensor([ids]),
        response_mask_BT=torch.ones(1, len(ids), dtype=torch.bool),
        logp_BT=torch.zeros(1, len(ids)),
        entropy_BT=torch.zeros(1, len(ids)),
        finish_reason_B=["length"],
        texts_B=[tok.decode(ids)],
        suppressed_ids=one.suppressed_ids,
    )
    got = HTTPScorer(teacher_url, protocol="tokens").score(ro)
    assert _max_diff(ro, got.logp_BT, in_process.score(ro).logp_BT) < TOLERANCE
    server, _, torch_url = start_server(trained_toy)
    try:
        with pytest.raises(TeacherError, match="not the canonical tokenization"):
            HTTPScorer(torch_url, tokenizer=tok).score(ro)
    finally:
        server.shutdown()
        server.server_close()


class Recorder:
    """A scorer that remembers what it scored (to compare with the in-process teacher afterwards)."""

    def __init__(self, inner):
        self.inner = inner
        self.seen: list[tuple[Rollouts, torch.Tensor]] = []

    def score(self, rollouts):
        out = self.inner.score(rollouts)
        self.seen.append((rollouts, out.logp_BT.clone()))
        return out


def _opd(toy_dir, synth_dir, out, teacher, **over):
    base = {
        "init": str(toy_dir),
        "teacher": teacher,
        "teacher_protocol": "tokens",
        "data": str(synth_dir),
        "out_dir": str(out),
        "steps": 2,
        "prompts_per_step": 2,
        "n": 2,
        "max_new_tokens": 16,
        "micro_batch": 8,
    }
    return from_dict(OPDConfig, {**base, **over})


def test_opd_end_to_end_against_the_vllm_teacher(
    teacher_url, in_process, toy_dir, synth_dir, tmp_path, student
):
    cfg = _opd(toy_dir, synth_dir, tmp_path / "opd", teacher_url)
    teacher = make_teacher(cfg, student.processor.tokenizer)
    assert isinstance(teacher, HTTPScorer) and teacher.protocol == "tokens"
    recorder = Recorder(teacher)
    result = train_opd(cfg, show_progress=False, teacher=recorder)
    assert result["steps"] == 2 and (Path(result["model"]) / "model.safetensors").exists()
    assert len(recorder.seen) == 2
    for ro, logp_BT in recorder.seen:
        assert _max_diff(ro, logp_BT, in_process.score(ro).logp_BT) < TOLERANCE


class FaultProxy:
    """Forwards to the real teacher, or injects a fault: ``500``, ``hang``, ``malformed``, ``short``.

    ``fail_from`` = k: requests 1..k-1 are forwarded, the k-th and later get ``mode``.
    """

    def __init__(self, upstream: str, mode: str = "ok", fail_from: int = 1):
        self.upstream, self.mode, self.fail_from = upstream, mode, fail_from
        self.count = 0
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.count += 1
                mode = proxy.mode if proxy.count >= proxy.fail_from else "ok"
                if mode == "500":
                    return self._reply(500, b'{"error": {"message": "injected failure"}}')
                if mode == "hang":
                    proxy.release.wait(30)
                    return None
                if mode == "malformed":
                    return self._reply(200, b"<html>not json")
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method="POST")
                req.add_header("Content-Type", "application/json")
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        status, data = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, data = e.code, e.read()
                if mode == "short" and status == 200:
                    reply = json.loads(data)
                    reply["results"][0]["logprobs"] = reply["results"][0]["logprobs"][:-1]
                    data = json.dumps(reply).encode()
                return self._reply(status, data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(teacher_url):
    made = []

    def make(mode="ok", fail_from=1):
        p = FaultProxy(teacher_url, mode, fail_from)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.mark.parametrize(
    "mode, attempts, words",
    [
        ("500", 3, "failed with HTTP 500 after 3 attempts: injected failure"),
        ("hang", 3, "cannot reach teacher at {url}/score: timed out (after 3 attempts)"),
        ("malformed", 1, "malformed response from {url}/score: body is not JSON"),
        ("short", 1, "malformed response from {url}/score: reply too short for row 0 (problem '"),
    ],
)
def test_faults_give_bounded_retries_and_an_error_naming_the_url(proxy, rollouts, mode, attempts, words):
    p = proxy(mode)
    scorer = HTTPScorer(p.url, protocol="tokens", timeout_s=1.0, max_retries=2, backoff_s=0.01)
    with pytest.raises(TeacherError) as e:
        scorer.score(rollouts)
    assert words.format(url=p.url) in str(e.value)
    assert p.count == attempts  # 5xx and timeouts retried (1 + max_retries), bad replies not


def test_a_teacher_that_is_down_is_a_clear_error(rollouts):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    scorer = HTTPScorer(url, protocol="tokens", max_retries=1, backoff_s=0.01)
    with pytest.raises(TeacherError, match=rf"cannot reach teacher at {url}/score: .*\(after 2 attempts\)"):
        scorer.score(rollouts)


def test_opd_stopped_by_a_failing_teacher_resumes_from_its_last_checkpoint(
    proxy, teacher_url, toy_dir, synth_dir, tmp_path
):
    full = train_opd(_opd(toy_dir, synth_dir, tmp_path / "full", teacher_url, steps=3), show_progress=False)
    p = proxy("500", fail_from=3)  # one /score request per step: step 3's fails
    cfg = _opd(toy_dir, synth_dir, tmp_path / "cut", p.url, steps=3, checkpoint_every=1, teacher_retries=1)
    with pytest.raises(
        TeacherError, match=rf"teacher at {p.url}/score failed with HTTP 500 after 2 attempts"
    ):
        train_opd(cfg, show_progress=False)
    ckpts = sorted(x.name for x in (tmp_path / "cut" / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000001", "step_000002"] and not (tmp_path / "cut" / "final").exists()
    p.mode = "ok"
    resumed = train_opd(cfg, resume=True, show_progress=False)
    assert resumed["steps"] == 3
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3
    got, want = (load_file(str(Path(r["model"]) / "model.safetensors")) for r in (resumed, full))
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=0, msg=name)

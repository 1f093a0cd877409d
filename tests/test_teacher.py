"""Teacher scorers: the HTTP teacher (vLLM protocol) against `warmstart serve`, fakes and the in-process one.

A real server runs on 127.0.0.1 in a thread with the toy "xs" model; tiny fake servers
script the replies a broken, flaky or foreign teacher would send.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from warmstart.data.schema import Problem
from warmstart.models import load_policy
from warmstart.models.toy import save_toy
from warmstart.rollout import Rollouts, encode_prompts
from warmstart.serve import start_server
from warmstart.teacher import HTTPScorer, InProcessScorer, Scorer, TeacherError

# Fast failure in tests: small timeouts and backoff (the defaults are for a real 72B server).
FAST = dict(timeout_s=5.0, max_retries=2, backoff_s=0.01)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return save_toy(tmp_path_factory.mktemp("teacher") / "xs", "xs", seed=1)


@pytest.fixture(scope="module")
def teacher(toy_dir):
    return load_policy(toy_dir)


@pytest.fixture(scope="module")
def server_url(toy_dir):
    server, thread, url = start_server(toy_dir, "127.0.0.1", 0)
    yield url
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _problems():
    return [
        Problem(
            id="tri",
            question="Each side is 7. Find the perimeter.",
            images=(Image.new("RGB", (56, 56), (200, 30, 30)),),
            answer="21",
            answer_type="integer",
        ),
        Problem(
            id="sq",
            question="Which shape is shown?",
            images=(Image.new("RGB", (56, 56), (20, 130, 200)),),
            answer="B",
            answer_type="choice",
            choices=("triangle", "square"),
        ),
    ]


# (prompt index, response text, finish reason): EOS and no EOS, mixed lengths, and a truncated
# response ending in whitespace (which a chat template's trailing trim would otherwise eat).
RESPONSES = [
    (0, "<think> 3*7=21 </think> \\boxed{21}", "stop"),
    (0, "<think> the side is 7, 7+7+7", "length"),
    (1, "\\boxed{B}", "stop"),
    (1, "<think> a square has 4 sides \n", "length"),
]


def make_rollouts(processor, responses=RESPONSES, ids_override=None) -> Rollouts:
    """Rollouts with hand-written responses (canonical tokenizations, EOS appended on "stop")."""
    tok = processor.tokenizer
    problems = _problems()
    rows = []
    for i, (_, text, finish) in enumerate(responses):
        ids = tok(text, add_special_tokens=False)["input_ids"] + (
            [tok.eos_token_id] if finish == "stop" else []
        )
        rows.append(ids_override.get(i, ids) if ids_override else ids)
    B, T = len(rows), max(len(r) for r in rows)
    ids_BT = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
    mask_BT = torch.zeros(B, T, dtype=torch.bool)
    for b, r in enumerate(rows):
        ids_BT[b, : len(r)] = torch.tensor(r)
        mask_BT[b, : len(r)] = True
    return Rollouts(
        prompts=encode_prompts(problems, processor),
        prompt_index_B=torch.tensor([q for q, _, _ in responses]),
        response_ids_BT=ids_BT,
        response_mask_BT=mask_BT,
        logp_BT=torch.zeros(B, T),
        entropy_BT=torch.zeros(B, T),
        finish_reason_B=[f for _, _, f in responses],
        texts_B=[t for _, t, _ in responses],
    )


class FakeTeacher:
    """A scripted OpenAI-style server: each POST gets the next (status, body) of ``replies``.

    A body that is a callable gets the request JSON and returns the reply text. Requests are
    recorded; the last reply repeats when the script runs out.
    """

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(body)
                    status, reply = fake.replies[min(len(fake.requests), len(fake.replies)) - 1]
                text = reply(body) if callable(reply) else reply
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval: shutdown() waits for the serving loop to notice.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    made = []

    def _make(replies):
        f = FakeTeacher(replies)
        made.append(f)
        return f

    yield _make
    for f in made:
        f.close()


def vllm_reply(prompt_prefix, response_ids, logps, terminator=None, extra=None):
    """A vLLM-shaped reply: prompt_logprobs over prefix + response (+ terminator), prompt_logprobs=0."""
    ids = list(prompt_prefix) + list(response_ids) + ([terminator] if terminator is not None else [])
    lps = [-9.0] * len(prompt_prefix) + list(logps) + ([-1.0] if terminator is not None else [])
    plp = [None] + [
        {str(i): {"logprob": lp, "rank": 1, "decoded_token": "x"}} for i, lp in zip(ids[1:], lps[1:])
    ]
    out = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "prompt_logprobs": plp}
    out.update(extra or {})
    return json.dumps(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body: bytes):
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---------------------------------------------------------------------------------------------
# HTTP teacher == in-process teacher


def test_http_scores_equal_in_process_scores(teacher, server_url):
    rollouts = make_rollouts(teacher.processor)
    want = InProcessScorer(teacher.model).score(rollouts)
    http = HTTPScorer(server_url, tokenizer=teacher.processor.tokenizer, batch_size=3, **FAST)
    got = http.score(rollouts)
    mask = rollouts.response_mask_BT
    assert isinstance(http, Scorer) and isinstance(InProcessScorer(teacher.model), Scorer)
    assert got.logp_BT.shape == mask.shape and got.entropy_BT is None
    assert (got.logp_BT[~mask] == 0).all()
    assert (got.logp_BT[mask] < 0).all()  # real log-probs, not the zero fill
    assert (got.logp_BT - want.logp_BT)[mask].abs().max().item() < 1e-4
    # Without the student's tokenizer the client sends texts_B + EOS text: the same tokens, same scores.
    plain = HTTPScorer(server_url, batch_size=2, **FAST).score(rollouts)
    assert (plain.logp_BT - want.logp_BT)[mask].abs().max().item() < 1e-4


def test_eos_text_in_the_assistant_message_is_the_eos_token(teacher):
    """The protocol's premise: EOS text in the content tokenizes to the EOS id, and a truncated
    response's trailing whitespace survives continue_final_message when the terminator follows."""
    proc = teacher.processor
    tok = proc.tokenizer
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok \n" + tok.eos_token}]
    text = proc.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=False, continue_final_message=True
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    tail = tok("ok \n", add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.eos_token_id
    assert ids[-1 - len(tail) : -1] == tail
    assert text.count(tok.eos_token) == 2  # the user turn's closing one and ours; the template added none


def test_in_process_scorer_can_return_entropy(teacher):
    rollouts = make_rollouts(teacher.processor)
    s = InProcessScorer(teacher.model, chunk_size=4, with_entropy=True).score(rollouts)
    mask = rollouts.response_mask_BT
    assert s.entropy_BT is not None and (s.entropy_BT[mask] > 0).all()
    assert not s.logp_BT.requires_grad


# ---------------------------------------------------------------------------------------------
# the server's side of the protocol


def test_server_reply_is_vllm_shaped(server_url):
    status, models = 0, None
    with urllib.request.urlopen(server_url + "/v1/models", timeout=10) as r:
        status, models = r.status, json.loads(r.read())
    assert status == 200 and len(models["data"]) == 1
    name = models["data"][0]["id"]
    body = {
        "model": name,
        "messages": [{"role": "user", "content": "Find x."}, {"role": "assistant", "content": "x = 3"}],
        "continue_final_message": True,
        "add_generation_prompt": False,
        "max_tokens": 1,
        "prompt_logprobs": 2,
    }
    status, reply = _post(server_url, json.dumps(body).encode())
    assert status == 200
    plp, ids = reply["prompt_logprobs"], reply["prompt_token_ids"]
    assert plp[0] is None and len(plp) == len(ids) == reply["usage"]["prompt_tokens"]
    for pos in range(1, len(ids)):
        entry = plp[pos]
        actual = entry[str(ids[pos])]  # the actual prompt token is always present
        assert actual["logprob"] <= 0 and actual["rank"] >= 1
        assert 2 <= len(entry) <= 3  # top-2 plus the actual token when it is not among them
        assert min(v["rank"] for v in entry.values()) == 1
    assert len(reply["choices"]) == 1 and reply["choices"][0]["message"]["role"] == "assistant"
    assert reply["usage"]["completion_tokens"] == 1


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "not JSON"),
        (b'{"messages": []}', 400, "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}', 400, "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": -1}', 400, "prompt_logprobs"),
        (b'{"messages": [{"role": "robot", "content": "hi"}]}', 400, "role"),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "image_url", '
            b'"image_url": {"url": "http://example.com/a.png"}}]}]}',
            400,
            "data: URL",
        ),
        (
            b'{"messages": [{"role": "assistant", "content": "a"}], "continue_final_message": true}',
            400,
            "cannot both be true",
        ),
        (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "does not exist"),
    ],
)
def test_server_rejects_bad_requests(server_url, body, status, words):
    got_status, reply = _post(server_url, body)
    assert got_status == status
    assert words in reply["error"]["message"]


def test_health_check(server_url):
    HTTPScorer(server_url, **FAST).health()  # no exception: the server is up


def test_cli_serve_on_a_free_port_prints_its_url(toy_dir):
    cmd = [sys.executable, "-m", "warmstart.cli", "serve", "--model", str(toy_dir), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()  # the URL comes first, alone on its line
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        HTTPScorer(url, **FAST).health()
        assert HTTPScorer(url, **FAST).resolved_model_name() == str(toy_dir)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# failures: down, malformed, misaligned, flaky


def test_server_down_is_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}"
    scorer = HTTPScorer(url, model_name="m", **FAST)
    with pytest.raises(
        TeacherError, match=r"cannot reach teacher at http://127\.0\.0\.1:\d+/health.*3 attempts"
    ):
        scorer.health()


def test_server_down_while_scoring(teacher):
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(TeacherError, match="cannot reach teacher at"):
        HTTPScorer(url, model_name="m", **FAST).score(make_rollouts(teacher.processor))


def _one_row(teacher, finish="stop"):
    return make_rollouts(teacher.processor, [(0, "\\boxed{21}", finish)])


def test_malformed_json_is_a_clear_error(teacher, fake):
    f = fake([(200, "<html>proxy error</html>")])
    with pytest.raises(TeacherError, match=r"malformed response from .*not JSON"):
        HTTPScorer(f.url, model_name="m", **FAST).score(_one_row(teacher))


def test_missing_prompt_logprobs_is_a_clear_error(teacher, fake):
    f = fake([(200, json.dumps({"choices": [{"message": {"content": ""}}]}))])
    with pytest.raises(TeacherError, match="malformed response from .*no prompt_logprobs"):
        HTTPScorer(f.url, model_name="m", **FAST).score(_one_row(teacher))


def test_too_short_prompt_logprobs_is_a_clear_error(teacher, fake):
    rollouts = _one_row(teacher)
    ids = rollouts.response_ids_BT[0].tolist()
    f = fake([(200, vllm_reply([], ids[:2], [-0.5, -0.5]))])  # 2 positions for a longer response
    with pytest.raises(TeacherError, match="malformed response from .*positions, too few"):
        HTTPScorer(f.url, model_name="m", **FAST).score(rollouts)


def test_entry_without_logprob_is_a_clear_error(teacher, fake):
    rollouts = _one_row(teacher)
    ids = rollouts.response_ids_BT[0].tolist()

    def reply(_):
        data = json.loads(vllm_reply([1, 2], ids, [-0.5] * len(ids)))
        data["prompt_logprobs"][-1] = {str(ids[-1]): {"rank": 1}}
        return json.dumps(data)

    f = fake([(200, reply)])
    with pytest.raises(TeacherError, match="malformed response from .*no logprob"):
        HTTPScorer(f.url, model_name="m", **FAST).score(rollouts)


@pytest.mark.parametrize("finish", ["stop", "length"])
def test_span_is_taken_before_the_terminator(teacher, fake, finish):
    """stop rows: the last n positions (EOS included); length rows: the n before the terminator."""
    rollouts = _one_row(teacher, finish)
    n = int(rollouts.response_mask_BT[0].sum())
    ids = rollouts.response_ids_BT[0, :n].tolist()
    logps = [-0.1 * (t + 1) for t in range(n)]
    eos = teacher.processor.tokenizer.eos_token_id
    f = fake([(200, vllm_reply([1, 5, 9], ids, logps, terminator=None if finish == "stop" else eos))])
    got = HTTPScorer(f.url, model_name="m", tokenizer=teacher.processor.tokenizer, **FAST).score(rollouts)
    assert torch.allclose(got.logp_BT[0, :n], torch.tensor(logps))
    sent = f.requests[0]
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    assert sent["prompt_logprobs"] == 0 and sent["messages"][-1]["role"] == "assistant"
    assert sent["messages"][-1]["content"].endswith(teacher.processor.tokenizer.eos_token)
    image_parts = [p for p in sent["messages"][1]["content"] if p.get("type") == "image_url"]
    assert len(image_parts) == 1 and image_parts[0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_transient_503_is_retried(teacher, fake):
    rollouts = _one_row(teacher)
    n = int(rollouts.response_mask_BT[0].sum())
    ids = rollouts.response_ids_BT[0, :n].tolist()
    f = fake([(503, '{"error": {"message": "loading"}}'), (200, vllm_reply([1, 2], ids, [-0.25] * n))])
    got = HTTPScorer(f.url, model_name="m", **FAST).score(rollouts)
    assert len(f.requests) == 2
    assert torch.allclose(got.logp_BT[0, :n], torch.full((n,), -0.25))


def test_a_timed_out_request_is_retried(teacher, fake):
    rollouts = _one_row(teacher)
    n = int(rollouts.response_mask_BT[0].sum())
    ids = rollouts.response_ids_BT[0, :n].tolist()
    good = vllm_reply([1, 2], ids, [-0.75] * n)

    def slow(_):
        time.sleep(1.0)  # longer than the client's timeout below
        return good

    f = fake([(200, slow), (200, good)])
    got = HTTPScorer(f.url, model_name="m", timeout_s=0.3, max_retries=1, backoff_s=0.01).score(rollouts)
    assert len(f.requests) == 2
    assert torch.allclose(got.logp_BT[0, :n], torch.full((n,), -0.75))


def test_persistent_5xx_gives_up_after_bounded_retries(teacher, fake):
    f = fake([(500, '{"error": {"message": "CUDA out of memory"}}')])
    with pytest.raises(TeacherError, match=r"HTTP 500 after 3 attempts: CUDA out of memory"):
        HTTPScorer(f.url, model_name="m", **FAST).score(_one_row(teacher))
    assert len(f.requests) == 3  # 1 + max_retries


def test_4xx_is_not_retried(teacher, fake):
    f = fake([(400, '{"error": {"message": "prompt_logprobs is not supported"}}')])
    with pytest.raises(
        TeacherError, match=r"rejected the request \(HTTP 400\): prompt_logprobs is not supported"
    ):
        HTTPScorer(f.url, model_name="m", **FAST).score(_one_row(teacher))
    assert len(f.requests) == 1


def test_foreign_token_ids_name_the_row_and_position(teacher, fake):
    rollouts = make_rollouts(teacher.processor, [(1, "\\boxed{B}", "stop")])
    n = int(rollouts.response_mask_BT[0].sum())
    ids = rollouts.response_ids_BT[0, :n].tolist()
    wrong = ids[:1] + [ids[1] + 1] + ids[2:]
    f = fake([(200, vllm_reply([1, 2], wrong, [-0.5] * n))])
    with pytest.raises(
        TeacherError,
        match=rf"row 0 \(problem 'sq'\) at response position 1: student id {ids[1]}, teacher id {ids[1] + 1}",
    ):
        HTTPScorer(f.url, model_name="m", **FAST).score(rollouts)


def test_teacher_with_another_tokenizer_is_a_clear_error(teacher, tmp_path):
    other = save_toy(tmp_path / "other", "xs", seed=1, vocab_size=320)  # other merges, same special ids
    server, thread, url = start_server(other)
    try:
        rollouts = make_rollouts(teacher.processor)
        with pytest.raises(
            TeacherError, match=r"row 0 \(problem 'tri'\) at response position \d+.*tokenizer differs"
        ):
            HTTPScorer(url, tokenizer=teacher.processor.tokenizer, batch_size=1, **FAST).score(rollouts)
    finally:
        server.shutdown()
        server.server_close()


def test_non_canonical_sample_is_told_apart_from_a_tokenizer_difference(teacher, server_url):
    tok = teacher.processor.tokenizer
    text = "\\boxed{21}"
    canonical = tok(text, add_special_tokens=False)["input_ids"]
    # Split the first multi-character token into single-character tokens: same text, other ids.
    t = next(i for i, tid in enumerate(canonical) if len(tok.convert_ids_to_tokens(tid)) > 1)
    pieces = [tok.convert_tokens_to_ids(c) for c in tok.convert_ids_to_tokens(canonical[t])]
    split = canonical[:t] + pieces + canonical[t + 1 :] + [tok.eos_token_id]
    assert tok.decode(split) == tok.decode(canonical + [tok.eos_token_id])
    rollouts = make_rollouts(teacher.processor, [(0, text, "stop")], ids_override={0: split})
    with pytest.raises(TeacherError, match=r"row 0 .*not the canonical tokenization"):
        HTTPScorer(server_url, tokenizer=tok, **FAST).score(rollouts)


# ---------------------------------------------------------------------------------------------
# every reply is validated: values (finite, <= 0) and length, naming the URL and the row

TWO_ROWS = [(0, "\\boxed{21}", "stop"), (1, "\\boxed{B}", "stop")]


def _row_reply(rollouts, b, prefix=(1, 2), logp=-0.5):
    n = int(rollouts.response_mask_BT[b].sum())
    ids = rollouts.response_ids_BT[b, :n].tolist()
    return json.loads(vllm_reply(list(prefix), ids, [logp] * n))


def _per_row(rollouts, corrupt):
    """A reply callable: row 0 answered correctly, row 1 (problem 'sq') passed through ``corrupt``."""

    def reply(body):
        b = 1 if body["messages"][-1]["content"].startswith("\\boxed{B}") else 0
        data = _row_reply(rollouts, b)
        return json.dumps(corrupt(data) if b == 1 else data)

    return reply


@pytest.mark.parametrize("bad", [5.0, float("nan"), float("inf"), float("-inf"), 1e-3])
def test_impossible_teacher_logprob_names_the_url_and_the_row(teacher, fake, bad):
    rollouts = make_rollouts(teacher.processor, TWO_ROWS)

    def corrupt(data):
        entry = data["prompt_logprobs"][-2]
        next(iter(entry.values()))["logprob"] = bad  # json.dumps writes NaN / Infinity as vLLM may
        return data

    f = fake([(200, _per_row(rollouts, corrupt))])
    with pytest.raises(TeacherError) as e:
        HTTPScorer(f.url, model_name="m", batch_size=1, **FAST).score(rollouts)
    msg = str(e.value)
    assert f.url + "/v1/chat/completions" in msg
    assert "row 1 (problem 'sq')" in msg and "impossible log-prob" in msg and "finite and <= 0" in msg


def test_float_noise_above_zero_is_accepted_unchanged(teacher, fake):
    # A log-softmax of a near-certain token can round to a hair above 0: within the tolerance.
    rollouts = _one_row(teacher)
    n = int(rollouts.response_mask_BT[0].sum())
    f = fake([(200, json.dumps(_row_reply(rollouts, 0, logp=5e-5)))])
    got = HTTPScorer(f.url, model_name="m", **FAST).score(rollouts)
    assert torch.equal(got.logp_BT[0, :n], torch.full((n,), 5e-5))


@pytest.mark.parametrize("with_usage", [False, True])
@pytest.mark.parametrize("cut", [1, 3])
def test_truncated_reply_is_not_called_a_tokenizer_difference(teacher, fake, cut, with_usage):
    rollouts = make_rollouts(teacher.processor, TWO_ROWS)

    def corrupt(data):
        full = len(data["prompt_logprobs"])
        data["prompt_logprobs"] = data["prompt_logprobs"][:-cut]
        if with_usage:  # vLLM always sends usage; its prompt_tokens is the list's true length
            data["usage"] = {"prompt_tokens": full, "completion_tokens": 1, "total_tokens": full + 1}
        return data

    f = fake([(200, _per_row(rollouts, corrupt))])
    with pytest.raises(TeacherError) as e:
        HTTPScorer(f.url, model_name="m", tokenizer=teacher.processor.tokenizer, batch_size=1, **FAST).score(
            rollouts
        )
    msg = str(e.value)
    assert f.url + "/v1/chat/completions" in msg and "row 1 (problem 'sq')" in msg
    assert "reply too short" in msg and "tokenizer" not in msg


def test_overlong_reply_is_not_called_a_tokenizer_difference(teacher, fake):
    rollouts = make_rollouts(teacher.processor, TWO_ROWS)

    def corrupt(data):
        data["prompt_logprobs"] += [{"7": {"logprob": -1.0, "rank": 1, "decoded_token": "x"}}] * 2
        return data

    f = fake([(200, _per_row(rollouts, corrupt))])
    with pytest.raises(TeacherError) as e:
        HTTPScorer(f.url, model_name="m", batch_size=1, **FAST).score(rollouts)
    msg = str(e.value)
    assert f.url + "/v1/chat/completions" in msg and "row 1 (problem 'sq')" in msg
    assert "reply too long" in msg and "tokenizer" not in msg


def test_real_token_mismatch_names_the_url_too(teacher, fake):
    rollouts = make_rollouts(teacher.processor, [(1, "\\boxed{B}", "stop")])
    n = int(rollouts.response_mask_BT[0].sum())
    ids = rollouts.response_ids_BT[0, :n].tolist()
    f = fake([(200, vllm_reply([1, 2], ids[:1] + [ids[1] + 1] + ids[2:], [-0.5] * n))])
    with pytest.raises(TeacherError) as e:
        HTTPScorer(f.url, model_name="m", **FAST).score(rollouts)
    assert f.url + "/v1/chat/completions" in str(e.value) and "too short" not in str(e.value)


def test_in_process_teacher_with_nan_weights_is_a_clear_error(toy_dir):
    broken = load_policy(toy_dir)
    with torch.no_grad():
        broken.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(
        TeacherError, match=r"in-process teacher .*impossible log-prob nan .*row 0 \(problem 'tri'\)"
    ):
        InProcessScorer(broken.model).score(make_rollouts(broken.processor))


# ---------------------------------------------------------------------------------------------
# the server survives hostile JSON


def test_deeply_nested_json_gets_a_400_and_the_server_keeps_serving(server_url):
    deep = b"[" * 100000 + b"]" * 100000
    status, reply = _post(server_url, deep)
    assert status == 400 and "nest" in reply["error"]["message"]
    deep_inside = b'{"messages": [{"role": "user", "content": "hi", "x": ' + deep + b"}]}"
    status, reply = _post(server_url, deep_inside)
    assert status == 400 and "nest" in reply["error"]["message"]
    body = {"messages": [{"role": "user", "content": "hi"}], "prompt_logprobs": 0}
    status, reply = _post(server_url, json.dumps(body).encode())
    assert status == 200 and reply["prompt_logprobs"][0] is None

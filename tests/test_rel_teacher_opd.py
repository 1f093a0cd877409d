"""The teacher seen from the stages: replies validated end to end, the HTTP timeout and retries
set from the OPD / SFT configs. Real servers on 127.0.0.1: ``warmstart serve`` behind a
tampering proxy (test_teacher's FakeTeacher), and a teacher that accepts connections and never answers."""

from __future__ import annotations

import json
import socket
import threading
import urllib.request

import pytest

from test_teacher import FakeTeacher
from warmstart.config import from_dict
from warmstart.data.loaders import load_problems
from warmstart.serve import start_server
from warmstart.stages.opd import OPDConfig, train_opd
from warmstart.stages.sft import SFTConfig, teacher_solutions
from warmstart.teacher import HTTPScorer, TeacherError


class SilentTeacher:
    """Accepts every connection and never answers (a hung server); counts the connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.conns.append(conn)  # held open, never read nor answered

    def attempts(self) -> int:
        """Connections made, counting any still in the kernel's accept queue."""
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.setblocking(False)
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except BlockingIOError:
                return len(self.conns)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent():
    s = SilentTeacher()
    yield s
    s.close()


def tampering_proxy(upstream: str, tamper) -> FakeTeacher:
    """A FakeTeacher that forwards each request to a real ``warmstart serve`` and tampers with the reply."""

    def forward(body: dict) -> str:
        req = urllib.request.Request(
            upstream + "/v1/chat/completions", data=json.dumps(body).encode(), method="POST"
        )
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.dumps(tamper(json.loads(r.read())))

    return FakeTeacher([(200, forward)])


def _opd(toy_dir, synth_dir, out, teacher, **over):
    base = {
        "init": str(toy_dir),
        "teacher": teacher,
        "data": str(synth_dir),
        "out_dir": str(out),
        "steps": 2,
        "prompts_per_step": 2,
        "n": 2,
        "max_new_tokens": 8,
        "micro_batch": 8,
    }
    return from_dict(OPDConfig, {**base, **over})


def _positive(data):
    for entry in data["prompt_logprobs"][1:]:
        for v in entry.values():
            v["logprob"] = 5.0  # impossible: a probability of e^5
    return data


def _truncated(data):
    data["prompt_logprobs"] = data["prompt_logprobs"][:-2]  # usage.prompt_tokens still says the full length
    data.pop("prompt_token_ids")
    return data


@pytest.mark.parametrize(
    "tamper, words", [(_positive, "impossible log-prob 5.0"), (_truncated, "reply too short")]
)
def test_opd_refuses_a_bad_teacher_reply_and_writes_no_model(toy_dir, synth_dir, tmp_path, tamper, words):
    server, thread, upstream = start_server(toy_dir)
    proxy = tampering_proxy(upstream, tamper)
    try:
        cfg = _opd(toy_dir, synth_dir, tmp_path / "opd", proxy.url, teacher_model=str(toy_dir))
        with pytest.raises(TeacherError) as e:
            train_opd(cfg, show_progress=False)
    finally:
        proxy.close()
        server.shutdown()
        server.server_close()
    msg = str(e.value)
    assert words in msg and proxy.url + "/v1/chat/completions" in msg
    assert "row " in msg and "(problem '" in msg and "tokenizer" not in msg
    assert not (tmp_path / "opd" / "final").exists()


def test_http_scorer_gives_up_on_a_hung_teacher_after_timeout_x_attempts(silent):
    scorer = HTTPScorer(silent.url, timeout_s=0.5, max_retries=1, backoff_s=0.01)
    with pytest.raises(
        TeacherError, match=r"cannot reach teacher at http://127\.0\.0\.1:\d+/health.*2 attempts"
    ):
        scorer.health()
    assert silent.attempts() == 2


def test_opd_teacher_timeout_and_retries_come_from_the_config(toy_dir, synth_dir, tmp_path, silent):
    cfg = _opd(
        toy_dir,
        synth_dir,
        tmp_path / "opd",
        silent.url,
        teacher_model="m",
        steps=1,
        prompts_per_step=1,
        n=1,
        teacher_timeout_s=0.5,
        teacher_retries=1,
    )
    with pytest.raises(TeacherError) as e:
        train_opd(cfg, show_progress=False)
    assert f"cannot reach teacher at {silent.url}/v1/chat/completions" in str(e.value)
    assert "after 2 attempts" in str(e.value)
    assert silent.attempts() == 2  # one row, 1 + teacher_retries attempts, each cut at the timeout


def test_sft_teacher_timeout_and_retries_come_from_the_config(synth_dir, tmp_path, silent):
    cfg = from_dict(
        SFTConfig,
        {
            "init": "unused",
            "data": str(synth_dir),
            "out_dir": str(tmp_path / "sft"),
            "solutions": "teacher",
            "teacher": silent.url,
            "teacher_timeout_s": 0.5,
            "teacher_retries": 0,
        },
    )
    problems = load_problems(synth_dir, split="train").problems[:1]
    with pytest.raises(TeacherError, match=r"cannot reach teacher at .*/v1/models.*after 1 attempts"):
        teacher_solutions(cfg, problems)
    assert silent.attempts() == 1


@pytest.mark.parametrize("over", [{"teacher_timeout_s": 0}, {"teacher_retries": -1}])
def test_absurd_teacher_settings_are_config_errors(toy_dir, synth_dir, tmp_path, over):
    from warmstart.config import ConfigError

    with pytest.raises(ConfigError, match="teacher_timeout_s must be > 0 and teacher_retries >= 0"):
        _opd(toy_dir, synth_dir, tmp_path, "http://127.0.0.1:1", **over)

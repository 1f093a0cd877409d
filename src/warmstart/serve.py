"""``warmstart serve``: a local model as a teacher server, on one of two engines.

* ``--engine torch`` (default): this module's server (below), the model in this
  process, the OpenAI/vLLM chat subset that :class:`warmstart.teacher.HTTPScorer`'s
  ``chat`` protocol uses.
* ``--engine vllm``: :mod:`warmstart.vllm_server` started from the vLLM venv
  (``.venv-vllm``; ``--vllm-python`` or ``$WARMSTART_VLLM_PYTHON`` to choose another),
  speaking the exact-token protocol (``/score`` with the student's token ids and images;
  ``teacher_protocol = "tokens"`` in the OPD config). Extra vLLM engine flags go after
  ``--``: ``warmstart serve --engine vllm --model DIR --port 8000 -- --tensor-parallel-size 2``.
  The URL is printed once the engine answers ``/health``.

The torch engine, in detail:

It speaks the subset of vLLM's OpenAI-compatible API that
:class:`warmstart.teacher.HTTPScorer` uses, so the HTTP teacher path can be run and
tested against any local checkpoint (the toy teacher included) exactly as it will
run against a vLLM server hosting Qwen2.5-VL-72B:

* ``GET /health`` -> 200 (empty body), as vLLM.
* ``GET /v1/models`` -> ``{"object": "list", "data": [{"id": <name>, "object": "model", ...}]}``.
* ``POST /v1/chat/completions`` with ``messages`` (text parts and ``image_url`` parts
  holding ``data:`` URLs), ``add_generation_prompt`` (default true, as vLLM),
  ``continue_final_message`` (default false), ``prompt_logprobs`` (``null`` or
  0..20) and ``max_tokens`` (0 or 1; default 1).

Tokenisation follows the request: the messages are rendered with the checkpoint's
own chat template through ``processor.apply_chat_template`` with the request's
``add_generation_prompt`` / ``continue_final_message`` (transformers >= 4.45, so every
version this project allows, supports ``continue_final_message``: the render ends
inside the final message, without the template's closing ``<|im_end|>``), then the
processor expands the image tokens. One forward (with ``mm_token_type_ids``, without
which Qwen2.5-VL silently falls back to 1-D positions) gives every position's
next-token distribution.

Reply, vLLM-shaped: ``prompt_logprobs`` is a list with one entry per prompt token,
``None`` for the first (nothing predicts it), else ``{"<token id>": {"logprob",
"rank", "decoded_token"}}`` for the actual token plus the top ``prompt_logprobs``
tokens; ``prompt_token_ids`` lists the prompt ids (vLLM's field of that name).
``choices[0]`` holds the one greedy token that follows the prompt (``max_tokens`` 1)
or an empty completion (``max_tokens`` 0): this server scores, it does not generate
longer texts, and says so with a 400 when asked for more.

Malformed requests get HTTP 400 with ``{"error": {"message", "type", "code"}}`` (so
does JSON nested deeper than Python's recursion limit allows to parse); an unknown
``model`` gets 404, as vLLM answers it. Every request gets a reply: a failure inside
the model is a 500 with the same error body, and the server keeps serving.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch

from warmstart.rollout import SUPPRESS_LOGIT, vision_token_ids

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024  # a few large images; anything bigger is a mistake
MAX_PROMPT_LOGPROBS = 20  # vLLM's default --max-logprobs
CHUNK_POSITIONS = 256  # positions per vocabulary projection: bounds memory to chunk x V floats


class RequestError(Exception):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_data_url(url: str) -> Any:
    """``data:image/...;base64,<...>`` -> RGB PIL image (400 for anything else)."""
    from PIL import Image

    if not isinstance(url, str) or not url.startswith("data:"):
        raise RequestError("image_url must be a data: URL (base64); this server fetches nothing")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise RequestError("image_url data: URL must be base64-encoded ('data:image/png;base64,...')")
    try:
        raw = base64.b64decode(payload, validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB")
    except (binascii.Error, ValueError, OSError) as e:
        raise RequestError(f"image_url does not hold a readable image: {e}") from None


def parse_messages(messages: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI chat messages -> (transformers chat messages with ``{"type": "image"}`` parts, images)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list")
    out, images = [], []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise RequestError(f"messages[{i}].role must be system, user or assistant, got {role!r}")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(f"messages[{i}].content must be a string or a list of parts")
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                images.append(decode_data_url(url))
                parts.append({"type": "image"})
            else:
                raise RequestError(
                    f"messages[{i}].content[{j}] must be {{'type': 'text', 'text': str}} or "
                    f"{{'type': 'image_url', 'image_url': {{'url': 'data:...'}}}}"
                )
        out.append({"role": role, "content": parts})
    return out, images


def _flag(body: dict, key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false, got {value!r}")
    return value


def _small_int(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"'{key}' must be an integer in [{lo}, {hi}] or null, got {value!r}")
    return value


class ScoringModel:
    """A loaded policy that answers chat-completion requests with prompt log-probs.

    One forward at a time (a lock): on a CPU, concurrent forwards only compete for the
    same cores, and the processor is not documented as thread-safe.
    """

    def __init__(self, policy: Any, name: str, suppress_vision: bool = True) -> None:
        self.policy = policy
        self.name = name
        # Vision special tokens are never sampled (the sampler suppresses them), so by default
        # they are suppressed here as in scoring.score_rollouts; vLLM does not, but a trained
        # model gives them ~0 probability after text, so the two agree in practice.
        vocab = policy.model.lm_head.weight.shape[0]
        ids = vision_token_ids(policy.model) if suppress_vision else []
        self.suppress_ids = [i for i in ids if i < vocab]
        self._lock = threading.Lock()

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": "warmstart"}],
        }

    def chat_completion(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.name:
            raise RequestError(f"The model `{model}` does not exist; this server serves `{self.name}`", 404)
        if body.get("stream"):
            raise RequestError("stream is not supported")
        if body.get("n", 1) != 1:
            raise RequestError("'n' must be 1")
        add_gen = _flag(body, "add_generation_prompt", True)
        cont = _flag(body, "continue_final_message", False)
        if add_gen and cont:
            raise RequestError("continue_final_message and add_generation_prompt cannot both be true")
        top_k = _small_int(body, "prompt_logprobs", None, 0, MAX_PROMPT_LOGPROBS)
        max_tokens = _small_int(body, "max_tokens", 1, 0, 10**9)
        if max_tokens is not None and max_tokens > 1:
            raise RequestError("this server only scores prompts: 'max_tokens' must be 0 or 1")
        max_tokens = 1 if max_tokens is None else max_tokens
        messages, images = parse_messages(body.get("messages"))
        if cont and messages[-1]["role"] != "assistant":
            raise RequestError("continue_final_message needs the last message to be the assistant's")

        with self._lock:
            ids, logp, ranks, tops, next_id = self._forward(messages, images, add_gen, cont, top_k)
        tok = self.policy.processor.tokenizer
        prompt_logprobs = None
        if top_k is not None:
            prompt_logprobs = [None]
            for i in range(1, len(ids)):
                entry = {
                    str(ids[i]): {"logprob": logp[i], "rank": ranks[i], "decoded_token": tok.decode([ids[i]])}
                }
                for r, (tid, tlp) in enumerate(tops[i], start=1):
                    entry.setdefault(
                        str(tid), {"logprob": tlp, "rank": r, "decoded_token": tok.decode([tid])}
                    )
                prompt_logprobs.append(entry)
        eos = tok.eos_token_id
        completion = [] if max_tokens == 0 else [next_id]
        finish = "stop" if completion and completion[0] == eos else "length"
        text = tok.decode(completion, skip_special_tokens=True)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": len(ids),
                "completion_tokens": len(completion),
                "total_tokens": len(ids) + len(completion),
            },
            "prompt_logprobs": prompt_logprobs,
            "prompt_token_ids": ids,
        }

    @torch.no_grad()
    def _forward(self, messages, images, add_gen: bool, cont: bool, top_k: int | None):
        """(ids_L, logp_L, rank_L, top_L, greedy next id); position 0 entries are placeholders."""
        processor = self.policy.processor
        model = self.policy.model
        try:
            text = processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_gen, continue_final_message=cont
            )
        except ValueError as e:  # e.g. the template drops the continued message
            raise RequestError(f"chat template: {e}") from None
        enc = processor(text=[text], images=images or None, return_tensors="pt")
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items() if isinstance(v, torch.Tensor)}
        ids_1L = enc["input_ids"]
        # The decoder body gives hidden states; the vocabulary projection is done in chunks below so
        # the full L x V logits never exist at once (V is 152k for Qwen2.5-VL).
        hidden_LH = model.model(**enc, use_cache=False).last_hidden_state[0]
        weight_VH = model.lm_head.weight.float()  # float32 logits whatever the model dtype
        suppress_V = None
        if self.suppress_ids:
            # The same convention as scoring.score_sequences (and the sampler): a large finite
            # penalty on the vision special tokens, so an in-process teacher and this server agree.
            suppress_V = torch.zeros(weight_VH.shape[0], dtype=torch.float32, device=device)
            suppress_V[self.suppress_ids] = SUPPRESS_LOGIT
        ids = ids_1L[0].tolist()
        L = len(ids)
        logp = [0.0] * L
        ranks = [0] * L
        tops: list[list[tuple[int, float]]] = [[] for _ in range(L)]
        next_id = 0
        for s in range(0, L, CHUNK_POSITIONS):
            e = min(s + CHUNK_POSITIONS, L)
            logits_cV = hidden_LH[s:e].float() @ weight_VH.T
            if suppress_V is not None:
                logits_cV += suppress_V
            # z - logsumexp(z): the form scoring.py uses, so both round the same way.
            logp_cV = logits_cV - torch.logsumexp(logits_cV, dim=-1, keepdim=True)
            # Row j of this chunk (position s+j) predicts token s+j+1.
            n_pred = min(e, L - 1) - s
            if n_pred > 0:
                targets = ids_1L[0, s + 1 : s + 1 + n_pred]
                rows = logp_cV[:n_pred]
                tgt = rows.gather(1, targets[:, None])
                rank = (rows > tgt).sum(dim=1) + 1
                for j in range(n_pred):
                    logp[s + j + 1] = float(tgt[j, 0])
                    ranks[s + j + 1] = int(rank[j])
                if top_k:
                    vals, idx = rows.topk(top_k, dim=1)
                    for j in range(n_pred):
                        tops[s + j + 1] = list(zip(idx[j].tolist(), vals[j].tolist()))
            if e == L:
                next_id = int(logits_cV[-1].argmax())
        return ids, logp, ranks, tops, next_id


def _handler_class(scorer: ScoringModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive; every reply sets Content-Length

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, payload: Any | None) -> None:
            data = b"" if payload is None else json.dumps(payload).encode("utf-8")
            self.send_response(status)
            if payload is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            kind = "BadRequestError" if status == 400 else HTTPStatus(status).phrase.replace(" ", "")
            self._send(status, {"error": {"message": message, "type": kind, "code": status}})

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, None)
            elif self.path == "/v1/models":
                self._send(200, scorer.models())
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._error(411, "Content-Length required")
                self.close_connection = True
                return
            if int(length) > MAX_BODY_BYTES:
                self._error(413, f"request body over {MAX_BODY_BYTES} bytes")
                self.close_connection = True
                return
            raw = self.rfile.read(int(length))
            if self.path != "/v1/chat/completions":
                self._error(404, f"no route {self.path}")
                return
            try:
                body = json.loads(raw)
            except ValueError as e:
                self._error(400, f"request body is not JSON: {e}")
                return
            except RecursionError:
                # e.g. 100k nested arrays: the parser's recursion limit, not a reason to drop the reply
                self._error(400, "request body nests JSON too deeply (over ~1000 levels)")
                return
            try:
                reply = scorer.chat_completion(body)
            except RequestError as e:
                self._error(e.status, str(e))
                return
            except Exception as e:  # a bug or a model failure: say so, keep serving
                log.exception("chat completion failed")
                self._error(500, f"{type(e).__name__}: {e}")
                return
            self._send(200, reply)

    return Handler


def make_server(
    model_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    served_model_name: str | None = None,
    suppress_vision: bool = True,
) -> tuple[ThreadingHTTPServer, str]:
    """Load ``model_dir`` and bind a server (not yet serving); returns (server, base URL).

    ``port`` 0 binds a free port; the URL names the port actually bound.
    """
    from warmstart.models import load_policy

    policy = load_policy(model_dir, dtype=dtype, device=device)
    scorer = ScoringModel(policy, served_model_name or str(model_dir), suppress_vision=suppress_vision)
    server = ThreadingHTTPServer((host, port), _handler_class(scorer))
    server.daemon_threads = True  # a stuck client never blocks shutdown
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    return server, f"http://{shown}:{bound_port}"


def start_server(
    model_dir: str | Path, host: str = "127.0.0.1", port: int = 0, **kwargs: Any
) -> tuple[ThreadingHTTPServer, threading.Thread, str]:
    """:func:`make_server` serving from a daemon thread: returns (server, thread, base URL).

    Stop it with ``server.shutdown(); server.server_close()``.
    """
    server, url = make_server(model_dir, host, port, **kwargs)
    thread = threading.Thread(target=server.serve_forever, name="warmstart-serve", daemon=True)
    thread.start()
    return server, thread, url


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from warmstart.models.load import DTYPES

    parser.add_argument(
        "--engine",
        choices=("torch", "vllm"),
        default="torch",
        help="torch (default): the model in this process, OpenAI chat API with prompt_logprobs "
        "(teacher_protocol 'chat'). vllm: warmstart.vllm_server from the vLLM venv, exact token-id "
        "scoring with images (teacher_protocol 'tokens'); vLLM engine flags after --",
    )
    parser.add_argument("--model", required=True, help="checkpoint directory (or hub id) to serve")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=sorted(DTYPES) + ["auto"],
        help="model dtype (default: float32 for torch, auto = vLLM's rule for vllm)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (torch engine; default cpu)")
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="name in /v1/models and replies (torch engine; default: --model as given)",
    )
    parser.add_argument(
        "--no-suppress-vision",
        action="store_true",
        help="torch engine: score the raw distribution instead of suppressing the vision special tokens "
        "(the vllm engine suppresses what each request names)",
    )
    parser.add_argument(
        "--vllm-python",
        default=None,
        help="vllm engine: the vLLM venv's python (default $WARMSTART_VLLM_PYTHON, else .venv-vllm/bin/python)",
    )
    parser.add_argument(
        "--max-model-len", type=int, default=0, help="vllm engine: longest sequence (0 = the model's own)"
    )
    parser.add_argument(
        "--kv-cache-gib", type=float, default=1.0, help="vllm engine, CPU build: KV cache GiB (default 1)"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=1800.0,
        help="vllm engine: seconds to wait for the engine to load",
    )
    parser.add_argument(
        "vllm_args",
        nargs=argparse.REMAINDER,
        help="vllm engine: after --, any `vllm serve` engine flag (--tensor-parallel-size 2 ...)",
    )


def run(args: argparse.Namespace) -> int:
    extra = list(args.vllm_args or [])
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if args.engine == "vllm":
        return _run_vllm(args, extra)
    if extra:
        raise ValueError(f"unexpected arguments {extra}: engine flags after -- are for --engine vllm")
    if args.dtype == "auto":
        raise ValueError("--dtype auto is for --engine vllm; the torch engine takes an explicit dtype")
    server, url = make_server(
        args.model,
        args.host,
        args.port,
        args.dtype or "float32",
        args.device,
        args.served_model_name,
        suppress_vision=not args.no_suppress_vision,
    )
    # The URL goes out first and alone on its line, so scripts (and --port 0 users) can read it.
    print(url, flush=True)
    print(f"warmstart serve: {args.model} at {url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _run_vllm(args: argparse.Namespace, engine_args: list[str]) -> int:
    """``--engine vllm``: run warmstart.vllm_server in the foreground until it exits or Ctrl-C."""
    import signal

    from warmstart.vllm_engine import VLLMServer

    # vLLM's names for this CLI's dtype aliases.
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(args.dtype, args.dtype or "auto")
    server = VLLMServer(
        args.model,
        python=args.vllm_python,
        host=args.host,
        port=args.port,
        dtype=dtype,
        max_model_len=args.max_model_len,
        kv_cache_gib=args.kv_cache_gib,
        engine_args=engine_args,
        start_timeout_s=args.start_timeout,
    )

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM (a supervisor, a test) stops the engine as Ctrl-C does.
    signal.signal(signal.SIGTERM, interrupt)
    # The URL goes out first and alone on its line, once the engine answers /health.
    print(server.url, flush=True)
    print(
        f"warmstart serve (vLLM engine): {args.model} at {server.url}; engine log {server.log_path} (Ctrl-C stops)",
        flush=True,
    )
    try:
        code = server.proc.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        server.close()
    return 0 if code == 0 else 1

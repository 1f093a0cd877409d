"""``python -m warmstart.vllm_server``: vLLM's engine behind a small token-id HTTP protocol.

Runs in the vLLM venv (``.venv-vllm``, see docs/ENGINES.md), never in the training
venv: it imports only the standard library at module level and torch, PIL, numpy,
safetensors and vLLM inside functions (not the rest of :mod:`warmstart`, which needs
the training venv's transformers). The training side talks to it through
:class:`warmstart.vllm_engine.VLLMServer` (rollouts) and
:class:`warmstart.teacher.HTTPScorer` with ``protocol="tokens"`` (the OPD teacher).

Start::

    .venv-vllm/bin/python -m warmstart.vllm_server --model DIR --host 127.0.0.1 --port 8100 \\
        [--dtype float32] [--max-model-len 2048] [--kv-cache-gib 1] [any vLLM engine flag]

Every ``vllm serve`` engine flag (``--tensor-parallel-size``, ``--gpu-memory-utilization``,
``--limit-mm-per-prompt`` ...) is accepted: they go to vLLM's own ``EngineArgs``
parser. ``--kv-cache-gib`` sets ``VLLM_CPU_KVCACHE_SPACE`` (vLLM's CPU build only).
``--limit-mm-per-prompt`` defaults to one image per prompt.

The socket is bound first, so a busy port fails at once; ``/health`` answers 503 until
the engine is loaded. One lock serialises every engine call; ``/health`` and ``/info``
never wait for it.

Protocol (JSON bodies; every prompt is a list of token ids *exactly as the training
model sees them*, image pads expanded, plus its images as base64 PNG):

* ``GET /health`` -> 200 ``{"status": "ok"}`` (503 ``{"status": "loading"}`` while loading).
* ``GET /info`` -> ``{"model", "vllm_version", "dtype", "max_model_len", "vocab_size",
  "image_token_id", "suppress_token_ids", "weights_version", "ready"}``.
* ``POST /generate`` ``{"prompts": [{"token_ids": [...], "images": [b64 png, ...]}, ...],
  "n", "temperature", "top_p", "max_tokens", "seed", "greedy", "ignore_eos",
  "stop_token_ids", "suppress_token_ids"}`` -> ``{"results": [{"prompt_token_ids",
  "samples": [{"token_ids", "logprobs", "finish_reason"}, ...n]}, ...],
  "weights_version"}``. Sample j of prompt q is drawn with seed ``seed + q * n + j``
  (vLLM gives the j-th child of a request ``seed + j``). ``greedy`` decodes at
  temperature 0. ``logprobs`` are vLLM's own log-probs of the sampled tokens (raw model
  distribution with the suppression below, before temperature); the training side
  recomputes its behaviour log-probs with its own scorer anyway.
* ``POST /score`` ``{"prompts": [{"token_ids", "images", "score_from"}],
  "suppress_token_ids"}`` -> ``{"results": [{"logprobs": [...]}]}``: the log-prob of
  every prompt token from position ``score_from`` (>= 1) on, ``log p(ids[i] | ids[:i])``
  (vLLM ``prompt_logprobs``). This is the exact-token teacher: nothing is re-tokenised.
* ``POST /load_weights`` ``{"path": "/x/weights.safetensors"}`` -> ``{"tensors",
  "params_updated", "params_total", "missing", "seconds", "weights_version"}``: the
  file's tensors (names as ``save_pretrained`` writes them) go through the model's own
  ``load_weights`` in every worker (a ``worker_extension_cls``), then the prefix cache
  and the encoder cache (vision embeddings of the old weights) are reset.
* ``POST /shutdown`` -> 200, then the engine stops and the process exits.

**Image tokens.** vLLM expands each ``<|image_pad|>`` of a token prompt into the
image's feature tokens itself, so the server collapses every run of image pads to one
before handing the prompt over, then checks that vLLM's expansion gives back exactly
the ids sent (else 400 naming the prompt): positions line up token for token.

**Suppressed tokens.** ``suppress_token_ids`` (the vision tokens and pad of
``warmstart.rollout.suppressed_token_ids``) get the logit ``SUPPRESS_LOGIT`` (the
training side's constant) in the model's ``compute_logits``, for sampling and
``prompt_logprobs`` alike: they are never sampled, and scores are those of the very
distribution the training side's scorer computes. The set is switched (one RPC to the
workers) only when a request names another one.

Errors: 400 ``{"error": {"message", "type", "field"}}`` naming the field at fault, 404
for an unknown route, 503 while loading, 500 when the engine fails (the server keeps
serving).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("warmstart.vllm_server")

# = warmstart.rollout.SUPPRESS_LOGIT (not importable here; tests/vllm check they agree).
SUPPRESS_LOGIT = -1.0e4
MAX_BODY_BYTES = 256 * 1024 * 1024
WORKER_EXTENSION = "warmstart.vllm_server.WarmstartWorkerExtension"


# ---------------------------------------------------------------------------------------------
# Process lifetime: vLLM's engine processes die with this server


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent goes (even by SIGKILL)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


_fork_from_main_thread = False


def _before_fork() -> None:
    global _fork_from_main_thread
    _fork_from_main_thread = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    # The parent-death signal follows the forking *thread*: only ask for it when that is
    # the parent's main thread, which lives as long as the parent does.
    if _fork_from_main_thread:
        die_with_parent()


def bind_children_to_this_process() -> None:
    """vLLM's EngineCore and workers (forked, or spawned re-importing this module) die with their parent.

    vLLM leaves them running when the process that started them is killed; the training
    side kills this server if it dies (``PR_SET_PDEATHSIG``), and this chains the same
    to every process below it.
    """
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


if __name__ == "__mp_main__":  # a spawned vLLM process re-importing the server's main module
    die_with_parent()
    bind_children_to_this_process()


class RequestError(Exception):
    """A request refused with ``status``; ``field`` names the JSON field at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


# ---------------------------------------------------------------------------------------------
# Inside vLLM's workers


class WarmstartWorkerExtension:
    """Mixed into every vLLM worker (``worker_extension_cls``): weight loading and suppression."""

    def warmstart_load_weights(self, path: str) -> dict:
        """Reload the weights from a safetensors file, in place (vLLM's ``reload_weights``).

        vLLM's CPU build repacks linear weights after loading (the parameters left behind
        are empty), so a plain ``model.load_weights`` fails on a second load; the
        worker's ``reload_weights`` restores the checkpoint layout, loads through the
        model's ``load_weights`` (checkpoint names, e.g. ``save_pretrained``'s) and
        processes the weights again. It also resets the encoder and multimodal caches.
        """
        from safetensors.torch import load_file

        model = self.model_runner.get_model()
        expected = {name for name, _ in model.named_parameters()}
        tensors = load_file(path)
        loaded: set[str] = set()
        original = model.load_weights

        def counting_load_weights(*args: Any, **kwargs: Any) -> Any:
            names = original(*args, **kwargs)
            loaded.update(names or ())
            return names

        model.load_weights = counting_load_weights  # to learn which parameters the file reached
        try:
            self.reload_weights(weights_iterator=iter(tensors.items()), is_checkpoint_format=True)
        finally:
            del model.load_weights
        missing = sorted(expected - loaded)
        return {"tensors": len(tensors), "params_updated": len(expected) - len(missing), "missing": missing}

    def warmstart_set_suppressed(self, ids: list[int]) -> int:
        """From now on ``compute_logits`` gives ``ids`` the logit SUPPRESS_LOGIT (``[]``: none)."""
        import torch

        model = self.model_runner.get_model()
        if not hasattr(model, "_warmstart_compute_logits"):
            original = model.compute_logits
            model._warmstart_compute_logits = original

            def compute_logits(*args: Any, **kwargs: Any) -> Any:
                logits = original(*args, **kwargs)
                ids_t = model._warmstart_suppress
                if logits is not None and ids_t is not None:
                    logits = logits.index_fill(1, ids_t.to(logits.device), SUPPRESS_LOGIT)
                return logits

            model.compute_logits = compute_logits
        model._warmstart_suppress = torch.tensor(sorted(ids), dtype=torch.long) if ids else None
        return len(ids)


# ---------------------------------------------------------------------------------------------
# Request parsing (pure; every error names its field)


def _get(body: dict, key: str, kind: type | tuple, default: Any, where: str = "") -> Any:
    name = f"{where}{key}"
    value = body.get(key, default)
    if value is None and default is None:
        return None
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
    if not ok:
        raise RequestError(f"'{name}' must be {_kind_name(kind)}, got {value!r:.80}", name)
    return value


def _as_tuple(kind: type | tuple) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", list: "a list", str: "a string"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _int_list(value: Any, name: str, vocab: int | None = None) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RequestError(f"'{name}' must be a list of integers", name)
    if vocab is not None:
        bad = [v for v in value if not 0 <= v < vocab]
        if bad:
            raise RequestError(f"'{name}' holds ids outside [0, {vocab}): {bad[:5]}", name)
    return list(value)


def decode_image(data: Any, name: str) -> Any:
    """Base64 PNG (or any format PIL reads) -> RGB PIL image."""
    from PIL import Image

    if not isinstance(data, str):
        raise RequestError(f"'{name}' must be a base64 string", name)
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB")
    except (binascii.Error, ValueError, OSError) as e:
        raise RequestError(f"'{name}' is not a base64 image: {e}", name) from None


def collapse_image_pads(ids: list[int], image_token_id: int | None) -> list[int]:
    """Every run of ``image_token_id`` reduced to one token (vLLM expands each one again)."""
    if image_token_id is None:
        return list(ids)
    out: list[int] = []
    for t in ids:
        if t == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(t)
    return out


def parse_prompts(body: dict, vocab: int, with_score_from: bool = False) -> list[dict]:
    prompts = body.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise RequestError("'prompts' must be a non-empty list", "prompts")
    out = []
    for q, p in enumerate(prompts):
        where = f"prompts[{q}]"
        if not isinstance(p, dict):
            raise RequestError(f"'{where}' must be an object", where)
        ids = _int_list(p.get("token_ids"), f"{where}.token_ids", vocab)
        if not ids:
            raise RequestError(f"'{where}.token_ids' is empty", f"{where}.token_ids")
        images = p.get("images", [])
        if not isinstance(images, list):
            raise RequestError(f"'{where}.images' must be a list", f"{where}.images")
        item = {
            "ids": ids,
            "images": [decode_image(im, f"{where}.images[{i}]") for i, im in enumerate(images)],
        }
        if with_score_from:
            start = _get(p, "score_from", int, 1, where + ".")
            if not 1 <= start <= len(ids):
                raise RequestError(
                    f"'{where}.score_from' must be in [1, {len(ids)}] (position 0 has no log-prob), got {start}",
                    f"{where}.score_from",
                )
            item["score_from"] = start
        out.append(item)
    return out


# ---------------------------------------------------------------------------------------------
# The engine


class Engine:
    """A ``vllm.LLM`` with the protocol's operations; every call under one lock."""

    def __init__(self, engine_args: Any) -> None:
        import vllm

        self.vllm = vllm
        self.llm = vllm.LLM.from_engine_args(engine_args)
        self.lock = threading.Lock()
        cfg = self.llm.llm_engine.model_config
        hf = cfg.hf_config
        self.model = str(engine_args.model)
        self.dtype = str(cfg.dtype).replace("torch.", "")
        self.max_model_len = int(cfg.max_model_len)
        self.vocab_size = int(cfg.get_vocab_size())
        token = getattr(hf, "image_token_id", None)
        self.image_token_id = None if token is None else int(token)
        self.suppress: list[int] = []
        self.weights_version = 0

    def info(self) -> dict:
        return {
            "model": self.model,
            "vllm_version": self.vllm.__version__,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "vocab_size": self.vocab_size,
            "image_token_id": self.image_token_id,
            "suppress_token_ids": self.suppress,
            "weights_version": self.weights_version,
            "ready": True,
        }

    # -- helpers (lock held) ----------------------------------------------------------------------

    def _set_suppressed(self, body: dict) -> None:
        ids = sorted(
            set(_int_list(body.get("suppress_token_ids", []), "suppress_token_ids", self.vocab_size))
        )
        if ids != self.suppress:
            self.llm.collective_rpc("warmstart_set_suppressed", args=(ids,))
            self.suppress = ids

    def _inputs(self, prompts: list[dict]) -> list[dict]:
        out = []
        for p in prompts:
            item: dict[str, Any] = {"prompt_token_ids": collapse_image_pads(p["ids"], self.image_token_id)}
            if p["images"]:
                item["multi_modal_data"] = {"image": p["images"] if len(p["images"]) > 1 else p["images"][0]}
            out.append(item)
        return out

    @staticmethod
    def _check_expansion(prompts: list[dict], outputs: list[Any]) -> None:
        for q, (p, o) in enumerate(zip(prompts, outputs)):
            got = list(o.prompt_token_ids)
            if got != p["ids"]:
                raise RequestError(
                    f"prompts[{q}].token_ids: vLLM's image expansion gives {len(got)} prompt tokens, the request "
                    f"has {len(p['ids'])} (image token counts differ: check that both sides use the same "
                    "image processor settings)",
                    f"prompts[{q}].token_ids",
                )

    def _check_length(self, prompts: list[dict], max_tokens: int) -> None:
        for q, p in enumerate(prompts):
            if len(p["ids"]) + max_tokens > self.max_model_len:
                raise RequestError(
                    f"prompts[{q}]: {len(p['ids'])} prompt tokens + max_tokens {max_tokens} exceed the server's "
                    f"max_model_len {self.max_model_len}",
                    f"prompts[{q}].token_ids",
                )

    # -- operations -------------------------------------------------------------------------------

    def generate(self, body: dict) -> dict:
        prompts = parse_prompts(body, self.vocab_size)
        n = _get(body, "n", int, 1)
        temperature = float(_get(body, "temperature", (int, float), 1.0))
        top_p = float(_get(body, "top_p", (int, float), 1.0))
        max_tokens = _get(body, "max_tokens", int, 16)
        seed = _get(body, "seed", int, 0)
        greedy = _get(body, "greedy", bool, False)
        ignore_eos = _get(body, "ignore_eos", bool, False)
        stop_ids = _int_list(body.get("stop_token_ids", []), "stop_token_ids", self.vocab_size)
        if n < 1:
            raise RequestError("'n' must be >= 1", "n")
        if max_tokens < 1:
            raise RequestError("'max_tokens' must be >= 1", "max_tokens")
        if not greedy and not temperature > 0:
            raise RequestError("'temperature' must be > 0 (or set greedy)", "temperature")
        if not 0 < top_p <= 1:
            raise RequestError("'top_p' must be in (0, 1]", "top_p")
        self._check_length(prompts, max_tokens)
        # vLLM refuses n > 1 at temperature 0: greedy rows are n requests of one sample each.
        copies, per_request = (n, 1) if greedy else (1, n)
        try:
            params = [
                self.vllm.SamplingParams(
                    n=per_request,
                    temperature=0.0 if greedy else temperature,
                    top_p=1.0 if greedy else top_p,
                    max_tokens=max_tokens,
                    seed=seed + q * n,
                    ignore_eos=ignore_eos,
                    stop_token_ids=[] if ignore_eos else stop_ids,
                    logprobs=0,
                    detokenize=False,
                )
                for q in range(len(prompts))
                for _ in range(copies)
            ]
        except ValueError as e:  # vLLM's own validation (VLLMValidationError is a ValueError)
            raise RequestError(f"sampling parameters: {e}") from None
        inputs = [x for x in self._inputs(prompts) for _ in range(copies)]
        with self.lock:
            self._set_suppressed(body)
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
            version = self.weights_version
        self._check_expansion([p for p in prompts for _ in range(copies)], outputs)
        results = []
        for q in range(len(prompts)):
            group = outputs[q * copies : (q + 1) * copies]
            samples = []
            for o in group:
                for c in sorted(o.outputs, key=lambda c: c.index):
                    ids = list(c.token_ids)
                    lps = [float(pos[t].logprob) for t, pos in zip(ids, c.logprobs)] if c.logprobs else []
                    samples.append({"token_ids": ids, "logprobs": lps, "finish_reason": str(c.finish_reason)})
            results.append({"prompt_token_ids": list(group[0].prompt_token_ids), "samples": samples})
        return {"results": results, "weights_version": version}

    def score(self, body: dict) -> dict:
        prompts = parse_prompts(body, self.vocab_size, with_score_from=True)
        self._check_length(prompts, 1)
        params = self.vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        # (the one generated token is discarded: only the prompt's log-probs are wanted)
        with self.lock:
            self._set_suppressed(body)
            outputs = self.llm.generate(self._inputs(prompts), params, use_tqdm=False)
            version = self.weights_version
        self._check_expansion(prompts, outputs)
        results = []
        for p, o in zip(prompts, outputs):
            ids, plp = p["ids"], o.prompt_logprobs
            results.append(
                {"logprobs": [float(plp[i][ids[i]].logprob) for i in range(p["score_from"], len(ids))]}
            )
        return {"results": results, "weights_version": version}

    def load_weights(self, body: dict) -> dict:
        path = _get(body, "path", str, "")
        if not path or not os.path.isfile(path):
            raise RequestError(f"'path' must name a readable safetensors file, got {path!r}", "path")
        t0 = time.perf_counter()
        with self.lock:
            per_worker = self.llm.collective_rpc("warmstart_load_weights", args=(path,))
            # Cached KV blocks and vision embeddings were computed with the old weights.
            self.llm.reset_prefix_cache()
            self.llm.llm_engine.reset_encoder_cache()
            self.weights_version += 1
            version = self.weights_version
        first = per_worker[0]
        missing = sorted({m for w in per_worker for m in w["missing"]})
        return {
            "tensors": first["tensors"],
            "params_updated": min(w["params_updated"] for w in per_worker),
            "params_total": first["params_updated"] + len(first["missing"]),
            "missing": missing,
            "seconds": time.perf_counter() - t0,
            "weights_version": version,
        }

    def shutdown(self) -> None:
        with self.lock:
            core = getattr(self.llm.llm_engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()


# ---------------------------------------------------------------------------------------------
# HTTP


class _State:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.stop = threading.Event()


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, field: str | None = None) -> None:
            kind = {400: "BadRequest", 404: "NotFound", 503: "Loading"}.get(status, "ServerError")
            self._send(status, {"error": {"message": message, "type": kind, "field": field}})

        def _not_ready(self) -> bool:
            if state.engine is not None:
                return False
            if state.load_error:
                self._error(500, f"engine failed to load: {state.load_error}")
            else:
                self._send(503, {"status": "loading"})
            return True

        def do_GET(self) -> None:
            if self.path == "/health":
                if not self._not_ready():
                    self._send(200, {"status": "ok"})
            elif self.path == "/info":
                if not self._not_ready():
                    self._send(200, state.engine.info())
            else:
                self._error(404, f"no route GET {self.path}")

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit() or int(length) > MAX_BODY_BYTES:
                self._error(400, f"Content-Length required, at most {MAX_BODY_BYTES} bytes")
                self.close_connection = True
                return
            raw = self.rfile.read(int(length))
            routes = {"/generate": "generate", "/score": "score", "/load_weights": "load_weights"}
            if self.path == "/shutdown":
                self._send(200, {"status": "shutting down"})
                state.stop.set()
                return
            if self.path not in routes:
                self._error(404, f"no route POST {self.path}")
                return
            if self._not_ready():
                return
            try:
                body = json.loads(raw or b"{}")
            except (ValueError, RecursionError) as e:
                self._error(400, f"request body is not JSON: {e}")
                return
            if not isinstance(body, dict):
                self._error(400, "request body must be a JSON object")
                return
            try:
                reply = getattr(state.engine, routes[self.path])(body)
            except RequestError as e:
                self._error(e.status, str(e), e.field)
                return
            except Exception as e:  # the engine failed: say so, keep serving
                log.error("%s failed:\n%s", self.path, traceback.format_exc())
                self._error(500, f"{type(e).__name__}: {e}")
                return
            self._send(200, reply)

    return Handler


def build_parser() -> argparse.ArgumentParser:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(
        prog="python -m warmstart.vllm_server", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=8100, help="port (default 8100)")
    parser.add_argument(
        "--kv-cache-gib",
        type=float,
        default=None,
        help="KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE; CPU build)",
    )
    return EngineArgs.add_cli_args(parser)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    # The KV cache size must be in the environment before vLLM reads its settings.
    if "--kv-cache-gib" in argv:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(
            max(1, round(float(argv[argv.index("--kv-cache-gib") + 1])))
        )
    args = build_parser().parse_args(argv)
    from vllm.engine.arg_utils import EngineArgs

    bind_children_to_this_process()
    state = _State()
    server = ThreadingHTTPServer((args.host, args.port), _handler(state))  # bind first: a busy port fails now
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    print(f"warmstart.vllm_server listening on http://{args.host}:{server.server_address[1]}", flush=True)

    def stop(signum: int, frame: Any) -> None:
        state.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    engine_args = EngineArgs.from_cli_args(args)
    engine_args.worker_extension_cls = WORKER_EXTENSION
    if not engine_args.limit_mm_per_prompt:
        engine_args.limit_mm_per_prompt = {"image": 1}
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and engine_args.enable_chunked_prefill is None:
        # vLLM 0.32 CPU: a seeded request whose prefill is split over steps crashes the engine
        # ("CPU Generator does not use offset": the runner rewinds the generator with a
        # CUDA-only call), and every /generate request is seeded. Whole-prompt prefills avoid it.
        engine_args.enable_chunked_prefill = False
        log.info("CPU platform: chunked prefill off (seeded sampling; see the comment in main)")
    try:
        state.engine = Engine(engine_args)
    except Exception as e:
        state.load_error = f"{type(e).__name__}: {e}"
        log.error("engine failed to load:\n%s", traceback.format_exc())
        server.shutdown()
        return 1
    print(f"warmstart.vllm_server ready: {args.model}", flush=True)
    while not state.stop.wait(0.5):
        pass
    server.shutdown()
    try:
        state.engine.shutdown()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The vLLM rollout backend (``rollout.backend = "vllm"``), seen from the training process.

vLLM cannot be imported here: its pins (torch, transformers < 5.20) conflict with the
training venv's. So it runs in a process of its own, from its own venv
(``.venv-vllm``, ``make setup-vllm``), behind the small HTTP protocol of
:mod:`warmstart.vllm_server` on 127.0.0.1, as TRL's ``vllm-serve`` does. This module
holds the training side:

* :class:`VLLMServer`: starts ``python -m warmstart.vllm_server`` as a child process
  (the vLLM venv's python: ``RolloutConfig.vllm_python``, else
  ``$WARMSTART_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` of this checkout), waits
  for ``/health``, and stops it on :meth:`~VLLMServer.close`, at exit, when garbage
  collected, and (``PR_SET_PDEATHSIG``) when this process dies, however it dies.
* :class:`VLLMSampler`: the :class:`~warmstart.sampler.Sampler`. It writes the training
  model once as a checkpoint (config, processor, weights) for the server to load, then
  after each optimizer step (:meth:`~VLLMSampler.sync_weights`) writes the current
  weights to one safetensors file, names as ``save_pretrained`` writes them, and the
  server loads it through the engine's own ``load_weights``. The copy is lazy: it runs
  at the next :meth:`~VLLMSampler.sample`, so several updates between two samplings
  (mini-batches) cost one copy. :attr:`VLLMSampler.last_sync` holds the timings.

The :class:`~warmstart.rollout.Rollouts` contract holds exactly: vLLM only chooses the
tokens (the suppressed ids are given ``SUPPRESS_LOGIT`` inside vLLM too, so they are
never sampled); ``logp_BT`` and ``entropy_BT`` are then computed by this package's
scorer (:func:`warmstart.scoring.score_rollouts`) on the training model, at the
sampling temperature, with the same suppressed ids, i.e. the very numbers the
in-process engine reports for the same tokens. vLLM's own log-probs of the sampled
tokens are kept in :attr:`VLLMSampler.last_engine_logp_BT` (a diagnostic: the
sampler/trainer mismatch of a bf16 engine shows there).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from warmstart.data.schema import Problem
from warmstart.models.load import unwrap_model
from warmstart.rollout import (
    PromptBatch,
    Rollouts,
    SamplingParams,
    encode_prompts,
    eos_token_ids,
    suppressed_token_ids,
)

if TYPE_CHECKING:
    from warmstart.sampler import RolloutConfig

__all__ = [
    "VLLMServer",
    "VLLMSampler",
    "VLLMServerError",
    "default_vllm_python",
    "hf_state_dict",
    "image_b64",
    "prompt_token_ids",
]

VLLM_PYTHON_ENV = "WARMSTART_VLLM_PYTHON"
LOG_TAIL_LINES = 40


class VLLMServerError(RuntimeError):
    """The vLLM server could not start, died, or refused a request (the message names its URL)."""


# ---------------------------------------------------------------------------------------------
# Small pure helpers (shared with the token-protocol teacher)


def default_vllm_python() -> Path:
    """``$WARMSTART_VLLM_PYTHON``, else ``<this checkout>/.venv-vllm/bin/python``."""
    env = os.environ.get(VLLM_PYTHON_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"


def image_b64(image: Any) -> str:
    """A PIL image as base64 PNG (lossless: the server's processor sees the same pixels)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def prompt_token_ids(batch: PromptBatch, q: int) -> list[int]:
    """Prompt q's real token ids (left padding dropped), image pads expanded as the model sees them."""
    return batch.input_ids_QP[q][batch.attention_mask_QP[q].bool()].tolist()


def hf_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The model's weights as ``save_pretrained`` names them, LoRA adapters merged in.

    The training model is left untouched: a peft LoRA layer's weight is computed as
    ``base + delta`` (peft's ``get_delta_weight``) instead of merged in place. Names go
    through transformers' own save-time renaming (``revert_weight_conversion``), so the
    file reads as a checkpoint written by ``save_pretrained``.
    """
    inner = unwrap_model(model)
    state: dict[str, torch.Tensor] = {}
    lora_modules = {
        name: module
        for name, module in inner.named_modules()
        if hasattr(module, "base_layer") and callable(getattr(module, "get_delta_weight", None))
    }
    for name, tensor in inner.state_dict().items():
        owner = next((m for m in lora_modules if name.startswith(m + ".")), None)
        if owner is None:
            state[name] = tensor.detach()
            continue
        rest = name[len(owner) + 1 :]
        if rest.startswith("base_layer."):
            state[f"{owner}.{rest[len('base_layer.') :]}"] = tensor.detach()
        # lora_A / lora_B / dropout entries are folded into the weight below
    for name, module in lora_modules.items():
        weight = module.base_layer.weight.detach()
        for adapter in module.active_adapters:
            if adapter in getattr(module, "lora_A", {}):
                weight = weight + module.get_delta_weight(adapter).detach()
        state[f"{name}.weight"] = weight
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers < 5 saves parameter names as they are
        renamed = state
    else:
        renamed = revert_weight_conversion(inner, state)
    return {k: v.contiguous() for k, v in renamed.items()}


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _stop_process(proc: subprocess.Popen, url: str, log_file: Any, grace_s: float = 20.0) -> None:
    """``/shutdown``, then SIGTERM, then SIGKILL of the server's whole process group."""
    if proc.poll() is None:
        with contextlib.suppress(OSError, urllib.error.URLError):
            urllib.request.urlopen(
                urllib.request.Request(url + "/shutdown", data=b"{}", method="POST"), timeout=5
            )
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    # vLLM's engine processes share the server's process group: none may outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    with contextlib.suppress(OSError):
        log_file.close()


# ---------------------------------------------------------------------------------------------
# The server process


class VLLMServer:
    """``python -m warmstart.vllm_server`` as a child process, and a client of its protocol.

    Args:
        model_dir: checkpoint the server loads (a directory in ``save_pretrained`` layout, or a hub id).
        python: the vLLM venv's python (default :func:`default_vllm_python`).
        host: address to bind (127.0.0.1: the protocol has no authentication).
        port: 0 picks a free one.
        dtype: vLLM ``--dtype`` (``auto`` = vLLM's rule; ``float32`` for exact comparisons).
        max_model_len: prompt + response tokens per sequence; 0 = the model's own limit.
        kv_cache_gib: KV cache size for vLLM's CPU build (``VLLM_CPU_KVCACHE_SPACE``); ignored on GPU.
        engine_args: further ``vllm serve`` engine flags, e.g. ``("--tensor-parallel-size", "2")``.
        start_timeout_s: how long the engine may take to load before it counts as failed.
        request_timeout_s: how long one request may take.
        log_path: the server's stdout + stderr (default: a temp file; its tail is shown in errors).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        python: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        dtype: str = "auto",
        max_model_len: int = 0,
        kv_cache_gib: float = 1.0,
        engine_args: Sequence[str] = (),
        start_timeout_s: float = 900.0,
        request_timeout_s: float = 1800.0,
        log_path: str | Path | None = None,
    ) -> None:
        self.python = Path(python) if python else default_vllm_python()
        if not self.python.exists():
            raise VLLMServerError(
                f"no vLLM python at {self.python}: create the vLLM venv with `make setup-vllm` "
                f"(scripts/setup-vllm.sh), or point rollout.vllm_python / ${VLLM_PYTHON_ENV} at one"
            )
        self.port = port or _free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.request_timeout_s = request_timeout_s
        self.command = server_command(
            self.python, model_dir, host, self.port, dtype, max_model_len, kv_cache_gib, engine_args
        )
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="warmstart-vllm-server-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed by _stop_process
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
        self.proc = subprocess.Popen(
            self.command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group, so close() reaches vLLM's engine processes
            preexec_fn=_die_with_parent,
        )
        self._finalizer = weakref.finalize(self, _stop_process, self.proc, self.url, log_file)
        self._wait_ready(start_timeout_s)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.close()
                raise VLLMServerError(
                    f"the vLLM server for {self.url} exited with code {self.proc.returncode} while starting "
                    f"({' '.join(self.command)}); last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                if e.code != 503:  # 503 = still loading
                    self.close()
                    raise VLLMServerError(
                        f"the vLLM server at {self.url} failed to start (HTTP {e.code}: "
                        f"{e.read().decode(errors='replace')[:300]}); last lines of {self.log_path}:\n"
                        f"{self.log_tail()}"
                    ) from None
            except OSError:
                pass
            time.sleep(0.5)
        self.close()
        raise VLLMServerError(
            f"the vLLM server at {self.url} was not ready after {timeout_s:.0f} s; last lines of "
            f"{self.log_path}:\n{self.log_tail()}"
        )

    def request(self, path: str, body: dict | None = None, timeout_s: float | None = None) -> Any:
        """One JSON exchange (GET without ``body``); errors name the URL and the server's message."""
        url = self.url + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.request_timeout_s) as r:
                text = r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            reply = e.read().decode("utf-8", errors="replace")
            try:
                message = json.loads(reply)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = reply[:500]
            tail = f"; last lines of {self.log_path}:\n{self.log_tail()}" if e.code >= 500 else ""
            raise VLLMServerError(f"vLLM server at {url} answered HTTP {e.code}: {message}{tail}") from None
        except OSError as e:
            dead = self.proc.poll() is not None
            state = f"the server exited with code {self.proc.returncode}" if dead else "the server is running"
            raise VLLMServerError(
                f"no reply from the vLLM server at {url}: {getattr(e, 'reason', e)} ({state}); last lines of "
                f"{self.log_path}:\n{self.log_tail()}"
            ) from None
        try:
            return json.loads(text)
        except ValueError:
            raise VLLMServerError(f"malformed reply from {url}: not JSON: {text[:200]!r}") from None

    def info(self) -> dict:
        return self.request("/info")

    def load_weights(self, path: str | Path) -> dict:
        """Load a safetensors file into the engine; raises unless every engine parameter was reached."""
        reply = self.request("/load_weights", {"path": str(path)})
        if reply.get("missing"):
            raise VLLMServerError(
                f"vLLM server at {self.url}/load_weights: {len(reply['missing'])} engine parameters were not in "
                f"{path} (first: {reply['missing'][:5]}); the weights were not fully synced"
            )
        return reply

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Stop the server (and vLLM's engine processes). Idempotent."""
        self._finalizer()

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def server_command(
    python: str | Path,
    model_dir: str | Path,
    host: str,
    port: int,
    dtype: str = "auto",
    max_model_len: int = 0,
    kv_cache_gib: float = 1.0,
    engine_args: Sequence[str] = (),
) -> list[str]:
    """The command line that starts :mod:`warmstart.vllm_server`."""
    cmd = [str(python), "-m", "warmstart.vllm_server", "--model", str(model_dir), "--host", host]
    cmd += ["--port", str(port), "--dtype", dtype, "--kv-cache-gib", str(kv_cache_gib)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd + [str(a) for a in engine_args]


# ---------------------------------------------------------------------------------------------
# The sampler


def _save_checkpoint(model: Any, processor: Any, out: Path, weights: dict[str, torch.Tensor]) -> None:
    """A ``save_pretrained``-layout checkpoint of ``model`` for the server (config, processor, weights)."""
    from safetensors.torch import save_file

    inner = unwrap_model(model)
    out.mkdir(parents=True, exist_ok=True)
    inner.config.save_pretrained(out)
    if getattr(inner, "generation_config", None) is not None:
        inner.generation_config.save_pretrained(out)
    processor.save_pretrained(out)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})


class VLLMSampler:
    """Rollouts sampled by vLLM in its own process; per-token scores from this package's scorer.

    Args:
        model: the training model (possibly peft-wrapped); read, never modified.
        processor: its processor.
        max_batch_rows: at most this many rows per request to the server (whole prompts;
            0 = the whole batch in one request). vLLM schedules its own batches; this
            bounds the reply size and the scoring pass's activations.
        config: the :class:`~warmstart.sampler.RolloutConfig` (``vllm_*`` fields).
    """

    # logp_BT / entropy_BT are our scorer's, on the training model the engine was synced to.
    exact_logprobs = True

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_batch_rows: int = 0,
        *,
        config: RolloutConfig | None = None,
    ) -> None:
        from warmstart.sampler import RolloutConfig

        cfg = config or RolloutConfig(backend="vllm")
        self.model, self.processor, self.max_batch_rows = model, processor, max_batch_rows
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.suppress = suppressed_token_ids(model, self.tokenizer)
        self.eos = eos_token_ids(model, self.tokenizer)
        self.workdir = Path(tempfile.mkdtemp(prefix="warmstart-vllm-", dir=cfg.vllm_sync_dir or None))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.workdir, ignore_errors=True)
        self.weights_path = self.workdir / "weights.safetensors"
        self.last_sync: dict[str, float] = {}
        self.last_engine_logp_BT: torch.Tensor | None = None
        # Seconds of the last sample(): generate (HTTP + vLLM), score (our scoring pass).
        self.last_timings: dict[str, float] = {}
        self._stale = False
        try:
            _save_checkpoint(model, processor, self.workdir / "model", hf_state_dict(model))
            self.server = VLLMServer(
                self.workdir / "model",
                python=cfg.vllm_python or None,
                dtype=cfg.vllm_dtype,
                max_model_len=cfg.vllm_max_model_len,
                kv_cache_gib=cfg.vllm_kv_cache_gib,
                engine_args=cfg.vllm_engine_args,
                start_timeout_s=cfg.vllm_start_timeout_s,
                request_timeout_s=cfg.vllm_request_timeout_s,
                log_path=self.workdir / "server.log",
            )
        except BaseException:
            self._cleanup()
            raise

    @classmethod
    def from_config(cls, cfg: RolloutConfig, model: Any, processor: Any) -> VLLMSampler:
        return cls(model, processor, max_batch_rows=cfg.max_batch_rows, config=cfg)

    # -- weights ---------------------------------------------------------------------------------

    def sync_weights(self, model: Any) -> None:
        """The next :meth:`sample` uses ``model``'s weights as they are then (copied lazily, once)."""
        self.model = model
        self._stale = True

    def push_weights(self) -> dict[str, float]:
        """Copy the model's current weights to the server now; returns the timings (seconds)."""
        t0 = time.perf_counter()
        with torch.no_grad():
            state = hf_state_dict(self.model)
        t1 = time.perf_counter()
        from safetensors.torch import save_file

        tmp = self.weights_path.with_suffix(".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, self.weights_path)
        t2 = time.perf_counter()
        reply = self.server.load_weights(self.weights_path)
        t3 = time.perf_counter()
        self._stale = False
        self.last_sync = {
            "state_dict_s": t1 - t0,
            "write_s": t2 - t1,
            "load_s": t3 - t2,
            "server_load_s": float(reply["seconds"]),
            "total_s": t3 - t0,
            "bytes": float(self.weights_path.stat().st_size),
        }
        return self.last_sync

    # -- sampling --------------------------------------------------------------------------------

    def sample(
        self,
        prompts: Sequence[Problem] | PromptBatch,
        params: SamplingParams,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> Rollouts:
        from warmstart.scoring import score_rollouts

        batch = prompts if isinstance(prompts, PromptBatch) else encode_prompts(prompts, self.processor)
        if self._stale:
            self.push_weights()
        t0 = time.perf_counter()
        n_prompts, n = batch.num_prompts, params.n
        per_request = n_prompts if not self.max_batch_rows else max(1, self.max_batch_rows // n)
        samples: list[dict] = []
        for first in range(0, n_prompts, per_request):
            end = min(first + per_request, n_prompts)
            body = {
                "prompts": [
                    {
                        "token_ids": prompt_token_ids(batch, q),
                        "images": [image_b64(im) for im in batch.problems[q].load_images()],
                    }
                    for q in range(first, end)
                ],
                "n": n,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "max_tokens": params.max_new_tokens,
                "seed": params.seed + first * n,  # row q*n+j is drawn with seed + q*n + j
                "greedy": params.greedy,
                "ignore_eos": params.ignore_eos,
                "stop_token_ids": self.eos,
                "suppress_token_ids": self.suppress,
            }
            reply = self.server.request("/generate", body)
            samples.extend(self._check_reply(reply, end - first, n, params))
            if progress is not None:
                progress(end * n, n_prompts * n)
        ro = self._rollouts(batch, samples, n)
        t1 = time.perf_counter()
        # The contract's per-token numbers, from our scorer on the training model.
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                scores = score_rollouts(
                    self.model,
                    ro,
                    with_entropy=True,
                    temperature=params.temperature,
                    micro_batch=self.max_batch_rows or None,
                )
        finally:
            self.model.train(was_training)
        ro.logp_BT = scores.logp_BT.detach().float().cpu()
        ro.entropy_BT = scores.entropy_BT.detach().float().cpu()
        self.last_timings = {"generate_s": t1 - t0, "score_s": time.perf_counter() - t1}
        return ro

    def _check_reply(self, reply: Any, n_prompts: int, n: int, params: SamplingParams) -> list[dict]:
        url = self.server.url + "/generate"
        try:
            results = reply["results"]
            groups = [r["samples"] for r in results]
        except (KeyError, TypeError):
            raise VLLMServerError(f"malformed reply from {url}: no results[].samples") from None
        if len(groups) != n_prompts or any(len(g) != n for g in groups):
            raise VLLMServerError(f"malformed reply from {url}: expected {n_prompts} prompts x {n} samples")
        banned = set(self.suppress)
        out = []
        for q, group in enumerate(groups):
            for j, s in enumerate(group):
                ids, reason = s.get("token_ids"), s.get("finish_reason")
                if not isinstance(ids, list) or not ids or reason not in ("stop", "length"):
                    raise VLLMServerError(
                        f"malformed reply from {url}: prompt {q} sample {j}: {str(s)[:200]}"
                    )
                if banned.intersection(ids):
                    raise VLLMServerError(
                        f"vLLM at {url} sampled suppressed token(s) {sorted(banned.intersection(ids))} "
                        f"(prompt {q} sample {j}); the suppression did not reach the engine"
                    )
                if reason == "stop" and ids[-1] not in self.eos:
                    raise VLLMServerError(
                        f"vLLM at {url} stopped prompt {q} sample {j} on token {ids[-1]}, which is not an EOS "
                        f"token {self.eos}"
                    )
                out.append(s)
        return out

    def _rollouts(self, batch: PromptBatch, samples: list[dict], n: int) -> Rollouts:
        pad = batch.pad_token_id
        lengths = [len(s["token_ids"]) for s in samples]
        width = max(lengths)
        ids_BT = torch.full((len(samples), width), pad, dtype=torch.long)
        mask_BT = torch.zeros((len(samples), width), dtype=torch.bool)
        engine_logp_BT = torch.zeros((len(samples), width), dtype=torch.float32)
        for b, s in enumerate(samples):
            k = lengths[b]
            ids_BT[b, :k] = torch.tensor(s["token_ids"], dtype=torch.long)
            mask_BT[b, :k] = True
            lps = s.get("logprobs") or []
            if len(lps) == k:
                engine_logp_BT[b, :k] = torch.tensor(lps, dtype=torch.float32)
        self.last_engine_logp_BT = engine_logp_BT
        zeros = torch.zeros((len(samples), width), dtype=torch.float32)
        return Rollouts(
            prompts=batch,
            prompt_index_B=torch.arange(batch.num_prompts).repeat_interleave(n),
            response_ids_BT=ids_BT,
            response_mask_BT=mask_BT,
            logp_BT=zeros,
            entropy_BT=zeros.clone(),
            finish_reason_B=[s["finish_reason"] for s in samples],
            texts_B=self.tokenizer.batch_decode([s["token_ids"] for s in samples], skip_special_tokens=True),
            suppressed_ids=tuple(self.suppress),
        )

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the server and delete the work folder. Idempotent (also runs at exit and on GC)."""
        server = getattr(self, "server", None)
        if server is not None:
            server.close()
        self._cleanup()

    def __enter__(self) -> VLLMSampler:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""The rollout seam: a :class:`Sampler` turns prompts + :class:`SamplingParams` into :class:`Rollouts`.

Every caller that samples (the stage loops, validation, evaluation, benchmarks) goes
through a sampler built by :func:`make_sampler` from a :class:`RolloutConfig`, so
nothing above this seam knows which engine runs. Adding a backend (vLLM) is:

1. one new engine module (like :mod:`warmstart.engine`) with a class that has this
   module's :class:`Sampler` methods and a ``from_config(cfg, model, processor)``
   classmethod; it gives the :class:`~warmstart.rollout.Rollouts` contract (suppressing
   :func:`~warmstart.rollout.suppressed_token_ids` with
   :data:`~warmstart.rollout.SUPPRESS_LOGIT`, behaviour log-probs before top-p);
2. its entry in :data:`SAMPLERS`, its name in ``RolloutConfig.backend``'s ``Literal``, and
   any settings it needs as ``RolloutConfig`` fields;
3. ``rollout.backend = "<name>"`` in a stage or evaluation config.

Backends: ``local`` (:mod:`warmstart.engine`, in process) and ``vllm``
(:mod:`warmstart.vllm_engine`: vLLM in its own process and venv, docs/ENGINES.md).

Engines that hold their own copy of the weights refresh it in :meth:`Sampler.sync_weights`
after every optimizer step; the in-process engine samples from the training model
itself, so its ``sync_weights`` only rebinds the model. Samplers that own a process
(vLLM) also have ``close()``; they stop it at exit or when collected too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from warmstart.config import ConfigError
from warmstart.data.schema import Problem
from warmstart.rollout import PromptBatch, Rollouts, SamplingParams

__all__ = ["RolloutConfig", "Sampler", "LocalSampler", "SAMPLERS", "make_sampler", "logp_is_exact"]

# Flags of the vLLM server that RolloutConfig's own fields set (not allowed in vllm_engine_args).
_VLLM_OWN_FLAGS = ("--model", "--host", "--port", "--dtype", "--max-model-len", "--kv-cache-gib")
_VLLM_OWN_FLAGS += ("--worker-extension-cls",)


@dataclass(frozen=True)
class RolloutConfig:
    """Which engine samples, and how much of a batch it decodes at once.

    Attributes:
        backend: registry key in :data:`SAMPLERS`: ``local`` (this package's in-process
            KV-cache engine, exact behaviour log-probs and full-vocabulary entropy) or
            ``vllm`` (vLLM in its own process from the vLLM venv, weights synced by file
            after every update; log-probs and entropy from this package's scorer, so the
            same contract; docs/ENGINES.md).
        max_batch_rows: at most this many rows decode together (memory bound for big
            batches; 0 = the whole batch at once). Chunks hold whole prompts; the same
            seed and the same ``max_batch_rows`` give the same tokens. With ``vllm``: rows
            per request to the server (vLLM schedules its own batches inside).
        vllm_python: python of the vLLM venv (``vllm`` only); ``""`` = ``$WARMSTART_VLLM_PYTHON``,
            else ``.venv-vllm/bin/python`` of this checkout (``make setup-vllm``).
        vllm_dtype: the engine's dtype: ``auto`` (vLLM's rule: the checkpoint's, float32
            downcast on GPU) or an explicit one; ``float32`` samples the trained fp32
            weights as they are.
        vllm_max_model_len: longest prompt + response the engine accepts (sizes its KV
            cache); 0 = the model's own ``max_position_embeddings``.
        vllm_kv_cache_gib: KV cache of vLLM's CPU build, GiB (``VLLM_CPU_KVCACHE_SPACE``);
            ignored on GPU (use ``--gpu-memory-utilization`` in ``vllm_engine_args``).
        vllm_engine_args: further ``vllm serve`` engine flags, e.g.
            ``["--tensor-parallel-size", "2"]`` or ``["--enforce-eager"]`` (CPU: no compile
            at start). The flags the fields above set are refused here.
        vllm_start_timeout_s: seconds the engine may take to load before the run fails
            (with the server log's tail in the error).
        vllm_request_timeout_s: seconds one generate request may take.
        vllm_sync_dir: folder for the model copy and the per-update weight file;
            ``""`` = the system temp folder (``/dev/shm`` is faster where it fits).
    """

    backend: Literal["local", "vllm"] = "local"
    max_batch_rows: int = 0
    vllm_python: str = ""
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    vllm_max_model_len: int = 0
    vllm_kv_cache_gib: float = 1.0
    vllm_engine_args: tuple[str, ...] = ()
    vllm_start_timeout_s: float = 900.0
    vllm_request_timeout_s: float = 1800.0
    vllm_sync_dir: str = ""

    def validate(self) -> None:
        if self.max_batch_rows < 0:
            raise ConfigError(f"rollout.max_batch_rows must be >= 0, got {self.max_batch_rows}")
        if self.vllm_max_model_len < 0:
            raise ConfigError(f"rollout.vllm_max_model_len must be >= 0, got {self.vllm_max_model_len}")
        for name in ("vllm_kv_cache_gib", "vllm_start_timeout_s", "vllm_request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"rollout.{name} must be > 0, got {getattr(self, name)}")
        for arg in self.vllm_engine_args:
            if arg.split("=", 1)[0] in _VLLM_OWN_FLAGS:
                raise ConfigError(
                    f"rollout.vllm_engine_args: {arg!r} is set by RolloutConfig's own fields "
                    "(vllm_dtype, vllm_max_model_len, vllm_kv_cache_gib) or by the sampler"
                )


@runtime_checkable
class Sampler(Protocol):
    """Prompts + sampling parameters in, :class:`Rollouts` out (rows ``q*n .. q*n+n-1`` answer prompt q)."""

    def sample(
        self,
        prompts: Sequence[Problem] | PromptBatch,
        params: SamplingParams,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> Rollouts: ...

    def sync_weights(self, model: Any) -> None:
        """Make the next :meth:`sample` use ``model``'s current weights."""
        ...


def logp_is_exact(sampler: Any) -> bool:
    """Whether ``sampler``'s ``Rollouts.logp_BT`` are the training model's own log-probs.

    A sampler says so with a class attribute ``exact_logprobs = True``: its per-token
    log-probs are our scorer's numbers for the model it was last synced to (the local
    engine's within 1e-5, tests/test_rollout.py; the vLLM backend rescoring with
    :func:`warmstart.scoring.score_rollouts`). Samplers without the attribute are not
    trusted, and the stages score the rows again.
    """
    return bool(getattr(sampler, "exact_logprobs", False))


class LocalSampler:
    """The in-process engine (:func:`warmstart.engine.sample`) on the training model itself."""

    exact_logprobs = True  # the engine's log-probs equal a scoring pass within 1e-5

    def __init__(self, model: Any, processor: Any, max_batch_rows: int = 0) -> None:
        self.model, self.processor, self.max_batch_rows = model, processor, max_batch_rows

    @classmethod
    def from_config(cls, cfg: RolloutConfig, model: Any, processor: Any) -> LocalSampler:
        return cls(model, processor, max_batch_rows=cfg.max_batch_rows)

    def sample(
        self,
        prompts: Sequence[Problem] | PromptBatch,
        params: SamplingParams,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> Rollouts:
        from warmstart.distributed import full_weights
        from warmstart.engine import sample

        with full_weights(self.model):  # FSDP2: the engine reads whole weights (every rank enters)
            return sample(
                self.model,
                self.processor,
                prompts,
                params,
                max_batch_rows=self.max_batch_rows or None,
                progress=progress,
            )

    def sync_weights(self, model: Any) -> None:
        # Same process, same tensors: the next sample() already sees every update.
        self.model = model


def _registry() -> dict[str, type]:
    from warmstart.vllm_engine import VLLMSampler  # stdlib + torch only; vLLM runs in its own process

    return {"local": LocalSampler, "vllm": VLLMSampler}


# backend name -> sampler class (each has ``from_config(cfg, model, processor)``)
SAMPLERS: dict[str, type] = _registry()


def make_sampler(cfg: RolloutConfig, model: Any, processor: Any) -> Sampler:
    """The sampler ``cfg.backend`` names, on ``model`` (the policy being trained or evaluated)."""
    try:
        cls = SAMPLERS[cfg.backend]
    except KeyError:
        raise ConfigError(f"rollout.backend {cfg.backend!r} is not one of {sorted(SAMPLERS)}") from None
    return cls.from_config(cfg, model, processor)

"""The rollout seam: a :class:`Sampler` turns prompts + :class:`SamplingParams` into :class:`Rollouts`.

Every caller that samples (the stage loops, validation, evaluation, benchmarks) goes
through a sampler built by :func:`make_sampler` from a :class:`RolloutConfig`, so
nothing above this seam knows which engine runs. Adding a backend (vLLM) is:

1. one new engine module (like :mod:`warmstart.engine`) with a class that has this
   module's :class:`Sampler` methods and takes ``(model, processor, max_batch_rows=...)``;
   it gives the :class:`~warmstart.rollout.Rollouts` contract (suppressing
   :func:`~warmstart.rollout.suppressed_token_ids` with
   :data:`~warmstart.rollout.SUPPRESS_LOGIT`, behaviour log-probs before top-p);
2. its entry in :data:`SAMPLERS` and its name in ``RolloutConfig.backend``'s ``Literal``;
3. ``rollout.backend = "<name>"`` in a stage or evaluation config.

Engines that hold their own copy of the weights refresh it in :meth:`Sampler.sync_weights`
after every optimizer step; the in-process engine samples from the training model
itself, so its ``sync_weights`` only rebinds the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from warmstart.config import ConfigError
from warmstart.data.schema import Problem
from warmstart.rollout import PromptBatch, Rollouts, SamplingParams

__all__ = ["RolloutConfig", "Sampler", "LocalSampler", "SAMPLERS", "make_sampler"]


@dataclass(frozen=True)
class RolloutConfig:
    """Which engine samples, and how much of a batch it decodes at once.

    Attributes:
        backend: registry key in :data:`SAMPLERS`: ``local`` (this package's in-process
            KV-cache engine, exact behaviour log-probs and full-vocabulary entropy).
        max_batch_rows: at most this many rows decode together (memory bound for big
            batches; 0 = the whole batch at once). Chunks hold whole prompts; the same
            seed and the same ``max_batch_rows`` give the same tokens.
    """

    backend: Literal["local"] = "local"
    max_batch_rows: int = 0

    def validate(self) -> None:
        if self.max_batch_rows < 0:
            raise ConfigError(f"rollout.max_batch_rows must be >= 0, got {self.max_batch_rows}")


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


class LocalSampler:
    """The in-process engine (:func:`warmstart.engine.sample`) on the training model itself."""

    def __init__(self, model: Any, processor: Any, max_batch_rows: int = 0) -> None:
        self.model, self.processor, self.max_batch_rows = model, processor, max_batch_rows

    def sample(
        self,
        prompts: Sequence[Problem] | PromptBatch,
        params: SamplingParams,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> Rollouts:
        from warmstart.engine import sample

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


SAMPLERS: dict[str, type] = {"local": LocalSampler}


def make_sampler(cfg: RolloutConfig, model: Any, processor: Any) -> Sampler:
    """The sampler ``cfg.backend`` names, on ``model`` (the policy being trained or evaluated)."""
    try:
        cls = SAMPLERS[cfg.backend]
    except KeyError:
        raise ConfigError(f"rollout.backend {cfg.backend!r} is not one of {sorted(SAMPLERS)}") from None
    return cls(model, processor, max_batch_rows=cfg.max_batch_rows)

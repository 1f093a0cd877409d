"""The training batch: every tensor one update needs, in one typed object.

A stage builds a :class:`TrainBatch` (rollouts + per-token advantages + whichever
per-token log-probs its loss needs) and hands it to
:meth:`warmstart.train.Trainer.update`; the trainer splits it into micro-batches with
:meth:`TrainBatch.select` and gives each to the loss the config names
(:data:`warmstart.losses.OBJECTIVES`). Where the per-token weights come from is the
only thing the stages differ in:

* SFT / pretrain: advantage 1 on every response token (:meth:`TrainBatch.supervised`).
* OPD: ``adv = -(log pi_student - log pi_teacher)``; ``teacher_logp_BT`` rides along. With
  ``adv_BT = None`` the objective takes ``log pi_student`` from the update's own forward
  (:meth:`TrainBatch.distillation`), so no separate scoring pass of the student runs.
* GRPO: each row's group-relative advantage, spread over its tokens; ``old_logp_BT``
  when the batch is reused, ``ref_logp_BT`` when a KL-to-reference term is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from warmstart.rollout import Rollouts

__all__ = ["TrainBatch", "sampler_logp_is_exact"]


def sampler_logp_is_exact(sampler: object, temperature: float) -> bool:
    """Whether ``Rollouts.logp_BT`` from ``sampler`` at ``temperature`` equals what the trainer scores.

    The trainer scores response tokens at temperature 1 with the sampler's suppressed ids
    (:func:`warmstart.scoring.score_rollouts`). A sampler that declares exact log-probs
    (:func:`warmstart.sampler.logp_is_exact`: the in-process engine, and the vLLM backend,
    which rescores its rows with our scorer) gives those very numbers when it samples at
    temperature 1, so the stages use them as the old log-probs (and OPD as the
    student's) instead of running a scoring forward.
    """
    from warmstart.sampler import logp_is_exact

    return logp_is_exact(sampler) and temperature == 1.0


@dataclass
class TrainBatch:
    """B rows of prompt + response tokens and their per-token training tensors.

    Every ``*_BT`` tensor has the shape of ``rollouts.response_mask_BT`` (B rows x T
    response tokens); values on padding are ignored by the losses.

    Attributes:
        rollouts: the rows (prompt batch, response tokens, response mask).
        adv_BT: per-token advantage, a constant weight (carries no gradient). ``None``: the
            on-policy distillation advantage ``-(log pi_student - log pi_teacher)``, computed
            by the objective from the log-probs of the update's own forward (needs
            ``teacher_logp_BT``; see :meth:`distillation`).
        old_logp_BT: log-probs of the response tokens under the policy that sampled them,
            for the importance ratio when a batch is reused; ``None``: on-policy (ratio 1).
        ref_logp_BT: log-probs under the frozen reference model (KL-to-reference term).
        teacher_logp_BT: log-probs under the teacher (OPD; a distillation loss).
    """

    rollouts: Rollouts
    adv_BT: Tensor | None
    old_logp_BT: Tensor | None = None
    ref_logp_BT: Tensor | None = None
    teacher_logp_BT: Tensor | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.rollouts.response_mask_BT.shape)
        for name in ("adv_BT", "old_logp_BT", "ref_logp_BT", "teacher_logp_BT"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(
                    f"TrainBatch.{name} has shape {tuple(value.shape)}, but the rollouts' "
                    f"response_mask_BT is {shape} (rows x response tokens)"
                )
        if self.adv_BT is None and self.teacher_logp_BT is None:
            raise ValueError(
                "TrainBatch.adv_BT is None (the distillation advantage from the update's forward) "
                "but teacher_logp_BT is not given"
            )

    @staticmethod
    def supervised(rollouts: Rollouts) -> TrainBatch:
        """Advantage 1 on every response token, on-policy: the policy-gradient loss is the mean NLL."""
        return TrainBatch(rollouts, torch.ones(rollouts.response_mask_BT.shape))

    @staticmethod
    def distillation(
        rollouts: Rollouts, teacher_logp_BT: Tensor, old_logp_BT: Tensor | None = None
    ) -> TrainBatch:
        """OPD with one update per batch: the advantage ``-(log pi_s - log pi_t)`` from the update's forward.

        The student's log-probs of the sampled tokens are those the update computes anyway
        (with gradient, detached for the advantage): no separate scoring pass. A teacher
        identical to the student then gives an advantage of exactly zero whenever the
        update scores the rows in the batch the teacher was scored in.
        """
        return TrainBatch(rollouts, None, old_logp_BT=old_logp_BT, teacher_logp_BT=teacher_logp_BT)

    @property
    def mask_BT(self) -> Tensor:
        """True on real response tokens (the rollouts' ``response_mask_BT``)."""
        return self.rollouts.response_mask_BT

    @property
    def num_rows(self) -> int:
        return self.rollouts.response_mask_BT.shape[0]

    def select(self, rows: Sequence[int] | Tensor) -> TrainBatch:
        """The given rows, in that order, with their slices of every tensor."""
        idx = torch.as_tensor(rows, dtype=torch.long)

        def pick(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[idx]

        return TrainBatch(
            self.rollouts.select(idx),
            pick(self.adv_BT),
            old_logp_BT=pick(self.old_logp_BT),
            ref_logp_BT=pick(self.ref_logp_BT),
            teacher_logp_BT=pick(self.teacher_logp_BT),
        )

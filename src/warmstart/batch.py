"""The training batch: every tensor one update needs, in one typed object.

A stage builds a :class:`TrainBatch` (rollouts + per-token advantages + whichever
per-token log-probs its loss needs) and hands it to
:meth:`warmstart.train.Trainer.update`; the trainer splits it into micro-batches with
:meth:`TrainBatch.select` and gives each to the loss the config names
(:data:`warmstart.losses.OBJECTIVES`). Where the per-token weights come from is the
only thing the stages differ in:

* SFT / pretrain: advantage 1 on every response token (:meth:`TrainBatch.supervised`).
* OPD: ``adv = -(log pi_student - log pi_teacher)``; ``teacher_logp_BT`` rides along.
* GRPO: each row's group-relative advantage, spread over its tokens; ``old_logp_BT``
  when the batch is reused, ``ref_logp_BT`` when a KL-to-reference term is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from warmstart.rollout import Rollouts

__all__ = ["TrainBatch"]


@dataclass
class TrainBatch:
    """B rows of prompt + response tokens and their per-token training tensors.

    Every ``*_BT`` tensor has the shape of ``rollouts.response_mask_BT`` (B rows x T
    response tokens); values on padding are ignored by the losses.

    Attributes:
        rollouts: the rows (prompt batch, response tokens, response mask).
        adv_BT: per-token advantage, a constant weight (carries no gradient).
        old_logp_BT: log-probs of the response tokens under the policy that sampled them,
            for the importance ratio when a batch is reused; ``None``: on-policy (ratio 1).
        ref_logp_BT: log-probs under the frozen reference model (KL-to-reference term).
        teacher_logp_BT: log-probs under the teacher (OPD; a distillation loss).
    """

    rollouts: Rollouts
    adv_BT: Tensor
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

    @staticmethod
    def supervised(rollouts: Rollouts) -> TrainBatch:
        """Advantage 1 on every response token, on-policy: the policy-gradient loss is the mean NLL."""
        return TrainBatch(rollouts, torch.ones(rollouts.response_mask_BT.shape))

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
            self.adv_BT[idx],
            old_logp_BT=pick(self.old_logp_BT),
            ref_logp_BT=pick(self.ref_logp_BT),
            teacher_logp_BT=pick(self.teacher_logp_BT),
        )

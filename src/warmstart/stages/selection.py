"""The one checkpoint-selection rule every Stage-1 method uses (SFT and OPD alike).

Every ``eval_every`` steps the run is validated on a *selection* split (never the split
the study reports): greedy accuracy, ties broken by the teacher-forced NLL of the
reference rationales. From those validations, :func:`observe` (pure) decides:

* ``best``: the checkpoint with the highest selection accuracy up to the step the early
  arm stops at (the early arm: exactly what an early run keeps, so an over run frozen
  past that point never moves it);
* when to stop: after ``patience`` validations without an improvement of more than
  ``min_delta``, an ``early`` run stops there; an ``over`` run goes on to
  ``over_multiple x best_step`` (the over-trained arm, a fixed multiple of the early
  arm's step), never past ``max_steps``;
* ``matched``: the first validation whose accuracy reaches ``matched_target`` (a target
  the study sets from stage 0 alone, e.g. halfway from base to teacher), or never.

The state is a small JSON-able dict (saved in resumable checkpoints), so a resumed run
makes exactly the decisions an uninterrupted one makes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

__all__ = ["Decision", "Selection", "observe", "over_step", "selection_summary"]


@dataclass(frozen=True)
class Selection:
    """Where a run's selection stands.

    Attributes:
        best_step: step of the best validation so far (0 = the init).
        best_acc: its selection accuracy (-1 before any validation).
        best_loss: its validation NLL (tie-break; lower is better).
        bad_evals: validations in a row without an improvement.
        stop_at: the step the run ends at (``max_steps`` until the patience runs out).
        early_end: the step the patience ran out at, where an early run ends (``None``: not
            yet); from then on the best is frozen.
        matched_step: first step whose selection accuracy reached the target (``None``: not yet).
    """

    best_step: int = 0
    best_acc: float = -1.0
    best_loss: float = math.inf
    bad_evals: int = 0
    stop_at: int = 0
    early_end: int | None = None
    matched_step: int | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["best_loss"] = None if math.isinf(self.best_loss) else self.best_loss
        return out

    @staticmethod
    def from_dict(d: dict) -> Selection:
        d = dict(d)
        if d.get("best_loss") is None:
            d["best_loss"] = math.inf
        return Selection(**d)


@dataclass(frozen=True)
class Decision:
    """What one validation means for the run.

    Attributes:
        selection: the new state.
        save_best: this step is the new best checkpoint (save ``best/``).
        save_matched: this step first reached the matched-outcome target (save ``matched/``).
    """

    selection: Selection
    save_best: bool
    save_matched: bool


def over_step(best_step: int, over_multiple: float, at_step: int, max_steps: int) -> int:
    """The over-trained arm's last step: ``over_multiple x best_step`` (at least ``at_step``), capped."""
    return min(max_steps, max(at_step, int(round(over_multiple * max(best_step, 1)))))


def observe(
    sel: Selection,
    step: int,
    acc: float,
    loss: float,
    *,
    arm: Literal["early", "over"],
    patience: int,
    min_delta: float,
    over_multiple: float,
    max_steps: int,
    matched_target: float | None = None,
) -> Decision:
    """The selection state after a validation at ``step`` (accuracy ``acc``, NLL ``loss``).

    Better = accuracy above the best by more than ``min_delta``, or the same accuracy at a
    lower loss. The first validation (``best_acc`` -1) is always the best so far. Once the
    patience has run out (``early_end`` set) the best is frozen: the over run goes on past
    the early arm's end, and what it sees there must not change that arm.
    """
    better = False
    if sel.early_end is None:
        better = sel.best_acc < 0 or (
            acc > sel.best_acc + min_delta or (acc == sel.best_acc and loss < sel.best_loss)
        )
        if better:
            sel = replace(sel, best_step=step, best_acc=acc, best_loss=loss, bad_evals=0)
        else:
            sel = replace(sel, bad_evals=sel.bad_evals + 1)
        if sel.bad_evals >= patience:
            stop = step if arm == "early" else over_step(sel.best_step, over_multiple, step, max_steps)
            sel = replace(sel, stop_at=stop, early_end=step)
    matched = matched_target is not None and sel.matched_step is None and acc >= matched_target
    if matched:
        sel = replace(sel, matched_step=step)
    return Decision(sel, save_best=better, save_matched=matched)


def selection_summary(sel: Selection, cfg, steps: int) -> dict:
    """The ``selection`` entry of a Stage-1 result: the rule's settings and its decisions.

    ``cfg`` is the stage config (``val_split``, ``eval_every``, ``patience``,
    ``over_multiple``, ``matched_target``); ``over_step`` is the run's last step when it
    is an over run, else ``None``.
    """
    return {
        "split": cfg.val_split,
        "every": cfg.eval_every,
        "patience": cfg.patience,
        "over_multiple": cfg.over_multiple,
        "best_step": sel.best_step,
        "best_accuracy": sel.best_acc,
        "early_end": sel.early_end,
        "over_step": steps if cfg.arm == "over" else None,
        "matched_step": sel.matched_step,
        "matched_target": cfg.matched_target,
    }

"""The study's Stage-1 arms as data: ``[[arm]]`` entries, the methods they name, and the runs they share.

An arm is a Stage-1 method, its settings and a checkpoint rule. Arms with the same
method and the same settings are read from ONE training run (:func:`stage1_runs`):
the toy study's two SFT arms are the ``best/`` (early-stopped) and ``final/``
(over-trained) checkpoints of one over-trained SFT run, because training is
deterministic and the over run passes through the early arm's best checkpoint.

Adding a Stage-1 method: its stage module (config class + ``train_*`` function), a
field of that config type on :class:`ArmConfig` and an entry in :data:`METHODS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from warmstart.config import ConfigError, replace, to_dict
from warmstart.stages.opd import OPDConfig, train_opd
from warmstart.stages.sft import SFTConfig, train_sft

__all__ = ["ArmConfig", "METHODS", "Stage1Method", "Stage1Run", "stage1_runs"]


@dataclass(frozen=True)
class Stage1Method:
    """How the study trains one Stage-1 method.

    Attributes:
        config: the stage's config class (the type of the arm's table).
        train: the stage's entry point, ``train(cfg, resume=..., show_progress=...) -> dict``.
        checkpoints: the checkpoints a run leaves that an arm may be, given its config:
            ``final`` (last weights) and, where the run selects by validation, ``best``
            (early-stopped) and ``matched`` (first to reach the matched-outcome target).
        total: the run's optimizer steps (the progress bar's length).
        needs_teacher: whether a run with this config reads the study's teacher.
        for_checkpoints: the config of the run whose arms read ``checkpoints`` (a set of
            names); SFT over-trains past its best step only when an arm reads ``final/``.
    """

    config: type
    train: Callable[..., dict]
    checkpoints: Callable[[Any], frozenset[str]]
    total: Callable[[Any], int]
    needs_teacher: Callable[[Any], bool]
    for_checkpoints: Callable[[Any, frozenset[str]], Any]


_SELECTED = frozenset({"best", "final", "matched"})

METHODS: dict[str, Stage1Method] = {
    "sft": Stage1Method(
        config=SFTConfig,
        train=train_sft,
        checkpoints=lambda c: _SELECTED,
        total=lambda c: c.max_steps,
        needs_teacher=lambda c: c.solutions == "teacher",
        for_checkpoints=lambda c, cks: replace(c, arm="over" if "final" in cks else "early"),
    ),
    "opd": Stage1Method(
        config=OPDConfig,
        train=train_opd,
        checkpoints=lambda c: _SELECTED if c.eval_every else frozenset({"final"}),
        total=lambda c: c.steps,
        needs_teacher=lambda c: True,
        for_checkpoints=lambda c, cks: (
            replace(c, arm="over" if "final" in cks else "early") if c.eval_every else c
        ),
    ),
}

# Arm names become folder names, step names (``grpo:<name>``) and eval file names
# (``<name>+grpo__<split>.json``), so they avoid ``:``, ``+``, ``/`` and ``__``.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_RESERVED = ("base", "teacher")


@dataclass(frozen=True)
class ArmConfig:
    """One Stage-1 arm of the study (a ``[[arm]]`` table).

    Attributes:
        name: the arm's identifier: its folders are ``stage1/<name>`` and ``stage2/<name>``,
            its eval models ``<name>`` and ``<name>+grpo``. Letters, digits, ``_`` and
            ``-`` (no ``__``); not ``base`` or ``teacher``.
        label: its row label in the report, e.g. ``SFT (early-stopped)``.
        method: the Stage-1 method, a key of :data:`METHODS` (``sft`` or ``opd``).
        checkpoint: which checkpoint of the Stage-1 run is the arm: ``final`` (the last
            weights: the over-trained arm of a selected run), ``best`` (the best validation
            checkpoint: the early-stopped arm) or ``matched`` (the first validation at or above
            the matched-outcome target of ``[stage0]``; an arm that never gets there is
            reported as not reached). ``best`` and ``matched`` need a run that validates (OPD:
            ``eval_every`` > 0).
        same_as: (read from the file only) another, earlier arm whose method and method table
            this arm shares: the arms of one run (early / over / matched) say so once.
        grpo: whether the arm gets a Stage-2 run (``<name>+grpo``); ``false``: Stage-1 only
            (evaluated, not trained further). Matched arms must set it false.
        sft: the settings of ``method = "sft"`` (an ``SFTConfig`` table; empty: its
            defaults). The study sets ``init``, ``data``, ``train_split``, ``teacher``,
            ``out_dir``, ``rollout`` and ``arm`` (``over`` when an arm reads the run's
            ``final/``, else ``early``).
        opd: the settings of ``method = "opd"`` (an ``OPDConfig`` table; empty: its
            defaults). The study sets ``init``, ``data``, ``train_split``, ``teacher``,
            ``out_dir`` and ``rollout``.
    """

    name: str
    label: str
    method: str
    checkpoint: Literal["best", "final", "matched"] = "final"
    grpo: bool = True
    sft: SFTConfig | None = None
    opd: OPDConfig | None = None

    def validate(self) -> None:
        if not _NAME.fullmatch(self.name) or "__" in self.name or self.name in _RESERVED:
            raise ConfigError(
                f"arm name {self.name!r}: use letters, digits, '_' and '-' (no '__'), not {list(_RESERVED)}"
            )
        if self.method not in METHODS:
            raise ConfigError(f"arm {self.name}: method {self.method!r} is not one of {sorted(METHODS)}")
        for other in METHODS:
            if other != self.method and getattr(self, other) is not None:
                raise ConfigError(f"arm {self.name}: a [{other}] table on a method = {self.method!r} arm")
        stage = self.stage
        leaves = METHODS[self.method].checkpoints(stage)
        if self.checkpoint not in leaves:
            raise ConfigError(
                f"arm {self.name}: checkpoint {self.checkpoint!r}: this {self.method} run leaves only "
                f"{sorted(leaves)}"
                + ("" if self.method != "opd" else " (best/matched need opd.eval_every > 0)")
            )
        if self.checkpoint == "matched" and self.grpo:
            raise ConfigError(
                f"arm {self.name}: a matched arm may not exist (never reached), so it has no Stage-2 "
                "run: set grpo = false"
            )
        for key in ("init", "data", "teacher"):
            if getattr(stage, key, None):
                raise ConfigError(f"arm {self.name}: {self.method}.{key} is set by the study; remove it")

    @property
    def stage(self) -> Any:
        """The arm's stage config as written (the method's defaults where no table is given)."""
        cfg = getattr(self, self.method)
        return cfg if cfg is not None else METHODS[self.method].config()


@dataclass(frozen=True)
class Stage1Run:
    """One Stage-1 training run and the arms read from it.

    Attributes:
        name: its folder under ``stage1/``: the arm that reads its ``final/`` checkpoint,
            else its first arm.
        method: the Stage-1 method (a key of :data:`METHODS`).
        config: the arms' stage config as written (before the study fills paths).
        arms: the arms read from it, in study order.
    """

    name: str
    method: str
    config: Any
    arms: tuple[ArmConfig, ...]


def stage1_runs(arms: tuple[ArmConfig, ...]) -> list[Stage1Run]:
    """Group arms with the same method and settings into one run each (in order of first arm)."""
    groups: dict[tuple[str, str], list[ArmConfig]] = {}
    for arm in arms:
        key = (arm.method, json.dumps(to_dict(arm.stage), sort_keys=True))
        groups.setdefault(key, []).append(arm)
    runs = []
    for (method, _), members in groups.items():
        seen: dict[str, str] = {}
        for a in members:
            if a.checkpoint in seen:
                raise ConfigError(
                    f"arms {seen[a.checkpoint]} and {a.name} are the same model "
                    f"(same {method} settings, checkpoint {a.checkpoint!r})"
                )
            seen[a.checkpoint] = a.name
        home = next((a for a in members if a.checkpoint == "final"), members[0])
        runs.append(Stage1Run(name=home.name, method=method, config=members[0].stage, arms=tuple(members)))
    return runs

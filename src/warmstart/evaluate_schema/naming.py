"""Run-directory names of the study's models, eval files and training logs (one definition).

Models: ``base`` (student before Stage-1), ``teacher``, one per Stage-1 arm, and each
arm's Stage-2 (GRPO) endpoint ``<arm>+grpo`` (:func:`stage2_model`). Splits:
``validation`` (in-domain) and ``ood`` (out-of-domain) (:data:`SPLITS`). Files, relative
to the run directory: ``eval/<model>__<split>.json`` (:func:`eval_relpath`),
``stage1/<arm>/metrics.jsonl`` and ``stage2/<arm>/metrics.jsonl`` (:func:`metrics_relpath`;
the Stage-2 directory is named by the arm it started from).

Which arms a run has is data: the study writes them to ``<run>/study_config.json``
(its ``arm`` list) and the report reads them from there. :data:`DEFAULT_ARMS` is only
the fallback for run directories without that file: the arms of the study before arms
became configurable, with their labels and report order.
"""

from __future__ import annotations

BASE_MODEL = "base"
"""The student before any post-training."""
TEACHER_MODEL = "teacher"
"""The OPD teacher (a reference point, not trained by the study)."""
DEFAULT_ARMS: tuple[tuple[str, str], ...] = (
    ("sft_early", "SFT (early-stopped)"),
    ("sft_over", "SFT (over-trained)"),
    ("opd", "OPD"),
)
"""(name, label) of the default Stage-1 arms, in report order (the first is the reference arm).

The fallback of a run directory without ``study_config.json``; a study's own arms come
from its config."""
STAGE1_ARMS: tuple[str, ...] = tuple(name for name, _ in DEFAULT_ARMS)
"""Names of :data:`DEFAULT_ARMS`, in report order."""
REFERENCE_ARM = STAGE1_ARMS[0]
"""The default arm every other default arm is compared with (paired differences)."""
STAGE2_SUFFIX = "+grpo"
"""A Stage-2 endpoint is named ``<arm>+grpo`` after the Stage-1 arm it started from."""
SPLITS: dict[str, str] = {"validation": "in-domain", "ood": "out-of-domain"}
"""Evaluation splits and what they measure, in report order."""

BLANK_SPLIT = "validation_blank"
"""File-name split of the text-only ablation: the in-domain split with every image blanked
(base student and teacher only; it shows how much accuracy comes from reading the diagram)."""


def stage2_model(arm: str) -> str:
    """Name of the Stage-2 endpoint started from Stage-1 ``arm`` (``opd`` -> ``opd+grpo``)."""
    return arm + STAGE2_SUFFIX


def stage1_arm(model: str) -> str:
    """The Stage-1 arm a model name belongs to: ``opd+grpo`` -> ``opd``; other names unchanged."""
    return model[: -len(STAGE2_SUFFIX)] if model.endswith(STAGE2_SUFFIX) else model


def study_models(arms: tuple[str, ...] | list[str] = STAGE1_ARMS) -> list[str]:
    """All model names of a study with ``arms``, in report order: base, teacher, arms, arm endpoints."""
    return [BASE_MODEL, TEACHER_MODEL, *arms, *[stage2_model(a) for a in arms]]


def eval_relpath(model: str, split: str) -> str:
    """``eval/<model>__<split>.json``, relative to the run directory."""
    return f"eval/{model}__{split}.json"


def parse_eval_filename(filename: str) -> tuple[str, str] | None:
    """``"opd+grpo__ood.json"`` -> ``("opd+grpo", "ood")``; ``None`` for other names."""
    if not filename.endswith(".json") or "__" not in filename:
        return None
    model, _, split = filename[: -len(".json")].rpartition("__")
    return (model, split) if model and split else None


def metrics_relpath(stage: int, arm: str) -> str:
    """``stage<stage>/<arm>/metrics.jsonl``, relative to the run directory (stage 1 or 2)."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    return f"stage{stage}/{arm}/metrics.jsonl"

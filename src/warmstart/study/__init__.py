"""``warmstart run``: the whole study as a small DAG of cached steps.

::

    data ─┬─ student (stage 0) ─┬─ stage1:<run> for each Stage-1 run ── grpo:<arm> for each arm
          └─ teacher (stage 0) ─┘
    eval:<model>:<split> for base, teacher, every arm and its GRPO endpoint
    (``<arm>+grpo``), on the in-domain validation split and the out-of-domain split  ->  report

The arms are data (``[[arm]]`` tables, :mod:`warmstart.study.arms`): arms with the
same method and settings share one Stage-1 run. The toy study's ``sft_early`` and
``sft_over`` are the ``best/`` and ``final/`` of one over-trained SFT run
(``stage1:sft_over``); ``opd`` is its own run.

Each step's key is the hash of its own config and of its inputs' keys, stored in
``<root>/.steps/<step>.done.json`` when the step finishes. A re-run skips steps whose
key matches, continues an interrupted step from its last checkpoint (``resume``), and
redoes a step whose config or inputs changed (and so everything downstream).
``--force STEP`` redoes one step (and what depends on it).

Independent steps run side by side in worker processes (``run.jobs``, one torch
thread each by default), which is how a 2-core laptop finishes the toy study in
minutes.

Modules: :mod:`~warmstart.study.config` (the typed study file), :mod:`~warmstart.study.arms`
(arms, Stage-1 methods, shared runs), :mod:`~warmstart.study.plan` (the steps),
:mod:`~warmstart.study.execute` (running them), :mod:`~warmstart.study.cli` (the command,
dry run).
"""

from warmstart.evaluate import EvalSettings
from warmstart.study.arms import METHODS, ArmConfig, Stage1Method, Stage1Run, stage1_runs
from warmstart.study.cli import add_arguments, dry_run, run
from warmstart.study.config import (
    GRPO_PRESETS,
    DataConfig,
    ModelSource,
    RunSettings,
    SplitRef,
    StudyConfig,
    deep_merge,
    load_study,
    parse_study,
)
from warmstart.study.execute import execute, is_done, run_step, write_best_arm, write_early_arm
from warmstart.study.plan import EvalJob, Stage1Job, Step, plan

__all__ = [
    "GRPO_PRESETS",
    "METHODS",
    "ArmConfig",
    "DataConfig",
    "EvalJob",
    "EvalSettings",
    "ModelSource",
    "RunSettings",
    "SplitRef",
    "Stage1Job",
    "Stage1Method",
    "Stage1Run",
    "Step",
    "StudyConfig",
    "add_arguments",
    "deep_merge",
    "dry_run",
    "execute",
    "is_done",
    "load_study",
    "parse_study",
    "plan",
    "run",
    "run_step",
    "stage1_runs",
    "write_best_arm",
    "write_early_arm",
]

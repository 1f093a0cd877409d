"""The study's plan: its steps in dependency order, each with its typed job and cache key.

Everything about an arm derives from its ``[[arm]]`` entry here: its Stage-1 run
(shared with the arms of the same method and settings), its folders
``stage1/<name>`` and ``stage2/<name>``, its GRPO step and its eval models
``<name>`` and ``<name>+grpo``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from warmstart.config import config_hash, replace, to_dict
from warmstart.evaluate import EvalSettings
from warmstart.evaluate_schema import BLANK_SPLIT
from warmstart.study.arms import METHODS, Stage1Run, stage1_runs
from warmstart.study.config import SplitRef, StudyConfig

__all__ = ["EvalJob", "Stage1Job", "Step", "plan", "takes_parallel", "with_parallel"]


def with_parallel(cfg: Any, parallel: Any) -> Any:
    """``cfg`` with its ``parallel`` table set to the study's (stage configs that declare one).

    A stage config without a ``parallel`` field is returned as it is (it runs on the CPU
    defaults); the dry run reports such a stage when the study asks for anything else
    (:func:`takes_parallel`).
    """
    if takes_parallel(cfg):
        return replace(cfg, parallel=parallel)
    return cfg


def takes_parallel(cfg: Any) -> bool:
    """Whether a stage config has a ``parallel`` table the study can fill."""
    return is_dataclass(cfg) and "parallel" in {f.name for f in fields(cfg)}


@dataclass(frozen=True)
class Stage1Job:
    """One Stage-1 training run and the arms read from it.

    Attributes:
        method: the Stage-1 method (a key of :data:`~warmstart.study.arms.METHODS`).
        config: its stage config, every path filled in (``out_dir`` is the run's folder).
        best_arms: folders of the arms that are this run's ``best/`` checkpoint and live
            apart from it; each gets the run's training log up to the best step.
    """

    method: str
    config: Any
    best_arms: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalJob:
    """One evaluation: a model on a split -> ``eval/<model_name>__<split name>.json``.

    Its fields are the keyword arguments of ``evaluate_to_file`` (beside ``out`` and
    ``show_progress``), so the step passes them on as they are (:meth:`arguments`).

    Attributes:
        model: checkpoint directory or hub id.
        model_name: the study's name of the model (``base``, ``teacher``, ``<arm>``, ``<arm>+grpo``).
        data: problem source (file or folder).
        split: split inside it (``None``: the whole file).
        blank_images: replace every image by a blank one (the text-only ablation).
        settings: decoding and bootstrap settings (``limit`` and ``rollout`` resolved).
        device: where the evaluated model runs (the study's ``run.device``).
    """

    model: str
    model_name: str
    data: str
    split: str | None
    blank_images: bool
    settings: EvalSettings
    device: str = "cpu"

    def arguments(self) -> dict[str, Any]:
        """The fields by name (``settings`` stays an ``EvalSettings``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Step:
    """One node of the DAG.

    Attributes:
        name: unique name: ``data``, ``student``, ``teacher``, ``stage1:<run>``,
            ``grpo:<arm>``, ``eval:<model>:<split>``, ``report``.
        kind: data | pretrain | stage1 | grpo | eval | report.
        deps: names of the steps whose outputs it reads.
        job: its typed settings (``SynthConfig``, ``PretrainConfig``, :class:`Stage1Job`,
            ``GRPOConfig``, :class:`EvalJob`; ``None`` for the report).
        out: what it writes (folder or file).
        root: the study's run directory (step markers live in ``<root>/.steps``).
        key: hash of its params and its deps' keys (a change upstream redoes downstream).
        total: progress units (training steps), 0 = unknown.
    """

    name: str
    kind: str
    deps: list[str]
    job: Any
    out: Path
    root: Path = Path(".")
    key: str = ""
    total: int = 0

    @property
    def params(self) -> dict[str, Any]:
        """The job as JSON-able data (what the cache key hashes)."""
        return to_dict(self.job) if self.job is not None else {}


def plan(cfg: StudyConfig, root: Path) -> list[Step]:
    """The study's steps in dependency order, each with its cache key."""
    steps: list[Step] = []
    data_dir = root / "data"
    if cfg.data.kind == "synthetic":
        steps.append(Step("data", "data", [], cfg.data.synth, data_dir))
        train_path, val_ref, ood_ref = (
            str(data_dir),
            SplitRef(str(data_dir), "validation"),
            SplitRef(str(data_dir), "ood"),
        )
        train_split = "train"
    else:
        train_path, val_ref, ood_ref = cfg.data.train.path, cfg.data.validation, cfg.data.ood
        train_split = cfg.data.train.split or "train"
    data_deps = ["data"] if cfg.data.kind == "synthetic" else []
    rollout = cfg.rollout
    parallel = cfg.run.parallel()

    def model_step(who: str) -> str:
        src = getattr(cfg, who)
        if src.path:
            return src.path
        out = root / "models" / who
        job = with_parallel(
            replace(src.pretrain, data=train_path, out_dir=str(out), rollout=rollout), parallel
        )
        steps.append(Step(who, "pretrain", data_deps, job, out, total=job.steps))
        return str(out / "final")

    student = model_step("student")
    teacher = model_step("teacher")

    def needs(who: str) -> list[str]:
        """The step that builds ``who`` (student/teacher), when the study builds it."""
        return [] if getattr(cfg, who).path else [who]

    def stage1_step(run: Stage1Run) -> Step:
        method = METHODS[run.method]
        out = root / "stage1" / run.name
        reads_teacher = method.needs_teacher(run.config)
        filled = replace(
            run.config,
            init=student,
            data=train_path,
            train_split=train_split,
            out_dir=str(out),
            rollout=rollout,
            **({"teacher": teacher} if reads_teacher else {}),
        )
        config = method.for_checkpoints(
            with_parallel(filled, parallel), frozenset(a.checkpoint for a in run.arms)
        )
        # The arms that are the run's best/ and live apart from it (the early-stopped SFT arm).
        best_arms = tuple(str(root / "stage1" / a.name) for a in run.arms if a.name != run.name)
        deps = data_deps + needs("student") + (needs("teacher") if reads_teacher else [])
        job = Stage1Job(method=run.method, config=config, best_arms=best_arms)
        return Step(f"stage1:{run.name}", "stage1", deps, job, out, total=method.total(config))

    arm_model: dict[str, str] = {}  # arm -> its Stage-1 checkpoint
    arm_step: dict[str, str] = {}  # arm -> the step that trains it
    for run in stage1_runs(cfg.arm):
        steps.append(stage1_step(run))
        for a in run.arms:
            arm_model[a.name] = str(root / "stage1" / run.name / a.checkpoint)
            arm_step[a.name] = steps[-1].name
    for a in cfg.arm:
        out = root / "stage2" / a.name
        job = with_parallel(
            replace(
                cfg.grpo,
                init=arm_model[a.name],
                data=train_path,
                train_split=train_split,
                out_dir=str(out),
                rollout=rollout,
            ),
            parallel,
        )
        steps.append(
            Step(f"grpo:{a.name}", "grpo", data_deps + [arm_step[a.name]], job, out, total=job.steps)
        )

    models = {"base": (student, needs("student"))}
    if not teacher.startswith(("http://", "https://")):
        models["teacher"] = (teacher, needs("teacher"))
    elif cfg.teacher.eval_path:  # a served teacher is evaluated from its local checkpoint
        models["teacher"] = (cfg.teacher.eval_path, [])
    for a in cfg.arm:
        models[a.name] = (arm_model[a.name], [arm_step[a.name]])
        models[f"{a.name}+grpo"] = (str(root / "stage2" / a.name / "final"), [f"grpo:{a.name}"])
    evals = [(m, sp, ref, False) for sp, ref in (("validation", val_ref), ("ood", ood_ref)) for m in models]
    if cfg.eval.blank_ablation:  # text-only ablation of the two models trained from scratch (or given)
        evals += [(m, BLANK_SPLIT, val_ref, True) for m in ("base", "teacher") if m in models]
    for model, split_name, ref, blank in evals:
        path, deps = models[model]
        settings = replace(cfg.eval, limit=ref.limit or cfg.eval.limit, rollout=rollout)
        job = EvalJob(
            model=path,
            model_name=model,
            data=ref.path,
            split=ref.split,
            blank_images=blank,
            settings=settings,
            device=cfg.run.device,
        )
        steps.append(
            Step(
                f"eval:{model}:{split_name}",
                "eval",
                data_deps + deps,
                job,
                root / "eval" / f"{model}__{split_name}.json",
            )
        )
    steps.append(Step("report", "report", [s.name for s in steps if s.kind == "eval"], None, root))
    by_name = {s.name: s for s in steps}
    for s in steps:  # keys: own params + deps' keys (so a change upstream redoes downstream)
        s.root = root
        s.key = config_hash({"kind": s.kind, "params": s.params, "deps": [by_name[d].key for d in s.deps]})
    return steps

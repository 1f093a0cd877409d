"""The study's plan: its steps in dependency order, each with its typed job and cache key.

Everything about an arm derives from its ``[[arm]]`` entry here: its Stage-1 run
(shared with the arms of the same method and settings), its folders
``stage1/<name>`` and ``stage2/<name>``, its GRPO step and its eval models
``<name>`` and ``<name>+grpo``.

With ``[stage0]`` a ``stage0`` step checks both models before any Stage-1 run (and
fixes the matched-outcome target). With ``lr_grid`` each Stage-1 run is one step per
learning rate (``stage1:<run>@lr<lr>``, folders ``stage1/<run>/lr<lr>``) and a
``select:<run>`` step that picks the rate and links its checkpoints into
``stage1/<run>``. With ``seeds`` = S every arm has S - 1 replicas ``<arm>@s<k>``
(steps ``stage1:<run>@s<k>``, ``grpo:<arm>@s<k>``; the chosen rate of seed 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from warmstart.config import ConfigError, config_hash, replace, to_dict
from warmstart.data.synthetic import GENERATOR_VERSION
from warmstart.evaluate import EvalSettings
from warmstart.evaluate_schema import BLANK_SPLIT
from warmstart.study.arms import METHODS, Stage1Run, stage1_runs
from warmstart.study.config import SplitRef, StudyConfig
from warmstart.study.stage0 import Stage0Job

__all__ = [
    "EvalJob",
    "SelectJob",
    "Stage1Job",
    "Step",
    "lr_name",
    "plan",
    "replica",
    "takes_parallel",
    "with_parallel",
]


def replica(name: str, k: int) -> str:
    """The name of seed ``k`` of an arm or run: itself for 0, ``<name>@s<k>`` otherwise."""
    return name if k == 0 else f"{name}@s{k}"


def lr_name(lr: float) -> str:
    """The folder of one learning rate of a grid: ``lr0.001``."""
    return f"lr{lr:g}"


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
        arm_views: ``(folder, checkpoint)`` of the arms that are one of this run's
            checkpoints other than ``final/`` and live apart from it (the early-stopped and
            matched arms); each gets the run's training log up to that checkpoint's step.
        matched_from: ``stage0.json`` whose ``matched_target`` the run's config takes when it
            starts (known only after stage 0); empty: none.
        lr_from: ``grid.json`` of a ``select`` step whose ``chosen_lr`` the run trains at
            (the seed replicas of a grid); empty: the config's own.
    """

    method: str
    config: Any
    arm_views: tuple[tuple[str, str], ...] = ()
    matched_from: str = ""
    lr_from: str = ""


@dataclass(frozen=True)
class SelectJob:
    """The learning-rate choice of one Stage-1 run trained on a grid.

    Attributes:
        lrs: the grid.
        runs: the folders of its runs, in grid order.
        arm_views: as :attr:`Stage1Job.arm_views`, written from the chosen run.
    """

    lrs: tuple[float, ...]
    runs: tuple[str, ...]
    arm_views: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EvalJob:
    """One evaluation: a model on a split -> ``eval/<model_name>__<split name>.json``.

    Its fields are the keyword arguments of ``evaluate_to_file`` (beside ``out`` and
    ``show_progress``), so the step passes them on as they are (:meth:`arguments`).

    Attributes:
        model: checkpoint directory or hub id.
        model_name: the study's name of the model (``base``, ``teacher``, ``<arm>``, ``<arm>+grpo``).
        not_reached_from: a matched arm's Stage-1 ``result.json``: when its checkpoint was never
            reached, the eval writes a ``not_reached`` record instead (empty: not a matched arm).
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
    not_reached_from: str = ""

    def arguments(self) -> dict[str, Any]:
        """The fields by name that ``evaluate_to_file`` takes (``settings`` stays an ``EvalSettings``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "not_reached_from"}


@dataclass
class Step:
    """One node of the DAG.

    Attributes:
        name: unique name: ``data``, ``student``, ``teacher``, ``stage0``, ``stage1:<run>``
            (``stage1:<run>@lr<lr>``, ``stage1:<run>@s<k>``), ``select:<run>``,
            ``grpo:<arm>``, ``eval:<model>:<split>``, ``report``.
        kind: data | pretrain | stage0 | stage1 | select | grpo | eval | report.
        deps: names of the steps whose outputs it reads.
        job: its typed settings (``SynthConfig``, ``PretrainConfig``, ``Stage0Job``,
            :class:`Stage1Job`, :class:`SelectJob`, ``GRPOConfig``, :class:`EvalJob`; ``None``
            for the report).
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

    served = teacher.startswith(("http://", "https://"))
    local_teacher = cfg.teacher.eval_path if served else teacher
    gate: list[str] = []  # the stage-0 check every Stage-1 run waits for
    stage0_file = root / "stage0.json"
    if cfg.stage0 is not None:
        if not local_teacher:
            raise ConfigError("[stage0] with a served teacher needs teacher.eval_path (a local checkpoint)")
        job0 = Stage0Job(
            student=student,
            teacher=local_teacher,
            data=train_path,
            check=cfg.stage0,
            rollout=rollout,
            device=cfg.run.device,
        )
        deps0 = data_deps + needs("student") + ([] if served else needs("teacher"))
        steps.append(Step("stage0", "stage0", deps0, job0, stage0_file))
        gate = ["stage0"]

    def views(run: Stage1Run, k: int) -> tuple[tuple[str, str], ...]:
        """The arms of ``run`` (seed ``k``) that are one of its checkpoints and live apart from it."""
        return tuple(
            (str(root / "stage1" / replica(a.name, k)), a.checkpoint) for a in run.arms if a.name != run.name
        )

    def filled(run: Stage1Run, k: int, out: Path, lr: float | None = None) -> Any:
        """The run's stage config for seed ``k`` (and learning rate ``lr``), every path filled in."""
        method = METHODS[run.method]
        reads_teacher = method.needs_teacher(run.config)
        cfg1 = replace(
            run.config,
            init=student,
            data=train_path,
            train_split=train_split,
            out_dir=str(out),
            rollout=rollout,
            seed=run.config.seed + k,
            **({"teacher": teacher} if reads_teacher else {}),
        )
        if lr is not None:
            cfg1 = replace(cfg1, optim=replace(cfg1.optim, lr=lr))
        return method.for_checkpoints(
            with_parallel(cfg1, parallel), frozenset(a.checkpoint for a in run.arms)
        )

    def run_deps(run: Stage1Run) -> list[str]:
        reads_teacher = METHODS[run.method].needs_teacher(run.config)
        return data_deps + needs("student") + (needs("teacher") if reads_teacher else []) + gate

    arm_model: dict[str, str] = {}  # arm (replica) -> its Stage-1 checkpoint
    arm_step: dict[str, str] = {}  # arm (replica) -> the step that makes it
    run_result: dict[str, str] = {}  # arm (replica) -> its run's result.json
    for run in stage1_runs(cfg.arm):
        method = METHODS[run.method]
        matched_from = str(stage0_file) if any(a.checkpoint == "matched" for a in run.arms) else ""
        for k in range(cfg.seeds):
            home = root / "stage1" / replica(run.name, k)
            if k == 0 and cfg.lr_grid:
                members = []
                for lr in cfg.lr_grid:
                    out = home / lr_name(lr)
                    config = filled(run, k, out, lr)
                    job = Stage1Job(method=run.method, config=config, matched_from=matched_from)
                    name = f"stage1:{run.name}@{lr_name(lr)}"
                    steps.append(Step(name, "stage1", run_deps(run), job, out, total=method.total(config)))
                    members.append(steps[-1])
                sel = SelectJob(
                    lrs=tuple(cfg.lr_grid), runs=tuple(str(m.out) for m in members), arm_views=views(run, k)
                )
                steps.append(
                    Step(f"select:{run.name}", "select", [m.name for m in members], sel, home / "grid.json")
                )
            else:
                lr_from = str(root / "stage1" / run.name / "grid.json") if cfg.lr_grid else ""
                config = filled(run, k, home)
                job = Stage1Job(
                    method=run.method,
                    config=config,
                    arm_views=views(run, k),
                    matched_from=matched_from,
                    lr_from=lr_from,
                )
                deps = run_deps(run) + ([f"select:{run.name}"] if lr_from else [])
                steps.append(
                    Step(
                        f"stage1:{replica(run.name, k)}",
                        "stage1",
                        deps,
                        job,
                        home,
                        total=method.total(config),
                    )
                )
            for a in run.arms:
                name = replica(a.name, k)
                arm_model[name] = str(home / a.checkpoint)
                arm_step[name] = steps[-1].name
                run_result[name] = str(home / "result.json")
    grpo_arms = [(replica(a.name, k), k) for k in range(cfg.seeds) for a in cfg.arm if a.grpo]
    for name, k in grpo_arms:
        out = root / "stage2" / name
        job = with_parallel(
            replace(
                cfg.grpo,
                init=arm_model[name],
                data=train_path,
                train_split=train_split,
                out_dir=str(out),
                rollout=rollout,
                seed=cfg.grpo.seed + k,
            ),
            parallel,
        )
        steps.append(Step(f"grpo:{name}", "grpo", data_deps + [arm_step[name]], job, out, total=job.steps))

    models = {"base": (student, needs("student"))}
    if not served:
        models["teacher"] = (teacher, needs("teacher"))
    elif cfg.teacher.eval_path:  # a served teacher is evaluated from its local checkpoint
        models["teacher"] = (cfg.teacher.eval_path, [])
    matched_arms = {
        replica(a.name, k) for k in range(cfg.seeds) for a in cfg.arm if a.checkpoint == "matched"
    }
    for k in range(cfg.seeds):
        for a in cfg.arm:
            name = replica(a.name, k)
            models[name] = (arm_model[name], [arm_step[name]])
            if a.grpo:
                models[f"{name}+grpo"] = (str(root / "stage2" / name / "final"), [f"grpo:{name}"])
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
            not_reached_from=run_result[model] if model in matched_arms else "",
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
        # the data step also hashes the generator's version: new generator code, new world
        gen = {"generator": GENERATOR_VERSION} if s.kind == "data" else {}
        params = portable_params(s.params, root)
        s.key = config_hash(
            {"kind": s.kind, "params": params, "deps": [by_name[d].key for d in s.deps], **gen}
        )
    return steps


RUN_DIR = "<run>"
"""What the run directory's own path is hashed as (:func:`portable_params`)."""


def portable_params(params: Any, root: Path) -> str:
    """A step's parameters as the JSON its key hashes, with the run directory's path as ``<run>``.

    Every job names files inside the run directory by absolute path; hashing them as they
    are would tie the cache to where the directory is, so a run copied or moved elsewhere
    (or a finished ``make run`` copied as the start of a larger study) would redo every
    step. Paths outside the run directory (a given checkpoint, a data file) stay as they
    are: moving those is a change of input.
    """
    blob = json.dumps(to_dict(params), sort_keys=True, default=str)
    for form in sorted({str(root), str(Path(root).absolute())}, key=len, reverse=True):
        quoted = json.dumps(form)[:-1]  # '"<path>' as a JSON string holding it starts
        blob = blob.replace(quoted + "/", f'"{RUN_DIR}/').replace(quoted + '"', f'"{RUN_DIR}"')
    return blob

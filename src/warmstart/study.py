"""``warmstart run``: the whole study as a small DAG of cached steps.

::

    data ─┬─ student (stage 0) ─┬─ sft (one over-trained run; its best/ is the early arm) ─┬─ grpo:sft_early
          │                     │                                                        └─ grpo:sft_over
          └─ teacher (stage 0) ─┴─ opd ─────────────────────────────────────────────────── grpo:opd
    eval:<model>:<split> for base, teacher, the 3 Stage-1 arms and their 3 GRPO endpoints,
    on the in-domain validation split and the out-of-domain split  ->  report

Each step's key is the hash of its own config and of its inputs' keys, stored in
``<step dir>/.done.json`` when the step finishes. A re-run skips steps whose key
matches, continues an interrupted step from its last checkpoint (``resume``), and
redoes a step whose config or inputs changed (and so everything downstream).
``--force STEP`` redoes one step (and what depends on it).

Independent steps run side by side in worker processes (``run.jobs``, one torch
thread each by default), which is how a 2-core laptop finishes the toy study in
minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from warmstart.config import ConfigError, config_hash, from_dict, load_toml, to_dict
from warmstart.evaluate_schema import BLANK_SPLIT

log = logging.getLogger(__name__)

STAGE1_ARMS = ("sft_early", "sft_over", "opd")


@dataclass(frozen=True)
class SplitRef:
    """One split of one problem source.

    Attributes:
        path: file or folder understood by ``load_problems``.
        split: split name inside it (``None``: the whole file).
        limit: use only the first N problems (0 = all).
    """

    path: str = ""
    split: str | None = None
    limit: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Where the problems come from.

    Attributes:
        kind: ``synthetic`` (the study generates the embedded world into ``<run>/data``)
            or ``files`` (the three splits below point at real data).
        synth: generator settings for ``kind = "synthetic"`` (keys of ``SynthConfig``).
        train: training problems (Stage-1 and Stage-2) for ``kind = "files"``.
        validation: in-domain evaluation split (also SFT validation) for ``kind = "files"``.
        ood: out-of-domain evaluation split for ``kind = "files"``.
    """

    kind: Literal["synthetic", "files"] = "synthetic"
    synth: dict = field(default_factory=dict)
    train: SplitRef = field(default_factory=SplitRef)
    validation: SplitRef = field(default_factory=SplitRef)
    ood: SplitRef = field(default_factory=SplitRef)


@dataclass(frozen=True)
class ModelSource:
    """The base student or the teacher.

    Attributes:
        path: checkpoint directory or hub id (teacher: also an ``http://`` URL of a
            server speaking the OpenAI protocol with ``prompt_logprobs``). Empty with
            ``pretrain``: the study trains a toy model itself.
        pretrain: stage-0 settings (keys of ``PretrainConfig`` except data/out_dir) when
            the study builds this model from scratch.
        eval_path: checkpoint to evaluate when ``path`` is a server URL (evaluation samples
            in-process); empty: a served teacher is not evaluated.
    """

    path: str = ""
    pretrain: dict = field(default_factory=dict)
    eval_path: str = ""


@dataclass(frozen=True)
class EvalSettings:
    """Evaluation of every model.

    Attributes:
        n: samples per problem (pass@k up to n).
        temperature: sampling temperature of those samples.
        top_p: nucleus of those samples.
        max_new_tokens: max response tokens.
        greedy: also decode one greedy response per problem.
        limit: evaluate only the first N problems of each split (0 = all).
        bootstrap: bootstrap resamples for intervals.
        seed: sampling and bootstrap seed.
        blank_ablation: also evaluate the base student and the teacher on the in-domain
            split with every image blanked (text-only ablation), as split ``validation_blank``.
    """

    n: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    greedy: bool = True
    limit: int = 0
    bootstrap: int = 10_000
    seed: int = 0
    blank_ablation: bool = True


@dataclass(frozen=True)
class RunSettings:
    """How the study executes.

    Attributes:
        jobs: steps run side by side (worker processes).
        threads_per_job: torch threads in each worker.
        device: torch device for every stage.
    """

    jobs: int = 2
    threads_per_job: int = 1
    device: str = "cpu"


@dataclass(frozen=True)
class StudyConfig:
    """The whole two-stage study.

    Attributes:
        name: study name; outputs go to ``<out_root>/<name>``.
        out_root: parent folder of run directories.
        data: problem sources.
        student: the base student.
        teacher: the teacher (OPD, and teacher-generated SFT solutions if chosen).
        sft: Stage-1 SFT settings (keys of ``SFTConfig`` except init/data/out_dir/arm).
        opd: Stage-1 OPD settings (keys of ``OPDConfig`` except init/teacher/data/out_dir).
        grpo: Stage-2 settings (keys of ``GRPOConfig`` except init/data/out_dir), or a
            preset name in ``grpo_preset`` whose values these override.
        grpo_preset: named Stage-2 preset (``geo3k-easyr1``) or empty.
        eval: evaluation settings.
        run: execution settings.
    """

    name: str = "toy"
    out_root: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    student: ModelSource = field(default_factory=ModelSource)
    teacher: ModelSource = field(default_factory=ModelSource)
    sft: dict = field(default_factory=dict)
    opd: dict = field(default_factory=dict)
    grpo: dict = field(default_factory=dict)
    grpo_preset: str = ""
    eval: EvalSettings = field(default_factory=EvalSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def validate(self) -> None:
        if self.data.kind == "files":
            for name in ("train", "validation", "ood"):
                if not getattr(self.data, name).path:
                    raise ConfigError(f"data.{name}.path is required when data.kind = 'files'")
        for who in ("student", "teacher"):
            src = getattr(self, who)
            if not src.path and not src.pretrain:
                raise ConfigError(
                    f"{who}: give a path (checkpoint, hub id or URL) or a [{who}.pretrain] table"
                )
        if self.grpo_preset and self.grpo_preset not in GRPO_PRESETS:
            raise ConfigError(f"grpo_preset {self.grpo_preset!r} is not one of {sorted(GRPO_PRESETS)}")
        self._check_stage_tables()

    def _check_stage_tables(self) -> None:
        """Validate the stage tables now (unknown keys, bad values), not minutes into a run."""
        from warmstart.stages.grpo import GRPOConfig
        from warmstart.stages.opd import OPDConfig
        from warmstart.stages.pretrain import PretrainConfig
        from warmstart.stages.sft import SFTConfig

        stub = {"init": "-", "data": "-"}
        checks = [
            ("sft", SFTConfig, {**self.sft, **stub, "teacher": "-"}),
            ("opd", OPDConfig, {**self.opd, **stub, "teacher": "-"}),
            ("grpo", GRPOConfig, {**deep_merge(GRPO_PRESETS.get(self.grpo_preset, {}), self.grpo), **stub}),
        ]
        for who in ("student", "teacher"):
            if getattr(self, who).pretrain:
                checks.append(
                    (f"{who}.pretrain", PretrainConfig, {**getattr(self, who).pretrain, "data": "-"})
                )
        for name, cls, data in checks:
            try:
                from_dict(cls, data)
            except ConfigError as e:
                raise ConfigError(f"[{name}] {e}") from None


# The widely used Geometry3K GRPO recipe (EasyR1's example), written out explicitly.
GRPO_PRESETS: dict[str, dict[str, Any]] = {
    "geo3k-easyr1": {
        "optim": {
            "lr": 1e-6,
            "weight_decay": 0.01,
            "warmup_steps": 0,
            "grad_clip": 1.0,
            "schedule": "constant",
            "dtype": "bfloat16",
        },
        "prompts_per_step": 512,  # rollout batch
        "mini_batches": 4,  # update batch 128 = 512 / 4
        "update_epochs": 1,
        "n": 5,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_prompt_tokens": 2048,
        "max_new_tokens": 2048,
        "reward": "0.9*accuracy+0.1*format",
        "advantage": "grpo",
        # clip_high 0.3 is this recipe's clip-higher; most frameworks default to 0.2 for both.
        "loss": {
            "policy_loss": "ppo_clip",
            "agg": "token-mean",
            "clip_low": 0.2,
            "clip_high": 0.3,
            "kl_coef": 0.01,
            "kl_estimator": "k3",
        },
        # 15 epochs over the 2,101 Geometry3K training problems at 512 prompts per step.
        "steps": 62,
    }
}


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---- the plan -------------------------------------------------------------------------------
@dataclass
class Step:
    """One node of the DAG."""

    name: str
    kind: str  # data | pretrain | sft | opd | grpo | eval | report
    deps: list[str]
    params: dict[str, Any]
    out: Path
    root: Path = Path(".")  # the study's run directory (step markers live in <root>/.steps)
    key: str = ""
    total: int = 0  # progress units (training steps), 0 = unknown


def plan(cfg: StudyConfig, root: Path) -> list[Step]:
    """The study's steps in dependency order, each with its cache key."""
    steps: list[Step] = []
    data_dir = root / "data"
    if cfg.data.kind == "synthetic":
        steps.append(Step("data", "data", [], {"synth": cfg.data.synth}, data_dir))
        train_path, val_ref, ood_ref = (
            str(data_dir),
            SplitRef(str(data_dir), "validation"),
            SplitRef(str(data_dir), "ood"),
        )
        train_split, val_split = "train", "validation"
    else:
        train_path, val_ref, ood_ref = cfg.data.train.path, cfg.data.validation, cfg.data.ood
        train_split, val_split = cfg.data.train.split or "train", cfg.data.validation.split or "validation"
    data_deps = ["data"] if cfg.data.kind == "synthetic" else []
    common = {"data": train_path, "train_split": train_split}

    def model_step(who: str) -> str:
        src: ModelSource = getattr(cfg, who)
        if src.path:
            return src.path
        p = {"data": train_path, **src.pretrain}
        steps.append(
            Step(
                who,
                "pretrain",
                data_deps,
                p,
                root / "models" / who,
                total=int(src.pretrain.get("steps", 600)),
            )
        )
        return str(root / "models" / who / "final")

    student = model_step("student")
    teacher = model_step("teacher")

    def needs(who: str) -> list[str]:
        """The step that builds ``who`` (student/teacher), when the study builds it."""
        return [] if getattr(cfg, who).path else [who]

    # SFT early stopping selects on a held-out split other than the one the study reports
    # (synthetic: "test"), so the reported in-domain accuracy carries no selection bias.
    sft_val = cfg.sft.get("val_split", "test" if cfg.data.kind == "synthetic" else val_split)
    sft_params = {**cfg.sft, **common, "val_split": sft_val, "init": student, "arm": "over"}
    if cfg.sft.get("solutions") == "teacher":
        sft_params["teacher"] = teacher
    steps.append(
        Step(
            "sft",
            "sft",
            data_deps
            + needs("student")
            + (needs("teacher") if cfg.sft.get("solutions") == "teacher" else []),
            sft_params,
            root / "stage1" / "sft_over",
            total=int(cfg.sft.get("max_steps", 1000)),
        )
    )
    steps.append(
        Step(
            "opd",
            "opd",
            data_deps + needs("student") + needs("teacher"),
            {**cfg.opd, **common, "init": student, "teacher": teacher},
            root / "stage1" / "opd",
            total=int(cfg.opd.get("steps", 100)),
        )
    )
    arm_model = {
        "sft_early": str(root / "stage1" / "sft_over" / "best"),
        "sft_over": str(root / "stage1" / "sft_over" / "final"),
        "opd": str(root / "stage1" / "opd" / "final"),
    }
    arm_dep = {"sft_early": "sft", "sft_over": "sft", "opd": "opd"}
    grpo_base = deep_merge(GRPO_PRESETS.get(cfg.grpo_preset, {}), cfg.grpo)
    for arm in STAGE1_ARMS:
        steps.append(
            Step(
                f"grpo:{arm}",
                "grpo",
                data_deps + [arm_dep[arm]],
                {**grpo_base, **common, "init": arm_model[arm]},
                root / "stage2" / arm,
                total=int(grpo_base.get("steps", 100)),
            )
        )
    models = {"base": (student, needs("student"))}
    if not teacher.startswith(("http://", "https://")):
        models["teacher"] = (teacher, needs("teacher"))
    elif cfg.teacher.eval_path:  # a served teacher is evaluated from its local checkpoint
        models["teacher"] = (cfg.teacher.eval_path, [])
    for arm in STAGE1_ARMS:
        models[arm] = (arm_model[arm], [arm_dep[arm]])
        models[f"{arm}+grpo"] = (str(root / "stage2" / arm / "final"), [f"grpo:{arm}"])
    evals = [(m, sp, ref, False) for sp, ref in (("validation", val_ref), ("ood", ood_ref)) for m in models]
    if cfg.eval.blank_ablation:  # text-only ablation of the two models trained from scratch (or given)
        evals += [(m, BLANK_SPLIT, val_ref, True) for m in ("base", "teacher") if m in models]
    for model, split_name, ref, blank in evals:
        path, deps = models[model]
        steps.append(
            Step(
                f"eval:{model}:{split_name}",
                "eval",
                data_deps + deps,
                {
                    "model": path,
                    "model_name": model,
                    "data": ref.path,
                    "split": ref.split,
                    "limit": ref.limit or cfg.eval.limit,
                    "blank_images": blank,
                    **{k: v for k, v in to_dict(cfg.eval).items() if k not in ("limit", "blank_ablation")},
                },
                root / "eval" / f"{model}__{split_name}.json",
            )
        )
    steps.append(Step("report", "report", [s.name for s in steps if s.kind == "eval"], {}, root))
    by_name = {s.name: s for s in steps}
    for s in steps:  # keys: own params + deps' keys (so a change upstream redoes downstream)
        s.root = root
        s.key = config_hash({"kind": s.kind, "params": s.params, "deps": [by_name[d].key for d in s.deps]})
    return steps


# ---- running one step -------------------------------------------------------------------------
def _marker(step: Step, what: str) -> Path:
    return step.root / ".steps" / f"{step.name.replace(':', '__')}.{what}.json"


def _done_file(step: Step) -> Path:
    return _marker(step, "done")


def is_done(step: Step) -> bool:
    f = _done_file(step)
    return f.exists() and json.loads(f.read_text()).get("key") == step.key


def run_step(step: Step, threads: int, show_progress: bool = False) -> dict:
    """Execute one step in this process (called in a worker)."""
    import torch

    torch.set_num_threads(max(1, threads))
    started = _started_file(step)
    resume = started.exists() and json.loads(started.read_text()).get("key") == step.key
    if not resume and step.kind not in ("report",) and step.out.exists():
        shutil.rmtree(step.out) if step.out.is_dir() else step.out.unlink()
    started.parent.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps({"key": step.key}))
    t0 = time.time()
    p = step.params
    if step.kind == "data":
        from warmstart.data.synthetic import SynthConfig, generate

        result = generate(from_dict(SynthConfig, p["synth"]), step.out)
    elif step.kind == "pretrain":
        from warmstart.stages.pretrain import PretrainConfig, pretrain

        result = pretrain(
            from_dict(PretrainConfig, {**p, "out_dir": str(step.out)}),
            resume=resume,
            show_progress=show_progress,
        )
    elif step.kind == "sft":
        from warmstart.stages.sft import SFTConfig, train_sft

        result = train_sft(
            from_dict(SFTConfig, {**p, "out_dir": str(step.out)}), resume=resume, show_progress=show_progress
        )
        write_early_arm(step.out, step.root / "stage1" / "sft_early", result)
    elif step.kind == "opd":
        from warmstart.stages.opd import OPDConfig, train_opd

        result = train_opd(
            from_dict(OPDConfig, {**p, "out_dir": str(step.out)}), resume=resume, show_progress=show_progress
        )
    elif step.kind == "grpo":
        from warmstart.stages.grpo import GRPOConfig, train_grpo

        result = train_grpo(
            from_dict(GRPOConfig, {**p, "out_dir": str(step.out)}), resume=resume, show_progress=show_progress
        )
    elif step.kind == "eval":
        from warmstart.evaluate import evaluate_to_file

        result = evaluate_to_file(
            model=p["model"],
            model_name=p["model_name"],
            data=p["data"],
            split=p["split"],
            out=step.out,
            n=p["n"],
            temperature=p["temperature"],
            top_p=p["top_p"],
            max_new_tokens=p["max_new_tokens"],
            greedy=p["greedy"],
            limit=p["limit"] or None,
            bootstrap=p["bootstrap"],
            seed=p["seed"],
            show_progress=show_progress,
            blank_images=p.get("blank_images", False),
        )
    elif step.kind == "report":
        from warmstart.report import build_report

        result = build_report(step.out)
    else:  # pragma: no cover - plan() only makes the kinds above
        raise ValueError(step.kind)
    info = {"key": step.key, "seconds": time.time() - t0, "result": _summary(result)}
    done = _done_file(step)
    tmp = done.with_name(done.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str))
    os.replace(tmp, done)
    return info


def _started_file(step: Step) -> Path:
    return _marker(step, "started")


def write_early_arm(over_dir: Path, early_dir: Path, result: dict) -> None:
    """Give the early-stopped arm its own folder: its training log is the over run's up to the best step.

    The over-trained run passes through the early arm's best checkpoint (``best/``, the
    same weights a standalone early run would keep: same seed, same data order), so the
    study trains SFT once and reads both arms from it.
    """
    early_dir.mkdir(parents=True, exist_ok=True)
    rows = [ln for ln in (over_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    keep = [ln for ln in rows if json.loads(ln)["step"] <= result["best_step"]]
    (early_dir / "metrics.jsonl").write_text("".join(ln + "\n" for ln in keep))
    info = {
        "derived_from": str(over_dir),
        "model": result["early_model"],
        "best_step": result["best_step"],
        "best_val_accuracy": result["best_val_accuracy"],
    }
    (early_dir / "result.json").write_text(json.dumps(info, indent=2))


def _summary(result: Any) -> Any:
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return str(result)[:200]


def _worker(step: Step, threads: int, queue) -> None:
    logging.basicConfig(level=logging.WARNING)
    try:
        info = run_step(step, threads)
        queue.put((step.name, "ok", info))
    except BaseException as e:  # report every failure to the parent, never hang it
        queue.put((step.name, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _progress_units(step: Step) -> int:
    """Training steps logged so far (from metrics.jsonl), for the live display."""
    m = step.out / "metrics.jsonl"
    if step.kind not in ("pretrain", "sft", "opd", "grpo") or not m.exists():
        return 0
    try:
        last = m.read_text().strip().splitlines()[-1]
        return int(json.loads(last)["step"])
    except (IndexError, ValueError, KeyError):
        return 0


def execute(
    cfg: StudyConfig,
    root: Path,
    force: list[str] | None = None,
    only: list[str] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run every step not already done, ``run.jobs`` at a time; returns per-step timing."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    steps = plan(cfg, root)
    by_name = {s.name: s for s in steps}
    for f in force or []:
        if f not in by_name and not any(n.startswith(f + ":") for n in by_name):
            raise ConfigError(f"--force {f!r}: no such step; steps: {', '.join(by_name)}")
    forced = {n for n in by_name for f in (force or []) if n == f or n.startswith(f + ":")}
    changed = True
    while changed:  # everything downstream of a forced step is redone too
        changed = False
        for s in steps:
            if s.name not in forced and any(d in forced for d in s.deps):
                forced.add(s.name)
                changed = True
    for n in forced:
        for f in (_done_file(by_name[n]), _started_file(by_name[n])):
            f.unlink(missing_ok=True)
    todo = [s for s in steps if not is_done(s)]
    if only:
        todo = [s for s in todo if s.name in only]
    timings: dict[str, Any] = {
        s.name: json.loads(_done_file(s).read_text())["seconds"] for s in steps if is_done(s)
    }
    console = Console(stderr=True)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    running: dict[str, Any] = {}
    pending = list(todo)
    failed: dict[str, str] = {}
    t_start = time.time()
    cols = [
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*cols, console=console, disable=not show_progress) as prog:
        overall = prog.add_task(f"study {cfg.name}", total=len(steps), completed=len(steps) - len(todo))
        tasks: dict[str, Any] = {}
        while pending or running:
            ready = [s for s in pending if all(d not in failed and (is_done(by_name[d])) for d in s.deps)]
            blocked = [s for s in pending if any(d in failed for d in s.deps)]
            for s in blocked:
                pending.remove(s)
                failed[s.name] = "skipped: an input step failed"
            while ready and len(running) < cfg.run.jobs:
                s = ready.pop(0)
                pending.remove(s)
                proc = ctx.Process(target=_worker, args=(s, cfg.run.threads_per_job, queue), daemon=False)
                proc.start()
                running[s.name] = (proc, time.time())
                tasks[s.name] = prog.add_task(s.name, total=s.total or None)
            try:
                name, status, info = queue.get(timeout=1.0)
            except Exception:  # queue.Empty: refresh the live display
                for n, task in tasks.items():
                    if n in running and by_name[n].total:
                        prog.update(task, completed=_progress_units(by_name[n]))
                for n, (proc, _) in list(running.items()):
                    if not proc.is_alive() and proc.exitcode not in (0, None):
                        failed[n] = f"worker died with exit code {proc.exitcode}"
                        running.pop(n)
                        prog.remove_task(tasks.pop(n))
                continue
            proc, t0 = running.pop(name)
            proc.join()
            prog.remove_task(tasks.pop(name))
            prog.advance(overall)
            if status == "ok":
                timings[name] = info["seconds"]
            else:
                failed[name] = info
                console.print(f"[red]step {name} failed[/red]:\n{info}")
    summary = {
        "wall_s": time.time() - t_start,
        "ran": [s.name for s in todo if s.name in timings and s.name not in failed],
        "steps_s": timings,
        "failed": sorted(failed),
    }
    (root / "study_timing.json").write_text(json.dumps(summary, indent=2))
    if failed:
        raise RuntimeError(
            f"{len(failed)} step(s) failed: {', '.join(sorted(failed))}; fix and re-run to continue"
        )
    return summary


# ---- dry run ------------------------------------------------------------------------------------
def dry_run(cfg: StudyConfig, root: Path) -> list[str]:
    """Print the plan; return the problems found (missing paths, models, servers)."""
    found: dict[str, list[str]] = {}  # problem -> the steps that need the missing thing
    steps = plan(cfg, root)
    built = (
        {str(s.out) for s in steps}
        | {str(s.out / "final") for s in steps}
        | {str(s.out / "best") for s in steps}
    )

    def add(problem: str, step: str) -> None:
        found.setdefault(problem, []).append(step)

    def check_model(path: str, what: str) -> None:
        if not path or path in built or any(path.startswith(b) for b in built):
            return
        if path.startswith(("http://", "https://")):
            from urllib.request import urlopen

            try:
                urlopen(path.rstrip("/") + "/health", timeout=3).read()
            except Exception as e:  # noqa: BLE001 - report any failure to reach it
                add(
                    f"server {path} is not reachable ({e}); start it, e.g. "
                    "`vllm serve <teacher> ...` or `warmstart serve --model DIR`",
                    what,
                )
            return
        p = Path(path)
        if p.exists():
            if not (p / "config.json").exists():
                add(f"{path} exists but has no config.json (not a checkpoint)", what)
            return
        if not path.startswith((".", "/")) and len(path.split("/")) == 2:
            from huggingface_hub import try_to_load_from_cache

            if try_to_load_from_cache(path, "config.json") is None:
                add(
                    f"model {path} is a hub id that is not in the local cache: it needs network access "
                    "(or download it and give the local directory)",
                    what,
                )
            return
        add(f"model {path} does not exist", what)

    def check_data(ref_path: str, what: str) -> None:
        if ref_path and ref_path not in built and not Path(ref_path).exists():
            add(f"data {ref_path} does not exist", what)

    print(f"study {cfg.name} -> {root}")
    for s in steps:
        state = "done" if is_done(s) else ("partial" if _started_file(s).exists() else "todo")
        print(f"  [{state:>7}] {s.name:<32} <- {', '.join(s.deps) or '-'}")
        if s.kind in ("sft", "opd", "grpo", "eval"):
            check_model(s.params.get("init") or s.params.get("model", ""), s.name)
            check_data(s.params.get("data", ""), s.name)
        if s.kind == "opd":
            check_model(s.params["teacher"], s.name)
    if cfg.teacher.path.startswith(("http://", "https://")) and not cfg.teacher.eval_path:
        print("  note: the teacher is served over HTTP and has no teacher.eval_path, so it is not evaluated")
    for problem, needed_by in found.items():
        print(f"  missing: {problem}\n           needed by: {', '.join(dict.fromkeys(needed_by))}")
    print("ready" if not found else f"{len(found)} problem(s): the study cannot run until they are fixed")
    return list(found)


def load_study(path: str | Path) -> StudyConfig:
    return load_toml(StudyConfig, path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/toy.toml", help="study TOML (default: configs/toy.toml)")
    parser.add_argument("--out", default=None, help="run directory (default: <out_root>/<name>)")
    parser.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STEP",
        help="redo STEP (and everything downstream); a prefix like 'eval' or 'grpo' names a group",
    )
    parser.add_argument("--only", action="append", default=[], metavar="STEP", help="run only these steps")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and check paths, models and servers"
    )
    parser.add_argument("--jobs", type=int, default=None, help="steps run side by side (overrides run.jobs)")
    parser.add_argument("--quiet", action="store_true", help="no live progress display")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_study(args.config)
        if args.jobs:
            cfg = from_dict(StudyConfig, {**to_dict(cfg), "run": {**to_dict(cfg.run), "jobs": args.jobs}})
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = Path(args.out) if args.out else Path(cfg.out_root) / cfg.name
    if args.dry_run:
        return 1 if dry_run(cfg, root) else 0
    root.mkdir(parents=True, exist_ok=True)
    (root / "study_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    try:
        summary = execute(cfg, root, force=args.force, only=args.only or None, show_progress=not args.quiet)
    except (ConfigError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    print(f"report: {root / 'report.html'}  {root / 'report.md'}")
    return 0

"""``warmstart run``: its arguments, the dry run (plan + what is missing), and the command itself."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from warmstart.atomic import atomic_write_text
from warmstart.config import ConfigError, replace, to_dict
from warmstart.models.load import looks_local
from warmstart.study.arms import METHODS
from warmstart.study.config import StudyConfig, load_study
from warmstart.study.execute import RunDirBusy, execute, is_done, run_lock, started_marker
from warmstart.study.plan import Step, plan, takes_parallel

__all__ = ["add_arguments", "dry_run", "run"]


def _reads(step: Step) -> tuple[list[str], list[str]]:
    """The models and the problem data a step reads (what the dry run checks)."""
    job = step.job
    if step.kind == "stage1":
        models = [job.config.init]
        if METHODS[job.method].needs_teacher(job.config):
            models.append(job.config.teacher)
        return models, [job.config.data]
    if step.kind == "grpo":
        return [job.init], [job.data]
    if step.kind == "eval":
        return [job.model], [job.data]
    return [], []


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
        if not looks_local(path):
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
        state = "done" if is_done(s) else ("partial" if started_marker(s).exists() else "todo")
        print(f"  [{state:>7}] {s.name:<32} <- {', '.join(s.deps) or '-'}")
        models, data = _reads(s)
        for m in models:
            check_model(m, s.name)
        for d in data:
            check_data(d, s.name)
    if cfg.teacher.path.startswith(("http://", "https://")) and not cfg.teacher.eval_path:
        print("  note: the teacher is served over HTTP and has no teacher.eval_path, so it is not evaluated")
    _print_placement(cfg, steps)
    for problem, step in _device_problems(cfg, steps):
        add(problem, step)
    for problem, needed_by in found.items():
        print(f"  missing: {problem}\n           needed by: {', '.join(dict.fromkeys(needed_by))}")
    print("ready" if not found else f"{len(found)} problem(s): the study cannot run until they are fixed")
    return list(found)


def _teacher_readers(steps: list[Step]) -> list[str]:
    return [s.name for s in steps if s.kind == "stage1" and METHODS[s.job.method].needs_teacher(s.job.config)]


def _gpus(ids: tuple[int, ...]) -> str:
    return ",".join(map(str, ids))


def _print_placement(cfg: StudyConfig, steps: list[Step]) -> None:
    """Which GPUs train the student, serve the teacher and run rollouts (and who reads the teacher)."""
    run = cfg.run
    readers = _teacher_readers(steps)
    if readers:
        where = cfg.teacher.path or "the teacher the study builds"
        print(f"  teacher: {where} is read by {', '.join(readers)}")
        if run.teacher_gpus:
            tp = len(run.teacher_gpus)
            print(
                f"  teacher GPUs: {_gpus(run.teacher_gpus)} (start it there: CUDA_VISIBLE_DEVICES="
                f"{_gpus(run.teacher_gpus)} vllm serve ... --tensor-parallel-size {tp})"
            )
    if run.student_gpus:
        print(
            f"  student GPUs: {_gpus(run.student_gpus)}: {run.processes} training process(es), strategy "
            f"{run.strategy} (each stage: CUDA_VISIBLE_DEVICES={_gpus(run.student_gpus)} torchrun "
            f"--nproc_per_node {run.processes} -m warmstart.cli <stage> --config ...)"
        )
    if run.rollout_gpus:
        print(f"  rollout GPUs: {_gpus(run.rollout_gpus)} ({cfg.rollout.backend} engine)")


def _device_problems(cfg: StudyConfig, steps: list[Step]) -> list[tuple[str, str]]:
    """A requested GPU that is not visible, and stages that cannot take the study's devices."""
    import torch

    out: list[tuple[str, str]] = []
    run = cfg.run
    if run.device.startswith("cuda"):
        wanted = [*run.student_gpus, *run.teacher_gpus, *run.rollout_gpus]
        if ":" in run.device:
            wanted.append(int(run.device.split(":")[1]))
        need = max(wanted, default=0) + 1
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < need:
            out.append(
                (
                    f"run.device = {run.device!r} needs {need} visible GPU(s), torch sees {have} "
                    f"(CUDA_VISIBLE_DEVICES={__import__('os').environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})",
                    "every training and eval step",
                )
            )
    if run.parallel() != type(run.parallel())():
        for s in steps:
            job = s.job.config if s.kind == "stage1" else s.job
            if s.kind in ("stage1", "grpo", "pretrain") and not takes_parallel(job):
                out.append(
                    (
                        f"{type(job).__name__} has no parallel table, so run.device / run.strategy "
                        "cannot reach it (it would train on the CPU defaults)",
                        s.name,
                    )
                )
    return out


def _model_shape(path: str):
    """The student's :class:`~warmstart.memory_plan.ModelShape`: its config.json (local or
    cached), else the published shape of a known hub id, else None."""
    from warmstart.memory_plan import KNOWN_SHAPES, ModelShape

    cfg_file: Path | None = None
    if Path(path).is_dir():
        cfg_file = Path(path) / "config.json"
    elif not looks_local(path):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
        cfg_file = Path(cached) if isinstance(cached, str) else None
    if cfg_file is not None and cfg_file.is_file():
        return ModelShape.from_hf_config(json.loads(cfg_file.read_text()))
    return KNOWN_SHAPES.get(path)


def memory_report(cfg: StudyConfig, steps: list[Step]) -> str | None:
    """Print the per-GPU memory plan of every training setup; the one-line refusal when one does not fit."""
    from warmstart.memory_plan import GiB, plan_memory, study_setups

    student = cfg.student.path or str(steps[0].root / "models" / "student" / "final")
    shape = _model_shape(student)
    if shape is None:
        print(f"  memory plan: the shape of {student} is unknown here (no config.json); not planned")
        return None
    gpu_gb = cfg.run.gpu_memory_gb
    print(
        f"  memory plan per GPU ({shape.num_params / 1e9:.2f}B parameters; run.gpu_memory_gb = {gpu_gb:g}):"
    )
    if cfg.rollout.backend != "local":
        where = _gpus(cfg.run.rollout_gpus) or "GPUs of its own"
        print(
            f"    rollouts: the {cfg.rollout.backend} engine in its own process on {where} (not on the student GPUs)"
        )
    worst = None
    for names, setup in study_setups(cfg, steps, shape):
        mp = plan_memory(shape, setup)
        lines = mp.lines(gpu_gb)
        print(f"    {lines[0]}  [{', '.join(names)}]")
        for line in lines[1:]:
            print(f"    {line}")
        if gpu_gb and not mp.fits(gpu_gb) and worst is None:
            worst = (
                f"memory plan does not fit: {setup.name} needs {mp.total / GiB:.1f} GiB per GPU, "
                f"run.gpu_memory_gb = {gpu_gb:g} (try strategy 'fsdp', more student_gpus, "
                "activation_checkpointing, a smaller micro_batch, rollout.max_batch_rows or the vllm backend)"
            )
    return worst


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/toy.toml", help="study TOML (default: configs/toy.toml)")
    parser.add_argument("--out", default=None, help="run directory (default: <out_root>/<name>)")
    parser.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STEP",
        help="redo STEP (and everything downstream); a prefix like 'eval', 'stage1' or 'grpo' names a group",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="STEP",
        help="run only STEP (a name or a group prefix like 'eval'); its inputs must be done or named too",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and check paths, models and servers"
    )
    parser.add_argument("--jobs", type=int, default=None, help="steps run side by side (overrides run.jobs)")
    parser.add_argument("--quiet", action="store_true", help="no live progress display")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_study(args.config)
        if args.jobs:
            cfg = replace(cfg, run=replace(cfg.run, jobs=args.jobs))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    root = Path(args.out) if args.out else Path(cfg.out_root) / cfg.name
    if args.dry_run:
        problems = dry_run(cfg, root)
        misfit = memory_report(cfg, plan(cfg, root))
        if misfit:
            print(f"error: {misfit}", file=sys.stderr)
            return 2
        return 1 if problems else 0
    args._log_dir = str(root)  # where cli.main appends a traceback
    try:
        with run_lock(root):  # held from the first write to the last (execute re-enters it)
            # The report reads the arms (names, labels, order) from here.
            atomic_write_text(root / "study_config.json", json.dumps(to_dict(cfg), indent=2))
            summary = execute(
                cfg, root, force=args.force, only=args.only or None, show_progress=not args.quiet
            )
    except (ConfigError, RunDirBusy) as e:  # bad --only/--force, or the directory is in use
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a step failed (its traceback was printed above)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    print(f"report: {root / 'report.html'}  {root / 'report.md'}")
    return 0

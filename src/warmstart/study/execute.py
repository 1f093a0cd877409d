"""Running the plan: one step in a worker process, and the scheduler that runs them side by side.

A step's key is stored in ``<root>/.steps/<step>.done.json`` when it finishes; a
re-run skips steps whose key matches, continues an interrupted step (``started``
marker with the same key) from its last checkpoint, and redoes a step whose key
changed.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from warmstart.atomic import atomic_write_text
from warmstart.config import ConfigError, replace
from warmstart.study.arms import METHODS
from warmstart.study.config import StudyConfig
from warmstart.study.plan import EvalJob, SelectJob, Stage1Job, Step, plan

__all__ = [
    "RunDirBusy",
    "done_marker",
    "execute",
    "is_done",
    "run_lock",
    "run_step",
    "started_marker",
    "choose_lr",
    "not_reached",
    "runtime_config",
    "select_lr",
    "write_arm_view",
    "write_best_arm",
    "write_early_arm",
]


def _marker(step: Step, what: str) -> Path:
    return step.root / ".steps" / f"{step.name.replace(':', '__')}.{what}.json"


def done_marker(step: Step) -> Path:
    return _marker(step, "done")


def started_marker(step: Step) -> Path:
    return _marker(step, "started")


def is_done(step: Step) -> bool:
    f = done_marker(step)
    return f.exists() and json.loads(f.read_text()).get("key") == step.key


def run_step(step: Step, threads: int, show_progress: bool = False) -> dict:
    """Execute one step in this process (called in a worker)."""
    import torch

    torch.set_num_threads(max(1, threads))
    cpu0 = _cpu_seconds()
    started = started_marker(step)
    resume = started.exists() and json.loads(started.read_text()).get("key") == step.key
    if not resume and step.kind != "report" and step.out.exists():
        shutil.rmtree(step.out) if step.out.is_dir() else step.out.unlink()
    atomic_write_text(started, json.dumps({"key": step.key}))
    t0 = time.time()
    job = step.job
    if step.kind == "data":
        from warmstart.data.synthetic import generate

        result = generate(job, step.out)
    elif step.kind == "pretrain":
        from warmstart.stages.pretrain import pretrain

        result = pretrain(job, resume=resume, show_progress=show_progress)
    elif step.kind == "stage0":
        from warmstart.study.stage0 import run_stage0

        result = run_stage0(job, step.out)
    elif step.kind == "stage1":
        config = runtime_config(job)
        result = METHODS[job.method].train(config, resume=resume, show_progress=show_progress)
        for arm_dir, checkpoint in job.arm_views:
            write_arm_view(step.out, Path(arm_dir), result, checkpoint)
    elif step.kind == "select":
        result = select_lr(job, step.out)
    elif step.kind == "grpo":
        from warmstart.stages.grpo import train_grpo

        result = train_grpo(job, resume=resume, show_progress=show_progress)
    elif step.kind == "eval":
        from warmstart.evaluate import evaluate_to_file

        unreached = not_reached(job)
        if unreached is not None:
            atomic_write_text(step.out, json.dumps(unreached, indent=2))
            result = unreached
        else:
            result = evaluate_to_file(out=step.out, show_progress=show_progress, **job.arguments())
    elif step.kind == "report":
        from warmstart.report import build_report

        result = build_report(step.out)
    else:  # pragma: no cover - plan() only makes the kinds above
        raise ValueError(step.kind)
    info = {
        "key": step.key,
        "seconds": time.time() - t0,
        # core-seconds of this process while the step ran (all its threads; benchmarks/study.py)
        "cpu_seconds": _cpu_seconds() - cpu0,
        "result": _summary(result),
    }
    atomic_write_text(done_marker(step), json.dumps(info, indent=2, default=str))
    return info


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread) and its waited-for children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def thread_shares(running: list[str], jobs: int, threads_per_job: int) -> dict[str, int]:
    """Torch threads of each running step: every slot's threads, idle slots' shared out.

    ``jobs x threads_per_job`` threads in all (the cores the study was given); each running
    step gets ``threads_per_job`` plus an even share of the idle slots' threads (the first
    steps, in start order, take the remainder). Pure: the scheduler's policy, tested alone.
    """
    if not running:
        return {}
    total = max(1, jobs) * max(1, threads_per_job)
    base, extra = divmod(total, len(running))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(running)}


def runtime_config(job: Stage1Job) -> Any:
    """A Stage-1 job's config with what is known only at run time filled in.

    ``matched_target`` from stage 0's ``stage0.json``, the learning rate from the
    ``select`` step's ``grid.json`` (the replicas of a grid's chosen rate).
    """
    config = job.config
    if job.matched_from:
        target = json.loads(Path(job.matched_from).read_text())["matched_target"]
        config = replace(config, matched_target=float(target))
    if job.lr_from:
        lr = json.loads(Path(job.lr_from).read_text())["chosen_lr"]
        config = replace(config, optim=replace(config.optim, lr=float(lr)))
    return config


_VIEW_STEP = {"best": "best_step", "matched": "matched_step"}


def write_arm_view(run_dir: Path, arm_dir: Path, result: dict, checkpoint: str = "best") -> None:
    """Give an arm that is one of a run's checkpoints its own folder: the run's log up to that step.

    The over-trained run passes through the early arm's best checkpoint (``best/``, the
    same weights a standalone early run would keep: same seed, same data order) and the
    matched-outcome one (``matched/``), so the study trains each recipe once and reads
    every arm from it. A matched checkpoint never reached gets ``reached: false`` and no
    log.
    """
    selection = result.get("selection", {})
    step = result.get("best_step") if checkpoint == "best" else selection.get(_VIEW_STEP[checkpoint])
    info = {
        "derived_from": str(run_dir),
        "checkpoint": checkpoint,
        "model": str(run_dir / checkpoint),
        "step": step,
        "reached": step is not None,
        "best_step": result.get("best_step"),
        "best_val_accuracy": result.get("best_val_accuracy"),
        **({"selection": selection} if selection else {}),
        **({"compute": result["compute"]} if "compute" in result else {}),
    }
    arm_dir.mkdir(parents=True, exist_ok=True)
    if step is not None:
        rows = [ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        keep = [ln for ln in rows if json.loads(ln)["step"] <= step]
        atomic_write_text(arm_dir / "metrics.jsonl", "".join(ln + "\n" for ln in keep))
    atomic_write_text(arm_dir / "result.json", json.dumps(info, indent=2))


def write_best_arm(run_dir: Path, arm_dir: Path, result: dict) -> None:
    """:func:`write_arm_view` of the ``best/`` checkpoint (the early-stopped arm)."""
    write_arm_view(run_dir, arm_dir, result, "best")


SELECT_RULE = "highest best selection accuracy; ties: the smaller lr"


def choose_lr(runs: list[dict]) -> dict:
    """The grid run :data:`SELECT_RULE` picks from ``[{"lr", "best_accuracy", ...}]`` (pure)."""
    return max(runs, key=lambda r: (r["best_accuracy"], -r["lr"]))


def select_lr(job: SelectJob, out: Path) -> dict:
    """Pick a grid's learning rate; link its checkpoints and copy its log and result beside the grid.

    ``out`` is ``stage1/<run>/grid.json``; ``stage1/<run>/{best,final,matched}`` become
    links to the chosen run's, and its ``metrics.jsonl`` and ``result.json`` are copied
    there (the arm's folder then looks like a run trained at that rate alone).
    """
    home = out.parent
    runs = []
    for lr, run_dir in zip(job.lrs, job.runs):
        res = json.loads((Path(run_dir) / "result.json").read_text())
        sel = res.get("selection", {})
        runs.append(
            {
                "lr": lr,
                "dir": Path(run_dir).name,
                "best_step": res.get("best_step"),
                "best_accuracy": res.get("best_val_accuracy"),
                "over_step": sel.get("over_step"),
                "matched_step": sel.get("matched_step"),
                "sequences": res.get("compute", {}).get("sequences"),
                "tokens": res.get("compute", {}).get("tokens"),
                "seconds": res.get("compute", {}).get("seconds"),
            }
        )
    chosen = choose_lr(runs)
    src = home / chosen["dir"]
    for ck in ("best", "final", "matched"):
        link = home / ck
        if link.is_symlink() or link.exists():
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        if (src / ck).exists():
            link.symlink_to(Path(chosen["dir"]) / ck, target_is_directory=True)
    for name in ("metrics.jsonl", "config.json"):
        if (src / name).exists():
            shutil.copyfile(src / name, home / name)
    result = json.loads((src / "result.json").read_text())
    result.update(
        model=str(home / "final"), early_model=str(home / "best"), chosen_lr=chosen["lr"], grid=runs
    )
    atomic_write_text(home / "result.json", json.dumps(result, indent=2))
    for arm_dir, checkpoint in job.arm_views:
        write_arm_view(home, Path(arm_dir), result, checkpoint)
    grid = {"rule": SELECT_RULE, "chosen_lr": chosen["lr"], "runs": runs}
    atomic_write_text(out, json.dumps(grid, indent=2))
    return grid


def not_reached(job: EvalJob) -> dict | None:
    """The eval record of a matched arm whose checkpoint was never reached, else ``None``."""
    if not job.not_reached_from:
        return None
    res = json.loads(Path(job.not_reached_from).read_text())
    sel = res.get("selection", {})
    if sel.get("matched_step") is not None:
        return None
    target = sel.get("matched_target")
    return {
        "not_reached": True,
        "model_name": job.model_name,
        "target": target,
        "reason": (
            f"selection accuracy never reached {target:.3f} (best {sel.get('best_accuracy', float('nan')):.3f} "
            f"at step {sel.get('best_step')})"
            if target is not None
            else "the run kept no matched checkpoint"
        ),
    }


write_early_arm = write_best_arm  # the name before arms were data


def _summary(result: Any) -> Any:
    if isinstance(result, dict):
        return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}
    return str(result)[:200]


class RunDirBusy(RuntimeError):
    """Another ``warmstart run`` holds the run directory's lock."""


_HELD: dict[Path, int] = {}  # run directories this process has locked -> nesting depth


@contextmanager
def run_lock(root: Path) -> Iterator[None]:
    """Hold ``<root>/.lock`` (an ``flock``, the holder's pid written in it) for the block.

    Two runs on one directory would race on its steps' outputs and markers; the
    second fails at once naming the first. The kernel drops the lock when its holder
    dies, however it dies (a SIGKILL included), so a stale file never blocks a rerun.
    Re-entrant within a process (``warmstart run`` holds it around ``execute``).
    """
    key = Path(os.path.abspath(root))
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder writes its pid right after locking
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.05)
            raise RunDirBusy(
                f"{key} is in use by another warmstart run (pid {holder or 'unknown'}); "
                "wait for it or stop it, then re-run"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker die when the ``warmstart run`` that started it dies (even by SIGKILL).

    Linux delivers the parent-death signal when the parent goes; the pid check
    closes the window in which the parent died before the signal was asked for.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the pid check below remains
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def _share_file(step: Step) -> Path:
    """The file through which the scheduler hands this step's worker its torch threads."""
    return _marker(step, "threads")


def _worker(step: Step, threads: int, queue, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    logging.basicConfig(level=logging.WARNING)
    from warmstart.thread_share import SHARE_FILE_ENV, follow_share

    os.environ[SHARE_FILE_ENV] = str(_share_file(step))
    try:
        import torch

        torch.set_num_threads(max(1, threads))
        follow_share()  # a share written before this worker started
        info = run_step(step, torch.get_num_threads())
        queue.put((step.name, "ok", info))
    except BaseException as e:  # report every failure to the parent, never hang it
        queue.put((step.name, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _hand_out(by_name: dict[str, Step], shares: dict[str, int], handed: dict[str, int]) -> None:
    """Write each step's thread share where it changed (workers apply it at their next step)."""
    from warmstart.thread_share import write_share

    for name, threads in shares.items():
        if handed.get(name) != threads:
            write_share(_share_file(by_name[name]), threads)
            handed[name] = threads


def _progress_units(step: Step) -> int:
    """Training steps logged so far (from metrics.jsonl), for the live display."""
    m = step.out / "metrics.jsonl"
    if step.kind not in ("pretrain", "stage1", "grpo") or not m.exists():
        return 0
    try:
        last = m.read_text().strip().splitlines()[-1]
        return int(json.loads(last)["step"])
    except (IndexError, ValueError, KeyError):
        return 0


def _forced(steps: list[Step], force: list[str]) -> set[str]:
    """The steps ``--force`` names (a name or a group prefix like ``eval``) and everything downstream."""
    by_name = {s.name: s for s in steps}
    for f in force:
        if f not in by_name and not any(n.startswith(f + ":") for n in by_name):
            raise ConfigError(f"--force {f!r}: no such step; steps: {', '.join(by_name)}")
    forced = {n for n in by_name for f in force if n == f or n.startswith(f + ":")}
    for s in steps:  # dependency order: a step's deps come before it
        if any(d in forced for d in s.deps):
            forced.add(s.name)
    return forced


def _selected(steps: list[Step], only: list[str]) -> set[str]:
    """The steps ``--only`` names (a name or a group prefix like ``eval``, as for ``--force``).

    Raises :class:`ConfigError` (one line) for a name that matches no step, and for a
    selected step that needs a step that is neither done nor selected: it could never
    start, and the scheduler would wait for it forever.
    """
    by_name = {s.name: s for s in steps}
    for f in only:
        if f not in by_name and not any(n.startswith(f + ":") for n in by_name):
            raise ConfigError(f"--only {f!r}: no such step or group; steps: {', '.join(by_name)}")
    chosen = {n for n in by_name for f in only if n == f or n.startswith(f + ":")}
    missing = [
        d
        for d in dict.fromkeys(d for s in steps if s.name in chosen for d in s.deps)
        if d not in chosen and not is_done(by_name[d])
    ]
    if missing:
        adds = " ".join(f"--only {d}" for d in missing)
        raise ConfigError(
            f"--only {' '.join(only)}: prerequisite step(s) not done: {', '.join(missing)}; "
            f"run them first (drop --only to run everything, or add {adds})"
        )
    return chosen


def execute(
    cfg: StudyConfig,
    root: Path,
    force: list[str] | None = None,
    only: list[str] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run every step not already done, ``run.jobs`` at a time; returns per-step timing.

    Holds the run directory's lock (:func:`run_lock`) throughout: a second run on the
    same directory fails with :class:`RunDirBusy` naming this one's pid.
    """
    with run_lock(root):
        return _execute(cfg, root, force, only, show_progress)


def _execute(
    cfg: StudyConfig,
    root: Path,
    force: list[str] | None,
    only: list[str] | None,
    show_progress: bool,
) -> dict[str, Any]:
    from rich.console import Console
    from rich.progress import Progress

    from warmstart.stages.common import progress_columns

    steps = plan(cfg, root)
    by_name = {s.name: s for s in steps}
    for n in _forced(steps, force or []):
        for f in (done_marker(by_name[n]), started_marker(by_name[n])):
            f.unlink(missing_ok=True)
    todo = [s for s in steps if not is_done(s)]
    if only:
        chosen = _selected(steps, only)
        todo = [s for s in todo if s.name in chosen]
    timings: dict[str, Any] = {
        s.name: json.loads(done_marker(s).read_text())["seconds"] for s in steps if is_done(s)
    }
    console = Console(stderr=True)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    running: dict[str, Any] = {}
    handed: dict[str, int] = {}  # threads last written to each running step's share file
    pending = list(todo)
    failed: dict[str, str] = {}
    t_start = time.time()
    cols = progress_columns("{task.description:<28}")
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
                if cfg.run.share_idle_threads:
                    shares = thread_shares([*running, s.name], cfg.run.jobs, cfg.run.threads_per_job)
                    _hand_out(by_name, shares, handed)  # the running steps give back threads first
                else:
                    shares = {s.name: cfg.run.threads_per_job}
                proc = ctx.Process(target=_worker, args=(s, shares[s.name], queue, os.getpid()), daemon=False)
                proc.start()
                running[s.name] = (proc, time.time())
                tasks[s.name] = prog.add_task(s.name, total=s.total or None)
            if pending and not running and not ready:  # pragma: no cover - _selected rules this out
                raise ConfigError(f"steps waiting on inputs that will never run: {[s.name for s in pending]}")
            # idle slots (nothing else ready): their threads go to the steps that run
            if cfg.run.share_idle_threads:
                _hand_out(
                    by_name, thread_shares(list(running), cfg.run.jobs, cfg.run.threads_per_job), handed
                )
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
            handed.pop(name, None)
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
    atomic_write_text(root / "study_timing.json", json.dumps(summary, indent=2))
    if failed:
        raise RuntimeError(
            f"{len(failed)} step(s) failed: {', '.join(sorted(failed))}; fix and re-run to continue"
        )
    return summary

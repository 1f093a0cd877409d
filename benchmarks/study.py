"""Wall time, core-seconds and matmul efficiency of the whole toy study, per stage, as JSON.

Runs ``warmstart run --config CONFIG`` into a fresh directory (or reads an existing
run with --from-run) and prints:

* ``wall_s``: end-to-end wall time (steps run side by side, so it is less than the sum);
* ``step_seconds_by_stage``: wall seconds of the steps of each stage, summed;
* ``core_seconds_by_stage``: CPU seconds (all threads) of each stage's steps, from the
  ``cpu_seconds`` the scheduler stores in every step's done marker;
* ``core_seconds`` / ``utilisation``: CPU seconds of the whole run's process tree
  (``RUSAGE_CHILDREN`` of the ``warmstart run`` process, exact) and that over
  ``wall_s x cores`` (``cores`` = the study's ``run.jobs x run.threads_per_job``);
* ``matmul_peak_gflops``: the machine's fp32 matmul rate, measured in this run after the
  study (a 2048 x 2048 x 2048 ``torch.mm``, best of 5) at 1 thread and at ``cores`` threads;
* ``training_step_efficiency``: for the SFT, OPD and GRPO training steps, the FLOPs of one
  step (``torch.utils.flop_counter.FlopCounterMode`` over ``Trainer.update`` on a batch of
  the stage's shape: forward + backward matmuls and attention, on the study's student) over
  the stage's median update time from its ``metrics.jsonl``, as GFLOP/s and as a fraction of
  the peak at ``threads_per_job`` threads (what each job runs with when both slots are busy).

    python benchmarks/study.py [--config configs/toy.toml] [--out DIR] [--from-run DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def stage_of(step: str) -> str:
    name = {"data": "data", "student": "stage0", "teacher": "stage0", "report": "report"}.get(step)
    if name:
        return name
    prefix = step.split(":")[0]
    return {"grpo": "stage2", "eval": "eval", "select": "stage1"}.get(prefix, prefix)


def group(values: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, v in values.items():
        out[stage_of(name)] = out.get(stage_of(name), 0.0) + v
    return {k: round(v, 1) for k, v in out.items()}


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(before)
    return 2 * size**3 / best / 1e9


def _median(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def step_flops(run: Path, cfg, kind: str) -> tuple[float, dict] | None:
    """FLOPs of one training update of ``kind`` (sft | opd | grpo) on the study's student, and the batch shape."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from warmstart.data.loaders import load_problems
    from warmstart.models import load_policy
    from warmstart.rollout import SamplingParams
    from warmstart.sampler import RolloutConfig, make_sampler
    from warmstart.stages.common import teacher_forced
    from warmstart.train import LossConfig, OptimConfig, TrainBatch, Trainer

    student = run / "models" / "student" / "final"
    if not student.exists():
        return None
    policy = load_policy(student, trainable=True)
    policy.model.requires_grad_(True)
    problems = load_problems(run / "data", split="train").problems
    arms = {a.method: a for a in cfg.arm}
    if kind == "sft":
        sft = arms["sft"].sft if "sft" in arms else None
        size = sft.batch_size if sft else cfg.student.pretrain.batch_size
        chosen = [p for p in problems if p.rationale][:size]
        batch = TrainBatch.supervised(teacher_forced(chosen, [p.rationale for p in chosen], policy.processor))
        micro = sft.micro_batch if sft else size
        shape = {"rows": size}
    else:
        stage = arms["opd"].opd if kind == "opd" else cfg.grpo
        if kind == "opd" and "opd" not in arms:
            return None
        params = SamplingParams(n=stage.n, max_new_tokens=stage.max_new_tokens, seed=0)
        ro = make_sampler(RolloutConfig(), policy.model, policy.processor).sample(
            problems[: stage.prompts_per_step], params
        )
        batch = TrainBatch(ro, torch.randn(ro.num_rows)[:, None].expand_as(ro.response_mask_BT).float())
        micro = stage.micro_batch
        shape = {"rows": ro.num_rows, "response_tokens": int(ro.response_mask_BT.sum())}
    trainer = Trainer(policy.model, OptimConfig(lr=1e-6), LossConfig(), 10)
    with FlopCounterMode(display=False) as counter:
        trainer.update(batch, micro_batch=micro, with_entropy=False)
    return float(counter.get_total_flops()), shape


def efficiency(run: Path, cfg, peak: float) -> dict:
    out = {}
    for kind, metrics, key in (
        ("sft", sorted((run / "stage1").glob("*/metrics.jsonl")), "step_time_s"),
        ("opd", sorted((run / "stage1").glob("*/metrics.jsonl")), "update_time_s"),
        ("grpo", sorted((run / "stage2").glob("*/metrics.jsonl")), "update_time_s"),
    ):
        rows = [
            json.loads(ln)
            for m in metrics
            for ln in m.read_text().splitlines()
            if ln.strip() and json.loads(ln).get("stage") == kind and json.loads(ln).get("step", 0) >= 1
        ]
        seconds = _median(rows, key)
        counted = step_flops(run, cfg, kind) if seconds else None
        if counted is None:
            continue
        flops, shape = counted
        out[kind] = {
            "batch": shape,
            "gflop_per_step": round(flops / 1e9, 2),
            f"median_{key}": round(seconds, 4),
            "gflops": round(flops / seconds / 1e9, 1),
            "fraction_of_peak": round(flops / seconds / 1e9 / peak, 3),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/toy.toml")
    ap.add_argument("--out", default=None, help="run directory (default: a fresh temporary one)")
    ap.add_argument("--from-run", default=None, help="only read the timing of an existing run")
    args = ap.parse_args()
    import torch

    from warmstart.study.config import load_study

    cfg = load_study(args.config)
    cores = cfg.run.jobs * cfg.run.threads_per_job
    core_seconds = None
    if args.from_run:
        run = Path(args.from_run)
        wall = None
    else:
        run = Path(args.out or tempfile.mkdtemp(prefix="warmstart-study-"))
        t0 = time.time()
        cmd = [
            sys.executable,
            "-m",
            "warmstart.cli",
            "run",
            "--config",
            args.config,
            "--out",
            str(run),
            "--quiet",
        ]
        subprocess.run(cmd, check=True)
        wall = time.time() - t0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run and every worker it waited for
        core_seconds = usage.ru_utime + usage.ru_stime
    timing = json.loads((run / "study_timing.json").read_text())
    wall = wall if wall is not None else timing["wall_s"]
    cpu = {}
    for marker in (run / ".steps").glob("*.done.json"):
        info = json.loads(marker.read_text())
        if "cpu_seconds" in info:
            cpu[marker.name[: -len(".done.json")].replace("__", ":")] = info["cpu_seconds"]
    torch.set_num_threads(cfg.run.threads_per_job)
    peak = {"1_thread": round(matmul_gflops(1), 1), f"{cores}_threads": round(matmul_gflops(cores), 1)}
    per_job_peak = matmul_gflops(cfg.run.threads_per_job)
    result = {
        "config": args.config,
        "run": str(run),
        "wall_s": round(wall, 1),
        "cores": cores,
        "core_seconds": None if core_seconds is None else round(core_seconds, 1),
        "utilisation": None if core_seconds is None else round(core_seconds / (wall * cores), 3),
        "step_seconds_by_stage": group(timing["steps_s"]),
        "core_seconds_by_stage": group(cpu),
        "matmul_peak_gflops": peak,
        "training_step_efficiency": {
            "peak_gflops_at_threads_per_job": round(per_job_peak, 1),
            **efficiency(run, cfg, per_job_peak),
        },
        "step_seconds": {k: round(v, 1) for k, v in timing["steps_s"].items()},
        "failed": timing["failed"],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

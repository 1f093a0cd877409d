"""Wall time of the whole toy study, per stage, as JSON.

Runs ``warmstart run --config CONFIG`` into a fresh directory (or reads an existing
run's ``study_timing.json`` with --from-run) and prints the seconds of every step,
grouped by stage, plus the end-to-end wall time (steps run side by side, so the wall
time is less than the sum).

    python benchmarks/study.py [--config configs/toy.toml] [--out DIR] [--from-run DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def group(steps: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, s in steps.items():
        stage = {
            "data": "data",
            "student": "stage0",
            "teacher": "stage0",
            "report": "report",
        }.get(name, name.split(":")[0])
        stage = {"grpo": "stage2", "eval": "eval"}.get(stage, stage)
        out[stage] = out.get(stage, 0.0) + s
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/toy.toml")
    ap.add_argument("--out", default=None, help="run directory (default: a fresh temporary one)")
    ap.add_argument("--from-run", default=None, help="only read the timing of an existing run")
    args = ap.parse_args()
    if args.from_run:
        run = Path(args.from_run)
        wall = None
    else:
        run = Path(args.out or tempfile.mkdtemp(prefix="warmstart-study-"))
        t0 = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "warmstart.cli",
                "run",
                "--config",
                args.config,
                "--out",
                str(run),
                "--quiet",
            ],
            check=True,
        )
        wall = time.time() - t0
    timing = json.loads((run / "study_timing.json").read_text())
    print(
        json.dumps(
            {
                "config": args.config,
                "run": str(run),
                "wall_s": round(wall if wall is not None else timing["wall_s"], 1),
                "cpu_step_seconds_by_stage": group(timing["steps_s"]),
                "step_seconds": {k: round(v, 1) for k, v in timing["steps_s"].items()},
                "failed": timing["failed"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

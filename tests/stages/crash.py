"""A real crash for resume tests: run a stage uninterrupted, then run it again, SIGKILL it
mid-way, resume it, and let the test compare the two results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from warmstart.config import to_dict


def run_full_then_killed_and_resumed(
    script: str,
    full_cfg,
    killed_cfg,
    ready_to_kill: Callable[[], bool],
    after_kill: Callable[[], None] | None = None,
) -> None:
    """``script`` takes argv (config JSON, "fresh" | "resume"); ``ready_to_kill()`` says when to
    kill; ``after_kill()`` may check the crashed run's state before it is resumed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(cfg, mode: str) -> list[str]:
        return [sys.executable, "-c", script, json.dumps(to_dict(cfg)), mode]

    subprocess.run(cmd(full_cfg, "fresh"), env=env, check=True)
    proc = subprocess.Popen(cmd(killed_cfg, "fresh"), env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ready_to_kill():
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)  # a real crash: no cleanup runs
    proc.wait()
    if after_kill is not None:
        after_kill()
    subprocess.run(cmd(killed_cfg, "resume"), env=env, check=True)

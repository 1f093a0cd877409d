"""Torch threads handed out by the study scheduler while a step runs.

``warmstart run`` runs ``run.jobs`` steps side by side, ``run.threads_per_job`` torch
threads each. When fewer steps can run than there are slots (the data step, a long
pretraining whose partner finished, the last evaluations, the report), the idle slots'
threads go to the steps that run: the scheduler writes each worker's share into a small
file (:func:`write_share`), and the worker's loops apply it between steps
(:func:`follow_share`, one ``stat`` per call), so a lone job uses every core and gives
the extra threads back when a second job starts. Outside a study (no
:data:`SHARE_FILE_ENV`) :func:`follow_share` does nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from warmstart.atomic import atomic_write_text

__all__ = ["SHARE_FILE_ENV", "follow_share", "write_share"]

# Path of this worker's thread-share file, set by the study scheduler's worker.
SHARE_FILE_ENV = "WARMSTART_THREADS_FILE"

_last_seen: dict[str, tuple[int, int, int]] = {}


def write_share(path: Path, threads: int) -> None:
    """Give the worker that follows ``path`` ``threads`` torch threads (applied at its next step)."""
    atomic_write_text(Path(path), f"{int(threads)}\n")


def follow_share() -> int | None:
    """Apply the thread count the scheduler last wrote for this process; returns it (None: no file)."""
    path = os.environ.get(SHARE_FILE_ENV)
    if not path:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    if _last_seen.get(path) == stamp:
        return None
    _last_seen[path] = stamp
    try:
        threads = int(Path(path).read_text().strip())
    except (OSError, ValueError):  # a half-read file: the next call reads it again
        _last_seen.pop(path, None)
        return None
    import torch

    if threads >= 1 and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads

"""``warmstart run`` as a process: its workers die with it, its run directory is locked,
and ``--only`` refuses (at once) a step whose inputs would never be built.

Real subprocesses, real SIGKILLs, real files; Linux only (``/proc``, ``prctl``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def _long_config(tmp_path: Path) -> Path:
    """The smoke study with a stage 0 that would train for hours: a worker is surely busy when killed."""
    text = SMOKE.read_text().replace("steps = 6\n", "steps = 1000000\n", 1)
    text = text.replace('stop_split = "test"\n', 'stop_split = ""\n')  # no stop rule: it trains on
    text = text.replace("jobs = 2\n", "jobs = 1\n")  # one busy worker: less load on the test machine
    assert "steps = 1000000" in text and "jobs = 1" in text and 'stop_split = ""' in text
    cfg = tmp_path / "long.toml"
    cfg.write_text(text)
    return cfg


def _start(cfg: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "warmstart.cli", "run", "--config", str(cfg), "--out", str(out), "--quiet"]
    return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def _workers(pid: int) -> list[int]:
    """The step workers (spawned multiprocessing children) of the run ``pid``."""
    found = []
    for c in _children(pid):
        try:
            cmdline = Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if "spawn_main" in cmdline:
            found.append(c)
    return found


def _wait_for(cond, what: str, proc: subprocess.Popen, deadline_s: float = 120.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before {what}: {proc.stderr.read()!r}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkilled_run_takes_its_workers_with_it(tmp_path):
    out = tmp_path / "run"
    proc = _start(_long_config(tmp_path), out)
    try:
        # Stage 0 (student and teacher, side by side) has started in its workers.
        _wait_for(lambda: (out / ".steps" / "student.started.json").exists(), "stage 0 to start", proc)
        workers = _wait_for(lambda: _workers(proc.pid), "a running worker", proc)
        assert all(_alive(w) for w in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    end = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.1)
    left = [w for w in workers if _alive(w)]
    for w in left:  # clean up before failing
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers {left} outlived the SIGKILLed run {proc.pid}"
    assert not (out / ".steps" / "student.done.json").exists()


def test_second_run_on_a_busy_directory_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    cfg = _long_config(tmp_path)
    first = _start(cfg, out)
    try:
        _wait_for(
            lambda: (out / ".steps" / "student.started.json").exists(), "the first run's stage 0", first
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [
            sys.executable,
            "-m",
            "warmstart.cli",
            "run",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--quiet",
        ]
        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"pid {first.pid}" in lines[0] and str(out) in lines[0]
        assert first.poll() is None  # the holder was left alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the dead holder's lock: a rerun goes ahead (here: nothing selected is left to do).
    from warmstart.cli import main

    assert main(["run", "--config", str(cfg), "--out", str(out), "--quiet", "--only", "data"]) == 0


def test_only_a_step_whose_inputs_are_missing_fails_at_once(tmp_path):
    out = tmp_path / "fresh"
    cmd = [sys.executable, "-m", "warmstart.cli", "run", "--config", str(SMOKE), "--out", str(out), "--quiet"]
    # A timeout far above the seconds this takes: before the fix it waited forever.
    r = subprocess.run(
        [*cmd, "--only", "stage1:sft_over@lr0.001"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "prerequisite" in lines[0] and "data, student, stage0" in lines[0] and "drop --only" in lines[0]
    assert not (out / "data").exists()  # nothing ran


def test_only_takes_group_prefixes_and_refuses_unknown_names(tmp_path, capsys):
    from warmstart.cli import main

    args = ["run", "--config", str(SMOKE), "--out", str(tmp_path / "fresh"), "--quiet"]
    # A group prefix selects the group, as for --force; its missing inputs are named.
    assert main([*args, "--only", "stage1"]) == 2
    err = capsys.readouterr().err  # (the seed replicas wait on the grid's select steps too)
    assert "not done: data, student, stage0, select:sft_over, teacher, select:opd" in err
    # A name that is no step is refused, with the list of steps.
    assert main([*args, "--only", "sft"]) == 2
    err = capsys.readouterr().err
    assert "'sft'" in err and "stage1:sft_over@lr0.001" in err
    # Inputs named too: the selection is complete, so it runs (data has no inputs).
    assert main([*args, "--only", "data"]) == 0
    assert (tmp_path / "fresh" / ".steps" / "data.done.json").exists()

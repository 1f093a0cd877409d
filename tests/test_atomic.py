"""warmstart.atomic: a killed or failing writer leaves the old file/folder, never a partial one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from warmstart.atomic import atomic_dir, atomic_write_bytes, atomic_write_text, write_via


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_write_text_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second é")
    assert target.read_text(encoding="utf-8") == "second é"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert _leftovers(target.parent) == []


def test_atomic_dir_keeps_old_folder_on_error(tmp_path):
    dest = tmp_path / "model"
    with atomic_dir(dest) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as tmp:
            (tmp / "weights").write_text("v2 half")
            raise RuntimeError("crash while saving")
    assert (dest / "weights").read_text() == "v1"
    with atomic_dir(dest) as tmp:
        (tmp / "weights").write_text("v2")
    assert (dest / "weights").read_text() == "v2"
    assert _leftovers(tmp_path) == []


def test_write_via_keeps_suffix_for_format_sniffing_writers(tmp_path):
    seen = []
    write_via(tmp_path / "plot.png", lambda p: (seen.append(p.suffix), p.write_bytes(b"png")))
    assert seen == [".png"] and (tmp_path / "plot.png").read_bytes() == b"png"


def test_sigkill_mid_write_leaves_previous_version(tmp_path):
    """A real process SIGKILLed inside atomic_dir: the destination is still the old, complete folder."""
    dest = tmp_path / "ckpt"
    with atomic_dir(dest) as tmp:
        (tmp / "a").write_text("old")
        (tmp / "b").write_text("old")
    script = (
        "import sys, time\n"
        "from warmstart.atomic import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'a').write_text('new')\n"
        "    print('half', flush=True)\n"
        "    time.sleep(60)\n"
        "    (tmp / 'b').write_text('new')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(dest)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.1)
    assert (dest / "a").read_text() == "old" and (dest / "b").read_text() == "old"

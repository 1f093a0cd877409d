"""Reliability of checkpoints and training (issue 16 items 1, 2, 8), with real processes and files:

* a SIGKILL while ``pretrain`` writes its fresh ``init/`` model never breaks the run directory;
* ``latest_checkpoint`` ignores temp and incomplete checkpoint folders;
* an absurd learning rate aborts with a clear error, no ``final/``, and only sane checkpoints;
* non-finite steps are logged as skipped (loss ``null``) and abort after ``max_bad_steps``;
* ``--resume`` never unpickles code from a trainer-state file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from warmstart.config import ConfigError, from_dict
from warmstart.models.toy import is_complete_toy
from warmstart.stages.pretrain import PretrainConfig
from warmstart.stages.sft import SFTConfig, train_sft
from warmstart.train import RunDir, TrainingDiverged

# The child builds init/ and, through a hook on transformers' processor save (the model's
# weights and config.json are written by then), signals the test and sleeps until killed.
_PRETRAIN_CHILD = r"""
import json, sys, time
from pathlib import Path
from warmstart.config import from_dict
from warmstart.stages.pretrain import PretrainConfig, pretrain

cfg, ready = json.loads(sys.argv[1]), sys.argv[2]
if ready != "-":
    from transformers.processing_utils import ProcessorMixin
    real = ProcessorMixin.save_pretrained
    def hooked(self, *a, **k):
        Path(ready).write_text("model written")
        time.sleep(600)
        return real(self, *a, **k)
    ProcessorMixin.save_pretrained = hooked
print(json.dumps(pretrain(from_dict(PretrainConfig, cfg), show_progress=False)))
"""


def _pretrain_cfg(synth_dir, out) -> dict:
    return {
        "data": str(synth_dir),
        "out_dir": str(out),
        "size": "xs",
        "steps": 2,
        "batch_size": 4,
        "micro_batch": 4,
        "eval_every": 2,
        "val_problems": 2,
        "max_new_tokens": 4,
    }


def test_kill_while_pretrain_writes_init_then_rerun_succeeds(synth_dir, tmp_path):
    out = tmp_path / "pre"
    cfg = _pretrain_cfg(synth_dir, out)
    from_dict(PretrainConfig, cfg)  # a valid config
    ready = tmp_path / "ready"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _PRETRAIN_CHILD, json.dumps(cfg), str(ready)], env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not ready.exists():
        time.sleep(0.05)
    assert proc.poll() is None and ready.exists(), "the child never reached the middle of writing init/"
    proc.send_signal(signal.SIGKILL)  # a real crash in the middle of writing init/
    proc.wait()
    # nothing half-written under the real name: either no init/ or a complete one
    assert not (out / "init").exists() or is_complete_toy(out / "init")
    rerun = subprocess.run(
        [sys.executable, "-c", _PRETRAIN_CHILD, json.dumps(cfg), "-"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert is_complete_toy(out / "init")
    assert (out / "final" / "model.safetensors").is_file()
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["steps"] == 2


def _sft_cfg(toy_dir, synth_dir, out, **over):
    base = {
        "init": str(toy_dir),
        "data": str(synth_dir),
        "out_dir": str(out),
        "arm": "over",
        "over_multiple": 1.0,
        "batch_size": 4,
        "micro_batch": 4,
        "max_steps": 4,
        "eval_every": 100,
        "patience": 100,
        "val_problems": 2,
        "max_new_tokens": 4,
        "checkpoint_every": 2,
        "optim": {"lr": 3e-3},
    }
    return from_dict(SFTConfig, {**base, **over})


def _metrics(out) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_latest_checkpoint_ignores_temp_and_incomplete_folders(toy_dir, synth_dir, tmp_path):
    out = tmp_path / "sft"
    train_sft(_sft_cfg(toy_dir, synth_dir, out), show_progress=False)  # checkpoint at step 2
    ckpts = out / "checkpoints"
    good = ckpts / "step_000002"
    assert RunDir(out, "sft").latest_checkpoint() == good
    # a kill mid-save leaves a hidden temp folder; a kill mid-delete (or an older version)
    # can leave a step folder with its trainer state but without its weights
    shutil.copytree(good, ckpts / ".step_000004.tmp-12345")
    half = ckpts / "step_000006"
    half.mkdir()
    shutil.copy(good / "trainer_state.pt", half / "trainer_state.pt")
    assert RunDir(out, "sft").latest_checkpoint() == good


def test_sft_absurd_lr_aborts_without_final_and_keeps_sane_checkpoint(toy_dir, synth_dir, tmp_path):
    out = tmp_path / "sft"
    train_sft(_sft_cfg(toy_dir, synth_dir, out, max_steps=4), show_progress=False)  # ckpt at step 2
    shutil.rmtree(out / "final")
    (out / "result.json").unlink()
    # resume the same run to 8 steps at lr 1e30 (the issue's `--set optim.lr=1e30`)
    cfg = _sft_cfg(toy_dir, synth_dir, out, max_steps=8, optim={"lr": 1e30})
    with pytest.raises(TrainingDiverged, match=r"sft: weights exploded at optimizer step 3.*learning rate"):
        train_sft(cfg, resume=True, show_progress=False)
    assert not (out / "final").exists()
    assert not (out / "result.json").exists()
    last = RunDir(out, "sft").latest_checkpoint()
    assert last is not None and last.name == "step_000002"
    init = load_file(str(Path(toy_dir) / "model.safetensors"))
    for name, w in load_file(str(last / "model.safetensors")).items():
        assert torch.isfinite(w).all(), name
        assert float(w.abs().max()) < 1e3 * max(1.0, float(init[name].abs().max())), name
    best = load_file(str(out / "best" / "model.safetensors"))
    assert all(torch.isfinite(w).all() and float(w.abs().max()) < 1e3 for w in best.values())


def test_nan_steps_are_logged_skipped_and_abort_after_max_bad_steps(toy_dir, synth_dir, tmp_path):
    # a real fault in a real file: the init model's lm_head holds NaN, so every loss is NaN
    bad_init = tmp_path / "nan_init"
    shutil.copytree(toy_dir, bad_init)
    weights = load_file(str(bad_init / "model.safetensors"))
    key = next(k for k in weights if k.endswith("lm_head.weight"))
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(bad_init / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "sft"
    cfg = _sft_cfg(bad_init, synth_dir, out, max_steps=10, max_bad_steps=3, checkpoint_every=100)
    with pytest.raises(TrainingDiverged, match=r"sft: 3 non-finite updates in a row .* step 3"):
        train_sft(cfg, show_progress=False)
    rows = [r for r in _metrics(out) if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["skipped"] is True and r["loss"] is None for r in rows)
    assert all(math.isnan(r["grad_norm"]) for r in rows)
    assert not (out / "final").exists()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_resume_refuses_trainer_state_that_would_run_code(toy_dir, synth_dir, tmp_path):
    out = tmp_path / "sft"
    train_sft(_sft_cfg(toy_dir, synth_dir, out, max_steps=4), show_progress=False)
    ckpt = RunDir(out, "sft").latest_checkpoint()
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)  # our own state loads safely
    marker = tmp_path / "code_ran"
    torch.save({**state, "extra": {"payload": _RunsCode(marker)}}, ckpt / "trainer_state.pt")
    with pytest.raises(ConfigError, match="refusing to load this trainer state"):
        train_sft(_sft_cfg(toy_dir, synth_dir, out, max_steps=6), resume=True, show_progress=False)
    assert not marker.exists()


def test_opd_absurd_lr_aborts_without_final(toy_dir, synth_dir, tmp_path):
    from warmstart.stages.opd import OPDConfig, train_opd

    teacher = tmp_path / "teacher"  # the toy with a different head: a non-zero distillation signal
    shutil.copytree(toy_dir, teacher)
    weights = load_file(str(teacher / "model.safetensors"))
    key = next(k for k in weights if k.endswith("lm_head.weight"))
    weights[key] = weights[key] + torch.randn(weights[key].shape, generator=torch.Generator().manual_seed(0))
    save_file(weights, str(teacher / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "opd"
    cfg = {
        "init": str(toy_dir),
        "teacher": str(teacher),
        "data": str(synth_dir),
        "out_dir": str(out),
        "steps": 3,
        "prompts_per_step": 2,
        "n": 2,
        "max_new_tokens": 6,
        "checkpoint_every": 1,
        "optim": {"lr": 1e30},
    }
    with pytest.raises(TrainingDiverged, match=r"opd: weights exploded at optimizer step 1.*learning rate"):
        train_opd(from_dict(OPDConfig, cfg), show_progress=False)
    assert not (out / "final").exists()
    assert RunDir(out, "opd").latest_checkpoint() is None


def test_sft_command_with_absurd_lr_is_one_error_line_exit_2(toy_dir, synth_dir, tmp_path):
    """The issue's reproduction through the real command: `warmstart sft --set optim.lr=1e30`."""
    out = tmp_path / "sft_cli"
    cfg = tmp_path / "sft.toml"
    cfg.write_text(
        f'init = "{toy_dir}"\ndata = "{synth_dir}"\nout_dir = "{out}"\narm = "over"\n'
        "over_multiple = 1.0\nbatch_size = 4\nmicro_batch = 4\nmax_steps = 6\neval_every = 100\n"
        "patience = 100\nval_problems = 2\nmax_new_tokens = 4\ncheckpoint_every = 100\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "warmstart.cli",
        "sft",
        "--config",
        str(cfg),
        "--set",
        "optim.lr=1e30",
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert any(ln.startswith("error:") and "learning rate" in ln for ln in err_lines), proc.stderr
    assert not any("Traceback" in ln for ln in err_lines)
    assert not (out / "final").exists()
    assert "Traceback" in (out / "error.log").read_text()

"""The study end to end on configs/smoke.toml (seconds-scale), its cache, --force and --dry-run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from warmstart.cli import main
from warmstart.config import ConfigError, from_dict
from warmstart.study import StudyConfig, load_study, plan

ROOT = Path(__file__).resolve().parents[1]


def test_configs_parse_and_plan_every_model():
    arm_sets = {
        "toy": ["sft_early", "sft_over", "opd", "opd_over", "sft_matched", "opd_matched"],
        "toy-full": ["sft_early", "sft_over", "opd", "opd_over", "sft_matched", "opd_matched"],
        "toy-skills": ["sft_early", "sft_over", "opd"],
        "toy-estimators": [
            "sft_early",
            "sft_over",
            "opd",
            "opd_full",
            "opd_fkl16",
            "opd_rkl16",
            "opd_reward",
        ],
        "smoke": ["sft_early", "sft_over", "opd", "opd_matched"],
        "paper-qwen2.5-vl-7b": ["sft_early", "sft_over", "opd"],
    }
    for name, want in arm_sets.items():
        cfg = load_study(ROOT / "configs" / f"{name}.toml")
        steps = plan(cfg, Path("/tmp/x"))
        evals = {s.name for s in steps if s.kind == "eval"}
        arms = [a.name for a in cfg.arm]
        assert arms == want, name
        seeds = range(cfg.seeds)
        reps = [(a.name if k == 0 else f"{a.name}@s{k}", a.grpo) for k in seeds for a in cfg.arm]
        models = {"base", *(r for r, _ in reps), *(f"{r}+grpo" for r, g in reps if g)}
        if not cfg.teacher.path.startswith("http"):
            models.add("teacher")
        expected = {f"eval:{m}:{sp}" for m in models for sp in ("validation", "ood")}
        expected |= {f"eval:{m}:validation_blank" for m in ("base", "teacher") if m in models}
        assert evals == expected
    # every configs/*.toml is in the table above
    assert sorted(p.stem for p in (ROOT / "configs").glob("*.toml")) == sorted(arm_sets)
    # the estimator study: one setting apart per arm, everything else toy.toml's
    est = {a.name: a.opd for a in load_study(ROOT / "configs" / "toy-estimators.toml").arm if a.opd}
    assert {n: (o.estimator, o.topk, o.reward_coef) for n, o in est.items()} == {
        "opd": ("sampled_rkl", 0, 0.0),
        "opd_full": ("full_rkl", 0, 0.0),
        "opd_fkl16": ("topk_fkl", 16, 0.0),
        "opd_rkl16": ("topk_rkl", 16, 0.0),
        "opd_reward": ("sampled_rkl", 0, 1.0),
    }
    assert len({(o.optim, o.steps, o.train_problems, o.prompts_per_step, o.n) for o in est.values()}) == 1
    paper = load_study(ROOT / "configs" / "paper-qwen2.5-vl-7b.toml")
    grpo = next(s for s in plan(paper, Path("/tmp/x")) if s.name == "grpo:opd").params
    # the geo3k-easyr1 preset, written out
    assert (
        grpo["optim"]["lr"] == 1e-6
        and grpo["loss"]["clip_high"] == 0.3
        and grpo["loss"]["kl_estimator"] == "k3"
    )
    assert grpo["prompts_per_step"] == 512 and grpo["n"] == 5 and grpo["max_new_tokens"] == 2048


def test_unknown_study_key_names_the_nearest():
    with pytest.raises(ConfigError, match="did you mean 'grpo_preset'"):
        from_dict(StudyConfig, {"grpo_prest": "x"})


def test_paper_dry_run_explains_what_is_missing(capsys):
    rc = main(
        [
            "run",
            "--config",
            str(ROOT / "configs" / "paper-qwen2.5-vl-7b.toml"),
            "--dry-run",
            "--out",
            "/tmp/warmstart-dry",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "missing: data data/geometry3k does not exist" in out
    assert "Qwen/Qwen2.5-VL-7B-Instruct is a hub id that is not in the local cache" in out
    assert "http://127.0.0.1:8000 is not reachable" in out
    assert "needed by: stage1:sft_over, stage1:opd" in out


@pytest.mark.slow
def test_smoke_study_end_to_end_then_cached(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["run", "--config", str(ROOT / "configs" / "smoke.toml"), "--out", str(out), "--quiet"]) == 0
    for f in ("report.md", "report.html", "study_timing.json"):
        assert (out / f).exists()
    evals = sorted(p.name for p in (out / "eval").glob("*.json"))
    # 2 seeds x (4 arms + 3 Stage-2 endpoints) + base + teacher = 16 models x 2 splits + 2 blank
    assert len(evals) == 34, evals
    arms = json.loads((out / "study_config.json").read_text())["arm"]
    assert [(a["name"], a["method"], a["checkpoint"]) for a in arms] == [
        ("sft_early", "sft", "best"),
        ("sft_over", "sft", "final"),
        ("opd", "opd", "best"),
        ("opd_matched", "opd", "matched"),
    ]
    # stage 0 checked both models and fixed the matched target before any Stage-1 run
    s0 = json.loads((out / "stage0.json").read_text())
    assert set(s0["families"]) and "matched_target" in s0
    assert s0["student_stop"]["rule"].startswith("first validation with every family's pass@2")
    # the grid: one run per rate, the chosen one linked; the replica trained at that rate
    for run in ("sft_over", "opd"):
        grid = json.loads((out / "stage1" / run / "grid.json").read_text())
        assert [r["lr"] for r in grid["runs"]] == [3e-4, 1e-3]
        assert (out / "stage1" / run / "best").is_symlink()
        rep_cfg = json.loads((out / "stage1" / f"{run}@s1" / "config.json").read_text())
        assert rep_cfg["optim"]["lr"] == grid["chosen_lr"] and rep_cfg["seed"] == 1
    early = [
        json.loads(ln)["step"]
        for ln in (out / "stage1" / "sft_early" / "metrics.jsonl").read_text().splitlines()
    ]
    best_step = json.loads((out / "stage1" / "sft_early" / "result.json").read_text())["best_step"]
    assert early and max(early) == best_step  # the over run's log, cut at the early arm's checkpoint
    for arm in ("sft_early", "sft_over", "opd", "sft_early@s1", "opd@s1"):
        assert (out / "stage1" / arm / "metrics.jsonl").exists()
        assert (out / "stage2" / arm / "metrics.jsonl").exists()
    assert not (out / "stage2" / "opd_matched").exists()
    matched = json.loads((out / "eval" / "opd_matched__validation.json").read_text())
    reached = json.loads((out / "stage1" / "opd_matched" / "result.json").read_text())["reached"]
    assert matched.get("not_reached", False) is (not reached)
    md = (out / "report.md").read_text()
    assert "opd+grpo" in md and "sft_over+grpo" in md
    assert "missing:" not in md  # grpo = false and never-reached arms are expected to lack files
    first = json.loads((out / "study_timing.json").read_text())
    assert first["ran"] and not first["failed"]
    # a re-run finds everything done and runs nothing
    assert main(["run", "--config", str(ROOT / "configs" / "smoke.toml"), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "study_timing.json").read_text())["ran"] == []
    # so does a copy of the run directory elsewhere (the keys hash its own paths as <run>)
    moved = tmp_path / "elsewhere" / "smoke-copy"
    shutil.copytree(out, moved, symlinks=True)
    assert (
        main(["run", "--config", str(ROOT / "configs" / "smoke.toml"), "--out", str(moved), "--quiet"]) == 0
    )
    assert json.loads((moved / "study_timing.json").read_text())["ran"] == []
    # --force redoes one step and what depends on it (here: the report)
    assert (
        main(
            [
                "run",
                "--config",
                str(ROOT / "configs" / "smoke.toml"),
                "--out",
                str(out),
                "--quiet",
                "--force",
                "eval:base:ood",
            ]
        )
        == 0
    )
    assert sorted(json.loads((out / "study_timing.json").read_text())["ran"]) == ["eval:base:ood", "report"]
    capsys.readouterr()

"""The study's arms as data: what plan() derives from the ``[[arm]]`` entries (no training runs)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from warmstart.config import ConfigError, read_toml, to_dict
from warmstart.sampler import RolloutConfig
from warmstart.stages.grpo import GRPOConfig
from warmstart.stages.sft import SFTConfig
from warmstart.study import load_study, parse_study, plan, write_best_arm

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "toy-skills.toml"  # the v1 arms: sft_early, sft_over, opd
R = Path("/tmp/warmstart-plan")


def toy_data() -> dict:
    return read_toml(TOY)


def by_name(steps):
    return {s.name: s for s in steps}


def test_toy_trains_one_sft_run_and_reads_both_sft_arms_from_it():
    steps = by_name(plan(load_study(TOY), R))
    assert [n for n, s in steps.items() if s.kind == "stage1"] == ["stage1:sft_over", "stage1:opd"]
    sft = steps["stage1:sft_over"].job
    assert sft.method == "sft" and sft.config.arm == "over"  # over-trained: it passes through best/
    assert sft.config.out_dir == str(R / "stage1" / "sft_over")
    assert sft.arm_views == ((str(R / "stage1" / "sft_early"), "best"),)
    assert steps["stage1:opd"].job.arm_views == ()
    assert steps["grpo:sft_early"].job.init == str(R / "stage1" / "sft_over" / "best")
    assert steps["grpo:sft_over"].job.init == str(R / "stage1" / "sft_over" / "final")
    assert steps["grpo:opd"].job.init == str(R / "stage1" / "opd" / "final")
    assert steps["grpo:sft_early"].out == R / "stage2" / "sft_early"
    assert steps["eval:sft_early:validation"].job.model == str(R / "stage1" / "sft_over" / "best")
    assert steps["eval:sft_early+grpo:ood"].job.model == str(R / "stage2" / "sft_early" / "final")
    assert steps["eval:sft_early:ood"].out == R / "eval" / "sft_early__ood.json"


def test_two_sft_arms_with_different_settings_coexist():
    data = toy_data()
    a, b = copy.deepcopy(data["arm"][1]), copy.deepcopy(data["arm"][1])  # sft_over: checkpoint final
    a["name"], b["name"] = "sft_a", "sft_b"
    b["sft"]["optim"]["lr"] = 3e-4
    data["arm"] = [a, b]
    steps = plan(parse_study(data), R)
    runs = {s.name: s for s in steps if s.kind == "stage1"}
    assert list(runs) == ["stage1:sft_a", "stage1:sft_b"]
    assert (
        runs["stage1:sft_a"].job.config.optim.lr == 1e-3 and runs["stage1:sft_b"].job.config.optim.lr == 3e-4
    )
    assert {s.job.init for s in steps if s.kind == "grpo"} == {
        str(R / "stage1" / "sft_a" / "final"),
        str(R / "stage1" / "sft_b" / "final"),
    }
    outs = [s.out for s in steps if s.kind != "report"]
    assert len(set(outs)) == len(outs)  # nothing writes over another step's output


def test_a_fourth_arm_is_one_config_entry():
    data = toy_data()
    fourth = copy.deepcopy(data["arm"][0])  # sft_early's settings at another learning rate
    fourth.update(name="sft_lr3e-4", label="SFT (lr 3e-4, early-stopped)")
    fourth["sft"]["optim"]["lr"] = 3e-4
    data["arm"].append(fourth)
    cfg = parse_study(data)
    steps = by_name(plan(cfg, R))
    assert len(cfg.arm) == 4
    assert [n for n, s in steps.items() if s.kind == "grpo"] == [f"grpo:{a.name}" for a in cfg.arm]
    assert [n for n, s in steps.items() if s.kind == "stage1"] == [
        "stage1:sft_over",
        "stage1:opd",
        "stage1:sft_lr3e-4",
    ]
    new = steps["stage1:sft_lr3e-4"].job
    assert new.config.arm == "early" and new.arm_views == ()  # alone, it stops at its best step
    assert steps["grpo:sft_lr3e-4"].job.init == str(R / "stage1" / "sft_lr3e-4" / "best")
    evals = {n for n, s in steps.items() if s.kind == "eval"}
    models = {"base", "teacher", *(a.name for a in cfg.arm), *(f"{a.name}+grpo" for a in cfg.arm)}
    assert evals == {f"eval:{m}:{sp}" for m in models for sp in ("validation", "ood")} | {
        "eval:base:validation_blank",
        "eval:teacher:validation_blank",
    }
    assert len(evals) == 4 * 2 * 2 + 2 * 2 + 2
    assert set(steps["report"].deps) == evals


def test_plan_takes_every_default_from_the_stage_classes():
    data = toy_data()
    data["arm"] = [{"name": "sft", "label": "SFT", "method": "sft", "sft": {"val_split": "test"}}]
    data.pop("grpo")
    steps = by_name(plan(parse_study(data), R))
    sft, grpo = steps["stage1:sft"], steps["grpo:sft"]
    filled = {"init", "data", "train_split", "out_dir", "rollout", "arm", "teacher"}
    default_sft = to_dict(SFTConfig(val_split="test"))
    assert {k: v for k, v in to_dict(sft.job.config).items() if k not in filled} == {
        k: v for k, v in default_sft.items() if k not in filled
    }
    assert sft.total == SFTConfig().max_steps
    default_grpo = to_dict(GRPOConfig())
    assert {k: v for k, v in to_dict(grpo.job).items() if k not in filled} == {
        k: v for k, v in default_grpo.items() if k not in filled
    }
    assert grpo.total == GRPOConfig().steps


def test_the_study_rollout_table_reaches_every_stage_and_eval():
    data = toy_data()
    data["rollout"] = {"max_batch_rows": 4}
    seen = 0
    for s in plan(parse_study(data), R):
        cfg = {"pretrain": s.job, "grpo": s.job}.get(s.kind)
        cfg = s.job.config if s.kind == "stage1" else s.job.settings if s.kind == "eval" else cfg
        if cfg is not None:
            assert cfg.rollout == RolloutConfig(max_batch_rows=4), s.name
            seen += 1
    assert seen == 2 + 2 + 3 + 18  # pretrain, Stage-1 runs, GRPO, evals


def arm_error(mutate) -> str:
    data = toy_data()
    mutate(data)
    with pytest.raises(ConfigError) as e:
        parse_study(data)
    return str(e.value)


def test_arm_entries_are_checked_when_the_file_is_read():
    cases = [
        (lambda d: d["arm"][1].update(name="sft_early"), "arm names must be unique"),
        (lambda d: d["arm"][1].update(checkpoint="best"), "sft_early and sft_over are the same model"),
        (
            lambda d: d["arm"][2].update(checkpoint="best"),
            "this opd run leaves only \\['final'\\] \\(best/matched need opd.eval_every > 0\\)",
        ),
        (lambda d: d["arm"][2].update(method="dpo"), "method 'dpo' is not one of"),
        (lambda d: d["arm"][2].update(name="opd+x"), "arm name 'opd\\+x'"),
        (lambda d: d["arm"][2].update(name="base"), "arm name 'base'"),
        (lambda d: d["arm"][2].update(sft={}), "a \\[sft\\] table on a method = 'opd' arm"),
        (lambda d: d["arm"][0]["sft"].update(init="x"), "sft.init is set by the study"),
        (lambda d: d["arm"][0]["sft"].update(val_split="validation"), "biases the reported accuracy"),
        (lambda d: d["arm"][0]["sft"].update(max_step=3), "did you mean 'max_steps'"),
        (lambda d: d["arm"][0]["sft"].update(rollout={"max_batch_rows": 2}), "study's \\[rollout\\] table"),
        (lambda d: d["grpo"].update(rollout={"max_batch_rows": 2}), "grpo.rollout"),
        (lambda d: d.update(arm=[]), "no Stage-1 arm"),
    ]
    for mutate, message in cases:
        msg = arm_error(mutate)
        assert re.search(message, msg), (message, msg)


def test_grpo_table_overrides_the_preset_key_by_key():
    data = read_toml(ROOT / "configs" / "paper-qwen2.5-vl-7b.toml")
    data["grpo"] = {"micro_batch": 4, "optim": {"lr": 2e-6}}
    grpo = parse_study(data).grpo
    assert grpo.micro_batch == 4 and grpo.optim.lr == 2e-6
    assert grpo.optim.weight_decay == 0.01 and grpo.optim.dtype == "bfloat16"  # the preset's, kept
    assert grpo.prompts_per_step == 512 and grpo.loss.clip_high == 0.3


def test_step_keys_hash_json_params_and_follow_the_dependencies():
    steps = plan(load_study(TOY), R)
    for s in steps:
        json.dumps(s.params)
    assert [s.key for s in steps] == [s.key for s in plan(load_study(TOY), R)]
    data = toy_data()
    data["arm"][2]["opd"]["optim"]["lr"] = 2e-4
    changed = {a.name for a, b in zip(steps, plan(parse_study(data), R)) if a.key != b.key}
    opd_models = ("opd", "opd+grpo")
    assert changed == {"stage1:opd", "grpo:opd", "report"} | {
        f"eval:{m}:{sp}" for m in opd_models for sp in ("validation", "ood")
    }


def test_step_keys_do_not_depend_on_where_the_run_directory_is(tmp_path, monkeypatch):
    steps = plan(load_study(TOY), R)
    # the same study planned into another directory (absolute, or relative to the cwd): same keys
    elsewhere = plan(load_study(TOY), Path("/srv/other/place/run"))
    monkeypatch.chdir(tmp_path)
    relative = plan(load_study(TOY), Path("runs/toy"))
    assert [s.key for s in steps] == [s.key for s in elsewhere] == [s.key for s in relative]
    # the jobs themselves still name the real paths
    assert by_name(elsewhere)["grpo:sft_early"].job.init == "/srv/other/place/run/stage1/sft_over/best"
    # a path outside the run directory is an input: moving it changes the keys that read it
    data = toy_data()
    data["student"] = {"path": "/ckpt/student-a"}
    a = by_name(plan(parse_study(data), R))
    data["student"] = {"path": "/ckpt/student-b"}
    b = by_name(plan(parse_study(data), R))
    assert a["stage1:sft_over"].key != b["stage1:sft_over"].key and a["data"].key == b["data"].key


def test_study_config_lists_the_arms_in_report_order():
    arms = to_dict(load_study(TOY))["arm"]
    assert [(a["name"], a["label"], a["method"], a["checkpoint"]) for a in arms] == [
        ("sft_early", "SFT (early-stopped)", "sft", "best"),
        ("sft_over", "SFT (over-trained)", "sft", "final"),
        ("opd", "OPD", "opd", "final"),
    ]


def test_write_best_arm_keeps_the_run_log_up_to_the_best_step(tmp_path):
    run_dir, arm_dir = tmp_path / "stage1" / "sft_over", tmp_path / "stage1" / "sft_early"
    run_dir.mkdir(parents=True)
    rows = [{"step": s, "stage": "sft", "loss": 1.0 / (s + 1)} for s in range(7)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    result = {"best_step": 4, "early_model": str(run_dir / "best"), "best_val_accuracy": 0.5}
    write_best_arm(run_dir, arm_dir, result)
    kept = [json.loads(ln) for ln in (arm_dir / "metrics.jsonl").read_text().splitlines()]
    assert kept == rows[:5]
    assert json.loads((arm_dir / "result.json").read_text()) == {
        "derived_from": str(run_dir),
        "checkpoint": "best",
        "model": str(run_dir / "best"),
        "step": 4,
        "reached": True,
        "best_step": 4,
        "best_val_accuracy": 0.5,
    }

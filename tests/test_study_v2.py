"""Study v2's plan and steps: the stage-0 check, one selection rule with a learning-rate grid, seeds, matched arms."""

import json
import re
from pathlib import Path

import pytest

from warmstart.config import ConfigError, read_toml
from warmstart.stages.opd import OPDConfig
from warmstart.stages.sft import SFTConfig
from warmstart.study import parse_study, plan
from warmstart.study.execute import choose_lr, not_reached, runtime_config, select_lr, write_arm_view
from warmstart.study.plan import EvalJob, SelectJob, Stage1Job
from warmstart.study.stage0 import Stage0Check, compare, matched_target

ROOT = Path(__file__).resolve().parents[1]
R = Path("/runs/v2")


def _toy() -> dict:
    return read_toml(ROOT / "configs" / "toy.toml")


def test_toy_plan_gates_stage1_on_stage0_and_trains_every_rate_of_the_grid():
    steps = {s.name: s for s in plan(parse_study(_toy()), R)}
    assert steps["stage0"].deps == ["data", "student", "teacher"]
    grid = [n for n in steps if n.startswith("stage1:sft_over@lr")]
    assert grid == ["stage1:sft_over@lr0.0001", "stage1:sft_over@lr0.0003", "stage1:sft_over@lr0.001"]
    for n in grid + [n for n in steps if n.startswith("stage1:opd_over@lr")]:
        assert "stage0" in steps[n].deps
        assert steps[n].job.matched_from == str(R / "stage0.json")  # both runs keep a matched arm
    lrs = [steps[n].job.config.optim.lr for n in grid]
    assert lrs == [1e-4, 3e-4, 1e-3]
    opd_lrs = [steps[f"stage1:opd_over@lr{x}"].job.config.optim.lr for x in ("0.0001", "0.0003", "0.001")]
    assert opd_lrs == lrs  # the same grid for both methods
    sel = steps["select:sft_over"]
    assert sel.deps == grid and sel.out == R / "stage1" / "sft_over" / "grid.json"
    assert set(sel.job.arm_views) == {
        (str(R / "stage1" / "sft_early"), "best"),
        (str(R / "stage1" / "sft_matched"), "matched"),
    }
    # over-trained runs for both methods (their final/ is an arm), same cap in sequences
    sft, opd = steps[grid[0]].job.config, steps["stage1:opd_over@lr0.0001"].job.config
    assert sft.arm == "over" and opd.arm == "over"
    assert sft.max_steps * sft.batch_size == opd.steps * opd.prompts_per_step * opd.n == 11520
    assert sft.train_problems == opd.train_problems == 300
    # Stage-2 only for the arms that ask for it; GRPO reads the linked checkpoint of the chosen rate
    assert sorted(n for n in steps if n.startswith("grpo:")) == [
        "grpo:opd",
        "grpo:sft_early",
        "grpo:sft_over",
    ]
    assert steps["grpo:sft_early"].job.init == str(R / "stage1" / "sft_over" / "best")
    assert steps["grpo:sft_early"].deps[-1] == "select:sft_over"
    # matched arms are evaluated, through a not-reached check on their run's result
    ev = steps["eval:opd_matched:validation"].job
    assert ev.model == str(R / "stage1" / "opd_over" / "matched")
    assert ev.not_reached_from == str(R / "stage1" / "opd_over" / "result.json")
    assert steps["eval:sft_early:validation"].job.not_reached_from == ""
    assert "eval:opd_matched+grpo:validation" not in steps


def test_seeds_make_replicas_that_take_the_chosen_rate_and_shifted_seeds():
    d = _toy()
    d["seeds"] = 3
    steps = {s.name: s for s in plan(parse_study(d), R)}
    rep = steps["stage1:sft_over@s2"]
    assert rep.job.lr_from == str(R / "stage1" / "sft_over" / "grid.json")
    assert "select:sft_over" in rep.deps
    assert rep.job.config.seed == steps["stage1:sft_over@lr0.001"].job.config.seed + 2
    assert rep.out == R / "stage1" / "sft_over@s2"
    assert (str(R / "stage1" / "sft_early@s2"), "best") in rep.job.arm_views
    g = steps["grpo:opd@s1"].job
    assert g.init == str(R / "stage1" / "opd_over@s1" / "best")
    assert g.seed == steps["grpo:opd"].job.seed + 1
    assert "eval:sft_over@s2+grpo:ood" in steps and "eval:opd_matched@s1:validation" in steps
    # no grid step for a replica
    assert not any(re.match(r"stage1:.*@s\d+@lr", n) for n in steps)


def test_keys_change_with_the_grid_and_the_generator_version(monkeypatch):
    base = {s.name: s.key for s in plan(parse_study(_toy()), R)}
    d = _toy()
    d["lr_grid"] = [1e-4, 3e-4, 2e-3]
    other = {s.name: s.key for s in plan(parse_study(d), R)}
    assert base["stage1:sft_over@lr0.0001"] == other["stage1:sft_over@lr0.0001"]
    assert "stage1:sft_over@lr0.002" in other and base["data"] == other["data"]
    import sys

    monkeypatch.setattr(sys.modules["warmstart.study.plan"], "GENERATOR_VERSION", "999")
    bumped = {s.name: s.key for s in plan(parse_study(_toy()), R)}
    assert bumped["data"] != base["data"] and bumped["report"] != base["report"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("stage0"), r"checkpoint 'matched' needs a \[stage0\] table"),
        (lambda d: d["arm"][5].update(grpo=True), "matched arm may not exist .* set grpo = false"),
        (lambda d: d["arm"][1].update(same_as="nope"), "same_as = 'nope' names no earlier"),
        (lambda d: d["arm"][1].update(sft={"max_steps": 3}), r"gives the \[sft\] table; remove"),
        (lambda d: d["arm"][3].update(method="sft"), "is a opd arm, this one says 'sft'"),
        (lambda d: d.update(lr_grid=[1e-3, 1e-3]), "lr_grid must list distinct"),
        (lambda d: d.update(seeds=0), "seeds must be >= 1"),
        (lambda d: d["arm"][2]["opd"].update(eval_every=0), r"best/matched need opd.eval_every > 0"),
    ],
)
def test_v2_config_errors_name_the_fault(mutate, message):
    d = _toy()
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        parse_study(d)


def test_stage0_compare_by_hand():
    check = Stage0Check(min_teacher_gap=0.15, matched_fraction=0.5)
    student = {"a": [True, False, False, False], "b": [True, True, False, False]}
    teacher = {"a": [True, True, True, False], "b": [True, True, True, False]}
    t = compare(student, teacher, check)
    # a: 0.25 -> 0.75 (gap 0.5, ok); b: 0.5 -> 0.75 (gap 0.25, ok); overall 3/8 -> 6/8
    assert t["families"]["a"] == {"n": 4, "student": 0.25, "teacher": 0.75, "gap": 0.5, "ok": True}
    assert t["ok"] and t["failing"] == []
    assert t["student_greedy"] == 0.375 and t["teacher_greedy"] == 0.75
    assert t["matched_target"] == pytest.approx(0.5625)  # 0.375 + 0.5 x 0.375
    strict = compare(student, teacher, Stage0Check(min_teacher_gap=0.3))
    assert not strict["ok"] and strict["failing"] == ["b"]
    assert matched_target(0.2, 0.6, 0.25) == pytest.approx(0.3)


def test_choose_lr_takes_the_best_early_accuracy_and_the_smaller_rate_on_ties():
    runs = [
        {"lr": 1e-4, "best_accuracy": 0.30},
        {"lr": 3e-4, "best_accuracy": 0.42},
        {"lr": 1e-3, "best_accuracy": 0.42},
    ]
    assert choose_lr(runs)["lr"] == 3e-4
    assert choose_lr(runs[:1])["lr"] == 1e-4


def _fake_run(d: Path, lr: float, best: int, acc: float, matched: int | None, n_rows: int = 7) -> None:
    for ck in ("best", "final") + (("matched",) if matched is not None else ()):
        (d / ck).mkdir(parents=True)
        (d / ck / "weights.txt").write_text(f"{lr} {ck}")
    rows = [{"step": s, "loss": 1.0} for s in range(n_rows)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.json").write_text(json.dumps({"lr": lr}))
    sel = {"best_step": best, "best_accuracy": acc, "over_step": n_rows - 1, "matched_step": matched}
    result = {
        "best_step": best,
        "best_val_accuracy": acc,
        "selection": {**sel, "matched_target": 0.4},
        "compute": {"sequences": 32 * (n_rows - 1), "seconds": 1.5},
    }
    (d / "result.json").write_text(json.dumps(result))


def test_select_links_the_chosen_rate_and_writes_every_arm_view(tmp_path):
    home = tmp_path / "stage1" / "sft_over"
    _fake_run(home / "lr0.0001", 1e-4, best=2, acc=0.3, matched=None)
    _fake_run(home / "lr0.001", 1e-3, best=4, acc=0.5, matched=3)
    job = SelectJob(
        lrs=(1e-4, 1e-3),
        runs=(str(home / "lr0.0001"), str(home / "lr0.001")),
        arm_views=(
            (str(tmp_path / "stage1" / "sft_early"), "best"),
            (str(tmp_path / "stage1" / "m"), "matched"),
        ),
    )
    grid = select_lr(job, home / "grid.json")
    assert grid["chosen_lr"] == 1e-3 and json.loads((home / "grid.json").read_text()) == grid
    assert [r["best_accuracy"] for r in grid["runs"]] == [0.3, 0.5]
    assert (home / "final" / "weights.txt").read_text() == "0.001 final"
    assert (home / "best").is_symlink() and not Path(str((home / "best").readlink())).is_absolute()
    assert json.loads((home / "result.json").read_text())["chosen_lr"] == 1e-3
    early = [
        json.loads(x)["step"]
        for x in (tmp_path / "stage1" / "sft_early" / "metrics.jsonl").read_text().splitlines()
    ]
    assert early == [0, 1, 2, 3, 4]
    m = json.loads((tmp_path / "stage1" / "m" / "result.json").read_text())
    assert m["checkpoint"] == "matched" and m["step"] == 3 and m["reached"]
    # a second selection (the grid redone) replaces the links
    _fake_run(tmp_path / "other", 3e-4, best=1, acc=0.9, matched=None)
    import shutil

    shutil.move(str(tmp_path / "other"), str(home / "lr0.0003"))
    job2 = SelectJob(lrs=(1e-3, 3e-4), runs=(str(home / "lr0.001"), str(home / "lr0.0003")))
    assert select_lr(job2, home / "grid.json")["chosen_lr"] == 3e-4
    assert (home / "final" / "weights.txt").read_text() == "0.0003 final"
    assert not (home / "matched").exists()  # the chosen run never reached the target


def test_a_matched_arm_never_reached_is_a_record_not_a_crash(tmp_path):
    run = tmp_path / "stage1" / "opd_over"
    _fake_run(run, 1e-4, best=2, acc=0.31, matched=None)
    write_arm_view(
        run, tmp_path / "stage1" / "opd_matched", json.loads((run / "result.json").read_text()), "matched"
    )
    view = json.loads((tmp_path / "stage1" / "opd_matched" / "result.json").read_text())
    assert view["reached"] is False and view["step"] is None
    assert not (tmp_path / "stage1" / "opd_matched" / "metrics.jsonl").exists()
    job = EvalJob(
        model=str(run / "matched"),
        model_name="opd_matched",
        data="d",
        split="validation",
        blank_images=False,
        settings=None,
        not_reached_from=str(run / "result.json"),
    )
    rec = not_reached(job)
    assert rec["not_reached"] and rec["target"] == 0.4
    assert rec["reason"] == "selection accuracy never reached 0.400 (best 0.310 at step 2)"
    reached = tmp_path / "r"
    _fake_run(reached, 1e-4, best=2, acc=0.5, matched=1)
    assert not_reached(EvalJob(**{**job.__dict__, "not_reached_from": str(reached / "result.json")})) is None
    assert "not_reached_from" not in job.arguments()


def test_runtime_config_takes_the_stage0_target_and_the_chosen_rate(tmp_path):
    (tmp_path / "stage0.json").write_text(json.dumps({"matched_target": 0.42}))
    (tmp_path / "grid.json").write_text(json.dumps({"chosen_lr": 3e-4}))
    job = Stage1Job(
        method="sft",
        config=SFTConfig(),
        matched_from=str(tmp_path / "stage0.json"),
        lr_from=str(tmp_path / "grid.json"),
    )
    cfg = runtime_config(job)
    assert cfg.matched_target == 0.42 and cfg.optim.lr == 3e-4
    assert runtime_config(Stage1Job(method="opd", config=OPDConfig())) == OPDConfig()


def test_toy_full_extends_toy_with_three_seeds_and_nothing_else(tmp_path):
    from warmstart.config import to_dict
    from warmstart.study import load_study

    toy, full = load_study(ROOT / "configs" / "toy.toml"), load_study(ROOT / "configs" / "toy-full.toml")
    a, b = to_dict(toy), to_dict(full)
    assert (b.pop("name"), b.pop("seeds")) == ("toy-full", 3)
    a.pop("name"), a.pop("seeds")
    assert a == b
    (tmp_path / "a.toml").write_text('extends = "b.toml"\nname = "a"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="extends makes a cycle"):
        load_study(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('extends = "nope.toml"\n')
    with pytest.raises(ConfigError, match="extends = 'nope.toml': no such file"):
        load_study(tmp_path / "c.toml")

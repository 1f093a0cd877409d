"""The report on a study-v2 run: stage 0, Stage-1 selection and compute, not-reached matched
checkpoints, arms without Stage 2, and which arm plays which claim role.

The run directory is :func:`fixtures_report.write_v2_run_dir`: the files the study writes
(``stage0.json``, ``stage1/<run>/result.json`` with ``selection`` and ``compute``,
``grid.json``, arm views, not-reached eval records) with known numbers.
"""

from __future__ import annotations

import json
import re

import pytest

from fixtures_report import (
    MATCHED_TARGET,
    OPD_COMPUTE,
    SFT_GRID,
    stage0_record,
    v2_arms,
    write_run_dir,
    write_v2_run_dir,
)
from warmstart.evaluate_schema import eval_relpath
from warmstart.report import load_run, make_report
from warmstart.report.claim_tables import evaluate_claims, resolve_role
from warmstart.report.claims import INCONCLUSIVE, NOT_TESTABLE
from warmstart.report.render import render_markdown
from warmstart.report.tables import NO_STAGE2, NOT_REACHED

B = 200


def _md(run) -> str:
    return render_markdown(make_report(run, B=B, seed=0))


def _table(md: str, title: str) -> list[list[str]]:
    """The rows (header first, the |---| line dropped) of the table titled ``title``, as cell lists."""
    block = md.split(f"### {title}", 1)[1].split("\n\n")[1]
    lines = [ln for ln in block.splitlines() if not ln.startswith("|---")]
    return [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]


def _row(table: list[list[str]], first: str) -> list[str]:
    return next(r for r in table if r[0] == first)


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    run = load_run(write_v2_run_dir(tmp_path_factory.mktemp("v2"), B=B))
    return run, _md(run)


def test_v2_run_reads_without_missing_files(v2):
    run, _ = v2
    # no +grpo file of the grpo = false arms, no log of the never-reached matched arm is expected
    assert run.missing == [] and run.unreadable == {}
    assert not any(
        "+grpo" in m and m.split("+")[0] in ("opd_over", "sft_matched", "opd_matched") for m in run.models
    )
    assert set(run.not_reached) == {("opd_matched", "validation"), ("opd_matched", "ood")}
    assert run.unreached("opd_matched", "ood").target == pytest.approx(MATCHED_TARGET)
    assert sorted(run.grids) == ["opd_over", "sft_over"]
    assert run.stage0["matched_target"] == pytest.approx(0.465)


def test_sections_keep_the_answer_first(v2):
    _, md = v2
    order = [
        "## Claims of the paper",
        "## Entropy along both stages, every arm",
        "## Stage 0: teacher vs base student",
        "## Accuracy per question family",
        "## Claim tests in detail",
        "## Stage-1 selection and compute",
        "## Accuracy\n",
        "## Inputs",
        "## Sources",
    ]
    positions = [md.index(h) for h in order]
    assert positions == sorted(positions)


def test_stage0_table_is_stage0_json_per_family(v2):
    _, md = v2
    t = _table(md, "Stage 0: teacher vs base student per question family (greedy, split test)")
    assert t[0][:7] == [
        "family",
        "n",
        "student greedy (%)",
        "teacher greedy (%)",
        "teacher − student (pp)",
        "gap >= 15 pp",
        "student pass@8 at its stop (%)",
    ]
    # angle: student 0.28, teacher 0.56 -> +28.0 pp; pass@8 0.33 at the student's stop
    assert _row(t, "angle")[:7] == ["angle", "100", "28.0", "56.0", "+28.0", "yes", "33.0"]
    # all families: (0.30 + 0.35 + 0.28) / 3 = 31.0 %, teacher (0.60 + 0.70 + 0.56) / 3 = 62.0 %
    assert _row(t, "all families")[:6] == ["all families", "300", "31.0", "62.0", "+31.0", "yes"]
    assert "every family (greedy, split test): yes." in md
    assert "met at step 250, where its training stopped" in md
    # target 0.31 + 0.5 x (0.62 - 0.31) = 0.465, and the file's value agrees with its rule
    assert "Matched-outcome target: 46.5% selection accuracy" in md and "not the file's target" not in md


def test_a_failing_stage0_check_names_the_family_and_its_gap(tmp_path):
    record = stage0_record(ok=False, stop_reached=False)
    record["matched_target"] = 0.5  # not what the rule gives: the report must say so
    run = load_run(write_v2_run_dir(tmp_path, B=B, stage0=record))
    md = _md(run)
    assert "no, failing: angle (+10.0 pp)." in md
    t = _table(md, "Stage 0: teacher vs base student per question family (greedy, split test)")
    assert _row(t, "angle")[5] == "**no**"
    assert "not reached: stopped at max steps (last check at step 800)" in md
    assert "the rule gives" in md and "not the file's target" in md


def test_selection_table_shows_every_grid_rate_and_marks_the_chosen_one(v2):
    _, md = v2
    t = _table(md, "Stage-1 selection and compute")
    chosen = _row(t, "sft_over / lr0.001")
    assert chosen[3] == "**0.001 (chosen)**" and chosen[4] == "20 / 50.0%" and chosen[6] == "10"
    assert chosen[7:10] == ["1,248", "74,880", "41.5"]
    other = _row(t, "sft_over / lr0.0003")
    assert (
        other[3] == "0.0003"
        and other[4] == "30 / 41.0%"
        and other[6].startswith("not reached (target 46.5%)")
    )
    opd = _row(t, "opd_over / lr0.0003")
    assert opd[3] == "**0.0003 (chosen)**" and opd[7:10] == [
        f"{OPD_COMPUTE['sequences']:,}",
        f"{OPD_COMPUTE['tokens']:,}",
        f"{OPD_COMPUTE['seconds']:.1f}",
    ]
    assert "opd (best), opd_over (final), opd_matched (matched)" in opd[1]
    assert "Every arm used the same selection rule (split 'test', every 10 steps, patience 2" in md
    assert SFT_GRID["rule"] in md


def test_selection_without_a_grid_reads_the_results(tmp_path):
    run = load_run(write_v2_run_dir(tmp_path, B=B, grid=False))
    t = _table(_md(run), "Stage-1 selection and compute")
    row = _row(t, "opd_over")
    # lr from the arm's opd table (1e-4), selection and compute from stage1/opd_over/result.json
    assert row[3] == "0.0001" and row[4] == "20 / 41.0%" and row[5] == "39"
    assert row[6] == "not reached (target 46.5%)" and row[9] == "88.2"


def test_a_matched_checkpoint_never_reached_is_not_reached_never_missing(v2):
    run, md = v2
    acc = _table(md, "Accuracy per model (greedy and sampled)")
    assert _row(acc, "opd_matched")[2:6] == [NOT_REACHED] * 4
    assert "never reached 0.465 (best 0.410 at step 20)" in md
    results, left_out = evaluate_claims(run, B=B)
    by = {c.spec.key: c for c in results}
    assert left_out == []
    for key in ("C3m", "C4m"):
        assert by[key].verdict == INCONCLUSIVE
        assert all(t.verdict == INCONCLUSIVE and "not reached" in t.note for t in by[key].tests)
    claims = md.split("## Entropy along both stages")[0]
    assert "missing:" not in claims
    training = _table(md, "Training logs: entropy and reward at the first and last logged step")
    assert _row(training, "opd_matched")[1] == f"{NOT_REACHED} (no checkpoint, no log)"


def test_a_corrupt_not_reached_record_is_unreadable_with_the_key_named(tmp_path):
    root = write_v2_run_dir(tmp_path, B=B)
    rel = eval_relpath("opd_matched", "validation")
    (root / rel).write_text(json.dumps({"not_reached": True, "target": 0.4}))
    run = load_run(root)
    assert "model_name" in run.unreadable[rel]
    assert ("opd_matched", "validation") not in run.not_reached


def test_arms_without_stage2_have_no_stage2_rows(v2):
    run, md = v2
    assert run.stage2_arms == ["sft_early", "sft_over", "opd"]
    training = _table(md, "Training logs: entropy and reward at the first and last logged step")
    assert _row(training, "opd_over")[2:4] == [NO_STAGE2] * 2
    assert "opd_over+grpo" not in md and "sft_matched+grpo" not in md
    diff = _table(md, "Stage-2 endpoint minus its Stage-1 init, validation (in-domain)")
    assert [r[0] for r in diff[1:]] == [
        "sft_early+grpo − sft_early",
        "sft_over+grpo − sft_over",
        "opd+grpo − opd",
    ]
    assert "Arms without a Stage-2 run (grpo = false): opd_over, sft_matched, opd_matched" in md


def test_roles_go_to_the_early_opd_and_never_to_matched_arms(v2, tmp_path):
    run, _ = v2
    assert resolve_role(run, "opd")[1] == [("s0", "opd")]
    assert resolve_role(run, "opd_over")[1] == [("s0", "opd_over")]
    # other names: the role is played by the arm of its method and checkpoint
    renamed = {"sft_early": "warm", "sft_over": "warm_long", "opd": "distill", "opd_over": "distill_long"}
    arms = [{**a, "name": renamed.get(a["name"], a["name"])} for a in v2_arms()]
    other = load_run(write_run_dir(tmp_path / "renamed", P=12, n=8, B=B, arms=arms))
    assert resolve_role(other, "opd")[0] == "distill"  # (opd, best) before (opd, final)
    assert resolve_role(other, "sft_early")[0] == "warm"
    # an arm named like an early role but with a matched checkpoint never plays it
    arms = [{**a, "checkpoint": "matched"} if a["name"] == "sft_early" else a for a in v2_arms()[1:]]
    arms = [a for a in arms if a["name"] != "sft_matched"]
    arms.append({**v2_arms()[0], "checkpoint": "matched", "name": "sft_early", "grpo": False})
    odd = load_run(write_run_dir(tmp_path / "odd", P=12, n=8, B=B, arms=arms))
    assert resolve_role(odd, "sft_early") is None
    assert resolve_role(odd, "sft_matched")[0] == "sft_early"
    results, _ = evaluate_claims(odd, B=B)
    c2 = next(c for c in results if c.spec.key == "C2")
    assert any(t.verdict == NOT_TESTABLE and "sft_early" in t.note for t in c2.tests)


def test_a_run_from_before_v2_says_what_it_lacks(tmp_path):
    run = load_run(write_run_dir(tmp_path, P=12, n=8, B=B))
    md = _md(run)
    assert "No stage0.json: this run has no stage-0 check (a run from before Study v2)." in md
    assert re.search(r"Stage-1 selection and compute: not recorded in this run", md)
    assert run.missing == [] and run.stage0 is None and run.grids == {}


def test_an_arm_without_stage2_still_expects_its_own_evals_in_arm_order(v2, tmp_path):
    run, _ = v2
    # base, teacher, every arm in config order (grpo = false ones too), then the Stage-2 endpoints
    assert run.models == [
        "base",
        "teacher",
        *(a["name"] for a in v2_arms()),
        "sft_early+grpo",
        "sft_over+grpo",
        "opd+grpo",
    ]
    root = write_v2_run_dir(tmp_path, B=B)
    (root / eval_relpath("opd_over", "ood")).unlink()
    assert load_run(root).missing == [eval_relpath("opd_over", "ood")]

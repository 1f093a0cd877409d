"""The claims measured on fixture runs: one seed (today's layout), three seeds (``<arm>@s<k>``), other arm names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures_report import make_eval, write_run_dir
from warmstart import metrics as M
from warmstart.evaluate_schema import Interval, paired_compare, problem_values, read_eval, write_eval
from warmstart.report import load_run, make_report, model_colors
from warmstart.report.claim_tables import evaluate_claims, evaluate_test, resolve_role
from warmstart.report.claims import CLAIMS, NOT_TESTABLE
from warmstart.report.data import ArmInfo

B = 300
ARMS = [
    {"name": "sft_early", "label": "SFT (early-stopped)", "method": "sft", "checkpoint": "best"},
    {"name": "sft_over", "label": "SFT (over-trained)", "method": "sft", "checkpoint": "final"},
    {"name": "opd", "label": "OPD", "method": "opd", "checkpoint": "final"},
]
SEEDED = [{**a, "name": n} for a in ARMS for n in (a["name"], f"{a['name']}@s1", f"{a['name']}@s2")]


def _test(key: str, i: int):
    return next(c for c in CLAIMS if c.key == key).tests[i]


def _by_key(results):
    return {c.spec.key: c for c in results}


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    return load_run(write_run_dir(tmp_path_factory.mktemp("one"), P=30, n=8, B=B, arms=ARMS))


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    return load_run(write_run_dir(tmp_path_factory.mktemp("three"), P=24, n=8, B=B, arms=SEEDED))


def test_one_seed_differences_are_the_paired_differences_of_the_eval_files(one_seed):
    run = one_seed
    for key, i, a, b, metric in (
        ("C3", 0, "opd", "sft_early", "entropy_token_mean"),
        ("C4", 1, "opd", "sft_over", "distinct_answers_mean"),
        ("C4", 2, "opd", "sft_early", "pass@8"),  # pass@16 falls back to the n = 8 the files have
        ("C2", 0, "sft_early", "sft_over", "greedy_accuracy"),
    ):
        t = evaluate_test(run, _test(key, i), B, 0)
        split = _test(key, i).split
        want = paired_compare(run.eval(a, split), run.eval(b, split), [metric], B=B, seed=0)[metric]
        assert t.metric == metric and t.interval == want, (key, i)
        assert t.label == f"{a} − {b}"
        assert [p for _, p in t.seed_points] == [pytest.approx(want.value)]
    assert "not every model has n >= 16" in evaluate_test(run, _test("C4", 2), B, 0).note


def test_one_seed_spread_is_max_minus_min_of_the_files_values(one_seed):
    t = evaluate_test(one_seed, _test("C1", 0), B, 0)
    values = [
        one_seed.eval(m, "validation").summary["greedy_accuracy"].value
        for m in ("sft_early", "sft_over", "opd")
    ]
    assert t.interval.value == pytest.approx(max(values) - min(values))
    assert t.interval.lo <= t.interval.value <= t.interval.hi


def test_three_seeds_are_grouped_pooled_per_problem_and_shown_per_seed(three_seeds):
    run = three_seeds
    assert list(run.groups) == ["sft_early", "sft_over", "opd"]
    assert [a.seed for a in run.groups["opd"]] == [None, 1, 2]  # the bare name: the stage table has no seed
    colors = model_colors(run)
    assert colors["opd@s2"] == colors["opd"] == colors["opd@s1+grpo"] != colors["sft_over@s1"]

    # a mean metric: the per-problem mean over seeds, then the paired bootstrap of the difference
    t = evaluate_test(run, _test("C4", 0), B, 0)  # distinct answers: opd - sft_early
    evs = {
        m: read_eval(run.run_dir / f"eval/{m}__validation.json")
        for g in ("opd", "sft_early")
        for m in (g, f"{g}@s1", f"{g}@s2")
    }

    def pooled(g: str) -> np.ndarray:
        return np.mean(
            [problem_values(evs[m].per_problem, "distinct_answers_mean") for m in (g, f"{g}@s1", f"{g}@s2")],
            axis=0,
        )

    want = M.paired_diff_ci(pooled("opd"), pooled("sft_early"), B=B, seed=0)
    assert t.interval == Interval.from_ci(want)
    # each seed's own estimate: the difference of the two files' summary values, seeds matched by number
    got = dict(t.seed_points)
    for lab, suffix in (("s?", ""), ("s1", "@s1"), ("s2", "@s2")):
        a, b = evs[f"opd{suffix}"], evs[f"sft_early{suffix}"]
        assert got[lab] == pytest.approx(
            a.summary["distinct_answers_mean"].value - b.summary["distinct_answers_mean"].value
        )

    # the token-weighted entropy pools entropy sums and token counts
    t = evaluate_test(run, _test("C3", 0), B, 0)
    num = {
        g: sum(problem_values(evs[m].per_problem, "entropy_token_mean") for m in (g, f"{g}@s1", f"{g}@s2"))
        for g in ("opd", "sft_early")
    }
    want = M.paired_ratio_diff_ci(
        num["opd"][0], num["opd"][1], num["sft_early"][0], num["sft_early"][1], B=B, seed=0
    )
    assert t.interval == Interval.from_ci(want)

    # base has one model: it is paired with every seed of the arm
    t = evaluate_test(run, _test("C2", 1), B, 0)  # sft_early - base on OOD
    assert len(t.seed_points) == 3


def test_three_seed_report_shows_the_spread_beside_the_interval(three_seeds):
    report = make_report(three_seeds, B=B)
    claims = next(b for s in report.sections if s.anchor == "claims" for b in s.blocks if hasattr(b, "rows"))
    seeds = {r[0].text: r[6].text for r in claims.rows}
    assert seeds["C3"].startswith("3 seeds: s? ") and "(range " in seeds["C3"]
    assert seeds["C1"].startswith("3 seeds:")  # a spread per seed too


def test_a_study_config_with_seeds_lists_its_replicas_as_the_study_trains_them(tmp_path, three_seeds):
    # the study writes each arm once and `seeds`; its replicas <arm>@s<k> are the seeds 1..S-1
    root = write_run_dir(tmp_path / "seeds", P=24, n=8, B=B, arms=SEEDED)
    cfg = {"name": "fixture", "seeds": 3, "arm": [{**a, "config": {}} for a in ARMS]}
    (root / "study_config.json").write_text(json.dumps(cfg))
    run = load_run(root)
    assert [a.name for a in run.arms] == [a.name for a in three_seeds.arms if "@" not in a.name] + [
        f"{a['name']}@s{k}" for a in ARMS for k in (1, 2)
    ]
    assert [a.seed_label for a in run.groups["opd"]] == ["s?", "s1", "s2"] and run.missing == []
    assert (
        evaluate_test(run, _test("C3", 0), B, 0).interval
        == evaluate_test(three_seeds, _test("C3", 0), B, 0).interval
    )
    cfg["seeds"] = 0
    (root / "study_config.json").write_text(json.dumps(cfg))
    assert "key 'seeds': expected an integer >= 1, got 0" in load_run(root).unreadable["study_config.json"]


def test_roles_resolve_by_method_and_checkpoint_when_names_differ(tmp_path):
    arms = [
        {"name": "distill", "label": "OPD (reverse KL)", "method": "opd", "checkpoint": "final"},
        {"name": "warm_best", "label": "SFT best", "method": "sft", "checkpoint": "best"},
        {"name": "warm_final", "label": "SFT final", "method": "sft", "checkpoint": "final"},
    ]
    run = load_run(write_run_dir(tmp_path, P=12, n=4, B=100, arms=arms))
    assert resolve_role(run, "opd+grpo") == ("distill+grpo", [("s?", "distill+grpo")])
    assert run.arms[1] == ArmInfo("warm_best", "SFT best", "sft", "best", None)
    t = evaluate_test(run, _test("C3", 1), 100, 0)
    assert t.label == "distill − warm_final" and t.interval is not None
    results, left_out = evaluate_claims(run, B=100)
    # matched arms have no Stage 2, so only C3's and C4's init comparisons have a matched version
    assert [c.spec.key for c in results] == ["C1", "C2", "C3", "C4", "C5", "C6"] and left_out == [
        "C3m",
        "C4m",
    ]


def test_matched_outcome_claims_appear_with_matched_checkpoints(tmp_path):
    arms = [*ARMS, {"name": "sft_m", "label": "SFT matched", "method": "sft", "checkpoint": "matched"}]
    arms.append({"name": "opd_m", "label": "OPD matched", "method": "opd", "checkpoint": "matched"})
    results, left_out = evaluate_claims(load_run(write_run_dir(tmp_path, P=12, n=4, B=100, arms=arms)), B=100)
    c3m = _by_key(results)["C3m"]
    assert left_out == [] and c3m.tests[0].label == "opd_m − sft_m"


def test_missing_and_mismatched_inputs_make_a_test_not_testable(tmp_path):
    run_dir = write_run_dir(tmp_path, P=12, n=4, B=100, arms=SEEDED, skip=("eval/opd__validation.json",))
    # one seed of sft_early evaluated on other problems: pooling would mix problem sets
    write_eval(
        run_dir / "eval/sft_early@s2__validation.json",
        make_eval("sft_early@s2", "validation", P=10, n=4, B=100),
    )
    run = load_run(run_dir)
    t = evaluate_test(run, _test("C3", 0), 100, 0)  # opd - sft_early at init
    assert t.verdict == NOT_TESTABLE and "same problems" in t.note
    # the missing seed of opd is left out of the pool, and said so
    t = evaluate_test(run, _test("C3", 1), 100, 0)  # opd - sft_over
    assert t.interval is not None and "seeds left out (missing): eval/opd__validation.json" in t.note
    assert [lab for lab, _ in t.seed_points] == ["s1", "s2"]
    # the only file of a model missing: not testable, naming the file; the claim says so too
    run_dir2 = write_run_dir(tmp_path / "b", P=12, n=4, B=100, arms=ARMS, skip=("eval/opd+grpo__ood.json",))
    c6 = _by_key(evaluate_claims(load_run(run_dir2), B=100)[0])["C6"]
    assert c6.tests[0].note == "missing: eval/opd+grpo__ood.json" and c6.verdict == NOT_TESTABLE

"""Tests for the eval.json schema: summary numbers by hand, round trip, validation errors, pairing."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from fixtures_report import make_eval
from warmstart import evaluate_schema as S
from warmstart.metrics import ProblemMismatchError


def sample(
    correct: bool, normalized: str, length: int = 4, h: float = 0.5, fmt: bool = True
) -> S.SampleResult:
    return S.SampleResult(
        extracted=None if normalized == "none" else normalized,
        normalized=normalized,
        correct=correct,
        format_ok=fmt,
        length=length,
        entropy_mean=h,
        entropy_sum=h * length,
    )


def greedy(correct: bool, length: int = 3) -> S.GreedyResult:
    return S.GreedyResult(
        text="<think>x</think> \\boxed{1}",
        extracted="1",
        correct=correct,
        format_ok=True,
        length=length,
        entropy_mean=0.1,
    )


def two_problems() -> list[S.ProblemResult]:
    """Two problems, n = 4 samples each, numbers chosen to be checked by hand."""
    p1 = S.ProblemResult(
        id="a",
        answer="4",
        greedy=greedy(True, length=10),
        samples=[
            sample(True, "4", 2, 1.0),
            sample(True, "4", 2, 1.0),
            sample(False, "5", 4, 0.5),
            sample(False, "none", 4, 0.5, fmt=False),
        ],
    )
    p2 = S.ProblemResult(
        id="b",
        answer="7",
        greedy=greedy(False, length=20),
        samples=[sample(False, "3", 8, 0.25)] * 4,
    )
    return [p1, p2]


def settings(n: int = 4, greedy: bool = True) -> S.DecodingSettings:
    return S.DecodingSettings(n=n, temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0, greedy=greedy)


def test_summarize_hand_computed_values():
    summary = S.summarize(two_problems(), n=4, B=500, seed=0)
    assert list(summary) == [
        "greedy_accuracy",
        "greedy_format_rate",
        "greedy_length_mean",
        "pass@1",
        "pass@2",
        "pass@4",
        "distinct_answers_mean",
        "answer_entropy_mean",
        "entropy_token_mean",
        "entropy_seq_mean",
        "response_length_mean",
        "format_rate",
    ]
    v = {k: iv.value for k, iv in summary.items()}
    assert v["greedy_accuracy"] == pytest.approx(0.5)
    assert v["greedy_length_mean"] == pytest.approx(15.0)
    assert v["pass@1"] == pytest.approx((2 / 4 + 0) / 2)
    assert v["pass@2"] == pytest.approx((1 - 1 / 6 + 0) / 2)  # 1 - C(2,2)/C(4,2) on problem a
    assert v["pass@4"] == pytest.approx(0.5)
    assert v["distinct_answers_mean"] == pytest.approx((3 + 1) / 2)  # {4, 5, none} and {3}
    assert v["answer_entropy_mean"] == pytest.approx((1.5 * math.log(2) + 0) / 2)
    # token-weighted: (2*1 + 2*1 + 4*.5 + 4*.5 + 4 * 8*.25) / (12 + 32) = 16 / 44
    assert v["entropy_token_mean"] == pytest.approx(16 / 44)
    assert v["entropy_seq_mean"] == pytest.approx(((1 + 1 + 0.5 + 0.5) / 4 + 0.25) / 2)
    assert v["response_length_mean"] == pytest.approx((3 + 8) / 2)
    assert v["format_rate"] == pytest.approx((0.75 + 1.0) / 2)
    for iv in summary.values():
        assert iv.lo <= iv.value + 1e-12 and iv.value <= iv.hi + 1e-12


def test_summarize_leaves_out_what_was_not_measured():
    rows = two_problems()
    no_entropy = [
        dataclasses.replace(
            p, samples=[dataclasses.replace(s, entropy_mean=None, entropy_sum=None) for s in p.samples]
        )
        for p in rows
    ]
    assert "entropy_token_mean" not in S.summarize(no_entropy, n=4, B=100)
    greedy_only = [dataclasses.replace(p, samples=[]) for p in rows]
    assert list(S.summarize(greedy_only, n=0, B=100)) == [
        "greedy_accuracy",
        "greedy_format_rate",
        "greedy_length_mean",
    ]
    assert (
        S.pass_k_values(8) == [1, 2, 4, 8] and S.pass_k_values(6) == [1, 2, 4, 6] and S.pass_k_values(0) == []
    )
    with pytest.raises(ValueError, match="problem 'a' has 4 samples, settings say n=3"):
        S.summarize(rows, n=3)


def build(rows=None, name="m", **kw) -> S.EvalResult:
    return S.build_eval(
        model=S.ModelInfo(name=name, path="/ckpt/" + name),
        data_path="data/",
        split="validation",
        settings=settings(),
        per_problem=rows or two_problems(),
        B=200,
        **kw,
    )


def test_write_read_round_trip_is_exact(tmp_path):
    tf = S.teacher_forced_summary("probe.jsonl", [np.array([0.1, 0.3]), np.array([0.5])], B=200)
    ev = build(teacher_forced_entropy=tf)
    path = S.write_eval(tmp_path / "eval" / "m__validation.json", ev)
    assert [p.name for p in path.parent.iterdir()] == ["m__validation.json"]  # no temp file left behind
    back = S.read_eval(path)
    assert back == ev and back.source == str(path)
    raw = json.loads(path.read_text())
    assert raw["schema"] == "warmstart.eval/v1" and list(raw)[0] == "schema"
    assert raw["data"]["problem_ids"] == ["a", "b"]
    assert raw["summary"]["pass@1"] == {
        "value": 0.25,
        "lo": ev.summary["pass@1"].lo,
        "hi": ev.summary["pass@1"].hi,
    }
    assert raw["teacher_forced_entropy"]["token_mean"]["value"] == pytest.approx(0.3)
    assert raw["teacher_forced_entropy"]["seq_mean"]["value"] == pytest.approx((0.2 + 0.5) / 2)
    assert "source" not in raw


def write_raw(tmp_path, mutate) -> str:
    raw = build().to_dict()
    mutate(raw)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    return str(path)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda r: r.pop("schema"), r"bad.json: key 'schema': missing"),
        (
            lambda r: r.update(schema="warmstart.eval/v2"),
            r"bad.json: key 'schema': unsupported version 'warmstart.eval/v2'",
        ),
        (lambda r: r["settings"].pop("top_p"), r"bad.json: key 'settings.top_p': missing"),
        (
            lambda r: r["per_problem"][1]["samples"][2].update(correct=1),
            r"key 'per_problem\[1\].samples\[2\].correct': expected true/false",
        ),
        (lambda r: r["model"].update(nmae="x"), r"key 'model.nmae': unknown key"),
        (lambda r: r["data"].update(n_problems=3), r"key 'data.n_problems': says 3 but per_problem has 2"),
        (lambda r: r["data"].update(problem_ids=["b", "a"]), r"key 'data.problem_ids'"),
        (
            lambda r: r["per_problem"][0]["samples"].pop(),
            r"key 'per_problem\[0\].samples': problem 'a' has 3 samples",
        ),
        (
            lambda r: r["summary"]["pass@1"].update(value="high"),
            r"key 'summary.pass@1.value': expected a finite number",
        ),
    ],
)
def test_read_eval_errors_name_the_file_and_the_key(tmp_path, mutate, message):
    path = write_raw(tmp_path, mutate)
    with pytest.raises(S.EvalSchemaError, match=message):
        S.read_eval(path)


def test_read_eval_on_broken_or_missing_files(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(S.EvalSchemaError, match=r"x.json: not valid JSON \(line 1"):
        S.read_eval(tmp_path / "x.json")
    with pytest.raises(S.EvalSchemaError, match="nope.json: file not found"):
        S.read_eval(tmp_path / "nope.json")


def test_write_eval_refuses_nan(tmp_path):
    ev = build()
    ev.summary["pass@1"] = S.Interval(float("nan"), 0.0, 1.0)
    with pytest.raises(S.EvalSchemaError, match="strict JSON"):
        S.write_eval(tmp_path / "e.json", ev)
    assert not list(tmp_path.iterdir())


def test_paired_compare_identical_is_zero_and_order_is_matched(tmp_path):
    a = build()
    diffs = S.paired_compare(a, build(name="m2"), B=300)
    assert set(diffs) == set(a.summary)
    assert all((iv.value, iv.lo, iv.hi) == (0.0, 0.0, 0.0) for iv in diffs.values())
    # b lists the same problems in another order: matched by id, still all zero
    b_rev = build(rows=list(reversed(two_problems())), name="rev")
    assert all(iv.value == 0.0 for iv in S.paired_compare(a, b_rev, B=300).values())


def test_paired_compare_of_two_models_matches_metric_level_diff():
    a = make_eval("opd+grpo", "validation", P=40, n=8, B=300)
    b = make_eval("opd", "validation", P=40, n=8, B=300)
    diffs = S.paired_compare(a, b, ["greedy_accuracy", "pass@1", "entropy_token_mean"], B=1000)
    for m, iv in diffs.items():
        assert iv.value == pytest.approx(a.summary[m].value - b.summary[m].value)
        assert iv.lo <= iv.value <= iv.hi


def test_paired_compare_on_different_problems_names_both_files(tmp_path):
    a = S.read_eval(
        S.write_eval(tmp_path / "opd__validation.json", make_eval("opd", "validation", P=10, B=100))
    )
    b = S.read_eval(S.write_eval(tmp_path / "opd__ood.json", make_eval("opd", "ood", P=10, B=100)))
    with pytest.raises(ProblemMismatchError, match=r"opd__validation.json .*opd__ood.json"):
        S.paired_compare(a, b, B=100)
    # same ids, different ground truth: not the same data either
    rows = two_problems()
    rows[1] = dataclasses.replace(rows[1], answer="8")
    with pytest.raises(ProblemMismatchError, match="problem 'b' has answer '7'.*but '8'"):
        S.paired_compare(build(), build(rows=rows), B=100)
    with pytest.raises(ValueError, match="pass@16.* not available"):
        S.paired_compare(build(), build(), ["pass@16"], B=100)


def test_run_directory_names():
    assert S.study_models() == [
        "base",
        "teacher",
        "sft_early",
        "sft_over",
        "opd",
        "sft_early+grpo",
        "sft_over+grpo",
        "opd+grpo",
    ]
    assert S.study_models(["a", "b"]) == ["base", "teacher", "a", "b", "a+grpo", "b+grpo"]
    assert S.STAGE1_ARMS == tuple(name for name, _ in S.DEFAULT_ARMS) and S.REFERENCE_ARM == "sft_early"
    assert (S.stage1_arm("opd+grpo"), S.stage1_arm("opd"), S.stage1_arm("base")) == ("opd", "opd", "base")
    assert S.eval_relpath("opd+grpo", "ood") == "eval/opd+grpo__ood.json"
    assert S.parse_eval_filename("opd+grpo__ood.json") == ("opd+grpo", "ood")
    assert S.parse_eval_filename("notes.json") is None
    assert S.metrics_relpath(2, "sft_over") == "stage2/sft_over/metrics.jsonl"


# An eval file exactly as the code before the EvalSettings/DecodingSettings split wrote it.
V1_FILE_BEFORE_SPLIT = r"""{
 "schema": "warmstart.eval/v1",
 "producer": "warmstart 0.1.0",
 "created": "2025-01-01T00:00:00Z",
 "model": {
  "name": "opd",
  "path": "runs/toy/stage1/opd/final"
 },
 "data": {
  "path": "runs/toy/data",
  "split": "validation",
  "n_problems": 2,
  "problem_ids": [
   "a",
   "b"
  ]
 },
 "settings": {
  "n": 2,
  "temperature": 1.0,
  "top_p": 0.9,
  "max_new_tokens": 16,
  "seed": 3,
  "greedy": true
 },
 "bootstrap": {
  "B": 20,
  "seed": 3,
  "alpha": 0.05
 },
 "per_problem": [
  {
   "id": "a",
   "answer": "4",
   "greedy": {
    "text": "<think>x</think> \\boxed{4}",
    "extracted": "4",
    "correct": true,
    "format_ok": true,
    "length": 7,
    "entropy_mean": 0.25
   },
   "samples": [
    {
     "extracted": "4",
     "normalized": "4",
     "correct": true,
     "format_ok": true,
     "length": 4,
     "entropy_mean": 0.5,
     "entropy_sum": 2.0
    },
    {
     "extracted": null,
     "normalized": "none",
     "correct": false,
     "format_ok": false,
     "length": 2,
     "entropy_mean": 1.5,
     "entropy_sum": 3.0
    }
   ]
  },
  {
   "id": "b",
   "answer": "B",
   "greedy": {
    "text": "\\boxed{C}",
    "extracted": "C",
    "correct": false,
    "format_ok": false,
    "length": 3,
    "entropy_mean": 0.125
   },
   "samples": [
    {
     "extracted": "B",
     "normalized": "B",
     "correct": true,
     "format_ok": true,
     "length": 5,
     "entropy_mean": 0.25,
     "entropy_sum": 1.25
    },
    {
     "extracted": "C",
     "normalized": "C",
     "correct": false,
     "format_ok": true,
     "length": 1,
     "entropy_mean": 0.75,
     "entropy_sum": 0.75
    }
   ]
  }
 ],
 "summary": {
  "greedy_accuracy": {
   "value": 0.5,
   "lo": 0.0,
   "hi": 1.0
  },
  "greedy_format_rate": {
   "value": 0.5,
   "lo": 0.0,
   "hi": 1.0
  },
  "greedy_length_mean": {
   "value": 5.0,
   "lo": 3.0,
   "hi": 7.0
  },
  "pass@1": {
   "value": 0.5,
   "lo": 0.5,
   "hi": 0.5
  },
  "pass@2": {
   "value": 1.0,
   "lo": 1.0,
   "hi": 1.0
  },
  "distinct_answers_mean": {
   "value": 2.0,
   "lo": 2.0,
   "hi": 2.0
  },
  "answer_entropy_mean": {
   "value": 0.6931471805599453,
   "lo": 0.6931471805599453,
   "hi": 0.6931471805599453
  },
  "entropy_token_mean": {
   "value": 0.5833333333333334,
   "lo": 0.3333333333333333,
   "hi": 0.8333333333333334
  },
  "entropy_seq_mean": {
   "value": 0.75,
   "lo": 0.5,
   "hi": 1.0
  },
  "response_length_mean": {
   "value": 3.0,
   "lo": 3.0,
   "hi": 3.0
  },
  "format_rate": {
   "value": 0.75,
   "lo": 0.5,
   "hi": 1.0
  }
 },
 "teacher_forced_entropy": null
}
"""


def test_a_file_in_the_v1_format_of_earlier_code_reads_and_rebuilds_to_the_same_bytes(tmp_path):
    old = tmp_path / "opd__validation.json"
    old.write_text(V1_FILE_BEFORE_SPLIT, encoding="utf-8")
    ev = S.read_eval(old)
    assert ev.settings == S.DecodingSettings(
        n=2, temperature=1.0, top_p=0.9, max_new_tokens=16, seed=3, greedy=True
    )
    assert ev.summary["entropy_token_mean"].value == pytest.approx(
        7.0 / 12.0
    )  # (2 + 3 + 1.25 + 0.75) / 12 tokens
    # the summary recomputed from the rows, and the file written again, are the same to the byte
    rebuilt = S.build_eval(
        model=ev.model,
        data_path=ev.data.path,
        split=ev.data.split,
        settings=ev.settings,
        per_problem=ev.per_problem,
        B=ev.bootstrap.B,
        seed=ev.bootstrap.seed,
        created=ev.created,
    )
    rebuilt.producer = ev.producer
    assert S.write_eval(tmp_path / "again.json", rebuilt).read_text(encoding="utf-8") == V1_FILE_BEFORE_SPLIT

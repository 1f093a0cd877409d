"""Extraction, format rule, normalisation, robustness and the time limit of ``warmstart.grading``.

The table of grading verdicts is in ``test_grading_cases.py``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from warmstart import grading
from warmstart.data.schema import Problem
from warmstart.grading import Grade, extract_answer, grade, normalize_answer


def _p(answer: str, answer_type: str, **kw) -> Problem:
    return Problem(id="p", question="q", images=(), answer=answer, answer_type=answer_type, **kw)


INT60 = _p("60", "integer")
MC = _p("B", "choice", choices=("2", r"2\sqrt{3}", "4", r"4\sqrt{3}"))
RAD = _p(r"2\sqrt{3}", "expression")
F346 = _p("3.46", "float", precision=2)
TEXT = _p("Yes", "text")
ALL_PROBLEMS = [INT60, MC, RAD, F346, TEXT, _p("x^2+1", "expression"), _p("0.5", "float")]


# ------------------------------------------------------------------------- extraction

EXTRACTIONS = [
    (r"so \boxed{42}", "42"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not grouping braces
    (r"\boxed{1} then \boxed{2} and finally \boxed{3}", "3"),
    (r"\boxed{7} and a cut-off \boxed{\frac{1", "7"),  # unclosed last box skipped
    (r"Put the answer in \boxed{}. The answer is 9.", "9"),  # echoed empty box skipped
    (r"\fbox{12}", "12"),
    (r"$\boxed 5$", "5"),
    (r"\boxed  {  8 }", "8"),
    (r"\boxed{\boxed{3}}", "3"),  # the inner box starts last
    ("The answer is $\\frac{1}{2}$.", r"\frac{1}{2}"),
    ("the final answer is: 12. Because the sides are equal.", "12"),
    ("Answer: (C)", "(C)"),
    ("**Answer:** 15", "15"),
    ("答案是 7。", "7"),
    ("答案：B", "B"),
    ("B", "B"),
    ("(b)", "B"),
    ("  Option D  ", "D"),
    ("<think>It is the largest.</think>\n(A)", "A"),
    ("（Ｂ）", "B"),  # full-width, as typed on CJK keyboards
    ("3.5", "3.5"),
    ("<think>maybe \\boxed{5}? no.</think> The answer is 7.", "7"),  # after </think> first
    ("<think>so \\boxed{5}</think> I am done.", "5"),  # nothing after: the whole response
    ("x + 1 = 4\nx = 3", "3"),
    ("\\[ y = 2x \\]", "2x"),
    ("", None),
    ("no answer here at all", None),
    ("<think>unfinished", None),
    (r"\boxed{", None),
    ("The answer is", None),
    ("a long line that ends with an equation = " + "x" * 100, None),  # too long for "= X"
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTIONS)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extract_answer_is_linear_on_many_boxes() -> None:
    # 20k unclosed boxes then one closed box: each box must not rescan the tail.
    text = r"\boxed{" * 20_000 + r"\boxed{5}"
    assert extract_answer(text) == "5"


# --------------------------------------------------------------------------- format_ok

FORMATS = [
    ("<think>reasoning</think> \\boxed{5}", True),
    ("  \n<think>\nreasoning\n</think>\nThe answer is $\\boxed{5}$. Done.", True),  # text after box is OK
    ("<think>r \\boxed{4}</think> \\boxed{5}", True),  # drafts inside the thinking are fine
    ("<think>reasoning</think> The answer is 5.", False),  # no box
    ("<think>reasoning \\boxed{5}</think>", False),  # box only inside the thinking
    ("<think>   </think> \\boxed{5}", False),  # empty reasoning
    ("Sure! <think>r</think> \\boxed{5}", False),  # must start with <think>
    ("<think>a</think><think>b</think> \\boxed{5}", False),  # one think block
    ("<think>reasoning \\boxed{5}", False),  # never closed
    ("<think>reasoning</think> \\boxed{5", False),  # box cut off
    ("<think>reasoning</think> \\boxed{}", False),  # empty box
    ("\\boxed{5}", False),
    ("", False),
]


@pytest.mark.parametrize(("text", "expected"), FORMATS)
def test_format_ok(text: str, expected: bool) -> None:
    assert grade(text, INT60).format_ok is expected


def test_format_and_correctness_are_independent() -> None:
    assert grade("<think>r</think> \\boxed{61}", INT60) == Grade(False, "61", True)
    assert grade("\\boxed{60}", INT60) == Grade(True, "60", False)


# ------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("answer", "problem", "expected"),
    [
        (None, None, "none"),
        ("", None, "none"),
        ("   ", None, "none"),
        ("$ $", None, "none"),
        ("60.0", None, "60"),
        ("60^\\circ", None, "60"),
        ("1,000", None, "1000"),
        ("1\\,000", None, "1000"),
        ("-0.0", None, "0"),
        ("b", None, "B"),
        ("(C)", None, "C"),
        ("\\text{D}", None, "D"),
        ("Yes.", None, "yes"),
        ("x^2 + 1", None, "x^2+1"),
        ("The  Circle!", None, "the circle"),
        ("3.464", F346, "3.46"),  # graded equal under the problem's precision -> counted once
        ("2\\sqrt{3}", MC, "B"),  # choice text -> its letter
        ("\\sqrt{12}", MC, "B"),  # equal value -> the same letter
        ("4", MC, "C"),
        ("(d)", MC, "D"),
        ("E", MC, "E"),  # a letter outside the choices stays a letter
    ],
)
def test_normalize_answer(answer: str | None, problem: Problem | None, expected: str) -> None:
    assert normalize_answer(answer, problem) == expected


@pytest.mark.parametrize(
    "group",
    [
        ["1/2", "0.5", "\\frac{1}{2}", "\\dfrac{1}{2}", "0.50", ".5"],
        ["2\\sqrt{3}", "\\sqrt{12}", "2 \\sqrt 3"],
        ["60", "60.0", "60°", "60 degrees", "60^{\\circ}", "\\boxed{60}"],
        ["12", "12 cm", "12\\text{ cm}", "12 厘米"],
    ],
)
def test_normalize_answer_merges_spellings_of_one_value(group: list[str]) -> None:
    assert len({normalize_answer(a) for a in group}) == 1


def test_normalize_answer_keeps_different_values_apart() -> None:
    answers = ["1/2", "1/3", "0.33", "-0.5", "2", "B", "x+1", "none of these"]
    assert len({normalize_answer(a) for a in answers}) == len(answers)


# ------------------------------------------------------------------ properties (hypothesis)

LATEXISH = st.lists(
    st.sampled_from(
        [
            "\\boxed{",
            "\\fbox{",
            "\\boxed ",
            "{",
            "}",
            "\\{",
            "\\",
            "$",
            "<think>",
            "</think>",
            "The answer is ",
            "答案是",
            "=",
            "\n",
            " ",
            "1",
            "60",
            "3.46",
            "x",
            "^",
            "\\frac",
            "\\sqrt",
            "\\pi",
            "\\circ",
            "°",
            "cm",
            "A",
            "(B)",
            ",",
            ".",
            "!",
            "9^{9^{9}}",
            "\\text{",
        ]
    ),
    max_size=25,
).map("".join)
ANY_TEXT = st.one_of(st.text(max_size=300), LATEXISH)
PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(ANY_TEXT)
def test_extract_answer_never_raises(text: str) -> None:
    out = extract_answer(text)
    assert out is None or (isinstance(out, str) and out.strip() != "")


@PROPERTY_SETTINGS
@given(ANY_TEXT, st.sampled_from(ALL_PROBLEMS))
def test_grade_never_raises_and_is_consistent(text: str, problem: Problem) -> None:
    g = grade(text, problem)
    assert isinstance(g, Grade)
    assert isinstance(g.correct, bool) and isinstance(g.format_ok, bool)
    assert g.extracted == extract_answer(text)
    assert not (g.correct and g.extracted is None)


@PROPERTY_SETTINGS
@given(st.one_of(st.none(), ANY_TEXT), st.one_of(st.none(), st.sampled_from(ALL_PROBLEMS)))
def test_normalize_answer_never_raises(answer: str | None, problem: Problem | None) -> None:
    out = normalize_answer(answer, problem)
    assert isinstance(out, str) and out != ""
    assert normalize_answer(answer, problem) == out  # deterministic


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_integers_in_any_spelling_are_correct_and_one_answer(n: int) -> None:
    problem = _p(str(n), "integer")
    for spelling in (str(n), f"{n}.0", f"{n:,}"):
        assert grade(f"\\boxed{{{spelling}}}", problem).correct, spelling
        assert normalize_answer(spelling) == str(n)
    assert not grade(f"\\boxed{{{n + 1}}}", problem).correct


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=999), st.integers(min_value=1, max_value=999))
def test_fractions_agree_with_their_decimals(a: int, b: int) -> None:
    problem = _p(f"\\frac{{{a}}}{{{b}}}", "expression")
    rounded = f"{a / b:.4f}"  # four places, rounded: the decimal rule accepts it
    assert grade(f"\\boxed{{{a}/{b}}}", problem).correct
    assert grade(f"\\boxed{{{rounded}}}", problem).correct or a / b < 0.01  # < 2 significant figures


# ------------------------------------------------------------------- threads and limits


def test_grading_from_threads_uses_sympy_safely() -> None:
    # math-verify's own signal.alarm timeout raises ValueError off the main thread; ours must not.
    jobs = [
        (r"\boxed{\sqrt{12}}", RAD, True),
        (r"\boxed{2\sqrt{3}}", F346, True),
        (r"\boxed{4\sqrt{3}}", MC, False),  # another choice's text
        (r"\boxed{(x+1)^2 - 2x}", _p("x^2+1", "expression"), True),
        (r"\boxed{3.5}", RAD, False),
        (r"\boxed{C}", MC, False),
    ]
    errors: list[BaseException] = []

    def run(job: tuple[str, Problem, bool]) -> bool:
        assert threading.current_thread() is not threading.main_thread()
        try:
            return grade(job[0], job[1]).correct
        except BaseException as e:  # pragma: no cover - would be the bug under test
            errors.append(e)
            raise

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, jobs * 3))
    assert not errors
    assert results == [j[2] for j in jobs] * 3


PATHOLOGICAL = [
    r"\boxed{9^{9^{9^{9}}}}",  # power tower
    r"\boxed{10^{10000000}}",  # huge exponent
    r"\boxed{100000!}",  # huge factorial
    r"\boxed{" + "9" * 5000 + "}",  # huge literal
    r"\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",  # deep nesting
    r"\boxed{\sqrt{" * 2000 + "2" + "}" * 4000,
    "The answer is " + " " * 100_000 + "!",  # whitespace run after a fallback anchor
    "{" * 100_000 + r"\boxed{" * 100 + "=" * 1000,
]


@pytest.mark.parametrize("response", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_inputs_are_graded_wrong_not_hung(response: str) -> None:
    for problem in (INT60, RAD, F346):
        g = grade(response, problem)
        assert g.correct is False
    assert isinstance(normalize_answer(extract_answer(response)), str)


def test_slow_symbolic_comparison_is_cut_off(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    # Comparing a 999th power takes sympy seconds (it passes the cheap pre-check); with
    # a tiny limit the worker is cut off and the answer is simply wrong.
    monkeypatch.setattr(grading, "SYMBOLIC_TIMEOUT_S", 0.05)
    grading._symbolic_equal_cached.cache_clear()
    with caplog.at_level(logging.DEBUG, logger="warmstart.grading"):
        g = grade(r"\boxed{(x+1)^{999} - 1}", _p("x^{999}", "expression"))
    assert g == Grade(False, "(x+1)^{999} - 1", False)
    assert any("overran" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    # The next call starts a fresh worker and gets an exact answer.
    assert grading._WORKER.call({"op": "value", "expr": r"\sqrt{16}"}, timeout_s=60) == ["rat", "4", "1"]


def test_worker_unavailable_degrades_to_wrong_not_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: dict, timeout_s: float) -> object:
        raise grading._Unavailable("no worker")

    monkeypatch.setattr(grading._WORKER, "call", refuse)
    grading._symbolic_number.cache_clear()
    assert grade(r"\boxed{\sqrt{12}}", RAD).correct is False
    assert grade(r"\boxed{60}", INT60).correct is True  # the fast path needs no worker
    assert grade(r"\boxed{B}", MC).correct is True
    grading._symbolic_number.cache_clear()  # drop answers computed without the worker


def test_non_string_response_is_graded_wrong() -> None:
    assert grade(None, INT60) == Grade(False, None, False)  # type: ignore[arg-type]
    assert extract_answer(12) is None  # type: ignore[arg-type]


def _child_grades() -> tuple[object, bool, int]:
    worker = grading._WORKER.call({"op": "value", "expr": r"\sqrt{25}"}, timeout_s=30)
    correct = grade(r"\boxed{3\sqrt{3}}", _p(r"\sqrt{27}", "expression")).correct
    assert grading._WORKER._proc is not None
    return worker, correct, grading._WORKER._proc.pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_daemon_process_gets_its_own_worker() -> None:
    # DataLoader-style daemonic children cannot start multiprocessing children; the
    # worker is a plain subprocess, and a fork must not share the parent's pipes.
    assert grading._WORKER.call({"op": "value", "expr": r"\sqrt{9}"}, timeout_s=30) == ["rat", "3", "1"]
    assert grading._WORKER._proc is not None
    parent_pid = grading._WORKER._proc.pid
    with multiprocessing.get_context("fork").Pool(1) as pool:
        value, correct, child_worker_pid = pool.apply(_child_grades)
    assert value == ["rat", "5", "1"] and correct
    assert child_worker_pid != parent_pid
    assert grade(r"\boxed{\sqrt{48}}", _p(r"4\sqrt{3}", "expression")).correct  # parent's still fine

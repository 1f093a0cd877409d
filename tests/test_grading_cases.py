"""Hand-written grading verdicts on answer styles seen in real VLM outputs.

One row per style: the response, the problem it answers, and whether it is correct.
The rules behind each verdict are in the docstring of ``warmstart.grading``.
"""

from __future__ import annotations

import pytest

from warmstart.data.schema import Problem
from warmstart.grading import grade


def _p(answer: str, answer_type: str, **kw) -> Problem:
    return Problem(
        id=f"{answer_type}:{answer}", question="q", images=(), answer=answer, answer_type=answer_type, **kw
    )


ANGLE = _p("60", "integer", unit="degrees")
LENGTH = _p("12", "integer", unit="cm")
THOUSAND = _p("1000", "integer")
FIVE = _p("5", "integer")
SEVEN = _p("7", "integer")
F346 = _p("3.46", "float", precision=2)
F15 = _p("1.5", "float", precision=1)
F087 = _p("0.87", "float", precision=2)
RAD = _p(r"2\sqrt{3}", "expression")
HALF = _p(r"\frac{1}{2}", "expression")
THIRD = _p(r"\frac{1}{3}", "expression")
TWO_PI = _p(r"2\pi", "expression")
SQRT3_2 = _p(r"\frac{\sqrt{3}}{2}", "expression")
POLY = _p("x^2 + 2x + 1", "expression")
MC = _p("C", "choice", choices=("8", "10", "12", "14"))
MC_RAD = _p("B", "choice", choices=("2", r"2\sqrt{3}", "4", r"4\sqrt{3}"))
MC_YES = _p("A", "choice", choices=("Yes", "No"))  # MathVista: answers are choice texts
YES = _p("Yes", "text")
CIRCLE = _p("the circle", "text")

T = "<think>Angles in an equilateral triangle are equal.</think> "

CASES: list[tuple[str, str, Problem, bool]] = [
    # --- integers, degrees
    ("int-plain", T + r"\boxed{60}", ANGLE, True),
    ("int-trailing-zero", r"\boxed{60.0}", ANGLE, True),
    ("deg-circ", r"\boxed{60^\circ}", ANGLE, True),
    ("deg-circ-braced", r"\boxed{60^{\circ}}", ANGLE, True),
    ("deg-symbol", r"\boxed{60°}", ANGLE, True),
    ("deg-word", r"\boxed{60 \text{ degrees}}", ANGLE, True),
    ("deg-chinese", r"\boxed{60度}", ANGLE, True),
    ("int-near-miss", r"\boxed{60.4}", ANGLE, False),
    ("int-wrong", r"\boxed{6}", ANGLE, False),
    ("int-negated", r"\boxed{-60}", ANGLE, False),
    ("int-lhs", r"\boxed{m\angle ABC = 60}", ANGLE, True),
    ("int-fraction-value", r"\boxed{\frac{120}{2}}", ANGLE, True),
    ("no-radian-conversion", r"\boxed{\frac{\pi}{3}}", ANGLE, False),
    ("answer-is-degrees", "The answer is 60 degrees.", ANGLE, True),
    # --- units
    ("unit-space", r"\boxed{12 cm}", LENGTH, True),
    ("unit-text", r"\boxed{12\text{ cm}}", LENGTH, True),
    ("unit-squared", r"\boxed{12 \mathrm{cm}^2}", LENGTH, True),
    ("unit-glued", r"\boxed{12cm}", LENGTH, True),
    ("unit-outside-box", r"So $AB = \boxed{12}$ cm.", LENGTH, True),
    ("unit-chinese", "因此，答案为 12 厘米。", LENGTH, True),
    ("unit-wrong-number", r"\boxed{13 cm}", LENGTH, False),
    # --- thousands separators
    ("thousands-comma", r"\boxed{1,000}", THOUSAND, True),
    ("thousands-latex", r"\boxed{1{,}000}", THOUSAND, True),
    ("thousands-thin-space", r"\boxed{1\,000}", THOUSAND, True),
    ("thousands-wrong", r"\boxed{1,001}", THOUSAND, False),
    # --- floats with a precision (MathVista rule)
    ("float-exact", r"\boxed{3.46}", F346, True),
    ("float-more-places", r"\boxed{3.464}", F346, True),
    ("float-radical", r"\boxed{2\sqrt{3}}", F346, True),
    ("float-radical-alt", r"\boxed{\sqrt{12}}", F346, True),
    ("float-too-coarse", r"\boxed{3.5}", F346, False),
    ("float-wrong", r"\boxed{3.4}", F346, False),
    ("float-fraction", r"\boxed{\frac{3}{2}}", F15, True),
    ("float-slash", r"\boxed{3/2}", F15, True),
    ("float-rounds-down", r"\boxed{1.54}", F15, True),
    ("float-half-up", r"\boxed{1.45}", F15, True),
    ("float-off", r"\boxed{1.6}", F15, False),
    ("float-nested-braces", r"\boxed{\frac{\sqrt{3}}{2}}", F087, True),
    # --- expressions: radicals, fractions, pi, polynomials
    ("rad-same", r"\boxed{2\sqrt{3}}", RAD, True),
    ("rad-unsimplified", r"\boxed{\sqrt{12}}", RAD, True),
    ("rad-no-braces", r"\boxed{2 \sqrt 3}", RAD, True),
    ("rad-decimal-3", r"\boxed{3.464}", RAD, True),
    ("rad-decimal-2", r"\boxed{3.46}", RAD, True),
    ("rad-decimal-too-coarse", r"\boxed{3.5}", RAD, False),
    ("rad-integer-not-enough", r"\boxed{3}", RAD, False),
    ("rad-approx-chain", r"\boxed{2\sqrt{3} \approx 3.46}", RAD, True),
    ("rad-wrong", r"\boxed{4\sqrt{3}}", RAD, False),
    ("half-decimal", r"\boxed{0.5}", HALF, True),
    ("half-dfrac", r"\boxed{\dfrac{1}{2}}", HALF, True),
    ("half-slash", r"\boxed{1/2}", HALF, True),
    ("half-tfrac-short", r"\boxed{\tfrac12}", HALF, True),
    ("half-left-right", r"$\boxed{\displaystyle \left( \frac{1}{2} \right)}$", HALF, True),
    ("third-truncated", r"\boxed{0.333}", THIRD, True),
    ("third-one-digit", r"\boxed{0.3}", THIRD, False),
    ("two-pi-decimal", r"\boxed{6.28}", TWO_PI, True),
    ("two-pi-symbol", r"\boxed{2\pi}", TWO_PI, True),
    ("sqrt3-over-2", r"\boxed{\frac{\sqrt{3}}{2}}", SQRT3_2, True),
    ("poly-factored", r"\boxed{(x+1)^2}", POLY, True),
    ("poly-wrong", r"\boxed{(x-1)^2}", POLY, False),
    # --- multiple choice: letters
    ("mc-letter", T + r"\boxed{C}", MC, True),
    ("mc-paren", r"\boxed{(C)}", MC, True),
    ("mc-lower", r"\boxed{c}", MC, True),
    ("mc-letter-dot-text", r"\boxed{C. 12}", MC, True),
    ("mc-text-wrapper", r"\boxed{\text{C}}", MC, True),
    ("mc-option-word", "The answer is option C.", MC, True),
    ("mc-lone-letter", "C", MC, True),
    ("mc-lone-paren", "(C)", MC, True),
    ("mc-lone-markdown", "**C**", MC, True),
    ("mc-after-think", "<think>12 fits</think>\nC", MC, True),
    ("mc-wrong-letter", r"\boxed{B}", MC, False),
    ("mc-out-of-range", r"\boxed{E}", MC, False),
    # --- multiple choice: choice text, through the numeric/symbolic path
    ("mc-text", r"\boxed{12}", MC, True),
    ("mc-text-float", r"\boxed{12.0}", MC, True),
    ("mc-wrong-text", r"\boxed{10}", MC, False),
    ("mc-rad-text", r"\boxed{2\sqrt{3}}", MC_RAD, True),
    ("mc-rad-equivalent", r"\boxed{\sqrt{12}}", MC_RAD, True),
    ("mc-rad-decimal", r"\boxed{3.46}", MC_RAD, True),
    ("mc-rad-wrong", r"\boxed{4\sqrt{3}}", MC_RAD, False),
    ("mc-rad-other-choice", r"\boxed{2}", MC_RAD, False),
    ("mc-word-case", r"\boxed{yes}", MC_YES, True),
    ("mc-word-wrong", r"\boxed{No}", MC_YES, False),
    ("mc-word-answer-is", "The answer is Yes.", MC_YES, True),
    # --- text answers
    ("text-case", r"\boxed{YES}", YES, True),
    ("text-punct", r"\boxed{yes.}", YES, True),
    ("text-wrong", r"\boxed{no}", YES, False),
    ("text-spacing", r"\boxed{The  Circle!}", CIRCLE, True),
    # --- boxes: nesting, several, variants
    ("box-last-wins", r"First \boxed{10}, but rechecking: \boxed{12}", MC, True),
    ("box-last-wins-wrong", r"First \boxed{12}, but rechecking: \boxed{10}", MC, False),
    ("box-nested-box", r"\boxed{\boxed{60}}", ANGLE, True),
    ("fbox", r"\fbox{60}", ANGLE, True),
    ("boxed-space-token", r"so the angle is $\boxed 60$.", ANGLE, True),
    ("box-bold", r"\[ \boxed{\mathbf{60}} \]", ANGLE, True),
    ("box-unclosed-falls-back", "The answer is 60. \\boxed{6", ANGLE, True),
    # --- fallbacks without a box
    ("answer-colon", "Answer: 60", ANGLE, True),
    ("answer-markdown", "**Answer:** 60", ANGLE, True),
    ("final-equals", "x + 3 = 10\nx = 7", SEVEN, True),
    ("final-equals-chain", "so x = 3 + 4 = 7", SEVEN, True),
    ("chinese-box", r"解：由勾股定理得 AB = 5，所以答案是 \boxed{5}。", FIVE, True),
    ("chinese-answer-colon", "答案：B", _p("B", "choice", choices=("3", "4")), True),
    ("bare-number", "5", FIVE, True),
    # --- malformed
    ("empty", "", FIVE, False),
    ("whitespace", "   \n ", FIVE, False),
    ("truncated-think", "<think>The triangle has sides 3, 4 and", FIVE, False),
    ("unclosed-box-only", r"\boxed{5", FIVE, False),
    ("empty-box", r"\boxed{}", FIVE, False),
    ("answer-is-nothing", "The answer is", FIVE, False),
    ("several-values", r"\boxed{5, 6}", FIVE, False),
    ("garbage-latex", r"\boxed{\frac{}{}}", FIVE, False),
]


@pytest.mark.parametrize(
    ("response", "problem", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_verdict(response: str, problem: Problem, expected: bool) -> None:
    g = grade(response, problem)
    assert g.correct is expected, g


def test_case_table_is_large_and_ids_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)

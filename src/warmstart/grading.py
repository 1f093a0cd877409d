"""Answer extraction and verification: the verifiable reward and every accuracy number.

Three public functions and one record (contract in ``docs/ARCHITECTURE.md``)::

    extract_answer(text) -> str | None          # the final answer as written
    normalize_answer(ans, problem=None) -> str  # canonical form for answer diversity
    grade(response, problem) -> Grade           # never raises, hard time limit

Design, and why
---------------
* **Fast path first.** RL grades every sample of every step (100k+ calls), and almost
  every answer is a plain number, a simple fraction or a letter. Those are compared in
  pure Python with :class:`fractions.Fraction` (microseconds, exact). Only answers that
  need algebra (``\\sqrt``, ``\\pi``, symbols) reach sympy through math-verify.
* **sympy runs in one persistent worker process** with a hard per-call limit
  (:data:`SYMBOLIC_TIMEOUT_S`). math-verify 0.9 enforces its own limit with
  ``signal.alarm``, which raises ``ValueError`` outside the main thread, so we call it
  with ``parsing_timeout=None`` / ``timeout_seconds=None`` and put the limit around the
  process instead: on timeout the worker is killed and restarted on the next call, and
  that answer is graded wrong. A cheap pre-check (:func:`_safe_for_sympy`) keeps known
  bombs (``9^{9^{9}}``, ``10000!``, huge literals) away from sympy altogether, so
  restarts stay rare. The worker is a plain ``subprocess`` speaking JSON lines (not
  ``multiprocessing``, whose spawn method re-imports the caller's ``__main__``).
* **Precision is ours, not math-verify's.** math-verify rounds floats to 6 places, so
  ``2\\sqrt{3}`` vs ``3.464`` would be wrong; numeric comparisons here follow the rules
  in :func:`_numbers_match` (MathVista's rounding rule for ``float`` problems).

Rules (documented once, here)
-----------------------------
Extraction: the last *complete, non-empty* ``\\boxed{...}`` / ``\\fbox{...}`` (nested
braces and ``\\{ \\}`` escapes handled; ``\\boxed 5`` takes the token); an unclosed
box (a response cut off by the token limit) or an empty one (an echoed instruction)
is skipped. Without a box: the last "answer is X" / "Answer: X" / "答案是 X"; else a
response that is only a choice letter ("B", "(B)", "Option B") or only a number; else
the right-hand side of a final "= X" on the last line. This chain runs first on the
text after ``</think>`` (when there is one) and then on the whole response, so a draft
box inside the thinking never overrides the answer stated after it.

format_ok: the response starts (after whitespace) with ``<think>``, contains exactly one
``<think>`` and one ``</think>`` with non-empty reasoning between them, and a complete
non-empty box after ``</think>``. Text after the box is allowed (a closing ``$``, a
period, a short sentence): the answer term already takes the last box, and penalising
harmless endings would only teach the model to stop abruptly.

Numbers (integer, float, expression, numeric choice texts):
* ``float`` problems: MathVista's rule: both sides rounded to the problem's ``precision``
  (default: the decimals written in the gold, at least 2) must be equal; the prediction
  may be any expression (``2\\sqrt{3}`` for 3.46). We round half-up on the value as
  written (MathVista's ``round(float(x), p)`` sends 1.45 to 1.4 through binary floats).
* otherwise equal values are correct (exactly for rationals, ``1e-9`` relative for
  irrationals), so "60.0" is correct for 60 and "1/2" for 0.5;
* and a decimal written with ``d >= 1`` places stands for a non-decimal exact value
  (``\\sqrt``, ``\\pi``, ``1/3``) when it is that value rounded or truncated to ``d``
  places (``|x - y| <= 10^-d``) and is also within 1% of it, so a coarse decimal
  is not enough: "3.464" and "3.46" are correct for ``2\\sqrt{3}``, "3.5" is not, and
  "0.333" is correct for ``1/3`` while "0.3" is not. (The tolerance follows the
  decimals the model chose to give; the 1% floor stops "0.3" from claiming 1/3.)
Degrees (``^\\circ``, ``°``, "degrees"), ``%``, units (``cm``, ``\\text{cm}^2``, the
problem's ``unit``), thousands separators (``1,000``, ``1{,}000``, ``1\\,000``), ``$``
and ``\\left``/``\\right`` are stripped before comparing; an answer written ``x = 5`` or
``2\\sqrt{3} \\approx 3.46`` is judged by its last right-hand side. Angles are not
converted between degrees and radians.

Choices: the prediction is matched, in order, to a choice text written the same way
(case and spacing ignored), to a letter ("B", "(b)", "B.", "B: 12", "Option B",
``\\text{B}``), then by value to the gold choice text and then to the others
(``\\sqrt{12}`` picks the choice ``2\\sqrt{3}``). A letter outside the choices is wrong.

Text: equal as numbers when both are plain numbers, else equal after NFKC, case
folding and replacing punctuation runs by one space.

Code layout: extraction, ``format_ok`` and cleaning live in :mod:`warmstart.answer_text`
(:func:`extract_answer` re-exported here), the sympy worker process in
:mod:`warmstart.sympy_worker`; this module holds numbers, the verdict and normalisation.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING

from warmstart.answer_text import (
    _DECIMAL_LITERAL,
    _as_letter,
    _clean,
    _compact_key,
    _format_ok,
    _text_key,
    extract_answer,
)
from warmstart.sympy_worker import _WORKER, WORKER_START_TIMEOUT_S, _Unavailable

if TYPE_CHECKING:  # only for annotations: importing grading needs no PIL
    from warmstart.data.schema import Problem

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_SYMBOLIC_CHARS",
    "SYMBOLIC_TIMEOUT_S",
    "WORKER_START_TIMEOUT_S",
    "Grade",
    "extract_answer",
    "grade",
    "normalize_answer",
]

logger = logging.getLogger(__name__)

#: Hard limit, in seconds, on one sympy call (parse + evaluate/verify) in the worker.
SYMBOLIC_TIMEOUT_S: float = 3.0
#: Answers longer than this are never sent to sympy (no real answer is that long).
MAX_SYMBOLIC_CHARS: int = 300
#: Extracted answers longer than this are graded wrong without further work.
MAX_ANSWER_CHARS: int = 2000


@dataclass(frozen=True)
class Grade:
    """The verdict on one response.

    Attributes:
        correct: the extracted answer verifies against the problem's ground truth.
        extracted: the final answer as written in the response (see :func:`extract_answer`),
            or ``None`` when none was found.
        format_ok: ``<think>...</think>`` followed by a ``\\boxed{}`` answer (rule in the
            module docstring); logged separately from correctness.
    """

    correct: bool
    extracted: str | None
    format_ok: bool


# ------------------------------------------------------------------------------ numbers


@dataclass(frozen=True)
class _Num:
    """A numeric answer.

    ``exact`` is set for rationals (literals, simple fractions, sympy rationals);
    ``decimals`` is the number of decimal places when the answer was written as a plain
    decimal literal ("3.46" -> 2, "60" -> 0), else ``None`` (an exact expression).
    """

    value: float
    exact: Fraction | None
    decimals: int | None


_SIMPLE_FRACTION = re.compile(r"([-+]?)\s*\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}|([-+]?\d+)\s*/\s*(\d+)")
_COMMANDS = re.compile(r"\\[A-Za-z]+")


def _fast_number(s: str) -> _Num | None:
    """Plain decimals and ``a/b`` / ``\\frac{a}{b}`` without sympy (the common case)."""
    if _DECIMAL_LITERAL.fullmatch(s):
        digits = s.split(".", 1)[1] if "." in s else ""
        f = Fraction(s.rstrip(".") if s.endswith(".") else s)
        return _Num(float(f), f, len(digits))
    m = _SIMPLE_FRACTION.fullmatch(s)
    if m:
        if m.group(2) is not None:
            num, den = int(m.group(2)), int(m.group(3))
            num = -num if m.group(1) == "-" else num
        else:
            num, den = int(m.group(4)), int(m.group(5))
        if den == 0:
            return None
        f = Fraction(num, den)
        return _Num(float(f), f, None)
    return None


def _safe_for_sympy(s: str) -> bool:
    """False for inputs known to make sympy hang or eat memory, and for anything long.

    Nested or huge exponents, big factorials and huge literals are rejected; the
    worker's time limit covers whatever slips past.
    """
    if not s or len(s) > MAX_SYMBOLIC_CHARS:
        return False
    if re.search(r"\^\s*\{[^{}]*\^|\^\s*[\d.]+\s*\^|\*\*[^*]*\*\*", s):  # power towers
        return False
    if re.search(r"(?:\^|\*\*)\s*\{?\s*[-+]?\d{4,}", s):  # exponents >= 1000
        return False
    if re.search(r"\d{3,}\s*!|[)}]\s*!|\\(?:prod|sum|int|lim)", s):  # factorials, big operators
        return False
    return re.search(r"\d{60,}", s) is None


def _looks_numeric(s: str) -> bool:
    """Digits or pi and no free letters once LaTeX commands are removed.

    Only such answers are worth a trip to sympy for a value; "x+1", "yes" or a letter
    are settled without it.
    """
    rest = _COMMANDS.sub(" ", s)
    if any(c.isalpha() and c != "π" for c in rest):
        return False
    return any(c.isdigit() for c in rest) or "\\pi" in s or "π" in s


@lru_cache(maxsize=65536)
def _symbolic_number(s: str) -> _Num | None:
    """Numeric value of a LaTeX expression via the sympy worker (cached on success)."""
    res = _WORKER.call({"op": "value", "expr": s}, SYMBOLIC_TIMEOUT_S)  # _Unavailable: not cached
    if res is None:  # the worker answered: not a real number
        return None
    if res[0] == "rat":
        f = Fraction(int(res[1]), int(res[2]))
        return _Num(float(f), f, None)
    value = float(res[1])
    return _Num(value, None, None) if math.isfinite(value) else None


def _number(s: str) -> _Num | None:
    """The value of a cleaned answer, or ``None`` when it is not a (finite, real) number."""
    fast = _fast_number(s)
    if fast is not None:
        return fast
    if not _looks_numeric(s) or not _safe_for_sympy(s):
        return None
    try:
        return _symbolic_number(s)
    except _Unavailable:
        return None


def _round_half_up(n: _Num, places: int) -> Decimal:
    """``n`` rounded half-up to ``places`` decimals (exact input where we have it)."""
    with localcontext() as ctx:
        ctx.prec = 80
        if n.exact is not None:
            d = Decimal(n.exact.numerator) / Decimal(n.exact.denominator)
        else:
            d = Decimal(repr(n.value))
        return d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _decimal_stands_for(approx: _Num, exact: _Num) -> bool:
    """``approx`` is a decimal literal that rounds or truncates ``exact`` at its places."""
    if approx.decimals is None or approx.decimals < 1 or exact.decimals is not None:
        return False
    err = abs(approx.value - exact.value)
    return err <= 10.0 ** (-approx.decimals) * (1 + 1e-9) and err <= 0.01 * abs(exact.value)


def _numbers_match(pred: _Num, gold: _Num, precision: int | None = None) -> bool:
    """The numeric rules of the module docstring; ``precision`` set means MathVista rounding."""
    if precision is not None:
        places = max(0, min(precision, 30))
        return _round_half_up(pred, places) == _round_half_up(gold, places)
    if pred.exact is not None and gold.exact is not None and pred.exact == gold.exact:
        return True
    if math.isclose(pred.value, gold.value, rel_tol=1e-9, abs_tol=1e-12):
        return pred.exact is None or gold.exact is None  # two different rationals are different
    return _decimal_stands_for(pred, gold) or _decimal_stands_for(gold, pred)


def _float_places(problem: Problem, gold: str) -> int:
    """Decimal places that count for a ``float`` problem (MathVista's ``precision``)."""
    if problem.precision is not None:
        return int(problem.precision)
    written = len(gold.split(".", 1)[1]) if _DECIMAL_LITERAL.fullmatch(gold) and "." in gold else 0
    return max(written, 2)


# ------------------------------------------------------------------------------ verdict


def _math_correct(pred: str, gold: str, problem: Problem | None) -> bool:
    """Integer / float / expression answers (and numeric choice texts, problem=None)."""
    if "".join(pred.split()) == "".join(gold.split()):
        return True
    g = _number(gold)
    if g is not None:
        p = _number(pred)
        if p is None:
            return False
        precision = None
        if problem is not None and problem.answer_type == "float":
            precision = _float_places(problem, gold)
        return _numbers_match(p, g, precision)
    # The gold has symbols (an expression in x) or did not parse: ask math-verify.
    if not (_safe_for_sympy(pred) and _safe_for_sympy(gold)):
        return False
    return _symbolic_equal(gold, pred)


@lru_cache(maxsize=65536)
def _symbolic_equal_cached(gold: str, pred: str) -> bool:
    return bool(_WORKER.call({"op": "equiv", "gold": gold, "pred": pred}, SYMBOLIC_TIMEOUT_S))


def _symbolic_equal(gold: str, pred: str) -> bool:
    try:
        return _symbolic_equal_cached(gold, pred)
    except _Unavailable:
        return False


def _gold_choice_index(problem: Problem) -> int | None:
    """Index of the correct choice: the letter, or failing that the choice text given."""
    choices = problem.choices or ()
    letter = problem.answer.strip().strip("()").upper()
    if len(letter) == 1 and 0 <= ord(letter) - ord("A") < len(choices):
        return ord(letter) - ord("A")
    key = _compact_key(_clean(problem.answer, problem.unit))
    for i, c in enumerate(choices):
        if _compact_key(_clean(c, problem.unit)) == key:
            return i
    return None


def _choice_index(pred: str, problem: Problem, prefer: int | None = None) -> int | None:
    """Which choice a cleaned prediction names: same text, a letter, or the same value.

    Value matches try ``prefer`` (the gold) first, so two equal-valued choices (rare)
    never turn a right answer wrong.
    """
    choices = [_clean(c, problem.unit) for c in problem.choices or ()]
    key = _compact_key(pred)
    for i, c in enumerate(choices):
        if key and key == _compact_key(c):
            return i
    letter = _as_letter(pred)
    if letter is not None:
        i = ord(letter) - ord("A")
        return i if 0 <= i < len(choices) else None
    loose = _text_key(pred)
    if loose and not any(ch.isdigit() for ch in loose):
        for i, c in enumerate(choices):
            if loose == _text_key(c):
                return i
    order = list(range(len(choices)))
    if prefer is not None and 0 <= prefer < len(choices):
        order.remove(prefer)
        order.insert(0, prefer)
    for i in order:
        if _math_correct(pred, choices[i], None):
            return i
    return None


def _is_correct(extracted: str, problem: Problem) -> bool:
    if len(extracted) > MAX_ANSWER_CHARS:
        return False
    pred = _clean(extracted, problem.unit)
    if not pred:
        return False
    if problem.answer_type == "choice":
        gold_idx = _gold_choice_index(problem)
        return gold_idx is not None and _choice_index(pred, problem, prefer=gold_idx) == gold_idx
    gold = _clean(problem.answer, problem.unit)
    if problem.answer_type == "text":
        p, g = _fast_number(pred), _fast_number(gold)
        if p is not None and g is not None:
            return _numbers_match(p, g)
        return bool(_text_key(pred)) and _text_key(pred) == _text_key(gold)
    return _math_correct(pred, gold, problem)


def grade(response: str, problem: Problem) -> Grade:
    """Grade one response against ``problem``'s ground truth. Never raises, never hangs.

    Pure apart from the shared sympy worker; safe from threads. Any internal error
    grades the answer wrong (and is logged at debug level).
    """
    text = response if isinstance(response, str) else ""
    try:
        fmt = _format_ok(text)
    except Exception:
        logger.debug("format check failed", exc_info=True)
        fmt = False
    extracted = extract_answer(text)
    if extracted is None:
        return Grade(False, None, fmt)
    try:
        correct = bool(_is_correct(extracted, problem))
    except Exception:
        logger.debug("grading failed for %r", extracted[:200], exc_info=True)
        correct = False
    return Grade(correct, extracted, fmt)


# ---------------------------------------------------------------------- normalisation


def _canonical_number(n: _Num, places: int | None) -> str:
    """One spelling per value: "60.0" -> "60", "1/2" and "0.5" -> "0.5"."""
    if places is not None:
        d = _round_half_up(n, places)
    elif n.exact is not None and n.exact.denominator == 1:
        return str(n.exact.numerator)
    elif n.exact is not None and _terminates(n.exact.denominator):
        with localcontext() as ctx:
            ctx.prec = 80
            d = Decimal(n.exact.numerator) / Decimal(n.exact.denominator)
    else:
        text = format(n.value, ".10g")
        return "0" if text in ("0", "-0") else text
    text = format(d.normalize(), "f")
    return "0" if text in ("0", "-0") else text


def _terminates(den: int) -> bool:
    """A fraction with this denominator has a finite decimal expansion."""
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def normalize_answer(ans: str | None, problem: Problem | None = None) -> str:
    """Canonical form of an extracted answer, for counting distinct answers.

    ``None`` or nothing left after cleaning -> ``"none"``; a choice named by text, letter
    or value -> its letter (when ``problem`` is a choice problem); a single letter ->
    upper case; a number -> one spelling per value (rounded to the precision of a
    ``float`` problem, so answers graded the same count once); other math -> the
    cleaned text, case-folded, without whitespace; words -> case-folded, punctuation
    runs as one space (the identity text answers are graded by). Never raises.
    """
    try:
        if ans is None:
            return "none"
        unit = problem.unit if problem is not None else None
        s = _clean(str(ans)[:MAX_ANSWER_CHARS], unit)
        if not s:
            return "none"
        if problem is not None and problem.answer_type == "choice" and problem.choices:
            idx = _choice_index(s, problem, prefer=_gold_choice_index(problem))
            if idx is not None:
                return chr(ord("A") + idx)
        letter = _as_letter(s)
        if letter is not None and len(s.strip("()[]. ")) == 1:
            return letter
        n = _number(s)
        if n is not None:
            places = None
            if problem is not None and problem.answer_type == "float":
                places = _float_places(problem, _clean(problem.answer, unit))
            return _canonical_number(n, places)
        if re.search(r"[\d\\^_{}()+\-*/=<>|]", s):  # math: spacing carries no meaning
            return "".join(s.casefold().split())
        return _text_key(s) or s.casefold()  # words: the identity text answers are graded by
    except Exception:
        logger.debug("normalize_answer failed", exc_info=True)
        return "none"

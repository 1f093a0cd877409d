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
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: keeps the worker process's import light
    from warmstart.data.schema import Problem

logger = logging.getLogger(__name__)

#: Hard limit, in seconds, on one sympy call (parse + evaluate/verify) in the worker.
SYMBOLIC_TIMEOUT_S: float = 3.0
#: How long the worker may take to start (importing sympy on a loaded 2-core machine).
WORKER_START_TIMEOUT_S: float = 60.0
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


# --------------------------------------------------------------------------- extraction

_DECIMAL_LITERAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Escapes first so that "\{", "\}" and "\\" never count as grouping braces.
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.S)
_BOX_TOKEN = re.compile(r"[ \t]*([^\s$]+)")
_ANSWER_IS = re.compile(
    r"(?:\banswer\b|答案)\s*(?:\*\*\s*)?(?:\bis\b|:|：|=|是|为|為)\s*(?:\*\*)?[:：]?(?P<ans>[^\n]+)",
    re.I,
)
# End of the first sentence inside an "answer is ..." capture ("12. Because ...").
_SENTENCE_END = re.compile(r"[.。!！;；](?:\s|$)|,\s|，")
_LONE_LETTER = re.compile(r"(?:(?:the\s+)?(?:option|choice)\s*)?[(\[]?([A-Za-z])[)\]]?[.。]?", re.I)


def _brace_partners(text: str, start: int) -> dict[int, int]:
    """Index of each ``{`` at or after ``start`` -> index of its matching ``}``.

    One linear pass (the regex skips plain text), so many boxes in a long response
    cost no more than one.
    """
    partners: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKENS.finditer(text, start):
        tok = m.group()
        if tok == "{":
            stack.append(m.start())
        elif tok == "}" and stack:
            partners[stack.pop()] = m.start()
    return partners


def _last_box(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed``/``\\fbox`` in ``text``."""
    matches = list(_BOX_CMD.finditer(text))
    if not matches:
        return None
    partners = _brace_partners(text, matches[0].start())
    for m in reversed(matches):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = partners.get(j)
            if close is None:  # unclosed: the response was cut off inside the box
                continue
            content = text[j + 1 : close].strip()
        else:  # "\boxed 42": TeX would box one token; models mean the whole number
            tok = _BOX_TOKEN.match(text, m.end())
            content = tok.group(1).rstrip(".,;") if tok else ""
        if content:
            return content
    return None


def _trim_inline(ans: str) -> str:
    """Cut an inline answer at its sentence end and drop markdown / math delimiters."""
    cut = _SENTENCE_END.search(ans)
    if cut:
        ans = ans[: cut.start()]
    return ans.strip().strip("*`").strip().strip("$").strip().rstrip(".。")


def _final_equals(text: str) -> str | None:
    """Right-hand side of a final ``= X`` on the last non-empty line, if short."""
    tail = text.rstrip()
    while tail.endswith(("$", "\\]", "\\)")):
        tail = tail.rstrip("$").removesuffix("\\]").removesuffix("\\)").rstrip()
    line = tail.rsplit("\n", 1)[-1]
    if "=" not in line:
        return None
    rhs = _trim_inline(line.rsplit("=", 1)[1])
    return rhs if rhs and len(rhs) <= 60 else None


def extract_answer(text: str) -> str | None:
    """The final answer in a response, as written, or ``None`` when there is none.

    Order: last complete box; last "answer is X"; a lone choice letter (or number);
    final "= X" (details in the module docstring). When the response has a
    ``</think>``, the part after it is searched first, so a draft box inside the
    thinking never overrides the answer given after it. Never raises.
    """
    try:
        if not isinstance(text, str) or not text:
            return None
        end = text.rfind("</think>")
        if end >= 0:
            found = _extract_from(text[end + len("</think>") :])
            if found is not None:
                return found
        return _extract_from(text)
    except Exception:  # a parser bug must cost one answer, not a training run
        logger.debug("extract_answer failed", exc_info=True)
        return None


def _extract_from(text: str) -> str | None:
    """The extraction chain of :func:`extract_answer` on one stretch of text."""
    boxed = _last_box(text)
    if boxed is not None:
        return boxed
    said = None
    for m in _ANSWER_IS.finditer(text):
        said = m.group("ans")
    if said is not None:
        said = _last_box(said) or _trim_inline(said)
        if said:
            return said
    rest = text.strip().strip("*`$").strip()
    if len(rest) <= 40:
        rest = unicodedata.normalize("NFKC", rest)  # full-width "（Ｂ）" from CJK keyboards
        m = _LONE_LETTER.fullmatch(rest)
        if m:
            return m.group(1).upper()
        if _DECIMAL_LITERAL.fullmatch(rest.rstrip(".")):  # a response that is only a number
            return rest.rstrip(".")
    return _final_equals(text)


def _format_ok(text: str) -> bool:
    """``<think>`` first, one think block with content, then a complete box (see module doc)."""
    if not text.lstrip().startswith("<think>"):
        return False
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return False
    head, _, tail = text.partition("</think>")
    if not head.lstrip()[len("<think>") :].strip():
        return False
    return _last_box(tail) is not None


# ----------------------------------------------------------------------------- cleaning

_WRAPPERS = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|operatorname|mbox)\s*\{([^{}]*)\}"
)
# Thin spaces vanish ("1\\,000" is one number); other spacing and delimiters become a space.
_THIN_SPACE = re.compile(r"\\[,!]")
_NOISE = re.compile(r"\\left|\\right|\\displaystyle|\\;|\\:|\\quad|\\qquad|\\\(|\\\)|\\\[|\\\]|\$")
_DEGREES = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°|度\s*$|(?<![A-Za-z])(?:degrees?|deg)\.?\s*$"
)
_UNITS = (
    r"(?:square\s+|sq\.?\s*)?"
    r"(?:units?|mm|cm|km|m|in|inch|inches|ft|feet|foot|yd|yards?|mi|miles?|meters?|metres?|"
    r"centimeters?|centimetres?|millimeters?|kilometers?|radians?|rad|seconds?|sec|s|minutes?|min|"
    r"hours?|h|kg|g|grams?|liters?|litres?|l|ml|dollars?|cents?|years?|days?|points?|"
    r"平方厘米|平方米|厘米|毫米|千米|米|个|元)"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?\.?"
)
_UNIT_TAIL = re.compile(r"(?<![A-Za-z\\])\s*" + _UNITS + r"\s*$", re.I)
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:(?:,\d{3})+|(?: \d{3})+)(?:\.\d+)?")
_LAST_RHS = re.compile(r"=|\\approx|≈")


def _clean(ans: str, unit: str | None = None) -> str:
    """The answer without presentation: delimiters, wrappers, degrees, units, separators.

    Applied identically to predictions and gold answers so both sides are compared in
    the same form.
    """
    s = ans.replace("²", "^2").replace("³", "^3").replace("−", "-")
    s = unicodedata.normalize("NFKC", s).strip()
    if _BOX_CMD.search(s):  # "\boxed{\boxed{5}}" or a boxed gold
        s = _last_box(s) or s
    s = _NOISE.sub(" ", _THIN_SPACE.sub("", s)).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("{,}", ",").replace("\\%", "").replace("%", "")
    for _ in range(3):  # \text{\textbf{B}} nests rarely deeper than this
        s = _WRAPPERS.sub(r" \1 ", s)
    s = s.strip().strip("*`").strip()
    parts = _LAST_RHS.split(s)
    if len(parts) > 1 and parts[-1].strip():
        s = parts[-1]
    s = _DEGREES.sub("", s).strip()
    if unit:
        own = re.compile(r"(?<![A-Za-z\\])\s*(?:" + re.escape(unit.strip()) + r")\s*$", re.I)
        s = _strip_unit(s, own)
    s = _strip_unit(s, _UNIT_TAIL)
    s = " ".join(s.split()).rstrip(".。,;")  # not "!": "5!" is a factorial
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    return s.strip()


def _strip_unit(s: str, pattern: re.Pattern[str]) -> str:
    """Remove a trailing unit only when what remains ends like a quantity (``12``, ``}``, ``\\pi``)."""
    stripped = pattern.sub("", s).rstrip()
    if stripped != s and re.search(r"(?:[\d})\]]|\\pi)$", stripped):
        return stripped
    return s


def _compact_key(s: str) -> str:
    """Case-folded, whitespace-free: for matching a prediction to a choice written the same way."""
    return "".join(s.casefold().split())


def _text_key(s: str) -> str:
    """Loose text identity: NFKC, case-folded, punctuation runs -> one space."""
    s = unicodedata.normalize("NFKC", s).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", s).split())


_LETTER = re.compile(
    r"(?:(?:option|choice|answer)\s*[:：]?\s*)?[(\[]?([A-Za-z])[)\]]?(?:[.:：)]\s*.*)?",
    re.I | re.S,
)


def _as_letter(s: str) -> str | None:
    """``"B"``, ``"(b)"``, ``"B."``, ``"B: 12"``, ``"Option B"`` -> ``"B"``; else ``None``."""
    m = _LETTER.fullmatch(s.strip())
    return m.group(1).upper() if m else None


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


class _Unavailable(Exception):
    """The worker could not answer (timeout, crash, not startable): not to be cached."""


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


# ------------------------------------------------------------------------ sympy worker


class _SymbolicWorker:
    """One long-lived child process that runs math-verify/sympy under a hard time limit.

    Requests are serialised by a lock (sympy holds the GIL anyway), so any number of
    threads may grade at once. A call that overruns its limit kills the child; the next
    call starts a fresh one. After a fork the child process gets its own worker
    (``os.register_at_fork``), never sharing the parent's pipes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._next_id = 0
        self._retry_start_after = 0.0

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._proc = None  # the parent's child: not ours to talk to or kill
        self._buf = b""

    def call(self, request: dict, timeout_s: float) -> object:
        """The worker's answer to ``request``; raises :class:`_Unavailable` on timeout or failure."""
        if not self._lock.acquire(timeout=WORKER_START_TIMEOUT_S + timeout_s):
            raise _Unavailable("sympy worker busy")
        try:
            proc = self._ensure_started()
            if proc is None:
                raise _Unavailable("sympy worker not running")
            self._next_id += 1
            msg = dict(request, id=self._next_id)
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(msg) + "\n").encode())
            proc.stdin.flush()
            line = self._read_line(time.monotonic() + timeout_s)
            if line is None:
                logger.debug("sympy worker overran %.1fs on %s; restarting it", timeout_s, request.get("op"))
                self._kill()
                raise _Unavailable("sympy worker timed out")
            reply = json.loads(line)
            if reply.get("id") != self._next_id:
                self._kill()
                raise _Unavailable("sympy worker out of step")
            return reply.get("result")
        except _Unavailable:
            raise
        except Exception as e:
            logger.debug("sympy worker call failed", exc_info=True)
            self._kill()
            raise _Unavailable(str(e)) from e
        finally:
            self._lock.release()

    def _ensure_started(self) -> subprocess.Popen[bytes] | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._kill()
        if time.monotonic() < self._retry_start_after:
            return None
        src_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH", "")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from warmstart.grading import _worker_main; _worker_main()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                bufsize=0,
            )
            ready = self._read_line(time.monotonic() + WORKER_START_TIMEOUT_S)
            if ready is None or not json.loads(ready).get("ready"):
                raise RuntimeError("worker did not report ready")
        except Exception as e:
            logger.warning(
                "grading: sympy worker failed to start (%s); symbolic answers graded wrong for 30 s", e
            )
            self._kill()
            self._retry_start_after = time.monotonic() + 30.0
            return None
        return self._proc

    def _read_line(self, deadline: float) -> bytes | None:
        """One reply line, or ``None`` at the deadline or when the worker died."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _kill(self) -> None:
        proc, self._proc, self._buf = self._proc, None, b""
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait(timeout=5)
        except Exception:
            logger.debug("could not reap sympy worker", exc_info=True)
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except Exception:
                pass

    def close(self) -> None:
        """Stop the worker (at interpreter exit; also usable by tests)."""
        with self._lock:
            self._kill()


_WORKER = _SymbolicWorker()
atexit.register(_WORKER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER._reset_after_fork)


def _worker_value(expr: str, parse) -> list | None:
    """["rat", p, q] or ["float", x] for a real number, ``None`` otherwise."""
    import sympy

    for item in parse("$" + expr + "$", parsing_timeout=None):
        if not isinstance(item, sympy.Basic):
            continue
        if getattr(item, "free_symbols", True):
            return None
        item = item.doit()  # math-verify leaves e.g. sqrt(16) unevaluated; 4 must stay exact
        if isinstance(item, sympy.Rational):
            return ["rat", str(item.p), str(item.q)]
        z = complex(item.evalf(30))
        if abs(z.imag) > 1e-12 * max(1.0, abs(z.real)) or not math.isfinite(z.real):
            return None
        return ["float", z.real]
    return None


def _worker_main() -> None:
    """Entry point of the worker process: JSON requests on stdin, JSON replies on stdout.

    Stray prints from sympy go to stderr (the protocol owns the real stdout), and
    math-verify's "timeout disabled" warnings are silenced: the parent owns the limit.
    """
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    proto.write('{"ready": true}\n')
    proto.flush()
    while True:
        line = sys.stdin.readline()
        if not line:  # parent gone
            return
        req = json.loads(line)
        result: object = None
        try:
            op = req.get("op")
            if op == "value":
                result = _worker_value(req["expr"], parse)
            elif op == "equiv":
                gold = parse("$" + req["gold"] + "$", parsing_timeout=None)
                pred = parse("$" + req["pred"] + "$", parsing_timeout=None)
                result = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
        except Exception:
            result = None
        proto.write(json.dumps({"id": req.get("id"), "result": result}) + "\n")
        proto.flush()

"""Answer text: find the final answer in a response, check its format, strip its presentation.

The rules (extraction order, ``format_ok``, what cleaning removes) are documented once,
in the :mod:`warmstart.grading` docstring; :func:`extract_answer` is re-exported there.
"""

from __future__ import annotations

import logging
import re
import unicodedata

# The logger of grading.py: every grading message under one name, so one filter catches them.
logger = logging.getLogger("warmstart.grading")


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

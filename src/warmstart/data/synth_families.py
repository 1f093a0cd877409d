"""The visual facts and problem families of the synthetic world (see :mod:`warmstart.data.synthetic`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- visual facts


@dataclass(frozen=True)
class Category:
    """One value of a visual fact.

    Attributes:
        name: how the category is named in ``meta["visual"]`` and in rationales.
        value: the number the arithmetic uses (sides, 1 or 2 for the area divisor,
            shaded quarters, filled cells).
    """

    name: str
    value: int


FACTS: dict[str, tuple[Category, ...]] = {
    "polygon": (
        Category("triangle", 3),
        Category("square", 4),
        Category("pentagon", 5),
        Category("hexagon", 6),
    ),
    "figure": (Category("rectangle", 1), Category("right triangle", 2)),
    "sector": (
        Category("quarter", 1),
        Category("half", 2),
        Category("three quarters", 3),
        Category("full", 4),
    ),
    "grid": (Category("1 cell", 1), Category("2 cells", 2), Category("3 cells", 3), Category("4 cells", 4)),
}

# How a rationale says "this much of the circle is shaded", per number of quarters.
_SECTOR_WORDS = {1: "a quarter", 2: "half", 3: "three quarters", 4: "all"}


def _fact_fields(fact: str, cat: Category) -> dict[str, Any]:
    """Template fields that describe the visual fact (used by rationales)."""
    fields: dict[str, Any] = {"name": cat.name, "Name": cat.name[0].upper() + cat.name[1:]}
    if fact == "polygon":
        fields["n"] = cat.value
    elif fact == "figure":
        fields["half"] = "/2" if cat.value == 2 else ""
    elif fact == "sector":
        words = _SECTOR_WORDS[cat.value]
        fields.update(q=cat.value, frac=words, Frac=words[0].upper() + words[1:])
    elif fact == "grid":
        fields.update(k=cat.value, rest=4 - cat.value)
    return fields


# ----------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Family:
    """One problem type: an operation on a visual fact and the numbers in the text.

    Attributes:
        name: the family id (``meta["family"]``).
        fact: the key of :data:`FACTS` whose category the image shows.
        sample: draws the numbers given in the text; must not depend on the category.
        value: the answer for a category and the numbers (an integer).
        questions: in-domain phrasings (``str.format`` with the numbers).
        ood_questions: the phrasings used in the ``ood`` split: the clauses of the two
            in-domain phrasings crossed over (the givens of one with the question of the
            other, or "What is" and "Find" swapped), so every word is one the in-domain
            phrasings use (the family's own, or those of the in-domain families) but no
            sentence is one of them: a question-form shift, not a new vocabulary (see
            :mod:`warmstart.data.synthetic`).
        steps: rationale phrasings (format fields: the numbers, :func:`_fact_fields`, ``ans``).
        extras: wrong but plausible values used as distractors when the fact has fewer
            than four categories (values that the text alone can compute, so they do not
            help a text-only guesser choose between the real candidates).
    """

    name: str
    fact: str
    sample: Callable[[np.random.Generator], dict[str, int]]
    value: Callable[[Category, dict[str, int]], int]
    questions: tuple[str, ...]
    ood_questions: tuple[str, ...]
    steps: tuple[str, ...]
    extras: Callable[[dict[str, int]], list[int]] | None = None


def _int(rng: np.random.Generator, low: int, high: int) -> int:
    """A uniform integer in ``[low, high]`` (inclusive), as a plain ``int`` for JSON."""
    return int(rng.integers(low, high + 1))


def _sample_base_height(rng: np.random.Generator) -> dict[str, int]:
    # b*h even for *both* figures, so the triangle's b*h/2 is an integer and the parity
    # of the numbers says nothing about which figure is drawn.
    while True:
        b, h = _int(rng, 2, 12), _int(rng, 2, 12)
        if b * h % 2 == 0:
            return {"b": b, "h": h}


_FAMILY_LIST: tuple[Family, ...] = (
    Family(
        name="polygon_perimeter",
        fact="polygon",
        sample=lambda rng: {"side": _int(rng, 2, 12)},
        value=lambda c, p: c.value * p["side"],
        questions=(
            "The regular polygon has side {side}. What is its perimeter?",
            "Each side of the regular shape is {side}. Find the perimeter.",
        ),
        ood_questions=(
            "The regular shape has side {side}. Find its perimeter.",
            "Each side of the regular polygon is {side}. What is the perimeter?",
        ),
        steps=(
            "The shape is a {name}, {n} sides. {n}*{side}={ans}.",
            "It is a regular {name} with {n} sides, so the perimeter is {n}*{side}={ans}.",
            "{Name}: {n} sides of length {side}. {n}*{side}={ans}.",
        ),
    ),
    Family(
        name="polygon_angle_sum",
        fact="polygon",
        sample=lambda rng: {},
        value=lambda c, p: (c.value - 2) * 180,
        questions=(
            "What is the sum of the interior angles of the regular polygon?",
            "Find the sum of the interior angles of the shape.",
        ),
        ood_questions=(
            "Find the sum of the interior angles of the regular polygon.",
            "What is the sum of the interior angles of the shape?",
        ),
        steps=(
            "The shape is a {name}, {n} sides. ({n}-2)*180={ans}.",
            "It is a {name} with {n} sides, so the angles sum to ({n}-2)*180={ans}.",
            "{Name}: {n} sides. Angle sum ({n}-2)*180={ans}.",
        ),
    ),
    Family(
        name="figure_area",
        fact="figure",
        sample=_sample_base_height,
        value=lambda c, p: p["b"] * p["h"] // c.value,
        questions=(
            "The figure is a rectangle or a right triangle with base {b} and height {h}. What is its area?",
            "Base {b}, height {h}. Find the area of the figure.",
        ),
        ood_questions=(
            "The figure has base {b} and height {h}. Find its area.",
            "Base {b}, height {h}. What is the area of the figure?",
        ),
        steps=(
            "The figure is a {name}. Area {b}*{h}{half}={ans}.",
            "It is a {name}, so the area is {b}*{h}{half}={ans}.",
            "{Name} with base {b}, height {h}: {b}*{h}{half}={ans}.",
        ),
        extras=lambda p: [
            2 * (p["b"] + p["h"]),
            p["b"] + p["h"],
            2 * p["b"] * p["h"],
            p["b"] * p["h"] + p["b"],
        ],
    ),
    Family(
        name="sector_area",
        fact="sector",
        # A multiple of 4 so every shaded fraction gives an integer, whatever is drawn.
        sample=lambda rng: {"A": 4 * _int(rng, 2, 25)},
        value=lambda c, p: p["A"] * c.value // 4,
        questions=(
            "The whole circle has area {A}. What is the shaded area?",
            "A circle of area {A} is partly shaded. Find the shaded area.",
        ),
        ood_questions=(
            "The whole circle has area {A}. Find the shaded area.",
            "A circle of area {A} is partly shaded. What is the shaded area?",
        ),
        steps=(
            "{Frac} of the circle is shaded. {A}*{q}/4={ans}.",
            "The shaded part is {frac} of the circle, so {A}*{q}/4={ans}.",
        ),
    ),
    Family(
        name="grid_cell_area",
        fact="grid",
        sample=lambda rng: {"a": _int(rng, 2, 12)},
        value=lambda c, p: c.value * p["a"],
        questions=(
            "Each cell of the 2x2 grid has area {a}. What is the shaded area?",
            "A 2x2 grid has cells of area {a}. Find the shaded area.",
        ),
        ood_questions=(
            "Each cell of the 2x2 grid has area {a}. Find the shaded area.",
            "A 2x2 grid has cells of area {a}. What is the shaded area?",
        ),
        steps=(
            "Shaded cells: {k} of 4. {k}*{a}={ans}.",
            "{k} of the 4 cells are shaded, each of area {a}. {k}*{a}={ans}.",
            "The grid has {k} of 4 cells shaded, so {k}*{a}={ans}.",
        ),
    ),
    Family(
        name="grid_total_area",
        fact="grid",
        sample=lambda rng: {"T": 4 * _int(rng, 2, 25)},
        value=lambda c, p: p["T"] * c.value // 4,
        questions=(
            "The whole 2x2 grid has area {T}. What is the shaded area?",
            "A 2x2 grid of total area {T} is shown. Find the shaded area.",
        ),
        ood_questions=(
            "The whole 2x2 grid has area {T}. Find the shaded area.",
            "A 2x2 grid of total area {T} is shown. What is the shaded area?",
        ),
        steps=(
            "Shaded cells: {k} of 4. {T}*{k}/4={ans}.",
            "{k} of the 4 cells are shaded, so the area is {T}*{k}/4={ans}.",
        ),
    ),
    # --- in no split by default (``families`` / ``ood_families`` can add them)
    Family(
        name="polygon_exterior_angle",
        fact="polygon",
        sample=lambda rng: {},
        value=lambda c, p: 360 // c.value,
        questions=(
            "What is one exterior angle of the regular polygon?",
            "Find the exterior angle of the regular shape.",
        ),
        ood_questions=(
            "Find one exterior angle of the regular polygon.",
            "What is the exterior angle of the regular shape?",
        ),
        steps=(
            "The shape is a {name}, {n} sides. 360/{n}={ans}.",
            "It is a regular {name} with {n} sides, so each exterior angle is 360/{n}={ans}.",
        ),
    ),
    Family(
        name="polygon_side_from_perimeter",
        fact="polygon",
        # A multiple of 60 (= lcm of 3, 4, 5, 6): divisibility must not reveal the shape.
        sample=lambda rng: {"P": 60 * _int(rng, 1, 4)},
        value=lambda c, p: p["P"] // c.value,
        questions=(
            "The regular polygon has perimeter {P}. What is the length of one side?",
            "A regular shape has perimeter {P}. Find one side.",
        ),
        ood_questions=(
            "The regular polygon has perimeter {P}. Find one side.",
            "A regular shape has perimeter {P}. What is the length of one side?",
        ),
        steps=(
            "The shape is a {name}, {n} sides. {P}/{n}={ans}.",
            "It is a regular {name} with {n} equal sides, so one side is {P}/{n}={ans}.",
        ),
    ),
    Family(
        name="grid_unshaded_area",
        fact="grid",
        sample=lambda rng: {"a": _int(rng, 2, 12)},
        value=lambda c, p: (4 - c.value) * p["a"],
        questions=(
            "Each cell of the 2x2 grid has area {a}. What is the unshaded area?",
            "A 2x2 grid has cells of area {a}. Find the area that is not shaded.",
        ),
        ood_questions=(
            "Each cell of the 2x2 grid has area {a}. Find the area that is not shaded.",
            "A 2x2 grid has cells of area {a}. What is the unshaded area?",
        ),
        steps=(
            "Shaded cells: {k} of 4, so {rest} unshaded. {rest}*{a}={ans}.",
            "{k} of the 4 cells are shaded, leaving {rest}. {rest}*{a}={ans}.",
        ),
    ),
)

FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILY_LIST}
ID_FAMILIES: tuple[str, ...] = (
    "polygon_perimeter",
    "polygon_angle_sum",
    "figure_area",
    "sector_area",
    "grid_cell_area",
    "grid_total_area",
)
OOD_ONLY_FAMILIES: tuple[str, ...] = (
    "polygon_exterior_angle",
    "polygon_side_from_perimeter",
    "grid_unshaded_area",
)


def family_value(family: str, visual: str, params: dict[str, int]) -> int:
    """The answer of ``family`` when the image shows category ``visual`` (by name)."""
    fam = FAMILIES[family]
    for cat in FACTS[fam.fact]:
        if cat.name == visual:
            return fam.value(cat, params)
    raise ValueError(f"family {family!r}: unknown visual category {visual!r}")

"""The embedded synthetic geometry world (``warmstart data synth``).

Why this exists: the whole two-stage study (toy models pretrained from scratch, SFT,
distillation, GRPO, evaluation) has to run on a laptop CPU in minutes, with no data
downloaded. A tiny Qwen2.5-VL sees a 56x56 image as only 4 image tokens, and the
probe in ``shared/BASELINES.md`` found that such a model learns *filled, high-contrast,
categorical* shapes but ignores 1-pixel outlines and never reads digit labels. So every
problem here is built from two halves that must be combined:

* the **image** carries exactly one categorical visual fact, drawn large and filled on
  a plain background (which regular polygon; rectangle or right triangle; which
  fraction of a circle is shaded; how many cells of a 2x2 grid are filled), with small
  random jitter (position, size, rotation, colour) so pixels cannot be memorised;
* the **text** carries the number(s) and the question, but never the visual fact: the
  visual category is drawn uniformly and independently of the numbers, and every
  number constraint (e.g. "base*height is even") holds for all categories alike, so a
  text-only model stays near chance on the visual part (see :func:`text_only_baseline`).

Visual facts and their categories (:data:`FACTS`):

=========  ==================================================
polygon    triangle, square, pentagon, hexagon (regular)
figure     rectangle, right triangle
sector     quarter, half, three quarters, full (shaded part of a circle)
grid       1, 2, 3 or 4 filled cells of a 2x2 grid
=========  ==================================================

Families (:data:`FAMILIES`), each one short operation on a fact and the given numbers;
answers are integers below 1000:

============================  =======  =====================================  ==========
family                        fact     answer                                 splits
============================  =======  =====================================  ==========
polygon_perimeter             polygon  n * side                               all
polygon_angle_sum             polygon  (n - 2) * 180                          all
figure_area                   figure   b * h (rectangle) or b * h / 2         all
sector_area                   sector   circle area * quarters / 4             all
grid_cell_area                grid     filled cells * cell area               all
grid_total_area               grid     grid area * filled cells / 4           all
polygon_exterior_angle        polygon  360 / n                                ood only
polygon_side_from_perimeter   polygon  perimeter / n                          ood only
grid_unshaded_area            grid     (4 - filled cells) * cell area         ood only
============================  =======  =====================================  ==========

Splits: ``train``, ``validation`` and ``test`` share the in-domain families, phrasing
and visual style (white background, dark saturated fills, near-upright shapes). The
``ood`` split plays MathVista's role: a dark background with light fills and a white
outline, smaller shapes at any rotation, other question phrasings, and the three
families marked "ood only" mixed with the in-domain ones (so some skill transfers and
some does not). ``meta["in_domain_family"]`` says which is which.

A fraction of problems (``choice_fraction``, default 0.3) are multiple choice with four
options; the distractors are the answers for the *other* categories of the visual fact
(for the two-category ``figure`` fact, two text-computable wrong values fill the
rest), so the text alone cannot pick the option either. Every problem has a short
worked rationale ``<think>...</think> \\boxed{...}`` naming the visual fact and the
arithmetic, in one of 2-3 phrasings per family chosen by the seed.

Determinism: every problem draws from its own generator seeded by ``(seed, split,
index)``, so the same config gives byte-identical files, and a larger split is the
smaller one with more problems appended. Train, validation and test can share a
(family, category, numbers) triple, since that space is small; their images differ by
the jitter, which is what the model must generalise over.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from warmstart.atomic import atomic_write_text
from warmstart.config import ConfigError
from warmstart.data.schema import Problem

__all__ = [
    "FACTS",
    "FAMILIES",
    "GENERATOR_VERSION",
    "ID_FAMILIES",
    "OOD_ONLY_FAMILIES",
    "SPLITS",
    "Category",
    "Family",
    "Style",
    "SynthConfig",
    "add_arguments",
    "family_value",
    "generate",
    "generate_split",
    "render",
    "run",
    "text_only_baseline",
]

# Bump when the same config would produce different problems or pixels.
GENERATOR_VERSION = "1"
SPLITS: tuple[str, ...] = ("train", "validation", "test", "ood")
_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2, "ood": 3}
LETTERS = "ABCD"
# Shapes are drawn at 4x the output size and box-filtered down: anti-aliased edges
# without depending on any drawing library's own anti-aliasing.
_SUPERSAMPLE = 4

RGB = tuple[int, int, int]


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
        ood_questions: the phrasings used in the ``ood`` split.
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
            "All edges of this regular figure measure {side} cm. How long is its boundary?",
            "A regular figure with edge length {side} is shown. Compute the total edge length.",
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
            "How many degrees do the inside angles of this figure add up to?",
            "Add up every interior angle of the figure shown. What total do you get, in degrees?",
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
            "The shape shown has base {b} cm and height {h} cm. How many square cm does it cover?",
            "Compute the area enclosed by the figure if its base is {b} and its height is {h}.",
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
            "The complete disk covers {A} square units. How much of it is coloured?",
            "If the full circle has area {A}, what area does the highlighted region cover?",
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
            "Each of the four tiles covers {a} square units. What area do the coloured tiles cover?",
            "The tiles each have area {a}. Compute the total area of the highlighted tiles.",
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
            "A board of four equal tiles has area {T}. How much of it is coloured?",
            "The square board shown covers {T} square units. What is the highlighted area?",
        ),
        steps=(
            "Shaded cells: {k} of 4. {T}*{k}/4={ans}.",
            "{k} of the 4 cells are shaded, so the area is {T}*{k}/4={ans}.",
        ),
    ),
    # --- held out of the in-domain splits (default ``ood_families`` only)
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
            "How many degrees is each exterior angle of this regular figure?",
            "What is the measure, in degrees, of one outside angle of the regular figure shown?",
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
            "The boundary of this regular figure is {P} cm long. How long is each edge?",
            "All edges of the figure are equal and add up to {P}. What is one edge?",
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
            "Each of the four tiles covers {a} square units. What area do the uncoloured tiles cover?",
            "The tiles each have area {a}. How much area is not highlighted?",
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


# ----------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class Style:
    """How a split's diagrams look.

    Attributes:
        name: ``meta["style"]``.
        background: the plain background colour.
        palette: fill colours of the visual fact, one drawn per image.
        empty: colour of the unshaded parts (rest of the circle, empty grid cells).
        outline: colour of an outline around filled parts, or ``None`` for none.
        outline_px: outline width in output pixels.
        radius: range of the shape's radius as a fraction of half the image side.
        max_rotation: rotation is drawn from ``[-max_rotation, max_rotation]`` degrees
            around the upright pose (180 means any rotation).
        max_shift: centre jitter as a fraction of the image side, each axis.
    """

    name: str
    background: RGB
    palette: tuple[RGB, ...]
    empty: RGB
    outline: RGB | None
    outline_px: float
    radius: tuple[float, float]
    max_rotation: float
    max_shift: float


# In-domain: dark saturated fills on white, near upright, large. Every fill is far from
# the background and from the pale "empty" grey, so the fact is a high-contrast blob.
ID_STYLE = Style(
    name="indomain",
    background=(255, 255, 255),
    palette=((31, 73, 190), (200, 30, 40), (20, 125, 50), (120, 40, 160), (35, 35, 35)),
    empty=(215, 215, 215),
    outline=None,
    outline_px=0.0,
    radius=(0.66, 0.84),
    max_rotation=12.0,
    max_shift=0.05,
)
# Out of domain (MathVista's role): dark background, light fills with a white outline,
# smaller shapes at any rotation, further off centre.
OOD_STYLE = Style(
    name="ood",
    background=(22, 28, 48),
    palette=((250, 210, 40), (60, 220, 220), (150, 240, 120), (255, 140, 200)),
    empty=(75, 80, 95),
    outline=(255, 255, 255),
    outline_px=1.5,
    radius=(0.5, 0.66),
    max_rotation=180.0,
    max_shift=0.1,
)


def _rotate(
    points: list[tuple[float, float]], degrees: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    """Rotate points (relative to the centre) by ``degrees`` and move them to ``(cx, cy)``."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def render(fact: str, category: Category, rng: np.random.Generator, size: int, style: Style) -> Image.Image:
    """Draw ``category`` of ``fact`` as a ``size`` x ``size`` RGB image.

    The jitter (colour, radius, rotation, centre, and the fact's own extras) is drawn
    from ``rng`` in the same order whatever the category, so two categories rendered
    from equally seeded generators differ only in the visual fact.
    """
    s = size * _SUPERSAMPLE
    img = Image.new("RGB", (s, s), style.background)
    draw = ImageDraw.Draw(img)
    colour = style.palette[int(rng.integers(len(style.palette)))]
    r = float(rng.uniform(*style.radius)) * s / 2
    rot = float(rng.uniform(-style.max_rotation, style.max_rotation))
    cx = s / 2 + float(rng.uniform(-1, 1)) * style.max_shift * s
    cy = s / 2 + float(rng.uniform(-1, 1)) * style.max_shift * s
    # Fact-specific extras, drawn for every category of the fact (see docstring).
    aspect = float(rng.uniform(0.55, 0.85))  # figure: height / width of the box
    corner = int(rng.integers(4))  # figure: corner holding the right angle
    quarter = int(rng.integers(4))  # sector: where the shaded part starts
    cell_order = [int(i) for i in rng.permutation(4)]  # grid: which cells are filled first
    width = max(1, round(style.outline_px * _SUPERSAMPLE)) if style.outline else 0

    def poly(points: list[tuple[float, float]], fill: RGB, outlined: bool = True) -> None:
        if outlined and style.outline is not None:
            draw.polygon(points, fill=fill, outline=style.outline, width=width)
        else:
            draw.polygon(points, fill=fill)

    if fact == "polygon":
        n = category.value
        # Vertices at 90 + 180/n + k*360/n degrees (y points down): a flat bottom edge
        # when upright, so the square is a square and not a diamond.
        start = 90 + 180 / n
        pts = [
            (r * math.cos(math.radians(start + 360 * k / n)), r * math.sin(math.radians(start + 360 * k / n)))
            for k in range(n)
        ]
        poly(_rotate(pts, rot, cx, cy), colour)
    elif fact == "figure":
        # A box of width 2w and height 2h; the rectangle fills it, the right triangle is
        # the box minus the corner opposite the right angle. Not drawn to scale.
        w = r * 0.95
        h = w * aspect
        box = [(-w, -h), (w, -h), (w, h), (-w, h)]
        pts = box if category.value == 1 else [box[(corner + k) % 4] for k in (-1, 0, 1)]
        poly(_rotate(pts, rot, cx, cy), colour)
    elif fact == "sector":
        # Pale full disc, then the shaded part as a solid pie slice. Upright means the
        # slice starts at a multiple of 90 degrees; rotation jitters that start.
        bbox = (cx - r, cy - r, cx + r, cy + r)
        draw.ellipse(bbox, fill=style.empty)
        start = 90 * quarter + rot
        if category.value == 4:
            if style.outline is not None:
                draw.ellipse(bbox, fill=colour, outline=style.outline, width=width)
            else:
                draw.ellipse(bbox, fill=colour)
        elif style.outline is not None:
            draw.pieslice(
                bbox, start, start + 90 * category.value, fill=colour, outline=style.outline, width=width
            )
        else:
            draw.pieslice(bbox, start, start + 90 * category.value, fill=colour)
    elif fact == "grid":
        # A 2x2 board of side 2*half with a gap between cells; ``category.value`` cells
        # filled (which ones is random), the rest pale.
        half = r * 0.8
        gap = half * 0.08
        filled = set(cell_order[: category.value])
        for cell in range(4):
            x0 = -half if cell % 2 == 0 else gap / 2
            y0 = -half if cell // 2 == 0 else gap / 2
            side = half - gap / 2
            pts = [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]
            is_filled = cell in filled
            poly(_rotate(pts, rot, cx, cy), colour if is_filled else style.empty, outlined=is_filled)
    else:
        raise ValueError(f"unknown visual fact {fact!r} (valid: {', '.join(FACTS)})")
    return img.resize((size, size), Image.Resampling.BOX)


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SynthConfig:
    """What ``warmstart data synth`` generates.

    Attributes:
        seed: the one seed of the world; the same config gives byte-identical files.
        n_train: number of training problems (Stage-1 SFT/OPD and Stage-2 RL prompts).
        n_validation: number of in-domain validation problems (early stopping, the
            in-domain accuracy of the study).
        n_test: number of in-domain test problems (held out of every choice).
        n_ood: number of out-of-domain problems (MathVista's role: other style,
            phrasing and partly other families).
        image_size: image side in pixels; a multiple of 28 (patch 14 x merge 2), so
            56 gives the toy Qwen2.5-VL 4 image tokens.
        choice_fraction: fraction of problems posed as 4-option multiple choice.
        families: the families of train/validation/test (names in :data:`FAMILIES`).
        ood_families: the families of the ``ood`` split; the default adds the
            :data:`OOD_ONLY_FAMILIES` to the in-domain ones.
    """

    seed: int = 0
    n_train: int = 4000
    n_validation: int = 200
    n_test: int = 200
    n_ood: int = 200
    image_size: int = 56
    choice_fraction: float = 0.3
    families: tuple[str, ...] = ID_FAMILIES
    ood_families: tuple[str, ...] = ID_FAMILIES + OOD_ONLY_FAMILIES

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field of the first invalid value."""
        if self.seed < 0:
            raise ConfigError(f"seed: must be >= 0, got {self.seed}")
        for split in SPLITS:
            if self.split_size(split) < 0:
                raise ConfigError(f"{_size_field(split)}: must be >= 0, got {self.split_size(split)}")
        if self.image_size < 28 or self.image_size % 28:
            raise ConfigError(
                f"image_size: must be a positive multiple of 28 (patch 14 x merge 2), got {self.image_size}"
            )
        if not 0.0 <= self.choice_fraction <= 1.0:
            raise ConfigError(f"choice_fraction: must be in [0, 1], got {self.choice_fraction}")
        for name in ("families", "ood_families"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{name}: must name at least one family")
            for fam in values:
                if fam not in FAMILIES:
                    raise ConfigError(f"{name}: unknown family {fam!r} (valid: {', '.join(FAMILIES)})")
            if len(set(values)) != len(values):
                raise ConfigError(f"{name}: repeated family in {list(values)}")

    def split_size(self, split: str) -> int:
        """The number of problems of ``split``."""
        return int(getattr(self, _size_field(split)))

    def split_families(self, split: str) -> tuple[str, ...]:
        """The families of ``split`` (``ood_families`` for ``ood``, else ``families``)."""
        return self.ood_families if _check_split(split) == "ood" else self.families


def _check_split(split: str) -> str:
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r} (valid: {', '.join(SPLITS)})")
    return split


def _size_field(split: str) -> str:
    return f"n_{_check_split(split)}"


# ----------------------------------------------------------------------------- generation


def _choices(
    fam: Family, cats: tuple[Category, ...], params: dict[str, int], rng: np.random.Generator
) -> list[int]:
    """Four distinct option values in random order: every category's answer first,
    then the family's text-computable extras when the fact has fewer categories."""
    values = [fam.value(c, params) for c in cats]
    assert len(set(values)) == len(values), f"{fam.name}: two categories share an answer for {params}"
    for extra in fam.extras(params) if fam.extras else []:
        if len(values) == len(LETTERS):
            break
        if extra not in values:
            values.append(extra)
    if len(values) != len(LETTERS):
        raise AssertionError(f"{fam.name}: could not build {len(LETTERS)} distinct options for {params}")
    return [values[int(i)] for i in rng.permutation(len(values))]


def _make_problem(cfg: SynthConfig, split: str, index: int) -> Problem:
    """Problem ``index`` of ``split``: its own generator, so problems are independent."""
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], index])
    families = cfg.split_families(split)
    fam = FAMILIES[families[index % len(families)]]  # round robin: every family, balanced
    cats = FACTS[fam.fact]
    cat = cats[int(rng.integers(len(cats)))]  # uniform and independent of the numbers
    params = fam.sample(rng)
    value = fam.value(cat, params)
    ood = split == "ood"
    phrasings = fam.ood_questions if ood else fam.questions
    question = phrasings[int(rng.integers(len(phrasings)))].format(**params)
    steps = fam.steps[int(rng.integers(len(fam.steps)))].format(
        **params, **_fact_fields(fam.fact, cat), ans=value
    )
    is_choice = bool(rng.random() < cfg.choice_fraction)
    image = render(fam.fact, cat, rng, cfg.image_size, OOD_STYLE if ood else ID_STYLE)
    choices = None
    if is_choice:
        options = _choices(fam, cats, params, rng)
        answer = LETTERS[options.index(value)]
        choices = tuple(str(v) for v in options)
        rationale = f"<think>{steps} {value} is option {answer}.</think> \\boxed{{{answer}}}"
    else:
        answer = str(value)
        rationale = f"<think>{steps}</think> \\boxed{{{value}}}"
    return Problem(
        id=f"{split}-{index:06d}",
        question=question,
        images=(image,),
        answer=answer,
        answer_type="choice" if is_choice else "integer",
        choices=choices,
        split=split,
        source="synthetic",
        rationale=rationale,
        meta={
            "family": fam.name,
            "fact": fam.fact,
            "visual": cat.name,
            "value": value,
            "params": params,
            "style": OOD_STYLE.name if ood else ID_STYLE.name,
            "in_domain_family": fam.name in cfg.families,
        },
    )


def generate_split(cfg: SynthConfig, split: str, progress: Callable[[], None] | None = None) -> list[Problem]:
    """The problems of ``split`` (``train``, ``validation``, ``test`` or ``ood``), in memory.

    ``progress`` (if given) is called once per problem, for progress bars.
    """
    cfg.validate()
    problems = []
    for index in range(cfg.split_size(split)):
        problems.append(_make_problem(cfg, split, index))
        if progress is not None:
            progress()
    return problems


def text_only_baseline(problems: list[Problem]) -> float:
    """Accuracy of the best cheap guesser that sees the text but not the image.

    For each family it assumes the most frequent visual category among ``problems``
    and answers what that category would give (the letter holding that value for
    multiple choice). Since categories are drawn uniformly and independently of the
    text, this is the Bayes-optimal text-only policy up to sampling noise (the majority
    is fitted on the same problems, which only flatters it): about 1/4 on four-category
    facts and 1/2 on the rectangle-or-triangle fact. Returns 0.0 for no problems.
    """
    if not problems:
        return 0.0
    majority: dict[str, str] = {}
    counts: dict[str, Counter] = {}
    for p in problems:
        counts.setdefault(p.meta["family"], Counter())[p.meta["visual"]] += 1
    for fam, counter in counts.items():
        # Ties broken by the category order of the fact, so the figure is reproducible.
        order = [c.name for c in FACTS[FAMILIES[fam].fact]]
        majority[fam] = max(counter, key=lambda name: (counter[name], -order.index(name)))
    correct = 0
    for p in problems:
        guess = str(family_value(p.meta["family"], majority[p.meta["family"]], p.meta["params"]))
        if p.answer_type == "choice":
            guess = LETTERS[p.choices.index(guess)]
        correct += guess == p.answer
    return correct / len(problems)


def _text_only_chance(families: tuple[str, ...]) -> float:
    """Expected accuracy of a text-only guesser on a round robin of ``families``."""
    return sum(1 / len(FACTS[FAMILIES[f].fact]) for f in families) / len(families)


def generate(
    cfg: SynthConfig, out_dir: str | os.PathLike, progress: Callable[[str], None] | None = None
) -> dict:
    """Write every split to ``out_dir`` (``<split>.jsonl`` + ``images/``) and ``manifest.json``.

    ``progress`` (if given) is called with the split name once per problem. Returns the
    manifest: seed, sizes, families per split, image size, generator version, and the
    text-only baseline accuracy per split.
    """
    from warmstart.data.loaders import write_problems

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    baselines = {}
    for split in SPLITS:
        tick = (lambda s=split: progress(s)) if progress is not None else None
        problems = generate_split(cfg, split, progress=tick)
        write_problems(problems, out, split)
        baselines[split] = round(text_only_baseline(problems), 4)
    manifest = {
        "generator": "warmstart.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "sizes": {split: cfg.split_size(split) for split in SPLITS},
        "image_size": cfg.image_size,
        "choice_fraction": cfg.choice_fraction,
        "families": {split: list(cfg.split_families(split)) for split in SPLITS},
        "ood_only_families": [f for f in cfg.ood_families if f not in cfg.families],
        "styles": {split: (OOD_STYLE if split == "ood" else ID_STYLE).name for split in SPLITS},
        "text_only_baseline": baselines,
        # What the best text-only guesser scores in expectation (categories are uniform):
        # the baseline above is fitted on the split itself and so sits a little higher.
        "text_only_chance": {
            split: round(_text_only_chance(cfg.split_families(split)), 4) for split in SPLITS
        },
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


# ----------------------------------------------------------------------------- CLI

_DEFAULTS = SynthConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``warmstart data synth`` (defaults are :class:`SynthConfig`'s)."""
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="world seed (default %(default)s)")
    for split in SPLITS:
        parser.add_argument(
            f"--n-{split}",
            type=int,
            default=_DEFAULTS.split_size(split),
            help=f"number of {split} problems (default %(default)s)",
        )
    parser.add_argument(
        "--image-size",
        type=int,
        default=_DEFAULTS.image_size,
        help="image side in px, multiple of 28 (default %(default)s)",
    )
    parser.add_argument(
        "--choice-fraction",
        type=float,
        default=_DEFAULTS.choice_fraction,
        help="fraction of multiple-choice problems (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Generate the world into ``args.out``; prints one summary line per split."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        cfg = SynthConfig(
            seed=args.seed,
            n_train=args.n_train,
            n_validation=args.n_validation,
            n_test=args.n_test,
            n_ood=args.n_ood,
            image_size=args.image_size,
            choice_fraction=args.choice_fraction,
        )
    except ConfigError as e:
        print(f"warmstart data synth: {e}", file=sys.stderr)
        return 2
    total = sum(cfg.split_size(s) for s in SPLITS)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("synth", total=total)

        def tick(split: str) -> None:
            bar.update(task, advance=1, description=f"synth {split}")

        manifest = generate(cfg, args.out, progress=tick)
    for split in SPLITS:
        print(
            f"{split}: {manifest['sizes'][split]} problems, {len(manifest['families'][split])} families, "
            f"text-only baseline {manifest['text_only_baseline'][split]:.3f}"
        )
    print(f"wrote {args.out} (seed {cfg.seed}, {cfg.image_size}px, manifest.json)")
    return 0

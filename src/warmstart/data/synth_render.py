"""Drawing one visual fact as a small jittered image (see :mod:`warmstart.data.synthetic`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from warmstart.data.synth_families import FACTS, Category

# Shapes are drawn at 4x the output size and box-filtered down: anti-aliased edges
# without depending on any drawing library's own anti-aliasing.
_SUPERSAMPLE = 4

RGB = tuple[int, int, int]


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
# Out of domain (MathVista's role), the default of ``SynthConfig.ood_style``: a printed
# diagram look. Still dark shapes on a light page (the polarity the models learned), but
# a cream page, hues absent from the in-domain palette, a thin black outline, a bluish
# "empty" grey, smaller shapes, rotations up to 45 degrees (a square can be a diamond)
# and more off-centre. Measured on the toy study's models (docstring of
# ``warmstart.data.synthetic``): every model loses accuracy here, none falls to chance.
OOD_PAPER_STYLE = Style(
    name="ood_paper",
    background=(246, 240, 222),
    palette=((220, 110, 20), (0, 128, 128), (170, 30, 120), (110, 110, 20), (120, 70, 30)),
    empty=(190, 200, 215),
    outline=(20, 20, 20),
    outline_px=1.0,
    radius=(0.56, 0.74),
    max_rotation=45.0,
    max_shift=0.08,
)
# The stronger shift (``ood_style = "dark"``; the ood style of generator version 1):
# inverted polarity (a dark page, light fills with a white outline), smaller shapes at
# any rotation, further off centre. The toy models read these images little better than
# a guess (measured: the teacher below the text-only guesser).
OOD_DARK_STYLE = Style(
    name="ood_dark",
    background=(22, 28, 48),
    palette=((250, 210, 40), (60, 220, 220), (150, 240, 120), (255, 140, 200)),
    empty=(75, 80, 95),
    outline=(255, 255, 255),
    outline_px=1.5,
    radius=(0.5, 0.66),
    max_rotation=180.0,
    max_shift=0.1,
)
# ``SynthConfig.ood_style`` -> style of the ood split.
OOD_STYLES: dict[str, Style] = {"paper": OOD_PAPER_STYLE, "dark": OOD_DARK_STYLE}
OOD_STYLE = OOD_PAPER_STYLE  # the default ood style


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

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
polygon_exterior_angle        polygon  360 / n                                optional
polygon_side_from_perimeter   polygon  perimeter / n                          optional
grid_unshaded_area            grid     (4 - filled cells) * cell area         optional
============================  =======  =====================================  ==========

("optional": in no split by default; ``families`` / ``ood_families`` can add them, and
``meta["in_domain_family"]`` then marks OOD problems of a family absent in domain.)

Splits: ``train``, ``validation`` and ``test`` share the in-domain families, phrasing
and visual style (white background, dark saturated fills, near-upright shapes). The
``ood`` split plays MathVista's role: a shift of **style and question form** over the
same six families, in which in-domain skill partly transfers. Its diagrams are drawn as
on a printed page (``ood_style = "paper"``: cream background, hues absent in domain, a
thin black outline, smaller shapes rotated up to 45 degrees, further off centre), and
each question is a sentence never seen in domain built only from words the in-domain
questions use (the clauses of the family's two in-domain phrasings crossed over, e.g.
"Each side of the regular polygon is 5. What is the perimeter?"). What transfers: the
arithmetic, the words, dark shapes on a light page; what must generalise: reading
recoloured, rotated, outlined shapes, and mapping a reworded question to its operation.
Why: chosen by measuring the toy study's trained models (seed 0, 200 OOD problems,
greedy) on 16 candidate splits against criteria fixed beforehand (base >= 1.5x chance;
teacher >= 2x chance, >= base + 10 pp, and >= 10 pp below its in-domain accuracy).
Version 1 of this split (dark page, light fills, any rotation, questions in new words,
three never-trained families) held every model at 9-14%: new words tokenise into pieces
the toy models never trained on (an unknown language, not a new question form), and an
untrained family cannot transfer. Here the base scores 29.5% and the teacher 54% (39%
and 66% in domain), against a blind chance of 6.9% (multiple choice 1/4, integer ~0)
and a text-only guesser's 29%. ``ood_style = "dark"`` (version 1's drawing) also meets
those criteria on these models (base 15.5%, teacher 27%), but only through the two
families the base never trained on, and a weaker all-family model (the teacher at 500
steps) ties the teacher there: it would not separate an all-family base. The manifest's
``composition`` gives each split's counts per family, answer type and style, and its
chance levels (:func:`split_composition`).

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

Code layout: the facts and families are defined in :mod:`warmstart.data.synth_families`,
the drawing in :mod:`warmstart.data.synth_render` (both re-exported here); this module
holds the config, the per-problem generation, the files and the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warmstart.atomic import atomic_write_text
from warmstart.config import ConfigError
from warmstart.data.schema import Problem
from warmstart.data.synth_families import (
    FACTS,
    FAMILIES,
    ID_FAMILIES,
    OOD_ONLY_FAMILIES,
    Category,
    Family,
    _fact_fields,
    family_value,
)
from warmstart.data.synth_render import ID_STYLE, OOD_STYLE, OOD_STYLES, Style, render

__all__ = [
    "FACTS",
    "FAMILIES",
    "GENERATOR_VERSION",
    "ID_FAMILIES",
    "OOD_ONLY_FAMILIES",
    "OOD_STYLE",
    "OOD_STYLES",
    "SPLITS",
    "Category",
    "Family",
    "Style",
    "SynthConfig",
    "add_arguments",
    "answer_chance",
    "family_value",
    "generate",
    "generate_split",
    "render",
    "run",
    "split_composition",
    "text_only_baseline",
    "text_only_chance",
]

# Bump when the same config would produce different problems or pixels.
GENERATOR_VERSION = "2"  # 2: the ood split redesigned (in-domain splits unchanged)
SPLITS: tuple[str, ...] = ("train", "validation", "test", "ood")
_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2, "ood": 3}
LETTERS = "ABCD"


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
        n_ood: number of out-of-domain problems (MathVista's role: other drawing style
            and question form, same families by default).
        image_size: image side in pixels; a multiple of 28 (patch 14 x merge 2), so
            56 gives the toy Qwen2.5-VL 4 image tokens.
        choice_fraction: fraction of problems posed as 4-option multiple choice.
        families: the families of train/validation/test (names in :data:`FAMILIES`).
        ood_families: the families of the ``ood`` split; the default is the in-domain
            ones (add :data:`OOD_ONLY_FAMILIES` for problems no split teaches).
        ood_style: how the ``ood`` split is drawn, a key of :data:`OOD_STYLES`:
            ``"paper"`` (default) or ``"dark"`` (the stronger shift of version 1).
    """

    seed: int = 0
    n_train: int = 4000
    n_validation: int = 200
    n_test: int = 200
    n_ood: int = 200
    image_size: int = 56
    choice_fraction: float = 0.3
    families: tuple[str, ...] = ID_FAMILIES
    ood_families: tuple[str, ...] = ID_FAMILIES
    ood_style: str = "paper"

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
        if self.ood_style not in OOD_STYLES:
            raise ConfigError(f"ood_style: must be one of {', '.join(OOD_STYLES)}, got {self.ood_style!r}")

    def split_size(self, split: str) -> int:
        """The number of problems of ``split``."""
        return int(getattr(self, _size_field(split)))

    def split_families(self, split: str) -> tuple[str, ...]:
        """The families of ``split`` (``ood_families`` for ``ood``, else ``families``)."""
        return self.ood_families if _check_split(split) == "ood" else self.families

    def split_style(self, split: str) -> Style:
        """How ``split`` is drawn (:data:`OOD_STYLES` ``[ood_style]`` for ``ood``, else the in-domain style)."""
        return OOD_STYLES[self.ood_style] if _check_split(split) == "ood" else ID_STYLE


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
    style = cfg.split_style(split)
    image = render(fam.fact, cat, rng, cfg.image_size, style)
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
            "style": style.name,
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


def _expected_text_only_chance(families: tuple[str, ...]) -> float:
    """Expected accuracy of a text-only guesser on a round robin of ``families``."""
    return sum(1 / len(FACTS[FAMILIES[f].fact]) for f in families) / len(families)


def answer_chance(problem: Problem) -> float:
    """Accuracy of a blind guess at ``problem``'s answer (it sees neither image nor text).

    ``1/k`` for a multiple-choice problem with ``k`` options (a :class:`Problem` of type
    ``choice`` always has some); ``0`` for a free-form answer (an integer below 1000 here,
    or any number: one guessed value is right with probability ~0).
    """
    return 1 / len(problem.choices) if problem.answer_type == "choice" else 0.0


def text_only_chance(problem: Problem) -> float:
    """Accuracy of a guesser that solves the text but guesses the image, on ``problem``.

    ``1 / (number of categories of the visual fact)``, free-form or multiple choice alike:
    the category is drawn uniformly and independently of the text, and the options of a
    choice problem hold every category's answer. Needs ``meta["fact"]`` (synthetic rows).
    """
    return 1 / len(FACTS[problem.meta["fact"]])


def split_composition(problems: list[Problem]) -> dict:
    """What a split is made of, and what guessing scores on it.

    Returns ``{"n", "chance", "text_only_chance", "answer_types": {type: count},
    "styles": {style: count}, "by_family": {family: {"n", "choice", "integer",
    "in_domain_family", "styles", "chance", "text_only_chance"}}}``: ``chance`` is the
    mean of :func:`answer_chance` (the floor an accuracy must clear), ``text_only_chance``
    the mean of :func:`text_only_chance` (what reading the text alone can reach). Means
    are 0.0 for no problems.
    """

    def summary(group: list[Problem]) -> dict:
        n = len(group)
        return {
            "n": n,
            "chance": sum(answer_chance(p) for p in group) / n if n else 0.0,
            "text_only_chance": sum(text_only_chance(p) for p in group) / n if n else 0.0,
        }

    by_family: dict[str, list[Problem]] = {}
    for p in problems:
        by_family.setdefault(p.meta["family"], []).append(p)
    families = {}
    for fam, group in by_family.items():
        types = Counter(p.answer_type for p in group)
        families[fam] = {
            **summary(group),
            "choice": types["choice"],
            "integer": types["integer"],
            "in_domain_family": all(p.meta.get("in_domain_family", True) for p in group),
            "styles": dict(Counter(p.meta["style"] for p in group)),
        }
    return {
        **summary(problems),
        "answer_types": dict(Counter(p.answer_type for p in problems)),
        "styles": dict(Counter(p.meta["style"] for p in problems)),
        "by_family": families,
    }


def generate(
    cfg: SynthConfig, out_dir: str | os.PathLike, progress: Callable[[str], None] | None = None
) -> dict:
    """Write every split to ``out_dir`` (``<split>.jsonl`` + ``images/``) and ``manifest.json``.

    ``progress`` (if given) is called with the split name once per problem. Returns the
    manifest: seed, sizes, families and style per split, image size, generator version,
    the text-only baseline accuracy per split, and each split's :func:`split_composition`
    (counts per family, answer type and style; chance levels).
    """
    from warmstart.data.writer import write_problems

    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    baselines, composition = {}, {}
    for split in SPLITS:
        tick = (lambda s=split: progress(s)) if progress is not None else None
        problems = generate_split(cfg, split, progress=tick)
        write_problems(problems, out, split)
        baselines[split] = round(text_only_baseline(problems), 4)
        composition[split] = split_composition(problems)
    manifest = {
        "generator": "warmstart.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "sizes": {split: cfg.split_size(split) for split in SPLITS},
        "image_size": cfg.image_size,
        "choice_fraction": cfg.choice_fraction,
        "families": {split: list(cfg.split_families(split)) for split in SPLITS},
        "ood_only_families": [f for f in cfg.ood_families if f not in cfg.families],
        "ood_style": cfg.ood_style,
        "styles": {split: cfg.split_style(split).name for split in SPLITS},
        "text_only_baseline": baselines,
        # What the best text-only guesser scores in expectation (categories are uniform):
        # the baseline above is fitted on the split itself and so sits a little higher.
        "text_only_chance": {
            split: round(_expected_text_only_chance(cfg.split_families(split)), 4) for split in SPLITS
        },
        # Per split: counts per family / answer type / style, the blind chance (multiple
        # choice 1/k, free-form 0) and the text-only chance, overall and per family.
        "composition": composition,
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
    parser.add_argument(
        "--ood-style",
        default=_DEFAULTS.ood_style,
        help=f"drawing style of the ood split: {', '.join(OOD_STYLES)} (default %(default)s)",
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
            ood_style=args.ood_style,
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
        comp = manifest["composition"][split]
        print(
            f"{split}: {manifest['sizes'][split]} problems, {len(manifest['families'][split])} families, "
            f"style {manifest['styles'][split]}, chance {comp['chance']:.3f}, "
            f"text-only baseline {manifest['text_only_baseline'][split]:.3f}"
        )
    print(f"wrote {args.out} (seed {cfg.seed}, {cfg.image_size}px, manifest.json)")
    return 0

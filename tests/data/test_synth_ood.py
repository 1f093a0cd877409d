"""The redesigned ood split (generator version 2): in-domain splits untouched, the ood
split made of what the module docstring says, and chance levels computed right."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from warmstart.data.loaders import load_problems
from warmstart.data.schema import Problem
from warmstart.data.synthetic import (
    FAMILIES,
    ID_FAMILIES,
    OOD_ONLY_FAMILIES,
    OOD_STYLES,
    SynthConfig,
    answer_chance,
    generate,
    generate_split,
    split_composition,
    text_only_chance,
)

# sha256 of <split>.jsonl + images/<split>/* (path, then bytes, sorted) as written by
# generator version 1 (git ba3f6cf, before the ood redesign), for two configs. The
# in-domain splits must stay byte-identical: the toy study's models were trained on them.
V1_CONFIGS = {
    "default_seed0": dict(seed=0, n_train=40, n_validation=20, n_test=20, n_ood=9),
    "seed11_84px": dict(
        seed=11,
        n_train=30,
        n_validation=12,
        n_test=12,
        n_ood=9,
        image_size=84,
        choice_fraction=0.6,
        families=("figure_area", "sector_area", "grid_total_area"),
    ),
}
V1_HASHES = {
    "default_seed0": {
        "train": "327fc7bdadc0abfcd943bea39f7f03f79cca060dcf39e63ee534210cfda49cec",
        "validation": "dcd410d2a4c800c5f5ee7bc62ae3ccacece6a9e840d8e4ef9c4d8feac50ecee4",
        "test": "dbcd3f7e52f7e788d8bb6aeb0fe8aba19152ba1da17c82e8f9f306d263350de0",
    },
    "seed11_84px": {
        "train": "011f6b74c21829f64b23336cba1cc647f1c85cf5a96a3406d8f704c6ad8379c0",
        "validation": "b51481e8604665cb6568a88b3c4d527e11103ebd1623e57e3ecc9aa7195fa6b9",
        "test": "d2deffc030417b82f68f5f9353f070a17fff16dc5252cb97d06cde3f2a179cc5",
    },
}
WORD = re.compile(r"[A-Za-z]+")


def _split_hash(root: Path, split: str) -> str:
    digest = hashlib.sha256()
    files = [root / f"{split}.jsonl", *sorted((root / "images" / split).rglob("*"))]
    for path in files:
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _words(templates) -> set[str]:
    return {w.lower() for t in templates for w in WORD.findall(t)}


@pytest.mark.parametrize("name", list(V1_CONFIGS))
@pytest.mark.parametrize(
    "ood", [{}, {"ood_style": "dark", "ood_families": ID_FAMILIES + OOD_ONLY_FAMILIES}], ids=["paper", "dark"]
)
def test_in_domain_splits_are_byte_identical_to_generator_version_1(tmp_path, name, ood):
    # Whatever the ood settings, train/validation/test are the files version 1 wrote.
    generate(SynthConfig(**V1_CONFIGS[name], **ood), tmp_path)
    assert {s: _split_hash(tmp_path, s) for s in ("train", "validation", "test")} == V1_HASHES[name]


def test_ood_split_has_the_in_domain_families_balanced_in_the_paper_style():
    cfg = SynthConfig(seed=2, n_ood=120)
    ood = generate_split(cfg, "ood")
    assert Counter(p.meta["family"] for p in ood) == {f: 20 for f in ID_FAMILIES}
    assert all(p.meta["in_domain_family"] and p.split == "ood" for p in ood)
    assert {p.meta["style"] for p in ood} == {"ood_paper"}
    # the page colour of the paper style in every image's corner (nothing is drawn there)
    assert all(p.images[0].getpixel((0, 0)) == OOD_STYLES["paper"].background for p in ood)
    # every question is one of the family's ood phrasings, none an in-domain phrasing
    id_texts = {q.format(**p.meta["params"]) for p in ood for q in FAMILIES[p.meta["family"]].questions}
    for p in ood:
        fam = FAMILIES[p.meta["family"]]
        assert p.question in {q.format(**p.meta["params"]) for q in fam.ood_questions}
        assert p.question not in id_texts


def test_ood_questions_are_new_sentences_of_in_domain_words():
    in_domain_templates = {q for f in ID_FAMILIES for q in FAMILIES[f].questions}
    in_domain_words = _words(in_domain_templates)
    for fam in FAMILIES.values():
        assert len(fam.ood_questions) == 2, fam.name
        for q in fam.ood_questions:
            assert q not in in_domain_templates and q not in fam.questions, (fam.name, q)
            # a word an ood-only family's own question needs ("exterior") is allowed for it
            new = _words([q]) - in_domain_words - _words(fam.questions)
            assert not new, (fam.name, q, new)
            # the same numbers are given as in domain (a form shift, not a new problem)
            assert set(re.findall(r"{(\w+)}", q)) == set(re.findall(r"{(\w+)}", fam.questions[0]))


def test_paper_style_keeps_the_dark_on_light_polarity_and_dark_style_inverts_it():
    paper, dark = OOD_STYLES["paper"], OOD_STYLES["dark"]

    def luma(rgb) -> float:
        return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]

    assert all(luma(c) < luma(paper.background) - 80 for c in paper.palette)
    assert all(luma(c) > luma(dark.background) + 80 for c in dark.palette)


def _problem(pid, answer_type, choices=None, fact="polygon", family="polygon_perimeter", style="ood_paper"):
    return Problem(
        id=pid,
        question="q",
        images=(),
        answer="A" if answer_type == "choice" else "12",
        answer_type=answer_type,
        choices=choices,
        meta={"family": family, "fact": fact, "style": style, "in_domain_family": True},
    )


def test_chance_on_hand_made_problems():
    four = _problem("a", "choice", ("1", "2", "3", "4"))
    three = _problem("b", "choice", ("1", "2", "3"), fact="grid", family="grid_cell_area")
    free = _problem("c", "integer", fact="figure", family="figure_area", style="indomain")
    assert answer_chance(four) == 0.25
    assert answer_chance(three) == pytest.approx(1 / 3)
    assert answer_chance(free) == 0.0
    assert text_only_chance(four) == 0.25  # four polygons
    assert text_only_chance(free) == 0.5  # rectangle or right triangle

    comp = split_composition([four, three, free, _problem("d", "integer")])
    assert comp["n"] == 4
    assert comp["chance"] == pytest.approx((0.25 + 1 / 3 + 0 + 0) / 4)
    assert comp["text_only_chance"] == pytest.approx((0.25 + 0.25 + 0.5 + 0.25) / 4)
    assert comp["answer_types"] == {"choice": 2, "integer": 2}
    assert comp["styles"] == {"ood_paper": 3, "indomain": 1}
    poly = comp["by_family"]["polygon_perimeter"]
    assert (poly["n"], poly["choice"], poly["integer"]) == (2, 1, 1)
    assert poly["chance"] == pytest.approx(0.125) and poly["text_only_chance"] == 0.25
    assert comp["by_family"]["figure_area"]["styles"] == {"indomain": 1}
    assert split_composition([])["chance"] == 0.0


def test_manifest_states_the_composition_and_chance_of_the_written_ood_rows(tmp_path):
    cfg = SynthConfig(seed=4, n_train=6, n_validation=6, n_test=6, n_ood=60, choice_fraction=0.5)
    manifest = generate(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest and manifest["generator_version"] == "2"
    ood = load_problems(tmp_path, split="ood").problems
    comp = manifest["composition"]["ood"]
    # recounted from the rows as written, independently of split_composition
    assert comp["n"] == len(ood) == 60
    assert comp["answer_types"] == dict(Counter(p.answer_type for p in ood))
    assert comp["chance"] == pytest.approx(np.mean([1 / len(p.choices) if p.choices else 0 for p in ood]))
    assert 0.05 < comp["chance"] < 0.2  # about half the problems at 1/4
    assert comp["text_only_chance"] == pytest.approx((5 * 0.25 + 0.5) / 6)  # balanced families
    assert comp["styles"] == {"ood_paper": 60}
    assert set(comp["by_family"]) == set(ID_FAMILIES)
    for fam, row in comp["by_family"].items():
        rows = [p for p in ood if p.meta["family"] == fam]
        assert row["n"] == len(rows) == 10
        assert row["choice"] == sum(p.answer_type == "choice" for p in rows)
        assert row["choice"] + row["integer"] == row["n"] and row["in_domain_family"]
    assert manifest["composition"]["train"]["styles"] == {"indomain": 6}

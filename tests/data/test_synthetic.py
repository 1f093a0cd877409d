"""The synthetic geometry world: deterministic, learnable-by-design, text alone insufficient."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

from warmstart.cli import main
from warmstart.config import ConfigError, from_dict
from warmstart.data.loaders import load_problems
from warmstart.data.synthetic import (
    FACTS,
    FAMILIES,
    ID_FAMILIES,
    ID_STYLE,
    LETTERS,
    OOD_ONLY_FAMILIES,
    OOD_STYLE,
    OOD_STYLES,
    SPLITS,
    SynthConfig,
    family_value,
    generate,
    generate_split,
    render,
    text_only_baseline,
)

SMALL = SynthConfig(seed=3, n_train=24, n_validation=12, n_test=12, n_ood=18)
BOXED = re.compile(r"\\boxed\{([^}]*)\}\s*$")
# "5*7=35", "(5-2)*180=540", "80*3/4=60", "240/6=40": every arithmetic step in a rationale
ARITH = re.compile(r"([\d(][\d()*/+-]*)=(\d+)")


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _names_visual_fact(visual: str, think: str) -> bool:
    """Does the reasoning say what the image shows ("pentagon", "3 of the 4 cells", ...)?"""
    if visual.endswith("cell") or visual.endswith("cells"):
        return f"{visual.split()[0]} of" in think
    return {"full": "all"}.get(visual, visual) in think.lower()


@pytest.fixture(scope="module")
def splits() -> dict:
    cfg = SynthConfig(seed=1, n_train=120, n_validation=120, n_test=12, n_ood=180, choice_fraction=0.4)
    return {split: generate_split(cfg, split) for split in SPLITS}


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    manifest = generate(SMALL, a)
    generate(SMALL, b)
    generate(SynthConfig(seed=4, n_train=24, n_validation=12, n_test=12, n_ood=18), c)
    assert _tree_hash(a) == _tree_hash(b)
    assert _tree_hash(a) != _tree_hash(c)
    assert len(list((a / "images").rglob("*.png"))) == 24 + 12 + 12 + 18
    assert manifest["seed"] == 3 and manifest["sizes"]["ood"] == 18


def test_a_longer_split_extends_a_shorter_one():
    # Each problem has its own generator, so sizes can change without reshuffling the world.
    short = generate_split(SynthConfig(n_validation=5), "validation")
    long = generate_split(SynthConfig(n_validation=9), "validation")
    for p, q in zip(short, long[:5]):
        assert (p.id, p.question, p.answer, p.rationale) == (q.id, q.question, q.answer, q.rationale)
        assert p.images[0].tobytes() == q.images[0].tobytes()


def test_every_family_and_category_appears(splits):
    for split in ("train", "validation"):
        fams = {p.meta["family"] for p in splits[split]}
        assert fams == set(ID_FAMILIES)
        for fam in ID_FAMILIES:
            seen = {p.meta["visual"] for p in splits[split] if p.meta["family"] == fam}
            assert seen == {c.name for c in FACTS[FAMILIES[fam].fact]}, (split, fam)
    # The default ood split has the in-domain families (shifted style and question form).
    assert {p.meta["family"] for p in splits["ood"]} == set(ID_FAMILIES)
    for fam in ID_FAMILIES:
        seen = {p.meta["visual"] for p in splits["ood"] if p.meta["family"] == fam}
        assert seen == {c.name for c in FACTS[FAMILIES[fam].fact]}, ("ood", fam)


def test_ood_split_differs_in_style_and_phrasing(splits):
    in_domain = splits["train"] + splits["validation"] + splits["test"]
    ood = splits["ood"]
    assert all(p.meta["in_domain_family"] for p in ood)
    assert {p.meta["style"] for p in ood} == {"ood_paper"}
    assert {p.meta["style"] for p in in_domain} == {"indomain"}
    # No question text is shared between the in-domain and the OOD phrasings.
    assert not {p.question for p in ood} & {p.question for p in in_domain}
    # A cream page out of domain, white in domain (corner pixel of every image).
    assert all(p.images[0].getpixel((0, 0)) == OOD_STYLE.background for p in ood)
    assert all(min(p.images[0].getpixel((0, 0))) > 200 for p in in_domain)


def test_ood_only_families_and_the_dark_style_on_request():
    cfg = SynthConfig(seed=1, n_ood=36, ood_families=ID_FAMILIES + OOD_ONLY_FAMILIES, ood_style="dark")
    ood = generate_split(cfg, "ood")
    assert {p.meta["family"] for p in ood} == set(ID_FAMILIES) | set(OOD_ONLY_FAMILIES)
    assert all(p.meta["in_domain_family"] == (p.meta["family"] in ID_FAMILIES) for p in ood)
    assert {p.meta["style"] for p in ood} == {"ood_dark"}
    # Dark background (corner pixel of every image).
    assert all(max(p.images[0].getpixel((0, 0))) < 80 for p in ood)


def test_rationale_boxes_the_answer_and_its_arithmetic_is_right(splits):
    for p in itertools.chain.from_iterable(splits.values()):
        value = p.meta["value"]
        assert family_value(p.meta["family"], p.meta["visual"], p.meta["params"]) == value
        assert isinstance(value, int) and 0 <= value < 1000
        assert p.rationale.startswith("<think>") and "</think>" in p.rationale
        assert BOXED.search(p.rationale).group(1) == p.answer, p.id
        think = p.rationale.split("</think>")[0]
        assert _names_visual_fact(p.meta["visual"], think), p.id
        steps = ARITH.findall(think)
        assert steps, p.id
        for expr, result in steps:
            assert eval(expr) == int(result), (p.id, expr, result)  # only digits and + - * / ( )
        assert int(steps[-1][1]) == value
        assert 5 <= len(p.rationale.split()) <= 30, p.rationale


def test_free_form_answers_are_the_value(splits):
    free = [p for s in splits.values() for p in s if p.answer_type == "integer"]
    assert free and all(p.answer == str(p.meta["value"]) and p.choices is None for p in free)


def test_choice_answers_are_letters_whose_text_is_the_value_and_distractors_are_other_categories(splits):
    problems = [p for s in splits.values() for p in s]
    choice = [p for p in problems if p.answer_type == "choice"]
    assert 0.25 < len(choice) / len(problems) < 0.55  # choice_fraction 0.4
    for p in choice:
        assert p.answer in LETTERS and len(p.choices) == 4 and len(set(p.choices)) == 4
        assert p.answer_text == str(p.meta["value"])
        # every category's answer is an option: the text alone cannot rule any out
        for cat in FACTS[p.meta["fact"]]:
            assert str(family_value(p.meta["family"], cat.name, p.meta["params"])) in p.choices
    # the correct letter is not always in the same place
    assert len({p.answer for p in choice}) == 4


def test_images_have_the_stated_size():
    for size in (56, 84):
        cfg = SynthConfig(n_train=6, n_ood=9, image_size=size)
        for split in ("train", "ood"):
            for p in generate_split(cfg, split):
                (image,) = p.images
                assert image.size == (size, size) and image.mode == "RGB"


@pytest.mark.parametrize("style", [ID_STYLE, *OOD_STYLES.values()], ids=["indomain", *OOD_STYLES])
def test_the_visual_fact_changes_many_pixels(style):
    # Same jitter (equally seeded generators), different category: the drawings must
    # differ clearly, not in a few edge pixels, or a tiny model cannot read the fact.
    for fact, cats in FACTS.items():
        for seed in range(5):
            images = [
                np.asarray(render(fact, c, np.random.default_rng(seed), 56, style), dtype=int) for c in cats
            ]
            for a, b in itertools.combinations(range(len(cats)), 2):
                changed = (np.abs(images[a] - images[b]).max(axis=-1) > 40).mean()
                assert changed > 0.02, (fact, cats[a].name, cats[b].name, seed, changed)


def test_same_category_differs_by_jitter():
    cat = FACTS["polygon"][2]
    first = render("polygon", cat, np.random.default_rng(0), 56, ID_STYLE)
    second = render("polygon", cat, np.random.default_rng(1), 56, ID_STYLE)
    assert first.tobytes() != second.tobytes()


def test_text_only_baseline_is_far_below_one(splits):
    acc = text_only_baseline(splits["validation"])
    # near the 0.29 chance of guessing one category per family; not broken at zero either
    assert 0.1 < acc < 0.5
    assert text_only_baseline(splits["ood"]) < 0.5
    assert text_only_baseline([]) == 0.0


def test_cli_writes_loadable_splits_and_manifest(tmp_path, capsys):
    out = tmp_path / "world"
    argv = ["data", "synth", "--out", str(out), "--seed", "7", "--n-train", "10", "--n-validation", "6"]
    argv += ["--n-test", "4", "--n-ood", "9", "--image-size", "28"]
    assert main(argv) == 0
    assert "text-only baseline" in capsys.readouterr().out
    sizes = {"train": 10, "validation": 6, "test": 4, "ood": 9}
    for split, n in sizes.items():
        result = load_problems(out, split=split)
        assert result.format == "warmstart-jsonl" and not result.skipped
        assert len(result.problems) == n
        p = result.problems[0]
        assert p.id == f"{split}-000000" and p.split == split and p.source == "synthetic"
        assert p.load_images()[0].size == (28, 28)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sizes"] == sizes and manifest["seed"] == 7 and manifest["image_size"] == 28
    assert manifest["ood_only_families"] == []  # the default ood split: in-domain families
    assert manifest["styles"]["ood"] == OOD_STYLE.name and manifest["ood_style"] == "paper"
    assert manifest["families"]["train"] == list(ID_FAMILIES)


def test_loaded_problems_equal_generated_ones(tmp_path):
    generate(SMALL, tmp_path)
    loaded = load_problems(tmp_path, split="ood").problems
    made = generate_split(SMALL, "ood")
    assert [(p.id, p.question, p.answer, p.choices, p.rationale, p.meta) for p in loaded] == [
        (p.id, p.question, p.answer, p.choices, p.rationale, p.meta) for p in made
    ]
    assert loaded[0].load_images()[0].tobytes() == made[0].images[0].tobytes()
    assert text_only_baseline(loaded) == text_only_baseline(made)


def test_bad_config_is_an_error_naming_the_field():
    with pytest.raises(ConfigError, match="image_size"):
        SynthConfig(image_size=50)
    with pytest.raises(ConfigError, match="ood_families.*nope"):
        SynthConfig(ood_families=("polygon_perimeter", "nope"))
    with pytest.raises(ConfigError, match="ood_style.*paper"):
        SynthConfig(ood_style="neon")
    with pytest.raises(ConfigError, match="n_test"):
        SynthConfig(n_test=-1)
    cfg = from_dict(SynthConfig, {"seed": 2, "families": ["figure_area", "sector_area"]})
    assert cfg.families == ("figure_area", "sector_area")
    with pytest.raises(ConfigError, match="n_train"):
        from_dict(SynthConfig, {"n_trian": 3})
    with pytest.raises(ValueError, match="unknown split"):
        generate_split(SMALL, "dev")


def test_cli_rejects_a_bad_image_size(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--image-size", "50"]) == 2
    assert "image_size" in capsys.readouterr().err

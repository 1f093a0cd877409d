"""What the report shows where: the shared SFT run drawn once, honest entropy captions, the blank-image
ablation in its own section, per-family accuracy, and Stage-2 dynamics (KL, clip fraction, length)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fixtures_report import SHARED_BEST_STEP, family_of, write_run_dir
from warmstart import metrics as M
from warmstart.evaluate_schema import BLANK_SPLIT, paired_compare
from warmstart.report import Figure, Table, format_interval, load_run, make_report, model_colors
from warmstart.report.plots import _new_figure, _stage1_panel, shared_stage1_run, stage2_dynamics_plot

B = 200
ARMS = [
    {"name": "sft_early", "label": "SFT (early-stopped)", "method": "sft", "checkpoint": "best"},
    {"name": "sft_over", "label": "SFT (over-trained)", "method": "sft", "checkpoint": "final"},
    {"name": "opd", "label": "OPD", "method": "opd", "checkpoint": "final"},
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = write_run_dir(
        tmp_path_factory.mktemp("run"), P=24, n=4, B=B, arms=ARMS, shared_sft=True, extras=True
    )
    config = json.loads((root / "study_config.json").read_text())
    config["arm"][0]["sft"] = {"val_split": "test", "val_problems": 100, "eval_every": 10, "seed": 0}
    config["grpo"] = {
        "prompts_per_step": 16,
        "n": 8,
        "update_epochs": 1,
        "mini_batches": 1,
        "loss": {"kl_coef": 0.0},
    }
    (root / "study_config.json").write_text(json.dumps(config))
    return load_run(root)


@pytest.fixture(scope="module")
def report(run):
    return make_report(run, B=B)


def _blocks(report, anchor: str) -> list:
    return next(s for s in report.sections if s.anchor == anchor).blocks


def test_an_arm_that_is_a_checkpoint_of_another_arms_run_is_drawn_once_and_marked(run):
    assert shared_stage1_run(run, "sft_early") == ("sft_over", SHARED_BEST_STEP)
    assert shared_stage1_run(run, "sft_over") is None and shared_stage1_run(run, "opd") is None
    colors = model_colors(run)
    fig, axes = _new_figure(1)
    used: list[str] = []
    notes = _stage1_panel(axes[0], run, colors, used)
    assert notes == [f"sft_early is sft_over's checkpoint at step {SHARED_BEST_STEP} (one run)"]
    lines = axes[0].get_lines()
    over = [ln for ln in lines if ln.get_color() == colors["sft_over"]]
    early = [ln for ln in lines if ln.get_color() == colors["sft_early"]]
    # sft_over's run once, point by point (SFT logs entropy every 10 steps), labelled with both arms
    assert len(over) == 1 and list(over[0].get_xdata()) == [0, 10, 20, 30]
    assert over[0].get_label() == "sft_over (one run with sft_early)"
    # sft_early: no line of its own, a marker on sft_over's line at its step and a dotted vertical line
    (marker,) = [ln for ln in early if ln.get_marker() == "D"]
    assert list(marker.get_xdata()) == [SHARED_BEST_STEP]
    assert marker.get_ydata()[0] == pytest.approx(over[0].get_ydata()[2])
    assert all(len(ln.get_xdata()) <= 2 for ln in early)  # the marker and the axvline only
    # prefix detection without result.json (an older run directory)
    (run.run_dir / "stage1/sft_early/result.json").rename(run.run_dir / "stage1/sft_early/result.bak")
    try:
        assert shared_stage1_run(load_run(run.run_dir), "sft_early") == ("sft_over", SHARED_BEST_STEP)
    finally:
        (run.run_dir / "stage1/sft_early/result.bak").rename(run.run_dir / "stage1/sft_early/result.json")


def test_entropy_captions_say_what_each_log_measured(report):
    (fig,) = [b for b in _blocks(report, "entropy") if isinstance(b, Figure)]
    assert (
        "SFT: validation samples, not training batches: one T=1 sample per problem of its selection "
        in fig.caption
    )
    assert "split 'test' (100 problems), at step 0 and every 10 steps" in fig.caption
    assert "GRPO: the step's own training rollouts (16 prompts x 8 samples" in fig.caption
    assert "sft_early is sft_over's checkpoint at step 20 (one run)" in fig.caption
    training = next(b for b in _blocks(report, "entropy-tables") if b.title.startswith("Training logs"))
    assert "SFT: validation samples, not training batches" in training.note
    assert "training batch, not the evaluation set" not in training.note


def test_blank_image_ablation_has_its_own_section_and_paired_drop(run, report):
    accuracy = next(b for b in _blocks(report, "accuracy") if isinstance(b, Table))
    assert not any(BLANK_SPLIT in h for h in accuracy.header) and run.splits == ["validation", "ood"]
    (table,) = [b for b in _blocks(report, "ablation") if isinstance(b, Table)]
    assert [r[0].text for r in table.rows] == ["base", "teacher"]
    full, blank = run.eval("teacher", "validation"), run.eval("teacher", BLANK_SPLIT)
    drop = paired_compare(blank, full, ["greedy_accuracy"], B=B, seed=0)["greedy_accuracy"]
    row = table.rows[1]
    assert row[4].text == format_interval("greedy_accuracy", blank.summary["greedy_accuracy"])
    assert row[6].text == format_interval("greedy_accuracy", drop, diff=True)
    assert not any("validation_blank" in n for n in run.notes)  # its files saying "validation" is expected


def test_per_family_accuracy_comes_from_each_familys_problems(run, report):
    tables = [b for b in _blocks(report, "families") if isinstance(b, Table)]
    assert [t.title for t in tables] == [
        "Greedy accuracy per question family, validation (in-domain)",
        "Greedy accuracy per question family, ood (out-of-domain)",
    ]
    ood = tables[1]
    assert ood.header[1:5] == [
        "perimeter, n=6 (%)",
        "area, n=6 (%)",
        "angle, n=6 (%)",
        "exterior_angle (OOD only), n=6 (%)",
    ]
    ev = run.eval("opd+grpo", "ood")
    correct = np.array([p.greedy.correct for p in ev.per_problem], dtype=float)
    fam = np.array([family_of("ood", int(p.id.split("-")[1])) for p in ev.per_problem])
    row = next(r for r in ood.rows if r[0].text == "opd+grpo")
    for j, f in enumerate(["perimeter", "area", "angle", "exterior_angle"], start=1):
        ci = M.bootstrap_ci(correct[fam == f], B=B, seed=0)
        assert row[j].text == f"{100 * ci.point:.0f} [{100 * ci.lo:.0f}, {100 * ci.hi:.0f}]"


def test_stage2_dynamics_plot_has_kl_clip_fraction_and_length(run, tmp_path):
    fig = stage2_dynamics_plot(run)
    assert fig is not None and fig.name == "stage2_dynamics"
    assert sorted(fig.sources) == sorted(f"stage2/{a['name']}/metrics.jsonl" for a in ARMS)
    colors = model_colors(run)
    import matplotlib.image

    img = (matplotlib.image.imread(__import__("io").BytesIO(fig.png))[..., :3] * 255).round()
    for arm in ("sft_early", "sft_over", "opd"):
        rgb = np.array([int(colors[arm][i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(img - rgb).max(axis=2) < 12).sum() > 200, arm
    assert "kl is 0 at every step" not in fig.caption  # the fixture logs a non-zero kl
    # a run whose GRPO logged kl = clip_frac = 0 (kl_coef 0, one update per batch): the caption says why
    for arm in ARMS:
        path = run.run_dir / f"stage2/{arm['name']}/metrics.jsonl"
        rows = [json.loads(ln) for ln in path.read_text().splitlines()]
        (tmp_path / f"stage2/{arm['name']}").mkdir(parents=True)
        (tmp_path / f"stage2/{arm['name']}/metrics.jsonl").write_text(
            "".join(json.dumps({**r, "kl": 0.0, "clip_frac": 0.0}) + "\n" for r in rows)
        )
    (tmp_path / "study_config.json").write_text((run.run_dir / "study_config.json").read_text())
    caption = stage2_dynamics_plot(load_run(tmp_path)).caption
    assert "kl is 0 at every step: kl_coef = 0 in [grpo.loss]" in caption
    assert "clip_frac is 0 at every step: update_epochs = mini_batches = 1" in caption

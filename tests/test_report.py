"""Tests for ``warmstart report`` and ``warmstart compare`` on generated fixture runs.

The HTML report is opened in real headless Chromium (Debian's ``chromium``), screenshotted
once as it is and once with its images hidden (same layout), and the two screenshots
are compared: the plots must be what differs, in the arms' colours. Chromium also reports
where the claims table and the entropy figure are laid out (element positions from the
page), so "the answer first" is checked in a real browser.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fixtures_report import make_eval, write_run_dir
from warmstart import cli
from warmstart.evaluate_schema import paired_compare, read_eval, write_eval
from warmstart.report import (
    PALETTE,
    ArmInfo,
    Figure,
    Table,
    build_report,
    format_interval,
    load_run,
    make_report,
    model_colors,
)

SKIPPED = ("eval/teacher__ood.json", "stage1/opd/metrics.jsonl")
B = 500


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """A fixture run with one eval file and one log missing, one unreadable eval and one bad log line."""
    run_dir = write_run_dir(
        tmp_path_factory.mktemp("run"), P=30, n=8, B=B, skip=SKIPPED, shared_sft=True, extras=True
    )
    (run_dir / "eval" / "extra_model__validation.json").write_text('{"schema": "warmstart.eval/v0"}')
    with (run_dir / "stage2" / "opd" / "metrics.jsonl").open("a") as f:
        f.write("{truncated\n")
    # built through the CLI (one build serves every test of this module)
    assert cli.main(["report", str(run_dir), "-B", str(B), "--seed", "0"]) == 0
    return run_dir, (run_dir / "report.md").read_text(), run_dir / "report.html", load_run(run_dir)


def table_after(md: str, title: str) -> list[str]:
    """The Markdown table lines under heading ``### title``."""
    block = md.split(f"### {title}", 1)[1].split("\n\n")[1]
    return block.splitlines()


def row_of(table: list[str], first_cell: str) -> list[str]:
    for line in table:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in table")


def test_report_lists_missing_and_unreadable_inputs(report_run):
    run_dir, md, _, run = report_run
    for rel in SKIPPED:
        assert f"- missing: {rel}" in md
    assert "eval/extra_model__validation.json: unreadable" in md and "unsupported version" in md
    assert "stage2/opd/metrics.jsonl line 31: not JSON" in md
    assert len(run.evals) == 17 and len(run.logs) == 5  # 15 study evals (one missing) + 2 blank-image


def test_accuracy_table_numbers_come_from_the_named_eval_files(report_run):
    run_dir, md, _, _ = report_run
    table = table_after(md, "Accuracy per model (greedy and sampled)")
    header = [c.strip() for c in table[0].strip("|").split(" | ")]
    # every accuracy column says its split, greedy or sampled, temperature and n
    assert header[2] == "validation (in-domain) greedy, T=0 (%)"
    assert header[3] == "validation (in-domain) pass@1, sampled T=1, top_p=1, n=8 (%)"
    assert header[4].startswith("ood (out-of-domain) greedy, T=0")
    assert not any("validation_blank" in h for h in header)  # the ablation has its own section
    ev = read_eval(run_dir / "eval" / "opd+grpo__ood.json")
    row = row_of(table, "opd+grpo")
    assert row[4] == format_interval("greedy_accuracy", ev.summary["greedy_accuracy"])
    assert row[5] == format_interval("pass@1", ev.summary["pass@1"])
    # the row's source numbers resolve to exactly those files in the Sources section
    refs = re.findall(r"\[(\d+)\]", row[-1])
    paths = [re.search(rf"^- \[{r}\] (\S+): read", md, re.M).group(1) for r in refs]
    assert paths == ["eval/opd+grpo__validation.json", "eval/opd+grpo__ood.json"]
    assert row_of(table, "teacher")[4:6] == ["—", "—"]  # teacher__ood.json is missing


def test_every_table_and_figure_names_its_sources(report_run):
    _, md, _, _ = report_run
    n_tables = md.count("\n|---")
    n_figures = md.count("](report_plots/")
    assert n_tables == 15 and n_figures == 4
    # every table has a sources column, every figure caption its input numbers; the paths once, at the end
    for table in md.split("\n|---")[:-1]:
        assert (
            table.rsplit("\n", 1)[-1].rstrip().endswith("| sources |") or "| sources (a, b) |" in table[-200:]
        )
    assert md.count(" Inputs: [") == n_figures
    assert "\nSources: " not in md and md.count("## Sources") == 1
    # the answer first: claims, the entropy page, per-family accuracy, then the rest
    order = [
        "## Claims of the paper",
        "## Entropy along both stages, every arm",
        "## Accuracy per question family",
        "## Claim tests in detail",
        "## Accuracy\n",
        "## pass@k and answer diversity",
        "## Entropy tables",
        "## Stage-2 training dynamics",
        "## Paired differences",
        "## Ablation: blank images",
        "## Inputs",
        "## Sources",
    ]
    positions = [md.index(h) for h in order]
    assert positions == sorted(positions)
    assert "### pass@k and answer diversity, ood (out-of-domain): Stage-1 init vs Stage-2 endpoint" in md
    assert "### Policy entropy, validation (in-domain): Stage-1 init vs Stage-2 endpoint" in md


def test_paired_differences_match_paired_compare(report_run):
    run_dir, md, _, _ = report_run
    a = read_eval(run_dir / "eval" / "sft_over+grpo__validation.json")
    b = read_eval(run_dir / "eval" / "sft_over__validation.json")
    diffs = paired_compare(a, b, ["greedy_accuracy", "pass@1", "pass@8", "entropy_token_mean"], B=B, seed=0)
    row = row_of(
        table_after(md, "Stage-2 endpoint minus its Stage-1 init, validation (in-domain)"),
        "sft_over+grpo − sft_over",
    )
    texts = [c.strip("*") for c in row]
    assert texts[1] == format_interval("greedy_accuracy", diffs["greedy_accuracy"], diff=True)
    assert texts[2] == format_interval("pass@1", diffs["pass@1"], diff=True)
    assert texts[3] == format_interval("pass@8", diffs["pass@8"], diff=True)
    assert texts[5] == format_interval("entropy_token_mean", diffs["entropy_token_mean"], diff=True)
    # bold exactly where the interval excludes zero
    assert row[5].startswith("**") == diffs["entropy_token_mean"].excludes_zero()
    vs_ref = table_after(md, "Each arm minus sft_early, ood (out-of-domain)")
    assert [row_of(vs_ref, lab)[0] for lab in ("opd − sft_early", "opd+grpo − sft_early+grpo")]


def test_html_is_self_contained_with_inline_png_plots(report_run):
    _, _, html_path, _ = report_run
    page = html_path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<link" not in page and "<script" not in page
    images = re.findall(
        r'<img alt="[^"]*" width="\d+" height="\d+" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page
    )
    assert len(images) == 4
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert page.count("<table") == 15
    assert '<section id="claims">' in page and '<section id="entropy">' in page


def test_report_builds_from_an_empty_run_directory(tmp_path):
    info = build_report(tmp_path, B=100)
    run = load_run(tmp_path)
    text = Path(info["report_md"]).read_text()
    page = Path(info["report_html"])
    # a bare folder has no arms (none in eval/ file names): only base and teacher are expected
    assert run.arms == [] and info["plots"] == 0 and info["missing"] == 4
    assert "- missing: eval/base__validation.json" in text and "- missing: eval/teacher__ood.json" in text
    assert "Accuracy plot: no eval files." in text
    assert "validation: arm − reference arm: no Stage-1 arm in this run." in text
    assert "<img" not in page.read_text()


def test_run_without_study_config_takes_its_arms_from_the_eval_file_names(report_run, tmp_path):
    _, md, _, run = report_run
    # today's three arms keep today's labels and order; a name only found in eval/ follows, labelled by its name
    assert run.arms == [
        ArmInfo("sft_early", "SFT (early-stopped)"),
        ArmInfo("sft_over", "SFT (over-trained)"),
        ArmInfo("opd", "OPD"),
        ArmInfo("extra_model", "extra_model"),
    ]
    assert row_of(table_after(md, "Accuracy per model (greedy and sampled)"), "sft_over")[1] == (
        "Stage-1: SFT (over-trained)"
    )
    assert model_colors(run)["opd+grpo"] == model_colors(run)["opd"] == PALETTE[2]
    # a folder of a few eval files: arms in the default order, then the others (an endpoint alone names its arm)
    for name in ("zeta__validation.json", "opd__ood.json", "alpha+grpo__ood.json", "base__ood.json"):
        write_eval(tmp_path / "eval" / name, make_eval(name.split("__")[0], "ood", P=5, B=50))
    assert load_run(tmp_path).arm_names == ["opd", "alpha", "zeta"]


def test_an_unusable_study_config_is_reported_and_the_eval_names_are_used(tmp_path):
    write_eval(tmp_path / "eval" / "opd__ood.json", make_eval("opd", "ood", P=5, B=50))
    (tmp_path / "study_config.json").write_text(json.dumps({"arm": [{"label": "no name"}]}))
    run = load_run(tmp_path)
    assert run.arm_names == ["opd"]
    assert "key 'arm[0].name': expected a non-empty string" in run.unreadable["study_config.json"]
    assert any("study_config.json has no usable arm list" in n for n in run.notes)


FOUR_ARMS = [
    {"name": "opd", "label": "On-policy distillation", "method": "opd"},
    {"name": "sft_early", "label": "SFT (early-stopped)", "method": "sft"},
    {"name": "sft_over", "label": "SFT (over-trained)", "method": "sft"},
    {"name": "sft_long", "label": "SFT (long context)", "method": "sft"},
]


def _has_colour(png: bytes, hex_colour: str) -> bool:
    """Whether the plot has pixels of this colour, drawn solid or as a bar at alpha 0.9 over white."""
    import matplotlib.image

    img = (matplotlib.image.imread(io.BytesIO(png))[..., :3] * 255).round()
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    for target in (rgb, 0.9 * rgb + 0.1 * 255):
        if (np.abs(img - target).max(axis=2) < 12).sum() > 50:
            return True
    return False


def test_a_fourth_arm_in_study_config_is_in_every_table_and_plot(tmp_path):
    run_dir = write_run_dir(tmp_path / "run", P=12, n=4, B=100, arms=FOUR_ARMS)
    run = load_run(run_dir)
    assert run.arms == [ArmInfo(a["name"], a["label"], a["method"]) for a in FOUR_ARMS]
    assert run.reference_arm == "opd"
    colors = model_colors(run)
    assert [colors[a["name"]] for a in FOUR_ARMS] == list(PALETTE[:4])
    assert colors["sft_long+grpo"] == colors["sft_long"]
    report = make_report(run, B=100)
    blocks = [b for sec in report.sections for b in sec.blocks]
    tables = [b for b in blocks if isinstance(b, Table)]
    figures = [b for b in blocks if isinstance(b, Figure)]
    assert len(tables) == 12 and len(figures) == 4
    for t in tables:
        if t.title.startswith("Claim"):  # claims are about the paper's roles, not every arm
            continue
        rows = {r[0].text: [c.text for c in r] for r in t.rows}
        assert any("sft_long" in key for key in rows), f"no sft_long row in {t.title!r}"
        if "role" in t.header:  # tables that say what each model is: the arm's label from study_config.json
            assert rows["sft_long"][1] == "Stage-1: SFT (long context)"
            assert rows["sft_long+grpo"][1] == "Stage-2: GRPO from sft_long"
            assert rows["opd"][1] == "Stage-1: On-policy distillation"
    titles = [t.title for t in tables]
    assert "Each arm minus opd, ood (out-of-domain)" in titles  # the first arm is the reference
    vs_ref = next(t for t in tables if t.title == "Each arm minus opd, validation (in-domain)")
    assert [r[0].text for r in vs_ref.rows] == [
        "sft_early − opd",
        "sft_over − opd",
        "sft_long − opd",
        "sft_early+grpo − opd+grpo",
        "sft_over+grpo − opd+grpo",
        "sft_long+grpo − opd+grpo",
    ]
    for fig in figures:
        assert any("sft_long" in rel for rel in fig.sources), f"{fig.name} does not use sft_long's files"
        assert _has_colour(fig.png, colors["sft_long"]), f"sft_long's colour is not in {fig.name}"
    training = next(t for t in tables if t.title.startswith("Training logs"))
    assert [r[0].text for r in training.rows] == [a["name"] for a in FOUR_ARMS]


# --------------------------------------------------------------------------- Chromium


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def screenshot(browser: str, html_file: Path, png: Path, profile: Path) -> np.ndarray:
    cmd = [
        browser,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        "--window-size=1200,3000",
        html_file.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.exists(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    import matplotlib.image

    return (matplotlib.image.imread(png)[..., :3] * 255).round().astype(np.int16)


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)

# Injected into a copy of the page (the report itself has no script): after load, the page
# box of the claims table and of the entropy figure, and the page height, in CSS pixels.
_POSITIONS_JS = """<script>window.addEventListener('load', function () {
  function box(sel) { var el = document.querySelector(sel); if (!el) return null;
    var b = el.getBoundingClientRect(); return [b.top + window.scrollY, b.bottom + window.scrollY]; }
  document.body.setAttribute('data-pos', JSON.stringify({claims: box('#claims table'),
    entropy: box('#entropy img'), accuracy: box('#accuracy table'),
    height: document.documentElement.scrollHeight}));
});</script>"""


def element_positions(browser: str, html_file: Path, tmp: Path, width: int = 1200) -> dict:
    """Where Chromium lays out the claims table and the entropy figure (top, bottom in px)."""
    probe = tmp / "positions.html"
    probe.write_text(html_file.read_text().replace("</body>", _POSITIONS_JS + "</body>", 1))
    cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile_pos'}", f"--window-size={width},900"]
    proc = subprocess.run([*cmd, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'data-pos="([^"]*)"', proc.stdout)
    assert m, f"chromium returned no positions (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html_lib.unescape(m.group(1)))


ANSWER_BY_PX = 1900
"""The claims table and the whole entropy figure must lie within this many pixels of the top at 1200 px wide."""


# Locally a machine without chromium skips this one test; under CI (which installs it in
# .ci/run) a missing browser is a failure, so the browser check cannot silently vanish.
@pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("CI"),
    reason="chromium is not installed (apt-get install -y chromium)",
)
def test_report_html_renders_its_plots_in_headless_chromium(report_run, tmp_path):
    _, _, html_path, _ = report_run
    browser = find_chromium()
    # the answer first: the claims table, then the entropy figure, both near the top of a long page
    pos = element_positions(browser, html_path, tmp_path)
    claims_top, claims_bottom = pos["claims"]
    ent_top, ent_bottom = pos["entropy"]
    assert claims_top < 500 and claims_bottom < ent_top, pos
    assert ent_bottom < ANSWER_BY_PX, pos
    assert ent_bottom - ent_top > 150, pos  # the figure has its height before it decodes (width/height set)
    assert pos["accuracy"][0] > ent_bottom and pos["height"] > 3 * ANSWER_BY_PX, pos

    page = html_path.read_text()
    hidden = tmp_path / "report_no_images.html"  # same layout, images invisible
    hidden.write_text(page.replace("</style>", "img { visibility: hidden; }</style>", 1))
    full = screenshot(browser, html_path, tmp_path / "full.png", tmp_path / "profile1")
    blank = screenshot(browser, hidden, tmp_path / "blank.png", tmp_path / "profile2")
    assert full.shape == blank.shape == (3000, 1200, 3)
    assert (full < 250).any(axis=2).mean() > 0.05  # the page is not blank: text, tables, plots
    changed = np.abs(full - blank).sum(axis=2) > 30
    # the entropy figure is where Chromium said: its rows are the first rows of the page that images change
    rows = np.flatnonzero(changed.any(axis=1))
    assert abs(rows[0] - ent_top) < 10 and rows[0] < ANSWER_BY_PX, (rows[0], ent_top)
    in_figure = changed[int(ent_top) : int(ent_bottom)]
    # a plot is mostly white like the page: its lines, labels and frame are ~10% of its area
    assert in_figure.mean() > 0.05, f"only {in_figure.mean():.1%} of the entropy figure's area is drawn"
    # and its pixels carry the arms' colours (matplotlib blue, orange, green)
    plot_pixels = full[int(ent_top) : int(ent_bottom)][in_figure]
    colors = model_colors(load_run(html_path.parent))
    for arm in ("sft_early", "sft_over", "opd"):
        rgb = np.array([int(colors[arm][i : i + 2], 16) for i in (1, 3, 5)])
        near = (np.abs(plot_pixels - rgb).max(axis=1) < 12).sum()
        assert near > 300, (
            f"{arm}'s colour {colors[arm]} is not in the rendered entropy figure ({near} pixels)"
        )
    # the verdict cells are coloured (supported green, contradicted red, inconclusive grey)
    assert 'class="v-' in page


# -------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evals")
    paths = {}
    for model, split in (
        ("sft_early", "validation"),
        ("opd", "validation"),
        ("opd+grpo", "validation"),
        ("opd", "ood"),
    ):
        paths[(model, split)] = str(
            write_eval(d / f"{model}__{split}.json", make_eval(model, split, P=25, B=200))
        )
    return paths


def test_compare_cli_prints_summary_and_paired_differences(eval_files, capsys):
    files = [eval_files[("sft_early", "validation")], eval_files[("opd+grpo", "validation")]]
    assert cli.main(["compare", *files, "-B", "300"]) == 0
    out = capsys.readouterr().out
    assert "Summary" in out and "Paired differences: model − sft_early" in out
    ev = read_eval(files[1])
    assert format_interval("pass@1", ev.summary["pass@1"]) in out
    assert "entropy/token (nats)" in out and "pass@8 (pp)" in out


def test_compare_cli_json_with_baseline_and_metrics(eval_files, capsys):
    files = [eval_files[("sft_early", "validation")], eval_files[("opd", "validation")]]
    rc = cli.main(
        [
            "compare",
            *files,
            "--baseline",
            "opd",
            "--metrics",
            "pass@1",
            "entropy_token_mean",
            "--json",
            "-B",
            "300",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["baseline"] == "opd" and result["metrics"] == ["pass@1", "entropy_token_mean"]
    diff = result["differences"]["sft_early"]["pass@1"]
    a, b = read_eval(files[0]), read_eval(files[1])
    assert diff["value"] == pytest.approx(a.summary["pass@1"].value - b.summary["pass@1"].value)
    assert diff["lo"] <= diff["value"] <= diff["hi"]


def test_compare_cli_same_file_twice_gives_zero_differences(eval_files, capsys):
    f = eval_files[("opd", "validation")]
    assert cli.main(["compare", f, f, "--json", "-B", "200"]) == 0
    result = json.loads(capsys.readouterr().out)
    (diffs,) = result["differences"].values()
    assert all(d == {"value": 0.0, "lo": 0.0, "hi": 0.0} for d in diffs.values())


def test_compare_cli_errors_name_the_files(eval_files, capsys):
    val, ood = eval_files[("opd", "validation")], eval_files[("sft_early", "validation")]
    mismatched = eval_files[("opd", "ood")]
    assert cli.main(["compare", val, mismatched, "-B", "100"]) == 2
    err = capsys.readouterr().err
    assert "opd__validation.json" in err and "opd__ood.json" in err and "same problems" in err
    assert cli.main(["compare", val, ood, "--baseline", "nobody"]) == 2
    assert "--baseline 'nobody' matches none" in capsys.readouterr().err
    assert cli.main(["compare", val, "missing.json"]) == 2
    assert "missing.json: file not found" in capsys.readouterr().err


def test_report_cli_writes_plots_beside_the_markdown(report_run, capsys):
    run_dir, md, _, _ = report_run
    plots = sorted(p.name for p in (run_dir / "report_plots").iterdir())
    assert plots == ["accuracy.png", "entropy_trajectories.png", "pass_at_k.png", "stage2_dynamics.png"]
    assert all(f"](report_plots/{name})" in md for name in plots)
    assert cli.main(["report", str(run_dir / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err

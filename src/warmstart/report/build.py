"""Assembling the report (sections in order, sources numbered) and writing its files."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from warmstart import metrics as M
from warmstart.atomic import atomic_write_bytes, atomic_write_text
from warmstart.evaluate_schema import SPLITS, eval_relpath, stage2_model
from warmstart.report.blocks import (
    Bullets,
    Figure,
    Paragraph,
    Report,
    Section,
    SourceIds,
    Table,
    sampling_note,
)
from warmstart.report.claim_tables import claim_tests_table, claims_table, evaluate_claims
from warmstart.report.claims import POOLING_RULE, VERDICT_RULE
from warmstart.report.data import RunData, load_run
from warmstart.report.plots import (
    PLOT_NAMES,
    accuracy_plot,
    entropy_page_plot,
    passk_plot,
    stage2_dynamics_plot,
)
from warmstart.report.render import PLOT_DIR, render_html, render_markdown
from warmstart.report.stage_tables import selection_blocks, stage0_blocks
from warmstart.report.tables import (
    accuracy_table,
    blank_table,
    diff_table,
    entropy_table,
    family_table,
    passk_table,
    training_table,
)

__all__ = ["make_report", "differences_section", "build_report"]


def make_report(run: RunData, B: int = M.DEFAULT_B, seed: int = 0, title: str = "warmstart report") -> Report:
    """All sections of the report, in order, with their source numbering.

    The answer first: the claims table, then the entropy of every arm along both stages
    (one figure), then the stage-0 check (v2: teacher vs base student per family, the
    matched-outcome target) and per-family accuracy; then the claim tests in detail,
    Stage-1 selection and compute, the accuracy, pass@k, entropy and training tables,
    Stage-2 dynamics, paired differences, the blank-image ablation, the run's inputs and
    the sources (listed once, at the end). The stage-0 section comes after the entropy
    figure so the answer (claims table and entropy figure) stays at the top of the page.
    """
    src = SourceIds()
    out: list[Section] = []
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    n_seeds = max((len(r) for r in run.groups.values()), default=0)
    bad = [f"missing: {p}" for p in run.missing] + [f"{p}: {s}" for p, s in run.unreadable.items()]
    head = Section("About this run", anchor="run-summary")
    head.blocks.append(
        Paragraph(
            f"Run directory: {run.run_dir}. Generated {now}. {len(run.evals)} eval files and {len(run.logs)} "
            f"training logs read; {len(run.groups)} arms, {n_seeds} seed(s) per arm at most; "
            f"{len(bad)} inputs missing or unreadable (listed under 'Inputs'). Paired intervals: B={B} "
            f"resamples of problems, seed={seed}."
        )
    )
    out.append(head)

    results, left_out = evaluate_claims(run, B=B, seed=seed)
    claims = Section("Claims of the paper", anchor="claims")
    claims.blocks.append(claims_table(results, src, B, seed))
    claims.blocks.append(Paragraph(VERDICT_RULE))
    claims.blocks.append(Paragraph(POOLING_RULE))
    if left_out:
        claims.blocks.append(
            Paragraph(
                f"Left out: {', '.join(left_out)} (C3's and C4's comparisons between matched-outcome "
                "checkpoints): this run has no SFT and OPD arm with checkpoint = 'matched'."
            )
        )
    out.append(claims)

    ent = Section("Entropy along both stages, every arm", anchor="entropy")
    ent.blocks.append(
        entropy_page_plot(run) or Paragraph("Entropy: no training log or eval file with entropy.")
    )
    out.append(ent)

    stage0 = Section("Stage 0: teacher vs base student, matched-outcome target", anchor="stage0")
    stage0.blocks += stage0_blocks(run, src)
    out.append(stage0)

    fam = Section("Accuracy per question family", anchor="families")
    for split in run.splits:
        t = family_table(run, split, src, B, seed)
        if t is not None:
            fam.blocks.append(t)
    if not fam.blocks:
        fam.blocks.append(
            Paragraph("No family labels: no data/<split>.jsonl with meta.family for the eval files.")
        )
    out.append(fam)

    detail = Section("Claim tests in detail", anchor="claim-tests")
    detail.blocks.append(claim_tests_table(results, src))
    out.append(detail)

    sel = Section("Stage-1 selection and compute", anchor="selection")
    sel.blocks += selection_blocks(run, src)
    out.append(sel)

    acc = Section("Accuracy", anchor="accuracy")
    acc.blocks.append(accuracy_table(run, src))
    acc.blocks.append(accuracy_plot(run) or Paragraph("Accuracy plot: no eval files."))
    out.append(acc)

    div = Section("pass@k and answer diversity", anchor="pass-at-k")
    for split in run.splits:
        t = passk_table(run, split, src)
        div.blocks.append(t or Paragraph(f"{split}: no eval files."))
    div.blocks.append(passk_plot(run) or Paragraph("pass@k plot: no eval file with samples."))
    out.append(div)

    etab = Section("Entropy tables", anchor="entropy-tables")
    for split in run.splits:
        t = entropy_table(run, split, src)
        if t is not None:
            etab.blocks.append(t)
    etab.blocks.append(training_table(run, src))
    out.append(etab)

    dyn = Section("Stage-2 training dynamics", anchor="stage2")
    dyn.blocks.append(stage2_dynamics_plot(run) or Paragraph("Stage-2 dynamics: no Stage-2 metrics.jsonl."))
    out.append(dyn)

    out.append(differences_section(run, src, B, seed))

    abl = Section("Ablation: blank images", anchor="ablation")
    abl.blocks.append(blank_table(run, src, B, seed) or Paragraph("No blank-image evaluation in this run."))
    out.append(abl)

    inputs = Section("Inputs", anchor="inputs")
    inputs.blocks.append(
        Paragraph("Missing or unreadable inputs:" if bad else "Missing or unreadable inputs: none.")
    )
    if bad:
        inputs.blocks.append(Bullets(bad))
    if run.not_reached:
        inputs.blocks.append(
            Paragraph("Matched-outcome checkpoints never reached (not-reached records, not results):")
        )
        inputs.blocks.append(
            Bullets([f"{eval_relpath(m, sp)}: {nr.text}" for (m, sp), nr in run.not_reached.items()])
        )
    no_rl = [a.name for a in run.arms if not a.grpo]
    if no_rl:
        inputs.blocks.append(
            Paragraph(
                f"Arms without a Stage-2 run (grpo = false): {', '.join(no_rl)}; no <arm>+grpo eval file "
                "and no stage2/<arm>/ log is expected of them."
            )
        )
    if run.notes:
        inputs.blocks.append(Paragraph("Notes:"))
        inputs.blocks.append(Bullets(run.notes))
    out.append(inputs)

    # number the figures' inputs too, then every other file read or expected
    for sec in out:
        for blk in sec.blocks:
            if isinstance(blk, Figure | Table):
                blk.sources = list(dict.fromkeys(blk.sources))  # once each, in order of use
                for rel in blk.sources:
                    src.ref(rel)
    for rel in run.status:
        src.ref(rel)
    sources = Section("Sources", anchor="sources")
    sources.blocks.append(
        Paragraph(
            "Every [n] in the tables and figure captions refers to one file, relative to the run directory; "
            "this is the only list of them."
        )
    )
    items = []
    for rel, n in src.ids.items():
        status = run.status.get(rel, "read")
        desc = f"[{n}] {rel}: {status}"
        nr = next((r for (m, sp), r in run.not_reached.items() if eval_relpath(m, sp) == rel), None)
        if nr is not None:
            desc += f" (a not-reached record of {nr.model_name}: {nr.reason or 'no reason given'})"
        ev = next((e for (m, s), e in run.evals.items() if eval_relpath(m, s) == rel), None)
        if ev is not None:
            desc += (
                f" (model {ev.model.name} from {ev.model.path}; split {ev.data.split}, {ev.data.n_problems} "
                f"problems; greedy={ev.settings.greedy}, {sampling_note(ev)}, max_new_tokens="
                f"{ev.settings.max_new_tokens}; bootstrap B={ev.bootstrap.B}, seed={ev.bootstrap.seed}; "
                f"created {ev.created})"
            )
        items.append(desc)
    sources.blocks.append(Bullets(items))
    out.append(sources)
    return Report(title=title, sections=out, source_ids=src.ids)


def differences_section(run: RunData, src: SourceIds, B: int, seed: int) -> Section:
    """Per split: each endpoint minus its init, and each arm minus the reference arm (the first) at each stage."""
    diff = Section("Paired differences", anchor="differences")
    arms, ref_arm = run.arm_names, run.reference_arm
    rl_arms = run.stage2_arms  # arms with grpo = false have no endpoint
    for split in run.splits:
        domain = SPLITS.get(split, "other split")
        pairs = [(f"{stage2_model(a)} − {a}", stage2_model(a), a) for a in rl_arms]
        t = diff_table(
            run,
            split,
            pairs,
            f"Stage-2 endpoint minus its Stage-1 init, {split} ({domain})",
            "a − b where a is the GRPO endpoint and b the Stage-1 model it started from.",
            src,
            B,
            seed,
        )
        diff.blocks.append(t or Paragraph(f"{split}: endpoint − init: no pair with both files."))
        if ref_arm is None:
            diff.blocks.append(Paragraph(f"{split}: arm − reference arm: no Stage-1 arm in this run."))
            continue
        pairs = [(f"{a} − {ref_arm}", a, ref_arm) for a in arms if a != ref_arm]
        if run.has_stage2(ref_arm):
            ref = stage2_model(ref_arm)
            pairs += [(f"{stage2_model(a)} − {ref}", stage2_model(a), ref) for a in rl_arms if a != ref_arm]
        t = diff_table(
            run,
            split,
            pairs,
            f"Each arm minus {ref_arm}, {split} ({domain})",
            f"a − b with b the {ref_arm} arm at the same stage (Stage-1 rows, then Stage-2 rows).",
            src,
            B,
            seed,
        )
        diff.blocks.append(t or Paragraph(f"{split}: arm − {ref_arm}: no pair with both files."))
    return diff


def build_report(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, B: int = M.DEFAULT_B, seed: int = 0
) -> dict:
    """Read ``run_dir`` and write ``report.md`` (+ ``report_plots/*.png``) and ``report.html`` to ``out_dir``.

    ``out_dir`` defaults to ``run_dir``. Never fails on missing or bad input files (they are
    listed in the report). Returns a JSON-able summary: the two paths, the number of
    plots, eval files and training logs read, and the number of expected files missing
    or unreadable.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    report = make_report(run, B=B, seed=seed, title=f"warmstart report: {Path(run_dir).resolve().name}")
    out.mkdir(parents=True, exist_ok=True)
    figures = [b for s in report.sections for b in s.blocks if isinstance(b, Figure)]
    (out / PLOT_DIR).mkdir(exist_ok=True)
    for name in PLOT_NAMES:  # a plot not made this time must not linger from an earlier report
        (out / PLOT_DIR / f"{name}.png").unlink(missing_ok=True)
    for fig in figures:
        atomic_write_bytes(out / PLOT_DIR / f"{fig.name}.png", fig.png)
    md, page = out / "report.md", out / "report.html"
    atomic_write_text(md, render_markdown(report))
    atomic_write_text(page, render_html(report))
    return {
        "report_md": str(md),
        "report_html": str(page),
        "plots": len(figures),
        "evals_read": len(run.evals),
        "logs_read": len(run.logs),
        "missing": len(run.missing),
        "unreadable": len(run.unreadable),
    }

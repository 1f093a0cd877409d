"""Study v2's stage-0 check and Stage-1 selection as report blocks.

* :func:`stage0_blocks`: ``stage0.json``: the teacher against the base student per
  question family (greedy, selection split), the check's verdict in words, the base
  student's stop rule and step, and the matched-outcome target with its rule;
* :func:`selection_blocks`: ``stage1/<run>/result.json``'s ``selection`` and ``compute``
  (and ``grid.json`` of a learning-rate grid): one row per Stage-1 run, or per learning
  rate of its grid with the chosen one marked.

A run from before Study v2 has neither; the blocks then say what is missing instead.
Every number is read from the files as written (fractions shown in percent).
"""

from __future__ import annotations

from warmstart.report.blocks import MISSING, Block, Cell, Paragraph, SourceIds, Table
from warmstart.report.data import GRID, STAGE0, RunData, Stage1Run

__all__ = ["stage0_blocks", "selection_blocks", "stage1_lr"]


def _num(d: object, key: str) -> float | None:
    v = d.get(key) if isinstance(d, dict) else None
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _int(d: object, key: str) -> int | None:
    v = d.get(key) if isinstance(d, dict) else None
    return v if type(v) is int else None


def _pct(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:.1f}"


def _pp(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:+.1f}".replace("-", "−")


def _yes_no(v: object) -> str:
    return "yes" if v is True else "no" if v is False else MISSING


# ------------------------------------------------------------------------------ stage 0


def _stage0_verdict(s0: dict, families: dict) -> str:
    gap = _num(s0.get("rule"), "min_teacher_gap")
    split = s0.get("split", "?")
    bar = f"{100 * gap:g} pp" if gap is not None else "the rule's gap"
    failing = [f for f, row in families.items() if isinstance(row, dict) and row.get("ok") is False]
    text = f"Stage-0 check: teacher >= {bar} above the student on every family (greedy, split {split}): "
    if s0.get("ok") is True:
        text += "yes."
    elif s0.get("ok") is False:
        each = ", ".join(f"{f} ({_pp(_num(families[f], 'gap'))} pp)" for f in failing)
        text += f"no, failing: {each or 'not listed'}."
    else:
        text += "not stated (stage0.json has no 'ok')."
    if isinstance(s0.get("ok"), bool) and families and s0["ok"] != (not failing):
        text += " (The file's 'ok' disagrees with its per-family 'ok' values.)"
    return text


def _student_stop(stop: object) -> str:
    if not isinstance(stop, dict):
        return (
            "Base student's stop rule: not in stage0.json (a given student, or a run from before Study v2)."
        )
    rule, step = stop.get("rule", "?"), _int(stop, "step")
    at = f"step {step}" if step is not None else "an unknown step"
    if stop.get("reached") is True:
        return f"Base student's stop rule: {rule}; met at {at}, where its training stopped."
    if stop.get("reached") is False:
        return f"Base student's stop rule: {rule}; not reached: stopped at max steps (last check at {at})."
    return f"Base student's stop rule: {rule}; whether it was met is not stated (last check at {at})."


def _matched_target(s0: dict) -> str:
    target = _num(s0, "matched_target")
    frac = _num(s0.get("rule"), "matched_fraction")
    base, teacher = _num(s0.get("student"), "greedy"), _num(s0.get("teacher"), "greedy")
    split = s0.get("split", "?")
    if target is None:
        return "Matched-outcome target: not in stage0.json."
    rule = (
        f"base + {frac:g} x (teacher - base), greedy on split {split}"
        if frac is not None
        else "rule not stated"
    )
    text = f"Matched-outcome target: {_pct(target)}% selection accuracy = {rule}"
    if None not in (frac, base, teacher):
        want = base + frac * (teacher - base)
        text += f" ({_pct(base)}% + {frac:g} x ({_pct(teacher)}% − {_pct(base)}%))"
        if abs(want - target) > 1e-6:
            text += f"; the rule gives {_pct(want)}%, not the file's target"
    return (
        text + ". Fixed from stage 0 alone, before any Stage-1 run; each matched arm is its method's first "
        "validation at or above it (checkpoint = 'matched')."
    )


def stage0_blocks(run: RunData, src: SourceIds) -> list[Block]:
    """The stage-0 check: per-family table, verdict, the student's stop rule, the matched-outcome target."""
    status = run.status.get(STAGE0)
    s0 = run.stage0
    if s0 is None:
        if status is None:
            return [Paragraph(f"No {STAGE0}: this run has no stage-0 check (a run from before Study v2).")]
        return [Paragraph(f"{STAGE0}: {status}; the stage-0 check cannot be shown.")]
    families = s0.get("families") if isinstance(s0.get("families"), dict) else {}
    stop = s0.get("student_stop") if isinstance(s0.get("student_stop"), dict) else None
    per_stop = (
        stop.get("per_family_pass_at_k")
        if stop and isinstance(stop.get("per_family_pass_at_k"), dict)
        else None
    )
    k = _int(stop, "k") if stop else None
    gap = _num(s0.get("rule"), "min_teacher_gap")
    ref = src.ref(STAGE0)
    header = ["family", "n", "student greedy (%)", "teacher greedy (%)", "teacher − student (pp)"]
    header.append(f"gap >= {100 * gap:g} pp" if gap is not None else "ok")
    if per_stop is not None:
        header.append(f"student pass@{k if k is not None else '?'} at its stop (%)")
    rows = []
    for fam, row in families.items():
        row = row if isinstance(row, dict) else {}
        n = _int(row, "n")
        cells = [
            fam,
            MISSING if n is None else str(n),
            _pct(_num(row, "student")),
            _pct(_num(row, "teacher")),
        ]
        cells += [_pp(_num(row, "gap")), _yes_no(row.get("ok"))]
        if per_stop is not None:
            cells.append(_pct(_num(per_stop, fam)))
        rows.append(
            [Cell(c, strong=i == 5 and row.get("ok") is False) for i, c in enumerate(cells)] + [Cell(ref)]
        )
    base, teacher = _num(s0.get("student"), "greedy"), _num(s0.get("teacher"), "greedy")
    overall = [
        "all families",
        str(_int(s0, "problems")) if _int(s0, "problems") is not None else MISSING,
        _pct(base),
        _pct(teacher),
        _pp(None if None in (base, teacher) else teacher - base),
        _yes_no(s0.get("ok")),
    ]
    if per_stop is not None:
        overall.append("")
    rows.append([Cell(c) for c in overall] + [Cell(ref)])
    split = s0.get("split", "?")
    table = Table(
        title=f"Stage 0: teacher vs base student per question family (greedy, split {split})",
        header=[*header, "sources"],
        rows=rows,
        note=f"Greedy accuracy of the base student and the teacher on the selection split '{split}' (never a "
        "reported split), per question family (meta.family), from stage0.json. The check passes when the "
        "teacher leads on every family by the gap; the last row is the whole split (its 'ok' is the check's)."
        + (
            " The last column: the student's per-family pass@k at the validation that ended its training."
            if per_stop
            else ""
        ),
        sources=[STAGE0],
    )
    return [
        table,
        Paragraph(_stage0_verdict(s0, families)),
        Paragraph(_student_stop(stop)),
        Paragraph(_matched_target(s0)),
    ]


# ---------------------------------------------------------------------------- Stage 1


def stage1_lr(run: RunData, stage1: Stage1Run) -> float | None:
    """The learning rate a run trained at: its result's ``chosen_lr`` (a grid), else its arms' ``optim.lr``."""
    lr = _num(stage1.result, "chosen_lr")
    if lr is not None:
        return lr
    for entry in run.config.get("arm", []) if isinstance(run.config.get("arm"), list) else []:
        if isinstance(entry, dict) and entry.get("name") in {a.name for a in stage1.arms}:
            stage = entry.get(entry.get("method", ""))
            lr = _num(stage.get("optim") if isinstance(stage, dict) else None, "lr")
            if lr is not None:
                return lr
    return None


def _best(step: int | None, acc: float | None) -> str:
    if step is None and acc is None:
        return MISSING
    return f"{MISSING if step is None else step} / {_pct(acc)}%"


def _matched(step: int | None, has_matched: bool, target: float | None) -> str:
    if step is not None:
        return str(step)
    if not has_matched and target is None:
        return "no matched arm"
    return "not reached" + (f" (target {_pct(target)}%)" if target is not None else "")


def _count(x: float | None, digits: int = 0) -> str:
    return MISSING if x is None else f"{x:,.{digits}f}"


def selection_blocks(run: RunData, src: SourceIds) -> list[Block]:
    """The Stage-1 selection and compute of every run (and every learning rate of a grid)."""
    rows, used, lacking, rules = [], [], [], {}
    for st in run.stage1_runs():
        res_rel, grid_rel = f"stage1/{st.name}/result.json", f"stage1/{st.name}/{GRID}"
        res = st.result or {}
        if st.result is None:
            lacking.append(f"{res_rel}: {run.status.get(res_rel, 'missing')}")
        sel = res.get("selection") if isinstance(res.get("selection"), dict) else None
        comp = res.get("compute") if isinstance(res.get("compute"), dict) else None
        if st.result is not None and sel is None:
            lacking.append(f"{res_rel} has no 'selection'")
        if st.result is not None and comp is None:
            lacking.append(f"{res_rel} has no 'compute'")
        if run.status.get(grid_rel, "read") != "read":
            lacking.append(f"{grid_rel}: {run.status[grid_rel]}")
        if sel is None and comp is None and st.grid is None:
            continue
        if sel is not None:
            key = f"split '{sel.get('split', '?')}', every {sel.get('every', '?')} steps"
            extra = [f"{k} {sel[k]}" for k in ("patience", "over_multiple") if k in sel]
            rules.setdefault(key + (", " + ", ".join(extra) if extra else ""), []).append(st.name)
        has_matched = any(a.checkpoint == "matched" for a in st.arms)
        target = _num(sel, "matched_target")
        arms = ", ".join(f"{a.name} ({a.checkpoint or '?'})" for a in st.arms)
        refs = [r for r in (res_rel, grid_rel) if run.status.get(r) == "read"]
        used += refs
        if st.grid is not None and isinstance(st.grid.get("runs"), list):
            chosen = _num(st.grid, "chosen_lr")
            for g in st.grid["runs"]:
                g = g if isinstance(g, dict) else {}
                lr = _num(g, "lr")
                is_chosen = lr is not None and lr == chosen
                lr_text = (f"{lr:g}" if lr is not None else MISSING) + (" (chosen)" if is_chosen else "")
                tokens = _num(g, "tokens")  # grids from before tokens were recorded: the chosen run's result
                tokens = _num(comp, "tokens") if tokens is None and is_chosen else tokens
                cells = [
                    f"{st.name} / {g.get('dir', '?')}",
                    arms,
                    st.method or MISSING,
                    lr_text,
                    _best(_int(g, "best_step"), _num(g, "best_accuracy")),
                    _count(_num(g, "over_step")),  # None: MISSING
                    _matched(_int(g, "matched_step"), has_matched, target),
                    _count(_num(g, "sequences")),
                    _count(tokens),
                    _count(_num(g, "seconds"), 1),
                ]
                rows.append(
                    [Cell(c, strong=is_chosen and i == 3) for i, c in enumerate(cells)]
                    + [Cell(src.refs(refs))]
                )
            continue
        lr = stage1_lr(run, st)
        over = _int(sel, "over_step")
        cells = [
            st.name,
            arms,
            st.method or MISSING,
            MISSING if lr is None else f"{lr:g}",
            _best(_int(sel, "best_step"), _num(sel, "best_accuracy")) if sel else MISSING,
            (str(over) if over is not None else "— (no over arm)") if sel else MISSING,
            _matched(_int(sel, "matched_step"), has_matched, target) if sel else MISSING,
            _count(_num(comp, "sequences")),
            _count(_num(comp, "tokens")),
            _count(_num(comp, "seconds"), 1),
        ]
        rows.append([Cell(c) for c in cells] + [Cell(src.refs(refs))])
    if not rows:
        what = "; ".join(lacking) if lacking else "no Stage-1 result.json"
        return [
            Paragraph(
                f"Stage-1 selection and compute: not recorded in this run (a run from before Study v2): {what}."
            )
        ]
    if len(rules) == 1:
        (rule,) = rules
        same = f"Every arm used the same selection rule ({rule})."
    elif rules:
        same = (
            "The runs' selection settings differ: "
            + "; ".join(f"{', '.join(v)}: {k}" for k, v in rules.items())
            + "."
        )
    else:
        same = "No run recorded its selection settings."
    grid_rules = {g.get("rule") for g in run.grids.values() if isinstance(g.get("rule"), str)}
    grid = (
        (" Learning-rate grid: one row per rate; chosen by: " + "; ".join(sorted(grid_rules)) + ".")
        if grid_rules
        else ""
    )
    missing = (" Not recorded: " + "; ".join(lacking) + ".") if lacking else ""
    table = Table(
        title="Stage-1 selection and compute",
        header=[
            "Stage-1 run",
            "arms (checkpoint)",
            "method",
            "lr",
            "best step / selection accuracy",
            "over step",
            "matched step",
            "sequences",
            "tokens",
            "seconds",
            "sources",
        ],
        rows=rows,
        note=f"{same} One rule for SFT and OPD alike: every few steps greedy accuracy on the selection split "
        "(never a reported split; ties: the reference rationales' NLL); best = the highest up to where the "
        "early arm stops (frozen after), over = the over-trained arm's last step (a fixed multiple of the best "
        "step), matched = the first validation at or above the stage-0 target. Compute: the training steps' "
        "sequences, tokens and wall seconds (validations excluded), from each run's result.json."
        + grid
        + missing,
        sources=used,
        wrap=True,
    )
    return [table]

"""The report's tables: accuracy, pass@k and diversity, entropy, training logs, paired differences.

Each function takes the :class:`~warmstart.report.data.RunData` and the source numbering
and returns a :class:`~warmstart.report.blocks.Table` (``None`` when it would have no
row). Rows follow the run's arms (``run.arms``): base, teacher, then each arm followed by
its Stage-2 endpoint (arms with ``grpo = false`` have none), then other models found. A
matched-outcome checkpoint never reached shows ``not reached`` in its cells (the reason
in the table's note) and is left out of paired differences.
"""

from __future__ import annotations

import numpy as np

from warmstart import metrics as M
from warmstart.evaluate_schema import (
    BASE_MODEL,
    BLANK_SPLIT,
    SPLITS,
    TEACHER_MODEL,
    EvalResult,
    eval_relpath,
    metrics_relpath,
    paired_compare,
    problem_values,
    stage2_model,
)
from warmstart.report.blocks import (
    MISSING,
    Cell,
    SourceIds,
    Table,
    format_interval,
    metric_header,
    sampling_note,
)
from warmstart.report.data import RunData

__all__ = [
    "DIFF_METRICS",
    "NOT_REACHED",
    "not_reached_note",
    "entropy_source",
    "family_table",
    "blank_table",
    "init_end_models",
    "pass_ks",
    "accuracy_table",
    "passk_table",
    "entropy_table",
    "training_table",
    "diff_table",
]

# Paired-difference columns (pass@K, the largest k every model of the split has, is added).
DIFF_METRICS = ("greedy_accuracy", "pass@1", "distinct_answers_mean", "entropy_token_mean")
NOT_REACHED = "not reached"
"""Cell text of a matched-outcome checkpoint that was never reached (not a missing file)."""
NO_STAGE2 = "no Stage 2 (grpo = false)"
"""Cell text of a Stage-2 number of an arm the study does not train further."""


def init_end_models(run: RunData) -> list[str]:
    """Rows of the init-vs-end tables: base, teacher, then each arm followed by its endpoint, then others."""
    order = [BASE_MODEL, TEACHER_MODEL]
    for arm in run.arm_names:
        order += [arm, stage2_model(arm)] if run.has_stage2(arm) else [arm]
    return order + [m for m in run.models if m not in order]


def _shown(run: RunData, model: str, split: str) -> bool:
    """A row for ``model`` on ``split``: it has an eval file, or a not-reached record."""
    return run.eval(model, split) is not None or run.unreached(model, split) is not None


def not_reached_note(run: RunData, models: list[str], splits: list[str]) -> str:
    """`` Not reached: opd_matched (validation, ood): <reason>.`` for the table's note ('' when none)."""
    by_model: dict[str, tuple[list[str], str]] = {}
    for m in models:
        for split in splits:
            nr = run.unreached(m, split)
            if nr is not None:
                by_model.setdefault(m, ([], nr.reason))[0].append(split)
    if not by_model:
        return ""
    items = [f"{m} ({', '.join(sp)}){': ' + why if why else ''}" for m, (sp, why) in by_model.items()]
    return (
        f" '{NOT_REACHED}': a matched-outcome checkpoint the run never reached (its eval file is a not-reached "
        "record, not a result): " + "; ".join(items) + "."
    )


def uniform_sampling(evs: list[EvalResult]) -> str | None:
    notes = {sampling_note(ev) for ev in evs if ev.settings.n > 0}
    return notes.pop() if len(notes) == 1 else None


def accuracy_table(run: RunData, src: SourceIds) -> Table:
    """Greedy accuracy and pass@1 per model and split, with intervals."""
    header, used = ["model", "role"], []
    uniform = {}
    for split in run.splits:
        evs = [ev for (m, s), ev in run.evals.items() if s == split]
        uniform[split] = uniform_sampling(evs)
        domain = SPLITS.get(split, "other split")
        header.append(f"{split} ({domain}) greedy, T=0 (%)")
        header.append(
            f"{split} ({domain}) pass@1, sampled" + (f" {uniform[split]}" if uniform[split] else "") + " (%)"
        )
    header.append("sources")
    rows = []
    for model in run.models:
        row, rels = [Cell(model), Cell(run.role(model))], []
        for split in run.splits:
            ev = run.eval(model, split)
            rel = eval_relpath(model, split)
            if ev is None:
                reached = run.unreached(model, split) is None
                row += [Cell(MISSING if reached else NOT_REACHED) for _ in range(2)]
                if not reached:
                    rels.append(rel)
                    used.append(rel)
                continue
            rels.append(rel)
            used.append(rel)
            row.append(Cell(format_interval("greedy_accuracy", ev.summary.get("greedy_accuracy"))))
            p1 = format_interval("pass@1", ev.summary.get("pass@1"))
            if p1 != MISSING and uniform[split] is None:
                p1 += f" ({sampling_note(ev)})"
            row.append(Cell(p1))
        if not rels:
            continue
        row.append(Cell(src.refs(rels)))
        rows.append(row)
    return Table(
        title="Accuracy per model (greedy and sampled)",
        header=header,
        rows=rows,
        note="Percent correct with 95% bootstrap intervals over problems (from each eval file). "
        "greedy: one temperature-0 response per problem. pass@1: mean accuracy of the n sampled "
        "responses per problem at temperature T (top_p)." + not_reached_note(run, run.models, run.splits),
        sources=used,
    )


def passk_table(run: RunData, split: str, src: SourceIds) -> Table | None:
    """pass@k and answer diversity for every model on ``split``, each init row followed by its endpoint."""
    models = [m for m in init_end_models(run) if _shown(run, m, split)]
    if not any(run.eval(m, split) is not None for m in models):
        return None
    ks = sorted({k for m in models for k in pass_ks(run.eval(m, split))})
    cols = [f"pass@{k}" for k in ks] + ["distinct_answers_mean", "answer_entropy_mean"]
    rows, used = [], []
    for m in models:
        ev = run.eval(m, split)
        rel = eval_relpath(m, split)
        used.append(rel)
        if ev is None:
            cells = [Cell(NOT_REACHED) for _ in range(len(cols) + 1)]
        else:
            cells = [Cell(sampling_note(ev)), *[Cell(format_interval(c, ev.summary.get(c))) for c in cols]]
        rows.append([Cell(m), Cell(run.role(m)), *cells, Cell(src.ref(rel))])
    return Table(
        title=f"pass@k and answer diversity, {split} ({SPLITS.get(split, 'other split')}): Stage-1 init vs Stage-2 endpoint",
        header=["model", "role", "sampling", *[metric_header(c) for c in cols], "sources"],
        rows=rows,
        note="Sampled responses (settings per row). pass@k: unbiased estimator averaged over problems, in %. "
        "Distinct answers: mean number of distinct normalised final answers among the n samples (unparseable "
        "= one answer 'none'); answer H: mean Shannon entropy of that distribution. 95% bootstrap intervals."
        + not_reached_note(run, models, [split]),
        sources=used,
    )


def pass_ks(ev: EvalResult | None) -> list[int]:
    if ev is None:
        return []
    return [int(k[5:]) for k in ev.summary if k.startswith("pass@")]


def entropy_table(run: RunData, split: str, src: SourceIds) -> Table | None:
    """Policy entropy of the evaluation samples (and teacher-forced entropy when present) per model."""
    models = [m for m in init_end_models(run) if _shown(run, m, split)]
    if not any(run.eval(m, split) is not None for m in models):
        return None
    has_tf = any(
        (ev := run.eval(m, split)) is not None and ev.teacher_forced_entropy is not None for m in models
    )
    header = [
        "model",
        "role",
        "sampling",
        metric_header("entropy_token_mean"),
        metric_header("entropy_seq_mean"),
    ]
    if has_tf:
        header += ["teacher-forced entropy/token (nats)", "probe"]
    rows, used = [], []
    for m in models:
        ev = run.eval(m, split)
        rel = eval_relpath(m, split)
        used.append(rel)
        if ev is None:
            rows.append(
                [Cell(m), Cell(run.role(m)), *[Cell(NOT_REACHED) for _ in header[2:]], Cell(src.ref(rel))]
            )
            continue
        row = [Cell(m), Cell(run.role(m)), Cell(sampling_note(ev))]
        row += [
            Cell(format_interval(k, ev.summary.get(k))) for k in ("entropy_token_mean", "entropy_seq_mean")
        ]
        if has_tf:
            tf = ev.teacher_forced_entropy
            row += [
                Cell(format_interval("entropy_token_mean", tf.token_mean if tf else None)),
                Cell(tf.probe if tf else MISSING),
            ]
        rows.append([*row, Cell(src.ref(rel))])
    return Table(
        title=f"Policy entropy, {split} ({SPLITS.get(split, 'other split')}): Stage-1 init vs Stage-2 endpoint",
        header=[*header, "sources"],
        rows=rows,
        note="Full-vocabulary Shannon entropy (nats) of the next-token distribution at every token of the "
        "sampled responses: token-weighted mean (entropy/token) and mean of per-sequence means (entropy/seq). "
        "95% bootstrap intervals over problems." + not_reached_note(run, models, [split]),
        sources=used,
    )


def _first_last(rows: list[dict], key: str) -> tuple[tuple[int, float], tuple[int, float]] | None:
    pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), int | float)]
    return (pts[0], pts[-1]) if pts else None


def training_table(run: RunData, src: SourceIds) -> Table:
    """Entropy (and Stage-2 reward) at the first and last logged step of every arm's training runs."""
    rows, used = [], []

    def span(stage: int, arm: str, key: str) -> str:
        fl = _first_last(run.logs.get((stage, arm), []), key)
        if fl is None:
            return MISSING
        (s0, v0), (s1, v1) = fl
        return f"{v0:.3f} (step {s0}) → {v1:.3f} (step {s1})"

    for arm in run.arm_names:
        rels = [metrics_relpath(st, arm) for st in (1, 2) if (st, arm) in run.logs]
        used += rels
        stage1 = span(1, arm, "entropy")
        if (1, arm) not in run.logs and run.stage1_results.get(arm, {}).get("reached") is False:
            stage1 = f"{NOT_REACHED} (no checkpoint, no log)"
        no_rl = (2, arm) not in run.logs and not run.has_stage2(arm)
        stage2 = [NO_STAGE2] * 2 if no_rl else [span(2, arm, "entropy"), span(2, arm, "reward_mean")]
        rows.append([Cell(arm), Cell(stage1), *map(Cell, stage2), Cell(src.refs(rels))])
    return Table(
        title="Training logs: entropy and reward at the first and last logged step",
        header=[
            "arm",
            "Stage-1 entropy (nats)",
            "Stage-2 (GRPO) entropy (nats)",
            "Stage-2 reward_mean",
            "sources",
        ],
        rows=rows,
        note="From metrics.jsonl: 'entropy' is the full-vocabulary entropy, token mean, of T=1 samples; what "
        "was sampled differs by stage: " + "; ".join(entropy_sources(run)) + ". 'reward_mean' is the mean "
        "reward of the GRPO step's samples.",
        sources=used,
    )


def _arm_stage_config(run: RunData, arm: str) -> dict:
    """The arm's stage table in study_config.json (``{}`` when unknown)."""
    for entry in run.config.get("arm", []) if isinstance(run.config.get("arm"), list) else []:
        if isinstance(entry, dict) and entry.get("name") == arm:
            stage = entry.get(entry.get("method", ""))
            return stage if isinstance(stage, dict) else {}
    return {}


def _log_kind(rows: list[dict]) -> str | None:
    """The ``stage`` field of a log's entropy rows (``sft``, ``opd``, ``grpo``)."""
    return next((r.get("stage") for r in rows if isinstance(r.get("entropy"), int | float)), None)


def entropy_source(run: RunData, stage: int, arm: str) -> str | None:
    """What the 'entropy' of ``stage<stage>/<arm>/metrics.jsonl`` was measured on, in words (None: no log)."""
    kind = _log_kind(run.logs.get((stage, arm), []))
    if kind is None:
        return None
    cfg = _arm_stage_config(run, arm) if stage == 1 else run.config.get("grpo", {})
    cfg = cfg if isinstance(cfg, dict) else {}

    def get(key: str, default: str = "?") -> str:
        return str(cfg.get(key, default))

    if kind == "sft":
        return (
            f"SFT: validation samples, not training batches: one T=1 sample per problem of its selection "
            f"split '{get('val_split')}' ({get('val_problems')} problems), at step 0 and every "
            f"{get('eval_every')} steps"
        )
    if kind in ("opd", "grpo"):
        what = "OPD" if kind == "opd" else "GRPO"
        return (
            f"{what}: the step's own training rollouts ({get('prompts_per_step')} prompts x {get('n')} samples "
            f"of split '{get('train_split', 'train')}', T={get('temperature', '1.0')}), every step"
        )
    return f"{kind}: the step's own samples"


def entropy_sources(run: RunData) -> list[str]:
    """One description per kind of training log in the run (SFT, OPD, GRPO), in arm order."""
    out: dict[str, str] = {}
    for stage in (1, 2):
        for arm in run.arm_names:
            kind = _log_kind(run.logs.get((stage, arm), []))
            if kind is not None and kind not in out:
                out[kind] = entropy_source(run, stage, arm) or ""
    return list(out.values())


def family_table(run: RunData, split: str, src: SourceIds, B: int, seed: int) -> Table | None:
    """Greedy accuracy per question family (``meta.family`` of the split's problem file) for every model."""
    fam = run.families.get(split)
    models = [m for m in init_end_models(run) if _shown(run, m, split)]
    evaluated = [m for m in models if run.eval(m, split) is not None]
    if not fam or not evaluated:
        return None
    ids0 = run.eval(evaluated[0], split).data.problem_ids
    families = list(dict.fromkeys(fam[i] for i in ids0 if i in fam))
    counts = {f: sum(fam.get(i) == f for i in ids0) for f in families}
    rows, used = [], []
    for m in models:
        ev = run.eval(m, split)
        if ev is None:
            rel = eval_relpath(m, split)
            used.append(rel)
            rows.append([Cell(m), *[Cell(NOT_REACHED) for _ in families], Cell(src.ref(rel))])
            continue
        if "greedy_accuracy" not in ev.summary:
            continue
        rel = eval_relpath(m, split)
        used.append(rel)
        values = problem_values(ev.per_problem, "greedy_accuracy")
        ids = [p.id for p in ev.per_problem]
        cells = []
        for f in families:
            sel = np.array([fam.get(i) == f for i in ids])
            if not sel.any():
                cells.append(Cell(MISSING))
                continue
            ci = M.bootstrap_ci(values[sel], B=B, seed=seed)
            cells.append(Cell(f"{100 * ci.point:.0f} [{100 * ci.lo:.0f}, {100 * ci.hi:.0f}]"))
        rows.append([Cell(m), *cells, Cell(src.ref(rel))])
    if not rows:
        return None
    in_domain = set(run.families.get("validation", {}).values())
    header = ["model"]
    for f in families:
        tag = " (OOD only)" if split != "validation" and in_domain and f not in in_domain else ""
        header.append(f"{f}{tag}, n={counts[f]} (%)")
    return Table(
        title=f"Greedy accuracy per question family, {split} ({SPLITS.get(split, 'other split')})",
        header=[*header, "sources"],
        rows=rows,
        note=f"Percent of each family's problems answered correctly by the greedy response, 95% bootstrap "
        f"interval over that family's problems (B={B}, seed={seed}). Families from meta.family of the split's "
        "problem file (data/<split>.jsonl)." + not_reached_note(run, models, [split]),
        sources=used,
    )


def blank_table(run: RunData, src: SourceIds, B: int, seed: int) -> Table | None:
    """The blank-image ablation: accuracy with and without the diagrams, and the paired drop."""
    if BLANK_SPLIT not in run.ablation_splits:
        return None
    rows, used = [], []
    for m in run.models:
        blank, full = run.eval(m, BLANK_SPLIT), run.eval(m, "validation")
        if blank is None:
            continue
        rels = [eval_relpath(m, "validation"), eval_relpath(m, BLANK_SPLIT)]
        row = [Cell(m), Cell(run.role(m))]
        for ev in (full, blank):
            for k in ("greedy_accuracy", "pass@1"):
                row.append(Cell(format_interval(k, ev.summary.get(k)) if ev is not None else MISSING))
        diff: dict = {}
        if full is not None:
            used += rels
            try:
                diff = paired_compare(blank, full, ["greedy_accuracy", "pass@1"], B=B, seed=seed)
            except (ValueError, M.ProblemMismatchError):
                diff = {}
        else:
            used.append(rels[1])
        for k in ("greedy_accuracy", "pass@1"):
            iv = diff.get(k)
            row.append(Cell(format_interval(k, iv, diff=True), strong=iv is not None and iv.excludes_zero()))
        rows.append([*row, Cell(src.refs([r for r in rels if r in used]))])
    if not rows:
        return None
    return Table(
        title="Blank-image ablation: in-domain accuracy with and without the diagrams",
        header=[
            "model",
            "role",
            "with images greedy (%)",
            "with images pass@1 (%)",
            "blank images greedy (%)",
            "blank images pass@1 (%)",
            "blank − images greedy (pp)",
            "blank − images pass@1 (pp)",
            "sources",
        ],
        rows=rows,
        note="The in-domain validation problems with every image blanked: how much of the accuracy comes from "
        f"reading the diagram. Differences paired on problems (B={B}, seed={seed}); **bold**: interval excludes 0.",
        sources=used,
    )


def diff_metrics(run: RunData, split: str) -> list[str]:
    evs = [ev for (m, s), ev in run.evals.items() if s == split]
    common = [set(pass_ks(ev)) for ev in evs if pass_ks(ev)]
    kmax = max(set.intersection(*common)) if common else 1
    cols = list(DIFF_METRICS)
    if kmax > 1:
        cols.insert(2, f"pass@{kmax}")
    return cols


def diff_table(
    run: RunData,
    split: str,
    pairs: list[tuple[str, str, str]],
    title: str,
    note: str,
    src: SourceIds,
    B: int,
    seed: int,
) -> Table | None:
    """Paired differences ``a - b`` for the (label, a, b) pairs on ``split``; bold where the interval excludes 0."""
    cols = diff_metrics(run, split)
    rows, used, problems, unreached = [], [], [], []
    for label, a, b in pairs:
        ea, eb = run.eval(a, split), run.eval(b, split)
        if ea is None and run.unreached(a, split) or eb is None and run.unreached(b, split):
            unreached.append(label)  # no checkpoint at the matched outcome: nothing to pair, not missing
            continue
        rels = [eval_relpath(a, split), eval_relpath(b, split)]
        if ea is None or eb is None:
            missing = [r for r, e in zip(rels, (ea, eb)) if e is None]
            rows.append([Cell(label), *[Cell(MISSING) for _ in cols], Cell("missing: " + ", ".join(missing))])
            continue
        try:
            avail = [c for c in cols if c in ea.summary and c in eb.summary]
            diffs = paired_compare(ea, eb, avail, B=B, seed=seed)
        except (ValueError, M.ProblemMismatchError) as e:
            problems.append(f"{label}: {e}")
            rows.append([Cell(label), *[Cell(MISSING) for _ in cols], Cell(src.refs(rels))])
            continue
        used += rels
        cells = [
            Cell(format_interval(c, diffs.get(c), diff=True), strong=c in diffs and diffs[c].excludes_zero())
            for c in cols
        ]
        rows.append([Cell(label), *cells, Cell(src.refs(rels))])
    if all(all(c.text == MISSING for c in r[1:-1]) for r in rows):
        return None
    extra = (" Not computed: " + "; ".join(problems)) if problems else ""
    if unreached:
        extra += (
            f" Left out ({NOT_REACHED}: a matched-outcome checkpoint the run never reached): "
            + "; ".join(unreached)
            + "."
        )
    sampling = uniform_sampling([ev for (m, s), ev in run.evals.items() if s == split])
    return Table(
        title=title,
        header=["difference", *[metric_header(c, diff=True) for c in cols], "sources (a, b)"],
        rows=rows,
        note=note
        + f" Paired bootstrap over problems (B={B}, seed={seed}), 95% intervals; **bold**: the interval "
        "excludes 0. Accuracy differences in percentage points; greedy = temperature 0; sampled metrics at "
        + (sampling or "the settings of each file (see Sources)")
        + "."
        + extra,
        sources=used,
    )

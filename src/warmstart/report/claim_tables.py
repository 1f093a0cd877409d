"""The claims of :mod:`warmstart.report.claims` measured on a run: roles resolved, seeds pooled, tables.

A role (``sft_early``, ``opd+grpo``, ``base``) names an arm of the run: the arm of that
name, else the first arm whose method and checkpoint fit it (:data:`ROLE_RULES`, from
``study_config.json``), so a v2 study with other arm names still gets its claims. A
matched-outcome arm (checkpoint ``matched``) only ever plays a matched role, and an
early/over/OPD role never goes to one, whatever its name. A role ending in ``+grpo`` is
that arm's Stage-2 endpoint; an arm with ``grpo = false`` has none (the test is not
testable and says so). A model whose matched checkpoint was never reached (a
``not_reached`` eval record) makes its test inconclusive, never "missing". An arm with several seeds
(``<arm>@s<k>``, :mod:`warmstart.report.data`) is pooled per problem (the rule is
:data:`warmstart.report.claims.POOLING_RULE`); every seed's own estimate is kept for the
seed column and the seed check of the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from warmstart import metrics as M
from warmstart.evaluate_schema import (
    BASE_MODEL,
    SPLITS,
    TEACHER_MODEL,
    EvalResult,
    Interval,
    ProblemResult,
    eval_relpath,
    metric_info,
    problem_values,
    stage1_arm,
    stage2_model,
)
from warmstart.report.blocks import MISSING, Cell, SourceIds, Table
from warmstart.report.claims import (
    CLAIMS,
    INCONCLUSIVE,
    NOT_TESTABLE,
    ClaimSpec,
    TestSpec,
    combine_verdicts,
    decisive_test,
    interval_verdict,
    pool_mean,
    pool_ratio,
    presupposed_verdict,
    seed_verdict,
    spread_ci,
)
from warmstart.report.data import RunData
from warmstart.report.tables import pass_ks

__all__ = [
    "ROLE_RULES",
    "TestResult",
    "ClaimResult",
    "resolve_role",
    "evaluate_test",
    "evaluate_claims",
    "claims_table",
    "claim_tests_table",
    "format_stat",
]

ROLE_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "sft_early": (("sft", "best"),),
    "sft_over": (("sft", "final"),),
    # v2: OPD early-stopped by the same selection rule as SFT; older runs had only OPD's final weights
    "opd": (("opd", "best"), ("opd", "final")),
    "opd_over": (("opd", "final"),),
    "sft_matched": (("sft", "matched"),),
    "opd_matched": (("opd", "matched"),),
}
"""Role -> the (method, checkpoint) of the arm that plays it when no arm has the role's name, in order of
preference (the first kind any arm has wins)."""
MATCHED = "matched"

_RATIO = {"entropy_token_mean"}  # ratio-of-sums metrics (pooled by summing numerators and denominators)


@dataclass
class TestResult:
    """One test measured on a run."""

    spec: TestSpec
    verdict: str
    metric: str = ""  # the metric used (pass@k may fall back to a smaller k)
    interval: Interval | None = None
    seed_points: list[tuple[str, float]] = field(default_factory=list)
    note: str = ""
    sources: list[str] = field(default_factory=list)
    label: str = ""  # the test with the run's arm names


@dataclass
class ClaimResult:
    """A claim measured on a run; ``presupposed`` is the verdict of the claim it presupposes."""

    spec: ClaimSpec
    tests: list[TestResult]
    presupposed: str | None = None

    @property
    def verdict(self) -> str:
        return self.verdict_and_reason[0]

    @property
    def verdict_and_reason(self) -> tuple[str, str]:
        own = combine_verdicts([t.verdict for t in self.tests])
        return presupposed_verdict(own, self.presupposed, self.spec.presupposes)

    @property
    def shown(self) -> TestResult:
        """The test the claims table shows (:func:`warmstart.report.claims.decisive_test`)."""
        ivs = [(t.interval.lo, t.interval.hi) if t.interval else None for t in self.tests]
        i = decisive_test([t.verdict for t in self.tests], ivs, [t.spec for t in self.tests])
        return self.tests[i]


def _may_play(role: str, checkpoint: str) -> bool:
    """An arm of ``checkpoint`` may play ``role`` by name: matched arms only matched roles, and vice versa."""
    if role not in ROLE_RULES or not checkpoint:
        return True
    return (checkpoint == MATCHED) == all(ck == MATCHED for _, ck in ROLE_RULES[role])


def resolve_role(run: RunData, role: str) -> tuple[str, list[tuple[str, str]]] | None:
    """``(display name, [(seed label, model), ...])`` of a role in this run; ``None`` when no arm plays it."""
    if role in (BASE_MODEL, TEACHER_MODEL):
        return role, [("", role)]
    arm = stage1_arm(role)
    stage2 = arm != role
    groups = run.groups
    group = arm if arm in groups and _may_play(arm, groups[arm][0].checkpoint) else None
    for method, checkpoint in ROLE_RULES.get(arm, ()) if group is None else ():
        group = next(
            (g for g, reps in groups.items() if (reps[0].method, reps[0].checkpoint) == (method, checkpoint)),
            None,
        )
        if group is not None:
            break
    if group is None:
        return None
    models = [(a.seed_label, stage2_model(a.name) if stage2 else a.name) for a in groups[group]]
    return (stage2_model(group) if stage2 else group), models


def _aligned(ev: EvalResult, ref: EvalResult) -> list[ProblemResult]:
    """``ev``'s rows in ``ref``'s problem order; raises unless both have the same problems and answers."""
    ids = [p.id for p in ref.per_problem]
    by_id = {p.id: p for p in ev.per_problem}
    if len(by_id) != len(ids) or set(by_id) != set(ids):
        M.check_same_problems(ids, [p.id for p in ev.per_problem], ref.label, ev.label)
    rows = [by_id[i] for i in ids]
    for pr, pe in zip(ref.per_problem, rows):
        if pr.answer != pe.answer:
            raise M.ProblemMismatchError(
                f"problem {pr.id!r} has answer {pr.answer!r} in {ref.label} but {pe.answer!r} in {ev.label}"
            )
    return rows


def _metric_for(spec_metric: str, evs: list[EvalResult]) -> tuple[str | None, str]:
    """The metric to use on these files: pass@k falls back to the largest k they all have."""
    if not spec_metric.startswith("pass@"):
        ok = all(spec_metric in ev.summary for ev in evs)
        return (spec_metric, "") if ok else (None, f"{spec_metric} not in every eval file")
    k = int(spec_metric[5:])
    common = set.intersection(*(set(pass_ks(ev)) for ev in evs))
    ks = [j for j in common if j <= k]
    if not ks:
        return None, f"no eval file has {spec_metric}"
    kk = max(ks)
    return f"pass@{kk}", "" if kk == k else f"pass@{kk}: not every model has n >= {k} samples"


def _stat(values: np.ndarray, metric: str) -> float:
    """The metric of per-problem values (a ratio of sums for the token-weighted entropy)."""
    if metric in _RATIO:
        return float(values[0].sum() / values[1].sum())
    return float(values.mean())


def _pool(values_K: list[np.ndarray], metric: str) -> np.ndarray:
    if metric in _RATIO:
        num, den = pool_ratio(np.stack([v[0] for v in values_K]), np.stack([v[1] for v in values_K]))
        return np.stack([num, den])
    return pool_mean(np.stack(values_K))


def _seed_pairs(sides: list[list[tuple[str, np.ndarray]]]) -> list[tuple[str, list[np.ndarray]]]:
    """Seeds matched across the models of a test: by label; a model with one replica joins every seed."""
    multi = [s for s in sides if len(s) > 1]
    labels = [lab for lab, _ in multi[0]] if multi else [sides[0][0][0] or sides[-1][0][0]]
    out = []
    for lab in labels:
        row = []
        for side in sides:
            hit = side[0][1] if len(side) == 1 else dict(side).get(lab)
            if hit is None:
                break
            row.append(hit)
        else:
            out.append((lab, row))
    return out


def evaluate_test(run: RunData, spec: TestSpec, B: int, seed: int) -> TestResult:
    """Measure one test on ``run`` (never raises for missing or mismatched inputs: the result says why)."""
    resolved = [resolve_role(run, r) for r in spec.roles]
    if any(r is None for r in resolved):
        absent = [role for role, r in zip(spec.roles, resolved) if r is None]
        return TestResult(spec, NOT_TESTABLE, note=f"no arm plays {', '.join(absent)}", label=spec.what)
    names = [r[0] for r in resolved]
    label = f"{names[0]} − {names[1]}" if spec.kind == "diff" else "max − min of " + ", ".join(names)
    no_rl = [stage1_arm(n) for n in names if n != stage1_arm(n) and not run.has_stage2(stage1_arm(n))]
    if no_rl:
        note = f"{', '.join(no_rl)} has no Stage-2 run (grpo = false)"
        return TestResult(spec, NOT_TESTABLE, note=note, label=label)
    sides: list[list[tuple[str, EvalResult]]] = []
    missing, unreached, sources = [], [], []
    for _, models in resolved:
        side = []
        for lab, model in models:
            ev = run.eval(model, spec.split)
            rel = eval_relpath(model, spec.split)
            if ev is not None:
                side.append((lab, ev))
                sources.append(rel)
            elif (nr := run.unreached(model, spec.split)) is not None:
                unreached.append((model, nr, rel))
            else:
                missing.append(rel)
        sides.append(side)
    if any(not s for s in sides):
        if unreached:  # a matched checkpoint that never was: no outcome to compare, not a missing file
            why = "; ".join(f"{m} {nr.text}" for m, nr, _ in unreached)
            rels = [rel for _, _, rel in unreached]
            return TestResult(spec, INCONCLUSIVE, note=why, label=label, sources=sources + rels)
        return TestResult(spec, NOT_TESTABLE, note="missing: " + ", ".join(missing), label=label)
    evs = [ev for s in sides for _, ev in s]
    metric, note = _metric_for(spec.metric, evs)
    if metric is None:
        return TestResult(spec, NOT_TESTABLE, note=note, label=label, sources=sources)
    notes = [note] if note else []
    if missing:
        notes.append("seeds left out (missing): " + ", ".join(missing))
    if unreached:
        notes.append("seeds left out (not reached): " + ", ".join(rel for _, _, rel in unreached))
    ref = evs[0]
    try:
        values = [[(lab, problem_values(_aligned(ev, ref), metric)) for lab, ev in s] for s in sides]
    except ValueError as e:  # ProblemMismatchError included: pooling and pairing need the same problems
        return TestResult(spec, NOT_TESTABLE, metric, note=str(e), label=label, sources=sources)
    pooled = [_pool([v for _, v in s], metric) for s in values]
    per_seed = _seed_pairs(values)
    if spec.kind == "diff":
        (a, b) = pooled
        if metric in _RATIO:
            ci = M.paired_ratio_diff_ci(a[0], a[1], b[0], b[1], B, seed)
        else:
            ci = M.paired_diff_ci(a, b, B, seed)
        points = [(lab, _stat(va, metric) - _stat(vb, metric)) for lab, (va, vb) in per_seed]
        if np.array_equal(a, b):
            notes.append(f"{names[0]} and {names[1]} have identical per-problem results: one model twice?")
    else:
        if metric in _RATIO:
            return TestResult(spec, NOT_TESTABLE, metric, note="spread of a ratio metric", label=label)
        ci = spread_ci(np.stack(pooled), B, seed)
        points = []
        for lab, vs in per_seed:
            means = [float(v.mean()) for v in vs]
            points.append((lab, max(means) - min(means)))
    iv = Interval.from_ci(ci)
    verdict = interval_verdict(iv.lo, iv.hi, spec.direction, spec.margin)
    verdict, seed_note = seed_verdict(verdict, [p for _, p in points], spec.direction, spec.margin)
    if seed_note:
        notes.append(seed_note)
    return TestResult(spec, verdict, metric, iv, points, "; ".join(notes), sources, label)


def evaluate_claims(run: RunData, B: int = M.DEFAULT_B, seed: int = 0) -> tuple[list[ClaimResult], list[str]]:
    """Every claim of :data:`CLAIMS` measured on ``run``, and the keys of optional claims left out."""
    out: list[ClaimResult] = []
    left_out = []
    for claim in CLAIMS:
        if claim.optional and any(resolve_role(run, r) is None for t in claim.tests for r in t.roles):
            left_out.append(claim.key)
            continue
        before = {c.spec.key: c.verdict for c in out}
        presupposed = before.get(claim.presupposes) if claim.presupposes else None
        if claim.presupposes and presupposed is None:
            presupposed = NOT_TESTABLE
        out.append(ClaimResult(claim, [evaluate_test(run, t, B, seed) for t in claim.tests], presupposed))
    return out, left_out


# ------------------------------------------------------------------------------ tables


def _unit(metric: str) -> tuple[float, int, str]:
    kind = metric_info(metric).kind
    return {"fraction": (100.0, 1, "pp"), "nats": (1.0, 3, "nats"), "count": (1.0, 2, "answers")}.get(
        kind, (1.0, 2, "")
    )


def format_stat(metric: str, x: float, signed: bool = True, unit: bool = False) -> str:
    """A difference or spread in the metric's unit: ``+7.5`` (pp), ``-0.012`` (nats)."""
    scale, digits, u = _unit(metric)
    text = f"{x * scale:{'+' if signed else ''}.{digits}f}".replace("-", "−")
    return f"{text} {u}" if unit and u else text


def _claimed(spec: TestSpec, metric: str) -> str:
    if spec.direction == "greater":
        return "> 0"
    if spec.direction == "less":
        return "< 0"
    return "≤ " + format_stat(metric, spec.margin, signed=False, unit=True)


def _seeds_cell(t: TestResult) -> str:
    if not t.seed_points:
        return MISSING
    signed = t.spec.kind == "diff"
    if len(t.seed_points) == 1:
        lab = t.seed_points[0][0]
        return f"1 seed{f' ({lab})' if lab else ''}: no spread"
    vals = [x for _, x in t.seed_points]
    each = ", ".join(f"{lab} {format_stat(t.metric, x, signed)}" for lab, x in t.seed_points)
    rng = f"{format_stat(t.metric, min(vals), signed)} … {format_stat(t.metric, max(vals), signed)}"
    return f"{len(vals)} seeds: {each} (range {rng})"


def _measured(t: TestResult) -> tuple[str, str]:
    if t.interval is None:
        return MISSING, MISSING
    signed = t.spec.kind == "diff"
    iv = t.interval
    lo, hi = (format_stat(t.metric, x, signed) for x in (iv.lo, iv.hi))
    return format_stat(t.metric, iv.value, signed, unit=True), f"[{lo}, {hi}]"


def _tone(verdict: str) -> str:
    return verdict.split()[0].replace(" ", "-")


def _tally(c: ClaimResult) -> str:
    counts: dict[str, int] = {}
    for t in c.tests:
        short = t.verdict.removesuffix(" at this power")
        counts[short] = counts.get(short, 0) + 1
    text = ", ".join(f"{n} {v}" for v, n in counts.items()) + f" (of {len(c.tests)} tests)"
    reason = c.verdict_and_reason[1]
    return f"{text}; {reason}" if reason else text


def claims_table(results: list[ClaimResult], src: SourceIds, B: int, seed: int) -> Table:
    """One row per claim: its verdict and the test behind it (measured value, interval, seeds)."""
    rows, used = [], []
    for c in results:
        t = c.shown
        value, interval = _measured(t)
        metric = t.metric or t.spec.metric
        used += t.sources
        rows.append(
            [
                Cell(c.spec.key),
                Cell(c.spec.claim),
                Cell(c.verdict, tone=_tone(c.verdict)),
                Cell(
                    f"{t.label} ({SPLITS.get(t.spec.split, t.spec.split)}, {metric}; claimed "
                    f"{_claimed(t.spec, metric)})" + (f" — {t.note}" if t.note else "")
                ),
                Cell(value),
                Cell(interval),
                Cell(_seeds_cell(t)),
                Cell(_tally(c)),
                Cell(src.refs(list(dict.fromkeys(t.sources)))),
            ]
        )
    return Table(
        title="Claims of the paper, measured on this run",
        header=[
            "#",
            "claim (the paper)",
            "verdict",
            "test shown",
            "measured",
            "95% interval",
            "seeds",
            "all tests",
            "sources",
        ],
        rows=rows,
        note=f"The test shown is the one behind the verdict: the contradicting test, the weakest support, or "
        f"the first undecided test (the claim's primary comparison comes first); every test is in 'Claim tests "
        f"in detail'. Paired problem bootstrap, B={B}, seed={seed}.",
        sources=used,
        wrap=True,
    )


def claim_tests_table(results: list[ClaimResult], src: SourceIds) -> Table:
    """Every test of every claim: what it compares, the claimed direction, the interval, seeds, verdict."""
    rows, used = [], []
    for c in results:
        for t in c.tests:
            value, interval = _measured(t)
            metric = t.metric or t.spec.metric
            used += t.sources
            rows.append(
                [
                    Cell(c.spec.key),
                    Cell(t.label + (f" — {t.note}" if t.note else "")),
                    Cell(f"{t.spec.split} ({SPLITS.get(t.spec.split, 'other split')})"),
                    Cell(metric),
                    Cell(_claimed(t.spec, metric)),
                    Cell(value),
                    Cell(interval),
                    Cell(_seeds_cell(t)),
                    Cell(t.verdict, tone=_tone(t.verdict)),
                    Cell(src.refs(list(dict.fromkeys(t.sources)))),
                ]
            )
    return Table(
        title="Claim tests in detail",
        header=[
            "#",
            "test",
            "split",
            "metric",
            "claimed",
            "measured",
            "95% interval",
            "seeds",
            "verdict",
            "sources",
        ],
        rows=rows,
        note="Differences a − b of one metric on one split, paired on problems; spreads are max − min over "
        "the models, all on the same resampled problems (the spread is >= 0 and biased upwards, so only an "
        "interval below the margin supports a band). Accuracy differences in percentage points.",
        sources=used,
        wrap=True,
    )

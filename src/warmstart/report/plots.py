"""The report's plots (matplotlib's object API, Agg, no global figure state), as PNG bytes.

Every arm has one colour (:func:`model_colors`, assigned in the run's arm order, so
the same arm list always gives the same colours); its seed replicas and its Stage-2
endpoint share it (init dashed, endpoint solid).
"""

from __future__ import annotations

import io

import numpy as np

from warmstart.evaluate_schema import (
    BASE_MODEL,
    SPLITS,
    STAGE2_SUFFIX,
    TEACHER_MODEL,
    eval_relpath,
    metrics_relpath,
    stage1_arm,
    stage2_model,
)
from warmstart.report.blocks import Figure
from warmstart.report.data import RunData, seed_group
from warmstart.report.tables import entropy_sources, init_end_models, pass_ks

__all__ = [
    "PLOT_NAMES",
    "PALETTE",
    "model_colors",
    "accuracy_plot",
    "passk_plot",
    "trajectory_plot",
    "entropy_page_plot",
    "stage2_dynamics_plot",
    "shared_stage1_run",
]

PLOT_NAMES = ("accuracy", "pass_at_k", "entropy_trajectories", "stage2_dynamics", "reward_curves")
"""File stems of every plot the report can make (in ``report_plots/``)."""
FIXED_COLORS = {BASE_MODEL: "#7f7f7f", TEACHER_MODEL: "#222222"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728")
"""Arm colours in arm order (matplotlib's first colours), then other models'; cycled past the end."""


def model_colors(run: RunData) -> dict[str, str]:
    """Colour of every model of ``run``: base and teacher fixed, arm ``i`` ``PALETTE[i]``, endpoints as their arm."""

    def group(m: str) -> str:
        return seed_group(stage1_arm(m))

    groups = list(dict.fromkeys([*map(group, run.arm_names), *map(group, run.models)]))
    groups = [g for g in groups if g not in FIXED_COLORS]
    by_group = {**FIXED_COLORS, **{g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}}
    return {m: by_group[group(m)] for m in [*run.models, *run.arm_names, *run.groups]}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _new_figure(ncols: int, width: float = 5.2, height: float = 3.6, nrows: int = 1):
    # matplotlib's object API (no pyplot): no global figure state, renders with Agg.
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    return fig, axes


def accuracy_plot(run: RunData) -> Figure | None:
    """Grouped bars: greedy and pass@1 per model with interval bars, one panel per split."""
    splits = [s for s in run.splits if any(k[1] == s for k in run.evals)]
    if not splits:
        return None
    fig, axes = _new_figure(len(splits), width=6.0)
    colors = model_colors(run)
    used = []
    for ax, split in zip(axes, splits):
        models = [m for m in run.models if run.eval(m, split) is not None]
        for i, m in enumerate(models):
            ev = run.eval(m, split)
            used.append(eval_relpath(m, split))
            for j, (metric, hatch) in enumerate((("greedy_accuracy", ""), ("pass@1", "//"))):
                iv = ev.summary.get(metric)
                if iv is None:
                    continue
                x = i + (j - 0.5) * 0.38
                err = [[100 * (iv.value - iv.lo)], [100 * (iv.hi - iv.value)]]
                ax.bar(
                    x,
                    100 * iv.value,
                    width=0.36,
                    color=colors[m],
                    hatch=hatch,
                    alpha=0.9 if j == 0 else 0.55,
                    yerr=err,
                    capsize=2,
                    edgecolor="white",
                )
        ax.set_xticks(range(len(models)), models, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{split} ({SPLITS.get(split, 'other')}): greedy (solid) / pass@1 (hatched)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return Figure(
        title="Accuracy with 95% intervals",
        name="accuracy",
        png=_png(fig),
        caption="Solid bars: greedy (T=0) accuracy; hatched: pass@1 (mean sampled accuracy at the settings of the "
        "accuracy table). Error bars: 95% bootstrap intervals stored in each eval file.",
        sources=used,
    )


def passk_plot(run: RunData) -> Figure | None:
    """pass@k vs k per model, init dashed and endpoint solid, one panel per split."""
    splits = [s for s in run.splits if any(len(pass_ks(run.eval(m, s))) > 1 for m in run.models)]
    if not splits:
        return None
    fig, axes = _new_figure(len(splits))
    colors = model_colors(run)
    used = []
    for ax, split in zip(axes, splits):
        for m in init_end_models(run):
            ev = run.eval(m, split)
            ks = pass_ks(ev)
            if len(ks) < 2:
                continue
            used.append(eval_relpath(m, split))
            ivs = [ev.summary[f"pass@{k}"] for k in ks]
            style = "-" if m.endswith(STAGE2_SUFFIX) else (":" if m in (BASE_MODEL, TEACHER_MODEL) else "--")
            c = colors[m]
            ax.plot(ks, [100 * iv.value for iv in ivs], style, color=c, marker="o", ms=3, label=m)
            ax.fill_between(ks, [100 * iv.lo for iv in ivs], [100 * iv.hi for iv in ivs], color=c, alpha=0.12)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.set_title(f"{split} ({SPLITS.get(split, 'other')})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return Figure(
        title="pass@k curves",
        name="pass_at_k",
        png=_png(fig),
        caption="Unbiased pass@k (sampled responses) with 95% bands. Dashed: Stage-1 init; solid: its Stage-2 "
        "endpoint (same colour); dotted: base and teacher.",
        sources=used,
    )


def _moving_average(v: np.ndarray, window: int) -> np.ndarray:
    if len(v) < window or window < 2:
        return v
    kernel = np.ones(window) / window
    return np.convolve(v, kernel, mode="valid")


def trajectory_plot(
    run: RunData, key: str, stages: tuple[int, ...], name: str, title: str, ylabel: str, caption: str
) -> Figure | None:
    """``key`` from metrics.jsonl vs step for every arm, one panel per stage (raw thin + moving average)."""
    stages = tuple(
        st for st in stages if any(any(key in r for r in run.logs.get((st, a), [])) for a in run.arm_names)
    )
    if not stages:
        return None
    fig, axes = _new_figure(len(stages))
    colors = model_colors(run)
    used = []
    for ax, st in zip(axes, stages):
        for arm in run.arm_names:
            pts = [
                (r["step"], float(r[key]))
                for r in run.logs.get((st, arm), [])
                if isinstance(r.get(key), int | float)
            ]
            if not pts:
                continue
            used.append(metrics_relpath(st, arm))
            steps, vals = np.array(pts).T
            c = colors[arm]
            ax.plot(steps, vals, color=c, alpha=0.3, lw=0.8)
            w = max(1, len(vals) // 10)
            ax.plot(steps[w - 1 :], _moving_average(vals, w), color=c, lw=1.8, label=arm)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Stage-{st} ({'warm-start' if st == 1 else 'GRPO'})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return Figure(title=title, name=name, png=_png(fig), caption=caption, sources=used)


# ------------------------------------------------------------------ the entropy page


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), int | float)]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, vals = np.array(pts, dtype=np.float64).T
    return steps, vals


SPARSE = 20
"""A series with at most this many points (SFT's validation-time entropy) is drawn point by point."""


def _draw(ax, steps: np.ndarray, vals: np.ndarray, color: str, label: str | None) -> None:
    """One series: sparse ones as markers joined by lines; dense ones raw (thin) plus a moving average."""
    if len(vals) <= SPARSE:
        ax.plot(steps, vals, "-o", color=color, lw=1.6, ms=4, label=label)
        return
    ax.plot(steps, vals, color=color, alpha=0.3, lw=0.8)
    w = max(1, len(vals) // 10)
    ax.plot(steps[w - 1 :], _moving_average(vals, w), color=color, lw=1.8, label=label)


def shared_stage1_run(run: RunData, arm: str) -> tuple[str, int] | None:
    """``(run arm, step)`` when ``arm`` is a checkpoint of another arm's Stage-1 run.

    From ``result.json`` (:meth:`RunData.shared_run`), else when its log is a strict
    prefix of another arm's log (then the step is its last logged step).
    """
    shared = run.shared_run(arm)
    if shared is not None:
        return shared
    rows = run.logs.get((1, arm), [])
    if not rows:
        return None
    for other in run.arm_names:
        theirs = run.logs.get((1, other), [])
        if other != arm and len(theirs) > len(rows) and theirs[: len(rows)] == rows:
            return other, rows[-1]["step"]
    return None


def _checkpoint(run: RunData, arm: str) -> str:
    """The checkpoint folder an arm is of its run (``best`` unless study_config.json says otherwise)."""
    info = run.arm_info(arm)
    return info.checkpoint if info is not None and info.checkpoint in ("best", "matched") else "best"


def _stage1_panel(ax, run: RunData, colors: dict[str, str], used: list[str]) -> list[str]:
    """Stage-1 entropy of every arm; an arm that is a checkpoint of another arm's run is a marker on it."""
    notes = []
    marks: dict[str, list[tuple[str, int]]] = {}
    for arm in run.arm_names:
        shared = shared_stage1_run(run, arm)
        if shared is not None:
            marks.setdefault(shared[0], []).append((arm, shared[1]))
    seen_groups: set[str] = set()
    for info in run.arms:
        arm = info.name
        rows = run.logs.get((1, arm), [])
        steps, vals = _series(rows, "entropy")
        if not len(vals) or shared_stage1_run(run, arm) is not None:
            continue
        used.append(metrics_relpath(1, arm))
        reps = len(run.groups[info.group])
        label = None
        if info.group not in seen_groups:
            label = info.group + (f" ({reps} seeds)" if reps > 1 else "")
            seen_groups.add(info.group)
        for other, _ in marks.get(arm, []):
            label = (label or arm) + f" (one run with {seed_group(other)})"
        _draw(ax, steps, vals, colors[arm], label)
        for other, step in marks.get(arm, []):
            at = np.flatnonzero(steps == step)
            y = vals[at[0]] if len(at) else np.interp(step, steps, vals)
            ax.axvline(step, color=colors[other], ls=":", lw=1.2)
            ax.plot(
                [step],
                [y],
                marker="D",
                ms=10,
                color=colors[other],
                mec="black",
                ls="none",
                label=f"{other}: {arm}'s {_checkpoint(run, other)}/ at step {step}"
                if other == run.groups[seed_group(other)][0].name
                else None,
            )
            used.append(metrics_relpath(1, other))
            notes.append(f"{other} is {arm}'s checkpoint at step {step} (one run)")
    return notes


def _stage2_panel(ax, run: RunData, key: str, colors: dict[str, str], used: list[str]) -> bool:
    drawn = False
    seen: set[str] = set()
    for info in run.arms:
        steps, vals = _series(run.logs.get((2, info.name), []), key)
        if not len(vals):
            continue
        used.append(metrics_relpath(2, info.name))
        reps = len(run.groups[info.group])
        label = None
        if info.group not in seen:
            label = info.group + (f" ({reps} seeds)" if reps > 1 else "")
            seen.add(info.group)
        _draw(ax, steps, vals, colors[info.name], label)
        drawn = True
    return drawn


def _eval_entropy_panel(
    ax, run: RunData, colors: dict[str, str], used: list[str], split: str = "validation"
) -> bool:
    """Eval-sample entropy of every arm at its Stage-1 init and its Stage-2 endpoint, with 95% intervals."""
    key = "entropy_token_mean"
    drawn = False
    groups = list(run.groups.items())
    width = 0.5 / max(1, len(run.arms))
    i = 0
    for group, reps in groups:
        for j, info in enumerate(reps):
            off = (i - (len(run.arms) - 1) / 2) * width
            i += 1
            xs, ys, lo, hi = [], [], [], []
            for x, model in ((0.0, info.name), (1.0, stage2_model(info.name))):
                ev = run.eval(model, split)
                iv = ev.summary.get(key) if ev is not None else None
                if iv is None:
                    continue
                used.append(eval_relpath(model, split))
                xs.append(x + off)
                ys.append(iv.value)
                lo.append(iv.value - iv.lo)
                hi.append(iv.hi - iv.value)
            if not xs:
                continue
            c = colors[info.name]
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                color=c,
                marker="o",
                ms=5,
                capsize=3,
                lw=1.6,
                label=group if j == 0 else None,
            )
            drawn = True
    for model, style in ((BASE_MODEL, ":"), (TEACHER_MODEL, "--")):
        ev = run.eval(model, split)
        iv = ev.summary.get(key) if ev is not None else None
        if iv is not None:
            used.append(eval_relpath(model, split))
            ax.axhline(iv.value, color=FIXED_COLORS[model], ls=style, lw=1, label=model)
    ax.set_xticks([0, 1], ["Stage-1 model\n(RL init)", "Stage-2 endpoint\n(after GRPO)"])
    ax.set_xlim(-0.6, 1.6)
    return drawn


def entropy_page_plot(run: RunData) -> Figure | None:
    """Entropy of every arm along Stage-1 and Stage-2 (training logs) and on the eval samples, one row."""
    colors = model_colors(run)
    has1 = any(len(_series(run.logs.get((1, a), []), "entropy")[1]) for a in run.arm_names)
    has2 = any(len(_series(run.logs.get((2, a), []), "entropy")[1]) for a in run.arm_names)
    has_eval = any(run.eval(a, "validation") is not None for a in run.arm_names)
    if not (has1 or has2 or has_eval):
        return None
    fig, axes = _new_figure(3, width=5.0, height=3.5)
    used: list[str] = []
    notes = _stage1_panel(axes[0], run, colors, used) if has1 else []
    axes[0].set_title("Stage-1 (warm-start): training logs", fontsize=9)
    axes[0].set_xlabel("Stage-1 step")
    _stage2_panel(axes[1], run, "entropy", colors, used)
    axes[1].set_title("Stage-2 (GRPO): training logs", fontsize=9)
    axes[1].set_xlabel("GRPO step")
    _eval_entropy_panel(axes[2], run, colors, used)
    axes[2].set_title("Eval samples (validation, T=1): init vs endpoint", fontsize=9)
    for ax in axes:
        ax.set_ylabel("entropy (nats/token)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    shared = (
        ("; ".join(notes) + ": drawn once, the checkpoint marked (diamond, dotted line). ") if notes else ""
    )
    return Figure(
        title="Entropy of every arm: Stage-1, Stage-2 and the evaluated models",
        name="entropy_trajectories",
        png=_png(fig),
        caption="Full-vocabulary policy entropy, nats per response token. Left and middle: the 'entropy' of "
        "each training log (metrics.jsonl), measured on: "
        + "; ".join(entropy_sources(run))
        + ". Dense series: "
        "thin raw, thick moving average; sparse ones point by point. " + shared + "Right: token-weighted "
        "entropy of the evaluation samples (eval files, validation split) of each Stage-1 model and its GRPO "
        "endpoint, 95% bootstrap intervals; dotted: base, dashed: teacher.",
        sources=list(dict.fromkeys(used)),
    )


_DYNAMICS = (
    ("reward_mean", "reward (mean of the step's samples)"),
    ("kl", "KL to the reference (k-estimator of the loss)"),
    ("clip_frac", "fraction of tokens clipped"),
    ("response_len", "response length (tokens)"),
)


def _flat_zero_notes(run: RunData) -> list[str]:
    """Why a Stage-2 series is 0 at every step of every arm, from the run's [grpo] settings."""
    cfg = run.config.get("grpo", {}) if isinstance(run.config.get("grpo"), dict) else {}
    loss = cfg.get("loss", {}) if isinstance(cfg.get("loss"), dict) else {}
    out = []
    for key, _ in _DYNAMICS:
        vals = [v for a in run.arm_names for v in _series(run.logs.get((2, a), []), key)[1]]
        if not vals or any(v != 0 for v in vals):
            continue
        if key == "kl" and loss.get("kl_coef") == 0:
            out.append("kl is 0 at every step: kl_coef = 0 in [grpo.loss], so no reference model is scored")
        elif key == "clip_frac" and cfg.get("update_epochs") == 1 and cfg.get("mini_batches") == 1:
            out.append(
                "clip_frac is 0 at every step: update_epochs = mini_batches = 1, each batch is used for one "
                "update, so the probability ratio is 1 and nothing is clipped"
            )
        else:
            out.append(f"{key} is 0 at every step of every arm")
    return out


def stage2_dynamics_plot(run: RunData) -> Figure | None:
    """Stage-2 reward, KL, clip fraction and response length of every arm, per GRPO step."""
    keys = [
        (k, lab)
        for k, lab in _DYNAMICS
        if any(len(_series(run.logs.get((2, a), []), k)[1]) for a in run.arm_names)
    ]
    if not keys:
        return None
    colors = model_colors(run)
    ncols = min(2, len(keys))
    fig, axes = _new_figure(ncols, width=5.2, height=3.0, nrows=-(-len(keys) // ncols))
    used: list[str] = []
    for ax, (key, lab) in zip(axes, keys):
        _stage2_panel(ax, run, key, colors, used)
        vals = [v for a in run.arm_names for v in _series(run.logs.get((2, a), []), key)[1]]
        if vals and all(v == 0 for v in vals):
            ax.text(
                0.5,
                0.7,
                "0 at every step of every arm\n(why: see the caption)",
                transform=ax.transAxes,
                ha="center",
                fontsize=9,
                color="#555",
            )
        ax.set_title(f"{key}: {lab}", fontsize=9)
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    zero = _flat_zero_notes(run)
    return Figure(
        title="Stage-2 (GRPO) training dynamics",
        name="stage2_dynamics",
        png=_png(fig),
        caption="Per GRPO step, from stage2/<arm>/metrics.jsonl: mean reward, KL to the frozen reference, "
        "fraction of clipped tokens (PPO ratio outside [1-clip_low, 1+clip_high]) and mean response length "
        "of the step's samples; thin raw, thick moving average."
        + (" " + "; ".join(zero) + "." if zero else ""),
        sources=list(dict.fromkeys(used)),
    )

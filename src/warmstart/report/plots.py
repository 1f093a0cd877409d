"""The report's plots (matplotlib's object API, Agg, no global figure state), as PNG bytes.

Every arm has one colour (:func:`model_colors`, assigned in the run's arm order, so
the same arm list always gives the same colours); its Stage-2 endpoint shares it (init
dashed, endpoint solid).
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
)
from warmstart.report.blocks import Figure
from warmstart.report.data import RunData
from warmstart.report.tables import init_end_models, pass_ks

__all__ = ["PLOT_NAMES", "PALETTE", "model_colors", "accuracy_plot", "passk_plot", "trajectory_plot"]

PLOT_NAMES = ("accuracy", "pass_at_k", "entropy_trajectories", "reward_curves")
"""File stems of every plot the report can make (in ``report_plots/``)."""
FIXED_COLORS = {BASE_MODEL: "#7f7f7f", TEACHER_MODEL: "#222222"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#d62728")
"""Arm colours in arm order (matplotlib's first colours), then other models'; cycled past the end."""


def model_colors(run: RunData) -> dict[str, str]:
    """Colour of every model of ``run``: base and teacher fixed, arm ``i`` ``PALETTE[i]``, endpoints as their arm."""
    groups = list(dict.fromkeys([*run.arm_names, *(stage1_arm(m) for m in run.models)]))
    groups = [g for g in groups if g not in FIXED_COLORS]
    by_group = {**FIXED_COLORS, **{g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}}
    return {m: by_group[stage1_arm(m)] for m in [*run.models, *run.arm_names]}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _new_figure(ncols: int, width: float = 5.2, height: float = 3.6):
    # matplotlib's object API (no pyplot): no global figure state, renders with Agg.
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width * ncols, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
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

"""Plausible fake study outputs for the report tests: eval.json files and metrics.jsonl logs.

The numbers come from a small generative story, not from any model: every problem has a
difficulty, every model a skill and a "sharpness" (how concentrated its samples are);
Stage-2 endpoints are sharper (higher greedy accuracy, fewer distinct answers, lower
entropy), as RL tends to make them. Files are written through the real
:func:`warmstart.evaluate_schema.build_eval` / :func:`write_eval`, so the fixtures follow
the schema by construction.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from warmstart.evaluate_schema import (
    BLANK_SPLIT,
    DEFAULT_ARMS,
    SPLITS,
    DecodingSettings,
    EvalResult,
    GreedyResult,
    ModelInfo,
    ProblemResult,
    SampleResult,
    build_eval,
    eval_relpath,
    metrics_relpath,
    stage1_arm,
    stage2_model,
    study_models,
    write_eval,
)
from warmstart.report.data import seed_group

# model -> (skill, sharpness, entropy level in nats/token)
MODEL_TRAITS: dict[str, tuple[float, float, float]] = {
    "base": (-1.0, 1.0, 0.60),
    "teacher": (1.5, 1.5, 0.30),
    "sft_early": (0.0, 1.2, 0.40),
    "sft_over": (0.2, 2.0, 0.15),
    "opd": (0.3, 1.4, 0.35),
    "sft_early+grpo": (0.6, 2.5, 0.20),
    "sft_over+grpo": (0.4, 3.0, 0.08),
    "opd+grpo": (0.8, 2.2, 0.25),
    # study v2's extra arms (Stage-1 only)
    "opd_over": (0.4, 1.8, 0.28),
    "sft_matched": (0.1, 1.6, 0.30),
    "opd_matched": (0.1, 1.3, 0.42),
}
DEFAULT_TRAITS = (0.0, 1.0, 0.3)
"""Traits of a model not listed above (an arm added by a test)."""
FAMILIES = ("perimeter", "area", "angle")
"""Question families of the fixture problems (problem ``p`` is family ``p % 3``); OOD adds ``OOD_FAMILY``."""
OOD_FAMILY = "exterior_angle"


def traits(model: str) -> tuple[float, float, float]:
    """A model's traits; a seed replica (``opd@s1``, ``opd@s1+grpo``) has its arm's."""
    arm = seed_group(stage1_arm(model))
    key = stage2_model(arm) if model != stage1_arm(model) else arm
    return MODEL_TRAITS.get(key, DEFAULT_TRAITS)


def family_of(split: str, p: int) -> str:
    """Family of problem ``p`` of ``split``: every 4th OOD problem is of an OOD-only family."""
    if split == "ood" and p % 4 == 3:
        return OOD_FAMILY
    return FAMILIES[p % 3]


def _response(
    rng: np.random.Generator, correct: bool, answer: str, wrong: list[str]
) -> tuple[str, str | None]:
    """(normalized, extracted) of one response: the answer, or one of the wrong ones ("none" = unparseable)."""
    if correct:
        return answer, answer
    w = wrong[int(rng.integers(0, len(wrong)))]
    return w, (None if w == "none" else w)


def make_problem_rows(
    model: str,
    split: str,
    P: int = 30,
    n: int = 8,
    seed: int = 0,
    with_entropy: bool = True,
    skill_shift: float = 0.0,
) -> list[ProblemResult]:
    """Per-problem rows of one model on one split (same problems and answers for every model of a split)."""
    skill, sharp, ent = traits(model)
    skill += skill_shift
    split_rng = np.random.default_rng([seed, len(split)])  # problems depend on the split only
    difficulty = split_rng.normal(0.0, 1.0, size=P) + (0.7 if split == "ood" else 0.0)
    answers = [str(int(a)) for a in split_rng.integers(3, 60, size=P)]
    rng = np.random.default_rng([seed, sum(map(ord, model)), len(split), int(100 * abs(skill_shift))])
    rows = []
    for p in range(P):
        q = 1.0 / (1.0 + np.exp(-sharp * (skill - difficulty[p])))
        wrong = [str(int(answers[p]) + d) for d in (1, -1, 2, 5)] + ["none"]
        n_wrong = max(1, int(round(len(wrong) / sharp)))

        samples = []
        for _ in range(n):
            correct = bool(rng.random() < q)
            normalized, extracted = _response(rng, correct, answers[p], wrong[:n_wrong])
            length = int(rng.integers(20, 60))
            h = float(ent * rng.gamma(4.0, 0.25))
            samples.append(
                SampleResult(
                    extracted=extracted,
                    normalized=normalized,
                    correct=correct,
                    format_ok=bool(rng.random() < 0.9),
                    length=length,
                    entropy_mean=h if with_entropy else None,
                    entropy_sum=h * length if with_entropy else None,
                )
            )
        g_correct = bool(q > 0.5)
        _, g_extracted = _response(rng, g_correct, answers[p], wrong[:n_wrong])
        greedy = GreedyResult(
            text=f"<think>...</think> \\boxed{{{g_extracted}}}",
            extracted=g_extracted,
            correct=g_correct,
            format_ok=True,
            length=int(rng.integers(20, 60)),
            entropy_mean=float(ent * 0.5) if with_entropy else None,
        )
        rows.append(ProblemResult(id=f"{split}-{p:04d}", answer=answers[p], greedy=greedy, samples=samples))
    return rows


def make_eval(
    model: str,
    split: str,
    P: int = 30,
    n: int = 8,
    seed: int = 0,
    B: int = 500,
    temperature: float = 1.0,
    skill_shift: float = 0.0,
) -> EvalResult:
    """A complete, validated eval result of ``model`` on ``split`` (``skill_shift``: e.g. blank images)."""
    rows = make_problem_rows(model, split, P=P, n=n, seed=seed, skill_shift=skill_shift)
    return build_eval(
        model=ModelInfo(name=model, path=f"runs/fixture/models/{model}"),
        data_path="runs/fixture/data",
        split=split,
        settings=DecodingSettings(
            n=n, temperature=temperature, top_p=1.0, max_new_tokens=64, seed=seed, greedy=True
        ),
        per_problem=rows,
        B=B,
        seed=0,
        created="2025-01-01T00:00:00Z",
    )


SFT_EVAL_EVERY = 10
"""SFT logs entropy (of validation samples) and val_accuracy every this many steps, as stages/sft.py does."""


def metrics_rows(stage: str, steps: int, entropy0: float, entropy1: float, seed: int = 0) -> list[dict]:
    """metrics.jsonl rows with the standard keys: entropy moves from entropy0 to entropy1, reward rises.

    SFT rows carry entropy and val_accuracy only every :data:`SFT_EVAL_EVERY` steps (SFT
    measures entropy on validation samples at evaluation time); OPD and GRPO rows every step.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(steps):
        t = step / max(steps - 1, 1)
        row = {
            "step": step,
            "stage": stage,
            "loss": float(1.0 - 0.5 * t + 0.02 * rng.normal()),
            "lr": 1e-4,
            "neg_logp": float(entropy0 * 0.8),
        }
        entropy = float(entropy0 + (entropy1 - entropy0) * t + 0.01 * rng.normal())
        if stage != "sft" or step % SFT_EVAL_EVERY == 0:
            row["entropy"] = entropy
        if stage == "sft" and step % SFT_EVAL_EVERY == 0:
            row["val_accuracy"] = float(0.3 + 0.2 * t)
        if stage == "grpo":
            row["reward_mean"] = float(np.clip(0.3 + 0.3 * t + 0.05 * rng.normal(), 0, 1))
            row["accuracy"] = row["reward_mean"]
            row["kl"] = float(0.01 * t + 0.001 * abs(rng.normal()))
            row["clip_frac"] = float(0.02 + 0.01 * abs(rng.normal()))
            row["response_len"] = float(40 - 5 * t + rng.normal())
        rows.append(row)
    return rows


def write_metrics_log(
    path: Path, stage: str, steps: int, entropy0: float, entropy1: float, seed: int = 0
) -> None:
    """:func:`metrics_rows` written as a metrics.jsonl."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = metrics_rows(stage, steps, entropy0, entropy1, seed)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_problem_files(root: Path, P: int) -> None:
    """``data/<split>.jsonl`` with each problem's id and ``meta.family`` (what the report reads of them)."""
    for split in SPLITS:
        path = root / "data" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"id": f"{split}-{p:04d}", "meta": {"family": family_of(split, p)}} for p in range(P)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))


SHARED_BEST_STEP = 20
"""With ``shared_sft``: sft_early is sft_over's checkpoint at this step (as the study derives it)."""


def write_run_dir(
    root: Path,
    P: int = 30,
    n: int = 8,
    B: int = 500,
    skip: tuple[str, ...] = (),
    seed: int = 0,
    arms: list[dict] | None = None,
    shared_sft: bool = False,
    extras: bool = False,
) -> Path:
    """A fake run directory in the documented layout; ``skip`` lists relative paths not to write.

    ``arms`` (objects with ``name``, ``label``, ``method``, as the study writes them) are
    written to ``study_config.json``; without it there is no such file (a run directory
    from before arms were configurable) and the default arms are written. An arm with
    ``"grpo": false`` gets no ``+grpo`` eval files and no Stage-2 log. Seed replicas
    are arms named ``<arm>@s<k>``. ``shared_sft``: ``sft_early`` is derived from
    ``sft_over``'s run as ``study/execute.py:write_best_arm`` does (its log truncated at
    :data:`SHARED_BEST_STEP`, a ``result.json`` naming the run). ``extras``: also the
    problem files (families) and the blank-image ablation of base and teacher.
    """
    root = Path(root)
    if arms is not None:
        root.mkdir(parents=True, exist_ok=True)
        config = {"name": "fixture", "arm": [{**a, "config": {}} for a in arms]}
        (root / "study_config.json").write_text(json.dumps(config, indent=1))
    names = [a["name"] for a in arms] if arms is not None else [name for name, _ in DEFAULT_ARMS]
    no_rl = {a["name"] for a in arms or [] if a.get("grpo") is False}
    for model in study_models(names):
        if stage1_arm(model) != model and stage1_arm(model) in no_rl:
            continue
        for split in SPLITS:
            rel = eval_relpath(model, split)
            if rel not in skip:
                write_eval(root / rel, make_eval(model, split, P=P, n=n, seed=seed, B=B))
    if extras:
        write_problem_files(root, P)
        for model in ("base", "teacher"):
            blank = make_eval(model, "validation", P=P, n=n, seed=seed, B=B, skill_shift=-1.5)
            write_eval(root / eval_relpath(model, BLANK_SPLIT), blank)
    for i, arm in enumerate(names):
        _, _, ent1 = traits(arm)
        _, _, ent2 = traits(stage2_model(arm))
        rel1, rel2 = metrics_relpath(1, arm), metrics_relpath(2, arm)
        stage1 = "opd" if seed_group(arm) == "opd" else "sft"
        if rel1 not in skip and not (shared_sft and seed_group(arm) == "sft_early"):
            write_metrics_log(root / rel1, stage1, steps=40, entropy0=0.6, entropy1=ent1, seed=seed + i)
        if rel2 not in skip and arm not in no_rl:
            write_metrics_log(root / rel2, "grpo", steps=30, entropy0=ent1, entropy1=ent2, seed=seed + 10 + i)
    if shared_sft:
        for arm in names:
            if seed_group(arm) != "sft_early":
                continue
            over = arm.replace("sft_early", "sft_over", 1)
            lines = (root / metrics_relpath(1, over)).read_text().splitlines()
            keep = [ln for ln in lines if json.loads(ln)["step"] <= SHARED_BEST_STEP]
            (root / "stage1" / arm).mkdir(parents=True, exist_ok=True)
            (root / metrics_relpath(1, arm)).write_text("".join(ln + "\n" for ln in keep))
            result = {
                "derived_from": f"/elsewhere/run/stage1/{over}",
                "model": "x",
                "best_step": SHARED_BEST_STEP,
            }
            (root / "stage1" / arm / "result.json").write_text(json.dumps(result))
    return root


# ------------------------------------------------------------------------------ study v2


def _stage_table(method: str, lr: float) -> dict:
    return {"val_split": "test", "eval_every": 10, "seed": 0, "optim": {"lr": lr}}


def v2_arms() -> list[dict]:
    """The v2 toy study's arms (configs/toy.toml) as its study_config.json lists them."""
    sft, opd = (
        {"sft": _stage_table("sft", 1e-3), "opd": None},
        {"sft": None, "opd": _stage_table("opd", 1e-4)},
    )
    return [
        {
            "name": "sft_early",
            "label": "SFT (early-stopped)",
            "method": "sft",
            "checkpoint": "best",
            "grpo": True,
            **sft,
        },
        {
            "name": "sft_over",
            "label": "SFT (over-trained)",
            "method": "sft",
            "checkpoint": "final",
            "grpo": True,
            **sft,
        },
        {
            "name": "opd",
            "label": "OPD (early-stopped)",
            "method": "opd",
            "checkpoint": "best",
            "grpo": True,
            **opd,
        },
        {
            "name": "opd_over",
            "label": "OPD (over-trained)",
            "method": "opd",
            "checkpoint": "final",
            "grpo": False,
            **opd,
        },
        {
            "name": "sft_matched",
            "label": "SFT (matched)",
            "method": "sft",
            "checkpoint": "matched",
            "grpo": False,
            **sft,
        },
        {
            "name": "opd_matched",
            "label": "OPD (matched)",
            "method": "opd",
            "checkpoint": "matched",
            "grpo": False,
            **opd,
        },
    ]


MATCHED_TARGET = 0.465
"""The fixture's stage-0 matched-outcome target: 0.31 + 0.5 x (0.62 - 0.31)."""
SFT_SELECTION = {
    "split": "test",
    "every": 10,
    "patience": 2,
    "over_multiple": 2.0,
    "best_step": 20,
    "best_accuracy": 0.5,
    "early_end": 30,
    "over_step": 39,
    "matched_step": 10,
    "matched_target": MATCHED_TARGET,
}
OPD_SELECTION = {**SFT_SELECTION, "best_step": 20, "best_accuracy": 0.41, "matched_step": None}
SFT_COMPUTE = {"steps": 39, "sequences": 1248, "tokens": 74880, "seconds": 41.5}
OPD_COMPUTE = {"steps": 39, "sequences": 1248, "tokens": 59904, "seconds": 88.25}
SFT_GRID = {
    "rule": "highest best selection accuracy; ties: the smaller lr",
    "chosen_lr": 0.001,
    "runs": [
        {
            "lr": 0.0003,
            "dir": "lr0.0003",
            "best_step": 30,
            "best_accuracy": 0.41,
            "over_step": 39,
            "matched_step": None,
            "sequences": 1248,
            "seconds": 40.0,
        },
        {
            "lr": 0.001,
            "dir": "lr0.001",
            "best_step": 20,
            "best_accuracy": 0.5,
            "over_step": 39,
            "matched_step": 10,
            "sequences": 1248,
            "tokens": 74880,
            "seconds": 41.5,
        },
    ],
}

OPD_GRID = {
    "rule": SFT_GRID["rule"],
    "chosen_lr": 0.0003,
    "runs": [
        {**SFT_GRID["runs"][0], "best_step": 20, "best_accuracy": 0.41, "tokens": 59904, "seconds": 88.25},
        {
            **SFT_GRID["runs"][1],
            "best_step": 10,
            "best_accuracy": 0.38,
            "matched_step": None,
            "seconds": 90.0,
        },
    ],
}
"""OPD's grid: the smaller rate wins (0.41 against 0.38); the chosen run's compute is :data:`OPD_COMPUTE`."""


def stage0_record(ok: bool = True, stop_reached: bool = True) -> dict:
    """A ``stage0.json`` in the study's format; ``ok=False``: the teacher leads ``angle`` by 10 pp only."""
    fams = {
        "perimeter": {"n": 100, "student": 0.30, "teacher": 0.60},
        "area": {"n": 100, "student": 0.35, "teacher": 0.70},
        "angle": {"n": 100, "student": 0.28, "teacher": 0.56 if ok else 0.38},
    }
    for row in fams.values():
        row["gap"] = row["teacher"] - row["student"]
        row["ok"] = row["gap"] >= 0.15
    teacher = sum(r["teacher"] for r in fams.values()) / 3
    student = sum(r["student"] for r in fams.values()) / 3
    return {
        "split": "test",
        "problems": 300,
        "rule": {"min_teacher_gap": 0.15, "matched_fraction": 0.5},
        "student": {"greedy": student, "model": "models/student/final"},
        "teacher": {"greedy": teacher, "model": "models/teacher/final"},
        "families": fams,
        "ok": all(r["ok"] for r in fams.values()),
        "matched_target": student + 0.5 * (teacher - student),
        "student_stop": {
            "rule": "first eval with every family's pass@8 >= 0.30 on split test",
            "step": 250 if stop_reached else 800,
            "reached": stop_reached,
            "per_family_pass_at_k": {
                "perimeter": 0.41,
                "area": 0.52,
                "angle": 0.33 if stop_reached else 0.22,
            },
            "k": 8,
        },
    }


def _arm_view(root: Path, home: str, arm: str, checkpoint: str, result: dict) -> None:
    """``stage1/<arm>/`` as ``study/execute.py:write_arm_view`` writes it: the run's log up to the step."""
    sel = result["selection"]
    step = sel["best_step"] if checkpoint == "best" else sel["matched_step"]
    info = {
        "derived_from": f"/elsewhere/run/stage1/{home}",
        "checkpoint": checkpoint,
        "model": f"/elsewhere/run/stage1/{home}/{checkpoint}",
        "step": step,
        "reached": step is not None,
        "best_step": result["best_step"],
        "best_val_accuracy": result["best_val_accuracy"],
        "selection": sel,
        "compute": result["compute"],
    }
    log = root / metrics_relpath(1, arm)
    log.unlink(missing_ok=True)
    if step is not None:
        rows = (root / metrics_relpath(1, home)).read_text().splitlines()
        log.write_text("".join(ln + "\n" for ln in rows if json.loads(ln)["step"] <= step))
    (root / "stage1" / arm).mkdir(parents=True, exist_ok=True)
    (root / "stage1" / arm / "result.json").write_text(json.dumps(info, indent=1))


def write_v2_run_dir(
    root: Path,
    P: int = 24,
    n: int = 8,
    B: int = 300,
    stage0: dict | None = None,
    grid: bool = True,
) -> Path:
    """A study-v2 run directory: the six v2 arms, stage0.json, Stage-1 results with selection and compute.

    Two Stage-1 runs as the study trains them: ``sft_over`` (arms sft_early = best,
    sft_matched = matched, at step :data:`SFT_SELECTION`'s) with a learning-rate grid
    (``grid.json``, unless ``grid`` is false) and ``opd_over`` (opd = best; opd_matched never
    reached the target: its eval files are not-reached records and it has no log). Arms
    with grpo = false (opd_over and the matched ones) have no Stage-2 files.
    """
    arms = v2_arms()
    root = write_run_dir(root, P=P, n=n, B=B, arms=arms, extras=True)
    config = json.loads((root / "study_config.json").read_text())
    config["stage0"] = {"split": "test", "min_teacher_gap": 0.15, "matched_fraction": 0.5, "on_fail": "error"}
    config["lr_grid"] = [0.0003, 0.001] if grid else []
    (root / "study_config.json").write_text(json.dumps(config, indent=1))
    (root / "stage0.json").write_text(json.dumps(stage0 if stage0 is not None else stage0_record(), indent=1))
    for home, sel, comp, views in (
        ("sft_over", SFT_SELECTION, SFT_COMPUTE, (("sft_early", "best"), ("sft_matched", "matched"))),
        ("opd_over", OPD_SELECTION, OPD_COMPUTE, (("opd", "best"), ("opd_matched", "matched"))),
    ):
        result = {
            "arm": "over",
            "best_step": sel["best_step"],
            "best_val_accuracy": sel["best_accuracy"],
            "steps": 39,
            "selection": sel,
            "compute": comp,
        }
        if grid:
            g = SFT_GRID if home == "sft_over" else OPD_GRID
            result["chosen_lr"] = g["chosen_lr"]
            result["grid"] = g["runs"]
            (root / "stage1" / home / "grid.json").write_text(json.dumps(g, indent=1))
        (root / "stage1" / home / "result.json").write_text(json.dumps(result, indent=1))
        for arm, checkpoint in views:
            _arm_view(root, home, arm, checkpoint, result)
    reason = f"selection accuracy never reached {MATCHED_TARGET:.3f} (best 0.410 at step 20)"
    for split in SPLITS:
        record = {
            "not_reached": True,
            "model_name": "opd_matched",
            "target": MATCHED_TARGET,
            "reason": reason,
        }
        (root / eval_relpath("opd_matched", split)).write_text(json.dumps(record))
    return root

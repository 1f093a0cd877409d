"""Stage 0's check: is the teacher clearly stronger than the base student on every family?

After both models exist (trained by the study or given), both are decoded greedily on a
selection split (never the reported one) and scored per question family
(``meta["family"]``). The check passes when the teacher is at least ``min_teacher_gap``
above the student on every family. It also fixes, from stage 0 alone, the
matched-outcome target of Stage-1 (``student + matched_fraction x (teacher - student)``,
overall greedy accuracy on the same split), so no Stage-1 result can move it.

``<run>/stage0.json`` holds the table (the report shows it); a failed check stops the
study there (``on_fail = "error"``, after writing the file) or is only reported
(``"warn"``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from warmstart.atomic import atomic_write_text
from warmstart.config import ConfigError
from warmstart.sampler import RolloutConfig

__all__ = ["Stage0Check", "Stage0CheckFailed", "Stage0Job", "matched_target", "run_stage0"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage0Check:
    """The ``[stage0]`` table of a study.

    Attributes:
        split: selection split both models are decoded on (synthetic data: ``test``;
            never the reported ``validation``).
        problems: problems of ``split`` used (first N; 0 = all).
        min_teacher_gap: the teacher's greedy accuracy must exceed the student's by at least
            this on every family (0.15 = 15 percentage points).
        matched_fraction: the matched-outcome target is ``student + matched_fraction x
            (teacher - student)`` on ``split`` (0.5 = halfway from base to teacher).
        on_fail: ``error`` (stop the study after writing ``stage0.json``) or ``warn`` (log
            it, and the report shows the failing families).
        max_new_tokens: greedy decoding length.
    """

    split: str = "test"
    problems: int = 0
    min_teacher_gap: float = 0.15
    matched_fraction: float = 0.5
    on_fail: Literal["error", "warn"] = "error"
    max_new_tokens: int = 48

    def validate(self) -> None:
        if not 0.0 <= self.min_teacher_gap <= 1.0 or not 0.0 < self.matched_fraction <= 1.0:
            raise ConfigError("stage0: min_teacher_gap must be in [0, 1] and matched_fraction in (0, 1]")
        if self.problems < 0 or self.max_new_tokens < 1:
            raise ConfigError("stage0: problems must be >= 0 and max_new_tokens >= 1")


@dataclass(frozen=True)
class Stage0Job:
    """The stage-0 check step's settings.

    Attributes:
        student: base student checkpoint.
        teacher: teacher checkpoint (in-process; a served teacher is checked through its
            ``eval_path``).
        data: problem source.
        check: the ``[stage0]`` settings.
        rollout: the study's sampler.
        device: where the models run.
    """

    student: str
    teacher: str
    data: str
    check: Stage0Check = field(default_factory=Stage0Check)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    device: str = "cpu"


class Stage0CheckFailed(RuntimeError):
    """The teacher is not clearly stronger than the student on every family."""


def matched_target(student_acc: float, teacher_acc: float, fraction: float) -> float:
    """``student + fraction x (teacher - student)``: the matched-outcome target (pure)."""
    return student_acc + fraction * (teacher_acc - student_acc)


def family_greedy(sampler, problems, max_new_tokens: int, batch_size: int = 64) -> dict[str, list[bool]]:
    """Greedy correctness of every problem, grouped by family (``"?"`` without one)."""
    from warmstart.grading import grade
    from warmstart.rollout import SamplingParams

    out: dict[str, list[bool]] = {}
    for s in range(0, len(problems), batch_size):
        chunk = list(problems[s : s + batch_size])
        ro = sampler.sample(chunk, SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens))
        for t, p in zip(ro.texts_B, chunk):
            out.setdefault(str(p.meta.get("family", "?")), []).append(grade(t, p).correct)
    return out


def compare(student: dict[str, list[bool]], teacher: dict[str, list[bool]], check: Stage0Check) -> dict:
    """The per-family table and verdict from both models' per-problem correctness (pure)."""
    fams = {}
    for f in sorted(student):
        s, t = sum(student[f]) / len(student[f]), sum(teacher[f]) / len(teacher[f])
        fams[f] = {
            "n": len(student[f]),
            "student": s,
            "teacher": t,
            "gap": t - s,
            "ok": t - s >= check.min_teacher_gap - 1e-12,
        }
    n = sum(len(v) for v in student.values())
    s_all = sum(sum(v) for v in student.values()) / n
    t_all = sum(sum(v) for v in teacher.values()) / n
    return {
        "families": fams,
        "ok": all(v["ok"] for v in fams.values()),
        "failing": [f for f, v in fams.items() if not v["ok"]],
        "student_greedy": s_all,
        "teacher_greedy": t_all,
        "matched_target": matched_target(s_all, t_all, check.matched_fraction),
    }


def run_stage0(job: Stage0Job, out: Path) -> dict:
    """Decode both models on the selection split, write ``out`` (stage0.json), enforce ``on_fail``."""
    from warmstart.sampler import make_sampler
    from warmstart.stages.common import load_frozen, load_split

    check = job.check
    problems = load_split(job.data, check.split, check.problems or None)
    if not problems:
        raise ConfigError(f"stage0: split {check.split!r} of {job.data} has no problem")
    correct = {}
    for who, path in (("student", job.student), ("teacher", job.teacher)):
        model = load_frozen(path)
        sampler = make_sampler(job.rollout, model.model, model.processor)
        correct[who] = family_greedy(sampler, problems, check.max_new_tokens)
    table = compare(correct["student"], correct["teacher"], check)
    stop = _student_stop(job.student)
    result = {
        "split": check.split,
        "problems": len(problems),
        "rule": {"min_teacher_gap": check.min_teacher_gap, "matched_fraction": check.matched_fraction},
        "matched_rule": (
            f"base + {check.matched_fraction} x (teacher - base), greedy accuracy on split {check.split}"
        ),
        "student": {"greedy": table["student_greedy"], "model": job.student},
        "teacher": {"greedy": table["teacher_greedy"], "model": job.teacher},
        "families": table["families"],
        "ok": table["ok"],
        "failing": table["failing"],
        "matched_target": table["matched_target"],
        **({"student_stop": stop} if stop else {}),
    }
    atomic_write_text(out, json.dumps(result, indent=2))
    if not table["ok"]:
        gaps = ", ".join(f"{f} {table['families'][f]['gap']:+.3f}" for f in table["failing"])
        msg = (
            f"stage 0 check: the teacher is not {check.min_teacher_gap:.2f} above the student on "
            f"{len(table['failing'])} famil(ies) of split {check.split!r} ({gaps}); see {out}. "
            "Train the teacher longer or larger (or set [stage0] on_fail = 'warn' to go on)"
        )
        if check.on_fail == "error":
            raise Stage0CheckFailed(msg)
        log.warning(msg)
    return result


def _student_stop(student: str) -> dict | None:
    """The stop rule's last answer, from the student's own training result (a study-built student)."""
    res = Path(student).parent / "result.json"
    if not res.exists():
        return None
    info = json.loads(res.read_text()).get("stop_rule")
    if not info:
        return None
    return {**{k: v for k, v in info.items() if k != "stop"}, "reached": bool(info.get("stop"))}

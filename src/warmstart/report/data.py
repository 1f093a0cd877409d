"""Reading a run directory for the report: its arms, eval files and training logs, and what is missing.

The arms (names, labels, report order; the first is the reference arm of paired
differences) come from ``<run>/study_config.json``'s ``arm`` list, which the study
writes. A run directory without that file (an older run, or a bare folder of eval
files) falls back to the models its ``eval/`` file names show: every model that is not
``base`` or ``teacher``, with its ``+grpo`` suffix removed, is an arm; the default arms
(:data:`warmstart.evaluate_schema.DEFAULT_ARMS`) keep their labels and come first in
their order, others follow with their name as label.

Seeds (a proposal for study v2, supported here): the same arm trained with another seed
is a *replica* named ``<arm>@s<seed>`` (``sft_early@s1``; its endpoint
``sft_early@s1+grpo``), with its own ``stage1/``, ``stage2/`` and eval files, and its
own entry in ``study_config.json``'s ``arm`` list (same label). ``@`` cannot occur in
an arm name (``study/arms.py``), so the suffix is unambiguous; the first seed may keep
the bare name, so a one-seed run (today's) is a run whose every arm has one replica.
Replicas of one arm form its *group* (:attr:`ArmInfo.group`): one colour in the plots,
one row of the claims table, seeds pooled (:mod:`warmstart.report.claims`).

Study v2 adds (each optional: a run from before it reads as before, and the report says
what it lacks):

* ``stage0.json``: the stage-0 check (teacher vs base student per family, the base
  student's stop rule, the matched-outcome target); expected when ``study_config.json``
  has a ``stage0`` table;
* ``stage1/<run>/result.json``'s ``selection`` and ``compute``, and
  ``stage1/<run>/grid.json`` of a learning-rate grid (expected when the config has a
  non-empty ``lr_grid``); the Stage-1 *runs* are the arms grouped by the run they are a
  checkpoint of (:meth:`RunData.stage1_runs`);
* arms with ``grpo = false`` (no Stage-2 run): no ``<arm>+grpo`` eval file and no
  ``stage2/<arm>/`` log is expected of them;
* matched-outcome arms whose checkpoint was never reached: their eval files are
  ``{"not_reached": true, "model_name", "target", "reason"}`` records
  (:class:`NotReached`, in :attr:`RunData.not_reached`, not in :attr:`RunData.evals`), and
  their ``stage1/<arm>/result.json`` says ``"reached": false`` (no log is expected).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from warmstart.evaluate_schema import (
    BASE_MODEL,
    BLANK_SPLIT,
    DEFAULT_ARMS,
    SPLITS,
    TEACHER_MODEL,
    EvalResult,
    EvalSchemaError,
    eval_relpath,
    metrics_relpath,
    parse_eval_filename,
    read_eval,
    stage1_arm,
    study_models,
)

__all__ = [
    "STUDY_CONFIG",
    "SEED_SEP",
    "seed_group",
    "replica_name",
    "ArmInfo",
    "NotReached",
    "Stage1Run",
    "RunData",
    "arms_from_study_config",
    "arms_from_models",
    "model_role",
    "load_run",
]

STUDY_CONFIG = "study_config.json"
"""The study's config as JSON, relative to the run directory (its ``arm`` list names the arms)."""
STAGE0 = "stage0.json"
"""The stage-0 check's table, relative to the run directory."""
GRID = "grid.json"
"""A learning-rate grid's choice, ``stage1/<run>/grid.json``."""

SEED_SEP = "@s"
"""Separator of a seed replica's name: ``<arm>@s<seed>``."""
_REPLICA = re.compile(r"(.+)@s(\d+)")

T = TypeVar("T")


def seed_group(name: str) -> str:
    """The arm a (replica) name belongs to: ``sft_early@s2`` -> ``sft_early``; other names unchanged."""
    m = _REPLICA.fullmatch(name)
    return m.group(1) if m else name


def replica_name(arm: str, seed: int) -> str:
    """The name of ``arm`` trained with ``seed``: ``replica_name("opd", 1)`` -> ``opd@s1``."""
    return f"{arm}{SEED_SEP}{seed}"


def _name_seed(name: str) -> int | None:
    m = _REPLICA.fullmatch(name)
    return int(m.group(2)) if m else None


@dataclass(frozen=True)
class ArmInfo:
    """One Stage-1 arm (one seed of it) as the report shows it.

    Attributes:
        name: run-directory name: ``stage1/<name>/``, ``eval/<name>__<split>.json``; its
            Stage-2 endpoint is ``<name>+grpo``.
        label: what the report calls it (``SFT (early-stopped)``).
        method: Stage-1 method from ``study_config.json`` (``sft``, ``opd``; ``""`` unknown).
        checkpoint: which checkpoint of its run it is (``best``, ``final``, v2's
            ``matched``; ``""`` unknown).
        seed: its seed: the ``@s<seed>`` of its name, else its stage table's ``seed``
            in ``study_config.json``; ``None`` unknown.
        grpo: whether the arm has a Stage-2 run (``<name>+grpo``); ``false`` in
            ``study_config.json`` (v2's matched and over-trained OPD arms): Stage-1 only,
            so no Stage-2 file is expected of it.
    """

    name: str
    label: str
    method: str = ""
    checkpoint: str = ""
    seed: int | None = None
    grpo: bool = True

    @property
    def group(self) -> str:
        """The arm this replica is a seed of (its name without ``@s<seed>``)."""
        return seed_group(self.name)

    @property
    def seed_label(self) -> str:
        return f"s{self.seed}" if self.seed is not None else "s?"


def arms_from_study_config(path: str | os.PathLike) -> list[ArmInfo]:
    """The ``arm`` list of a ``study_config.json``, in order; ``ValueError`` naming the key when malformed.

    Each entry needs a non-empty string ``name``; ``label`` defaults to the name; other
    keys (``method``, the arm's stage config, ...) are not the report's business. With
    ``seeds`` = S > 1 (the study's key) every arm also has the replicas ``<arm>@s1`` ..
    ``<arm>@s<S-1>`` the study trains (seed + k), after the listed arms.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not readable as JSON ({e})") from None
    entries = raw.get("arm") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError("key 'arm': expected a non-empty list of arms")
    arms: list[ArmInfo] = []
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError(f"key 'arm[{i}].name': expected a non-empty string")
        label = entry.get("label") or name
        if not isinstance(label, str):
            raise ValueError(f"key 'arm[{i}].label': expected a string, got {label!r}")
        if any(a.name == name for a in arms):
            raise ValueError(f"key 'arm[{i}].name': arm {name!r} is listed twice")
        method = entry.get("method") if isinstance(entry.get("method"), str) else ""
        checkpoint = entry.get("checkpoint") if isinstance(entry.get("checkpoint"), str) else ""
        seed = _name_seed(name)
        stage = entry.get(method) if method else None
        if seed is None and isinstance(stage, dict) and type(stage.get("seed")) is int:
            seed = stage["seed"]
        grpo = entry.get("grpo", True)
        if not isinstance(grpo, bool):
            raise ValueError(f"key 'arm[{i}].grpo': expected true or false, got {grpo!r}")
        arms.append(ArmInfo(name, label, method, checkpoint, seed, grpo))
    seeds = raw.get("seeds", 1)
    if type(seeds) is not int or seeds < 1:
        raise ValueError(f"key 'seeds': expected an integer >= 1, got {seeds!r}")
    # the study lists each arm once and trains seeds 1..seeds-1 of it as <arm>@s<k> (seed + k)
    listed = {a.name for a in arms}
    replicas = [
        ArmInfo(f"{a.name}@s{k}", a.label, a.method, a.checkpoint, (a.seed or 0) + k, a.grpo)
        for a in arms
        if _name_seed(a.name) is None
        for k in range(1, seeds)
        if f"{a.name}@s{k}" not in listed
    ]
    return arms + replicas


def _config_run_homes(config: dict) -> dict[str, str]:
    """Arm -> the Stage-1 run it is a checkpoint of, from ``study_config.json`` alone.

    As the study groups them (``study/arms.py:stage1_runs``): arms with the same method
    and the same method table are one run, named after its ``final`` arm, else its first.
    An arm without a method table (an older config) is its own run.
    """
    entries = config.get("arm") if isinstance(config.get("arm"), list) else []
    groups: dict[str, list[dict]] = {}
    homes: dict[str, str] = {}
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            continue
        stage = e.get(e.get("method")) if isinstance(e.get("method"), str) else None
        if not isinstance(stage, dict):
            homes[e["name"]] = e["name"]
            continue
        key = json.dumps([e["method"], stage, _name_seed(e["name"])], sort_keys=True)
        groups.setdefault(key, []).append(e)
    for members in groups.values():
        home = next((e for e in members if e.get("checkpoint") == "final"), members[0])["name"]
        for e in members:
            homes[e["name"]] = home
    return homes


@dataclass(frozen=True)
class NotReached:
    """The eval record of a matched-outcome arm whose checkpoint was never reached.

    Attributes:
        model_name: the model the record stands for (``opd_matched``).
        target: the matched-outcome target it never reached (``None``: not said).
        reason: why, in words (``selection accuracy never reached 0.465 (best 0.41 at step 200)``).
    """

    model_name: str
    target: float | None
    reason: str

    @property
    def text(self) -> str:
        return f"not reached: {self.reason}" if self.reason else "not reached"


def _not_reached_record(raw: object) -> NotReached | None:
    """The :class:`NotReached` of a parsed eval file, ``None`` when it is not such a record."""
    if not isinstance(raw, dict) or raw.get("not_reached") is not True:
        return None
    name, target, reason = raw.get("model_name"), raw.get("target"), raw.get("reason", "")
    if not isinstance(name, str) or not name:
        raise ValueError("not_reached record: key 'model_name': expected a non-empty string")
    if target is not None and (isinstance(target, bool) or not isinstance(target, int | float)):
        raise ValueError(f"not_reached record: key 'target': expected a number or null, got {target!r}")
    if not isinstance(reason, str):
        raise ValueError(f"not_reached record: key 'reason': expected a string, got {reason!r}")
    return NotReached(name, None if target is None else float(target), reason)


def _read_eval_or_not_reached(path: Path) -> EvalResult | NotReached:
    """An eval file, or the not-reached record a matched arm's eval step writes instead."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raw = None  # read_eval says what is wrong with it
    record = _not_reached_record(raw)
    return record if record is not None else read_eval(path)


@dataclass(frozen=True)
class Stage1Run:
    """One Stage-1 training run and the arms that are its checkpoints.

    Attributes:
        name: its folder under ``stage1/`` (the arm that is its ``final/``, else its first arm).
        arms: the arms read from it, in report order.
        result: its ``stage1/<name>/result.json`` (``None``: missing or unreadable).
        grid: its ``stage1/<name>/grid.json`` (``None``: no learning-rate grid, or missing).
    """

    name: str
    arms: tuple[ArmInfo, ...]
    result: dict | None = None
    grid: dict | None = None

    @property
    def method(self) -> str:
        return next((a.method for a in self.arms if a.method), "")


def arms_from_models(models: Iterable[str]) -> list[ArmInfo]:
    """The fallback arms of the models found in ``eval/`` file names (see the module docstring)."""
    default = dict(DEFAULT_ARMS)
    found = dict.fromkeys(stage1_arm(m) for m in models)
    names = [a for a in found if a not in (BASE_MODEL, TEACHER_MODEL)]
    ordered = [a for a in default if a in names] + [a for a in names if a not in default]
    return [ArmInfo(a, default.get(seed_group(a), a), seed=_name_seed(a)) for a in ordered]


def model_role(model: str, arms: list[ArmInfo]) -> str:
    """What a model name stands for in a study with ``arms``."""
    labels = {a.name: a.label for a in arms}
    if model == BASE_MODEL:
        return "student before post-training"
    if model == TEACHER_MODEL:
        return "OPD teacher"
    if model in labels:
        return f"Stage-1: {labels[model]}"
    arm = stage1_arm(model)
    if arm != model and arm in labels:
        return f"Stage-2: GRPO from {arm}"
    return "other"


@dataclass
class RunData:
    """Everything read from a run directory, plus what could not be read."""

    run_dir: Path
    evals: dict[tuple[str, str], EvalResult]  # (model, split) -> eval
    logs: dict[tuple[int, str], list[dict]]  # (stage, arm) -> metrics rows
    models: list[str]  # study models, then others found, in report order
    splits: list[str]  # in-domain, OOD, then other splits found (not the blank-image ablation)
    status: dict[str, str]  # relative path -> "read" | "missing" | "unreadable: ..."
    notes: list[str] = field(default_factory=list)
    arms: list[ArmInfo] = field(default_factory=list)  # report order; the first is the reference
    ablation_splits: list[str] = field(default_factory=list)  # BLANK_SPLIT when its files exist
    stage1_results: dict[str, dict] = field(default_factory=dict)  # arm -> stage1/<arm>/result.json
    families: dict[str, dict[str, str]] = field(default_factory=dict)  # split -> problem id -> family
    config: dict = field(default_factory=dict)  # study_config.json as read ({} without it)
    not_reached: dict[tuple[str, str], NotReached] = field(default_factory=dict)  # (model, split) -> record
    stage0: dict | None = None  # stage0.json (None: absent, missing or unreadable)
    grids: dict[str, dict] = field(default_factory=dict)  # Stage-1 run -> stage1/<run>/grid.json

    def eval(self, model: str, split: str) -> EvalResult | None:
        return self.evals.get((model, split))

    def unreached(self, model: str, split: str) -> NotReached | None:
        """The not-reached record standing for ``model`` on ``split`` (``None``: an eval file or missing)."""
        return self.not_reached.get((model, split))

    def has_stage2(self, arm: str) -> bool:
        """Whether ``arm`` has a Stage-2 run (``grpo`` in study_config.json; unknown arms: yes)."""
        info = self.arm_info(arm)
        return info.grpo if info is not None else True

    @property
    def stage2_arms(self) -> list[str]:
        """The arms with a Stage-2 run, in report order."""
        return [a.name for a in self.arms if a.grpo]

    def stage1_run_name(self, arm: str) -> str:
        """The Stage-1 run ``arm`` is a checkpoint of: its result's ``derived_from``, else the config's grouping."""
        src = self.stage1_results.get(arm, {}).get("derived_from")
        if isinstance(src, str) and src and Path(src).name in self.arm_names:
            return Path(src).name
        return _config_run_homes(self.config).get(arm, arm)

    def stage1_runs(self) -> list[Stage1Run]:
        """Every Stage-1 run of the study and the arms read from it, in order of first arm."""
        runs: dict[str, list[ArmInfo]] = {}
        for a in self.arms:
            runs.setdefault(self.stage1_run_name(a.name), []).append(a)
        return [
            Stage1Run(n, tuple(arms), self.stage1_results.get(n), self.grids.get(n))
            for n, arms in runs.items()
        ]

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.arms]

    @property
    def reference_arm(self) -> str | None:
        """The arm every other arm is compared with (the first), ``None`` without arms."""
        return self.arms[0].name if self.arms else None

    def role(self, model: str) -> str:
        return model_role(model, self.arms)

    @property
    def groups(self) -> dict[str, list[ArmInfo]]:
        """Arm -> its seed replicas, both in report order (one replica per arm in a one-seed run)."""
        out: dict[str, list[ArmInfo]] = {}
        for a in self.arms:
            out.setdefault(a.group, []).append(a)
        return out

    def arm_info(self, name: str) -> ArmInfo | None:
        return next((a for a in self.arms if a.name == name), None)

    def shared_run(self, arm: str) -> tuple[str, int] | None:
        """``(run arm, step)`` when ``arm``'s Stage-1 log is a checkpoint of another arm's run.

        From ``stage1/<arm>/result.json``'s ``derived_from`` (the run's folder) and
        ``best_step``, as the study writes them for an arm that is a run's ``best/``
        (the toy's ``sft_early`` is ``sft_over``'s best checkpoint); ``None`` otherwise.
        """
        res = self.stage1_results.get(arm, {})
        # v2's arm views name their checkpoint and its step; older ones were always best/ at best_step
        src = res.get("derived_from")
        step = res.get("step") if "checkpoint" in res else res.get("best_step")
        if not isinstance(src, str) or type(step) is not int or res.get("reached") is False:
            return None
        owner = Path(src).name
        if owner == arm or owner not in self.arm_names:
            return None
        return owner, step

    @property
    def missing(self) -> list[str]:
        return [p for p, s in self.status.items() if s == "missing"]

    @property
    def unreadable(self) -> dict[str, str]:
        return {p: s for p, s in self.status.items() if s.startswith("unreadable")}

    def read(self, rel: str, reader: Callable[[Path], T], errors: tuple[type[Exception], ...]) -> T | None:
        """``reader(path)`` of ``rel``, its status recorded; ``None`` when missing or unreadable."""
        path = self.run_dir / rel
        if not path.exists():
            self.status[rel] = "missing"
            return None
        try:
            value = reader(path)
        except errors as e:
            self.status[rel] = f"unreadable: {e}"
            return None
        self.status[rel] = "read"
        return value


def _read_metrics_jsonl(path: Path, rel: str, notes: list[str]) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            notes.append(f"{rel} line {i}: not JSON ({e.msg}); line skipped")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            notes.append(f"{rel} line {i}: no integer 'step'; line skipped")
            continue
        rows.append(row)
    return rows


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _read_families(path: Path) -> dict[str, str]:
    """Problem id -> ``meta.family`` of a warmstart-jsonl problem file (rows without one are left out)."""
    out = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {i}: not JSON ({e.msg})") from None
        meta = row.get("meta") if isinstance(row, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("family"), str) and isinstance(row.get("id"), str):
            out[row["id"]] = meta["family"]
    return out


def _load_families(data: RunData) -> None:
    """Family labels of every evaluated split: ``<run>/data/<split>.jsonl``, else beside the eval's data path."""
    for split in data.splits:
        ev = next((e for (m, s), e in data.evals.items() if s == split), None)
        if ev is None:
            continue
        rel = f"data/{split}.jsonl"
        if (data.run_dir / rel).exists():
            fam = data.read(rel, _read_families, (OSError, UnicodeDecodeError, ValueError))
        else:  # a run directory copied elsewhere keeps its data/; otherwise the path the eval names
            path = Path(ev.data.path)
            path = path / f"{split}.jsonl" if path.is_dir() else path
            fam = None
            if path.suffix == ".jsonl" and path.is_file():
                try:
                    fam = _read_families(path)
                except (OSError, UnicodeDecodeError, ValueError) as e:
                    data.notes.append(f"{path}: family labels not readable ({e})")
        if fam:
            data.families[split] = fam


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read every expected (and every other well-named) file of a run directory; never raises on bad files."""
    run_dir = Path(run_dir)
    found: list[tuple[str, str]] = []
    eval_dir = run_dir / "eval"
    if eval_dir.is_dir():
        found = [ms for p in sorted(eval_dir.glob("*.json")) if (ms := parse_eval_filename(p.name))]
    data = RunData(run_dir=run_dir, evals={}, logs={}, models=[], splits=[], status={})
    arms = None
    if (run_dir / STUDY_CONFIG).exists():
        arms = data.read(STUDY_CONFIG, arms_from_study_config, (ValueError,))
        if arms is None:
            data.notes.append(f"{STUDY_CONFIG} has no usable arm list; arms taken from the eval file names")
        else:
            data.config = _read_json_object(run_dir / STUDY_CONFIG)
    data.arms = arms if arms is not None else arms_from_models(m for m, _ in found)
    # every arm's own model; a Stage-2 endpoint only of an arm with a Stage-2 run
    expected = [
        m for m in study_models(data.arm_names) if m == stage1_arm(m) or data.has_stage2(stage1_arm(m))
    ]
    data.models = list(dict.fromkeys([*expected, *(m for m, _ in found)]))
    all_splits = list(dict.fromkeys([*SPLITS, *(s for _, s in found)]))
    data.splits = [s for s in all_splits if s != BLANK_SPLIT]
    data.ablation_splits = [s for s in all_splits if s == BLANK_SPLIT]
    wanted = list(dict.fromkeys([*((m, s) for m in expected for s in SPLITS), *found]))
    for model, split in wanted:
        rel = eval_relpath(model, split)
        ev = data.read(rel, _read_eval_or_not_reached, (EvalSchemaError, ValueError))
        if ev is None:
            continue
        if isinstance(ev, NotReached):
            data.not_reached[(model, split)] = ev
            if ev.model_name != model:
                data.notes.append(
                    f"{rel}: the not-reached record says model {ev.model_name!r}; reported as {model!r}"
                )
            continue
        # the blank-image ablation is the in-domain split with its images blanked: its files say "validation"
        said = "validation" if split == BLANK_SPLIT else split
        if ev.model.name != model or ev.data.split != said:
            data.notes.append(
                f"{rel}: the file says model {ev.model.name!r}, split {ev.data.split!r}; "
                f"reported under its file name ({model!r}, {split!r})"
            )
        data.evals[(model, split)] = ev
    v2 = any(k in data.config for k in ("stage0", "lr_grid"))  # a study v2 config: its files are expected
    for arm in data.arm_names:
        rel = f"stage1/{arm}/result.json"
        if v2 or (run_dir / rel).exists():
            res = data.read(rel, _read_json_object, (OSError, UnicodeDecodeError, ValueError))
            if res is not None:
                data.stage1_results[arm] = res
    for stage in (1, 2):
        for arm in data.arm_names:
            rel = metrics_relpath(stage, arm)
            # no log of an arm without Stage 2, nor of a matched checkpoint never reached (unless one is there)
            unexpected = (
                not data.has_stage2(arm)
                if stage == 2
                else data.stage1_results.get(arm, {}).get("reached") is False
            )
            if unexpected and not (run_dir / rel).exists():
                continue
            rows = data.read(
                rel, lambda p, rel=rel: _read_metrics_jsonl(p, rel, data.notes), (OSError, UnicodeDecodeError)
            )
            if rows is not None:
                data.logs[(stage, arm)] = rows
    if data.config.get("stage0") or (run_dir / STAGE0).exists():
        data.stage0 = data.read(STAGE0, _read_json_object, (OSError, UnicodeDecodeError, ValueError))
    grid_expected = bool(data.config.get("lr_grid"))
    for run in data.stage1_runs():
        rel = f"stage1/{run.name}/{GRID}"
        if (grid_expected and _name_seed(run.name) is None) or (run_dir / rel).exists():
            grid = data.read(rel, _read_json_object, (OSError, UnicodeDecodeError, ValueError))
            if grid is not None:
                data.grids[run.name] = grid
    _load_families(data)
    return data

"""The records of one ``eval.json`` (schema ``warmstart.eval/v1``) and the schema's cross-field rules.

The layout of the file is documented in :mod:`warmstart.evaluate_schema`; this module
holds its dataclasses (one per JSON object), their conversion to JSON-ready values and
:func:`validate`. Parsing and file I/O are in :mod:`warmstart.evaluate_schema.jsonio`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from warmstart import __version__
from warmstart import metrics as M

SCHEMA = "warmstart.eval/v1"
SCHEMA_PREFIX = "warmstart.eval/"
"""Every version of the schema starts with this (a reader names an unsupported version as such)."""


class EvalSchemaError(ValueError):
    """An eval file (or object) does not follow the schema; the message names the file and the key."""


@dataclass
class ModelInfo:
    """Which model was evaluated: its study name and where it was loaded from."""

    name: str
    path: str


@dataclass
class DataInfo:
    """Which problems: file/folder, split, count and ids in ``per_problem`` order."""

    path: str
    split: str
    n_problems: int
    problem_ids: list[str]


@dataclass
class DecodingSettings:
    """The file's ``settings`` block: ``n`` samples per problem at ``temperature``/``top_p``, plus greedy or not.

    What an evaluation recorded about how it decoded; the settings an evaluation *runs*
    with are :class:`warmstart.evaluate.EvalSettings` (its ``decoding()`` gives this record).
    """

    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    greedy: bool


@dataclass
class BootstrapInfo:
    """Resamples ``B``, ``seed`` and ``alpha`` of the summary intervals."""

    B: int
    seed: int
    alpha: float


@dataclass
class GreedyResult:
    """The greedy (temperature 0) response to one problem."""

    text: str
    extracted: str | None
    correct: bool
    format_ok: bool
    length: int
    entropy_mean: float | None


@dataclass
class SampleResult:
    """One sampled response (text not stored)."""

    extracted: str | None
    normalized: str
    correct: bool
    format_ok: bool
    length: int
    entropy_mean: float | None
    entropy_sum: float | None


@dataclass
class ProblemResult:
    """Everything measured on one problem."""

    id: str
    answer: str
    greedy: GreedyResult | None
    samples: list[SampleResult]


@dataclass
class Interval:
    """A value with its bootstrap interval ``[lo, hi]``."""

    value: float
    lo: float
    hi: float

    @classmethod
    def from_ci(cls, ci: M.CI) -> Interval:
        return cls(float(ci.point), float(ci.lo), float(ci.hi))

    def excludes_zero(self) -> bool:
        """True when the whole interval is on one side of 0 (a difference "beyond noise")."""
        return self.lo > 0 or self.hi < 0


@dataclass
class TeacherForcedEntropy:
    """Entropy on a fixed probe set of reference responses (independent of what the model samples)."""

    probe: str
    n_sequences: int
    n_tokens: int
    token_mean: Interval
    seq_mean: Interval


@dataclass(kw_only=True)
class EvalResult:
    """One ``eval.json``. ``source`` is the file it was read from (not stored in the file)."""

    schema: str = SCHEMA
    producer: str = f"warmstart {__version__}"
    created: str
    model: ModelInfo
    data: DataInfo
    settings: DecodingSettings
    bootstrap: BootstrapInfo
    per_problem: list[ProblemResult]
    summary: dict[str, Interval]
    teacher_forced_entropy: TeacherForcedEntropy | None = None
    source: str | None = field(default=None, compare=False, metadata={"json": False})

    @property
    def label(self) -> str:
        """Name for messages: the file when known, else the model name."""
        return self.source or f"<{self.model.name}>"

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the file (without ``source``)."""
        return _to_json(self)


def _to_json(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {
            f.name: _to_json(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.metadata.get("json", True)
        }
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# --------------------------------------------------------------------------- validation


def validate(result: EvalResult) -> None:
    """Check the cross-field rules of the schema; :class:`EvalSchemaError` names the file and key."""

    def fail(key: str, msg: str) -> typing.NoReturn:
        raise EvalSchemaError(f"{result.label}: key '{key}': {msg}")

    if result.schema != SCHEMA:
        fail("schema", f"expected {SCHEMA!r}, got {result.schema!r}")
    ids = [p.id for p in result.per_problem]
    if result.data.n_problems != len(ids):
        fail("data.n_problems", f"says {result.data.n_problems} but per_problem has {len(ids)} rows")
    if result.data.problem_ids != ids:
        fail("data.problem_ids", "differs from the ids of per_problem (same ids in the same order required)")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        fail("per_problem", f"duplicate problem id {dup!r}")
    s = result.settings
    if s.n < 0:
        fail("settings.n", f"must be >= 0, got {s.n}")
    if s.n == 0 and not s.greedy:
        fail("settings", "n = 0 and greedy = false: nothing was evaluated")
    for i, p in enumerate(result.per_problem):
        if (p.greedy is not None) != s.greedy:
            want = "set" if s.greedy else "null"
            fail(
                f"per_problem[{i}].greedy",
                f"problem {p.id!r}: must be {want} when settings.greedy is {s.greedy}",
            )
        if len(p.samples) != s.n:
            fail(
                f"per_problem[{i}].samples",
                f"problem {p.id!r} has {len(p.samples)} samples, settings.n = {s.n}",
            )
        if p.greedy is not None and p.greedy.length < 0:
            fail(f"per_problem[{i}].greedy.length", "must be >= 0")
        for j, smp in enumerate(p.samples):
            if smp.length < 0:
                fail(f"per_problem[{i}].samples[{j}].length", "must be >= 0")
    if result.bootstrap.B < 1:
        fail("bootstrap.B", "must be >= 1")

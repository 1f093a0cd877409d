"""The ``eval.json`` file (schema ``warmstart.eval/v1``): dataclasses, JSON I/O, summary, paired comparison.

One file holds the evaluation of one model on one split. :mod:`warmstart.evaluate` runs
the model and fills :class:`ProblemResult` rows; this module turns them into the
summary (with bootstrap intervals from :mod:`warmstart.metrics`), writes and reads the
file, and compares two files problem by problem. It also defines the run-directory
names of eval files and training logs (bottom of this docstring), so the writer
(``study.py``) and the reader (``report.py``) share one definition.

File layout (JSON object; all keys required unless marked optional)
--------------------------------------------------------------------
``schema``      ``"warmstart.eval/v1"``. Readers refuse any other value; a change to the
                meaning or the set of keys below bumps the version.
``producer``    ``"warmstart <version>"`` of the code that wrote the file.
``created``     ISO-8601 UTC time the file was written (``2025-01-31T12:00:00Z``).
``model``       ``name``: the model's name in the study (``base``, ``opd+grpo``, ...);
                ``path``: checkpoint directory or hub id it was loaded from.
``data``        ``path``: problem file/folder; ``split``: split name (``validation``,
                ``ood``, ...); ``n_problems``: number of problems; ``problem_ids``: their ids
                in the order of ``per_problem`` (the order paired comparisons use).
``settings``    ``n``: sampled responses per problem (0 = greedy only); ``temperature``,
                ``top_p``, ``max_new_tokens``: sampling parameters of those samples;
                ``seed``: sampling seed; ``greedy``: whether one greedy (temperature 0)
                response per problem was decoded as well.
``bootstrap``   ``B`` resamples, ``seed`` and ``alpha`` of the summary's intervals
                (problems are the resampling unit; percentile intervals).
``per_problem`` one object per problem, in ``data.problem_ids`` order:
    ``id``        problem id; ``answer``: ground truth (as in the problem file);
    ``greedy``    ``null`` when ``settings.greedy`` is false, else
                  ``text`` (decoded response), ``extracted`` (final answer found in it, or
                  ``null``), ``correct``, ``format_ok`` (``<think>`` + ``\\boxed{}`` kept),
                  ``length`` (response tokens, EOS included), ``entropy_mean`` (mean
                  full-vocabulary entropy over those tokens, nats; ``null`` if not computed);
    ``samples``   exactly ``settings.n`` objects: ``extracted``, ``normalized`` (the
                  normalised answer used for diversity; unparseable = ``"none"``),
                  ``correct``, ``format_ok``, ``length``, ``entropy_mean`` and
                  ``entropy_sum`` (sum of the per-token entropies, nats; ``entropy_sum /
                  length`` = ``entropy_mean``; both ``null`` if not computed, 0 when
                  ``length`` is 0). Sample texts are not stored (size).
``summary``     metric name -> ``{"value", "lo", "hi"}``: the value and its 95% (1-alpha)
                bootstrap interval. Fractions are in [0, 1], not percent. Keys, in order
                (a key is absent when its inputs are: greedy ones without greedy,
                sampled ones when ``n`` = 0, entropy ones when entropies are ``null``):
    ``greedy_accuracy``      fraction of problems whose greedy answer is correct;
    ``greedy_format_rate``   fraction of greedy responses with the format kept;
    ``greedy_length_mean``   mean greedy response length (tokens);
    ``pass@k``               for k = 1, 2, 4, ... up to ``n`` (and ``n`` itself): unbiased
                             pass@k averaged over problems; ``pass@1`` is the mean sampled
                             accuracy;
    ``distinct_answers_mean`` mean over problems of the number of distinct normalised answers;
    ``answer_entropy_mean``  mean over problems of the Shannon entropy (nats) of the answers;
    ``entropy_token_mean``   policy entropy, token-weighted: all samples' entropy sums / all
                             their tokens (a ratio of sums, bootstrapped as such);
    ``entropy_seq_mean``     policy entropy, mean over problems of the mean over samples of
                             each sample's ``entropy_mean``;
    ``response_length_mean`` mean over problems of the mean sample length (tokens);
    ``format_rate``          mean over problems of the fraction of samples with format kept.
``teacher_forced_entropy`` optional (``null``): entropy of the model on a fixed probe set of
                reference responses: ``probe`` (its path or name), ``n_sequences``,
                ``n_tokens``, ``token_mean`` and ``seq_mean`` as ``{"value", "lo", "hi"}``
                (probe sequences are the resampling unit).

Numbers are finite: the writer refuses NaN/inf, so the file is strict JSON.

Run-directory naming (one place)
--------------------------------
Models of the study: ``base`` (student before Stage-1), ``teacher``, the Stage-1 arms
``sft_early``, ``sft_over``, ``opd`` (:data:`STAGE1_ARMS`), and their Stage-2 (GRPO)
endpoints ``<arm>+grpo`` (:func:`stage2_model`). Splits: ``validation`` (in-domain)
and ``ood`` (out-of-domain) (:data:`SPLITS`). Files, relative to the run directory:
``eval/<model>__<split>.json`` (:func:`eval_relpath`), ``stage1/<arm>/metrics.jsonl`` and
``stage2/<arm>/metrics.jsonl`` (:func:`metrics_relpath`; the Stage-2 directory is named
by the arm it started from).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import numpy as np

from warmstart import __version__
from warmstart import metrics as M

__all__ = [
    "SCHEMA",
    "EvalSchemaError",
    "ModelInfo",
    "DataInfo",
    "EvalSettings",
    "BootstrapInfo",
    "GreedyResult",
    "SampleResult",
    "ProblemResult",
    "Interval",
    "TeacherForcedEntropy",
    "EvalResult",
    "MetricInfo",
    "pass_k_values",
    "metric_names",
    "metric_info",
    "problem_values",
    "summarize",
    "teacher_forced_summary",
    "build_eval",
    "write_eval",
    "read_eval",
    "validate",
    "paired_compare",
    "BASE_MODEL",
    "TEACHER_MODEL",
    "STAGE1_ARMS",
    "REFERENCE_ARM",
    "STAGE2_SUFFIX",
    "SPLITS",
    "stage2_model",
    "study_models",
    "eval_relpath",
    "parse_eval_filename",
    "metrics_relpath",
]

SCHEMA = "warmstart.eval/v1"
_SCHEMA_PREFIX = "warmstart.eval/"

# ------------------------------------------------------------------ run-directory naming

BASE_MODEL = "base"
"""The student before any post-training."""
TEACHER_MODEL = "teacher"
"""The OPD teacher (a reference point, not trained by the study)."""
STAGE1_ARMS: tuple[str, ...] = ("sft_early", "sft_over", "opd")
"""Stage-1 warm-start arms, in report order."""
REFERENCE_ARM = "sft_early"
"""The arm every other arm is compared with (paired differences)."""
STAGE2_SUFFIX = "+grpo"
"""A Stage-2 endpoint is named ``<arm>+grpo`` after the Stage-1 arm it started from."""
SPLITS: dict[str, str] = {"validation": "in-domain", "ood": "out-of-domain"}
"""Evaluation splits and what they measure, in report order."""

BLANK_SPLIT = "validation_blank"
"""File-name split of the text-only ablation: the in-domain split with every image blanked
(base student and teacher only; it shows how much accuracy comes from reading the diagram)."""


def stage2_model(arm: str) -> str:
    """Name of the Stage-2 endpoint started from Stage-1 ``arm`` (``opd`` -> ``opd+grpo``)."""
    return arm + STAGE2_SUFFIX


def study_models() -> list[str]:
    """All model names of the study in report order: base, teacher, arms, arm endpoints."""
    return [BASE_MODEL, TEACHER_MODEL, *STAGE1_ARMS, *[stage2_model(a) for a in STAGE1_ARMS]]


def eval_relpath(model: str, split: str) -> str:
    """``eval/<model>__<split>.json``, relative to the run directory."""
    return f"eval/{model}__{split}.json"


def parse_eval_filename(filename: str) -> tuple[str, str] | None:
    """``"opd+grpo__ood.json"`` -> ``("opd+grpo", "ood")``; ``None`` for other names."""
    if not filename.endswith(".json") or "__" not in filename:
        return None
    model, _, split = filename[: -len(".json")].rpartition("__")
    return (model, split) if model and split else None


def metrics_relpath(stage: int, arm: str) -> str:
    """``stage<stage>/<arm>/metrics.jsonl``, relative to the run directory (stage 1 or 2)."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    return f"stage{stage}/{arm}/metrics.jsonl"


# ---------------------------------------------------------------------------- dataclasses


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
class EvalSettings:
    """Decoding settings: ``n`` samples per problem at ``temperature``/``top_p``, plus greedy or not."""

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
    settings: EvalSettings
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


# ------------------------------------------------------------------- JSON -> dataclasses


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _from_json(tp: Any, value: Any, where: str) -> Any:
    """Convert parsed JSON ``value`` to type ``tp``; :class:`EvalSchemaError` names ``where`` on mismatch."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(get_args(tp)):
            return None
        if len(args) != 1:  # only ``X | None`` occurs in this schema
            raise TypeError(f"unsupported union {tp}")
        return _from_json(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise EvalSchemaError(f"key '{where}': expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = [f for f in dataclasses.fields(tp) if f.metadata.get("json", True)]
        names = {f.name for f in fields}
        unknown = sorted(set(value) - names)
        if unknown:
            raise EvalSchemaError(f"key '{_join(where, unknown[0])}': unknown key (valid: {sorted(names)})")
        kwargs = {}
        for f in fields:
            if f.name not in value:
                if f.default is None:  # optional keys (``X | None = None``) may be left out
                    continue
                raise EvalSchemaError(f"key '{_join(where, f.name)}': missing")
            kwargs[f.name] = _from_json(hints[f.name], value[f.name], _join(where, f.name))
        return tp(**kwargs)
    if origin is list:
        if not isinstance(value, list):
            raise EvalSchemaError(f"key '{where}': expected a list, got {type(value).__name__}")
        (arg,) = get_args(tp)
        return [_from_json(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise EvalSchemaError(f"key '{where}': expected an object, got {type(value).__name__}")
        _, arg = get_args(tp)
        return {k: _from_json(arg, v, _join(where, k)) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise EvalSchemaError(f"key '{where}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EvalSchemaError(f"key '{where}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise EvalSchemaError(f"key '{where}': expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise EvalSchemaError(f"key '{where}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported type {_type_name(tp)} at {where}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# ----------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class MetricInfo:
    """How to show a summary metric: ``kind`` is ``fraction`` (shown in %), ``count``, ``nats`` or ``tokens``."""

    name: str
    label: str
    kind: str
    description: str


_FIXED_METRICS: dict[str, tuple[str, str, str]] = {
    "greedy_accuracy": ("greedy acc", "fraction", "greedy (temperature 0) accuracy"),
    "greedy_format_rate": ("greedy format", "fraction", "greedy responses with <think> + \\boxed{} kept"),
    "greedy_length_mean": ("greedy len", "tokens", "mean greedy response length"),
    "distinct_answers_mean": ("distinct ans", "count", "mean number of distinct normalised answers"),
    "answer_entropy_mean": ("answer H", "nats", "mean Shannon entropy of the answer distribution"),
    "entropy_token_mean": ("entropy/token", "nats", "policy entropy, token-weighted mean over samples"),
    "entropy_seq_mean": ("entropy/seq", "nats", "policy entropy, mean over problems of per-sequence means"),
    "response_length_mean": ("sample len", "tokens", "mean sampled response length"),
    "format_rate": ("format", "fraction", "sampled responses with <think> + \\boxed{} kept"),
}
_RATIO_METRICS = {"entropy_token_mean"}


def pass_k_values(n: int) -> list[int]:
    """The k of the summary's pass@k: 1, 2, 4, ... up to ``n``, and ``n`` itself (empty for n = 0)."""
    ks = []
    k = 1
    while k <= n:
        ks.append(k)
        k *= 2
    if n >= 1 and ks[-1] != n:
        ks.append(n)
    return ks


def metric_info(name: str) -> MetricInfo:
    """Display information for a summary metric name (``pass@k`` for any k included)."""
    if name in _FIXED_METRICS:
        return MetricInfo(name, *_FIXED_METRICS[name])
    k = _pass_k(name)
    if k is not None:
        what = "mean sampled accuracy" if k == 1 else f"unbiased pass@{k}"
        return MetricInfo(name, name, "fraction", what)
    raise KeyError(name)


def _pass_k(name: str) -> int | None:
    if name.startswith("pass@") and name[5:].isdigit() and int(name[5:]) >= 1:
        return int(name[5:])
    return None


def _has_entropy(per_problem: list[ProblemResult]) -> bool:
    samples = [s for p in per_problem for s in p.samples]
    return bool(samples) and all(s.entropy_mean is not None and s.entropy_sum is not None for s in samples)


def metric_names(per_problem: list[ProblemResult], n: int) -> list[str]:
    """The summary metrics these rows support, in the canonical order of the file."""
    names: list[str] = []
    if per_problem and all(p.greedy is not None for p in per_problem):
        names += ["greedy_accuracy", "greedy_format_rate", "greedy_length_mean"]
    if n >= 1:
        names += [f"pass@{k}" for k in pass_k_values(n)]
        names += ["distinct_answers_mean", "answer_entropy_mean"]
        if _has_entropy(per_problem):
            names += ["entropy_token_mean", "entropy_seq_mean"]
        names += ["response_length_mean", "format_rate"]
    return names


def problem_values(per_problem: list[ProblemResult], name: str) -> np.ndarray:
    """Per-problem values of summary metric ``name``.

    Shape ``(P,)`` for metrics that are means over problems; for the one ratio metric
    (``entropy_token_mean``) shape ``(2, P)``: row 0 the numerator (entropy sums), row 1 the
    denominator (token counts) of each problem. Raises ``ValueError`` when a problem lacks
    what the metric needs.
    """

    def greedy(p: ProblemResult) -> GreedyResult:
        if p.greedy is None:
            raise ValueError(f"metric {name}: problem {p.id!r} has no greedy result")
        return p.greedy

    def samples(p: ProblemResult) -> list[SampleResult]:
        if not p.samples:
            raise ValueError(f"metric {name}: problem {p.id!r} has no samples")
        return p.samples

    def entropies(p: ProblemResult, attr: str) -> list[float]:
        vals = [getattr(s, attr) for s in samples(p)]
        if any(v is None for v in vals):
            raise ValueError(f"metric {name}: problem {p.id!r} has samples without {attr}")
        return vals

    k = _pass_k(name)
    if k is not None:
        n_P = [len(samples(p)) for p in per_problem]
        c_P = [sum(s.correct for s in p.samples) for p in per_problem]
        return M.pass_at_k_array(n_P, c_P, k)
    if name == "entropy_token_mean":
        num = [sum(entropies(p, "entropy_sum")) for p in per_problem]
        den = [sum(s.length for s in p.samples) for p in per_problem]
        return np.array([num, den], dtype=np.float64)
    per: dict[str, typing.Callable[[ProblemResult], float]] = {
        "greedy_accuracy": lambda p: float(greedy(p).correct),
        "greedy_format_rate": lambda p: float(greedy(p).format_ok),
        "greedy_length_mean": lambda p: float(greedy(p).length),
        "distinct_answers_mean": lambda p: M.answer_diversity([s.normalized for s in samples(p)])[0],
        "answer_entropy_mean": lambda p: M.answer_diversity([s.normalized for s in samples(p)])[1],
        "entropy_seq_mean": lambda p: float(np.mean(entropies(p, "entropy_mean"))),
        "response_length_mean": lambda p: float(np.mean([s.length for s in samples(p)])),
        "format_rate": lambda p: float(np.mean([s.format_ok for s in samples(p)])),
    }
    if name not in per:
        valid = [*_FIXED_METRICS, "pass@<k>"]
        raise ValueError(f"unknown metric {name!r}; valid: {valid}")
    return np.array([per[name](p) for p in per_problem], dtype=np.float64)


def summarize(
    per_problem: list[ProblemResult],
    n: int,
    B: int = M.DEFAULT_B,
    seed: int = 0,
    alpha: float = M.DEFAULT_ALPHA,
) -> dict[str, Interval]:
    """The ``summary`` block: every supported metric (:func:`metric_names`) with its bootstrap interval.

    All metrics are resampled on the same problem sets (one seed). ``n`` is the number
    of samples per problem (``settings.n``); every problem must have exactly ``n``.
    """
    if not per_problem:
        raise ValueError("summarize: no problems")
    for p in per_problem:
        if len(p.samples) != n:
            raise ValueError(f"summarize: problem {p.id!r} has {len(p.samples)} samples, settings say n={n}")
    names = metric_names(per_problem, n)
    mean_names = [m for m in names if m not in _RATIO_METRICS]
    out: dict[str, Interval] = {}
    if mean_names:
        values_MP = np.stack([problem_values(per_problem, m) for m in mean_names])
        point, lo, hi = M.bootstrap_many(values_MP, B, seed, alpha)
        for i, m in enumerate(mean_names):
            out[m] = Interval(float(point[i]), float(lo[i]), float(hi[i]))
    for m in names:
        if m in _RATIO_METRICS:
            num_P, den_P = problem_values(per_problem, m)
            out[m] = Interval.from_ci(M.bootstrap_ratio(num_P, den_P, B, seed, alpha))
    return {m: out[m] for m in names}


def teacher_forced_summary(
    probe: str,
    entropy_per_seq: list[np.ndarray] | list[list[float]],
    B: int = M.DEFAULT_B,
    seed: int = 0,
    alpha: float = M.DEFAULT_ALPHA,
) -> TeacherForcedEntropy:
    """Summarise per-token entropies on a probe set (one array per reference response).

    Probe sequences are the resampling unit; the token mean is bootstrapped as a ratio of sums.
    """
    arrays = [np.asarray(e, dtype=np.float64).ravel() for e in entropy_per_seq]
    nonempty = [a for a in arrays if a.size]
    if not nonempty:
        raise ValueError(f"teacher_forced_summary: probe {probe!r} has no tokens")
    token_mean, seq_mean = M.token_entropy_summary(arrays)
    tok = M.bootstrap_ratio([a.sum() for a in nonempty], [a.size for a in nonempty], B, seed, alpha)
    seq = M.bootstrap_ci([a.mean() for a in nonempty], B, seed, alpha)
    return TeacherForcedEntropy(
        probe=probe,
        n_sequences=len(arrays),
        n_tokens=int(sum(a.size for a in arrays)),
        token_mean=Interval(token_mean, tok.lo, tok.hi),
        seq_mean=Interval(seq_mean, seq.lo, seq.hi),
    )


def build_eval(
    *,
    model: ModelInfo,
    data_path: str,
    split: str,
    settings: EvalSettings,
    per_problem: list[ProblemResult],
    B: int = M.DEFAULT_B,
    seed: int = 0,
    alpha: float = M.DEFAULT_ALPHA,
    teacher_forced_entropy: TeacherForcedEntropy | None = None,
    created: str | None = None,
) -> EvalResult:
    """Assemble a complete, validated :class:`EvalResult` from per-problem rows (summary computed here)."""
    result = EvalResult(
        created=created or _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model=model,
        data=DataInfo(
            path=data_path, split=split, n_problems=len(per_problem), problem_ids=[p.id for p in per_problem]
        ),
        settings=settings,
        bootstrap=BootstrapInfo(B=B, seed=seed, alpha=alpha),
        per_problem=per_problem,
        summary=summarize(per_problem, settings.n, B, seed, alpha),
        teacher_forced_entropy=teacher_forced_entropy,
    )
    validate(result)
    return result


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


# ------------------------------------------------------------------------------ file I/O


def write_eval(path: str | os.PathLike, result: EvalResult) -> Path:
    """Validate and write ``result`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    validate(result)
    try:
        text = json.dumps(result.to_dict(), indent=1, allow_nan=False, ensure_ascii=False)
    except ValueError as e:  # NaN or inf somewhere
        raise EvalSchemaError(f"{path}: not writable as strict JSON ({e}); find the NaN/inf value") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_eval(path: str | os.PathLike) -> EvalResult:
    """Read and validate an ``eval.json``. Errors (:class:`EvalSchemaError`) name the file and the key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalSchemaError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise EvalSchemaError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    if not isinstance(raw, dict):
        raise EvalSchemaError(f"{path}: expected a JSON object at the top level, got {type(raw).__name__}")
    schema = raw.get("schema")
    if schema is None:
        raise EvalSchemaError(f"{path}: key 'schema': missing (expected {SCHEMA!r}); is this an eval file?")
    if schema != SCHEMA:
        if isinstance(schema, str) and schema.startswith(_SCHEMA_PREFIX):
            raise EvalSchemaError(
                f"{path}: key 'schema': unsupported version {schema!r}; this warmstart reads {SCHEMA!r}"
            )
        raise EvalSchemaError(f"{path}: key 'schema': expected {SCHEMA!r}, got {schema!r}")
    try:
        result = _from_json(EvalResult, raw, "")
    except EvalSchemaError as e:
        raise EvalSchemaError(f"{path}: {e}") from None
    result.source = str(path)
    validate(result)
    return result


# ---------------------------------------------------------------------- paired comparison


def _align(a: EvalResult, b: EvalResult) -> list[ProblemResult]:
    """``b``'s rows in ``a``'s problem order; raises when the problem sets (or their answers) differ."""
    ids_a = [p.id for p in a.per_problem]
    ids_b = [p.id for p in b.per_problem]
    if set(ids_a) != set(ids_b) or len(ids_a) != len(ids_b):
        M.check_same_problems(ids_a, ids_b, a.label, b.label)  # raises, naming both files
    by_id = {p.id: p for p in b.per_problem}
    rows = [by_id[i] for i in ids_a]
    for pa, pb in zip(a.per_problem, rows):
        if pa.answer != pb.answer:
            raise M.ProblemMismatchError(
                f"paired comparison: problem {pa.id!r} has answer {pa.answer!r} in {a.label} "
                f"but {pb.answer!r} in {b.label}: not the same data"
            )
    return rows


def paired_compare(
    eval_a: EvalResult,
    eval_b: EvalResult,
    metrics: list[str] | None = None,
    B: int = M.DEFAULT_B,
    seed: int = 0,
    alpha: float = M.DEFAULT_ALPHA,
) -> dict[str, Interval]:
    """Paired differences ``a - b`` of summary metrics, with problems resampled jointly.

    ``metrics`` defaults to every metric both files support. Problems are matched by
    id (``b`` is reordered to ``a``'s order); different problem sets or different
    ground truths raise :class:`warmstart.metrics.ProblemMismatchError` naming both files.
    """
    rows_b = _align(eval_a, eval_b)
    rows_a = eval_a.per_problem
    avail_a = metric_names(rows_a, eval_a.settings.n)
    avail_b = metric_names(rows_b, eval_b.settings.n)
    if metrics is None:
        metrics = [m for m in avail_a if m in avail_b]
    for m in metrics:
        for ev, avail in ((eval_a, avail_a), (eval_b, avail_b)):
            if m not in avail:
                raise ValueError(f"metric {m!r} is not available in {ev.label} (available: {avail})")
    mean_names = [m for m in metrics if m not in _RATIO_METRICS]
    out: dict[str, Interval] = {}
    if mean_names:
        diff_MP = np.stack([problem_values(rows_a, m) - problem_values(rows_b, m) for m in mean_names])
        point, lo, hi = M.bootstrap_many(diff_MP, B, seed, alpha)
        for i, m in enumerate(mean_names):
            out[m] = Interval(float(point[i]), float(lo[i]), float(hi[i]))
    for m in metrics:
        if m in _RATIO_METRICS:
            num_a, den_a = problem_values(rows_a, m)
            num_b, den_b = problem_values(rows_b, m)
            out[m] = Interval.from_ci(M.paired_ratio_diff_ci(num_a, den_a, num_b, den_b, B, seed, alpha))
    return {m: out[m] for m in metrics}

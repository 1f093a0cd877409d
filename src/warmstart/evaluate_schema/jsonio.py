"""``eval.json`` as JSON: parse into the records (errors name the file and the key), read and write files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

from warmstart.atomic import atomic_write_text
from warmstart.evaluate_schema.records import (
    SCHEMA,
    SCHEMA_PREFIX,
    EvalResult,
    EvalSchemaError,
    ProblemResult,
    validate,
)


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


def write_eval(path: str | os.PathLike, result: EvalResult) -> Path:
    """Validate and write ``result`` to ``path`` atomically (:func:`warmstart.atomic.atomic_write_text`)."""
    path = Path(path)
    validate(result)
    try:
        text = json.dumps(result.to_dict(), indent=1, allow_nan=False, ensure_ascii=False)
    except ValueError as e:  # NaN or inf somewhere
        raise EvalSchemaError(f"{path}: not writable as strict JSON ({e}); find the NaN/inf value") from e
    return atomic_write_text(path, text + "\n")


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
        if isinstance(schema, str) and schema.startswith(SCHEMA_PREFIX):
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


def problem_result_from_json(row: dict) -> ProblemResult:
    """One ``per_problem`` object (as parsed JSON) as a :class:`ProblemResult`; :class:`EvalSchemaError` if malformed."""
    return _from_json(ProblemResult, row, "per_problem")

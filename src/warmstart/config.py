"""Frozen, typed configs and the machinery that loads them.

Every entrypoint takes exactly one frozen dataclass config. Configs are built from
TOML (or plain dicts) with :func:`from_dict`, which

* checks every value against the field's type annotation (ints, floats, bools,
  strings, ``Literal`` choices, optionals, tuples and nested configs),
* rejects unknown keys with an error that names the nearest valid key,
* reports errors with the dotted path of the offending key (``grpo.clip_hig``).

Defaults live once: in the dataclass field. Every field is documented in the
``Attributes`` section of its class docstring.

The configs themselves live beside the code that uses them
(:mod:`warmstart.stages`, :mod:`warmstart.evaluate`, :mod:`warmstart.sampler`,
:mod:`warmstart.study`); the study's TOML nests them all (``warmstart.study.config``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

__all__ = ["ConfigError", "from_dict", "load_toml", "read_toml", "to_dict", "config_hash", "replace"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted key and the file."""


def _nearest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _check_value(value: Any, typ: Any, where: str) -> Any:
    """Return ``value`` converted to ``typ`` or raise :class:`ConfigError`."""
    origin = get_origin(typ)
    if typ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(typ)
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:  # ``X | None``: X's own message (e.g. the nearest key of a table)
            return _check_value(value, members[0], where)
        for arg in members:
            try:
                return _check_value(value, arg, where)
            except ConfigError:  # try the next member of the union
                continue
        raise ConfigError(f"{where}: {value!r} does not match {typ}")
    if origin is Literal:
        choices = get_args(typ)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(typ)
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        elif origin is tuple:
            item_types = list(args) if args else [Any] * len(value)
        else:
            item_types = [args[0] if args else Any] * len(value)
        return tuple(_check_value(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(typ):
        if isinstance(value, typ):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table for {typ.__name__}, got {value!r}")
        return from_dict(typ, value, _where=where)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(typ, type) and not isinstance(value, typ):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], _where: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, validating keys and types."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{_where}.{key}" if _where else key
        if key not in fields:
            raise ConfigError(
                f"unknown key '{where}' for {cls.__name__}{_nearest(key, sorted(fields))}; "
                f"valid keys: {', '.join(sorted(fields))}"
            )
        kwargs[key] = _check_value(value, hints[key], where)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{_where or cls.__name__}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{_where + ': ' if _where else ''}{e}") from None
    return obj


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML file; a missing or malformed file is a :class:`ConfigError`."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def load_toml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load ``cls`` from a TOML file (optionally from one top-level table ``section``)."""
    data = read_toml(path)
    if section is not None:
        if section not in data:
            raise ConfigError(f"{path}: no [{section}] table{_nearest(section, list(data))}")
        data = data[section]
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/TOML-ready dict of a config (tuples become lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(cfg)


def config_hash(*parts: Any, length: int = 12) -> str:
    """A stable short hash of configs and other JSON-able inputs (for caching)."""
    blob = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def replace(cfg: T, **changes: Any) -> T:
    """``dataclasses.replace`` that re-runs ``validate``."""
    new = dataclasses.replace(cfg, **changes)
    validate = getattr(new, "validate", None)
    if callable(validate):
        validate()
    return new

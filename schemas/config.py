"""Validated configs from dataclasses: a YAML file or flags become nested dataclasses, or an error naming the key.

Every config in rdtf (preprocess, train) is a tree of dataclasses whose fields have typed defaults. `from_dict`
refuses unknown keys and wrong types before any work starts; each dataclass checks its own ranges in
`__post_init__` with `require`.
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or is out of range. The message names the key."""


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError for `key` unless `condition` holds; used in `__post_init__` range checks."""
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def _convert(value: Any, kind: Any, key: str) -> Any:
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        return _convert(value, options[0], key) if len(options) == 1 else value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of settings, got {value!r}")
        return from_dict(kind, value, prefix=f"{key}.")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        item = args[0] if args else Any
        return origin(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if kind is float:
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as text; anything else textual stays an error
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if kind in (int, str, bool) and not (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))):
        raise ConfigError(f"config key '{key}': expected {kind.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; the keys of '{prefix.rstrip('.') or 'the config'}' are: "
            + ", ".join(names)
        )
    return cls(**{k: _convert(v, hints[k], f"{prefix}{k}") for k, v in data.items()})


def load(cls: type[T], path: str | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Read a YAML file (optional), apply dotted `overrides` such as {"decode.fps": 4}, and validate."""
    data: dict[str, Any] = {}
    if path:
        with open(path) as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as error:
                raise ConfigError(f"{path} is not a YAML file of settings: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain data, to save beside every artefact."""
    return dataclasses.asdict(config)


__all__ = ["ConfigError", "from_dict", "load", "require", "to_dict"]

"""The one road for settings: defaults -> YAML file -> command-line flags, resolved here.

Each stage owns a dataclass of its settings, next to the code it configures
(:class:`~lungseg.data.preprocessing.PreprocessConfig`,
:class:`~lungseg.data.settings.PrepareConfig`,
:class:`~lungseg.training.config.TrainConfig`); its field defaults are the only defaults. This
module turns layers of plain mappings into one of them:

* :func:`resolve` applies the layers in order (the dataclass defaults first, then e.g. a resumed
  run's settings, a YAML section, the flags given), each checked for unknown keys, so a typo in a
  config file is an error naming the file rather than a silently ignored setting;
* :func:`from_dict` / :func:`to_dict` convert between a dataclass and plain values (YAML, JSON,
  checkpoints);
* :func:`read_section` reads one section (``prepare:``, ``train:``) of a settings file.

A dataclass may offer input shorthands through a classmethod ``expand_input(mapping) ->
mapping`` (a preprocessing ``preset`` name stands for its step switches); they are expanded
layer by layer, so a preset given as a flag replaces the switches a YAML file set.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lungseg.core.errors import LungsegError

T = TypeVar("T")

#: Top-level keys of a settings file. A run's ``config.yaml`` is one too: it adds the cache it
#: was trained on and the version that wrote it, which are records, not settings.
SECTIONS = ("prepare", "train")
RECORD_KEYS = ("cache", "lungseg_version")


def to_dict(obj: Any) -> Any:
    """Convert nested dataclasses, tuples and paths into YAML-safe plain values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`LungsegError`.

    Shorthands (``expand_input``) are expanded, nested dataclass fields are built recursively,
    and missing keys keep their defaults.
    """
    data = expand(cls, data, where)
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def expand(cls: type, data: Mapping[str, Any] | None, where: str = "config") -> dict[str, Any]:
    """``data`` with the shorthands of ``cls`` and its nested dataclasses expanded, checked for
    unknown keys (naming ``where`` and the valid keys)."""
    data = dict(data or {})
    expand_input = getattr(cls, "expand_input", None)
    if expand_input is not None:
        data = expand_input(data, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LungsegError(
            f"unknown setting(s) {', '.join(unknown)} in {where}; "
            f"valid settings: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, Mapping):
            data[name] = expand(hints[name], value, f"{where}.{name}")
        else:
            check_value(hints[name], value, name, where, fields[name].metadata.get("range"))
    return data


def check_value(
    hint: Any, value: Any, name: str, where: str, bounds: tuple[float, float] | None = None
) -> None:
    """Refuse a value of the wrong type for ``hint`` (YAML's ``ten``, ``true``, ``2.7`` or
    ``"0.2"`` for a number; ``1e20`` without a dot is a string in YAML) or outside ``bounds``
    (a field's ``metadata["range"]``, both ends included).

    Raises:
        LungsegError: one line naming ``where`` (the file or flags), the key and the value.
    """
    kind = _type_problem(hint, value)
    if kind:
        raise LungsegError(f"{name} must be {kind}, got {value!r}", where)
    if bounds is not None and isinstance(value, int | float) and value is not None:
        low, high = bounds
        if not low <= value <= high:
            raise LungsegError(f"{name} must be between {low:,} and {high:,}, got {value!r}", where)


def _type_problem(hint: Any, value: Any) -> str:
    """What ``value`` should have been for ``hint``, or "" when it is fine."""
    origin = typing.get_origin(hint)
    if hint is Any or dataclasses.is_dataclass(hint):
        return ""
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return ""
        problems = [_type_problem(a, value) for a in args if a is not type(None)]
        return "" if "" in problems else " or ".join(problems)
    if hint is bool:
        return "" if isinstance(value, bool) else "true or false"
    if hint is int:
        return "" if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if hint is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return "" if number and math.isfinite(value) else "a finite number"
    if hint is str:
        return "" if isinstance(value, str) else "text"
    if hint is Path:
        return "" if isinstance(value, str | Path) else "a path"
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            return f"a list of {len(args)} values"
        problems = [_type_problem(a, v) for a, v in zip(args, value, strict=True)]
        return next((f"a list of {len(args)} values, each {p}" for p in problems if p), "")
    if origin in (dict, Mapping) or hint is dict:
        return "" if isinstance(value, Mapping) else "a mapping"
    if origin is list or hint is list:
        return "" if isinstance(value, list) else "a list"
    return ""


#: A layer of settings: ``(where it came from, mapping)``; ``where`` names it in errors.
Layer = tuple[str, Mapping[str, Any] | None]


def collect(cls: type, layers: Sequence[Layer]) -> dict[str, Any]:
    """Only the settings of ``cls`` that ``layers`` give, merged in order, shorthands expanded.

    ``None`` values in a layer mean "not given" and keep what the layers below set, so a flag
    left out keeps the YAML's value. Each layer is checked on its own, so an unknown key names
    the layer (file or flags) it came from.
    """
    merged: dict[str, Any] = {}
    for where, layer in layers:
        merged = merge(merged, expand(cls, drop_none(layer or {}), where))
    return merged


def resolve(cls: type[T], layers: Sequence[Layer]) -> T:
    """Settings of ``cls``: its defaults, then each ``(where, mapping)`` layer in order."""
    where = layers[-1][0] if layers else "settings"
    return from_dict(cls, collect(cls, layers), where)


def drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without its ``None`` values, recursively (flags that were not given)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            value = drop_none(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(args[0], value, where)
        return value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    return value


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (``None`` values are skipped)."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def diff(want: Mapping[str, Any], have: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: asked A, found B`` for every key of ``want`` whose value differs in ``have``."""
    parts = []
    for key in sorted(want):
        a, b = want[key], have.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            parts.extend(diff(a, b, f"{prefix}{key}."))
        elif a != b:
            parts.append(f"{prefix}{key}: asked {a}, cache has {b}")
    return parts


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise LungsegError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LungsegError(f"not valid YAML ({_yaml_problem(exc)})", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LungsegError("expected a mapping of settings at the top level", path)
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: the problem and where (its own text spans several lines,
    with a drawing of the spot)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def read_section(path: str | Path | None, section: str) -> tuple[str, dict[str, Any]]:
    """``(where, mapping)``: section ``section`` of the settings file ``path`` as a layer for
    :func:`resolve` (empty when ``path`` is None or the file has no such section).

    Raises:
        LungsegError: the file is missing or not YAML, has an unknown top-level key, or the
            section is not a mapping.
    """
    if path is None:
        return "settings", {}
    data = load_yaml(path)
    unknown = sorted(set(data) - set(SECTIONS) - set(RECORD_KEYS))
    if unknown:
        raise LungsegError(
            f"unknown section(s) {', '.join(unknown)}; a settings file has the sections "
            f"{', '.join(SECTIONS)}",
            path,
        )
    value = data.get(section) or {}
    if not isinstance(value, dict):
        raise LungsegError(f"the '{section}' section must be a mapping of settings", path)
    return f"{path} ({section} section)", value


def save_yaml(data: Any, path: str | Path) -> None:
    """Write ``data`` as YAML atomically (temporary file, then rename)."""
    from lungseg.core.io_utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(data), sort_keys=False))

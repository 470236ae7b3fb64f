"""Settings: dataclasses resolved as defaults -> YAML file -> command-line flags.

Each stage owns a dataclass of its settings. :func:`from_dict` builds one from a plain mapping
(a YAML file, a checkpoint) and rejects unknown keys, naming them and the valid ones, so a typo in
a config file is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lungseg.errors import LungsegError

T = TypeVar("T")


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


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`LungsegError`.

    Nested dataclass fields are built recursively; missing keys keep their defaults.
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LungsegError(
            f"unknown setting(s) {', '.join(unknown)} in {where}; "
            f"valid settings: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
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


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (``None`` values are skipped)."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise LungsegError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LungsegError(f"not valid YAML ({exc})", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LungsegError("expected a mapping of settings at the top level", path)
    return data


def save_yaml(data: Any, path: str | Path) -> None:
    """Write ``data`` as YAML atomically (temporary file, then rename)."""
    from lungseg.io_utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(data), sort_keys=False))

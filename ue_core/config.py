"""Nested dataclass configs ↔ plain dicts (YAML files, flag overrides, MLflow params).

A config is a tree of dataclasses; its dict form mirrors that tree. Unknown keys are errors that name the
key, so a typo in a YAML file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from ue_core.errors import InvalidInputError

T = TypeVar("T")


def parse_fraction(value: float | str) -> float:
    """A number or a fraction such as "8/255" → float."""
    if isinstance(value, str) and "/" in value:
        numerator, denominator = value.split("/", 1)
        try:
            return float(numerator) / float(denominator)
        except (ValueError, ZeroDivisionError):
            raise InvalidInputError(f"cannot read {value!r} as a number or a fraction like 8/255") from None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"cannot read {value!r} as a number or a fraction like 8/255") from None


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into fields whose type is a dataclass."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidInputError(f"unknown key {where}.{unknown[0]}; expected one of {', '.join(fields)}")
    values = {}
    for name, value in data.items():
        kind = _optional_dataclass(hints[name])
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = from_dict(kind, value, f"{where}.{name}")
        elif isinstance(value, str) and kind in (float, float | None):  # "8/255", "1e-3" (YAML 1.1 strings)
            value = parse_fraction(value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise InvalidInputError(f"{where}: {error}") from None


def _optional_dataclass(kind: Any) -> Any:
    """``D`` for a field typed ``D | None`` where D is a dataclass (so a dict builds a D), else ``kind``."""
    members = [k for k in typing.get_args(kind) if k is not type(None)]
    if len(members) == 1 and type(None) in typing.get_args(kind) and dataclasses.is_dataclass(members[0]):
        return members[0]
    return kind


def to_dict(config: Any) -> dict[str, Any]:
    """The nested dict form of a dataclass config (tuples become lists, for YAML and JSON)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}: one entry per leaf, e.g. for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def set_dotted(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted_key`` "a.b", creating levels as needed."""
    *parents, leaf = dotted_key.split(".")
    for parent in parents:
        data = data.setdefault(parent, {})
        if not isinstance(data, dict):
            raise InvalidInputError(f"cannot set {dotted_key}: {parent} is not a section")
    data[leaf] = value

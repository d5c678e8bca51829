"""Nested dataclass configs ↔ plain dicts (YAML files, flag overrides, MLflow params).

A config is a tree of dataclasses; its dict form mirrors that tree. Unknown keys are errors that name the
key, so a typo in a YAML file never silently falls back to a default, and every value is checked against its
field's type before the dataclass checks its range: ``config.beo.rounds: expected an integer, got 1.5``.
"""

from __future__ import annotations

import dataclasses
import types
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
    """Build dataclass ``cls`` from ``data``, each value checked against its field's type (:func:`read_value`)
    before the dataclass checks ranges: a wrong type is a one-line error naming the key, never a traceback."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidInputError(f"unknown key {where}.{unknown[0]}; expected one of {', '.join(fields)}")
    values = {name: read_value(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as error:
        raise InvalidInputError(f"{where}: {error}") from None


def read_value(kind: Any, value: Any, where: str) -> Any:
    """``value`` as a field typed ``kind`` holds it: a mapping builds a dataclass, a list a tuple, a string
    such as "8/255" a float; anything else of the right type is returned as it is.

    The types a config field may have: bool, int (not a bool), float (an int, a float or a fraction string),
    str, a Literal of strings (an enumeration), ``X | None``, ``tuple[X, ...]`` (a list, or one X standing for
    a list of one), ``tuple[X, Y]``, ``dict[str, Any]``, ``Any`` and a dataclass (a mapping of its keys).

    Raises:
        InvalidInputError: one line, ``{where}: expected {what}, got {value!r}``, for a value of another type;
            ``where`` names the element of a list ("config.formats[1]").
    """
    try:
        return _convert(kind, value, where)
    except _Mismatch:
        raise InvalidInputError(f"{where}: expected {_describe(kind)}, got {value!r}") from None


class _Mismatch(Exception):
    """``value`` is not of the type ``kind`` at this level (:func:`read_value` names what is expected)."""


SCALARS: dict[type, str] = {
    bool: "true or false", int: "an integer", float: "a number or a fraction like 8/255", str: "a string",
}
"""The scalar types of config fields → what a message says is expected."""


def _convert(kind: Any, value: Any, where: str) -> Any:
    """``value`` converted for a field typed ``kind``, or _Mismatch; a nested value's own error names it."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(args, value, where)
    if origin is tuple:
        return _convert_tuple(args, value, where)
    if origin is typing.Literal:
        return _require(any(value == a and type(value) is type(a) for a in args), value)
    if origin is dict or kind is dict:
        return _require(isinstance(value, dict), value)
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, _require(isinstance(value, dict), value), where)  # type: ignore[arg-type]
    if kind is float:
        return _convert_float(value)
    if kind in SCALARS:
        return _require(isinstance(value, kind) and not (kind is int and isinstance(value, bool)), value)
    return _require(kind is Any, value)


def _require(fits: bool, value: Any) -> Any:
    """``value`` if it ``fits``, else _Mismatch."""
    if not fits:
        raise _Mismatch
    return value


def _convert_float(value: Any) -> Any:
    """An int or a float as it is; a string such as "8/255" or "1e-3" (a string to YAML 1.1) parsed."""
    if isinstance(value, str):
        try:
            return parse_fraction(value)
        except InvalidInputError:
            raise _Mismatch from None
    return _require(isinstance(value, (int, float)) and not isinstance(value, bool), value)


def _convert_union(members: tuple[Any, ...], value: Any, where: str) -> Any:
    """``value`` as the first of ``members`` it fits (None fits ``NoneType``)."""
    for member in members:
        if member is types.NoneType:
            if value is None:
                return None
            continue
        try:
            return _convert(member, value, where)
        except _Mismatch:
            pass
    raise _Mismatch


def _convert_tuple(args: tuple[Any, ...], value: Any, where: str) -> tuple[Any, ...]:
    """A list (or tuple) → a tuple of its elements, each read as its type; for ``tuple[X, ...]`` one X stands
    for a list of one."""
    if len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            return (_convert(args[0], value, where),)
        args = (args[0],) * len(value)
    _require(isinstance(value, (list, tuple)) and len(value) == len(args), value)
    return tuple(read_value(arg, item, f"{where}[{i}]") for i, (arg, item) in enumerate(zip(args, value)))


def _describe(kind: Any) -> str:
    """What a message says a field typed ``kind`` expects, e.g. "an integer or null"."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is types.NoneType else _describe(a) for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"{_describe(args[0])}, or a list of such values"
    if origin is tuple:
        return f"a list of {len(args)} values, each {' or '.join(sorted({_describe(a) for a in args}))}"
    if origin is typing.Literal:
        return f"one of {', '.join(map(str, args))}"
    if origin is dict or kind is dict or dataclasses.is_dataclass(kind):
        return "a mapping of keys to values"
    return SCALARS.get(kind, str(kind))


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

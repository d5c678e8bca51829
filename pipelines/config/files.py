"""Config layers: shipped presets, YAML files, ``--set KEY=VALUE`` overrides, and the keys of older layouts."""

from __future__ import annotations

import copy
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ue_core.config import read_value
from ue_core.errors import InvalidInputError
from ue_core.pga import Budget


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("pipelines.presets").iterdir()
                  if p.name.endswith(".yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file; anything else is an error naming the file."""
    try:
        content = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise InvalidInputError(f"cannot read config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise InvalidInputError(f"config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(content, dict):
        raise InvalidInputError(f"config {path} must be a mapping of keys to values")
    return content


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of two nested dicts; values of ``update`` win."""
    merged = dict(base)
    for key, value in update.items():
        both_mappings = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if both_mappings else value
    return merged


LEGACY_KEYS = {"beo.pga.eps": "budget.eps", "beo.pga.norm": "budget.norm"}
"""Protect-config keys of the layout before the budget became the job's own section → today's keys."""
BUDGET_TYPES = typing.get_type_hints(Budget)


def upgrade_keys(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of protect-config ``data`` with the :data:`LEGACY_KEYS` moved to today's, in both forms a config
    comes in: nested (a YAML file, a recorded config: ``beo: {pga: {eps: …}}`` → ``budget: {eps: …}``) and
    dotted (overrides: ``beo.pga.eps`` → ``budget.eps``). The same setting under both keys with different
    values is a one-line InvalidInputError naming both."""
    data = copy.deepcopy(data)
    pga = data["beo"].get("pga") if isinstance(data.get("beo"), dict) else None
    for old, new in LEGACY_KEYS.items():
        leaf = new.removeprefix("budget.")
        moves = [(data.pop(old), data, new)] if old in data else []
        if isinstance(pga, dict) and leaf in pga and isinstance(data.setdefault("budget", {}), dict):
            moves.append((pga.pop(leaf), data["budget"], leaf))
        kind = BUDGET_TYPES[leaf]
        for value, target, key in moves:
            same = key not in target or (  # compared as the config reads them: "8/255" is 8 / 255
                read_value(kind, target[key], f"config.{new}") == read_value(kind, value, f"config.{old}")
            )
            if not same:
                raise InvalidInputError(f"config {old} and {new} are one setting ({new} is its name now), given "
                                        f"{value!r} and {target[key]!r}: keep {new} only")
            target[key] = value
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """"beo.rounds=3" → ("beo.rounds", 3): the value is read as YAML (numbers, lists, strings)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidInputError(f"--set takes KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)

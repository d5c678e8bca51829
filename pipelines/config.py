"""Job configs: a preset, then a YAML file, then flag overrides, merged in that order.

    ue protect --preset fashion-mnist --config mine.yaml --eps 16/255 --set beo.surrogate.epochs=5

Presets are YAML files shipped in pipelines/presets/. Every key is checked against the dataclasses, so a
typo is an error naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ue_core.config import from_dict, set_dotted
from ue_core.errors import InvalidInputError
from ue_core.methods.beo import BEOConfig
from ue_core.release import RELEASE_FORMATS


@dataclass(frozen=True)
class DataConfig:
    """Which images a job reads from its source.

    Attributes:
        layout: the source's layout, or "auto" to detect it (ue_core.data.LAYOUT_NAMES).
        subset: protect a class-balanced random subset of this many training images (None: all).
        test_subset: images of the test split used to report the surrogate's test accuracy
            (None: all, 0: none).
        seed: seeds the subsets.
    """

    layout: str = "auto"
    subset: int | None = None
    test_subset: int | None = 0
    seed: int = 0


@dataclass(frozen=True)
class ProtectConfig:
    """A protect job: what to read, how to protect it, which release formats to write."""

    data: DataConfig = field(default_factory=DataConfig)
    beo: BEOConfig = field(default_factory=BEOConfig)
    formats: tuple[str, ...] = ("parquet",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", tuple(self.formats))
        unknown = sorted(set(self.formats) - set(RELEASE_FORMATS))
        if unknown:
            raise InvalidInputError(f"unknown release format {unknown[0]!r}; expected {', '.join(RELEASE_FORMATS)}")


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
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_protect_config(
    preset: str | None = None, config_file: str | None = None, overrides: dict[str, Any] | None = None
) -> ProtectConfig:
    """Preset → YAML file → dotted-key overrides (e.g. {"beo.pga.eps": "16/255"}) → ProtectConfig."""
    data: dict[str, Any] = {}
    if preset is not None:
        if preset not in preset_names():
            raise InvalidInputError(f"unknown preset {preset!r}; expected one of {', '.join(preset_names())}")
        data = read_yaml(str(resources.files("pipelines.presets") / f"{preset}.yaml"))
    if config_file is not None:
        data = merge(data, read_yaml(config_file))
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(ProtectConfig, data)


def parse_override(text: str) -> tuple[str, Any]:
    """"beo.rounds=3" → ("beo.rounds", 3): the value is read as YAML (numbers, lists, strings)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidInputError(f"--set takes KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)

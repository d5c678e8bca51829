"""The sweep's config: the grid over methods, budgets, ratios, victims, defences and any other config key, and
the releases it needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from itertools import product
from typing import Any

from pipelines.config.evaluate import EvaluateConfig, VictimConfig
from pipelines.config.files import read_yaml, upgrade_keys
from pipelines.config.protect import METHODS, ProtectConfig, load_protect_config
from ue_core.config import flatten, from_dict, parse_fraction, set_dotted, to_dict
from ue_core.defences import parse_defences
from ue_core.errors import InvalidInputError

RESERVED_PROTECT_AXES = {"method": "grid.method", "budget.eps": "grid.eps"}
RESERVED_EVALUATE_AXES = {"ratio": "grid.ratio", "victim.model": "grid.victim", "defence.names": "grid.defence",
                          "modes": "the arms the ratios imply"}


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep; every combination is a trial (see pipelines/sweep.py for the arms it implies).

    Attributes:
        method: protection methods (ProtectConfig.method: BEO and the baselines it is compared with).
        eps: L∞ budgets, each in (0, 1) (numbers or fractions such as "8/255").
        ratio: mixing ratios, each in [0, 1].
        victim: victim models (ue_core.models.MODEL_NAMES).
        defence: defence specs, each "none" or names joined by "+" (ue_core.defences).
        protect: any other protect-config key (dotted, e.g. ``beo.rounds``, ``beo.estimator.sigma``) → its
            values: each combination is a release per method × ε (a key the method never reads adds none).
        evaluate: any other evaluate-config key (dotted, e.g. ``victim.recipe``, ``seed``) → its values: each
            combination repeats every arm.
    """

    method: tuple[str, ...] = ("beo",)
    eps: tuple[float, ...] = (8 / 255,)
    ratio: tuple[float, ...] = (0.0, 0.5, 1.0)
    victim: tuple[str, ...] = ("resnet18",)
    defence: tuple[str, ...] = ("none",)
    protect: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("method", "eps", "ratio", "victim", "defence"):
            object.__setattr__(self, name, _axis_values(f"sweep grid.{name}", getattr(self, name)))
        object.__setattr__(self, "eps", tuple(parse_fraction(e) for e in self.eps))
        object.__setattr__(self, "ratio", tuple(parse_fraction(r) for r in self.ratio))
        for eps in self.eps:
            if not 0 < eps < 1:
                raise InvalidInputError(f"sweep grid.eps: each budget must be in (0, 1), got {eps}")
        for ratio in self.ratio:
            if not 0 <= ratio <= 1:
                raise InvalidInputError(f"sweep grid.ratio: mixing ratio must be in [0, 1], got {ratio}")
        for victim in self.victim:
            VictimConfig(model=victim)  # names an unknown model
        for method in self.method:
            if method not in METHODS:
                raise InvalidInputError(f"sweep grid.method: unknown {method!r}; expected one of {', '.join(METHODS)}")
        object.__setattr__(self, "defence", tuple("+".join(parse_defences(d)) or "none" for d in self.defence))
        for section, reserved in (("protect", RESERVED_PROTECT_AXES), ("evaluate", RESERVED_EVALUATE_AXES)):
            axes = getattr(self, section)
            if not isinstance(axes, dict):
                raise InvalidInputError(f"sweep grid.{section}: expected a mapping of dotted keys to lists of values")
            axes = flatten(axes)  # a --set grid.protect.beo.rounds=[…] arrives nested
            if section == "protect":
                axes = upgrade_keys(axes)
            for key in axes:
                if key in reserved:
                    raise InvalidInputError(f"sweep grid.{section}: {key} is an axis of its own; use {reserved[key]}")
            object.__setattr__(self, section, {k: _axis_values(f"sweep grid.{section}.{k}", v) for k, v in axes.items()})

    def protect_points(self) -> list[dict[str, Any]]:
        """Every combination of the ``protect`` axes, as {dotted key: value} ([{}] without such axes)."""
        return _points(self.protect)

    def evaluate_points(self) -> list[dict[str, Any]]:
        """Every combination of the ``evaluate`` axes, as {dotted key: value} ([{}] without such axes)."""
        return _points(self.evaluate)


def _axis_values(name: str, values: Any) -> tuple[Any, ...]:
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    if not values or len({repr(v) for v in values}) != len(values):
        raise InvalidInputError(f"{name}: expected a non-empty list of distinct values")
    return values


def _points(axes: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(axes, values)) for values in product(*axes.values())]


def settings_label(settings: dict[str, Any]) -> str:
    """{"beo.rounds": 50, "beo.estimator.sigma": 1.0} → "beo.rounds=50 beo.estimator.sigma=1.0" ("" for none)."""
    return " ".join(f"{key}={value}" for key, value in settings.items())


@dataclass(frozen=True)
class ReleaseSpec:
    """One release of a sweep: a method at a budget with the values of the grid's protect axes that it reads."""

    method: str
    eps: float
    settings: dict[str, Any]

    @property
    def label(self) -> str:
        """"beo eps=16/255 beo.rounds=50": what the tables, plots and trial names call this release."""
        return " ".join(filter(None, [f"{self.method} eps={self.eps * 255:g}/255", settings_label(self.settings)]))


@dataclass(frozen=True)
class SweepConfig:
    """A sweep file: the source, how to protect it, how to evaluate, and the grid.

    Attributes:
        source: the clean dataset (a flag may replace it).
        protect_preset: the shipped protect preset the releases start from.
        protect: protect config keys merged over the preset (nested, as in a protect YAML); grid.method
            replaces method, grid.eps replaces budget.eps, and grid.protect the keys it names.
        evaluate: the evaluate config of every trial; the grid replaces ratio, victim.model, defence.names
            and the keys grid.evaluate names.
        grid: method × eps × protect axes (the releases) × ratio × victim × defence × evaluate axes.
        max_failures: how often a failed trial is retried (Ray Tune's FailureConfig).
    """

    source: str | None = None
    protect_preset: str | None = None
    protect: dict[str, Any] = field(default_factory=dict)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    grid: SweepGrid = field(default_factory=SweepGrid)
    max_failures: int = 1

    def __post_init__(self) -> None:
        if self.max_failures < 0:
            raise InvalidInputError(f"sweep max_failures: must be >= 0, got {self.max_failures}")
        self.releases()  # every release's protect config is valid before anything starts
        for settings in self.grid.evaluate_points():
            self.evaluate_config(settings)  # and every trial's evaluate config

    def protect_config(self, method: str, eps: float, settings: dict[str, Any] | None = None) -> ProtectConfig:
        """The protect config of the release of ``method`` at budget ``eps`` with protect-axis ``settings``."""
        try:
            return load_protect_config(self.protect_preset, data=self.protect,
                                       overrides={"method": method, "budget.eps": eps, **(settings or {})})
        except InvalidInputError as error:
            where = f" ({settings_label(settings)})" if settings else ""
            raise InvalidInputError(f"sweep grid.protect{where}: {error}") from None

    def evaluate_config(self, settings: dict[str, Any] | None = None) -> EvaluateConfig:
        """The sweep's evaluate config with evaluate-axis ``settings``."""
        data = to_dict(self.evaluate)
        for key, value in (settings or {}).items():
            set_dotted(data, key, value)
        try:
            return from_dict(EvaluateConfig, data, "evaluate")
        except InvalidInputError as error:
            raise InvalidInputError(f"sweep grid.evaluate ({settings_label(settings or {})}): {error}") from None

    def releases(self) -> list[ReleaseSpec]:
        """Every distinct release of the grid, in a stable order. A protect axis the method never reads
        (``beo.rounds`` for EM) neither appears in its settings nor makes another release."""
        specs, seen = [], set()
        for method, eps, settings in product(self.grid.method, self.grid.eps, self.grid.protect_points()):
            record = self.protect_config(method, eps, settings).method_record()
            read = {key: value for key, value in settings.items() if _reads(record, key)}
            spec = ReleaseSpec(method, eps, read)
            if spec.label not in seen:
                seen.add(spec.label)
                specs.append(spec)
        return specs


def _reads(record: dict[str, Any], dotted_key: str) -> bool:
    """Whether the method record (ProtectConfig.method_record) holds ``dotted_key``."""
    node: Any = record
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def sweep_names() -> list[str]:
    """Names of the shipped sweep files."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("pipelines.sweeps").iterdir()
                  if p.name.endswith(".yaml"))


def load_sweep_config(name_or_file: str, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """A shipped sweep (by name) or a sweep YAML file, then dotted-key overrides → SweepConfig."""
    path = resources.files("pipelines.sweeps") / f"{name_or_file}.yaml"
    data = read_yaml(str(path) if name_or_file in sweep_names() else name_or_file)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(SweepConfig, data)

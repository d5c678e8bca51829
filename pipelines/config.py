"""Job configs: a preset, then a YAML file, then flag overrides, merged in that order.

    ue protect --preset fashion-mnist --config mine.yaml --eps 16/255 --set beo.surrogate.epochs=5

Presets are YAML files shipped in pipelines/presets/. Every key is checked against the dataclasses, so a
typo is an error naming the key. Keys of an older layout still load (:func:`upgrade_keys`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from ue_core.config import flatten, from_dict, parse_fraction, set_dotted, to_dict
from ue_core.data.dataset import ImageDataset
from ue_core.data.mixing import MODES
from ue_core.defences import DefenceConfig, parse_defences
from ue_core.errors import InvalidInputError
from ue_core.methods import METHODS as METHOD_CLASSES
from ue_core.methods import ProtectionMethod
from ue_core.methods.base import require_linf
from ue_core.methods.beo import BEOConfig
from ue_core.methods.em import EMConfig
from ue_core.methods.random_noise import RandomNoiseConfig
from ue_core.methods.tap import TAPConfig
from ue_core.models import MODEL_NAMES, Classifier, build_model
from ue_core.pga import Budget
from ue_core.release import RELEASE_FORMATS
from ue_core.training import Recipe, recipe


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


METHODS = tuple(METHOD_CLASSES)


@dataclass(frozen=True)
class ProtectConfig:
    """A protect job: what to read, how to protect it, which release formats to write.

    Attributes:
        method: "beo" (the product), or a baseline to compare it with: "random" (±ε noise), "em"
            (error-minimising noise) or "tap" (targeted adversarial poisoning); see ue_core/methods/.
        budget: eps and norm, the budget of whichever method runs (``--eps`` sets ``budget.eps``).
        beo, random, em, tap: each method's own settings, read only when it is the method.
    """

    data: DataConfig = field(default_factory=DataConfig)
    method: str = "beo"
    budget: Budget = field(default_factory=Budget)
    beo: BEOConfig = field(default_factory=BEOConfig)
    random: RandomNoiseConfig = field(default_factory=RandomNoiseConfig)
    em: EMConfig = field(default_factory=EMConfig)
    tap: TAPConfig = field(default_factory=TAPConfig)
    formats: tuple[str, ...] = ("parquet",)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if METHOD_CLASSES[self.method].linf_only:  # the method's own check, here before a job starts
            require_linf(self.budget, self.method)
        object.__setattr__(self, "formats", tuple(self.formats))
        unknown = sorted(set(self.formats) - set(RELEASE_FORMATS))
        if unknown:
            raise InvalidInputError(f"unknown release format {unknown[0]!r}; expected {', '.join(RELEASE_FORMATS)}")

    def build(self, test_set: ImageDataset | None = None, device: str = "cpu") -> ProtectionMethod:
        """The ue_core method this config names, built from ``budget`` and its own section on ``device``;
        ``test_set`` goes to the methods that take one (BEO: per-round surrogate test accuracy and probe)."""
        method = METHOD_CLASSES[self.method]
        extras = {"test_set": test_set} if method.takes_test_set else {}
        return method(self.budget, getattr(self, self.method), device, **extras)

    def method_record(self) -> dict[str, Any]:
        """The config as nested dicts without the other methods' sections (every method keeps ``budget``):
        what the MLflow run and the manifest record. ``from_dict`` reads it back."""
        record = to_dict(self)
        for name in set(METHODS) - {self.method}:
            del record[name]
        return record


@dataclass(frozen=True)
class VictimConfig:
    """The learner whose clean test accuracy measures how unlearnable a release is (docs/method.md §4).

    Attributes:
        model: one of ue_core.models.MODEL_NAMES (paper default: resnet18).
        width: base width of "small_cnn" (None: its default, 32, the surrogate's default; 64 makes a victim
            that is not the surrogate); an error for the other models.
        recipe: "standard" (SGD 0.1, cosine, crop + flip) or "plain" (no augmentation).
        epochs: training epochs (paper scale: 30 to 200).
        lr: peak learning rate (None: the recipe's).
        batch_size: global batch size, split evenly over the workers (None: the recipe's, 128).
        workers: Ray Train workers, one DDP process each (None: one per GPU, else 1: on CPUs a second
            process on the same node only splits the same cores).
    """

    model: str = "resnet18"
    width: int | None = None
    recipe: str = "standard"
    epochs: int = 30
    lr: float | None = None
    batch_size: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise InvalidInputError(f"unknown victim {self.model!r}; expected one of {', '.join(MODEL_NAMES)}")
        if self.workers is not None and self.workers < 1:
            raise InvalidInputError(f"victim workers: must be >= 1, got {self.workers}")
        if self.width is not None and (self.model != "small_cnn" or self.width < 1):
            raise InvalidInputError(f"victim width: only small_cnn has one, >= 1; got {self.width} for {self.model}")
        self.to_recipe()  # validates recipe name, epochs, lr and batch size

    def build(self, num_classes: int, image_shape: tuple[int, int, int], seed: int | None = None) -> Classifier:
        """A fresh victim for images of ``image_shape`` (H, W, C)."""
        height, _, channels = image_shape
        return build_model(self.model, num_classes, in_channels=channels, image_size=height, width=self.width,
                           seed=seed)

    def to_recipe(self, workers: int = 1) -> Recipe:
        """The training recipe, with the per-worker batch size for ``workers`` DDP processes."""
        overrides: dict[str, Any] = {"epochs": self.epochs}
        if self.lr is not None:
            overrides["lr"] = self.lr
        if self.batch_size is not None:
            overrides["batch_size"] = self.batch_size
        full = recipe(self.recipe, **overrides)
        if full.batch_size % workers:
            raise InvalidInputError(
                f"victim batch_size {full.batch_size} does not split evenly over {workers} workers"
            )
        return recipe(self.recipe, **(overrides | {"batch_size": full.batch_size // workers}))


@dataclass(frozen=True)
class EvaluateConfig:
    """An evaluate job: which arms of the mixing protocol to train, with which victim and defence.

    Attributes:
        layout: the clean source's layout ("auto" to detect).
        test_subset: clean test images to evaluate on, class-balanced (None: the whole test split).
        ratio: probability in [0, 1] that a training index takes its protected version.
        modes: the arms to train (ue_core.data.mixing.MODES); the triple by default, "poison-only" on request.
        seed: seeds the mixing draw, the victim's initial weights and its training.
        robust_accuracy: also report the final test accuracy under the PGD attack of ``defence.pgd``.
        bayes_error_subset: β̂ of the clean images and of the release in the clean-all victim's feature space
            is measured on a class-balanced subset of at most this many indices (None: all; the exact
            estimator costs 2·N²·D multiply-adds).
        victim: model, recipe, epochs, workers.
        defence: training-time defences (ue_core.defences).
    """

    layout: str = "auto"
    test_subset: int | None = None
    ratio: float = 0.5
    modes: tuple[str, ...] = ("clean-all", "clean-only", "mixed")
    seed: int = 0
    robust_accuracy: bool = False
    bayes_error_subset: int | None = 5000
    victim: VictimConfig = field(default_factory=VictimConfig)
    defence: DefenceConfig = field(default_factory=DefenceConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", tuple(self.modes))
        if not 0.0 <= self.ratio <= 1.0:  # also rejects NaN
            raise InvalidInputError(f"mixing ratio must be in [0, 1], got {self.ratio}")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes or len(set(self.modes)) != len(self.modes):
            raise InvalidInputError(
                f"evaluate modes: expected distinct values from {', '.join(MODES)}, got {', '.join(self.modes)}"
            )
        if self.test_subset is not None and self.test_subset < 1:
            raise InvalidInputError(f"test_subset: must be >= 1 (or null for all), got {self.test_subset}")
        if self.bayes_error_subset is not None and self.bayes_error_subset < 2:
            raise InvalidInputError(
                f"bayes_error_subset: must be >= 2 (or null for all), got {self.bayes_error_subset}"
            )


def load_evaluate_config(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> EvaluateConfig:
    """YAML file → dotted-key overrides (e.g. {"victim.epochs": 5}) → EvaluateConfig."""
    data = read_yaml(config_file) if config_file is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(EvaluateConfig, data)


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


def load_protect_config(
    preset: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> ProtectConfig:
    """Preset → YAML file → ``data`` (nested keys) → dotted-key overrides (e.g. {"budget.eps": "16/255"})
    → ProtectConfig; each with its keys upgraded (:func:`upgrade_keys`) before it is merged."""
    layers = []
    if preset is not None:
        if preset not in preset_names():
            raise InvalidInputError(f"unknown preset {preset!r}; expected one of {', '.join(preset_names())}")
        layers.append(read_yaml(str(resources.files("pipelines.presets") / f"{preset}.yaml")))
    if config_file is not None:
        layers.append(read_yaml(config_file))
    merged: dict[str, Any] = {}
    for layer in [*layers, data or {}]:
        merged = merge(merged, upgrade_keys(layer))
    for key, value in upgrade_keys(overrides or {}).items():
        set_dotted(merged, key, value)
    return from_dict(ProtectConfig, merged)


LEGACY_KEYS = {"beo.pga.eps": "budget.eps", "beo.pga.norm": "budget.norm"}
"""Protect-config keys of the layout before the budget became the job's own section → today's keys."""


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
        for value, target, key in moves:
            same = key not in target or (
                parse_fraction(target[key]) == parse_fraction(value) if leaf == "eps" else target[key] == value
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

"""The protect job's config: which images to read, which method protects them within which budget, and the
release formats; :func:`load_protect_config` merges its layers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pipelines.config.files import merge, preset_names, read_yaml, upgrade_keys
from ue_core.config import from_dict, set_dotted, to_dict
from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError
from ue_core.methods import METHODS as METHOD_CLASSES
from ue_core.methods import ProtectionMethod
from ue_core.methods.ar import ARConfig
from ue_core.methods.base import require_norm
from ue_core.methods.beo import BEOConfig
from ue_core.methods.em import EMConfig
from ue_core.methods.lsp import LSPConfig
from ue_core.methods.ops import OPSConfig
from ue_core.methods.random_noise import RandomNoiseConfig
from ue_core.methods.tap import TAPConfig
from ue_core.pga import Budget
from ue_core.release import RELEASE_FORMATS, ReleaseFormat, check_delta_budget


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
            (error-minimising noise), "tap" (targeted adversarial poisoning), "ops" (one-pixel shortcut, an
            L0 budget: ``budget.norm: l0``, ``budget.eps: 1``), "ar" (autoregressive perturbations, L2 or
            L∞; the paper's main setting is ``budget: {norm: l2, eps: 1.0}``, the default budget gives its L∞
            variant) or "lsp" (linearly separable patch noise, an L2 budget: ``budget.norm: l2``,
            ``budget.eps`` the L2 norm of every δ); see ue_core/methods/. A method's norm is never implied: the
            default budget is L∞, and a method not defined for it is a one-line error until ``budget.norm``
            names one it is.
        budget: eps and norm, the budget of whichever method runs (``--eps`` sets ``budget.eps``).
        beo, random, em, tap, ops, ar, lsp: each method's own settings, read only when it is the method.
        formats: the release formats (ue_core.release.RELEASE_FORMATS); "delta" needs a budget of at most
            127 levels (eps ≤ 127/255), checked here before a job starts.
    """

    data: DataConfig = field(default_factory=DataConfig)
    method: str = "beo"
    budget: Budget = field(default_factory=Budget)
    beo: BEOConfig = field(default_factory=BEOConfig)
    random: RandomNoiseConfig = field(default_factory=RandomNoiseConfig)
    em: EMConfig = field(default_factory=EMConfig)
    tap: TAPConfig = field(default_factory=TAPConfig)
    ops: OPSConfig = field(default_factory=OPSConfig)
    ar: ARConfig = field(default_factory=ARConfig)
    lsp: LSPConfig = field(default_factory=LSPConfig)
    formats: tuple[ReleaseFormat, ...] = ("parquet",)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        # the method's own check, here before a job starts
        require_norm(self.budget, self.method, METHOD_CLASSES[self.method].norms)
        object.__setattr__(self, "formats", tuple(self.formats))
        unknown = sorted(set(self.formats) - set(RELEASE_FORMATS))
        if unknown:
            raise InvalidInputError(f"unknown release format {unknown[0]!r}; expected {', '.join(RELEASE_FORMATS)}")
        if "delta" in self.formats:
            check_delta_budget(self.budget)

    def build(
        self,
        test_set: ImageDataset | None = None,
        device: str = "cpu",
        on_round: Callable[[list[dict[str, float]]], None] | None = None,
    ) -> ProtectionMethod:
        """The ue_core method this config names, built from ``budget`` and its own section on ``device``;
        ``test_set`` (per-round surrogate test accuracy and probe) and ``on_round`` (called with each round's
        records) go to the methods that run in rounds (BEO)."""
        method = METHOD_CLASSES[self.method]
        extras = {"test_set": test_set, "on_round": on_round} if method.runs_in_rounds else {}
        return method(self.budget, getattr(self, self.method), device, **extras)

    def method_record(self) -> dict[str, Any]:
        """The config as nested dicts without the other methods' sections (every method keeps ``budget``):
        what the MLflow run and the manifest record. ``from_dict`` reads it back."""
        record = to_dict(self)
        for name in set(METHODS) - {self.method}:
            del record[name]
        return record


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

"""Job configs: a preset, then a YAML file, then flag overrides, merged in that order.

    ue protect --preset fashion-mnist --config mine.yaml --eps 16/255 --set beo.surrogate.epochs=5

Presets are YAML files shipped in pipelines/presets/. Every key is checked against the dataclasses, so a
typo is an error naming the key. Keys of an older layout still load (:func:`upgrade_keys`).

    files.py     presets, YAML files, --set overrides, keys of older layouts
    protect.py   ProtectConfig (data, method, budget, the methods' sections, formats)
    evaluate.py  EvaluateConfig (victim, arms and ratios, defences)
    sweep.py     SweepConfig (the grid over any key, the keys a search samples, the releases it needs)
"""

from pipelines.config.evaluate import EvaluateConfig, VictimConfig, load_evaluate_config
from pipelines.config.files import LEGACY_KEYS, parse_override, preset_names, read_yaml, upgrade_keys
from pipelines.config.protect import METHODS, DataConfig, ProtectConfig, load_protect_config
from pipelines.config.sweep import (
    ReleaseSpec,
    SweepConfig,
    SweepGrid,
    SweepSearch,
    budget_label,
    load_sweep_config,
    settings_label,
    sweep_names,
)

__all__ = [
    "LEGACY_KEYS", "METHODS", "DataConfig", "EvaluateConfig", "ProtectConfig", "ReleaseSpec", "SweepConfig",
    "SweepGrid", "SweepSearch", "VictimConfig", "budget_label", "load_evaluate_config", "load_protect_config", "load_sweep_config",
    "parse_override", "preset_names", "read_yaml", "settings_label", "sweep_names", "upgrade_keys",
]

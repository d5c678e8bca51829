"""`ue protect`: read a source dataset, protect it with BEO, publish a verified release.

Engine "reference" runs ue_core's one-process BEO; it is the ground truth for the distributed engine.
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ue_core.config import to_dict
from ue_core.data import read_dataset
from ue_core.data.dataset import ImageDataset, balanced_subset
from ue_core.errors import DatasetFormatError
from ue_core.methods.beo import BEO
from ue_core.release import check_release_target, write_release

from pipelines.config import ProtectConfig


@dataclass
class ProtectSummary:
    """What a protect job reports at the end."""

    release_uri: str
    count: int
    bayes_error_clean: float
    bayes_error_release: float
    seconds: float

    def line(self) -> str:
        return (
            f"protected {self.count} images: β̂ {self.bayes_error_clean:.4f} (clean) → "
            f"{self.bayes_error_release:.4f} (release) in {self.seconds:.0f} s; release at {self.release_uri}"
        )


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    version = metadata.version("unlearnable-beo")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{version}+g{commit}"
    except (OSError, subprocess.SubprocessError):
        return version


def load_sources(source: str, config: ProtectConfig) -> tuple[ImageDataset, ImageDataset | None]:
    """The training images to protect and the (optional) clean test images, subsets applied."""
    data = config.data
    train = read_dataset(source, split="train", layout=data.layout)
    if data.subset is not None:
        train = balanced_subset(train, min(data.subset, len(train)), seed=data.seed)
    test = None
    if data.test_subset != 0:
        try:
            test = read_dataset(source, split="test", layout=data.layout)
        except DatasetFormatError:
            test = None  # a source without a test split: no test accuracy is reported
        if test is not None and data.test_subset is not None:
            test = balanced_subset(test, min(data.test_subset, len(test)), seed=data.seed)
    return train, test


def protect_reference(
    source: str, out: str, config: ProtectConfig, overwrite: bool = False, progress: bool = True
) -> ProtectSummary:
    """Protect ``source`` in this process and publish the release at ``out``."""
    started = time.perf_counter()
    check_release_target(out, overwrite)
    train, test = load_sources(source, config)
    result = BEO(config.beo, test_set=test).protect(train, progress=progress)
    manifest: dict[str, Any] = {
        "method": "beo",
        "engine": "reference",
        "source": source,
        "dataset": train.name,
        "eps": config.beo.pga.eps,
        "norm": config.beo.pga.norm,
        "config": to_dict(config),
        "code_version": code_version(),
        "python": platform.python_version(),
        "summary": result.summary,
        "history": result.history,
    }
    write_release(result.release, out, manifest, formats=config.formats, test=test, overwrite=overwrite)
    return ProtectSummary(
        release_uri=out,
        count=len(train),
        bayes_error_clean=result.summary["bayes_error_clean"],
        bayes_error_release=result.summary["bayes_error_release"],
        seconds=time.perf_counter() - started,
    )

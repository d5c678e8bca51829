"""`ue protect`: from a source dataset (folder or s3://) to a published, verified release (folder or s3://).

Engines:
    ray        (default) ingest → rounds on Ray (pipelines/rounds.py) → finalise and publish; resumable.
    reference  ue_core's one-process BEO, the ground truth the Ray engine is tested against.

Both check the inputs before any work (existing output, readable source, writable destination), track
the job in MLflow, and publish atomically with manifest.json last (ue_core.release).
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pipelines.config import ProtectConfig
from pipelines.storage import WorkDir, check_readable, check_writable, remove
from pipelines.tracking import Tracker, bayes_error_plot, image_grid
from ue_core.checks import check_release
from ue_core.config import to_dict
from ue_core.data import read_dataset
from ue_core.data.dataset import ImageDataset, balanced_subset
from ue_core.errors import DatasetFormatError, InvalidInputError
from ue_core.methods.beo import BEO, measure_bayes_error
from ue_core.pga import quantise_release
from ue_core.release import check_release_target, write_release

ENGINES = ("ray", "reference")


@dataclass
class ProtectSummary:
    """What a protect job reports at the end."""

    release_uri: str
    count: int
    bayes_error_clean: float
    bayes_error_release: float
    seconds: float
    mlflow_run: str
    tracking_uri: str

    def line(self) -> str:
        return (
            f"protected {self.count} images: β̂ {self.bayes_error_clean:.4f} (clean) → "
            f"{self.bayes_error_release:.4f} (release) in {self.seconds:.0f} s; release at {self.release_uri}; "
            f"MLflow run {self.mlflow_run} in {self.tracking_uri}"
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


def load_training_set(source: str, config: ProtectConfig) -> ImageDataset:
    """The training images to protect, subset applied."""
    train = read_dataset(source, split="train", layout=config.data.layout)
    if config.data.subset is not None:
        train = balanced_subset(train, min(config.data.subset, len(train)), seed=config.data.seed)
    return train


def load_test_set(source: str, config: ProtectConfig) -> ImageDataset | None:
    """Clean test images for the surrogate's test accuracy (None when not asked for or not present)."""
    if config.data.test_subset == 0:
        return None
    try:
        test = read_dataset(source, split="test", layout=config.data.layout)
    except DatasetFormatError:
        return None  # a source without a test split: no test accuracy is reported
    if config.data.test_subset is not None:
        test = balanced_subset(test, min(config.data.test_subset, len(test)), seed=config.data.seed)
    return test


def protect(
    source: str,
    out: str,
    config: ProtectConfig,
    engine: str = "ray",
    overwrite: bool = False,
    progress: bool = True,
    work_dir: str | None = None,
    ray_address: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = "ue-protect",
) -> ProtectSummary:
    """Protect ``source`` and publish the release at ``out``; see the module docstring."""
    if engine not in ENGINES:
        raise InvalidInputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    started = time.perf_counter()
    check_writable(out)  # first: it names an unreachable endpoint, bad credentials or a missing bucket
    check_release_target(out, overwrite)
    check_readable(source)
    with Tracker(tracking_uri, experiment, run_name=f"protect {Path(out).name}") as tracker:
        tracker.log_params({"engine": engine, "source": source, "out": out, **to_dict(config)})
        if engine == "reference":
            clean, release, history, summary, test = _protect_reference(source, config, progress)
            for step, record in enumerate(history):
                tracker.log_metrics(record, step=step)
        else:
            from pipelines.ray_engine import protect_on_ray

            work = WorkDir(work_dir) if work_dir else WorkDir.beside(out)
            clean, release, history, summary, test = protect_on_ray(
                source, config, work, ray_address, progress, tracker
            )
        manifest: dict[str, Any] = {
            "method": "beo",
            "engine": engine,
            "source": source,
            "dataset": clean.name,
            "eps": config.beo.pga.eps,
            "norm": config.beo.pga.norm,
            "config": to_dict(config),
            "code_version": code_version(),
            "python": platform.python_version(),
            "mlflow_run": tracker.run_id,
            "summary": summary,
            "history": history,
        }
        written = write_release(release, out, manifest, formats=config.formats, test=test, overwrite=overwrite)
        tracker.log_metrics(summary)
        tracker.log_figure(bayes_error_plot(history), "bayes_error.png")
        tracker.log_figure(image_grid(clean.images, release.images, clean.labels, clean.class_names), "images.png")
        tracker.log_json(written, "manifest.json")
        if engine == "ray":
            remove(work.uri)
    return ProtectSummary(out, len(clean), summary["bayes_error_clean"], summary["bayes_error_release"],
                          time.perf_counter() - started, tracker.run_id, tracker.uri)


def _protect_reference(source: str, config: ProtectConfig, progress: bool):
    train, test = load_training_set(source, config), load_test_set(source, config)
    result = BEO(config.beo, test_set=test).protect(train, progress=progress)
    return train, result.release, result.history, result.summary, test


def finalise(
    clean: ImageDataset, delta: torch.Tensor, surrogate: torch.nn.Module, config: ProtectConfig
) -> tuple[ImageDataset, dict[str, float]]:
    """δ (rows aligned with ``clean``) → the checked uint8 release and β̂ of clean and release data."""
    release = clean.with_images(quantise_release(clean.images, delta, config.beo.pga, clean.index))
    check_release(clean, release, config.beo.pga)
    summary = {}
    for name, data in (("clean", clean), ("release", release)):
        images, labels = data.tensors()
        summary[f"bayes_error_{name}"] = measure_bayes_error(
            surrogate, images, labels, data.num_classes, config.beo.estimator, config.beo.batch_size, config.beo.seed
        )
    return release, summary

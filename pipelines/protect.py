"""`ue protect`: from a source dataset (folder or s3://) to a published, verified release (folder or s3://).

Engines:
    ray        (default) ingest → rounds on Ray (pipelines/ray_engine/) → finish and publish; resumable.
    reference  ue_core's one-process BEO, the ground truth the Ray engine is tested against, on ``device``
               ("auto": CUDA when this machine has it, else the CPU; ue_core.training.resolve_device).

Methods (config key ``method``): BEO, or a baseline to compare it with (random noise, EM, TAP, OPS, AR, LSP).
A baseline runs ue_core's one-process method: in this process on ``device`` (engine reference) or as one Ray
task on the cluster (engine ray; on a GPU when the cluster has one). Baselines are comparison points, not
the product's sharded job, and they are not resumable.

BEO prints one line per round to stderr with either engine (pipelines.progress: ``protect round k/N: …``),
with or without progress bars.

Both check the inputs before any work (existing output, readable source, writable destination), claim
the output (pipelines.storage.claim_output: a second job on the same --out fails at once; a rerun of this
same job after a kill takes the claim over and, on the Ray engine, resumes from the work folder), track
the job in MLflow, and publish atomically with manifest.json last (ue_core.release), a batch of images at
a time (pipelines/publish.py: the Ray engine streams its release from the work directory, so the driver
never holds every image of a large dataset).

The MLflow run (pipelines/tracking.py) is tagged with method, dataset, eps and norm; it logs the clean images
as a ``source`` dataset input and the release (and each early release) as ``produced``, with the release's
digest, and keeps the final surrogate's weights as the artifact ``surrogate.pt`` (:func:`surrogate_spec`;
``keep_surrogate=False``, `--no-surrogate`, leaves it out): with the release they reproduce β̂.
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines import __version__
from pipelines.config import ProtectConfig
from pipelines.progress import RoundLines
from pipelines.publish import ProtectedRows, publish
from pipelines.sources import load_test_set, load_training_set
from pipelines.storage import (
    WorkDir,
    absolute,
    basename,
    check_readable,
    check_writable,
    claim_output,
    remove,
)
from pipelines.tracking import (
    DatasetRef,
    RemoteRun,
    Tracker,
    bayes_error_plot,
    check_reachable,
    experiment_name,
    image_grid,
    release_ref,
    run_tags,
)
from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError
from ue_core.release import check_release_target, read_manifest, snapshot_uri
from ue_core.training import resolve_device

ENGINES = ("ray", "reference")
QUALITY_KEYS = ("psnr_db", "ssim")  # ue_core.quality.QualityMeter.result


@dataclass
class ProtectSummary:
    """What a protect job reports at the end: ``results`` holds the method's headline numbers (BEO: β̂ of
    the clean data and of the release, keys bayes_error_clean and bayes_error_release) and, for every method,
    how visible the perturbation is: psnr_db and ssim of the release against the clean images (ue_core.quality).
    ``early_releases`` maps each round of ``beo.release_rounds`` to the release published after it."""

    method: str
    release_uri: str
    count: int
    results: dict[str, float]
    seconds: float
    mlflow_run: str | None
    tracking_uri: str
    early_releases: dict[int, str] = field(default_factory=dict)

    def line(self) -> str:
        if self.method == "beo":
            numbers = (f"β̂ {self.results['bayes_error_clean']:.4f} (clean) → "
                       f"{self.results['bayes_error_release']:.4f} (release)")
        else:
            numbers = ", ".join(f"{key.replace('_', ' ')} {value:.4g}" for key, value in self.results.items()
                                if key not in QUALITY_KEYS)
        numbers += f"{', ' if numbers else ''}PSNR {self.results['psnr_db']:.2f} dB, SSIM {self.results['ssim']:.4f}"
        early = ""
        if self.early_releases:
            early = (f" (and after rounds {', '.join(map(str, self.early_releases))} at "
                     f"{', '.join(self.early_releases.values())})")
        return (f"protected {self.count} images with {self.method} ({numbers}) in {self.seconds:.0f} s; "
                f"release at {self.release_uri}{early}; MLflow run {self.mlflow_run} in {self.tracking_uri}")


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    version = __version__
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{version}+g{commit}"
    except (OSError, subprocess.SubprocessError):
        return version


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
    experiment: str | None = None,
    device: str = "auto",
    keep_surrogate: bool = True,
) -> ProtectSummary:
    """Protect ``source`` and publish the release at ``out``; see the module docstring. ``device`` serves
    the reference engine only: the Ray engine uses the devices Ray gives its workers. ``experiment``: the
    MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else ue-protect)."""
    started = time.perf_counter()
    check_protect_job(source, out, engine, overwrite, ray_address, tracking_uri)
    job = {"command": "protect", "source": absolute(source), "config": config.method_record()}
    run_name = f"protect {basename(out)}"
    experiment = experiment_name(experiment, "ue-protect")
    with claim_output(out, job, overwrite), Tracker(tracking_uri, experiment, run_name=run_name) as tracker:
        tracker.log_params({"engine": engine, "source": source, "out": out, **config.method_record()})
        sharded = engine == "ray" and config.method == "beo"  # BEO's rounds on Ray, resumable from ``work``
        if sharded:
            from pipelines.ray_engine import protect_on_ray

            work = WorkDir(work_dir) if work_dir else WorkDir.beside(out)
            rows, test = protect_on_ray(source, config, work, ray_address, progress, tracker)
        else:
            test = load_test_set(source, config)
            if engine == "ray":
                from pipelines.ray_engine import protect_in_one_task

                clean, result = protect_in_one_task(source, config, ray_address, progress)
            else:
                clean = load_training_set(source, config)
                method = config.build(test, str(resolve_device(device)), on_round=RoundLines(config.beo.rounds))
                result = method.protect(clean, progress=progress)
            surrogate = None if result.surrogate is None else surrogate_spec(result.surrogate, config, clean)
            rows = ProtectedRows.in_memory(clean, result.release, result.snapshots, result.history, result.summary,
                                           surrogate)
            for step, record in enumerate(rows.history):
                tracker.log_metrics(record, step=step)
        dataset = rows.like.name
        tracker.set_tags(run_tags(config.method, dataset, config.budget.eps, config.budget.norm))
        manifest: dict[str, Any] = {
            "method": config.method,
            "engine": engine,
            "source": source,
            "dataset": dataset,
            "eps": config.budget.eps,
            "norm": config.budget.norm,
            "config": config.method_record(),
            "code_version": code_version(),
            "python": platform.python_version(),
            "mlflow_run": tracker.run_id,
            "source_digest": rows.source_digest,
        }
        published = publish(rows, out, manifest, config.formats, test, overwrite)
        summary = published.summary
        tracker.log_metrics(summary)
        if config.method == "beo":
            tracker.log_figure(bayes_error_plot(rows.history), "bayes_error.png")
        sample_clean, sample_release = published.sample
        tracker.log_figure(image_grid(sample_clean.images, sample_release.images, sample_clean.labels,
                                      sample_clean.class_names), "images.png")
        tracker.log_json(published.manifest, "manifest.json")
        early = {rounds: snapshot_uri(out, rounds) for rounds in rows.release_rounds}
        log_lineage(tracker, source, dataset, out, published.manifest, list(early.values()))
        if rows.surrogate is not None and keep_surrogate:
            tracker.log_torch(rows.surrogate, "surrogate.pt")
        if sharded:
            remove(work.uri)
    return ProtectSummary(config.method, out, rows.count, summary, time.perf_counter() - started, tracker.run_id,
                          tracker.uri, early)


def check_protect_job(source: str, out: str, engine: str, overwrite: bool, ray_address: str | None,
                      tracking_uri: str | None) -> None:
    """What a protect job checks before it claims ``out`` and starts any work (`--dry-run` too): the engine,
    the output (first: it names an unreachable endpoint, bad credentials or a missing bucket), the source,
    the tracking server, and a node-local tracking store on a multi-node cluster."""
    if engine not in ENGINES:
        raise InvalidInputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    check_writable(out)
    check_release_target(out, overwrite)
    check_readable(source)
    check_reachable(tracking_uri)
    if engine == "ray":
        from pipelines.ray_utils import check_tracking_store

        check_tracking_store(ray_address, tracking_uri)


def log_lineage(tracker: RemoteRun, source: str, dataset: str, out: str, manifest: dict[str, Any],
                early: list[str]) -> None:
    """The run's dataset inputs: the clean images (``source``, the manifest's source_digest), the release at
    ``out`` with ``manifest`` and the ``early`` releases inside it (``produced``)."""
    tracker.log_datasets({
        "source": [DatasetRef(dataset, absolute(source), manifest["source_digest"])],
        "produced": [release_ref(absolute(out), manifest)]
                    + [release_ref(absolute(uri), read_manifest(uri)) for uri in early],
    })


def surrogate_spec(model: torch.nn.Module, config: ProtectConfig, clean: ImageDataset) -> dict[str, Any]:
    """A method's final surrogate as the Ray engine keeps it: {name, num_classes, in_channels, image_size,
    state_dict}; ``ue_core.models.build_model(name, num_classes, in_channels=…, image_size=…)`` rebuilds it
    and ``load_state_dict`` loads the weights (pipelines.ray_engine.state.load_model does both)."""
    section = getattr(config, config.method)
    name = section.surrogate.model if config.method == "beo" else section.model
    return {"name": name, "num_classes": clean.num_classes, "in_channels": clean.image_shape[2],
            "image_size": clean.image_shape[0], "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}


"""`ue evaluate`: how unlearnable is a release? The arms of the mixing protocol (docs/method.md §4), each a victim
trained on Ray Train (pipelines/victims.py), reported as one table under one MLflow parent run.

    ue evaluate --source data/fashion-mnist --release outputs/fashion-mnist-beo --out results/fmnist-eval \\
        --victim small_cnn --epochs 8 --ratio 0.5 --defence grayscale

The clean training set is the clean source restricted to the release's indices (a release of a subset is
evaluated against the same subset); every release index must be in the source with the same label. At --out
(published atomically, nothing visible before the end): results.csv and results.md (one row per arm),
index-set.json (the mixing draw: which indices were protected), accuracy.png, models/ARM.pt (each victim's
final weights), and with the clean-all arm bayes_error.json: β̂ of the clean images and of the release in
that victim's feature space, one fixed space for every method. Ray Train's checkpoints go to --storage
(default: a hidden work folder beside --out, removed at the end). While the victims train, this process prints
a line per epoch and one as each victim ends (stderr; pipelines.progress: ``victim ARM epoch k/N: …``).

In MLflow (pipelines/tracking.py) the parent run and each arm's run are tagged with the release's method,
dataset, eps and norm and the ratio, and log the clean training images as a ``source`` dataset input and the
release as ``evaluated`` (its manifest's digest); the results table is also an MLflow table (results.json).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from pipelines.config import EvaluateConfig
from pipelines.progress import EpochLines
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
    check_reachable,
    experiment_name,
    release_ref,
    run_tags,
)
from ue_core.config import to_dict
from ue_core.data import read_dataset
from ue_core.data.atomic import check_output_free, staged_directory
from ue_core.data.dataset import ImageDataset, balanced_subset
from ue_core.data.fsutil import filesystem, read_bytes
from ue_core.data.mixing import build_training_set, protected_mask, save_index_set
from ue_core.defences import purification
from ue_core.errors import InvalidInputError
from ue_core.methods.beo import EstimatorConfig, measure_bayes_error
from ue_core.release import read_manifest, read_release

_MAX_SHOWN = 5
RELEASE_ARMS = ("mixed", "poison-only")  # the arms whose victims see released images


@dataclass(frozen=True)
class ArmResult:
    """One row of the results table: accuracies are fractions in [0, 1] on the clean test set."""

    mode: str
    ratio: float
    train_images: int
    protected_images: int
    final_test_accuracy: float
    best_test_accuracy: float
    final_robust_accuracy: float | None
    seconds: float
    mlflow_run: str | None
    model: str
    """The victim's final weights (a torch state dict), relative to the results folder."""


@dataclass(frozen=True)
class EvaluationData:
    """The clean training images of the release's indices, the release, and the clean test set."""

    clean: ImageDataset
    release: ImageDataset
    test: ImageDataset


def load_evaluation_data(source: str, release: str, config: EvaluateConfig) -> EvaluationData:
    """Read and align the three sets; any mismatch is an error naming the indices (nothing is started)."""
    protected = read_release(release)
    clean = read_dataset(source, split="train", layout=config.layout)
    missing = np.setdiff1d(protected.index, clean.index)
    if missing.size:
        raise InvalidInputError(
            f"release {release} has {missing.size} indices that are not in the clean source {source}, "
            f"e.g. {missing[:_MAX_SHOWN].tolist()}"
        )
    clean = clean.subset(np.flatnonzero(np.isin(clean.index, protected.index)))
    test = read_dataset(source, split="test", layout=config.layout)
    if config.test_subset is not None:
        test = balanced_subset(test, min(config.test_subset, len(test)), seed=config.seed)
    if test.image_shape != clean.image_shape or test.num_classes != clean.num_classes:
        raise InvalidInputError(f"the test split of {source} does not match its training split's images or classes")
    return EvaluationData(clean, protected, test)


def arms(data: EvaluationData, config: EvaluateConfig) -> dict[str, tuple[ImageDataset, np.ndarray]]:
    """mode → (training set, protected indices), built and checked (indices, labels, shapes) up front."""
    built = {}
    for mode in config.modes:
        train, protected = build_training_set(data.clean, data.release, mode, config.ratio, config.seed)
        if len(train) == 0:
            raise InvalidInputError(f"arm {mode} at ratio {config.ratio} has no training images")
        built[mode] = (train, protected)
    return built


def fixed_space_bayes_error(data: EvaluationData, weights: bytes, config: EvaluateConfig) -> dict[str, float]:
    """β̂ of the clean training images and of the release in one fixed feature space: the clean-all victim's,
    a model that never saw a protected image (exact estimator, σ = 0.3 on normalised features; the victim's
    purifications applied first, as it saw its images). The same space serves every method's release, so
    the numbers compare BEO with its baselines; on at most ``config.bayes_error_subset`` class-balanced
    indices, the same for both sets.

    Returns {"bayes_error_clean", "bayes_error_release", "images"}.
    """
    clean = data.clean
    if config.bayes_error_subset is not None and len(clean) > config.bayes_error_subset:
        clean = balanced_subset(clean, config.bayes_error_subset, seed=config.seed)
    release = data.release.subset(np.flatnonzero(np.isin(data.release.index, clean.index)))
    model = config.victim.build(clean.num_classes, clean.image_shape)
    model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    purify = purification(config.defence)
    values: dict[str, float] = {"images": float(len(clean))}
    for name, dataset in (("clean", clean), ("release", release)):
        images, labels = dataset.tensors()
        if purify is not None:
            images = purify(images)
        values[f"bayes_error_{name}"] = measure_bayes_error(
            model, images, labels, clean.num_classes, EstimatorConfig(), seed=config.seed
        )
    return values


def results_table(rows: list[ArmResult]) -> tuple[str, str]:
    """The results as CSV and as a Markdown table (accuracies in percent)."""
    fields = list(ArmResult.__dataclass_fields__)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    lines = [
        ("| arm | ratio | train images | protected | final test acc (%) | best test acc (%) | robust acc (%) "
         "| seconds |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        robust = "—" if row.final_robust_accuracy is None else f"{100 * row.final_robust_accuracy:.2f}"
        lines.append(
            f"| {row.mode} | {row.ratio:g} | {row.train_images} | {row.protected_images} | "
            f"{100 * row.final_test_accuracy:.2f} | {100 * row.best_test_accuracy:.2f} | {robust} | {row.seconds:.0f} |"
        )
    return buffer.getvalue(), "\n".join(lines) + "\n"


def accuracy_plot(rows: list[ArmResult], title: str) -> plt.Figure:
    """Final and best clean test accuracy per arm, as bars."""
    figure, axis = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.5))
    positions = np.arange(len(rows))
    axis.bar(positions - 0.2, [100 * r.final_test_accuracy for r in rows], 0.4, label="final")
    axis.bar(positions + 0.2, [100 * r.best_test_accuracy for r in rows], 0.4, label="best")
    axis.set_xticks(positions, [r.mode for r in rows])
    axis.set_ylabel("clean test accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def publish_results(out_fs, staging: str, tracker: RemoteRun, csv_text: str, markdown: str, figure: plt.Figure,
                    table: list[dict[str, Any]]) -> None:
    """results.csv, results.md and accuracy.png into a staging folder (ue_core.data.atomic), and the same
    three as artifacts of ``tracker``'s run, with ``table`` (the rows of results.csv) as the MLflow table
    results.json: what `ue evaluate` and `ue sweep` both publish."""
    for name, text in (("results.csv", csv_text), ("results.md", markdown)):
        with out_fs.open(f"{staging}/{name}", "w") as f:
            f.write(text)
        tracker.log_text(text, name)
    tracker.log_table(table, "results.json")
    with out_fs.open(f"{staging}/accuracy.png", "wb") as f:
        figure.savefig(f, format="png", dpi=120)
    tracker.log_figure(figure, "accuracy.png")


def check_evaluate_job(source: str, release: str, out: str, overwrite: bool, storage: str | None,
                       ray_address: str | None, tracking_uri: str | None) -> None:
    """What an evaluate job checks before it claims ``out`` and starts any work (`--dry-run` too)."""
    check_writable(out)
    fs, path = filesystem(out)
    check_output_free(fs, path, out, overwrite)
    check_readable(source)
    check_readable(release)
    if storage is not None:
        check_writable(storage)
    check_reachable(tracking_uri)
    from pipelines.ray_utils import check_tracking_store

    check_tracking_store(ray_address, tracking_uri)


@dataclass
class EvaluateSummary:
    out: str
    rows: list[ArmResult]
    mlflow_run: str | None
    tracking_uri: str
    markdown: str
    bayes_error: dict[str, float] | None
    """See :func:`fixed_space_bayes_error`; None without the clean-all arm."""

    def line(self) -> str:
        return f"results at {self.out}; MLflow parent run {self.mlflow_run} in {self.tracking_uri}"


def evaluate_release(
    source: str,
    release: str,
    out: str,
    config: EvaluateConfig,
    overwrite: bool = False,
    storage: str | None = None,
    ray_address: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    progress: bool = True,
) -> EvaluateSummary:
    """Train one victim per arm of ``config.modes`` and publish the results table at ``out``. ``experiment``:
    the MLflow experiment (default: MLFLOW_EXPERIMENT_NAME, else ue-evaluate)."""
    source, release, out = absolute(source), absolute(release), absolute(out)
    check_evaluate_job(source, release, out, overwrite, storage, ray_address, tracking_uri)
    from pipelines.ray_utils import Shared, connect

    experiment = experiment_name(experiment, "ue-evaluate")
    job = {"command": "evaluate", "source": source, "release": release, "config": to_dict(config)}
    with claim_output(out, job, overwrite):
        data = load_evaluation_data(source, release, config)
        training_sets = arms(data, config)

        from pipelines.victims import train_victim

        connect(ray_address, progress)
        test_images, test_labels = data.test.tensors()
        test_ref = Shared.put((test_images.numpy(), test_labels.numpy()))
        work = WorkDir.beside(out)
        storage_uri = storage or work.path("checkpoints")
        rows: list[ArmResult] = []
        weights: dict[str, bytes] = {}
        manifest = read_manifest(release)
        method = manifest.get("method", "unknown")
        tags = run_tags(method, data.clean.name, manifest["eps"], manifest.get("norm", "linf"), config.ratio)
        datasets = {"source": [DatasetRef(data.clean.name, source, data.clean.digest())],
                    "evaluated": [release_ref(release, manifest)]}
        with Tracker(tracking_uri, experiment, run_name=f"evaluate {basename(release)}") as parent:
            parent.log_params({"source": source, "release": release, "release_method": method, "out": out,
                               **to_dict(config)})
            parent.set_tags(tags)
            parent.log_datasets(datasets)
            for mode, (train, protected) in training_sets.items():
                with Tracker(tracking_uri, experiment, run_name=f"{mode} r={config.ratio:g}") as child:
                    child.log_params({"mode": mode, "train_images": len(train),
                                      "protected_images": len(protected), "release": release, **to_dict(config)})
                    child.set_tags(tags)
                    child.log_datasets(datasets if mode in RELEASE_ARMS else {"source": datasets["source"]})
                    result = train_victim(
                        train, test_ref, config, name=f"{mode}-{child.run_id}", storage_uri=storage_uri,
                        run=child, on_report=EpochLines(mode, config.victim.epochs),
                    )
                    rows.append(ArmResult(
                        mode=mode, ratio=config.ratio, train_images=result.train_images,
                        protected_images=len(protected), final_test_accuracy=result.final_test_accuracy,
                        best_test_accuracy=result.best_test_accuracy,
                        final_robust_accuracy=result.final_robust_accuracy, seconds=round(result.seconds, 1),
                        mlflow_run=child.run_id, model=f"models/{mode}.pt",
                    ))
                    weights[mode] = read_bytes(*filesystem(f"{result.checkpoint}/model.pt"))
            csv_text, markdown = results_table(rows)
            bayes_error = None
            if "clean-all" in weights:
                bayes_error = fixed_space_bayes_error(data, weights["clean-all"], config)
                markdown += (f"\nβ̂ in the clean-all victim's feature space ({bayes_error['images']:.0f} images): "
                             f"clean {bayes_error['bayes_error_clean']:.4f}, "
                             f"release {bayes_error['bayes_error_release']:.4f}\n")
                parent.log_metrics({f"fixed_space_{k}": v for k, v in bayes_error.items() if k != "images"})
            drawn = np.sort(data.clean.index[protected_mask(data.clean.index, config.ratio, config.seed)])
            figure = accuracy_plot(rows, f"{method} release, {config.victim.model}, ratio {config.ratio:g}, "
                                         f"defence {'+'.join(config.defence.names) or 'none'}")
            with staged_directory(out, overwrite) as (out_fs, staging):
                publish_results(out_fs, staging, parent, csv_text, markdown, figure, [asdict(r) for r in rows])
                save_index_set(out_fs.unstrip_protocol(f"{staging}/index-set.json"), drawn, mode="mixed",
                               ratio=config.ratio, seed=config.seed)
                if bayes_error is not None:
                    with out_fs.open(f"{staging}/bayes_error.json", "w") as f:
                        feature_space = f"clean-all victim ({config.victim.model})"
                        json.dump({"feature_space": feature_space, **bayes_error}, f)
                out_fs.makedirs(f"{staging}/models", exist_ok=True)
                for mode, content in weights.items():
                    with out_fs.open(f"{staging}/models/{mode}.pt", "wb") as f:
                        f.write(content)
            parent.log_metrics({f"{r.mode}_final_test_accuracy": r.final_test_accuracy for r in rows})
            parent.log_json({"mode": "mixed", "ratio": config.ratio, "seed": config.seed,
                             "protected_indices": drawn.tolist()}, "index-set.json")
        if storage is None:
            remove(work.uri)
    return EvaluateSummary(out, rows, parent.run_id, parent.uri, markdown, bayes_error)


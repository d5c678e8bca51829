"""MLflow tracking for `ue` jobs: one run per job, params, per-round metrics, figures as artifacts.

Embedded default: a sqlite store in ./mlflow.db, the store a plain `mlflow ui` opens in the same folder
(artifacts in ./mlartifacts); a server or any other store through `--tracking-uri` or MLFLOW_TRACKING_URI.
The experiment: `--experiment`, else MLFLOW_EXPERIMENT_NAME, else the command's own (ue-protect, …).
Credentials never reach params: only config values do.

Lineage: every run logs the datasets it read or wrote as MLflow dataset inputs (:class:`DatasetRef`: name,
URI, digest), with the context saying their part: ``source`` (the clean images, digest
ue_core.data.dataset.ImageDataset.digest), ``produced`` (a release a protect run made) or ``evaluated`` (a
release an evaluate or sweep run trained on), the release's digest being its manifest's
(ue_core.release.release_digest). So `dataset.digest = 'D'` in a run search finds the run that made release
D and every run that used it; runs are tagged with method, dataset, eps, norm (and ratio).

A tracking server lost mid-job does not stop the job (the release is the product, the run its record): the
first call that fails while the server does not answer prints one warning line, and from then on this
process logs nothing more to that server; the job finishes, publishes and exits 0, and its run stays
RUNNING with what was logged before. A failed call with the server still answering is an error as before.
How long a call waits for a lost server first is MLflow's retry policy (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR: about two minutes by default), so a server restarted within that time
loses nothing. A server unreachable at the start is an error before any work (:func:`check_reachable`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import torch
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.uri import is_local_uri

logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep a failing job's stderr to its one error line

from pipelines.config import budget_label
from ue_core.config import flatten
from ue_core.errors import UEError
from ue_core.release import release_digest

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # mlflow.store.tracking.DEFAULT_TRACKING_URI: what `mlflow ui` opens
REACH_TIMEOUT_S = 5.0  # how long `check_reachable` waits for a tracking server to answer


class TrackingError(UEError):
    """The MLflow tracking server cannot be reached."""


def tracking_uri(explicit: str | None = None) -> str:
    """The flag, else MLFLOW_TRACKING_URI, else the local sqlite store; a relative sqlite path is made
    absolute, so that Ray workers (whose working directory differs) write to the same store."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def experiment_name(explicit: str | None, default: str) -> str:
    """The flag, else MLFLOW_EXPERIMENT_NAME, else the command's ``default``."""
    return explicit or os.environ.get("MLFLOW_EXPERIMENT_NAME") or default


def is_node_local(uri: str | None = None) -> bool:
    """Whether the store (:func:`tracking_uri`) is files on one node: sqlite:, file: or a plain path (as
    MLflow reads a tracking URI: mlflow.utils.uri.is_local_uri)."""
    uri = tracking_uri(uri)
    return uri.startswith("sqlite:") or is_local_uri(uri, is_tracking_or_registry_uri=True)


@dataclass(frozen=True)
class DatasetRef:
    """A dataset as MLflow records it: a name, where it lives (a path or URI) and its digest."""

    name: str
    uri: str
    digest: str

    def entity(self) -> Dataset:
        """The MLflow dataset: its source is {"uri": …}, of type "local" or the URI's scheme, as MLflow's own
        artifact dataset sources write it."""
        scheme = self.uri.split("://", 1)[0] if "://" in self.uri else "local"
        return Dataset(name=self.name, digest=self.digest, source_type="local" if scheme == "file" else scheme,
                       source=json.dumps({"uri": self.uri}))


def release_ref(uri: str, manifest: dict[str, Any]) -> DatasetRef:
    """The release at ``uri``: named by dataset, method and budget (and the round of an early release), with
    the digest of its manifest."""
    budget = budget_label(manifest["eps"], manifest.get("norm", "linf"))  # "eps=8/255", "l2=168/255", "l0=1"
    name = f"{manifest['dataset']} {manifest['method']} {budget}"
    if "rounds" in manifest:
        name += f" round {manifest['rounds']}"
    return DatasetRef(name, uri, release_digest(manifest))


def run_tags(method: str, dataset: str, eps: float, norm: str, ratio: float | None = None) -> dict[str, str]:
    """The tags a run is searched by: method, dataset, eps ("8/255", "168/255", "1"), norm, and ratio."""
    tags = {"method": method, "dataset": dataset, "eps": budget_label(eps, norm).split("=", 1)[1], "norm": norm}
    return tags if ratio is None else {**tags, "ratio": f"{ratio:g}"}


def check_reachable(uri: str | None = None) -> None:
    """Raise TrackingError (one line, naming the URI) unless an http(s) tracking server answers within
    REACH_TIMEOUT_S; any HTTP answer will do. Jobs call it with their other input checks, before any work:
    MLflow's own client retries a refused connection for minutes and then fails with a traceback."""
    uri = tracking_uri(uri)
    reason = _unreachable_reason(uri)
    if reason is not None:
        raise TrackingError(f"cannot reach the MLflow tracking server at {uri}: {reason} "
                            "(check --tracking-uri or MLFLOW_TRACKING_URI)")


def _unreachable_reason(uri: str) -> str | None:
    """Why the http(s) tracking server at ``uri`` does not answer within REACH_TIMEOUT_S, or None if it
    answers (any HTTP answer will do) or ``uri`` is not a server."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        urllib.request.urlopen(uri, timeout=REACH_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (OSError, ValueError) as error:
        return str(getattr(error, "reason", error))
    return None


_T = TypeVar("_T")
_LOST_SERVERS: set[str] = set()  # tracking servers this process lost mid-job: nothing more is sent to them


def _tolerating_loss(uri: str, call: Callable[[], _T]) -> _T | None:
    """``call()``, an MLflow call to the store at ``uri``; if it fails while that server does not answer,
    one warning line on stderr (the first time) and None, here and for every later call to ``uri``."""
    if uri in _LOST_SERVERS:
        return None
    try:
        return call()
    except Exception:
        reason = _unreachable_reason(uri)
        if reason is None:
            raise
        _LOST_SERVERS.add(uri)
        print(f"warning: lost the MLflow tracking server at {uri} ({reason}): the job goes on without "
              "tracking; its run misses what it would have logged from now on", file=sys.stderr, flush=True)
        return None


@functools.lru_cache(maxsize=4)
def _client(uri: str) -> mlflow.MlflowClient:
    """One client per store and process (each new client re-opens and re-checks a sqlite store)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return mlflow.MlflowClient(uri)


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite database (not in the working directory),
    else the store's default."""
    if not uri.startswith("sqlite:"):
        return None
    return Path(uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").as_uri()


def _create_run(client: mlflow.MlflowClient, experiment_id: str, name: str, parent_run_id: str | None,
                tags: dict[str, str] | None = None) -> str:
    """A new run's id, with the context tags MLflow's own start_run adds (user, source) and the parent's."""
    nesting = {} if parent_run_id is None else {MLFLOW_PARENT_RUN_ID: parent_run_id}
    return client.create_run(experiment_id, run_name=name, tags=resolve_tags({**nesting, **(tags or {})})).info.run_id


@dataclass(frozen=True)
class RemoteRun:
    """An MLflow run, logged to by id from any process (a Ray worker too: it pickles as two strings).

    Its calls tolerate a lost tracking server (module docstring); with ``run_id`` None (a run started while
    the server was lost) it logs nothing."""

    uri: str
    run_id: str | None

    @staticmethod
    def start(uri: str, experiment: str, name: str, parent_run_id: str | None = None) -> RemoteRun:
        """A new run named ``name`` in ``experiment`` (created if missing), nested under ``parent_run_id``."""
        def start() -> str:
            client = _client(uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(
                experiment, artifact_location=_artifact_location(uri))
            return _create_run(client, experiment_id, name, parent_run_id)

        return RemoteRun(uri, _tolerating_loss(uri, start))

    @staticmethod
    def start_child(uri: str, parent_run_id: str | None, name: str, tags: dict[str, str] | None = None) -> RemoteRun:
        """A new run nested under ``parent_run_id``, in the parent's experiment (e.g. one per Tune trial)."""
        def start() -> str:
            client = _client(uri)
            return _create_run(client, client.get_run(parent_run_id).info.experiment_id, name, parent_run_id, tags)

        return RemoteRun(uri, None if parent_run_id is None else _tolerating_loss(uri, start))

    def _call(self, call: Callable[[mlflow.MlflowClient, str], object]) -> None:
        if self.run_id is not None:
            _tolerating_loss(self.uri, lambda: call(_client(self.uri), self.run_id))

    def finish(self, status: str) -> None:
        """End the run as "FINISHED" or "FAILED"."""
        self._call(lambda client, run_id: client.set_terminated(run_id, status=status))

    def log_params(self, params: dict[str, Any]) -> None:
        batch = [Param(k, str(v)[:500]) for k, v in flatten(params).items()]
        self._call(lambda client, run_id: client.log_batch(run_id, params=batch))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()
                 if isinstance(value, (int, float))]
        self._call(lambda client, run_id: client.log_batch(run_id, metrics=batch))

    def set_tags(self, tags: dict[str, str]) -> None:
        batch = [RunTag(key, str(value)) for key, value in tags.items()]
        self._call(lambda client, run_id: client.log_batch(run_id, tags=batch))

    def log_figure(self, figure: plt.Figure, name: str) -> None:
        self._call(lambda client, run_id: client.log_figure(run_id, figure, name))
        plt.close(figure)

    def log_json(self, content: dict[str, Any], name: str) -> None:
        self._call(lambda client, run_id: client.log_dict(run_id, content, name))

    def log_text(self, text: str, name: str) -> None:
        self._call(lambda client, run_id: client.log_text(run_id, text, name))

    def log_table(self, rows: list[dict[str, Any]], name: str) -> None:
        """A results table as an MLflow table (``name`` ends in .json): one row per dict."""
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        self._call(lambda client, run_id: client.log_table(run_id, columns, name))

    def log_torch(self, content: Any, name: str) -> None:
        """``content`` saved with torch.save as the artifact ``name``."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            torch.save(content, path)
            self._call(lambda client, run_id: client.log_artifact(run_id, str(path)))

    def log_datasets(self, datasets: dict[str, list[DatasetRef]]) -> None:
        """Log each dataset of ``datasets`` (context → datasets) as an input of the run."""
        inputs = [DatasetInput(ref.entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
                  for context, refs in datasets.items() for ref in refs]
        self._call(lambda client, run_id: client.log_inputs(run_id, datasets=inputs))


_OPEN_TRACKERS: list[RemoteRun] = []  # this process's open Tracker blocks, innermost last


class Tracker:
    """``with Tracker(uri, experiment, run_name) as run:`` a new MLflow run (a :class:`RemoteRun`) for the
    block, ended FINISHED, or FAILED on an exception. Inside another Tracker's block, the run is a child of
    that block's run (a nested run)."""

    def __init__(self, uri: str | None, experiment: str, run_name: str) -> None:
        uri = tracking_uri(uri)
        parent = _OPEN_TRACKERS[-1].run_id if _OPEN_TRACKERS else None
        self.run = RemoteRun.start(uri, experiment, run_name, parent)

    def __enter__(self) -> RemoteRun:
        _OPEN_TRACKERS.append(self.run)
        return self.run

    def __exit__(self, kind, value, traceback) -> None:
        _OPEN_TRACKERS.pop()
        self.run.finish("FINISHED" if kind is None else "FAILED")


def bayes_error_plot(history: list[dict[str, float]]) -> plt.Figure:
    """β̂ per ascent step, with the surrogate's accuracies and the mixed efficacy probe (markers, beside its
    clean-only reference) on a second axis when present."""
    figure, axis = plt.subplots(figsize=(6, 3.5))
    steps = np.arange(len(history))
    axis.plot(steps, [h["bayes_error"] for h in history], marker="o", color="tab:red", label="β̂ (protected)")
    axis.set_xlabel("ascent step (rounds × steps per round)")
    axis.set_ylabel("Bayes-error estimate β̂")
    handles = axis.get_lines()
    accuracies = [k for k in ("surrogate_train_accuracy", "surrogate_test_accuracy") if any(k in h for h in history)]
    probed = any("probe_mixed_accuracy" in h for h in history)
    if accuracies or probed:
        twin = axis.twinx()
        for key, colour in zip(accuracies, ("tab:blue", "tab:green")):
            twin.plot(steps, [h.get(key, np.nan) for h in history], linestyle="--", color=colour,
                      label=key.replace("_", " "))
        if probed:  # the efficacy probe: markers at the probed rounds, its clean-only reference as a line
            twin.plot(steps, [h.get("probe_mixed_accuracy", np.nan) for h in history], marker="s", linestyle="none",
                      color="tab:purple", label="probe victim, mixed")
            reference = next(h["probe_clean_only_accuracy"] for h in history if "probe_clean_only_accuracy" in h)
            twin.axhline(reference, linestyle=":", color="tab:purple", label="probe victim, clean-only")
        twin.set_ylabel("accuracy")
        handles += twin.get_lines()
    axis.legend(handles=handles, loc="best", fontsize=8)
    figure.tight_layout()
    return figure


def image_grid(clean: np.ndarray, release: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
               per_class: int = 1) -> plt.Figure:
    """For the first images of each class: clean, protected, and δ amplified to the full range.

    clean, release: uint8 (N, H, W, C); labels (N,).
    """
    classes = [c for c in range(len(class_names)) if np.any(labels == c)][:10]
    columns = per_class * 3
    figure, axes = plt.subplots(len(classes), columns, figsize=(1.3 * columns, 1.3 * len(classes)), squeeze=False)
    for row, c in enumerate(classes):
        for k, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            delta = release[i].astype(np.int16) - clean[i].astype(np.int16)
            amplified = (delta - delta.min()) / max(1, delta.max() - delta.min())
            for j, (image, title) in enumerate(((clean[i], "clean"), (release[i], "protected"), (amplified, "δ"))):
                axis = axes[row, 3 * k + j]
                axis.imshow(image.squeeze(-1) if image.shape[-1] == 1 else image, cmap="gray", vmin=0,
                            vmax=1 if title == "δ" else 255)
                axis.set_xticks([])
                axis.set_yticks([])
                if row == 0:
                    axis.set_title(title, fontsize=8)
            axes[row, 0].set_ylabel(class_names[c][:12], fontsize=7)
    figure.tight_layout()
    return figure

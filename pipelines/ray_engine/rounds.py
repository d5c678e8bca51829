"""One BEO round on Ray: surrogate, then per step the feature pass, the estimator and the ascent pass (on the
job's pass actors), then the round written to the work directory (docs/method.md §3)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch
from ray.data.dataset import MaterializedDataset

from pipelines.ray_engine.estimator import feature_gradient
from pipelines.ray_engine.passes import PassPool
from pipelines.ray_engine.probe import EfficacyProbe
from pipelines.ray_engine.resources import Resources
from pipelines.ray_engine.state import (
    DatasetInfo,
    JobState,
    canonical_layout,
    load_model,
    state_columns,
)
from pipelines.ray_engine.trainer import SurrogateTrainer
from pipelines.ray_utils import Shared
from ue_core.methods.beo import BEOConfig, normalise_with_anchors
from ue_core.pga import Budget
from ue_core.training import feature_accuracy


def run_round(
    state: ray.data.Dataset,
    previous: dict[str, Any] | None,
    config: BEOConfig,
    budget: Budget,
    info: DatasetInfo,
    round_index: int,
    trainer: SurrogateTrainer,
    passes: PassPool,
    job: JobState,
    resources: Resources,
    probe: EfficacyProbe | None = None,
) -> tuple[dict[str, Any], list[dict[str, float]], MaterializedDataset]:
    """One round of ``config`` within ``budget``; writes round ``round_index`` and returns (surrogate, records,
    the new state).

    ``state`` is the state the previous round returned (laid out by :func:`canonical_layout`, block for block
    as the pass actors hand it on), or, in the first round of a job or of a resumed job, a lazy dataset: the last completed round's Parquet shards,
    or the initial state built from the ingest shards. Seconds per part of the round go into every record:
    seconds_read (reading and laying out a lazy state, 0 when handed on in memory), seconds_surrogate
    (training and the test accuracy; the train accuracy comes from step 0's features), then per step
    seconds_features, seconds_estimator, seconds_ascent, and seconds_write (the new state's Parquet shards,
    the surrogate and round.json). Where each pass ran goes in too, 1.0 on a GPU and 0.0
    on the CPU: on_gpu_surrogate (when trained this round), and per step on_gpu_features, on_gpu_estimator
    and on_gpu_ascent (the minimum over the pass's actors or tasks and the step's views).
    """
    started = time.perf_counter()
    columns = state_columns(config.pga)
    if not isinstance(state, MaterializedDataset):
        state = canonical_layout(state, columns, info, resources)
    round_metrics: dict[str, float] = {"round": round_index, "seconds_read": time.perf_counter() - started}
    started = time.perf_counter()
    surrogate, accuracies = trainer.train(state, previous, round_index)
    round_metrics |= {"seconds_surrogate": time.perf_counter() - started, **accuracies}
    model = load_model(surrogate)
    surrogate_ref = Shared.put(surrogate)
    records = []
    anchored = config.estimator.anchors == "clean"
    for step in range(config.steps_per_round):
        timings = {"seconds_features": 0.0, "seconds_estimator": 0.0}
        values, sigmas, gradients, devices = [], [], [], {"on_gpu_features": 1.0, "on_gpu_estimator": 1.0}
        for view in range(config.augment.passes):  # the step's views (ue_core.methods.beo.step_views)
            t0 = time.perf_counter()
            features = passes.features(state, surrogate_ref, round_index, step, view)
            devices["on_gpu_features"] = min(devices["on_gpu_features"], float(features["on_gpu"].min()))
            if step == 0 and view == 0:  # the round's protected images, scored from their features, as the reference
                round_metrics["surrogate_train_accuracy"] = feature_accuracy(
                    model, torch.from_numpy(features["features"]), torch.from_numpy(features["label"])
                )
            timings["seconds_features"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            z, anchors, scale = normalise_with_anchors(
                torch.from_numpy(features["features"]), torch.from_numpy(features["anchors"]) if anchored else None
            )
            value, sigma, gradient, estimator_on_gpu = feature_gradient(
                z.numpy(), features["label"], info.num_classes, config, round_index, step, resources,
                None if anchors is None else anchors.numpy(),
            )
            devices["on_gpu_estimator"] = min(devices["on_gpu_estimator"], estimator_on_gpu)
            values.append(value)
            sigmas.append(sigma)
            gradients.append(Shared.put((features["index"], (gradient / scale).astype(np.float32))))
            timings["seconds_estimator"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        state, sizes = passes.ascent(state, surrogate_ref, round_index, step, gradients)
        timings["seconds_ascent"] = time.perf_counter() - t0
        records.append(
            {
                **round_metrics,
                "step": step,
                "bayes_error": sum(values) / len(values),
                "sigma": sum(sigmas) / len(sigmas),
                "delta_max_abs": float(sizes["delta_abs_max"].max()),
                "delta_mean_abs": float(sizes["delta_abs_mean"].mean()),
                **timings,
                **devices,
                "on_gpu_ascent": float(sizes["on_gpu"].min()),
            }
        )
    t0 = time.perf_counter()  # the pool handed on the blocks it was given: still in the canonical layout
    if probe is not None:  # before round.json: a resumed job keeps the probe's figures
        records[-1] |= probe(state, round_index + 1)
    job.write_round(round_index, state, surrogate)
    seconds_write = time.perf_counter() - t0
    records = [{**record, "seconds_write": seconds_write} for record in records]
    job.complete_round(round_index, records)  # last: the round is complete
    return surrogate, records, state

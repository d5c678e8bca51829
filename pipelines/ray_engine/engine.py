"""The Ray engine of `ue protect`: ingest, run (or resume) the rounds, finish; and a baseline as one task."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from pipelines.config import ProtectConfig
from pipelines.progress import RoundLines
from pipelines.publish import ProtectedRows
from pipelines.ray_engine.passes import PassPool
from pipelines.ray_engine.probe import EfficacyProbe
from pipelines.ray_engine.resources import Resources, actor_device
from pipelines.ray_engine.rounds import run_round
from pipelines.ray_engine.state import (
    DatasetInfo,
    JobState,
    collect,
    initial_state,
    load_model,
    read_state,
    state_columns,
)
from pipelines.ray_engine.trainer import SurrogateTrainer
from pipelines.ray_utils import Shared, connect, unwrap
from pipelines.sources import load_test_set, load_training_set
from pipelines.storage import WorkDir
from pipelines.tracking import RemoteRun
from ue_core.config import from_dict, to_dict
from ue_core.data.dataset import ImageDataset
from ue_core.data.shards import empty_like, shard_set_digest, write_shards
from ue_core.errors import InvalidInputError
from ue_core.methods.base import ProtectionResult, release_of
from ue_core.methods.beo import release_summary_of_batches
from ue_core.pga import Budget

ROWS_PER_INGEST_SHARD = 5_000
RELEASE_BATCH_VALUES = 2**22
"""Pixel values (rows × H × W × C) per batch of the finish: quantising one takes ~32 bytes per value in
float64 temporaries (ue_core.pga.quantise_release, the checks, PSNR), ~130 MB — 5,349 Fashion-MNIST rows,
341 Tiny-ImageNet rows."""


@ray.remote
def _ingest(source: str, config: dict[str, Any], shards_uri: str) -> DatasetInfo:
    train = load_training_set(source, from_dict(ProtectConfig, config))
    write_shards(train, shards_uri, rows_per_shard=ROWS_PER_INGEST_SHARD, overwrite=True)
    return DatasetInfo(train.image_shape, train.num_classes, len(train), train.name)


def prepare(source: str, config: ProtectConfig, job: JobState) -> DatasetInfo:
    """Ingest the source into the job's work directory (once) and return what the rounds need to know."""
    record = {"source": source, "config": to_dict(config)}
    info = job.recorded_info(record)
    if info is None:
        info = unwrap(_ingest.options(num_cpus=0.5).remote(source, to_dict(config), job.ingest_uri))
        job.record_job(record, info)  # last: the ingest is complete
    return info


def initial_state_dataset(job: JobState, info: DatasetInfo, config: ProtectConfig) -> ray.data.Dataset:
    """The state before round 0: δ = 0 (and zero Adam moments under ``update: adam``) for every ingested
    image (lazy; never written, since it follows from the ingest shards: a job that resumes before round 0
    ends builds it again)."""
    return read_state(job.ingest_uri).map_batches(
        initial_state, fn_kwargs={"image_shape": info.image_shape, "columns": state_columns(config.beo.pga)}
    )


def protect_on_ray(
    source: str, config: ProtectConfig, work: WorkDir, address: str | None, progress: bool, tracker: RemoteRun
) -> tuple[ProtectedRows, ImageDataset | None]:
    """Run or resume the job, printing a line per round run (pipelines.progress.RoundLines); returns what it
    publishes (the release and the releases after the rounds of ``beo.release_rounds`` streamed from the work
    directory, :func:`release_pairs`) and the test set."""
    connect(address, progress)
    job = JobState(work)
    info = prepare(source, config, job)
    config.beo.estimator.check_targets(info.num_classes)
    test = load_test_set(source, config)
    test_ref = None if test is None else Shared.put(tuple(t.numpy() for t in test.tensors()))
    resources = Resources.from_cluster()

    done = job.completed_rounds()
    history = [record for round_index in done for record in job.records(round_index)]
    surrogate = job.surrogate_of(done[-1]) if done else None
    # the state the next round starts from: read lazily here, laid out by run_round, then handed on in memory
    state = job.state_after(done[-1]) if done else initial_state_dataset(job, info, config)
    bar = tqdm(total=config.beo.rounds, initial=len(done), desc="BEO rounds", unit="round", disable=not progress)
    lines = RoundLines(config.beo.rounds)
    if len(done) < config.beo.rounds:
        # one Ray Train run trains every remaining round's surrogate (see SurrogateTrainer), one pool of actors
        # runs every remaining round's passes (see PassPool)
        probe = EfficacyProbe(config.beo, config.budget, info, test_ref, resources)
        with (
            SurrogateTrainer(config.beo, info, test_ref, work, resources) as trainer,
            PassPool(config.beo, config.budget, resources) as passes,
        ):
            for round_index in range(len(done), config.beo.rounds):
                surrogate, records, state = run_round(
                    state, surrogate, config.beo, config.budget, info, round_index, trainer, passes, job, resources,
                    probe,
                )
                history.extend(records)
                for record in records:
                    tracker.log_metrics(record, step=len(history) - len(records) + record["step"])
                bar.set_postfix(bayes_error=f"{records[-1]['bayes_error']:.4f}")
                bar.update()
                lines(records)
    bar.close()

    like = empty_like(job.ingest_uri)
    ingested = collect(read_state(job.ingest_uri), ["index"])["index"]

    batch_rows = max(1, RELEASE_BATCH_VALUES // math.prod(info.image_shape))

    def pairs(rounds: int | None) -> Iterator[tuple[ImageDataset, ImageDataset]]:
        return release_pairs(job, config.beo.rounds if rounds is None else rounds, like, ingested, config.budget,
                             batch_rows)

    summary = release_summary_of_batches(load_model(surrogate), pairs(None), config.beo)
    rows = ProtectedRows(
        like=like, count=len(ingested), max_index=int(ingested.max(initial=0)),
        source_digest=shard_set_digest(job.ingest_uri), history=history, summary=summary, surrogate=surrogate,
        release_rounds=sorted(config.beo.release_rounds), pairs=pairs,
    )
    return rows, test


def release_pairs(job: JobState, rounds: int, like: ImageDataset, ingested: np.ndarray, budget: Budget,
                  batch_rows: int) -> Iterator[tuple[ImageDataset, ImageDataset]]:
    """The release after ``rounds`` rounds as (clean rows, release rows) batches of ``batch_rows`` in index
    order, streamed from that round's state in the work directory (read in this process, a row group at a
    time: :meth:`JobState.state_batches_after`) and quantised a batch at a time
    (ue_core.methods.base.release_of, which checks each batch); the state must hold exactly the ``ingested``
    indices (sorted)."""
    position = 0
    for batch in job.state_batches_after(rounds - 1, ["index", "label", "image", "delta"], batch_rows):
        clean = ImageDataset(np.ascontiguousarray(batch["image"]), np.array(batch["label"], np.int64),
                             like.num_classes, np.array(batch["index"], np.int64), like.class_names, like.name)
        if not np.array_equal(clean.index, ingested[position:position + len(clean)]):
            break
        position += len(clean)
        yield clean, release_of(clean, torch.from_numpy(np.array(batch["delta"], np.float32)), budget)
    if position != len(ingested):
        raise InvalidInputError(f"the state of round {rounds - 1} does not hold exactly the ingested indices")


@ray.remote
def _protect_task(source: str, config: dict[str, Any], threads: int) -> tuple[ImageDataset, ProtectionResult]:
    torch.set_num_threads(threads)
    protect_config = from_dict(ProtectConfig, config)
    train = load_training_set(source, protect_config)
    return train, protect_config.build(device=str(actor_device())).protect(train)


def protect_in_one_task(
    source: str, config: ProtectConfig, address: str | None, progress: bool
) -> tuple[ImageDataset, ProtectionResult]:
    """A baseline's whole one-process method as one Ray task (reading the source where it runs): on a GPU when
    the cluster has one, else with one node's cores as torch threads. Returns (clean training set, result)."""
    connect(address, progress)
    resources = Resources.from_cluster()
    task = _protect_task.options(num_cpus=resources.task_cpus, num_gpus=float(resources.task_gpus > 0))
    with tqdm(total=1, desc=f"{config.method} (one Ray task)", unit="job", disable=not progress) as bar:
        train, result = unwrap(task.remote(source, to_dict(config), resources.task_threads))
        bar.update()
    return train, result

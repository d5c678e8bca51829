"""The Ray engine of `ue protect`: connect, ingest, run (or resume) the rounds, finalise.

    ingest     a Ray task reads the source with ue_core and writes WORK/ingest as Parquet shards
    rounds     pipelines/rounds.py, one round at a time, each written to WORK/rounds/round-NNNNN/
    finalise   the last state → uint8 release, invariants checked, β̂ of clean vs release measured

A job's work directory records its config (job.json); a re-run of the same command resumes after the last
completed round, and a different config in the same work directory is refused rather than mixed in.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from pipelines.config import ProtectConfig
from pipelines.protect import finalise, load_test_set, load_training_set
from pipelines.rounds import (
    DatasetInfo,
    EfficacyProbe,
    Resources,
    SurrogateTrainer,
    collect,
    completed_rounds,
    initial_state,
    load_model,
    read_json,
    read_model,
    read_state,
    run_round,
    state_columns,
    unwrap,
    write_json,
)
from pipelines.storage import WorkDir, storage_env
from pipelines.tracking import Tracker
from ue_core.config import to_dict
from ue_core.data.dataset import ImageDataset
from ue_core.data.fsutil import filesystem
from ue_core.data.shards import read_shards, write_shards
from ue_core.errors import InvalidInputError
from ue_core.methods.base import ProtectionResult, release_of
from ue_core.pga import PGAConfig

ROWS_PER_INGEST_SHARD = 5_000


def connect(address: str | None, progress: bool) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS: a submitted job's driver joins its own cluster), or
    start a local Ray whose workers get the S3 settings of :func:`storage_env`.

    The local Ray's workers keep libgomp's default OpenMP wait policy (spin briefly, then sleep): one torch
    process per node computes at a time here, and OMP_WAIT_POLICY=PASSIVE made the surrogate's training
    15–30% slower (bench/README.md). A cluster whose nodes share cores sets PASSIVE in its nodes' own
    environment (cluster/local/localcluster.py does).

    Nothing is pushed into a cluster's runtime environment: its nodes hold their credentials (instance
    profile, IRSA, node environment) and a submitted job's runtime env carries the rest; credentials in a
    runtime env would show in the dashboard and in error messages, and a second copy of a job's env var is a
    conflict that Ray refuses.
    """
    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(runtime_env={"env_vars": storage_env()}, include_dashboard=False, log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset execution is noise here
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the same blocks in the same order on every run
    context.enable_progress_bars = progress


@ray.remote
def _ingest(source: str, config: dict[str, Any], shards_uri: str) -> dict[str, Any]:
    from ue_core.config import from_dict

    train = load_training_set(source, from_dict(ProtectConfig, config))
    write_shards(train, shards_uri, rows_per_shard=ROWS_PER_INGEST_SHARD, overwrite=True)
    return {"image_shape": list(train.image_shape), "num_classes": train.num_classes, "count": len(train),
            "name": train.name}


def prepare_work_dir(source: str, config: ProtectConfig, work: WorkDir) -> DatasetInfo:
    """Ingest the source into ``work`` (once) and return what the rounds need to know about it."""
    job = {"source": source, "config": to_dict(config)}
    job_uri = work.path("job.json")
    if _exists(job_uri):
        recorded = read_json(job_uri)
        if recorded["job"] != job:
            raise InvalidInputError(
                f"work directory {work.uri} belongs to a job with another source or config; "
                "remove it (or choose another --work-dir) to start afresh"
            )
        return DatasetInfo(tuple(recorded["info"]["image_shape"]), recorded["info"]["num_classes"],
                           recorded["info"]["count"], recorded["info"]["name"])
    info = unwrap(_ingest.options(num_cpus=0.5).remote(source, to_dict(config), work.path("ingest")))
    write_json(job_uri, {"job": job, "info": info})  # last: the ingest is complete
    return DatasetInfo(tuple(info["image_shape"]), info["num_classes"], info["count"], info["name"])


def _exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def initial_state_dataset(work: WorkDir, info: DatasetInfo, pga: PGAConfig) -> ray.data.Dataset:
    """The state before round 0: δ = 0 (and zero Adam moments under ``update: adam``) for every ingested
    image (lazy; never written, since it follows from the ingest shards: a job that resumes before round 0
    ends builds it again)."""
    return read_state(work.path("ingest")).map_batches(
        initial_state, fn_kwargs={"image_shape": info.image_shape, "columns": state_columns(pga)}
    )


def protect_on_ray(
    source: str, config: ProtectConfig, work: WorkDir, address: str | None, progress: bool, tracker: Tracker
) -> tuple[
    ImageDataset, ImageDataset, list[dict[str, float]], dict[str, float], ImageDataset | None, dict[int, ImageDataset]
]:
    """Run or resume the job; returns (clean, release, history, summary, test set, the releases after the
    rounds of ``beo.release_rounds``)."""
    connect(address, progress)
    info = prepare_work_dir(source, config, work)
    test = load_test_set(source, config)
    test_ref = None
    if test is not None:
        images, labels = test.tensors()
        test_ref = {"ref": ray.put((images.numpy(), labels.numpy()))}
    resources = Resources.from_cluster()

    done = completed_rounds(work)
    history: list[dict[str, float]] = []
    for round_index in done:
        history.extend(read_json(f"{work.round_dir(round_index)}/round.json"))
    surrogate = read_model(f"{work.round_dir(done[-1])}/surrogate.pt") if done else None
    # the state the next round starts from: read lazily here, laid out by run_round, then handed on in memory
    if done:
        state = read_state(f"{work.round_dir(done[-1])}/state")
    else:
        state = initial_state_dataset(work, info, config.beo.pga)
    bar = tqdm(total=config.beo.rounds, initial=len(done), desc="BEO rounds", unit="round", disable=not progress)
    if len(done) < config.beo.rounds:
        # one Ray Train run trains every remaining round's surrogate (see SurrogateTrainer)
        probe = EfficacyProbe(config.beo, info, test_ref, resources)
        with SurrogateTrainer(config.beo, info, test_ref, work, resources) as trainer:
            for round_index in range(len(done), config.beo.rounds):
                surrogate, records, state = run_round(
                    state, surrogate, config.beo, info, round_index, trainer, work, resources, probe
                )
                history.extend(records)
                for record in records:
                    tracker.log_metrics(record, step=len(history) - len(records) + record["step"])
                bar.set_postfix(bayes_error=f"{records[-1]['bayes_error']:.4f}")
                bar.update()
    bar.close()

    clean = read_shards(work.path("ingest")).sorted_by_index()
    final = collect(state, ["index", "delta"])
    if not np.array_equal(final["index"], clean.index):
        raise InvalidInputError(
            f"the state of round {config.beo.rounds - 1} does not hold exactly the ingested indices"
        )
    release, summary = finalise(clean, torch.from_numpy(final["delta"]), load_model(surrogate), config)
    snapshots = {}
    for rounds in config.beo.release_rounds:  # every round's state stays in the work folder until the end
        delta = collect(read_state(f"{work.round_dir(rounds - 1)}/state"), ["index", "delta"])["delta"]
        snapshots[rounds] = release_of(clean, torch.from_numpy(delta), config.beo.pga)
    return clean, release, history, summary, test, snapshots


@ray.remote
def _protect_task(
    source: str, config: dict[str, Any], threads: int, on_gpu: bool
) -> tuple[ImageDataset, ProtectionResult]:
    from pipelines.protect import build_method
    from ue_core.config import from_dict

    torch.set_num_threads(threads)
    protect_config = from_dict(ProtectConfig, config)
    train = load_training_set(source, protect_config)
    return train, build_method(protect_config, device="cuda" if on_gpu else "cpu").protect(train)


def protect_in_one_task(
    source: str, config: ProtectConfig, address: str | None, progress: bool
) -> tuple[ImageDataset, ProtectionResult]:
    """A baseline's whole one-process method as one Ray task (reading the source where it runs): on a GPU when
    the cluster has one, else with one node's cores as torch threads. Returns (clean training set, result)."""
    connect(address, progress)
    resources = Resources.from_cluster()
    task = _protect_task.options(num_cpus=resources.task_cpus, num_gpus=resources.gpus_per_actor)
    on_gpu = resources.gpus_per_actor > 0
    with tqdm(total=1, desc=f"{config.method} (one Ray task)", unit="job", disable=not progress) as bar:
        train, result = unwrap(task.remote(source, to_dict(config), resources.task_threads, on_gpu))
        bar.update()
    return train, result

"""Victim training on Ray Train: one TorchTrainer per victim, DDP over its workers, ue_core's training loop.

    driver    the training set → a Ray Dataset (index, label, image bytes); the clean test set → object store
    workers   get_dataset_shard("train") → tensors; prepare_model (DDP when there are several workers);
              ue_core.training.fit with the defences of ue_core.defences; rank 0 evaluates on the clean test
              set after every epoch and logs to MLflow; every rank reports each epoch (a barrier)
    result    final and best test accuracy (rank 0's), the checkpoint of the final weights in storage_path
    progress  with ``on_report``, rank 0's reports reach the driver as they are made: a Ray Train callback
              (it runs in the Train controller, an actor) puts them into a Ray queue that a driver thread
              reads, so the driver prints a line per epoch (pipelines.progress.EpochLines)

Used by `ue evaluate` (one victim per arm of the mixing protocol) and `ue sweep` (one per Tune trial, with
TuneReportCallback passing the reports on to Tune).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.train import Checkpoint, RunConfig, ScalingConfig, UserCallback
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty, Queue

from pipelines.config import EvaluateConfig
from pipelines.ray_utils import Shared
from pipelines.storage import is_s3, pyarrow_filesystem
from pipelines.tracking import RemoteRun
from ue_core.config import from_dict, to_dict
from ue_core.data.dataset import ImageDataset
from ue_core.defences import adversarial_training, purification, train_transform, training_loss
from ue_core.training import bare_model, evaluate, fit, robust_accuracy

RANK_SEED_STRIDE = 1_000_003
"""Rank r trains with seed + r · stride (shuffle, augmentation, defences), so one worker = ue_core.fit(seed)."""


@dataclass(frozen=True)
class Scaling:
    """Ray Train workers for one victim, sized from the cluster's resources.

    On GPUs: one worker per GPU asked for. On CPUs: the workers share a node's CPUs but one, which the Ray
    Data tasks that feed them need (a worker holding every CPU waited forever for its data here), and each
    runs torch on its share of the node's cores.
    """

    workers: int
    resources_per_worker: dict[str, float]
    threads: int
    use_gpu: bool

    @staticmethod
    def for_victim(requested_workers: int | None) -> Scaling:
        available = ray.available_resources()
        gpus = int(available.get("GPU", 0))
        node_cpus = max(float(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"])
        if gpus:
            workers = requested_workers or gpus
            return Scaling(workers, {"CPU": 1.0, "GPU": 1.0}, max(1, int(node_cpus) // max(1, gpus)), True)
        workers = requested_workers or 1
        cpus = max(0.25, (min(node_cpus, float(available.get("CPU", 1.0))) - 1.0) / workers)
        return Scaling(workers, {"CPU": cpus}, max(1, int(node_cpus) // workers), False)

    @property
    def cpus(self) -> float:
        """CPUs the whole victim holds while it trains."""
        return self.workers * self.resources_per_worker["CPU"]


def to_ray_dataset(dataset: ImageDataset) -> ray.data.Dataset:
    """Rows (index int64, label int32, image fixed-size bytes H·W·C) in the object store."""
    flat = np.ascontiguousarray(dataset.images.reshape(len(dataset), -1))
    image = pa.FixedSizeBinaryArray.from_buffers(pa.binary(flat.shape[1]), len(flat), [None, pa.py_buffer(flat)])
    return ray.data.from_arrow(pa.table({"index": dataset.index, "label": dataset.labels, "image": image}))


def _shard_tensors(shard: Any, image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A worker's rows as x float (n, C, H, W) in [0, 1] and y int64 (n,), in index order."""
    index, labels, images = [], [], []
    for batch in shard.iter_batches(batch_size=8192, batch_format="pyarrow"):
        column = batch.column("image").combine_chunks()
        width = column.type.byte_width
        data = np.frombuffer(column.buffers()[1], dtype=np.uint8)
        images.append(data[column.offset * width:(column.offset + len(column)) * width].reshape(-1, *image_shape))
        index.append(batch.column("index").to_numpy())
        labels.append(batch.column("label").to_numpy())
    order = np.argsort(np.concatenate(index), kind="stable")
    x = torch.from_numpy(np.concatenate(images)[order]).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(), torch.from_numpy(np.concatenate(labels)[order].astype(np.int64))


def _victim_loop(loop: dict[str, Any]) -> None:
    """Ray Train worker: train one victim with ue_core on this rank's shard; see the module docstring."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(loop["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = from_dict(EvaluateConfig, loop["config"])
    shape, num_classes = tuple(loop["image_shape"]), loop["num_classes"]
    x, y = _shard_tensors(ray.train.get_dataset_shard("train"), shape)
    device = ray.train.torch.get_device()
    compute = config.victim.compute
    model = compute.prepare(config.victim.build(num_classes, shape, seed=config.seed))  # before the DDP wrap
    model = ray.train.torch.prepare_model(model)
    test_x, test_y = (torch.from_numpy(a) for a in loop["test"].get())
    purify = purification(config.defence)
    if purify is not None:  # once, on the stored training images and on the test images (ue_core.defences)
        x, test_x = purify(x), purify(test_x)
    run = RemoteRun(**loop["run"]) if rank == 0 and loop["run"] is not None else None
    train_images = len(x) * world
    best = 0.0

    def report_epoch(record: dict[str, float]) -> None:
        """Every rank reports each epoch (a barrier); rank 0 adds the clean test accuracy and logs to MLflow."""
        nonlocal best
        metrics = {
            "epoch": record["epoch"], "train_loss": record["loss"], "train_accuracy": record["accuracy"],
            "lr": record["lr"], "epoch_seconds": record["seconds"], "train_images": train_images,
        }
        if rank == 0:
            metrics["test_accuracy"] = evaluate(bare_model(model), test_x, test_y, device=device, compute=compute)
            best = max(best, metrics["test_accuracy"])
            if run is not None:
                run.log_metrics(metrics, step=int(record["epoch"]))
        ray.train.report(metrics)

    fit(
        model, x, y, config.victim.to_recipe(world), seed=config.seed + rank * RANK_SEED_STRIDE,
        adversarial=adversarial_training(config.defence), device=device,
        batch_transform=train_transform(config.defence, num_classes), on_epoch_end=report_epoch, compute=compute,
        training_loss=training_loss(config.defence, config.victim.epochs),
    )
    final: dict[str, float] = {"epoch": config.victim.epochs, "train_images": train_images}
    if rank == 0:  # after fit's batch-norm recalibration: the weights that are checkpointed
        final["final_test_accuracy"] = evaluate(bare_model(model), test_x, test_y, device=device, compute=compute)
        final["best_test_accuracy"] = max(best, final["final_test_accuracy"])
        if config.robust_accuracy:
            generator = torch.Generator().manual_seed(config.seed)
            final["final_robust_accuracy"] = robust_accuracy(
                bare_model(model), test_x, test_y, config.defence.pgd, generator, device=device
            )
        if run is not None:
            run.log_metrics({k: v for k, v in final.items() if k.startswith(("final_", "best_"))})
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            torch.save({k: v.cpu() for k, v in bare_model(model).state_dict().items()}, f"{directory}/model.pt")
            checkpoint = Checkpoint.from_directory(directory)
        ray.train.report(final, checkpoint=checkpoint)


class _ForwardReports(UserCallback):
    """A Ray Train callback (run in the Train controller actor): puts rank 0's report, which holds the test
    accuracy, into ``queue`` after every ``ray.train.report``."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        self.queue.put(dict(metrics[0]))


@contextmanager
def forwarded_reports(on_report: Callable[[dict[str, Any]], None]) -> Iterator[UserCallback]:
    """A Train callback to pass to the trainer; while the block runs, a driver thread calls ``on_report``
    with each report it forwards, in order, and every report is handled before the block is left."""
    queue = Queue(actor_options={"num_cpus": 0})  # schedulable while the victim holds the CPUs
    done = threading.Event()

    def drain() -> None:
        while True:
            try:
                on_report(queue.get(timeout=1.0))
            except Empty:
                if done.is_set():
                    return

    thread = threading.Thread(target=drain, name="victim-reports", daemon=True)
    thread.start()
    try:
        yield _ForwardReports(queue)
    finally:
        done.set()  # the controller has put every report before fit returns: the thread empties the queue
        thread.join()
        ray.kill(queue.actor)


@dataclass(frozen=True)
class VictimResult:
    """One trained victim: accuracies are fractions in [0, 1] on the clean test set."""

    final_test_accuracy: float
    best_test_accuracy: float
    final_robust_accuracy: float | None
    """Under the PGD attack of the defence config (white box), when ``config.robust_accuracy``."""
    train_images: int
    """Images trained on: with several workers, up to workers − 1 rows are dropped so every rank has
    as many (DDP steps in lockstep)."""
    seconds: float
    checkpoint: str


def train_victim(
    train: ImageDataset,
    test_ref: Shared,
    config: EvaluateConfig,
    name: str,
    storage_uri: str,
    run: RemoteRun | None = None,
    callbacks: list[UserCallback] | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> VictimResult:
    """Train ``config.victim`` on ``train`` with ``config.defence`` on Ray Train and test it.

    Args:
        train: the training set of one arm (uint8 images, any row order: workers sort by index).
        test_ref: Shared.put((x float32 (N, C, H, W) in [0, 1], y int64 (N,))), the clean test set.
        config: victim, defence and seed (the arm's ratio and mode are the caller's business).
        name: the Ray Train run's name (its folder under ``storage_uri``).
        storage_uri: local folder or s3:// URI for Ray Train's checkpoints.
        run: the MLflow run that rank 0 logs the per-epoch metrics to.
        callbacks: Ray Train callbacks, e.g. TuneReportCallback inside a Tune trial.
        on_report: called in this process with rank 0's report of every epoch and its final report, as they
            are made (:func:`forwarded_reports`), e.g. pipelines.progress.EpochLines.
    """
    started = time.perf_counter()
    scaling = Scaling.for_victim(config.victim.workers)
    config.victim.to_recipe(scaling.workers)  # a batch that does not split over the workers fails here
    storage_fs, storage_path = pyarrow_filesystem(storage_uri)
    with ExitStack() as stack:  # with on_report: the reports reach this process while the victim trains
        forward = [stack.enter_context(forwarded_reports(on_report))] if on_report is not None else []
        trainer = TorchTrainer(
            _victim_loop,
            train_loop_config={
                "config": to_dict(config),
                "image_shape": list(train.image_shape),
                "num_classes": train.num_classes,
                "test": test_ref,
                "threads": scaling.threads,
                "run": None if run is None else {"uri": run.uri, "run_id": run.run_id},
            },
            datasets={"train": to_ray_dataset(train)},
            scaling_config=ScalingConfig(
                num_workers=scaling.workers, use_gpu=scaling.use_gpu,
                resources_per_worker=scaling.resources_per_worker,
            ),
            run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                                 callbacks=[*(callbacks or []), *forward]),
        )
        result = trainer.fit()
    metrics = result.metrics or {}
    return VictimResult(
        final_test_accuracy=float(metrics["final_test_accuracy"]),
        best_test_accuracy=float(metrics["best_test_accuracy"]),
        final_robust_accuracy=metrics.get("final_robust_accuracy"),
        train_images=int(metrics["train_images"]),
        seconds=time.perf_counter() - started,
        checkpoint=f"s3://{result.checkpoint.path}" if is_s3(storage_uri) else result.checkpoint.path,
    )

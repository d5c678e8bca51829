"""BEO rounds on Ray: the distributed counterpart of ue_core.methods.beo.BEO.perturb.

Per round (docs/method.md §2–3), each step a ue_core function run where the data is:

    surrogate   Ray Train (TorchTrainer, one worker) runs ue_core.methods.beo.train_surrogate
    features    Ray Data actors: φ(x + δ) (and φ(x) under ``estimator.anchors: clean``) per batch → the
                feature bank, normalised, put in the object store
    stats       Ray tasks over row blocks: ue_core.bayes_error.block_stats against the whole bank
    gradient    Ray tasks over row blocks: ue_core.bayes_error.block_gradient with everyone's stats
                (the "batch" and "reference" estimators and the anchored one: ue_core.methods.beo.estimate_step
                in one task)
    ascent      Ray Data actors: J_φᵀ (∂objective/∂z / s) per batch, then ue_core.pga.ascent_step
    probe       when due (``beo.probe``), one Ray task on the round's state: ue_core.efficacy's mixed probe

The state (δ, steps and, under Adam, the per-sample moments, keyed by index) lives in Parquet shards in the
work directory; each finished round is written there with round.json last, so a killed job resumes from its last round.
A round hands its state to the next in the object store, laid out as a read of those shards would be
(canonical_layout), so an uninterrupted and a resumed run see the same blocks in the same order.

Fixed costs matter on small machines (2 cores here): the job starts one Ray Train run for all its rounds
(SurrogateTrainer); each pass's actor pool is one new process per node; the estimator's tasks reuse Ray's
worker processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.data.dataset import MaterializedDataset

from pipelines.storage import WorkDir, pyarrow_filesystem, remove
from ue_core import bayes_error
from ue_core.config import from_dict, to_dict
from ue_core.data.fsutil import filesystem
from ue_core.errors import InvalidInputError, UEError
from ue_core.methods.beo import (
    BEOConfig,
    estimate_step,
    estimator_generator,
    normalise_with_anchors,
    train_surrogate,
)
from ue_core.models import Classifier, build_model
from ue_core.pga import PGAConfig, PixelState, ascent_step
from ue_core.training import compute_features, evaluate, feature_accuracy, feature_vjp

MOMENT_COLUMNS = ("exp_avg", "exp_avg_sq")


def state_columns(pga: PGAConfig) -> list[str]:
    """The columns of the state shards: Adam's two moments only under ``update: adam``.

    The sign and L2 rules never read the moments; storing them would triple the state's bytes moved
    through Arrow in every pass and written every round.
    """
    moments = list(MOMENT_COLUMNS) if pga.update == "adam" else []
    return ["index", "label", "image", "delta", *moments, "steps"]


@dataclass(frozen=True)
class DatasetInfo:
    """What every pass needs to know about the images: (H, W, C), classes, count."""

    image_shape: tuple[int, int, int]
    num_classes: int
    count: int
    name: str


TRAINER_CPUS = 0.05  # logical CPUs the job-long surrogate worker reserves (see SurrogateTrainer)


@dataclass(frozen=True)
class Resources:
    """How to size actor pools and tasks from what the cluster reports (never a hard-coded whole CPU).

    Attributes:
        actors: actors per pool: one per GPU, else one per CPU node, running one torch thread per core of
            its node. Every actor is a new process that imports torch and loads the surrogate (2–5 s of CPU
            here, more on a busy machine), paid twice per round (features, ascent); on a CPU node one
            actor with as many threads as cores does the same work per batch as one actor per core.
        cpus_per_actor: a fraction, so that Ray Data's own tasks and the driver keep room (whole-CPU
            actors deadlocked a 2-core machine).
        threads_per_actor: torch threads of each actor.
        gpus_per_actor: 1 when the cluster has GPUs, else 0.
        blocks: row blocks of the exact estimator, each a task: one per node, spread over the nodes, each
            with ``task_threads`` torch threads (the node's cores) and ``task_cpus``, a fraction, so that all
            blocks run at once whatever else holds a share of a CPU (with one single-threaded task per CPU,
            the trainer's reserved 0.05 CPU made the second task wait for the first). Ray keeps the
            tasks' worker processes and reuses them in the next round.
        trainer_cpus: CPUs the surrogate's Ray Train worker reserves for the whole job: a small fraction,
            since it trains only while everything else waits for it (SurrogateTrainer).
        trainer_threads: torch threads of that worker: all of the node's cores, since it trains alone.
    """

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    task_cpus: float
    trainer_cpus: float
    trainer_threads: int
    blocks: int
    task_threads: int
    threads_per_actor: int = 1

    @staticmethod
    def from_cluster() -> Resources:
        available = ray.available_resources()
        cpus, gpus = float(available.get("CPU", 1.0)), int(available.get("GPU", 0))
        cpu_nodes = [float(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]]
        cpu_nodes = [n for n in cpu_nodes if n > 0] or [cpus]
        node_cpus = max(cpu_nodes)
        if node_cpus < 2:  # Ray Data's tasks take 1 CPU each: beside the trainer's share they never start
            raise InvalidInputError(
                f"Ray cluster: its largest node has {node_cpus:g} logical CPU; a protect job needs a node with "
                "at least 2 logical CPUs (start nodes with --num-cpus=2 or more)"
            )
        trainer_cpus = min(TRAINER_CPUS, 0.1 * cpus)
        usable = cpus - trainer_cpus
        threads = max(1, int(node_cpus))
        common = {"trainer_cpus": trainer_cpus, "trainer_threads": threads, "blocks": len(cpu_nodes),
                  "task_cpus": 0.5 * usable / len(cpu_nodes), "task_threads": threads}
        if gpus:
            return Resources(actors=gpus, cpus_per_actor=min(1.0, usable / (2 * gpus)), gpus_per_actor=1, **common)
        actors = len(cpu_nodes)
        return Resources(
            actors=actors, cpus_per_actor=0.5 * usable / actors, gpus_per_actor=0, threads_per_actor=threads, **common
        )


def unwrap(refs: Any) -> Any:
    """ray.get that re-raises a project error from a task as itself, so the user sees its one line."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, UEError):
            raise cause from None
        raise


# ----------------------------------------------------------------------------------------------- models


def load_model(spec: dict[str, Any]) -> Classifier:
    model = build_model(
        spec["name"], spec["num_classes"], in_channels=spec["in_channels"], image_size=spec["image_size"]
    )
    model.load_state_dict(spec["state_dict"])
    return model.eval()


def save_model(spec: dict[str, Any], uri: str) -> None:
    buffer = io.BytesIO()
    torch.save(spec, buffer)
    fs, path = filesystem(uri)
    with fs.open(path, "wb") as f:
        f.write(buffer.getvalue())


def read_model(uri: str) -> dict[str, Any]:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return torch.load(io.BytesIO(f.read()), weights_only=True)


# ------------------------------------------------------------------------------------------ batch helpers


def images_and_delta(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean images x (B, C, H, W) in [0, 1] and δ (B, C, H, W) from a state batch."""
    x = torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(), torch.from_numpy(np.ascontiguousarray(batch["delta"]))


def initial_state(
    batch: dict[str, np.ndarray], image_shape: tuple[int, int, int], columns: list[str]
) -> dict[str, np.ndarray]:
    """Ingest shard rows (index, label, image bytes) → state rows of ``columns`` (:func:`state_columns`), with
    δ = 0 and zero Adam moments."""
    height, width, channels = image_shape
    images = np.frombuffer(b"".join(batch["image"]), np.uint8).reshape(-1, height, width, channels)
    zeros = np.zeros((len(images), channels, height, width), np.float32)
    state = {
        "index": batch["index"].astype(np.int64),
        "label": batch["label"].astype(np.int64),
        "image": images,
        "delta": zeros,
        **{name: zeros.copy() for name in MOMENT_COLUMNS if name in columns},
        "steps": np.zeros(len(images), np.int64),
    }
    return {name: state[name] for name in columns}


def collect(dataset: ray.data.Dataset, columns: list[str]) -> dict[str, np.ndarray]:
    """Bring ``columns`` of a dataset to the driver, rows sorted by index."""
    parts = list(dataset.select_columns(columns).iter_batches(batch_size=None, batch_format="numpy"))
    merged = {c: np.concatenate([p[c] for p in parts]) for c in columns}
    order = np.argsort(merged["index"], kind="stable")
    return {c: v[order] for c, v in merged.items()}


class FeaturePass:
    """Ray Data actor: penultimate features φ(x + δ) of each batch; output columns index, label, features, and
    with ``anchors`` also φ(x), the clean copies' features (``estimator.anchors: clean``)."""

    def __init__(self, surrogate: dict[str, Any], batch_size: int, threads: int = 1, anchors: bool = False) -> None:
        torch.set_num_threads(threads)
        self.model = load_model(ray.get(surrogate["ref"]))
        self.batch_size = batch_size
        self.anchors = anchors

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, delta = images_and_delta(batch)
        features = compute_features(self.model, x + delta, batch_size=self.batch_size)
        result = {"index": batch["index"], "label": batch["label"], "features": features.numpy()}
        if self.anchors:
            result["anchors"] = compute_features(self.model, x, batch_size=self.batch_size).numpy()
        return result


class AscentPass:
    """Ray Data actor: one PGA step for each row of a batch, given the feature gradient of every row."""

    def __init__(
        self,
        surrogate: dict[str, Any],
        pga: dict[str, Any],
        gradient: dict[str, Any],
        batch_size: int,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(threads)
        self.model = load_model(ray.get(surrogate["ref"]))
        self.pga = from_dict(PGAConfig, pga)
        self.sorted_index, self.feature_gradient = ray.get(gradient["ref"])  # (N,), (N, D) = ∂β̂/∂z / s
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, delta = images_and_delta(batch)
        rows = np.searchsorted(self.sorted_index, batch["index"])
        gradient = feature_vjp(
            self.model, x + delta, torch.from_numpy(self.feature_gradient[rows]), batch_size=self.batch_size
        )
        adam = self.pga.update == "adam"
        # the sign and L2 rules never read the moments, which the state then does not hold (state_columns)
        exp_avg, exp_avg_sq = (
            (torch.from_numpy(np.ascontiguousarray(batch[name])) for name in MOMENT_COLUMNS)
            if adam
            else (torch.zeros(()).expand_as(delta),) * 2
        )
        state = PixelState(delta, exp_avg, exp_avg_sq, torch.from_numpy(batch["steps"].astype(np.int64)))
        state = ascent_step(state, gradient, x, self.pga)
        size = state.delta.abs().flatten(1)
        return {
            **{c: batch[c] for c in ("index", "label", "image")},
            "delta": state.delta.numpy(),
            **({"exp_avg": state.exp_avg.numpy(), "exp_avg_sq": state.exp_avg_sq.numpy()} if adam else {}),
            "steps": state.steps.numpy(),
            "delta_abs_max": size.max(1).values.numpy(),  # per-row |δ| summaries for the round's metrics
            "delta_abs_mean": size.mean(1).numpy(),
        }


# -------------------------------------------------------------------------------------------- estimator


@ray.remote
def _stats_block(
    bank: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray | None,
    num_classes: int,
    sigma: float,
    start: int,
    stop: int,
    memory_budget: int,
    threads: int,
) -> tuple[np.ndarray, ...]:
    torch.set_num_threads(threads)
    z, y = torch.from_numpy(bank), torch.from_numpy(labels)
    row_targets = None if targets is None else torch.from_numpy(targets[start:stop])
    stats = bayes_error.block_stats(
        z[start:stop], z, y, num_classes, sigma, torch.arange(start, stop), memory_budget, row_targets
    )
    return stats.to_arrays()


@ray.remote
def _gradient_block(
    bank: np.ndarray,
    labels: np.ndarray,
    stats: tuple[np.ndarray, ...],
    sigma: float,
    objective: str,
    start: int,
    stop: int,
    memory_budget: int,
    threads: int,
) -> np.ndarray:
    torch.set_num_threads(threads)
    z, y = torch.from_numpy(bank), torch.from_numpy(labels)
    every = bayes_error.KernelStats.from_arrays(stats)
    rows = torch.arange(start, stop)
    return bayes_error.block_gradient(
        z[rows], y[rows], every.take(rows), z, y, every, sigma, len(z), rows, memory_budget, objective
    ).numpy()


@ray.remote
def _one_task_estimate(
    bank: np.ndarray,
    labels: np.ndarray,
    anchors: np.ndarray | None,
    num_classes: int,
    estimator: dict[str, Any],
    sigma: float,
    generator_seed: tuple[int, int, int],
    threads: int,
) -> tuple[float, np.ndarray]:
    from ue_core.methods.beo import EstimatorConfig

    torch.set_num_threads(threads)
    config = from_dict(EstimatorConfig, estimator)
    result = estimate_step(
        torch.from_numpy(bank), torch.from_numpy(labels), num_classes, config, sigma,
        estimator_generator(config, *generator_seed), True, None if anchors is None else torch.from_numpy(anchors),
    )
    return float(result.value), result.gradient.numpy()


def feature_gradient(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: BEOConfig,
    round_index: int,
    step: int,
    resources: Resources,
    anchors: np.ndarray | None = None,
) -> tuple[float, float, np.ndarray]:
    """β̂, the step's bandwidth σ and the objective's gradient (N, D) for normalised features z sorted by index
    (and, under ``estimator.anchors: clean``, the clean copies' normalised features in the same order).

    The exact estimator runs as two passes of tasks over row blocks (stats, then gradient); the cheap
    "batch" and "reference" estimators are O(N·b), and the anchored one O((2N)²) so far, and run as one task.
    """
    estimator = config.estimator
    generator_seed = (config.seed, round_index, step)
    sigma = estimator.step_sigma(torch.from_numpy(features), generator_seed)  # as the reference: z alone
    bank, bank_labels = ray.put(features), ray.put(labels)
    threads = resources.task_threads
    if estimator.kind != "exact" or anchors is not None:
        task = _one_task_estimate.options(num_cpus=resources.task_cpus)
        value, gradient = unwrap(task.remote(
            bank, bank_labels, anchors, num_classes, to_dict(estimator), sigma, generator_seed, threads
        ))
        return value, sigma, gradient
    targets = None
    if estimator.objective == "target":
        targets = bayes_error.target_classes(torch.from_numpy(labels), num_classes, estimator.target_shift).numpy()
    budget = estimator.memory_budget_mb * 2**20
    blocks = np.array_split(np.arange(len(features)), max(1, min(len(features), resources.blocks)))
    bounds = [(int(b[0]), int(b[-1]) + 1) for b in blocks if len(b)]
    options = {"num_cpus": resources.task_cpus, "scheduling_strategy": "SPREAD"}
    stats_task = _stats_block.options(**options)
    parts = unwrap(
        [stats_task.remote(bank, bank_labels, targets, num_classes, sigma, a, b, budget, threads) for a, b in bounds]
    )
    stats = bayes_error.KernelStats.concat([bayes_error.KernelStats.from_arrays(p) for p in parts])
    bayes_error.check_support(stats, sigma)
    stats_ref = ray.put(stats.to_arrays())
    gradient_task = _gradient_block.options(**options)
    rows = unwrap(
        [gradient_task.remote(bank, bank_labels, stats_ref, sigma, estimator.objective, a, b, budget, threads)
         for a, b in bounds]
    )
    return float(stats.errors.mean()), sigma, np.concatenate(rows)


# -------------------------------------------------------------------------------------------- surrogate


def _state_rows(blocks: list[Any], columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``columns`` of the state blocks (Arrow tables from the object store), rows sorted by index."""
    from ray.data.block import BlockAccessor

    parts = [BlockAccessor.for_block(block).select(list(columns)) for block in blocks]
    batches = [BlockAccessor.for_block(part).to_batch_format("numpy") for part in parts]
    merged = {c: np.concatenate([b[c] for b in batches]) for c in columns}
    order = np.argsort(merged["index"], kind="stable")  # the reference trains in index order
    return {c: v[order] for c, v in merged.items()}


def _surrogate_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: train one surrogate per request from the driver, until it sends None.

    A request names the round, last round's surrogate and the round's state blocks; the reply holds the
    trained weights and the accuracies. Tensors travel as object-store references, never inside a message:
    a queue actor that unpickles a tensor imports torch first (~1.5 s, then ~300 MB for the job). Each
    round ends with one ``ray.train.report``, so the worker reports once per round.
    """
    import ray.train

    config = from_dict(BEOConfig, loop_config["beo"])
    torch.set_num_threads(loop_config["threads"])
    inbox, outbox = loop_config["inbox"], loop_config["outbox"]
    while (request := inbox.get()) is not None:
        data = _state_rows(ray.get(request["blocks"]), ("index", "label", "image", "delta"))
        x, delta = images_and_delta(data)
        y = torch.from_numpy(data["label"])
        training_images = x if config.surrogate.mode == "fixed" else x + delta
        previous = load_model(ray.get(request["previous"])) if request["previous"] is not None else None
        model = train_surrogate(
            previous, training_images, y, loop_config["num_classes"], config.surrogate,
            seed=config.seed * 100_003 + request["round"],  # as the reference does
        )
        metrics = {}  # the train accuracy comes from the round's first feature pass (run_round)
        if loop_config["test"] is not None:
            test_x, test_y = ray.get(loop_config["test"]["ref"])
            metrics["surrogate_test_accuracy"] = evaluate(
                model, torch.from_numpy(test_x), torch.from_numpy(test_y), config.batch_size
            )
        state_dict = {k: v.cpu() for k, v in model.state_dict().items()}
        outbox.put({"round": request["round"], "state_dict": ray.put(state_dict), "metrics": metrics})
        ray.train.report({"round": request["round"], **metrics})


class SurrogateTrainer:
    """The job's surrogate trainer: one Ray Train TorchTrainer (one worker) that trains every round's surrogate.

    Starting a TorchTrainer (its controller, worker group and torch backend: three new processes that import
    torch) costs 10–20 s on a 2-core machine, as much as the training itself at N = 12,000, so the job starts
    one and sends it a request per round: ``train`` hands the worker the round's state blocks through the
    object store (no Ray Data split) and waits for the weights. Each round's training depends only on the
    seed, the round and the state, so a resumed job (a new trainer) trains the same surrogates.

    The worker reserves a small CPU fraction (``Resources.trainer_cpus``): it computes only while the driver
    waits for it, never while the actor pools or estimator tasks run, and whole CPUs held across the job
    would starve those. It trains with ``Resources.trainer_threads`` torch threads.
    """

    def __init__(
        self, config: BEOConfig, info: DatasetInfo, test: dict[str, Any] | None, work: WorkDir, resources: Resources
    ) -> None:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.util.queue import Queue

        self.config = config
        self.info = info
        self.inbox = Queue(actor_options={"num_cpus": 0})
        self.outbox = Queue(actor_options={"num_cpus": 0})
        storage_fs, storage_path = pyarrow_filesystem(work.path("ray-train"))
        trainer = TorchTrainer(
            _surrogate_loop,
            train_loop_config={
                "beo": to_dict(config),
                "num_classes": info.num_classes,
                "test": test,
                "threads": resources.trainer_threads,
                "inbox": self.inbox,
                "outbox": self.outbox,
            },
            scaling_config=ScalingConfig(
                num_workers=1,
                use_gpu=resources.gpus_per_actor > 0,
                resources_per_worker={"CPU": resources.trainer_cpus},
            ),
            run_config=RunConfig(name="surrogate", storage_path=storage_path, storage_filesystem=storage_fs),
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fit, args=(trainer,), name="surrogate-trainer", daemon=True)
        self._thread.start()

    def _fit(self, trainer: Any) -> None:
        try:
            trainer.fit()
        except BaseException as error:  # noqa: BLE001 - re-raised in the driver's thread by train()
            self._error = error

    def train(
        self, state: MaterializedDataset, previous: dict[str, Any] | None, round_index: int
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """This round's surrogate (a model spec) and its accuracies."""
        config, info = self.config, self.info
        if previous is not None and config.surrogate.mode == "fixed":
            return previous, {}
        previous_ref = ray.put(previous) if previous is not None else None
        self.inbox.put({"round": round_index, "previous": previous_ref, "blocks": state.to_arrow_refs()})
        # one blocking get, watched locally: a get with a timeout costs the queue actor an exception per
        # expiry (~6% of a core at one per second, taken from the training)
        pending = self.outbox.actor.get.remote()
        while not ray.wait([pending], timeout=1.0)[0]:
            if not self._thread.is_alive():
                if isinstance(self._error, UEError):
                    raise self._error
                raise RuntimeError("the surrogate's Ray Train run ended before it replied") from self._error
        reply = ray.get(pending)
        spec = {
            **(previous or {}),
            "name": config.surrogate.model,
            "num_classes": info.num_classes,
            "in_channels": info.image_shape[2],
            "image_size": info.image_shape[0],
            "state_dict": ray.get(reply["state_dict"]),
        }
        return spec, reply["metrics"]

    def close(self, timeout: float = 60.0) -> None:
        """Let the Train run finish (it reports and ends) and free its queues."""
        if self._thread.is_alive():
            with contextlib.suppress(Exception):  # the run is gone already
                self.inbox.put(None, timeout=max(timeout, 1.0))
            self._thread.join(timeout)
        for mailbox in (self.inbox, self.outbox):
            with contextlib.suppress(Exception):  # best effort on the way out
                mailbox.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(timeout=60.0 if exc_type is None else 0.0)  # on an error, do not wait for a training


# ------------------------------------------------------------------------------------------ efficacy probe


@ray.remote
def _probe_task(
    blocks: list[Any], test: dict[str, Any], info: DatasetInfo, beo: dict[str, Any], with_reference: bool, threads: int
) -> dict[str, float]:
    """ue_core.efficacy's mixed probe (and, once a job, its clean-only reference) on a round's state blocks."""
    from ue_core.data.dataset import ImageDataset
    from ue_core.efficacy import clean_only_probe, mixed_probe
    from ue_core.methods.base import release_of

    torch.set_num_threads(threads)
    config = from_dict(BEOConfig, beo)
    rows = _state_rows(ray.get(blocks), ("index", "label", "image", "delta"))
    clean = ImageDataset(rows["image"], rows["label"], info.num_classes, index=rows["index"])
    test_images, test_labels = ray.get(test["ref"])  # float (T, C, H, W) in [0, 1], int64 (T,)
    test_set = ImageDataset(
        np.rint(test_images.transpose(0, 2, 3, 1) * 255).astype(np.uint8), test_labels, info.num_classes
    )
    release = release_of(clean, torch.from_numpy(rows["delta"]), config.pga)
    result = {"probe_mixed_accuracy": mixed_probe(clean, release, test_set, config.probe)}
    if with_reference:
        result["probe_clean_only_accuracy"] = clean_only_probe(clean, test_set, config.probe)
    return result


class EfficacyProbe:
    """Runs the mixed efficacy probe (ue_core.efficacy) of the rounds it is due at as one Ray task on the
    round's state, where the state is (the driver never holds the images); the clean-only reference is
    trained once per job."""

    def __init__(self, config: BEOConfig, info: DatasetInfo, test: dict[str, Any] | None, resources: Resources):
        self.config, self.info, self.test, self.resources = config, info, test, resources
        self.reference: float | None = None

    def __call__(self, state: MaterializedDataset, rounds_done: int) -> dict[str, float]:
        """The probe's accuracies after ``rounds_done`` rounds ({} when it is not due or there is no test set)."""
        if self.test is None or not self.config.probe.due(rounds_done, self.config.rounds):
            return {}
        task = _probe_task.options(num_cpus=self.resources.task_cpus)
        result = unwrap(task.remote(state.to_arrow_refs(), self.test, self.info, to_dict(self.config),
                                    self.reference is None, self.resources.task_threads))
        self.reference = result.pop("probe_clean_only_accuracy", self.reference)
        return {**result, "probe_clean_only_accuracy": self.reference}


# ----------------------------------------------------------------------------------------------- rounds


def read_state(uri: str) -> ray.data.Dataset:
    fs, path = pyarrow_filesystem(uri)
    return ray.data.read_parquet(path, filesystem=fs)


def write_state(state: ray.data.Dataset, uri: str) -> None:
    """Write the state shards at ``uri``, first removing what a killed attempt may have left there."""
    remove(uri)
    arrow_fs, arrow_path = pyarrow_filesystem(uri)
    state.write_parquet(arrow_path, filesystem=arrow_fs)


def write_json(uri: str, content: Any) -> None:
    fs, path = filesystem(uri)
    with fs.open(path, "w") as f:
        json.dump(content, f, indent=2)


def read_json(uri: str) -> Any:
    fs, path = filesystem(uri)
    with fs.open(path, "r") as f:
        return json.load(f)


def completed_rounds(work: WorkDir) -> list[int]:
    """Rounds whose round.json exists (it is written last), in order."""
    fs, path = filesystem(work.path("rounds"))
    if not fs.exists(path):
        return []
    done = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("round-") and fs.exists(f"{entry.rstrip('/')}/round.json"):
            done.append(int(name.removeprefix("round-")))
    return sorted(done)


def canonical_layout(state: ray.data.Dataset, columns: list[str], resources: Resources) -> MaterializedDataset:
    """The state ``columns`` in ``max(2, 2 × actors)`` equal blocks, rows in the order given, in the object store.

    A round's batches follow the blocks, and float results can depend on the batch a row is in; an equal
    split depends only on the row order, which a Parquet write and read keep, so the state handed on in
    memory and the same state read back after a resume give the same blocks.
    """
    blocks = max(2, 2 * resources.actors)
    return state.select_columns(columns).repartition(blocks).materialize()


def run_round(
    state: ray.data.Dataset,
    previous: dict[str, Any] | None,
    config: BEOConfig,
    info: DatasetInfo,
    round_index: int,
    trainer: SurrogateTrainer,
    work: WorkDir,
    resources: Resources,
    probe: EfficacyProbe | None = None,
) -> tuple[dict[str, Any], list[dict[str, float]], MaterializedDataset]:
    """One round; writes round ``round_index`` and returns (surrogate, records, the new state).

    ``state`` is the state the previous round returned (materialised in :func:`canonical_layout`), or, in
    the first round of a job or of a resumed job, a lazy dataset: the last completed round's Parquet shards,
    or the initial state built from the ingest shards. Seconds per part of the round go into every record:
    seconds_read (reading and laying out a lazy state, 0 when handed on in memory), seconds_surrogate
    (training and the test accuracy; the train accuracy comes from step 0's features), then per step
    seconds_features, seconds_estimator, seconds_ascent, and seconds_write (the new state in its layout,
    its Parquet shards, the surrogate and round.json).
    """
    started = time.perf_counter()
    columns = state_columns(config.pga)
    if not isinstance(state, MaterializedDataset):
        state = canonical_layout(state, columns, resources)
    round_metrics: dict[str, float] = {"round": round_index, "seconds_read": time.perf_counter() - started}
    started = time.perf_counter()
    surrogate, accuracies = trainer.train(state, previous, round_index)
    round_metrics |= {"seconds_surrogate": time.perf_counter() - started, **accuracies}
    actor_options = {
        "compute": ray.data.ActorPoolStrategy(size=resources.actors),
        "num_cpus": resources.cpus_per_actor,
        "num_gpus": resources.gpus_per_actor,
        "batch_size": config.batch_size,
    }
    threads = resources.threads_per_actor
    model = load_model(surrogate)
    # object-store references, wrapped so that Ray hands them to the actors as references, not copies
    surrogate_ref = {"ref": ray.put(surrogate)}
    records = []
    for step in range(config.steps_per_round):
        timings = {}
        t0 = time.perf_counter()
        anchored = config.estimator.anchors == "clean"
        features = collect(
            state.map_batches(
                FeaturePass,
                fn_constructor_kwargs={"surrogate": surrogate_ref, "batch_size": config.batch_size,
                                       "threads": threads, "anchors": anchored},
                **actor_options,
            ),
            ["index", "label", "features", *(["anchors"] if anchored else [])],
        )
        if step == 0:  # the round's protected images, scored from their features, as the reference does
            round_metrics["surrogate_train_accuracy"] = feature_accuracy(
                model, torch.from_numpy(features["features"]), torch.from_numpy(features["label"])
            )
        timings["seconds_features"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        z, anchors, scale = normalise_with_anchors(
            torch.from_numpy(features["features"]), torch.from_numpy(features["anchors"]) if anchored else None
        )
        value, sigma, gradient = feature_gradient(
            z.numpy(), features["label"], info.num_classes, config, round_index, step, resources,
            None if anchors is None else anchors.numpy(),
        )
        timings["seconds_estimator"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        gradient_ref = ray.put((features["index"], (gradient / scale).astype(np.float32)))
        state = state.map_batches(
            AscentPass,
            fn_constructor_kwargs={
                "surrogate": surrogate_ref,
                "pga": to_dict(config.pga),
                "gradient": {"ref": gradient_ref},
                "batch_size": config.batch_size,
                "threads": threads,
            },
            **actor_options,
        ).materialize()
        sizes = collect(state, ["index", "delta_abs_max", "delta_abs_mean"])
        timings["seconds_ascent"] = time.perf_counter() - t0
        records.append(
            {
                **round_metrics,
                "step": step,
                "bayes_error": value,
                "sigma": sigma,
                "delta_max_abs": float(sizes["delta_abs_max"].max()),
                "delta_mean_abs": float(sizes["delta_abs_mean"].mean()),
                **timings,
            }
        )
        state = state.select_columns(columns)
    t0 = time.perf_counter()
    state = canonical_layout(state, columns, resources)
    if probe is not None:  # before round.json: a resumed job keeps the probe's figures
        records[-1] |= probe(state, round_index + 1)
    round_dir = work.round_dir(round_index)
    write_state(state, f"{round_dir}/state")
    save_model(surrogate, f"{round_dir}/surrogate.pt")
    seconds_write = time.perf_counter() - t0
    records = [{**record, "seconds_write": seconds_write} for record in records]
    write_json(f"{round_dir}/round.json", records)  # last: the round is complete
    return surrogate, records, state

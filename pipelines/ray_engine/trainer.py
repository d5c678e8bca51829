"""The job's surrogate trainer: one Ray Train run that trains every round's surrogate with ue_core's
train_surrogate, as the reference engine does."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import ray
import torch
from ray.data.dataset import MaterializedDataset

from pipelines.ray_engine.resources import Resources, on_gpu
from pipelines.ray_engine.state import DatasetInfo, load_model, training_set
from pipelines.ray_utils import Shared
from pipelines.storage import WorkDir, pyarrow_filesystem
from ue_core.config import from_dict, to_dict
from ue_core.errors import UEError
from ue_core.methods.beo import BEOConfig, round_seed, train_surrogate
from ue_core.training import evaluate


def _surrogate_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: train one surrogate per request from the driver, until it sends None.

    A request names the round, last round's surrogate and the round's state blocks; the reply holds the
    trained weights and the accuracies. Tensors travel as object-store references, never inside a message:
    a queue actor that unpickles a tensor imports torch first (~1.5 s, then ~300 MB for the job). Each
    round ends with one ``ray.train.report``, so the worker reports once per round. It trains on the device
    Ray Train gives it (``ray.train.torch.get_device()``: its GPU under ``use_gpu``, else the CPU) and records
    it in the metrics as on_gpu_surrogate.
    """
    import ray.train
    import ray.train.torch

    config = from_dict(BEOConfig, loop_config["beo"])
    torch.set_num_threads(loop_config["threads"])
    inbox, outbox = loop_config["inbox"], loop_config["outbox"]
    device = ray.train.torch.get_device()
    while (request := inbox.get()) is not None:
        # the clean images in mode "fixed", else the protected ones (x + δ), as the reference engine
        training_images, y = training_set(request["blocks"], with_delta=config.surrogate.mode != "fixed")
        previous = load_model(ray.get(request["previous"])) if request["previous"] is not None else None
        model = train_surrogate(
            previous, training_images, y, loop_config["num_classes"], config.surrogate,
            seed=round_seed(config.seed, request["round"]), device=device, compute=config.compute,
        )
        del training_images  # not held while the worker waits for the next round
        metrics = {"on_gpu_surrogate": on_gpu(device)}  # the train accuracy: from the round's first feature pass
        if loop_config["test"] is not None:
            test_x, test_y = loop_config["test"].get()
            metrics["surrogate_test_accuracy"] = evaluate(
                model, torch.from_numpy(test_x), torch.from_numpy(test_y), config.batch_size, device, config.compute
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

    The worker reserves a small CPU fraction (``Resources.trainer_cpus``) and a share of a GPU
    (``Resources.trainer_gpus``): it computes only while the driver waits for it, never while the pass actors
    or estimator tasks run, and whole CPUs or GPUs held across the job would starve those. It trains with
    ``Resources.trainer_threads`` torch threads.
    """

    def __init__(
        self, config: BEOConfig, info: DatasetInfo, test: Shared | None, work: WorkDir, resources: Resources
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
                use_gpu=resources.trainer_gpus > 0,
                resources_per_worker=resources.trainer_resources(),
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



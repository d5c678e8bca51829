"""How the Ray engine sizes its pass actors, tasks and trainer from what the cluster reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ue_core.errors import InvalidInputError

TRAINER_CPUS = 0.05
"""Logical CPUs the job-long surrogate worker reserves (see SurrogateTrainer)."""
PASS_CPUS = 0.05
"""Logical CPUs each job-long pass actor reserves (see pipelines.ray_engine.passes)."""
GPU_SHARES = {"pass": 0.6, "trainer": 0.2, "task": 0.2}
"""The share of one GPU each GPU user of a protect job asks for. The three compute one at a time (the driver
runs one phase of a round at a time), so they share each GPU: a pass actor takes 0.6 (two never land on the
same GPU), the surrogate's Train worker 0.2 and an estimator task 0.2, together exactly one GPU; a whole GPU
each, the job-long trainer and pass actor would need two GPUs on one node before any pass could start."""


@dataclass(frozen=True)
class Resources:
    """How to size the pass actors and the tasks from what the cluster reports (never a hard-coded whole CPU).

    Attributes:
        pass_nodes: the node of each pass actor: one actor per GPU (a node listed once per GPU), else one per
            CPU node, running one torch thread per core of its node. Started once per job
            (pipelines.ray_engine.passes.PassPool).
        pass_cpus: the CPUs each pass actor reserves for the job: a small share, since it computes only while
            the driver waits for it, and whole CPUs held for the job would starve Ray Data's own tasks (they
            take 1 CPU each; whole-CPU actors deadlocked a 2-core machine).
        pass_gpus: the GPU share of each pass actor (GPU_SHARES), 0 on a CPU cluster.
        pass_threads: torch threads of each pass actor: its node's cores.
        task_nodes: the node of each row block of the exact estimator, each block a task: one per node
            (:meth:`task_options` places block k on ``task_nodes[k]``; Ray's SPREAD strategy alone put both
            gradient blocks of the 100,000-image job on one node of two), each with ``task_threads`` torch
            threads (the node's cores) and ``task_cpus``, a fraction, so that all blocks run at once whatever
            else holds a share of a CPU (with one single-threaded task per CPU, the trainer's reserved 0.05
            CPU made the second task wait for the first). Ray keeps the tasks' worker processes and reuses
            them in the next round.
        task_gpus: the GPU share of each estimator task (GPU_SHARES), 0 on a CPU cluster.
        trainer_cpus: CPUs the surrogate's Ray Train worker reserves for the whole job: a small fraction,
            since it trains only while everything else waits for it (SurrogateTrainer).
        trainer_gpus: its GPU share (GPU_SHARES), 0 on a CPU cluster.
        trainer_threads: torch threads of that worker: all of the node's cores, since it trains alone.
    """

    pass_nodes: tuple[str, ...]
    pass_cpus: float
    pass_gpus: float
    pass_threads: int
    task_cpus: float
    task_gpus: float
    task_threads: int
    task_nodes: tuple[str, ...]
    trainer_cpus: float
    trainer_gpus: float
    trainer_threads: int

    @property
    def actors(self) -> int:
        """Pass actors in the job's pool."""
        return len(self.pass_nodes)

    def pass_actor_options(self, node: str) -> dict[str, Any]:
        """Ray options of the pass actor on ``node`` (an entry of ``pass_nodes``), pinned to it."""
        return {"num_cpus": self.pass_cpus, "num_gpus": self.pass_gpus,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}

    @property
    def blocks(self) -> int:
        """Row blocks of the exact estimator: one per node."""
        return len(self.task_nodes)

    def task_options(self, block: int) -> dict[str, Any]:
        """Ray options of the estimator task of row block ``block``, placed on its node; softly, so that a
        block whose node is gone runs on another."""
        node = self.task_nodes[block % len(self.task_nodes)]
        return {"num_cpus": self.task_cpus, "num_gpus": self.task_gpus,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}

    def trainer_resources(self) -> dict[str, float]:
        """The surrogate's Train worker's ``resources_per_worker``."""
        return {"CPU": self.trainer_cpus, **({"GPU": self.trainer_gpus} if self.trainer_gpus else {})}

    @staticmethod
    def from_cluster() -> Resources:
        available = ray.available_resources()
        cpus = float(available.get("CPU", 1.0))
        nodes = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get("CPU", 0) > 0]
        node_cpus = max((float(node["Resources"]["CPU"]) for node in nodes), default=cpus)
        if node_cpus < 2:  # Ray Data's tasks take 1 CPU each: beside the trainer's share they never start
            raise InvalidInputError(
                f"Ray cluster: its largest node has {node_cpus:g} logical CPU; a protect job needs a node with "
                "at least 2 logical CPUs (start nodes with --num-cpus=2 or more)"
            )
        gpus_per_node = {node["NodeID"]: int(node["Resources"].get("GPU", 0)) for node in nodes}
        on_gpus = any(gpus_per_node.values())
        if on_gpus:
            pass_nodes = tuple(node for node, count in gpus_per_node.items() for _ in range(count))
        else:
            pass_nodes = tuple(gpus_per_node)
        trainer_cpus = min(TRAINER_CPUS, 0.1 * cpus)
        usable = cpus - trainer_cpus - PASS_CPUS * len(pass_nodes)
        threads = max(1, int(node_cpus))
        share = (lambda user: GPU_SHARES[user] if on_gpus else 0.0)
        return Resources(
            pass_nodes=pass_nodes, pass_cpus=PASS_CPUS, pass_gpus=share("pass"), pass_threads=threads,
            task_cpus=0.5 * usable / max(1, len(nodes)), task_gpus=share("task"), task_threads=threads,
            task_nodes=tuple(gpus_per_node),
            trainer_cpus=trainer_cpus, trainer_gpus=share("trainer"), trainer_threads=threads,
        )


def actor_device() -> torch.device:
    """Where a Ray actor or task runs its torch work: "cuda" (the GPU Ray assigned it, which Ray makes the
    process's only visible one) when Ray gave it a GPU, else "cpu". The one place the Ray engine's actors and
    tasks choose a device; the surrogate's Train worker takes ``ray.train.torch.get_device()``."""
    return torch.device("cuda" if ray.get_gpu_ids() else "cpu")


def on_gpu(device: torch.device) -> float:
    """1.0 for a CUDA device, else 0.0: how a round's history records where each pass ran (a metric)."""
    return float(device.type == "cuda")

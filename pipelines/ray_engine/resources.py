"""How the Ray engine sizes its actor pools, tasks and trainer from what the cluster reports."""

from __future__ import annotations

from dataclasses import dataclass

import ray
import torch

from ue_core.errors import InvalidInputError

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


def actor_device() -> torch.device:
    """Where a Ray actor or task runs its torch work: "cuda" (the GPU Ray assigned it, which Ray makes the
    process's only visible one) when Ray gave it a GPU, else "cpu". The one place the Ray engine's actors and
    tasks choose a device; the surrogate's Train worker takes ``ray.train.torch.get_device()``."""
    return torch.device("cuda" if ray.get_gpu_ids() else "cpu")


def on_gpu(device: torch.device) -> float:
    """1.0 for a CUDA device, else 0.0: how a round's history records where each pass ran (a metric)."""
    return float(device.type == "cuda")

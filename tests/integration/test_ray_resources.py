"""Sizing from the cluster: a cluster that would hang is refused up front; a driver computes on its cores."""

import os
import subprocess
import sys

import pytest
import ray
import torch

from pipelines.ray_engine.resources import Resources, actor_device, on_gpu
from ue_core.errors import InvalidInputError


def test_a_cluster_without_a_two_cpu_node_is_refused():
    """With 1 logical CPU, Ray Data's 1-CPU tasks never fit beside the trainer's share (the job hung)."""
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(InvalidInputError, match="largest node has 1 logical CPU"):
            Resources.from_cluster()
    finally:
        ray.shutdown()


@pytest.mark.parametrize("gpu_ids, expected", [([], "cpu"), ([0], "cuda")])
def test_an_actor_runs_on_cuda_exactly_when_ray_gave_it_a_gpu(monkeypatch, gpu_ids, expected):
    """The one device choice of the Ray engine's actors and tasks; the GPU branch with Ray's answer faked
    (this machine has no GPU), and nothing touches CUDA: a torch.device is only a name."""
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: gpu_ids)
    device = actor_device()
    assert device == torch.device(expected)
    assert on_gpu(device) == float(expected == "cuda")


@ray.remote
class _Holder:
    """Stands in for a GPU user of the job: it only reports the GPU Ray gave it (this machine has none; Ray
    schedules declared GPUs all the same)."""

    def gpu(self) -> list:
        return ray.get_gpu_ids()


@ray.remote
def _gpu_of_task() -> list:
    return ray.get_gpu_ids()


@pytest.mark.parametrize("gpus", [1, 2])
def test_the_job_s_gpu_users_all_fit_at_once_one_pass_actor_per_gpu(gpus):
    """On a node with ``gpus`` declared GPUs, the options Resources gives the surrogate's Train worker, the
    pass actors and an estimator task all get scheduled together (with a whole GPU each, a single-GPU node
    never started the passes beside the job-long trainer), and the pass actors sit on different GPUs."""
    ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    try:
        resources = Resources.from_cluster()
        assert resources.actors == gpus and len(set(resources.pass_nodes)) == 1
        trainer = _Holder.options(num_cpus=resources.trainer_resources()["CPU"],
                                  num_gpus=resources.trainer_resources()["GPU"]).remote()
        pool = [_Holder.options(**resources.pass_actor_options(node)).remote() for node in resources.pass_nodes]
        calls = [trainer.gpu.remote(), *(actor.gpu.remote() for actor in pool),
                 *(_gpu_of_task.options(**resources.task_options(k)).remote() for k in range(resources.blocks))]
        ready, _ = ray.wait(calls, num_returns=len(calls), timeout=60)
        assert len(ready) == len(calls), "a GPU user of the job was never scheduled"
        gpu_ids = ray.get(calls)
        assert all(len(ids) == 1 for ids in gpu_ids)  # each got a GPU (a share of one)
        pass_gpus = [ids[0] for ids in gpu_ids[1:1 + gpus]]
        assert sorted(map(str, pass_gpus)) == [str(i) for i in range(gpus)]
    finally:
        ray.shutdown()


def test_a_cpu_cluster_runs_one_pass_actor_per_node_with_small_shares():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        resources = Resources.from_cluster()
        assert resources.actors == 1 and resources.pass_gpus == resources.task_gpus == resources.trainer_gpus == 0
        assert 2 - resources.pass_cpus - resources.trainer_cpus >= 1  # a Ray Data task (1 CPU) fits beside them
        assert 0 < resources.task_cpus < 1
        assert resources.pass_threads == resources.task_threads == 2
    finally:
        ray.shutdown()


def test_a_driver_started_with_one_openmp_thread_computes_on_every_core_after_connecting():
    """A job submitted through Ray's job API inherits OMP_NUM_THREADS=1 from its supervisor actor; the driver's
    own torch work (the finish) must not run on one core."""
    script = ("import torch, ray; from pipelines.ray_utils import connect; before = torch.get_num_threads(); "
              "connect(None, progress=False); print(before, torch.get_num_threads()); ray.shutdown()")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = map(int, result.stdout.split()[-2:])
    assert before == 1
    assert after == len(os.sched_getaffinity(0))

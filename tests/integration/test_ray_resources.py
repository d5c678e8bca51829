"""Sizing from the cluster: a cluster that would hang is refused up front."""

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

"""Sizing from the cluster: a cluster that would hang is refused up front."""

import pytest
import ray

from pipelines.ray_engine.resources import Resources
from ue_core.errors import InvalidInputError


def test_a_cluster_without_a_two_cpu_node_is_refused():
    """With 1 logical CPU, Ray Data's 1-CPU tasks never fit beside the trainer's share (the job hung)."""
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(InvalidInputError, match="largest node has 1 logical CPU"):
            Resources.from_cluster()
    finally:
        ray.shutdown()

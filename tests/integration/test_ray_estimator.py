"""The estimator as Ray tasks over row blocks equals ue_core's one-process estimator."""

import dataclasses

import numpy as np
import pytest
import ray
import torch

from pipelines.ray_engine.estimator import feature_gradient
from pipelines.ray_engine.resources import Resources
from ue_core import bayes_error
from ue_core.methods.beo import BEOConfig, EstimatorConfig, estimator_generator


@pytest.fixture(scope="module")
def local_ray():
    ray.init(include_dashboard=False, log_to_driver=False)
    yield Resources.from_cluster()
    ray.shutdown()


@pytest.mark.parametrize(("kind", "blocks"), [("exact", None), ("exact", 3), ("batch", None), ("reference", None)])
def test_distributed_estimator_matches_one_process(local_ray, kind, blocks):
    """Default sizing (one block per node: one here) and three row blocks, as on a three-node cluster (here
    three blocks on the one node)."""
    resources = local_ray if blocks is None else dataclasses.replace(local_ray, task_nodes=local_ray.task_nodes * blocks)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=generator)
    features = torch.randn(4, 16, generator=generator)[labels] + 0.8 * torch.randn(300, 16, generator=generator)
    z, _ = bayes_error.normalise_features(torch.relu(features))
    config = BEOConfig(estimator=EstimatorConfig(kind=kind, batch_size=64, reference_size=80))
    value, _, gradient, _ = feature_gradient(z.numpy(), labels.numpy(), 4, config, round_index=2, step=0,
                                       resources=resources)
    expected = bayes_error.estimate(z, labels, 4, sigma=0.3, estimator=kind, batch_size=64, reference_size=80,
                                    generator=estimator_generator(config.estimator, config.seed, 2, 0))
    assert local_ray.actors >= 1 and 0 < local_ray.pass_cpus < 1 and 0 < local_ray.task_cpus < 1  # shares, never whole CPUs
    assert value == pytest.approx(float(expected.value), abs=1e-6)
    np.testing.assert_allclose(gradient, expected.gradient.numpy(), rtol=1e-4, atol=1e-7)
    assert np.abs(gradient).max() > 0

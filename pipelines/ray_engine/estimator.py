"""The estimator of a round as Ray tasks: the exact estimator's two passes over row blocks spread over the
nodes (ue_core.methods.beo.exact_stats, then exact_gradient with everyone's stats), or every other
estimator in one task (ue_core.methods.beo.estimate_step)."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch

from pipelines.ray_engine.resources import Resources, actor_device, on_gpu
from pipelines.ray_utils import unwrap
from ue_core import bayes_error
from ue_core.config import from_dict, to_dict
from ue_core.methods.beo import (
    BEOConfig,
    EstimatorConfig,
    estimate_step,
    estimator_generator,
    exact_gradient,
    exact_stats,
)


@ray.remote
def _stats_block(
    bank: np.ndarray, labels: np.ndarray, num_classes: int, estimator: dict[str, Any], sigma: float,
    start: int, stop: int, threads: int,
) -> tuple[np.ndarray | float, ...]:
    """The four stats arrays of rows ``start:stop`` (bayes_error.KernelStats.to_arrays), then on_gpu."""
    torch.set_num_threads(threads)
    config = from_dict(EstimatorConfig, estimator)
    device = actor_device()
    stats = exact_stats(torch.from_numpy(bank), torch.from_numpy(labels), num_classes, config, sigma, start, stop,
                        device)
    return (*stats.to_arrays(), on_gpu(device))


@ray.remote
def _gradient_block(
    bank: np.ndarray, labels: np.ndarray, stats: tuple[np.ndarray, ...], estimator: dict[str, Any], sigma: float,
    start: int, stop: int, threads: int,
) -> np.ndarray:
    torch.set_num_threads(threads)
    config = from_dict(EstimatorConfig, estimator)
    every = bayes_error.KernelStats.from_arrays(stats)
    return exact_gradient(torch.from_numpy(bank), torch.from_numpy(labels), every, config, sigma, start, stop,
                          actor_device()).numpy()


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
) -> tuple[float, float, np.ndarray, float]:
    """β̂, the step's bandwidth σ, the objective's gradient (N, D) for normalised features z sorted by index
    (and, under ``estimator.anchors: clean``, the clean copies' normalised features in the same order), and
    1.0 when the estimator ran on GPUs, else 0.0.

    The exact estimator runs as two passes of tasks over row blocks (stats, then gradient), each task on a GPU
    when the cluster has them (resources.actor_device); the cheap "batch" and "reference" estimators are
    O(N·b), and the anchored one O((2N)²) so far, and run as one task on the CPU.

    Each task copies the bank (N × D float32, 100 MB at N = 50,000, D = 512) to its GPU, so a GPU waits for
    it twice per step: about 10 ms each at PCIe 4.0 rates (estimated, not measured here) against an O(N²·D)
    pass of seconds. Tasks, not a per-step actor holding the bank between the passes, because Ray reuses a
    task's worker process — its CUDA context included — from step to step, where a new actor would pay a
    process and a CUDA context each step.
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
        return value, sigma, gradient, 0.0
    settings = to_dict(estimator)
    blocks = np.array_split(np.arange(len(features)), max(1, min(len(features), resources.blocks)))
    bounds = [(int(b[0]), int(b[-1]) + 1) for b in blocks if len(b)]
    parts = unwrap([
        _stats_block.options(**resources.task_options(k)).remote(
            bank, bank_labels, num_classes, settings, sigma, a, b, threads)
        for k, (a, b) in enumerate(bounds)
    ])
    stats = bayes_error.KernelStats.concat([bayes_error.KernelStats.from_arrays(p[:-1]) for p in parts])
    bayes_error.check_support(stats, sigma)
    stats_ref = ray.put(stats.to_arrays())
    rows = unwrap([
        _gradient_block.options(**resources.task_options(k)).remote(
            bank, bank_labels, stats_ref, settings, sigma, a, b, threads)
        for k, (a, b) in enumerate(bounds)
    ])
    return float(stats.errors.mean()), sigma, np.concatenate(rows), min(p[-1] for p in parts)



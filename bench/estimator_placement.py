"""Benchmark: the Ray engine's exact-estimator pass alone, with its row blocks placed one per node (what
pipelines/ray_engine/resources.py ``task_options`` does since 2026-12-03) or left to Ray's SPREAD strategy.

Starts a local Ray as `ue protect` does and times ``feature_gradient`` (the stats and gradient tasks of one
step) on random class-clustered features, N × 256, three calls per placement (the first includes the
tasks' worker start). Prints one line per call.

    python bench/estimator_placement.py --size 30000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray

from pipelines.config import load_protect_config
from pipelines.ray_engine.estimator import feature_gradient
from pipelines.ray_engine.resources import Resources
from pipelines.ray_utils import connect


def spread_options(resources: Resources, block: int) -> dict:
    """Ray options of an estimator task as before 2026-12-03: no node named, Ray's SPREAD strategy."""
    return {"num_cpus": resources.task_cpus, "num_gpus": resources.task_gpus, "scheduling_strategy": "SPREAD"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=30_000)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    config = load_protect_config("fashion-mnist", overrides={}).beo
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, args.size)
    features = (rng.normal(size=(10, 256))[labels] + rng.normal(size=(args.size, 256))).astype(np.float32)
    features /= 8 * np.abs(features).max()  # every sample keeps kernel partners at the preset's σ
    for placement in ("node", "spread"):
        connect(None, progress=False)
        resources = Resources.from_cluster()
        if placement == "spread":
            Resources.task_options = spread_options
        for call in range(args.calls):
            started = time.perf_counter()
            feature_gradient(features, labels, 10, config, 0, call, resources)
            print(f"{placement} call {call}: {time.perf_counter() - started:.1f} s", flush=True)
        ray.shutdown()


if __name__ == "__main__":
    main()

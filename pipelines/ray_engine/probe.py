"""The mixed efficacy probe (ue_core.efficacy) of a Ray protect job: one Ray task on a round's state."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
import torch
from ray.data.dataset import MaterializedDataset

from pipelines.ray_engine.resources import Resources
from pipelines.ray_engine.state import DatasetInfo, state_rows
from pipelines.ray_utils import Shared, unwrap
from ue_core.config import from_dict, to_dict
from ue_core.data.dataset import ImageDataset
from ue_core.efficacy import clean_only_probe, mixed_probe
from ue_core.methods.base import release_of
from ue_core.methods.beo import BEOConfig
from ue_core.pga import Budget


@ray.remote
def _probe_task(
    blocks: list[Any], test: Shared, info: DatasetInfo, beo: dict[str, Any], budget: dict[str, Any],
    with_reference: bool, threads: int,
) -> dict[str, float]:
    """ue_core.efficacy's mixed probe (and, once a job, its clean-only reference) on a round's state blocks,
    released within ``budget`` (a Budget's dict)."""
    torch.set_num_threads(threads)
    config = from_dict(BEOConfig, beo)
    rows = state_rows(ray.get(blocks), ("index", "label", "image", "delta"))
    clean = ImageDataset(rows["image"], rows["label"], info.num_classes, index=rows["index"])
    test_images, test_labels = test.get()  # float (T, C, H, W) in [0, 1], int64 (T,)
    test_set = ImageDataset(
        np.rint(test_images.transpose(0, 2, 3, 1) * 255).astype(np.uint8), test_labels, info.num_classes
    )
    release = release_of(clean, torch.from_numpy(rows["delta"]), from_dict(Budget, budget, "budget"))
    result = {"probe_mixed_accuracy": mixed_probe(clean, release, test_set, config.probe)}
    if with_reference:
        result["probe_clean_only_accuracy"] = clean_only_probe(clean, test_set, config.probe)
    return result


class EfficacyProbe:
    """Runs the mixed efficacy probe (ue_core.efficacy) of the rounds it is due at as one Ray task on the
    round's state, where the state is (the driver never holds the images); the clean-only reference is
    trained once per job."""

    def __init__(
        self, config: BEOConfig, budget: Budget, info: DatasetInfo, test: Shared | None, resources: Resources
    ) -> None:
        self.config, self.budget, self.info, self.test, self.resources = config, budget, info, test, resources
        self.reference: float | None = None

    def __call__(self, state: MaterializedDataset, rounds_done: int) -> dict[str, float]:
        """The probe's accuracies after ``rounds_done`` rounds ({} when it is not due or there is no test set)."""
        if self.test is None or not self.config.probe.due(rounds_done, self.config.rounds):
            return {}
        task = _probe_task.options(num_cpus=self.resources.task_cpus)
        result = unwrap(task.remote(state.to_arrow_refs(), self.test, self.info, to_dict(self.config),
                                    to_dict(self.budget), self.reference is None, self.resources.task_threads))
        self.reference = result.pop("probe_clean_only_accuracy", self.reference)
        return {**result, "probe_clean_only_accuracy": self.reference}



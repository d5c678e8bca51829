"""The two Ray Data actors of a round: the feature pass and the ascent pass, each running ue_core's step on
its batches where the state is, on the actor's device (resources.actor_device: CUDA when Ray gave the actor
a GPU). The state stays on the host; batches move to the device and results come back. Each output row
carries ``on_gpu`` (1.0 on CUDA), which the round's history records per pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipelines.ray_engine.resources import actor_device, on_gpu
from pipelines.ray_engine.state import MOMENT_COLUMNS, images_and_delta, load_model
from pipelines.ray_utils import Shared
from ue_core.config import from_dict
from ue_core.methods.beo import BEOConfig, pixel_step, step_views
from ue_core.pga import Budget, PixelState
from ue_core.training import compute_features


class FeaturePass:
    """Ray Data actor: penultimate features φ(v(x + δ)) of each batch under view ``view`` of the step
    (ue_core.methods.beo.step_views; the images as they are without ``beo.augment``); output columns index,
    label, features, on_gpu, and under ``estimator.anchors: clean`` also φ(v(x)), the clean copies' features."""

    def __init__(
        self, surrogate: Shared, beo: dict[str, Any], round_index: int, step: int, view: int, threads: int = 1
    ) -> None:
        torch.set_num_threads(threads)
        self.device = actor_device()
        self.config = from_dict(BEOConfig, beo)
        self.model = self.config.compute.prepare(load_model(surrogate.get()).to(self.device))
        self.round_index, self.step, self.view = round_index, step, view

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, delta = images_and_delta(batch)
        view = step_views(self.config, batch["index"], self.round_index, self.step)[self.view]
        size = self.config.batch_size
        compute = self.config.compute
        features = compute_features(self.model, x + delta, batch_size=size, transform=view, device=self.device,
                                    compute=compute)
        result = {"index": batch["index"], "label": batch["label"], "features": features.numpy(),
                  "on_gpu": np.full(len(x), on_gpu(self.device))}
        if self.config.estimator.anchors == "clean":
            result["anchors"] = compute_features(self.model, x, batch_size=size, transform=view,
                                                 device=self.device, compute=compute).numpy()
        return result


class AscentPass:
    """Ray Data actor: one PGA step for each row of a batch (ue_core.methods.beo.pixel_step) within the job's
    ``budget`` (a Budget's dict), given per view of the step the feature gradient of every row: (index sorted
    (N,), ∂objective/∂z / s (N, D))."""

    def __init__(
        self, surrogate: Shared, beo: dict[str, Any], budget: dict[str, Any], round_index: int, step: int,
        gradients: list[Shared], threads: int = 1,
    ) -> None:
        torch.set_num_threads(threads)
        self.device = actor_device()
        self.config = from_dict(BEOConfig, beo)
        self.model = self.config.compute.prepare(load_model(surrogate.get()).to(self.device))
        self.budget = from_dict(Budget, budget, "budget")
        self.pga = self.config.pga
        self.round_index, self.step = round_index, step
        self.gradients = [gradient.get() for gradient in gradients]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, delta = images_and_delta(batch)
        views = step_views(self.config, batch["index"], self.round_index, self.step)
        feature_gradients = [
            torch.from_numpy(gradient[np.searchsorted(index, batch["index"])]) for index, gradient in self.gradients
        ]
        adam = self.pga.update == "adam"
        # the sign and L2 rules never read the moments, which the state then does not hold (state_columns)
        exp_avg, exp_avg_sq = (
            (torch.from_numpy(np.ascontiguousarray(batch[name])) for name in MOMENT_COLUMNS)
            if adam
            else (torch.zeros(()).expand_as(delta),) * 2
        )
        state = PixelState(delta, exp_avg, exp_avg_sq, torch.from_numpy(batch["steps"].astype(np.int64)))
        state = pixel_step(self.model, x, state, feature_gradients, views, self.budget, self.pga,
                           self.config.batch_size, self.device, self.config.compute)
        size = state.delta.abs().flatten(1)
        return {
            **{c: batch[c] for c in ("index", "label", "image")},
            "delta": state.delta.numpy(),
            **({"exp_avg": state.exp_avg.numpy(), "exp_avg_sq": state.exp_avg_sq.numpy()} if adam else {}),
            "steps": state.steps.numpy(),
            "delta_abs_max": size.max(1).values.numpy(),  # per-row |δ| summaries for the round's metrics
            "delta_abs_mean": size.mean(1).numpy(),
            "on_gpu": np.full(len(x), on_gpu(self.device)),
        }



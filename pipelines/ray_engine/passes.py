"""The two Ray Data actors of a round: the feature pass and the ascent pass, each running ue_core's step on
its batches where the state is."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipelines.ray_engine.state import MOMENT_COLUMNS, images_and_delta, load_model
from pipelines.ray_utils import Shared
from ue_core.config import from_dict
from ue_core.methods.beo import pixel_step
from ue_core.pga import PGAConfig, PixelState
from ue_core.training import compute_features


class FeaturePass:
    """Ray Data actor: penultimate features φ(x + δ) of each batch; output columns index, label, features, and
    with ``anchors`` also φ(x), the clean copies' features (``estimator.anchors: clean``)."""

    def __init__(self, surrogate: Shared, batch_size: int, threads: int = 1, anchors: bool = False) -> None:
        torch.set_num_threads(threads)
        self.model = load_model(surrogate.get())
        self.batch_size = batch_size
        self.anchors = anchors

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, delta = images_and_delta(batch)
        features = compute_features(self.model, x + delta, batch_size=self.batch_size)
        result = {"index": batch["index"], "label": batch["label"], "features": features.numpy()}
        if self.anchors:
            result["anchors"] = compute_features(self.model, x, batch_size=self.batch_size).numpy()
        return result


class AscentPass:
    """Ray Data actor: one PGA step for each row of a batch, given the feature gradient of every row."""

    def __init__(
        self,
        surrogate: Shared,
        pga: dict[str, Any],
        gradient: Shared,
        batch_size: int,
        threads: int = 1,
    ) -> None:
        torch.set_num_threads(threads)
        self.model = load_model(surrogate.get())
        self.pga = from_dict(PGAConfig, pga)
        self.sorted_index, self.feature_gradient = gradient.get()  # (N,), (N, D) = ∂objective/∂z / s
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, delta = images_and_delta(batch)
        rows = np.searchsorted(self.sorted_index, batch["index"])
        adam = self.pga.update == "adam"
        # the sign and L2 rules never read the moments, which the state then does not hold (state_columns)
        exp_avg, exp_avg_sq = (
            (torch.from_numpy(np.ascontiguousarray(batch[name])) for name in MOMENT_COLUMNS)
            if adam
            else (torch.zeros(()).expand_as(delta),) * 2
        )
        state = PixelState(delta, exp_avg, exp_avg_sq, torch.from_numpy(batch["steps"].astype(np.int64)))
        state = pixel_step(self.model, x, state, torch.from_numpy(self.feature_gradient[rows]), self.pga,
                           self.batch_size)
        size = state.delta.abs().flatten(1)
        return {
            **{c: batch[c] for c in ("index", "label", "image")},
            "delta": state.delta.numpy(),
            **({"exp_avg": state.exp_avg.numpy(), "exp_avg_sq": state.exp_avg_sq.numpy()} if adam else {}),
            "steps": state.steps.numpy(),
            "delta_abs_max": size.max(1).values.numpy(),  # per-row |δ| summaries for the round's metrics
            "delta_abs_mean": size.mean(1).numpy(),
        }



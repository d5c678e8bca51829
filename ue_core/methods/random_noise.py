"""Random noise baseline: δ drawn uniformly from {-eps, +eps} per pixel (L∞) or on the eps sphere (L2).

The control every unlearnable-example paper reports: same budget as the method, no optimisation.
Shapes: δ is float32 (N, C, H, W). Seeded: the same seed gives the same noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ue_core.data.dataset import ImageDataset
from ue_core.methods.base import ProtectionMethod, ProtectionResult
from ue_core.pga import Budget, project


@dataclass(frozen=True)
class RandomNoiseConfig:
    """seed: seeds the noise."""

    seed: int = 0


class RandomNoise(ProtectionMethod):
    """±eps per pixel (L∞) or a random direction of L2 norm eps, then projected into [0, 1]."""

    name = "random"

    def __init__(
        self, budget: Budget, config: RandomNoiseConfig = RandomNoiseConfig(), device: str = "cpu"
    ) -> None:
        """``budget`` gives eps and the norm; ``config`` the seed; ``device`` is stored for the shared
        signature (the noise is drawn on the CPU)."""
        super().__init__(budget, device)
        self.config = config

    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        images, _ = dataset.tensors()
        generator = torch.Generator().manual_seed(self.config.seed)
        if self.budget.norm == "linf":
            signs = torch.randint(0, 2, images.shape, generator=generator).float().mul_(2).sub_(1)
            delta = signs * self.budget.eps
        else:
            direction = torch.randn(images.shape, generator=generator)
            delta = direction / direction.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * self.budget.eps
        return ProtectionResult(release=dataset, delta=project(delta, images, self.budget))

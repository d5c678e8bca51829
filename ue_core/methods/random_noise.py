"""Random noise baseline: δ drawn uniformly from {-eps, +eps} per pixel (L∞) or on the eps sphere (L2).

The control every unlearnable-example paper reports: same budget as the method, no optimisation.
Shapes: δ is float32 (N, C, H, W). Seeded: the same seed gives the same noise.
"""

from __future__ import annotations

import torch

from ue_core.data.dataset import ImageDataset
from ue_core.methods.base import ProtectionMethod, ProtectionResult
from ue_core.pga import PGAConfig, project


class RandomNoise(ProtectionMethod):
    """±eps per pixel (L∞) or a random direction of L2 norm eps, then projected into [0, 1]."""

    name = "random"

    def __init__(self, pga: PGAConfig, seed: int = 0) -> None:
        super().__init__(pga)
        self.seed = seed

    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        images, _ = dataset.tensors()
        generator = torch.Generator().manual_seed(self.seed)
        if self.pga.norm == "linf":
            signs = torch.randint(0, 2, images.shape, generator=generator).float().mul_(2).sub_(1)
            delta = signs * self.pga.eps
        else:
            direction = torch.randn(images.shape, generator=generator)
            delta = direction / direction.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * self.pga.eps
        return ProtectionResult(release=dataset, delta=project(delta, images, self.pga))

"""Augmented views for augmentation-aware BEO (ours, ``beo.augment``): the victims' random crop and flip,
drawn per image from a hash of (key, index), so that every engine and every shard draws the same view of an
image whatever its row position.

Victims train with crop + flip (the "standard" recipe) while the surrogate's features are computed on the
images as they are; with ``views`` K ≥ 1, each ascent step computes the objective on K augmented copies of
the data and ascends the mean of their pixel gradients, an expectation over the victim's transformations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ue_core.data.mixing import splitmix64
from ue_core.errors import InvalidInputError
from ue_core.training import crop_and_flip

MAX_VIEWS = 64


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation-aware features and gradients (off unless ``views`` ≥ 1).

    Attributes:
        views: augmented copies per ascent step (0: the images as they are, the method as published).
        padding: the crop's zero padding in pixels (the standard victim recipe's is 4).
        flip: random horizontal flips.
    """

    views: int = 0
    padding: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.views <= MAX_VIEWS or self.padding < 0:
            raise InvalidInputError(
                f"augment: views must be in [0, {MAX_VIEWS}] and padding >= 0, got {self.views} and {self.padding}"
            )

    @property
    def passes(self) -> int:
        """Feature passes per ascent step: one per view, or one over the images as they are when views is 0."""
        return max(1, self.views)


@dataclass(frozen=True)
class View:
    """One augmented view of a set of rows: crop offsets (N, 2) int64 in [0, 2·padding], flips (N,) bool."""

    offsets: torch.Tensor
    flips: torch.Tensor
    padding: int

    @staticmethod
    def draw(index: np.ndarray, key: int, config: AugmentConfig) -> View:
        """The view ``key`` of the images with these dataset indices (N,): a function of (key, index) only."""
        with np.errstate(over="ignore"):
            salt = splitmix64(np.array([key & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
            hashed = splitmix64(np.asarray(index).astype(np.int64).view(np.uint64) ^ salt)
        span = np.uint64(2 * config.padding + 1)
        offsets = np.stack([hashed % span, (hashed >> np.uint64(20)) % span], axis=1).astype(np.int64)
        flips = ((hashed >> np.uint64(40)) & np.uint64(1)).astype(bool) & config.flip
        return View(torch.from_numpy(offsets), torch.from_numpy(flips), config.padding)

    def __call__(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The view of ``images`` (B, C, H, W), the rows at positions ``rows`` (B,) of the drawn set."""
        return crop_and_flip(images, self.offsets[rows], self.flips[rows], self.padding)


def view_key(step_seed: int, view: int) -> int:
    """The key of view ``view`` of one ascent step, from that step's seed (ue_core.methods.beo.hash_seed)."""
    return step_seed * MAX_VIEWS + view

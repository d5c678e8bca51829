"""One-pixel shortcut (OPS), the model-free baseline with an L0 budget of one pixel per image.

Paper: "One-Pixel Shortcut: on the Learning Preference of Deep Neural Networks", Wu, Chen, Xie & Huang,
ICLR 2023 (reference code: github.com/cychomatica/One-Pixel-Shotcut). Every image of a class gets the same
pixel set to the same extreme colour, chosen so that it stands out most consistently from that pixel's
clean values in the class; a victim learns the pixel instead of the images.

    for each class k = 0, 1, …, K − 1 in turn:
        for each position p and colour c ∈ {0, 255}^C:
            d = |c − x_p| over the class's images and channels          (n·C values in uint8 levels)
            score(p, c) = mean(d) / std(d)                               (std with divisor n·C)
        (p_k, c_k) = the highest-scoring pair not chosen by an earlier class
        every image of class k gets pixel p_k set to c_k

The score is the official one (ART's port scores mean − variance instead). It is scale-invariant, so it is
computed exactly from integer sums of the uint8 levels, S1 = Σd and S2 = Σd²: score = S1 / √(n·C·S2 − S1²).
Degenerate pairs, where the official code divides by zero: a zero std with a mean > 0 (the pixel is constant
over the class and differs from c: a perfect shortcut) scores +∞; a zero mean (c already is every image's
pixel, so nothing would change) is never chosen. Ties go to the first pair in (row, column, colour) order,
colour index j with channel 0 as its most significant bit (the official encoding; its argsort leaves ties
unspecified). No parameters: the budget is norm "l0", eps = 1 pixel (a larger eps is met too: OPS always
changes one). Shapes: pixels uint8 (N, H, W, C), images and δ float32 (N, C, H, W) in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError
from ue_core.methods.base import ProtectionMethod, ProtectionResult
from ue_core.pga import Budget

Choice = tuple[int, int, tuple[int, ...]]
"""A class's shortcut: (row, column, colour), the colour one uint8 value (0 or 255) per channel."""


@dataclass(frozen=True)
class OPSConfig:
    """OPS has no parameters of its own: the search is exhaustive and deterministic."""


def colour_of(index: int, channels: int) -> tuple[int, ...]:
    """Colour ``index`` in [0, 2^C) as uint8 values per channel: 255 where its bit is set, channel 0 the most
    significant bit."""
    return tuple(255 * ((index >> (channels - 1 - c)) & 1) for c in range(channels))


def candidate_scores(pixels: torch.Tensor) -> torch.Tensor:
    """The official score of every (position, colour) over one class's images.

    Args:
        pixels: uint8 (n, H, W, C), n ≥ 1.

    Returns:
        float64 (H, W, 2^C): mean(d) / std(d) of d = |c − x| over images and channels (see the module
        docstring); +∞ for a zero std with a mean > 0, −∞ for a zero mean.
    """
    values = pixels.to(torch.int64)
    count, channels = values.shape[0], values.shape[3]
    sum_dark, square_dark = values.sum(0), values.square().sum(0)  # d = x for c = 0: (H, W, C)
    sum_light = 255 * count - sum_dark  # d = 255 − x for c = 255
    square_light = 255 * 255 * count - 2 * 255 * sum_dark + square_dark
    scores = []
    for index in range(2**channels):
        light = torch.tensor(colour_of(index, channels), device=values.device) > 0
        total = torch.where(light, sum_light, sum_dark).sum(-1)  # S1: (H, W)
        total_square = torch.where(light, square_light, square_dark).sum(-1)  # S2
        spread = count * channels * total_square - total.square()  # (n·C)² var(d), an exact integer ≥ 0
        degenerate = torch.where(total > 0, math.inf, -math.inf).to(torch.float64)
        ratio = total.double() / spread.double().sqrt()
        scores.append(torch.where(spread > 0, ratio, degenerate))
    return torch.stack(scores, dim=-1)


def choose_pixels(pixels: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[int, Choice]:
    """Each class's shortcut pixel and colour, classes in order; a pair chosen by a class is not offered to
    the later ones (as in the official code).

    Args:
        pixels: uint8 (N, H, W, C).
        labels: int64 (N,) in [0, num_classes).
        num_classes: K.

    Returns:
        class → (row, column, colour), for every class with at least one image.

    Raises:
        InvalidInputError: when a class has no pair left that changes its images (images too small for K
            classes).
    """
    height, width, channels = pixels.shape[1:]
    taken = torch.zeros(height * width * 2**channels, dtype=torch.bool)
    choices: dict[int, Choice] = {}
    for label in range(num_classes):
        members = pixels[labels == label]
        if len(members) == 0:
            continue
        scores = candidate_scores(members).flatten().masked_fill(taken, -math.inf)
        best = int(torch.argmax(scores))  # the first maximum
        if scores[best] == -math.inf:
            raise InvalidInputError(f"ops: no pixel and colour left for class {label}: images too small")
        taken[best] = True
        position, colour = divmod(best, 2**channels)
        choices[label] = (position // width, position % width, colour_of(colour, channels))
    return choices


class OnePixelShortcut(ProtectionMethod):
    """One pixel per class set to an extreme colour in every image of the class. See the module docstring."""

    name = "ops"
    norms = ("l0",)

    def __init__(self, budget: Budget, config: OPSConfig = OPSConfig(), device: str = "cpu") -> None:
        """``budget`` must be L0 (eps ≥ 1 changed pixel); ``config`` is empty; ``device`` is stored for the
        shared signature (the search runs on the CPU, in integers)."""
        super().__init__(budget, device)
        self.config = config

    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """δ = c_k − x at p_k for every image of class k, 0 elsewhere. Summary: changed_fraction, the fraction
        of images whose pixel p_k was not already c_k (the others are left unchanged)."""
        images, labels = dataset.tensors()
        pixels = torch.from_numpy(dataset.images)
        choices = choose_pixels(pixels, labels, dataset.num_classes)
        delta = torch.zeros_like(images)
        changed = 0
        for label, (row, column, colour) in choices.items():
            members = (labels == label).nonzero().squeeze(1)
            target = torch.tensor(colour, dtype=images.dtype) / 255
            delta[members, :, row, column] = target - images[members, :, row, column]
            changed += int((delta[members, :, row, column] != 0).any(1).sum())
        summary = {"changed_fraction": changed / max(len(images), 1)}
        return ProtectionResult(release=dataset, delta=delta, summary=summary)

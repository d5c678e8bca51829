"""Autoregressive perturbations (AR), the model-free baseline: one 2-D autoregressive process per class.

Paper: "Autoregressive Perturbations for Data Poisoning", Sandoval-Segura, Singla, Geiping, Goldblum,
Goldstein & Jacobs, NeurIPS 2022 (reference code: github.com/psandovalsegura/autoregressive-poisoning).
Each class k has a process with one 3×3 coefficient window b_k,c per channel c: bottom-right entry 0, the
other 8 summing to 1. Every image of class k gets a fresh pattern of that process, generated from Gaussian
noise; a 3×3 filter with b_k,c and −1 at the bottom-right cancels the pattern exactly, so a victim can read
the class off the noise alone.

    s ~ N(0, 1) of shape (C, H + crop, W + crop), drawn afresh for every image of class k
    for i = 2, …, H + crop − 1 (rows, top to bottom) and j = 2, …, W + crop − 1 (columns, left to right):
        s[c, i, j] = Σ_{u, v ∈ {0, 1, 2}} b_k,c[u, v] · s[c, i − 2 + u, j − 2 + v]      (b_k,c[2, 2] = 0)
    δ = eps · t / ‖t‖_p,   t = s[:, crop:, crop:]   (C, H, W);  p = 2 (norm "l2") or ∞ (norm "linf")

The first two rows and columns keep their noise; cropping ``crop`` ≥ 2 of them leaves only generated
entries. Defaults: ``crop`` 4 (CIFAR: a 36×36 signal cut to 32×32); the paper's main setting is the L2 budget
``{norm: l2, eps: 1.0}``, and its L∞ variant (eps 8/255) is this project's default budget. δ is returned as
generated, not clipped: the release step clips x + δ to [0, 1] and quantises it to uint8 within the budget.

The coefficients: the official lists were picked by a parameter finder (standard normal entries, bottom-right
set to 0, divided by their sum; kept when a few generated signals stay bounded and other classes' filters
respond strongly to them). Here every class channel's window is drawn from ``seed`` by the same rule
(:func:`draw_coefficients`), and the window kept is the first candidate whose process is stable at the job's
size: on :data:`TRIALS` start signals of shape (H + crop, W + crop), the cropped signal must be finite with an
RMS of at most :data:`MAX_GAIN` (the start noise's RMS). About one draw in five passes; most others diverge
exponentially, and once scaled they would be a few bright pixels in the bottom-right corner, or inf. The
finder's second test (other classes' filters respond strongly) is not applied.

Shapes: images and δ float32 (N, C, H, W); coefficients float64 (K, C, 3, 3); the recurrence runs in float64.
It runs on the CPU, one class at a time, vectorised over the class's images: a loop over the rows (the
terms from the two rows above, for the whole row at once) and within a row over the columns (its own two
terms, s[c, i, j − 2] and s[c, i, j − 1]). Seeded: the same seed and dataset give the same coefficients and δ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError
from ue_core.methods.base import ProtectionMethod, ProtectionResult
from ue_core.pga import Budget

TRIALS = 3
"""Start signals each candidate window is tried on before it is kept (the official finder's number)."""
MAX_GAIN = 1.0
"""The largest RMS a kept window's cropped trial signal may have: no amplification of its unit noise."""
CANDIDATES = 16
"""Candidate windows drawn at once for every (class, channel) still without a stable one."""
MAX_ROUNDS = 64
"""Rounds of candidates before the draw gives up (a stable window is drawn with probability about 0.2)."""


@dataclass(frozen=True)
class ARConfig:
    """seed: seeds the coefficients and every image's start signal. crop: rows and columns cut from the top
    and the left of the generated signal (the official 4; 0 keeps the first two rows and columns of noise)."""

    seed: int = 0
    crop: int = 4

    def __post_init__(self) -> None:
        if self.crop < 0:
            raise InvalidInputError(f"ar crop: must be >= 0, got {self.crop}")


def autoregress(start: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Fill ``start`` by the recurrence of the module docstring.

    Args:
        start: float (..., H', W'), H', W' ≥ 3: the noise; its first two rows and columns are kept.
        coefficients: float (..., 3, 3), broadcastable against start[..., :3, :3] (e.g. (C, 3, 3) for a start
            of shape (n, C, H', W')); the bottom-right entry is not read (it multiplies the entry being filled).

    Returns:
        A new tensor of ``start``'s shape and dtype.
    """
    signal = start.clone()
    height, width = signal.shape[-2:]
    b = coefficients.to(signal.dtype)
    for i in range(2, height):
        # the two rows above are final: their 6 terms for every column j = 2 … W' − 1 at once, (..., W' − 2)
        above = sum(b[..., u, v, None] * signal[..., i - 2 + u, v:width - 2 + v] for u in (0, 1) for v in range(3))
        for j in range(2, width):  # then the row's own two terms, left to right
            left = b[..., 2, 0] * signal[..., i, j - 2] + b[..., 2, 1] * signal[..., i, j - 1]
            signal[..., i, j] = above[..., j - 2] + left
    return signal


def draw_coefficients(
    num_classes: int, channels: int, size: tuple[int, int], crop: int, generator: torch.Generator
) -> tuple[torch.Tensor, int]:
    """Each class's stable windows, drawn from ``generator`` (see the module docstring).

    Args:
        num_classes, channels: K and C.
        size: (H + crop, W + crop), the generated signal's shape.
        crop: the rows and columns cut before the stability test.
        generator: the draws' source; each round draws candidates (slots, CANDIDATES, 3, 3) and then their
            trial signals, for the (class, channel) slots still without a window, in (class, channel) order.

    Returns:
        float64 (K, C, 3, 3), bottom-right 0 and the other entries summing to 1, and the number of candidate
        windows rejected as unstable.

    Raises:
        InvalidInputError: when a slot finds no stable window in MAX_ROUNDS rounds (not seen in practice).
    """
    chosen = torch.zeros(num_classes * channels, 3, 3, dtype=torch.float64)
    open_slots = torch.arange(num_classes * channels)
    rejected = 0
    for _ in range(MAX_ROUNDS):
        candidates = torch.randn((len(open_slots), CANDIDATES, 3, 3), generator=generator, dtype=torch.float64)
        candidates[..., 2, 2] = 0
        candidates /= candidates.sum((-1, -2), keepdim=True)
        start = torch.randn((len(open_slots), CANDIDATES, TRIALS, *size), generator=generator, dtype=torch.float64)
        trials = autoregress(start, candidates.unsqueeze(2))[..., crop:, crop:]
        rms = trials.square().mean((-1, -2)).sqrt()  # (slots, CANDIDATES, TRIALS); NaN when it diverged
        stable = candidates.isfinite().all(-1).all(-1) & (rms <= MAX_GAIN).all(-1)  # NaN compares False
        found = stable.any(1)
        first = stable.to(torch.int8).argmax(1)  # the first stable candidate of each slot
        rejected += int(torch.where(found, first, CANDIDATES).sum())
        chosen[open_slots[found]] = candidates[found, first[found]]
        open_slots = open_slots[~found]
        if len(open_slots) == 0:
            return chosen.reshape(num_classes, channels, 3, 3), rejected
    raise InvalidInputError(
        f"ar: no stable coefficients for {len(open_slots)} class channels in {MAX_ROUNDS * CANDIDATES} draws"
    )


class AutoregressivePerturbation(ProtectionMethod):
    """A fresh pattern of its class's autoregressive process per image, scaled to the budget. See the module
    docstring."""

    name = "ar"
    norms = ("l2", "linf")

    def __init__(self, budget: Budget, config: ARConfig = ARConfig(), device: str = "cpu") -> None:
        """``budget`` gives eps and the norm (L2: ‖δ‖₂ = eps per image, the paper's eps 1.0; L∞: ‖δ‖∞ = eps);
        ``config`` the seed and the crop; ``device`` is stored for the shared signature (the processes run on
        the CPU). After :meth:`perturb`, ``coefficients`` holds the windows it used, float64 (K, C, 3, 3)."""
        super().__init__(budget, device)
        self.config = config
        self.coefficients: torch.Tensor | None = None

    def perturb(self, dataset: ImageDataset, progress: bool = False) -> ProtectionResult:
        """δ for every image, unclipped (the release clips x + δ to [0, 1]). Summary: rejected_draws, the
        candidate windows drawn and rejected as unstable before every class channel had one."""
        images, labels = dataset.tensors()
        channels, height, width = images.shape[1:]
        crop = self.config.crop
        size = (height + crop, width + crop)
        generator = torch.Generator().manual_seed(self.config.seed)
        self.coefficients, rejected = draw_coefficients(dataset.num_classes, channels, size, crop, generator)
        order = float("inf") if self.budget.norm == "linf" else 2.0
        delta = torch.zeros_like(images)
        for label in range(dataset.num_classes):
            members = (labels == label).nonzero().squeeze(1)
            if len(members) == 0:
                continue
            start = torch.randn((len(members), channels, *size), generator=generator, dtype=torch.float64)
            pattern = autoregress(start, self.coefficients[label])[..., crop:, crop:]
            norms = torch.linalg.vector_norm(pattern.flatten(1), ord=order, dim=1).reshape(-1, 1, 1, 1)
            delta[members] = (pattern * (self.budget.eps / norms)).to(delta.dtype)
        return ProtectionResult(release=dataset, delta=delta, summary={"rejected_draws": float(rejected)})

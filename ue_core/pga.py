"""Projected gradient ascent on pixels: the perturbation budget every method shares (:class:`Budget`), BEO's
update rules, projections and the quantised release (docs/method.md §3).

Tensors are per sample, so a shard can hold and update its own rows: perturbations δ and pixel gradients
are float32 (N, C, H, W) in image units ([0, 1] per channel); the per-sample Adam state has the same shape,
and its step count is (N,). Every function here works on any subset of rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ue_core.config import parse_fraction
from ue_core.errors import InvalidInputError, ReleaseCheckError

Norm = Literal["linf", "l2", "l0"]
UpdateRule = Literal["adam", "sign"]
NORMS: tuple[str, ...] = ("linf", "l2", "l0")
UPDATE_RULES: tuple[str, ...] = ("adam", "sign")


@dataclass(frozen=True)
class Budget:
    """How far a protection may move each image: the perturbation budget, the same for every method.

    Attributes:
        eps: L∞ and L2: the radius in image units ([0, 1] per channel), a number or a fraction such as
            "8/255": ‖δ‖∞ ≤ eps with 0 < eps < 1 (default 8/255), or ‖δ‖₂ ≤ eps per image with eps > 0.
            L0: the number of pixels each image may change (a pixel changes if any of its channels does),
            an integer ≥ 1, by any amount within [0, 1].
        norm: "linf", "l2" or "l0".
    """

    eps: float = 8 / 255
    norm: Norm = "linf"

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", parse_fraction(self.eps))
        if self.norm not in NORMS:
            raise InvalidInputError(f"unknown norm {self.norm!r}; expected one of {', '.join(NORMS)}")
        if self.norm == "linf" and not 0 < self.eps < 1:
            raise InvalidInputError(f"eps must be in (0, 1) for the L-inf norm, got {self.eps}")
        if self.norm == "l2" and not 0 < self.eps < math.inf:
            raise InvalidInputError(f"eps must be > 0 for the L2 norm, got {self.eps}")
        if self.norm == "l0" and not (self.eps >= 1 and float(self.eps).is_integer()):
            raise InvalidInputError(
                f"eps must be an integer >= 1 (changed pixels per image) for the L0 norm, got {self.eps}"
            )

    @property
    def integer_budget(self) -> float:
        """The budget in integers: floor(255 eps) uint8 levels for L∞, 255 eps levels for L2, eps changed
        pixels per image for L0."""
        if self.norm == "l0":
            return float(self.eps)
        levels = 255 * self.eps
        return float(math.floor(levels + 1e-9)) if self.norm == "linf" else levels


@dataclass(frozen=True)
class PGAConfig:
    """The update rule of the ascent on δ (the budget it stays within is a :class:`Budget`, given apart).

    Attributes:
        update: "adam" (Adam ascent on δ with per-sample state, as torch.optim.AdamW(maximize=True)) or
            "sign" (δ += step · sign(g) for L∞; δ += step · g/‖g‖₂ for L2, step = :meth:`sign_step`).
        lr, betas, adam_eps: Adam's parameters (authors: 1e-3, (0.9, 0.999), 1e-8).
        weight_decay: decoupled decay of δ towards 0 (the authors used 0.01 on the images; off here).
        step_size: the sign rule's step in image units; None means the budget's eps / 10.
    """

    update: UpdateRule = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    step_size: float | None = None

    def __post_init__(self) -> None:
        if self.step_size is not None:
            object.__setattr__(self, "step_size", parse_fraction(self.step_size))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.update not in UPDATE_RULES:
            raise InvalidInputError(f"unknown update rule {self.update!r}; expected one of {', '.join(UPDATE_RULES)}")
        if not self.lr > 0 or (self.step_size is not None and not self.step_size > 0):
            raise InvalidInputError(f"lr and step_size must be > 0, got {self.lr} and {self.step_size}")

    def sign_step(self, budget: Budget) -> float:
        """The sign rule's step in image units: ``step_size``, or ``budget.eps`` / 10 when it is None."""
        return budget.eps / 10 if self.step_size is None else self.step_size


@dataclass
class PixelState:
    """The perturbation and the per-sample optimiser state of a set of rows.

    Attributes:
        delta: δ, float32 (N, C, H, W).
        exp_avg, exp_avg_sq: Adam's moments, same shape as delta (zeros for the sign rule).
        steps: updates applied so far, int64 (N,).
    """

    delta: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    steps: torch.Tensor

    @staticmethod
    def zeros(shape: tuple[int, ...]) -> PixelState:
        """δ = 0 and empty optimiser state for ``shape`` = (N, C, H, W)."""
        return PixelState(
            torch.zeros(shape), torch.zeros(shape), torch.zeros(shape), torch.zeros(shape[0], dtype=torch.long)
        )

    def take(self, rows: torch.Tensor) -> PixelState:
        """The state of the rows at positions ``rows``."""
        return PixelState(self.delta[rows], self.exp_avg[rows], self.exp_avg_sq[rows], self.steps[rows])

    def put(self, rows: torch.Tensor, part: PixelState) -> None:
        """Write ``part`` back at positions ``rows``."""
        self.delta[rows] = part.delta
        self.exp_avg[rows] = part.exp_avg
        self.exp_avg_sq[rows] = part.exp_avg_sq
        self.steps[rows] = part.steps


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def ascent_step(
    state: PixelState, gradient: torch.Tensor, images: torch.Tensor, budget: Budget, pga: PGAConfig
) -> PixelState:
    """One ascent step on δ along ``gradient`` (N, C, H, W) by the rule ``pga``, then the projection onto
    ``budget``; returns the new state.

    ``images`` are the clean x (N, C, H, W) in [0, 1], needed to keep x + δ in range.
    """
    if gradient.shape != state.delta.shape or images.shape != state.delta.shape:
        raise InvalidInputError(
            f"gradient {tuple(gradient.shape)} and images {tuple(images.shape)} must match δ {tuple(state.delta.shape)}"
        )
    _check_finite_rows("images", images, InvalidInputError)
    if images.min() < 0 or images.max() > 1:
        raise InvalidInputError(f"images must be in [0, 1], got values in [{images.min():.4g}, {images.max():.4g}]")
    _check_finite_rows("pixel gradient", gradient, ReleaseCheckError)
    delta = state.delta.clone()
    exp_avg, exp_avg_sq, steps = state.exp_avg, state.exp_avg_sq, state.steps + 1
    if pga.update == "adam":
        beta1, beta2 = pga.betas
        delta.mul_(1 - pga.lr * pga.weight_decay)
        exp_avg = exp_avg.lerp(gradient, 1 - beta1)
        exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * gradient.square()
        bias1 = _per_sample(1 - beta1 ** steps.double(), delta).float()
        bias2 = _per_sample(1 - beta2 ** steps.double(), delta).float()
        denom = (exp_avg_sq.sqrt() / bias2.sqrt()).add_(pga.adam_eps)
        delta.addcdiv_(exp_avg, denom * bias1, value=pga.lr)
    elif budget.norm == "linf":
        delta.add_(gradient.sign(), alpha=pga.sign_step(budget))
    else:
        norms = _per_sample(gradient.flatten(1).norm(dim=1), delta).clamp_min(1e-12)
        delta.add_(gradient / norms, alpha=pga.sign_step(budget))
    return PixelState(project(delta, images, budget), exp_avg, exp_avg_sq, steps)


def _check_finite_rows(name: str, values: torch.Tensor, error: type[Exception]) -> None:
    bad = (~torch.isfinite(values.flatten(1)).all(1)).nonzero().squeeze(1)
    if bad.numel():
        raise error(f"{name} has NaN or Inf at {bad.numel()} rows, e.g. rows {bad[:10].tolist()}")


def project(delta: torch.Tensor, images: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Project δ (N, C, H, W) onto the ball of radius ``budget.eps`` in ``budget.norm`` (L∞ or L2), then so
    that x + δ ∈ [0, 1] for the clean ``images`` x (N, C, H, W). The L0 budget is enforced on the release
    (:func:`quantise_release`), not here: the gradient methods that project are defined for L∞ and L2."""
    if budget.norm == "l0":
        raise InvalidInputError("project: the L0 budget has no continuous projection; use linf or l2")
    if budget.norm == "linf":
        delta = delta.clamp(-budget.eps, budget.eps)
    else:
        norms = _per_sample(delta.flatten(1).norm(dim=1), delta)
        delta = delta * (budget.eps / norms.clamp_min(1e-12)).clamp(max=1.0)
    return (images + delta).clamp_(0.0, 1.0) - images


def quantise_release(clean: np.ndarray, delta: torch.Tensor, budget: Budget, index: np.ndarray) -> np.ndarray:
    """The uint8 release q = round(255 (x + δ)), re-projected in integers.

    Args:
        clean: uint8 (N, H, W, C), the original pixels (255 x).
        delta: float (N, C, H, W), the perturbation in image units.
        budget: L∞ keeps |q - 255x| ≤ floor(255 eps); L2 keeps ‖q - 255x‖₂ ≤ 255 eps
            (by scaling the integer difference down and truncating towards zero); L0 keeps the eps pixels
            of each image that change most (largest max |q - 255x| over channels; ties to the first in
            row-major order) and resets the others.
        index: int64 (N,), the samples' indices, named in the error when δ is not finite.
    Returns:
        uint8 (N, H, W, C).
    """
    finite = torch.isfinite(delta.flatten(1)).all(1).numpy()
    if not finite.all():
        bad = index[~finite]
        raise ReleaseCheckError(f"perturbation has NaN or Inf at {bad.size} samples, indices {bad[:10].tolist()}")
    x = torch.from_numpy(clean.astype(np.float64))  # a copy: ``clean`` may be a read-only view (Arrow)
    levels = delta.detach().to(torch.float64).permute(0, 2, 3, 1) * 255.0
    difference = torch.round(x + levels).clamp_(0, 255) - x
    levels = budget.integer_budget
    if budget.norm == "linf":
        difference.clamp_(-levels, levels)
    elif budget.norm == "l0":
        difference = _keep_largest_pixels(difference, int(levels))
    else:
        norms = difference.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        difference = torch.trunc(difference * (levels / norms.clamp_min(1e-12)).clamp(max=1.0))
    return (x + difference).to(torch.uint8).numpy()


def _keep_largest_pixels(difference: torch.Tensor, count: int) -> torch.Tensor:
    """``difference`` float64 (N, H, W, C) with all but the ``count`` pixels of largest max |·| over channels
    of each image set to 0 (ties to the first pixel in row-major order)."""
    size = difference.abs().amax(dim=3).flatten(1)  # (N, H·W)
    if size.shape[1] <= count:
        return difference
    order = torch.sort(size, dim=1, descending=True, stable=True).indices[:, :count]
    keep = torch.zeros_like(size, dtype=torch.bool).scatter_(1, order, True)
    return difference * keep.reshape(difference.shape[:3]).unsqueeze(3)

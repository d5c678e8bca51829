"""How visible a perturbation is: PSNR and SSIM of a release against its clean images (docs/method.md §4, "Report").

Both compare uint8 images (N, H, W, C) row by row (rows aligned by the caller) and return the mean over images.

PSNR: 10·log10(255² / MSE) in dB per image; an image left unchanged counts as ``PSNR_CAP`` dB, so that the mean
stays finite (a release whose every pixel moved by 8 levels, ε = 8/255, is 20·log10(255/8) = 30.07 dB).

SSIM (Wang, Bovik, Sheikh, Simoncelli 2004) with the usual constants: an 11×11 Gaussian window of σ = 1.5,
K1 = 0.01, K2 = 0.03, dynamic range 255, computed per channel over the "valid" window positions and averaged
over positions, channels and images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ue_core.errors import InvalidInputError

PSNR_CAP = 100.0
_WINDOW, _SIGMA, _K1, _K2, _RANGE = 11, 1.5, 0.01, 0.03, 255.0


def _check_pair(clean: np.ndarray, release: np.ndarray) -> None:
    if clean.shape != release.shape or clean.ndim != 4:
        raise InvalidInputError(
            f"images must be two (N, H, W, C) arrays of one shape, got {clean.shape} and {release.shape}"
        )
    if clean.dtype != np.uint8 or release.dtype != np.uint8:
        raise InvalidInputError(f"images must be uint8, got {clean.dtype} and {release.dtype}")


def psnr(clean: np.ndarray, release: np.ndarray) -> float:
    """Mean PSNR in dB over images of uint8 (N, H, W, C) arrays; unchanged images count as ``PSNR_CAP``."""
    return float(psnr_values(clean, release).mean())


def psnr_values(clean: np.ndarray, release: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image, float64 (N,), capped at ``PSNR_CAP``."""
    _check_pair(clean, release)
    difference = clean.astype(np.float64) - release.astype(np.float64)
    mse = (difference**2).reshape(len(clean), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        values = np.where(mse > 0, 10 * np.log10(_RANGE**2 / np.maximum(mse, 1e-300)), PSNR_CAP)
    return np.minimum(values, PSNR_CAP)


def _gaussian_profile() -> torch.Tensor:
    """The SSIM window's 1-D profile, float64 (11,), summing to 1: the 11×11 window is its outer product."""
    offsets = torch.arange(_WINDOW, dtype=torch.float64) - (_WINDOW - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * _SIGMA**2))
    return profile / profile.sum()


def _filter(images: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """The Gaussian-weighted mean of every valid 11×11 window of (B, 1, H, W), as two 1-D convolutions (the
    window is separable: the same sums, 2 × 11 products per pixel instead of 121, and far smaller temporaries)."""
    return F.conv2d(F.conv2d(images, profile.view(1, 1, -1, 1)), profile.view(1, 1, 1, -1))


def ssim(clean: np.ndarray, release: np.ndarray, batch_values: int = 2**20) -> float:
    """Mean SSIM over images, channels and window positions of uint8 (N, H, W, C) arrays (H, W ≥ 11)."""
    return float(ssim_values(clean, release, batch_values).mean())


def ssim_values(clean: np.ndarray, release: np.ndarray, batch_values: int = 2**20) -> np.ndarray:
    """SSIM of each image, float64 (N,): the mean over its channels and window positions; computed over
    chunks of about ``batch_values`` pixel values (memory ~10 float64 copies of a chunk)."""
    _check_pair(clean, release)
    if min(clean.shape[1:3]) < _WINDOW:
        raise InvalidInputError(f"SSIM needs images of at least {_WINDOW}×{_WINDOW} pixels, got {clean.shape[1:3]}")
    profile = _gaussian_profile()
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
    rows = max(1, batch_values // int(np.prod(clean.shape[1:])))
    values = []
    for start in range(0, len(clean), rows):
        # (B, H, W, C) → (B·C, 1, H, W): every channel filtered alone
        a, b = (torch.tensor(images[start:start + rows], dtype=torch.float64).permute(0, 3, 1, 2)
                .reshape(-1, 1, *images.shape[1:3]) for images in (clean, release))  # a copy: inputs may be read-only
        mean_a, mean_b = _filter(a, profile), _filter(b, profile)
        var_a = _filter(a * a, profile) - mean_a**2
        var_b = _filter(b * b, profile) - mean_b**2
        covariance = _filter(a * b, profile) - mean_a * mean_b
        index = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
            (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
        )
        values.append(index.flatten(1).mean(dim=1).reshape(-1, clean.shape[3]).mean(dim=1).numpy())
    return np.concatenate(values) if values else np.zeros(0)


class QualityMeter:
    """PSNR and SSIM of a release seen batch by batch: :meth:`add` aligned clean and release rows, then
    :meth:`result` gives what :func:`psnr` and :func:`ssim` give on all the rows at once (the per-image
    values kept, N floats each)."""

    def __init__(self) -> None:
        self.psnr: list[np.ndarray] = []
        self.ssim: list[np.ndarray] = []

    def add(self, clean: np.ndarray, release: np.ndarray) -> None:
        self.psnr.append(psnr_values(clean, release))
        self.ssim.append(ssim_values(clean, release))

    def result(self) -> dict[str, float]:
        """{"psnr_db": mean PSNR, "ssim": mean SSIM} over every row added."""
        return {"psnr_db": float(np.concatenate(self.psnr).mean()), "ssim": float(np.concatenate(self.ssim).mean())}

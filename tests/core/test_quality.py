"""PSNR and SSIM of a release against its clean images, checked against direct computations."""

import math

import numpy as np
import pytest

from ue_core.errors import InvalidInputError
from ue_core.quality import PSNR_CAP, QualityMeter, psnr, ssim


def naive_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of Wang et al. (2004) by its definition: a loop over every channel and valid 11×11 window, with
    Gaussian-weighted means, variances and covariance (σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255)."""
    offsets = np.arange(11) - 5
    weights = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    weights /= weights.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for image in range(a.shape[0]):
        for channel in range(a.shape[3]):
            x, y = a[image, :, :, channel].astype(float), b[image, :, :, channel].astype(float)
            for i in range(x.shape[0] - 10):
                for j in range(x.shape[1] - 10):
                    wx, wy = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
                    mx, my = (weights * wx).sum(), (weights * wy).sum()
                    vx, vy = (weights * (wx - mx) ** 2).sum(), (weights * (wy - my) ** 2).sum()
                    cov = (weights * (wx - mx) * (wy - my)).sum()
                    values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def random_pair(seed: int, shape=(3, 16, 14, 2), budget=8):
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 256, size=shape, dtype=np.uint8)
    noise = rng.integers(-budget, budget + 1, size=shape)
    return clean, np.clip(clean.astype(int) + noise, 0, 255).astype(np.uint8)


def test_ssim_equals_the_definition_computed_window_by_window():
    clean, release = random_pair(0)
    # chunks of two images (16 × 14 × 2 values each), the last one shorter
    assert ssim(clean, release, batch_values=2 * 16 * 14 * 2) == pytest.approx(naive_ssim(clean, release), rel=1e-9)
    smooth = np.repeat(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None, None], 14, axis=2).repeat(2, 0)
    shifted = np.clip(smooth.astype(int) + 40, 0, 255).astype(np.uint8)  # a luminance change only
    assert ssim(smooth, shifted) == pytest.approx(naive_ssim(smooth, shifted), rel=1e-9)


def test_identical_images_have_ssim_one_and_the_capped_psnr():
    clean, _ = random_pair(1)
    assert ssim(clean, clean) == pytest.approx(1.0, abs=1e-12)
    assert psnr(clean, clean) == PSNR_CAP


def test_psnr_of_a_uniform_shift_by_eight_levels():
    clean = np.full((2, 12, 12, 3), 100, dtype=np.uint8)
    assert psnr(clean, clean + 8) == pytest.approx(20 * math.log10(255 / 8), rel=1e-12)


def test_psnr_is_the_mean_over_images_of_each_images_psnr():
    clean, release = random_pair(2)
    per_image = [10 * math.log10(255**2 / np.mean((c.astype(float) - r.astype(float)) ** 2))
                 for c, r in zip(clean, release)]
    assert psnr(clean, release) == pytest.approx(np.mean(per_image), rel=1e-12)


@pytest.mark.parametrize(
    "clean, release, message",
    [
        (np.zeros((2, 12, 12, 1), np.uint8), np.zeros((2, 12, 13, 1), np.uint8), "of one shape"),
        (np.zeros((2, 12, 12, 1), np.float32), np.zeros((2, 12, 12, 1), np.float32), "must be uint8"),
        (np.zeros((2, 8, 8, 1), np.uint8), np.zeros((2, 8, 8, 1), np.uint8), "at least 11×11"),
    ],
)
def test_bad_inputs_are_one_line_errors(clean, release, message):
    with pytest.raises(InvalidInputError, match=message):
        ssim(clean, release)


def test_quality_meter_over_batches_equals_the_whole_set():
    clean, release = random_pair(5, shape=(11, 16, 14, 3))
    meter = QualityMeter()
    for rows in (slice(0, 1), slice(1, 7), slice(7, 11)):
        meter.add(clean[rows], release[rows])
    assert meter.result() == {"psnr_db": psnr(clean, release), "ssim": pytest.approx(ssim(clean, release), abs=1e-15)}
    assert ssim(clean[:1], release[:1]) == pytest.approx(naive_ssim(clean[:1], release[:1]), abs=1e-9)

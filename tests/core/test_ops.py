"""One-pixel shortcut (OPS) against an independent brute force of the official score, and the L0 budget that
the release checks enforce for it."""

import math

import numpy as np
import pytest
import torch

from ue_core.checks import check_release
from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError, ReleaseCheckError
from ue_core.methods.ops import OnePixelShortcut, OPSConfig, choose_pixels
from ue_core.methods.tap import TAPConfig, TargetedAdversarialPoisoning
from ue_core.pga import Budget, quantise_release

L0 = Budget(eps=1, norm="l0")



def brute_force_choices(images: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """The official search, loop by loop in numpy on [0, 1] floats: mean/std of |c − x| per (position,
    colour); a zero std scores +inf if the mean is > 0 and is never chosen if the mean is 0; earlier classes'
    pairs are excluded. Returns class → (row, column, colour), colour as 0/255 per channel, the first of
    near-ties."""
    _, height, width, channels = images.shape
    taken: set = set()
    choices = {}
    for label in range(num_classes):
        members = images[labels == label] / 255
        scores = {}
        for row in range(height):
            for column in range(width):
                for bits in range(2**channels):
                    colour = np.array([(bits >> (channels - 1 - c)) & 1 for c in range(channels)], float)
                    distance = np.abs(colour - members[:, row, column, :])
                    mean, std = np.mean(distance), np.std(distance)
                    score = mean / std if std > 1e-12 else (math.inf if mean > 0 else -math.inf)
                    if (row, column, bits) not in taken:
                        scores[(row, column, bits)] = score
        best = max(scores.values())
        near = [key for key, score in scores.items() if score == best or score >= best * (1 - 1e-9)]
        row, column, bits = near[0]  # dicts keep (row, column, colour) order
        taken.add((row, column, bits))
        colour = tuple(255 * ((bits >> (channels - 1 - c)) & 1) for c in range(channels))
        choices[label] = (row, column, colour)
    return choices


def test_choices_equal_the_brute_force_official_score(datasets):
    for dataset in datasets:
        choices = choose_pixels(torch.from_numpy(dataset.images), torch.from_numpy(dataset.labels),
                                dataset.num_classes)
        assert choices == brute_force_choices(dataset.images, dataset.labels, dataset.num_classes)
        assert len({(row, column, colour) for row, column, colour in choices.values()}) == dataset.num_classes


def test_ops_sets_exactly_its_class_pixel_to_its_class_colour(datasets):
    for dataset in datasets:
        result = OnePixelShortcut(L0, OPSConfig()).protect(dataset)
        choices = choose_pixels(torch.from_numpy(dataset.images), torch.from_numpy(dataset.labels),
                                dataset.num_classes)
        expected = dataset.images.copy()
        for i, label in enumerate(dataset.labels):
            row, column, colour = choices[label]
            expected[i, row, column] = colour
        assert np.array_equal(result.release.images, expected)
        changed = (result.release.images != dataset.images).any(axis=3).reshape(len(dataset), -1).sum(axis=1)
        assert changed.max() == 1
        assert result.summary["changed_fraction"] == pytest.approx(changed.mean())
    assert changed.min() == 1  # random RGB pixels are never already an extreme colour


def release_with(dataset: ImageDataset, pixels: list[tuple[int, int]]) -> ImageDataset:
    """``dataset`` with the given (row, column) pixels of its first image inverted."""
    images = dataset.images.copy()
    for row, column in pixels:
        images[0, row, column] = 255 - images[0, row, column]
    return dataset.with_images(images)


def test_l0_check_refuses_two_changed_pixels_in_one_image(datasets):
    rgb = datasets[1]
    check_release(rgb, release_with(rgb, [(1, 2)]), L0)
    message = r"exceeds the l0 budget of 1 changed pixels at 1 samples: indices \[0\]"
    with pytest.raises(ReleaseCheckError, match=message):
        check_release(rgb, release_with(rgb, [(1, 2), (3, 4)]), L0)
    check_release(rgb, release_with(rgb, [(1, 2), (3, 4)]), Budget(eps=2, norm="l0"))


def test_l0_quantisation_keeps_the_largest_changed_pixels():
    clean = np.full((1, 2, 2, 1), 100, dtype=np.uint8)
    delta = torch.tensor([[[[30, -76], [51, 13]]]]) / 255  # (1, 1, 2, 2) in image units
    release = quantise_release(clean, delta, Budget(eps=2, norm="l0"), np.arange(1))
    assert release[0, :, :, 0].tolist() == [[100, 24], [151, 100]]


@pytest.mark.parametrize("eps", [0, 0.5, 1.5, "8/255"])
def test_l0_budget_is_a_whole_number_of_pixels(eps):
    with pytest.raises(InvalidInputError, match="integer >= 1"):
        Budget(eps=eps, norm="l0")


def test_a_method_refuses_a_norm_it_does_not_declare():
    with pytest.raises(InvalidInputError,
                       match=r"^ops: defined for the budget norm l0 only, got norm 'linf'$"):
        OnePixelShortcut(Budget(), OPSConfig())
    with pytest.raises(InvalidInputError,
                       match=r"^tap: defined for the budget norm linf only, got norm 'l0'$"):
        TargetedAdversarialPoisoning(L0, TAPConfig())

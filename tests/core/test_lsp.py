"""Linearly separable perturbations (LSP) against independent computations: patches read back pixel by pixel,
separability by a least-squares linear classifier, the reference's L2 radius, seeding, and the L2 budget of
the release they go through."""

import math

import numpy as np
import pytest
import torch

from pipelines.config.protect import load_protect_config
from ue_core.checks import check_release
from ue_core.data import read_dataset
from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError
from ue_core.methods.lsp import LinearlySeparablePerturbation, LSPConfig
from ue_core.pga import Budget

FASHION_EPS = 168 / 255  # the reference's radius √((6/255)² · 28·28·1) for 28×28 gray images
RGB_EPS = 1.0


@pytest.fixture(scope="module")
def cases(fashion_mnist_root):
    """(dataset, budget, config): 100 real Fashion-MNIST images (10 classes) with the default 8-pixel patches
    (a 4×4 grid, the last row and column 4 pixels wide), and 120 random RGB 10×12 images (4 classes) with
    4-pixel patches (a 3×3 grid, the last row 2 pixels high)."""
    fashion = read_dataset(str(fashion_mnist_root), split="train").subset(np.arange(100))
    rng = np.random.default_rng(0)
    rgb = ImageDataset(images=rng.integers(0, 256, (120, 10, 12, 3), dtype=np.uint8),
                       labels=np.arange(120) % 4, num_classes=4, index=rng.permutation(1000)[:120])
    return [(fashion, Budget(eps=FASHION_EPS, norm="l2"), LSPConfig()),
            (rgb, Budget(eps=RGB_EPS, norm="l2"), LSPConfig(seed=3, patch_size=4))]


def blocks(height: int, width: int, size: int) -> list[tuple[slice, slice]]:
    """The (rows, columns) of every size × size patch of an image, cropped at the bottom and right edges."""
    return [(slice(top, min(top + size, height)), slice(left, min(left + size, width)))
            for top in range(0, height, size) for left in range(0, width, size)]


def patch_values(delta: np.ndarray, size: int) -> np.ndarray:
    """(N, C · patches): each patch's value, read at its top-left pixel."""
    height, width = delta.shape[2:]
    return np.stack([delta[:, :, rows.start, columns.start] for rows, columns in blocks(height, width, size)],
                    axis=2).reshape(len(delta), -1)


def least_squares_accuracy(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Training accuracy of a linear classifier (one-hot targets fitted by least squares, with a bias)."""
    design = np.hstack([features, np.ones((len(features), 1))])
    weights = np.linalg.lstsq(design, np.eye(num_classes)[labels], rcond=None)[0]
    return float(np.mean((design @ weights).argmax(axis=1) == labels))


def test_delta_is_constant_on_every_patch_of_every_channel(cases):
    for dataset, budget, config in cases:
        delta = LinearlySeparablePerturbation(budget, config).perturb(dataset).delta.numpy()
        height, width, channels = dataset.image_shape
        assert delta.shape == (len(dataset), channels, height, width)
        grid = blocks(height, width, config.patch_size)
        assert len(grid) == {28: 4 * 4, 10: 3 * 3}[height]
        for rows, columns in grid:
            patch = delta[:, :, rows, columns]
            assert np.all(patch == patch[:, :, :1, :1])
        # neighbouring patches differ: the patches are the grid's, not coarser
        assert np.unique(patch_values(delta, config.patch_size), axis=1).shape[1] == channels * len(grid)


def test_the_classes_are_linearly_separable_and_their_images_share_a_direction(cases):
    for dataset, budget, config in cases:
        delta = LinearlySeparablePerturbation(budget, config).perturb(dataset).delta.numpy()
        values = patch_values(delta, config.patch_size)
        labels, classes = dataset.labels, dataset.num_classes
        assert least_squares_accuracy(values, labels, classes) == 1.0
        shuffled = np.random.default_rng(1).permutation(labels)  # the control: random labels are not
        assert least_squares_accuracy(values, shuffled, classes) < 0.9
        # every class its own direction (a distinct sign pattern of its mean), every image closest to its own
        means = np.stack([values[labels == k].mean(axis=0) for k in range(classes)])
        assert len(np.unique(np.sign(means), axis=0)) == classes
        directions = means / np.linalg.norm(means, axis=1, keepdims=True)
        assert np.array_equal((values @ directions.T).argmax(axis=1), labels)
        # sample-wise, as the reference: no two images share a δ, within a class either
        assert len(np.unique(values, axis=0)) == len(dataset)


def test_every_delta_has_the_reference_l2_norm(cases):
    # the reference's radius: comput_l2norm_lim(linf=6/255, feature_dim=H·W·C) = √(linf² · feature_dim)
    assert math.sqrt((6 / 255) ** 2 * 28 * 28 * 1) == pytest.approx(FASHION_EPS, rel=1e-12)
    for dataset, budget, config in cases:
        result = LinearlySeparablePerturbation(budget, config).perturb(dataset)
        delta = result.delta.numpy().astype(np.float64)
        np.testing.assert_allclose(np.sqrt(np.square(delta).reshape(len(delta), -1).sum(axis=1)), budget.eps,
                                   rtol=1e-6)
        pixels = np.prod(dataset.image_shape)
        assert result.summary["rms_levels"] == pytest.approx(255 * budget.eps / math.sqrt(pixels))
        peaks = 255 * np.abs(delta).reshape(len(delta), -1).max(axis=1)
        assert result.summary["peak_levels"] == pytest.approx(peaks.mean(), rel=1e-6)
    assert LinearlySeparablePerturbation(*cases[0][1:]).perturb(cases[0][0]).summary["rms_levels"] == \
        pytest.approx(6)


def test_the_seed_fixes_delta_and_the_rows_order_does_not_move_it(cases):
    for dataset, budget, config in cases:
        first = LinearlySeparablePerturbation(budget, config).perturb(dataset).delta
        again = LinearlySeparablePerturbation(budget, config).perturb(dataset).delta
        assert torch.equal(first, again)
        other = LSPConfig(seed=config.seed + 1, patch_size=config.patch_size)
        assert not torch.allclose(first, LinearlySeparablePerturbation(budget, other).perturb(dataset).delta)
        rows = np.random.default_rng(2).permutation(len(dataset))
        shuffled = LinearlySeparablePerturbation(budget, config).perturb(dataset.subset(rows)).delta
        assert torch.equal(shuffled, first[torch.from_numpy(rows)])


def test_the_release_keeps_the_l2_budget_and_moves_whole_patches(cases):
    for dataset, budget, config in cases:
        result = LinearlySeparablePerturbation(budget, config).protect(dataset)
        check_release(dataset, result.release, budget)
        difference = result.release.images.astype(np.int64) - dataset.images
        norms = np.sqrt(np.square(difference).reshape(len(dataset), -1).sum(axis=1))
        assert norms.max() <= 255 * budget.eps + 1e-9 and norms.min() > 0
        # pixels far from 0 and 255 are never clipped: all of a patch's move by the same integer
        height, width, _ = dataset.image_shape
        inside = (dataset.images >= 40) & (dataset.images <= 215)
        for rows, columns in blocks(height, width, config.patch_size):
            for moved, kept in zip(difference[:, rows, columns], inside[:, rows, columns]):
                for channel in range(moved.shape[-1]):
                    assert len(np.unique(moved[..., channel][kept[..., channel]])) <= 1


def test_lsp_is_defined_for_the_l2_budget_only():
    for budget, norm in [(Budget(), "linf"), (Budget(eps=1, norm="l0"), "l0")]:
        with pytest.raises(InvalidInputError, match=f"^lsp: defined for the budget norm l2 only, got norm '{norm}'$"):
            LinearlySeparablePerturbation(budget, LSPConfig())


def test_a_protect_config_builds_lsp_from_its_budget_and_section():
    method = load_protect_config("fashion-mnist", overrides={
        "method": "lsp", "budget.norm": "l2", "budget.eps": "168/255", "lsp.patch_size": 7}).build()
    assert isinstance(method, LinearlySeparablePerturbation)
    assert method.budget == Budget(eps=FASHION_EPS, norm="l2") and method.config == LSPConfig(patch_size=7)
    with pytest.raises(InvalidInputError, match="lsp: defined for the budget norm l2 only, got norm 'linf'"):
        load_protect_config("fashion-mnist", overrides={"method": "lsp"})


@pytest.mark.parametrize("settings, message", [
    ({"patch_size": 0}, "lsp patch_size: must be >= 1, got 0"),
    ({"class_sep": 0.0}, "lsp class_sep: must be > 0, got 0.0"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(InvalidInputError, match=f"^{message}$"):
        LSPConfig(**settings)


def test_too_few_patches_for_the_classes_are_refused():
    """A 4×4 gray image in one 8-pixel patch has d = 1 feature: two vertices, not enough for three classes."""
    tiny = ImageDataset(images=np.zeros((3, 4, 4, 1), dtype=np.uint8), labels=np.arange(3), num_classes=3)
    with pytest.raises(InvalidInputError, match="lsp: 3 classes need more than 1 features"):
        LinearlySeparablePerturbation(Budget(eps=0.1, norm="l2"), LSPConfig()).perturb(tiny)
    two = ImageDataset(images=np.zeros((2, 4, 4, 1), dtype=np.uint8), labels=np.arange(2), num_classes=2)
    delta = LinearlySeparablePerturbation(Budget(eps=0.1, norm="l2"), LSPConfig()).perturb(two).delta
    assert torch.sign(delta[0, 0, 0, 0]) != torch.sign(delta[1, 0, 0, 0])  # the two vertices, ±class_sep

"""Autoregressive perturbations (AR) against independent computations: each class's matching filter cancels its
patterns (a grouped conv2d), the norms, the coefficient windows, the seeding, and the budget through the real
release path."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ue_core.checks import check_release
from ue_core.errors import InvalidInputError
from ue_core.methods.ar import ARConfig, AutoregressivePerturbation
from ue_core.pga import Budget

L2 = Budget(eps=1.0, norm="l2")
LINF = Budget(eps=8 / 255, norm="linf")



def matching_residual(delta: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Each channel of δ (n, C, H, W) convolved with its window (C, 3, 3) with −1 at the bottom-right: one
    value per valid position, (n, C, H − 2, W − 2), float64."""
    weight = coefficients.to(torch.float64).clone()
    weight[:, 2, 2] = -1
    return F.conv2d(delta.to(torch.float64), weight.unsqueeze(1), groups=weight.shape[0])


@pytest.mark.parametrize("budget", [L2, LINF], ids=["l2", "linf"])
@pytest.mark.parametrize("crop", [4, 0])
def test_each_class_pattern_is_cancelled_by_its_own_filter_only(datasets, budget, crop):
    for dataset in datasets:
        method = AutoregressivePerturbation(budget, ARConfig(seed=0, crop=crop))
        delta = method.perturb(dataset).delta
        assert delta.dtype == torch.float32 and delta.shape == dataset.tensors()[0].shape
        labels = torch.from_numpy(dataset.labels)
        for label in range(dataset.num_classes):
            own = delta[labels == label]
            size = own.abs().flatten(1).amax(1).reshape(-1, 1, 1, 1)  # float32 rounding scales with |δ|
            residual = matching_residual(own, method.coefficients[label])
            assert (residual.abs() <= 1e-5 * size).all()
            other = method.coefficients[(label + 1) % dataset.num_classes]
            foreign = matching_residual(own, other).abs().flatten(1).amax(1)
            assert (foreign > 1e-2 * size.flatten()).all()


def test_each_delta_has_norm_eps_before_the_clip(datasets):
    for dataset in datasets:
        images = dataset.tensors()[0]
        delta = AutoregressivePerturbation(L2, ARConfig()).perturb(dataset).delta
        torch.testing.assert_close(delta.flatten(1).norm(dim=1), torch.ones(len(dataset)), rtol=1e-5, atol=0)
        assert ((images + delta) < 0).any()  # not clipped: the release does that
        delta = AutoregressivePerturbation(LINF, ARConfig()).perturb(dataset).delta
        torch.testing.assert_close(delta.abs().flatten(1).amax(1), torch.full((len(dataset),), 8 / 255),
                                   rtol=1e-6, atol=0)


def test_patterns_are_spread_over_the_image_not_a_diverging_corner(datasets):
    """The stability rule: no class's pattern puts most of its energy in the last two rows and columns."""
    fashion = datasets[0]
    delta = AutoregressivePerturbation(L2, ARConfig()).perturb(fashion).delta.square()
    edge = delta[..., -2:, :].sum((1, 2, 3)) + delta[..., :-2, -2:].sum((1, 2, 3))
    assert (edge < 0.5).all()


def test_coefficient_windows_have_a_zero_corner_and_sum_to_one(datasets):
    for dataset in datasets:
        channels = dataset.image_shape[2]
        method = AutoregressivePerturbation(L2, ARConfig(seed=3))
        result = method.perturb(dataset)
        coefficients = method.coefficients
        assert coefficients.shape == (dataset.num_classes, channels, 3, 3)
        assert (coefficients[..., 2, 2] == 0).all()
        torch.testing.assert_close(coefficients.sum((-1, -2)),
                                   torch.ones(dataset.num_classes, channels, dtype=torch.float64))
        flat = coefficients.flatten(1)
        assert torch.cdist(flat, flat).add(torch.eye(len(flat), dtype=flat.dtype)).min() > 1e-3  # all distinct
        assert result.summary["rejected_draws"] >= 0


def test_the_same_seed_gives_the_same_delta_another_seed_another(datasets):
    fashion = datasets[0]
    first = AutoregressivePerturbation(L2, ARConfig(seed=7))
    again = AutoregressivePerturbation(L2, ARConfig(seed=7))
    other = AutoregressivePerturbation(L2, ARConfig(seed=8))
    deltas = [method.perturb(fashion).delta for method in (first, again, other)]
    assert torch.equal(deltas[0], deltas[1]) and torch.equal(first.coefficients, again.coefficients)
    assert not torch.allclose(deltas[0], deltas[2]) and not torch.allclose(first.coefficients, other.coefficients)


def test_the_release_is_the_clipped_quantised_image_within_the_budget(datasets):
    for dataset in datasets:
        clean = dataset.images.astype(np.int64)
        # L∞ 8/255: q = clip(round(255 (x + δ))) exactly (the projection never binds at |255 δ| ≤ 8)
        result = AutoregressivePerturbation(LINF, ARConfig()).protect(dataset)
        check_release(dataset, result.release, LINF)
        released = result.release.images.astype(np.int64)
        expected = np.clip(np.round(clean + 255 * result.delta.double().permute(0, 2, 3, 1).numpy()), 0, 255)
        np.testing.assert_array_equal(released, expected)
        assert np.abs(released - clean).max() == 8
        # L2 1.0: ‖q − x‖₂ ≤ 255 levels per image, in integers
        result = AutoregressivePerturbation(L2, ARConfig()).protect(dataset)
        check_release(dataset, result.release, L2)
        norms = np.sqrt(((result.release.images.astype(np.int64) - clean) ** 2).reshape(len(dataset), -1).sum(1))
        assert norms.max() <= 255 and norms.min() > 0


def test_ar_refuses_the_l0_budget_and_a_negative_crop():
    with pytest.raises(InvalidInputError, match=r"^ar: defined for the budget norm l2 or linf only, got norm 'l0'$"):
        AutoregressivePerturbation(Budget(eps=1, norm="l0"), ARConfig())
    with pytest.raises(InvalidInputError, match=r"^ar crop: must be >= 0, got -1$"):
        ARConfig(crop=-1)

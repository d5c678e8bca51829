"""The estimator's options beyond the paper: the "target" objective, the support check, the nearest-neighbour
bandwidth; each against an independent computation (autograd in float64, finite differences, brute force)."""

import pytest
import torch
from dense_reference import clustered_features, dense_bayes_error

from ue_core import bayes_error as be
from ue_core.errors import InvalidInputError
from ue_core.methods.beo import EstimatorConfig


def dense_target_posterior(z: torch.Tensor, y: torch.Tensor, num_classes: int, sigma: float, shift: int,
                           class_map: list[int] | None = None):
    """Mean kernel posterior of the class (y + shift) mod C, or class_map[y], written from its definition."""
    diff = z.unsqueeze(1) - z.unsqueeze(0)
    kernel = torch.exp(-(diff**2).sum(-1) / (2 * sigma**2)) * (1 - torch.eye(len(z), dtype=z.dtype))
    posterior = kernel @ torch.nn.functional.one_hot(y, num_classes).to(z.dtype) / (kernel.sum(1, keepdim=True) + 1e-8)
    targets = (y + shift) % num_classes if class_map is None else torch.tensor([class_map[c] for c in y.tolist()])
    return posterior.gather(1, targets.unsqueeze(1)).mean()


@pytest.mark.parametrize("shift", [1, 2])
def test_target_gradient_equals_autograd_float64(shift):
    z, y = clustered_features(60, 8, 4, seed=11, spread=0.35)
    z_auto = z.clone().requires_grad_(True)
    dense_target_posterior(z_auto, y, 4, 0.3, shift).backward()
    result = be.estimate(z, y, 4, sigma=0.3, objective="target", target_shift=shift)
    assert z_auto.grad.norm() > 1e-3
    assert ((result.gradient - z_auto.grad).norm() / z_auto.grad.norm()) < 1e-10
    # the reported value and errors stay β̂'s
    assert result.value.item() == pytest.approx(dense_bayes_error(z, y, 4, 0.3).item(), rel=1e-12)


def test_target_map_gradient_equals_autograd_float64_plain_and_anchored():
    """A class map that is no shift (0→2, 1→0, 2→3, 3→1): the exact estimator's gradient, and the anchored
    one's without anchors, against autograd of the definition; a map that is the shift equals the shift."""
    z, y = clustered_features(60, 8, 4, seed=15, spread=0.35)
    class_map = [2, 0, 3, 1]
    z_auto = z.clone().requires_grad_(True)
    dense_target_posterior(z_auto, y, 4, 0.3, 0, class_map).backward()
    result = be.estimate(z, y, 4, sigma=0.3, objective="target", target_map=class_map)
    assert z_auto.grad.norm() > 1e-3
    assert ((result.gradient - z_auto.grad).norm() / z_auto.grad.norm()) < 1e-10
    empty = torch.zeros(0, 8, dtype=z.dtype)
    anchored = be.anchored_estimate(z, y, empty, torch.zeros(0, dtype=y.dtype), 4, sigma=0.3, objective="target",
                                    target_map=class_map)
    torch.testing.assert_close(anchored.gradient, result.gradient, rtol=1e-10, atol=1e-14)
    shifted = be.estimate(z, y, 4, sigma=0.3, objective="target", target_shift=2)
    as_map = be.estimate(z, y, 4, sigma=0.3, objective="target", target_map=[2, 3, 0, 1])
    torch.testing.assert_close(as_map.gradient, shifted.gradient, rtol=0, atol=0)


@pytest.mark.parametrize("class_map", [[1, 0], [1, 1, 0, 0, 0], [0, 2, 3, 1], [1, 2, 3, 4]])
def test_a_class_map_that_is_not_one_wrong_class_per_class_is_refused(class_map):
    with pytest.raises(InvalidInputError, match=r"target map must give each of the 4 classes another class"):
        be.target_classes(torch.tensor([0, 1]), 4, class_map=class_map)
    with pytest.raises(InvalidInputError, match="target map"):
        EstimatorConfig(objective="target", target_map=tuple(class_map)).check_targets(4)
    EstimatorConfig(objective="bayes_error", target_map=tuple(class_map)).check_targets(4)  # not used: no error


def test_target_gradient_matches_finite_differences():
    z, y = clustered_features(30, 5, 3, seed=12, spread=0.35)
    gradient = be.estimate(z, y, 3, sigma=0.3, objective="target").gradient
    direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(13), dtype=z.dtype)
    h = 1e-6
    numeric = (dense_target_posterior(z + h * direction, y, 3, 0.3, 1)
               - dense_target_posterior(z - h * direction, y, 3, 0.3, 1)) / (2 * h)
    analytic = (gradient * direction).sum()
    assert analytic.abs() > 1e-4
    assert numeric.item() == pytest.approx(analytic.item(), rel=1e-6)


def test_target_objective_in_row_blocks_and_with_a_reference_bank():
    z, y = clustered_features(50, 6, 4, seed=14, spread=0.35)
    full = be.estimate(z, y, 4, sigma=0.3, objective="target")
    positions, targets = torch.arange(len(z)), be.target_classes(y, 4)
    blocks = [torch.arange(0, 17), torch.arange(17, 50)]
    stats = be.KernelStats.concat(
        [be.block_stats(z[b], z, y, 4, 0.3, positions[b], row_targets=targets[b]) for b in blocks]
    )
    gradient = torch.cat([be.block_gradient(z[b], y[b], stats.take(b), z, y, stats, 0.3, len(z), positions[b],
                                            objective="target") for b in blocks])
    torch.testing.assert_close(gradient, full.gradient, rtol=1e-12, atol=1e-15)
    # the reference estimator holds the partners fixed: its gradient is that of the rows' posteriors alone
    generator = torch.Generator().manual_seed(0)
    reference = be.estimate(z, y, 4, sigma=0.3, estimator="reference", reference_size=20, generator=generator,
                            objective="target")
    chosen = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:20]
    rows = z.clone().requires_grad_(True)
    bank, bank_y = z[chosen], y[chosen]
    kernel = torch.exp(-torch.cdist(rows, bank).square() / (2 * 0.3**2))
    kernel = kernel * (be.reference_positions(chosen, len(z)).unsqueeze(1) != torch.arange(20)).to(z.dtype)
    posterior = kernel @ torch.nn.functional.one_hot(bank_y, 4).to(z.dtype) / (kernel.sum(1, keepdim=True) + 1e-8)
    posterior.gather(1, be.target_classes(y, 4).unsqueeze(1)).mean().backward()
    torch.testing.assert_close(reference.gradient, rows.grad, rtol=1e-9, atol=1e-12)


def test_target_classes_and_bad_settings():
    assert be.target_classes(torch.tensor([0, 1, 9]), 10, shift=1).tolist() == [1, 2, 0]
    with pytest.raises(InvalidInputError, match="target shift"):
        be.target_classes(torch.tensor([0]), 10, shift=10)
    with pytest.raises(InvalidInputError, match="objective"):
        be.estimate(*clustered_features(10, 2, 2, seed=0), 2, objective="nope")
    with pytest.raises(InvalidInputError, match="objective"):
        EstimatorConfig(objective="nope")
    with pytest.raises(InvalidInputError, match="bandwidth"):
        EstimatorConfig(bandwidth="median")


def test_a_bandwidth_below_every_distance_is_refused_not_reported():
    # the features of the issue: nearest neighbours ~0.4 apart; σ = 0.03 underflows every weight
    z, y = clustered_features(200, 16, 10, seed=15, dtype=torch.float32, spread=0.1)
    nearest = torch.cdist(z, z).fill_diagonal_(torch.inf).min(1).values
    assert nearest.min() > 0.2
    with pytest.raises(InvalidInputError, match="sigma 0.03 is too small"):
        be.estimate(z, y, 10, sigma=0.03)
    be.estimate(z, y, 10, sigma=0.3)  # a bandwidth on the scale of the distances works


def test_nearest_neighbour_sigma_against_brute_force():
    z, _ = clustered_features(300, 7, 3, seed=16)
    nearest = torch.cdist(z, z).fill_diagonal_(torch.inf).min(1).values
    assert be.nearest_neighbour_sigma(z, 0.75, queries=300) == pytest.approx(0.75 * nearest.median().item())
    # a subset of queries: the median of those rows' nearest-neighbour distances, same draw
    chosen = torch.randperm(300, generator=torch.Generator().manual_seed(4))[:50]
    value = be.nearest_neighbour_sigma(z, 2.0, queries=50, generator=torch.Generator().manual_seed(4))
    assert value == pytest.approx(2.0 * nearest[chosen].median().item())


def test_step_sigma_follows_the_config():
    z, _ = clustered_features(100, 5, 3, seed=17)
    assert EstimatorConfig(sigma=0.7).step_sigma(z, (0, 3, 0)) == 0.7
    adaptive = EstimatorConfig(bandwidth="nearest-neighbour", bandwidth_scale=1.5)
    assert adaptive.step_sigma(z, (0, 3, 0)) == adaptive.step_sigma(z, (0, 3, 0))  # a function of the seed
    nearest = torch.cdist(z, z).fill_diagonal_(torch.inf).min(1).values
    assert adaptive.step_sigma(z, (0, 3, 0)) == pytest.approx(1.5 * nearest.median().item())


def dense_mixture_objective(z, y, anchors, anchor_labels, num_classes, sigma, objective, twins):
    """β̂ (argmax held fixed) or the mean target posterior of the mixture [z; anchors], from the definition."""
    bank, labels = torch.cat([z, anchors]), torch.cat([y, anchor_labels])
    kernel = torch.exp(-(bank.unsqueeze(1) - bank.unsqueeze(0)).square().sum(-1) / (2 * sigma**2))
    mask = 1 - torch.eye(len(bank), dtype=z.dtype)
    if twins:
        n = len(z)
        mask[torch.arange(n), torch.arange(n) + n] = 0
        mask[torch.arange(n) + n, torch.arange(n)] = 0
    kernel = kernel * mask
    posterior = kernel @ torch.nn.functional.one_hot(labels, num_classes).to(z.dtype) / (kernel.sum(1, keepdim=True) + 1e-8)
    if objective == "target":
        return posterior.gather(1, be.target_classes(labels, num_classes).unsqueeze(1)).mean()
    return (1 - posterior.gather(1, posterior.detach().argmax(1, keepdim=True))).mean()


@pytest.mark.parametrize("objective", ["bayes_error", "target"])
@pytest.mark.parametrize("twins", [True, False])
def test_anchored_gradient_equals_autograd_float64(objective, twins):
    z, y = clustered_features(40, 6, 3, seed=21, spread=0.35)
    anchors = z + 0.05 * torch.randn(z.shape, generator=torch.Generator().manual_seed(22), dtype=z.dtype)
    z_auto = z.clone().requires_grad_(True)
    dense_mixture_objective(z_auto, y, anchors, y, 3, 0.3, objective, twins).backward()
    result = be.anchored_estimate(z, y, anchors, y, 3, sigma=0.3, twins=twins, objective=objective)
    assert z_auto.grad.norm() > 1e-3
    assert ((result.gradient - z_auto.grad).norm() / z_auto.grad.norm()) < 1e-10
    value = dense_mixture_objective(z, y, anchors, y, 3, 0.3, "bayes_error", twins)
    assert result.value.item() == pytest.approx(value.item(), rel=1e-12) and len(result.errors) == 80


def test_anchored_gradient_matches_finite_differences():
    z, y = clustered_features(25, 4, 3, seed=23, spread=0.35)
    anchors, anchor_labels = clustered_features(30, 4, 3, seed=24, spread=0.35)
    gradient = be.anchored_estimate(z, y, anchors, anchor_labels, 3, sigma=0.3).gradient
    direction = torch.randn(z.shape, generator=torch.Generator().manual_seed(25), dtype=z.dtype)
    h = 1e-6

    def value(shift):
        return be.anchored_estimate(z + shift * direction, y, anchors, anchor_labels, 3, sigma=0.3).value

    numeric, analytic = (value(h) - value(-h)) / (2 * h), (gradient * direction).sum()
    assert analytic.abs() > 1e-4
    assert numeric.item() == pytest.approx(analytic.item(), rel=1e-6)


def test_without_anchors_the_mixture_estimate_is_the_plain_one():
    z, y = clustered_features(50, 6, 4, seed=26, spread=0.35)
    for objective in ("bayes_error", "target"):
        plain = be.estimate(z, y, 4, sigma=0.3, objective=objective)
        mixture = be.anchored_estimate(z, y, z[:0], y[:0], 4, sigma=0.3, objective=objective)
        torch.testing.assert_close(mixture.gradient, plain.gradient, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(mixture.errors, plain.errors, rtol=0, atol=1e-14)
    with pytest.raises(InvalidInputError, match="twin anchors"):
        be.anchored_estimate(z, y, z[:3], y[:3], 4, twins=True)

"""The Bayes-error estimator against independent computations: autograd, finite differences, hand values."""

import math

import pytest
import torch
from dense_reference import clustered_features, dense_bayes_error

from ue_core import bayes_error as be
from ue_core.errors import InvalidInputError


def test_value_matches_definition():
    z, y = clustered_features(50, 8, 4, seed=0, spread=0.4)
    result = be.estimate(z, y, 4, sigma=0.3)
    assert result.value.item() == pytest.approx(dense_bayes_error(z, y, 4, 0.3).item(), rel=1e-12)
    assert 0.05 < result.value.item() < 0.75  # a non-trivial case: classes overlap


def test_gradient_equals_autograd_float64():
    z, y = clustered_features(60, 8, 3, seed=1)
    z_auto = z.clone().requires_grad_(True)
    dense_bayes_error(z_auto, y, 3, 0.3).backward()
    exact = be.estimate(z, y, 3, sigma=0.3).gradient
    relative = (exact - z_auto.grad).norm() / z_auto.grad.norm()
    assert z_auto.grad.norm() > 1e-3
    assert relative < 1e-10


def test_gradient_matches_finite_differences():
    z, y = clustered_features(30, 5, 3, seed=2)
    gradient = be.estimate(z, y, 3, sigma=0.3).gradient
    g = torch.Generator().manual_seed(3)
    direction = torch.randn(z.shape, generator=g, dtype=z.dtype)
    h = 1e-6
    plus = be.estimate(z + h * direction, y, 3, 0.3, with_gradient=False).value
    minus = be.estimate(z - h * direction, y, 3, 0.3, with_gradient=False).value
    numeric = (plus - minus) / (2 * h)
    analytic = (gradient * direction).sum()
    assert analytic.abs() > 1e-4
    assert numeric.item() == pytest.approx(analytic.item(), rel=1e-6)


def test_row_blocks_assemble_to_the_full_gradient():
    z, y = clustered_features(70, 6, 4, seed=4)
    full = be.estimate(z, y, 4, sigma=0.3)
    positions = torch.arange(len(z))
    blocks = [torch.arange(0, 23), torch.arange(23, 50), torch.arange(50, 70)]
    stats = be.KernelStats.concat([be.block_stats(z[b], z, y, 4, 0.3, positions[b]) for b in blocks])
    gradient = torch.cat(
        [be.block_gradient(z[b], y[b], stats.take(b), z, y, stats, 0.3, len(z), positions[b]) for b in blocks]
    )
    torch.testing.assert_close(stats.errors, full.errors, rtol=0, atol=1e-14)
    torch.testing.assert_close(gradient, full.gradient, rtol=1e-12, atol=1e-15)


def test_memory_budget_only_changes_the_chunking():
    z, y = clustered_features(40, 4, 3, seed=5)
    roomy = be.estimate(z, y, 3, sigma=0.3)
    tight = be.estimate(z, y, 3, sigma=0.3, memory_budget=2 * 40 * 8 * 3)  # 3 rows per chunk
    assert be.chunk_rows(40, torch.float64, 2 * 40 * 8 * 3) == 3
    torch.testing.assert_close(tight.errors, roomy.errors, rtol=0, atol=1e-14)
    torch.testing.assert_close(tight.gradient, roomy.gradient, rtol=1e-12, atol=1e-15)


def test_float32_agrees_with_float64():
    z, y = clustered_features(200, 16, 5, seed=6)
    exact = be.estimate(z, y, 5, sigma=0.3)
    single = be.estimate(z.float(), y, 5, sigma=0.3)
    assert single.value.dtype == torch.float32 and single.gradient.dtype == torch.float32
    assert single.value.item() == pytest.approx(exact.value.item(), abs=1e-5)
    torch.testing.assert_close(single.gradient.double(), exact.gradient, rtol=1e-3, atol=1e-5)


def test_well_separated_classes_have_zero_error():
    z, y = clustered_features(60, 4, 3, seed=7, spread=0.0)
    z = z * 100  # clusters far apart, each a single point: kernel mass only within the class
    z = z + 1e-3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0), dtype=z.dtype)
    result = be.estimate(z, y, 3, sigma=0.3)
    assert 0 <= result.value.item() < 1e-8  # only the 1e-8 added to every Z_i remains


def test_identical_features_give_the_value_from_class_counts():
    # Every kernel entry is 1: a sample of class c sees n_k partners of class k (n_c - 1 of its own).
    counts = [5, 3, 2]
    y = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    z = torch.zeros(len(y), 3, dtype=torch.float64)
    n = len(y)
    by_hand = 0.0
    for c, n_c in enumerate(counts):
        partners = [n_k - (k == c) for k, n_k in enumerate(counts)]
        by_hand += n_c * (1 - max(partners) / (n - 1 + 1e-8))
    by_hand /= n
    assert be.estimate(z, y, 3, sigma=0.3).value.item() == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx((5 * 5 / 9 + 3 * 4 / 9 + 2 * 4 / 9) / 10, rel=1e-6)  # = 0.5


def test_batch_estimator_is_the_exact_one_inside_each_batch():
    z, y = clustered_features(64, 5, 3, seed=8)
    result = be.estimate(z, y, 3, 0.3, estimator="batch", batch_size=16, generator=torch.Generator().manual_seed(1))
    batches = torch.randperm(64, generator=torch.Generator().manual_seed(1)).split(16)
    for batch in batches:
        inside = be.estimate(z[batch], y[batch], 3, 0.3)
        torch.testing.assert_close(result.errors[batch], inside.errors, rtol=0, atol=1e-14)
        # the batch gradient is that of the batch's estimator, rescaled to a mean over all N
        torch.testing.assert_close(result.gradient[batch], inside.gradient * 16 / 64, rtol=1e-12, atol=1e-16)


def test_reference_estimator_gradient_equals_autograd_with_fixed_partners():
    z, y = clustered_features(40, 5, 3, seed=9)
    reference = torch.randperm(40, generator=torch.Generator().manual_seed(2))[:15]
    result = be.estimate(
        z, y, 3, 0.3, estimator="reference", reference_size=15, generator=torch.Generator().manual_seed(2)
    )

    z_auto = z.clone().requires_grad_(True)
    bank = z[reference]  # constant partners
    kernel = torch.exp(-((z_auto.unsqueeze(1) - bank.unsqueeze(0)) ** 2).sum(-1) / (2 * 0.3**2))
    is_self = torch.arange(40).unsqueeze(1) == reference.unsqueeze(0)
    kernel = kernel.masked_fill(is_self, 0.0)
    mass = kernel @ torch.nn.functional.one_hot(y[reference], 3).double()
    predicted = mass.detach().argmax(1)
    errors = 1 - mass.gather(1, predicted.unsqueeze(1)).squeeze(1) / (kernel.sum(1) + 1e-8)
    errors.mean().backward()

    assert result.value.item() == pytest.approx(errors.mean().item(), rel=1e-12)
    torch.testing.assert_close(result.gradient, z_auto.grad, rtol=1e-10, atol=1e-14)


def test_normalise_features_scales_by_the_largest_magnitude():
    phi = torch.tensor([[1.0, -4.0], [2.0, 3.0]])
    z, scale = be.normalise_features(phi)
    assert scale == pytest.approx(4.0 + 1e-8)
    assert z.abs().max().item() == pytest.approx(1.0, abs=1e-7)


def test_bad_inputs_are_rejected():
    z, y = clustered_features(10, 3, 2, seed=0)
    with pytest.raises(InvalidInputError, match="unknown estimator"):
        be.estimate(z, y, 2, estimator="fancy")
    with pytest.raises(InvalidInputError, match="labels"):
        be.estimate(z, y[:5], 2)
    with pytest.raises(InvalidInputError, match="sigma"):
        be.estimate(z, y, 2, sigma=0.0)
    with pytest.raises(InvalidInputError, match="same D"):
        be.block_stats(z, z[:, :2], y, 2, 0.3)


def test_kernel_block_masks_only_the_self_pairs():
    z, _ = clustered_features(6, 3, 2, seed=0)
    kernel = be.kernel_block(z[2:5], z, 0.5, torch.tensor([2, 3, -1]))
    expected = torch.exp(-torch.cdist(z[2:5], z) ** 2 / (2 * 0.25))
    expected[0, 2] = 0
    expected[1, 3] = 0
    torch.testing.assert_close(kernel, expected, rtol=1e-10, atol=1e-12)
    assert math.isclose(kernel[2, 4].item(), 1.0, rel_tol=1e-12)  # row 4 is not masked in its own column

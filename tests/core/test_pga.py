"""The PGA engine: budget, update rules against torch.optim, projections, the integer release, invariants."""

import numpy as np
import pytest
import torch

from ue_core.checks import check_release
from ue_core.config import parse_fraction
from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError, ReleaseCheckError
from ue_core.pga import Budget, PGAConfig, PixelState, ascent_step, project, quantise_release


def random_images(n=6, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g), torch.Generator().manual_seed(seed + 1)


def test_adam_rule_matches_torch_adamw_maximize():
    images, g = random_images()
    budget = Budget(eps=0.999)  # never binds
    config = PGAConfig(update="adam", lr=1e-3, weight_decay=0.01)
    images = images * 0.2 + 0.4  # far from 0 and 1: the range clamp never binds either
    reference = torch.zeros_like(images, requires_grad=True)
    optimiser = torch.optim.AdamW([reference], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, maximize=True)
    state = PixelState.zeros(tuple(images.shape))
    for _ in range(5):
        gradient = torch.randn(images.shape, generator=g)
        reference.grad = gradient.clone()
        optimiser.step()
        state = ascent_step(state, gradient, images, budget, config)
    assert state.steps.tolist() == [5] * len(images)
    # δ goes through x + δ - x in float32 at every projection: a few ulps of x (~6e-8) per step
    torch.testing.assert_close(state.delta, reference.detach(), rtol=1e-5, atol=3e-7)
    assert reference.abs().max() > 4e-3  # the steps were real (about lr per step)


def test_adam_state_is_per_sample():
    """Updating rows separately (as shards do) equals updating them together."""
    images, g = random_images()
    config = PGAConfig(update="adam", lr=1e-2)
    together = PixelState.zeros(tuple(images.shape))
    apart = PixelState.zeros(tuple(images.shape))
    for _ in range(3):
        gradient = torch.randn(images.shape, generator=g)
        together = ascent_step(together, gradient, images, Budget(), config)
        for rows in (torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])):
            apart.put(rows, ascent_step(apart.take(rows), gradient[rows], images[rows], Budget(), config))
    torch.testing.assert_close(apart.delta, together.delta, rtol=0, atol=0)
    torch.testing.assert_close(apart.exp_avg_sq, together.exp_avg_sq, rtol=0, atol=0)


def test_sign_rule_steps_by_the_step_size_and_stays_in_the_ball():
    images, g = random_images()
    budget, config = Budget(eps=8 / 255), PGAConfig(update="sign")
    assert config.sign_step(budget) == pytest.approx(0.8 / 255)
    state = PixelState.zeros(tuple(images.shape))
    gradient = torch.randn(images.shape, generator=g)
    state = ascent_step(state, gradient, images, budget, config)
    expected = ((images + config.sign_step(budget) * gradient.sign()).clamp(0, 1) - images)
    torch.testing.assert_close(state.delta, expected)
    for _ in range(30):
        state = ascent_step(state, gradient, images, budget, config)
    assert state.delta.abs().max() <= 8 / 255 + 1e-7
    assert (images + state.delta).min() >= 0 and (images + state.delta).max() <= 1


def test_l2_projection_and_normalised_step():
    images, g = random_images()
    budget, config = Budget(eps=0.5, norm="l2"), PGAConfig(update="sign", step_size=0.3)
    state = PixelState.zeros(tuple(images.shape))
    for _ in range(4):
        state = ascent_step(state, torch.randn(images.shape, generator=g), images * 0.5 + 0.25, budget, config)
    norms = state.delta.flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.5 + 1e-5) and torch.all(norms > 0.45)


def test_project_clamps_into_the_image_range():
    x = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 3, 1, 1)
    delta = torch.tensor([-0.1, 0.2, 0.1]).reshape(1, 3, 1, 1)
    projected = project(delta, x, Budget(eps=0.05))
    assert projected.flatten().tolist() == pytest.approx([0.0, 0.05, 0.0], abs=1e-7)


def test_quantised_release_is_within_the_integer_budget():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (20, 6, 6, 3), generator=g).to(torch.uint8).numpy()
    delta = (torch.rand(20, 3, 6, 6, generator=g) * 2 - 1) * (8.6 / 255)  # overshoots the budget
    release = quantise_release(clean, delta, Budget(eps=8 / 255), np.arange(20))
    difference = release.astype(int) - clean.astype(int)
    assert release.dtype == np.uint8
    assert np.abs(difference).max() == 8
    # where no clamp binds, q is the nearest level to 255 (x + δ)
    exact = clean.astype(float) + 255 * delta.permute(0, 2, 3, 1).double().numpy()
    free = (np.abs(exact - clean) <= 8) & (exact >= 0) & (exact <= 255)
    assert np.array_equal(release[free], np.round(exact[free]).astype(np.uint8))


def test_quantised_l2_release_is_within_the_integer_budget():
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 256, (10, 5, 5, 1), generator=g).to(torch.uint8).numpy()
    delta = torch.randn(10, 1, 5, 5, generator=g)
    delta = delta / delta.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1) * 0.2
    release = quantise_release(clean, delta, Budget(eps=0.2, norm="l2"), np.arange(10))
    norms = np.sqrt(((release.astype(float) - clean) ** 2).reshape(10, -1).sum(1))
    assert np.all(norms <= 255 * 0.2 + 1e-9)
    assert np.all(norms > 255 * 0.2 - 4)  # still close to the budget: only rounding was lost


def test_nan_perturbation_names_the_samples():
    clean = np.zeros((4, 2, 2, 1), np.uint8)
    delta = torch.zeros(4, 1, 2, 2)
    delta[2, 0, 1, 1] = float("nan")
    with pytest.raises(ReleaseCheckError, match=r"NaN or Inf at 1 samples, indices \[12\]"):
        quantise_release(clean, delta, Budget(), np.array([10, 11, 12, 13]))


@pytest.mark.parametrize("eps", [0, -0.1, 1, 1.5, "0/0", "abc"])
def test_eps_outside_the_open_unit_interval_is_rejected(eps):
    with pytest.raises(InvalidInputError, match="eps|cannot read"):
        Budget(eps=eps)


def test_fractions_are_parsed():
    assert parse_fraction("8/255") == pytest.approx(8 / 255)
    assert Budget(eps="16/255").integer_budget == 16


def make_pair():
    g = np.random.default_rng(0)
    clean = ImageDataset(g.integers(0, 256, (8, 4, 4, 3), dtype=np.uint8), g.integers(0, 3, 8), 3,
                         index=np.arange(100, 108))
    shift = np.clip(clean.images.astype(int) + g.integers(-8, 9, clean.images.shape), 0, 255).astype(np.uint8)
    return clean, clean.with_images(shift)


def test_check_release_accepts_a_valid_release_in_any_row_order():
    clean, release = make_pair()
    check_release(clean, release.subset(np.arange(8)[::-1]), Budget(eps=8 / 255))


def test_check_release_names_the_samples_over_budget():
    clean, release = make_pair()
    images = release.images.copy()
    images[3] = np.clip(clean.images[3].astype(int) + 9, 0, 255).astype(np.uint8)
    images[3, 0, 0, 0] = clean.images[3, 0, 0, 0] + 9 if clean.images[3, 0, 0, 0] < 240 else clean.images[3, 0, 0, 0] - 9
    with pytest.raises(ReleaseCheckError, match=r"budget of 8 levels at 1 samples: indices \[103\]"):
        check_release(clean, release.with_images(images), Budget(eps=8 / 255))


def test_check_release_names_missing_and_relabelled_samples():
    clean, release = make_pair()
    with pytest.raises(ReleaseCheckError, match=r"missing source samples at 2 samples: indices \[100, 101\]"):
        check_release(clean, release.subset(np.arange(2, 8)), Budget())
    relabelled = ImageDataset(release.images, (release.labels + 1) % 3, 3, index=release.index)
    with pytest.raises(ReleaseCheckError, match="changes labels at 8 samples"):
        check_release(clean, relabelled, Budget())
    moved = ImageDataset(release.images, release.labels, 3, index=release.index + 1)
    with pytest.raises(ReleaseCheckError, match=r"missing source samples at 1 samples: indices \[100\]"):
        check_release(clean, moved, Budget())


def test_nan_or_out_of_range_images_and_nan_gradients_are_rejected():
    images, g = random_images(n=4)
    state = PixelState.zeros(tuple(images.shape))
    gradient = torch.randn(images.shape, generator=g)
    bad = images.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match=r"images has NaN or Inf at 1 rows, e.g. rows \[1\]"):
        ascent_step(state, gradient, bad, Budget(), PGAConfig())
    with pytest.raises(InvalidInputError, match=r"images must be in \[0, 1\]"):
        ascent_step(state, gradient, images * 2, Budget(), PGAConfig())
    gradient[3, 1, 2, 2] = float("inf")
    with pytest.raises(ReleaseCheckError, match=r"pixel gradient has NaN or Inf at 1 rows, e.g. rows \[3\]"):
        ascent_step(state, gradient, images, Budget(), PGAConfig())

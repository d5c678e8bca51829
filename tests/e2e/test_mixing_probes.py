"""bench/mixing_probes.py: the class pattern against a hand computation; gradient alignment descends its
objective within the budget."""

import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from mixing_probes import BEOFromClassPattern, ClasswiseBEO, class_mean, class_pattern, gradient_alignment

from pipelines.config import load_protect_config
from ue_core.data.dataset import ImageDataset
from ue_core.methods.beo import BEO
from ue_core.pga import Budget


def test_class_pattern_is_the_signed_step_towards_the_next_class_mean():
    images = torch.tensor([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.5, 0.5], [0.5, 0.7]]).reshape(5, 1, 1, 2)
    labels = torch.tensor([0, 0, 1, 2, 2])
    # class means: 0 → (0.3, 0.7), 1 → (0.9, 0.1), 2 → (0.5, 0.6); the next class's mean minus one's own
    expected = 0.1 * torch.tensor([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0], [-1.0, 1.0]])
    assert torch.equal(class_pattern(images, labels, 3, 0.1), expected.reshape(5, 1, 1, 2))


def test_gradient_alignment_opposes_the_gradients_within_the_budget():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = (0.8 * torch.rand(60, 1, 28, 28, generator=generator) + 0.1 * labels.view(-1, 1, 1, 1)).clamp(0, 1)
    eps = 16 / 255
    delta, trace = gradient_alignment(images, labels, 3, eps, steps=10, step_size=2 / 255, epochs=2,
                                      checkpoints="last", batch_size=60)
    # one batch of every image: at δ = 0 the poison gradient is the clean gradient (A = 2), then A falls
    assert abs(trace[0] - 2) < 1e-3 and all(b < a for a, b in itertools.pairwise(trace)), trace
    assert delta.abs().max() <= eps + 1e-6 and delta.abs().max() > eps / 2
    assert ((images + delta) >= 0).all() and ((images + delta) <= 1).all()


def test_beo_from_the_class_pattern_starts_there_and_takes_one_signed_step_per_round():
    """One round of one sign step of 2/255 from the class pattern: δ moves at most one step from the
    (clipped) pattern, stays in the budget and in [0, 1], and is not the run from δ = 0."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = (0.8 * torch.rand(60, 1, 28, 28, generator=generator) + 0.1 * labels.view(-1, 1, 1, 1)).clamp(0, 1)
    dataset = ImageDataset(images=(images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(),
                           labels=labels.numpy(), num_classes=3)
    x, y = dataset.tensors()
    config = load_protect_config("fashion-mnist-strong", overrides={"beo.rounds": 1, "beo.augment.views": 1,
                                                                    "beo.surrogate.epochs": 1}).beo
    budget = Budget(eps=16 / 255)
    start = (x + class_pattern(x, y, 3, budget.eps)).clamp(0, 1) - x
    delta = BEOFromClassPattern(budget, config).perturb(dataset).delta
    from_zero = BEO(budget, config).perturb(dataset).delta
    step = config.pga.step_size
    assert (delta - start).abs().max() <= step + 1e-6 and (delta - start).abs().max() > step / 2
    assert delta.abs().max() <= budget.eps + 1e-6 and ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    assert from_zero.abs().max() <= step + 1e-6  # from δ = 0 the same step cannot reach the pattern


def test_class_mean_replaces_each_row_by_its_class_mean():
    values = torch.arange(12.0).reshape(4, 1, 3)
    labels = torch.tensor([1, 0, 1, 1])
    expected = torch.stack([values[[0, 2, 3]].mean(0), values[1], values[[0, 2, 3]].mean(0), values[[0, 2, 3]].mean(0)])
    torch.testing.assert_close(class_mean(values, labels), expected)


def test_classwise_beo_moves_every_image_of_a_class_the_same_way():
    """Images inside (0, 1) by more than a step: one sign step of the class-mean gradient is one δ per class."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = 0.1 + 0.8 * torch.rand(60, 1, 28, 28, generator=generator)
    dataset = ImageDataset(images=(images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(),
                           labels=labels.numpy(), num_classes=3)
    config = load_protect_config("fashion-mnist-strong", overrides={"beo.rounds": 1, "beo.augment.views": 1,
                                                                    "beo.surrogate.epochs": 1}).beo
    budget = Budget(eps=16 / 255)
    delta = ClasswiseBEO(budget, config).perturb(dataset).delta
    for c in range(3):
        rows = delta[labels == c]
        # up to the rounding of the projection (x + δ) − x
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), rtol=0, atol=1e-6)
        torch.testing.assert_close(rows.abs(), torch.full_like(rows, config.pga.step_size), rtol=0, atol=1e-6)
    assert not torch.equal(delta, BEO(budget, config).perturb(dataset).delta)

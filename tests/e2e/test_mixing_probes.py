"""bench/mixing_probes.py: the class pattern against a hand computation; gradient alignment descends its
objective within the budget."""

import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from mixing_probes import class_pattern, gradient_alignment


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

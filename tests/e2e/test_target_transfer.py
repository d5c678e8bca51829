"""bench/target_transfer.py: the target classes it attacks towards, against a hand computation."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from target_transfer import target_classes  # noqa: E402


def test_targets_are_the_shift_the_runner_up_and_the_most_confused_class():
    logits = torch.tensor([[5.0, 4.0, 1.0], [0.0, 9.0, 3.0], [2.0, 7.0, 8.0], [1.0, 6.0, 0.5], [6.0, 0.0, 5.0]])
    labels = torch.tensor([0, 1, 2, 0, 0])
    assert target_classes(logits, labels, "shift").tolist() == [1, 2, 0, 1, 1]
    # runner-up: the largest logit that is not the label's
    assert target_classes(logits, labels, "runner-up").tolist() == [1, 2, 1, 1, 2]
    # class 0's runner-ups are {1, 1, 2} → 1; class 1's {2} → 2; class 2's {1} → 1
    assert target_classes(logits, labels, "class-map").tolist() == [1, 2, 1, 1, 1]

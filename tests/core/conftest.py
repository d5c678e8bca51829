"""Fixtures shared by the method tests."""

import numpy as np
import pytest

from ue_core.data import read_dataset
from ue_core.data.dataset import ImageDataset


@pytest.fixture(scope="module")
def datasets(fashion_mnist_root):
    """100 real Fashion-MNIST images (10 classes, 1×28×28) and 30 random RGB 6×6 images (3 classes): the
    model-free baselines' tests run on both."""
    fashion = read_dataset(str(fashion_mnist_root), split="train").subset(np.arange(100))
    rng = np.random.default_rng(0)
    rgb = ImageDataset(images=rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8),
                       labels=np.arange(30) % 3, num_classes=3)
    return [fashion, rgb]

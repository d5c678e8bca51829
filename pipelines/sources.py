"""The training and test sets a protect job reads from its source (local folder or s3://), as its config says."""

from __future__ import annotations

from pipelines.config import ProtectConfig
from ue_core.data import read_dataset
from ue_core.data.dataset import ImageDataset, balanced_subset
from ue_core.errors import DatasetFormatError


def load_training_set(source: str, config: ProtectConfig) -> ImageDataset:
    """The training images to protect, subset applied."""
    train = read_dataset(source, split="train", layout=config.data.layout)
    if config.data.subset is not None:
        train = balanced_subset(train, min(config.data.subset, len(train)), seed=config.data.seed)
    return train


def load_test_set(source: str, config: ProtectConfig) -> ImageDataset | None:
    """Clean test images for the surrogate's test accuracy (None when not asked for or not present)."""
    if config.data.test_subset == 0:
        return None
    try:
        test = read_dataset(source, split="test", layout=config.data.layout)
    except DatasetFormatError:
        return None  # a source without a test split: no test accuracy is reported
    if config.data.test_subset is not None:
        test = balanced_subset(test, min(config.data.test_subset, len(test)), seed=config.data.seed)
    return test

"""Small synthetic datasets for the data tests."""

import numpy as np
import pytest

from ue_core.data import ImageDataset


def make_dataset(n=12, shape=(8, 8, 3), num_classes=4, seed=0, index=None, name="synthetic"):
    """Random uint8 images (n, *shape), labels covering every class, index 0..n-1 unless given."""
    rng = np.random.default_rng(seed)
    return ImageDataset(
        images=rng.integers(0, 256, size=(n, *shape), dtype=np.uint8),
        labels=np.arange(n) % num_classes,
        index=index,
        num_classes=num_classes,
        class_names=tuple(f"class-{c}" for c in range(num_classes)),
        name=name,
    )


def assert_same_rows(actual: ImageDataset, expected: ImageDataset) -> None:
    """Same index set, and per index the same pixels and label (row order may differ)."""
    a, e = actual.sorted_by_index(), expected.sorted_by_index()
    np.testing.assert_array_equal(a.index, e.index)
    np.testing.assert_array_equal(a.labels, e.labels)
    np.testing.assert_array_equal(a.images, e.images)
    assert a.images.dtype == np.uint8 and a.labels.dtype == np.int64 and a.index.dtype == np.int64


@pytest.fixture
def dataset_factory():
    return make_dataset


@pytest.fixture
def same_rows():
    return assert_same_rows

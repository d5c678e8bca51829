"""Datasets: readers for every supported layout, writers of the release formats, and the mixing protocol.

Every reader returns an :class:`ImageDataset` (uint8 images (N, H, W, C), int64 labels and index) and takes
a local path or any fsspec URI; every writer refuses to replace an existing output unless told to, and
leaves nothing behind when it fails.
"""

from ue_core.data.cifar import read_cifar, write_cifar_batches
from ue_core.data.dataset import ImageDataset, images_to_uint8
from ue_core.data.delta import write_delta
from ue_core.data.fetch import fetch_fashion_mnist
from ue_core.data.folder import read_class_folder, read_png_folder, write_image_folder, write_png_folder
from ue_core.data.idx import read_idx, write_idx
from ue_core.data.mixing import (
    MODES,
    IndexSet,
    build_training_set,
    load_index_set,
    protected_mask,
    save_index_set,
)
from ue_core.data.readers import LAYOUT_NAMES, read_dataset
from ue_core.data.shards import read_shards, read_shards_with_extra, write_shards
from ue_core.data.tiny_imagenet import read_tiny_imagenet

__all__ = [
    "LAYOUT_NAMES",
    "MODES",
    "ImageDataset",
    "IndexSet",
    "ReleasedCIFAR10",
    "ReleasedCIFAR100",
    "build_training_set",
    "fetch_fashion_mnist",
    "images_to_uint8",
    "load_index_set",
    "protected_mask",
    "read_cifar",
    "read_class_folder",
    "read_dataset",
    "read_idx",
    "read_png_folder",
    "read_shards",
    "read_shards_with_extra",
    "read_tiny_imagenet",
    "save_index_set",
    "write_cifar_batches",
    "write_delta",
    "write_idx",
    "write_image_folder",
    "write_png_folder",
    "write_shards",
]


def __getattr__(name: str) -> object:
    """ReleasedCIFAR10 / ReleasedCIFAR100 on first use: they subclass torchvision's datasets, and importing
    torchvision costs every process that only reads or writes data ~1.5 s."""
    if name in ("ReleasedCIFAR10", "ReleasedCIFAR100"):
        from ue_core.data import released_cifar

        return getattr(released_cifar, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

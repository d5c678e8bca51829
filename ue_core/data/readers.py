"""One entry point for every dataset layout: :func:`read_dataset`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from fsspec import AbstractFileSystem

from ue_core.data.cifar import find_cifar_dir, read_cifar
from ue_core.data.dataset import ImageDataset
from ue_core.data.folder import is_class_folder, is_png_folder, read_class_folder, read_png_folder
from ue_core.data.fsutil import contained, filesystem, join
from ue_core.data.idx import find_idx_dir, read_idx
from ue_core.data.shards import is_shard_set, read_shards
from ue_core.data.tiny_imagenet import is_tiny_imagenet, read_tiny_imagenet
from ue_core.errors import DatasetFormatError, InvalidInputError


@dataclass(frozen=True)
class Layout:
    """A dataset layout: how to recognise it at a path and how to read one split of it."""

    name: str
    hint: str  # what the layout looks like, for error messages
    detect: Callable[[AbstractFileSystem, str], bool]
    read: Callable[[str, str], ImageDataset]  # (source URI, split) -> dataset


def is_release(fs: AbstractFileSystem, path: str) -> bool:
    """A published release (ue_core.release): manifest.json beside a parquet/ folder of shards."""
    return fs.isfile(join(path, "manifest.json")) and is_shard_set(fs, join(path, "parquet"))


def read_release_shards(uri: str) -> ImageDataset:
    """The images of the release at ``uri`` (its ``parquet/`` shards, which must stay inside it)."""
    fs, path = filesystem(uri)
    contained(fs, path, "parquet", "folder")
    return read_shards(join(uri, "parquet"))


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "release", "manifest.json + parquet/", is_release, lambda uri, split: read_release_shards(uri)
    ),
    Layout("parquet", "*.parquet shards", is_shard_set, lambda uri, split: read_shards(uri)),
    Layout(
        "cifar10",
        "cifar-10-batches-py/",
        lambda fs, path: find_cifar_dir(fs, path, "cifar10") is not None,
        lambda uri, split: read_cifar(uri, split, "cifar10"),
    ),
    Layout(
        "cifar100",
        "cifar-100-python/",
        lambda fs, path: find_cifar_dir(fs, path, "cifar100") is not None,
        lambda uri, split: read_cifar(uri, split, "cifar100"),
    ),
    Layout(
        "idx", "train-images-idx3-ubyte[.gz] etc.", lambda fs, p: find_idx_dir(fs, p) is not None, read_idx
    ),
    Layout("tiny-imagenet", "wnids.txt + train/ + val/", is_tiny_imagenet, read_tiny_imagenet),
    Layout("png-labels", "labels.csv + images/", is_png_folder, lambda uri, split: read_png_folder(uri)),
    Layout(
        "class-folder", "<class>/<image files>", is_class_folder, lambda uri, split: read_class_folder(uri)
    ),
)
LAYOUT_NAMES: tuple[str, ...] = tuple(layout.name for layout in LAYOUTS)
LAYOUT_ALIASES = {"fashion-mnist": "idx", "mnist": "idx"}


def read_dataset(source: str | os.PathLike, split: str = "train", layout: str = "auto") -> ImageDataset:
    """Read one split of the dataset at ``source`` (a local path or any fsspec URI).

    Args:
        source: where the dataset is.
        split: "train" or "test" ("val" for Tiny ImageNet, which also takes "test" for it). Layouts that
            hold several splits (CIFAR, idx, Tiny ImageNet) pick it themselves. Layouts that hold one set
            (parquet, png-labels, class-folder) read ``source`` itself when it is such a set, else
            ``source/<split>``.
        layout: "auto" to recognise the layout, or one of :data:`LAYOUT_NAMES` (or "fashion-mnist" /
            "mnist", aliases of "idx").

    Returns:
        The dataset; images uint8 (N, H, W, C).
    """
    source = os.fspath(source)
    layout = LAYOUT_ALIASES.get(layout, layout)
    if layout != "auto" and layout not in LAYOUT_NAMES:
        raise InvalidInputError(
            f"unknown dataset layout {layout!r} for {source}; "
            f"expected auto or one of {', '.join(LAYOUT_NAMES)}"
        )
    fs, path = filesystem(source)
    if not fs.exists(path):
        raise DatasetFormatError(f"no such file or directory: {source}")
    candidates = [layout_ for layout_ in LAYOUTS if layout in ("auto", layout_.name)]
    for uri, fs_path in ((source, path), (join(source, split), join(path, split))):
        for candidate in candidates:
            if candidate.detect(fs, fs_path):
                return candidate.read(uri, split)
    if layout != "auto":
        return candidates[0].read(source, split)  # the reader says what is missing
    expected = "; ".join(f"{layout_.name} ({layout_.hint})" for layout_ in LAYOUTS)
    raise DatasetFormatError(f"cannot recognise the dataset layout at {source}; expected one of: {expected}")

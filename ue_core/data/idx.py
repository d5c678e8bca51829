"""MNIST / Fashion-MNIST idx files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, raw or ``.gz``.

An idx file is big-endian: a magic number (0x0803 for a uint8 3-d array, 0x0801 for a uint8 1-d array),
then one uint32 per dimension, then the uint8 values. Images are N×rows×cols grayscale pixels, read as
uint8 (N, rows, cols, 1). Rows get ``index`` 0..N-1 in file order.

The files are found in the given directory itself or in torchvision's layouts ``ROOT/FashionMNIST/raw`` and
``ROOT/MNIST/raw``; when both a raw and a ``.gz`` copy exist, the raw one is read. A file (or torchvision
folder) that is a symlink out of the given directory is refused (ue_core.data.fsutil.contained).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np
from fsspec import AbstractFileSystem

from ue_core.data.atomic import staged_directory
from ue_core.data.dataset import ImageDataset, sorted_with_dense_index
from ue_core.data.fsutil import contained_listing, filesystem, first_line, join, read_bytes
from ue_core.errors import DatasetFormatError, InvalidInputError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
SPLIT_PREFIXES = {"train": "train", "test": "t10k"}
TORCHVISION_FOLDERS = ("FashionMNIST/raw", "MNIST/raw")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))


def idx_file_names(split: str) -> tuple[str, str]:
    """The (images, labels) file names of a split, without ``.gz``."""
    prefix = SPLIT_PREFIXES[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_idx_dir(fs: AbstractFileSystem, path: str) -> str | None:
    """The directory holding idx files: ``path`` itself or one of torchvision's raw folders; else None."""
    for candidate in (path, *(join(path, folder) for folder in TORCHVISION_FOLDERS)):
        if any(_existing(fs, candidate, name) for split in SPLIT_PREFIXES for name in idx_file_names(split)):
            return candidate
    return None


def read_idx(source: str | os.PathLike, split: str = "train") -> ImageDataset:
    """Read one split ("train" or "test") of an MNIST-style idx dataset.

    Returns images uint8 (N, rows, cols, 1), labels int64 (N,), index 0..N-1. The name and class names are
    Fashion-MNIST's when the path mentions "fashion" (any case), MNIST's digits when it mentions "mnist",
    and "idx" with numbered classes otherwise.
    """
    source = os.fspath(source)
    if split not in SPLIT_PREFIXES:
        raise InvalidInputError(f"idx split must be 'train' or 'test', got {split!r} for {source}")
    fs, path = filesystem(source)
    directory = find_idx_dir(fs, path)
    if directory is None:
        raise DatasetFormatError(f"no idx files (train-images-idx3-ubyte[.gz], ...) found at {source}")
    images_name, labels_name = idx_file_names(split)
    required = [_require(fs, directory, name) for name in (images_name, labels_name)]
    images_path, labels_path = contained_listing(fs, path, required)
    images = _read_idx_array(fs, images_path, IMAGES_MAGIC, ndim=3)
    labels = _read_idx_array(fs, labels_path, LABELS_MAGIC, ndim=1)
    if len(images) != len(labels):
        raise DatasetFormatError(
            f"{len(images)} images in {images_path} but {len(labels)} labels in {labels_path}"
        )
    name, class_names = _naming(directory, labels, labels_path)
    return ImageDataset(
        images=images[..., None],
        labels=labels.astype(np.int64),
        num_classes=len(class_names),
        class_names=class_names,
        name=name,
    )


def _naming(directory: str, labels: np.ndarray, labels_path: str) -> tuple[str, tuple[str, ...]]:
    """Dataset name and class names guessed from the directory name (see :func:`read_idx`)."""
    lowered = directory.lower()
    if "fashion" in lowered:
        name, class_names = "fashion-mnist", FASHION_MNIST_CLASSES
    elif "mnist" in lowered:
        name, class_names = "mnist", MNIST_CLASSES
    else:
        num_classes = int(labels.max()) + 1 if labels.size else 1
        name, class_names = "idx", tuple(str(c) for c in range(num_classes))
    if labels.size and labels.max() >= len(class_names):
        raise DatasetFormatError(f"labels exceed the {len(class_names)} {name} classes: {labels_path}")
    return name, class_names


def _existing(fs: AbstractFileSystem, directory: str, name: str) -> str | None:
    """The raw file if present, else the ``.gz`` one, else None."""
    for candidate in (join(directory, name), join(directory, f"{name}.gz")):
        if fs.isfile(candidate):
            return candidate
    return None


def _require(fs: AbstractFileSystem, directory: str, name: str) -> str:
    path = _existing(fs, directory, name)
    if path is None:
        raise DatasetFormatError(f"missing idx file {join(directory, name)}[.gz]")
    return path


def _read_idx_array(fs: AbstractFileSystem, path: str, magic: int, ndim: int) -> np.ndarray:
    """The uint8 array of one idx file, after checking its magic number and its length."""
    data = read_bytes(fs, path)
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise DatasetFormatError(f"corrupt gzip file {path}: {first_line(error)}") from error
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetFormatError(f"truncated idx file (no complete header): {path}")
    (found_magic,) = struct.unpack(">I", data[:4])
    if found_magic != magic:
        raise DatasetFormatError(
            f"wrong idx magic number 0x{found_magic:08x} (expected 0x{magic:08x}): {path}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = int(np.prod(shape))
    if len(data) - header_size != expected:
        raise DatasetFormatError(
            f"idx file holds {len(data) - header_size} values, its header {shape} says {expected}: {path}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def write_idx(
    train: ImageDataset,
    root: str | os.PathLike,
    test: ImageDataset | None = None,
    compress: bool = True,
    overwrite: bool = False,
) -> str:
    """Write idx files for ``train`` (and ``test``) into the directory ``root``, gzipped if ``compress``.

    Images must be uint8 (N, H, W, 1) and labels < 256. The format has no index column, so each set is
    written in index order and its index must be 0..N-1. For torchvision's ``FashionMNIST(ROOT)`` pass
    ``root=ROOT/FashionMNIST/raw`` and ``compress=False``. Returns ``root``.
    """
    root = os.fspath(root)
    splits = {"train": train} if test is None else {"train": train, "test": test}
    checked = {split: _checked_for_idx(dataset, split) for split, dataset in splits.items()}
    suffix = ".gz" if compress else ""
    with staged_directory(root, overwrite) as (fs, staging):
        for split, dataset in checked.items():
            images_name, labels_name = idx_file_names(split)
            images = dataset.images[..., 0]
            _write_idx_array(fs, join(staging, images_name + suffix), IMAGES_MAGIC, images, compress)
            labels = dataset.labels.astype(np.uint8)
            _write_idx_array(fs, join(staging, labels_name + suffix), LABELS_MAGIC, labels, compress)
    return root


def _checked_for_idx(dataset: ImageDataset, split: str) -> ImageDataset:
    """The dataset sorted by index, after checking it fits the idx format."""
    if dataset.image_shape[2] != 1:
        raise InvalidInputError(
            f"{dataset.name} ({split}): idx files hold 1-channel images, got {dataset.image_shape}"
        )
    if dataset.labels.size and dataset.labels.max() > 255:
        raise InvalidInputError(
            f"{dataset.name} ({split}): idx labels are uint8, got label {dataset.labels.max()}"
        )
    return sorted_with_dense_index(dataset, split, "idx files have no index column")


def _write_idx_array(
    fs: AbstractFileSystem, path: str, magic: int, values: np.ndarray, compress: bool
) -> None:
    """One idx file: magic, big-endian uint32 dimensions, then the uint8 values in C order."""
    content = struct.pack(f">I{values.ndim}I", magic, *values.shape) + np.ascontiguousarray(values).tobytes()
    with fs.open(path, "wb") as f:
        f.write(gzip.compress(content, mtime=0) if compress else content)

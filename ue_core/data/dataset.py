"""The in-memory image dataset every reader returns and every writer takes.

Pixels are kept as uint8 in H×W×C order (what the files hold); models see float tensors in N×C×H×W
order in [0, 1] through :meth:`ImageDataset.tensors`. ``index`` is the join key everywhere: it is stable
across the whole pipeline, and no code relies on row order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from ue_core.errors import InvalidInputError


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image set.

    Attributes:
        images: uint8 array (N, H, W, C).
        labels: int64 array (N,), each in [0, num_classes).
        index: int64 array (N,), unique; defaults to 0..N-1.
        num_classes: number of classes (may exceed max(labels) + 1, e.g. for a subset).
        class_names: one name per class (defaults to "0", "1", ...).
        name: a short dataset name, e.g. "fashion-mnist" or "cifar10".
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    index: np.ndarray = None  # type: ignore[assignment]
    class_names: tuple[str, ...] = field(default=())
    name: str = "dataset"

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise InvalidInputError(
                f"{self.name}: images must be a uint8 array of shape (N, H, W, C), got "
                f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
            )
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise InvalidInputError(
                f"{self.name}: labels must be an integer array of shape ({len(images)},), got "
                f"{labels.dtype} {labels.shape}"
            )
        if self.num_classes < 1:
            raise InvalidInputError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
        if bad.size:
            raise InvalidInputError(
                f"{self.name}: {bad.size} labels out of range [0, {self.num_classes}), "
                f"e.g. label {labels[bad[0]]} at row {bad[0]}"
            )
        index = np.arange(len(images), dtype=np.int64) if self.index is None else np.asarray(self.index)
        if index.shape != labels.shape or not np.issubdtype(index.dtype, np.integer):
            raise InvalidInputError(f"{self.name}: index must be an integer array of shape ({len(images)},)")
        if len(np.unique(index)) != len(index):
            raise InvalidInputError(f"{self.name}: index values must be unique")
        class_names = tuple(self.class_names) or tuple(str(c) for c in range(self.num_classes))
        if len(class_names) != self.num_classes:
            raise InvalidInputError(
                f"{self.name}: {len(class_names)} class names for {self.num_classes} classes"
            )
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "index", index.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", class_names)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as float32 (N, C, H, W) in [0, 1] and labels as int64 (N,)."""
        x = torch.from_numpy(self.images).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(), torch.from_numpy(self.labels)

    def subset(self, rows: np.ndarray) -> ImageDataset:
        """The rows at positions ``rows`` (an int array or boolean mask), keeping their indices."""
        return ImageDataset(
            images=self.images[rows],
            labels=self.labels[rows],
            index=self.index[rows],
            num_classes=self.num_classes,
            class_names=self.class_names,
            name=self.name,
        )

    def with_images(self, images: np.ndarray) -> ImageDataset:
        """The same indices and labels with other pixels (e.g. a protected release)."""
        return ImageDataset(
            images=images,
            labels=self.labels,
            index=self.index,
            num_classes=self.num_classes,
            class_names=self.class_names,
            name=self.name,
        )

    def sorted_by_index(self) -> ImageDataset:
        """The rows ordered by index."""
        return self.subset(np.argsort(self.index, kind="stable"))

    def digest(self) -> str:
        """A content digest (16 hex digits of a sha256) of the indices, labels and pixels, row order aside:
        the same images under the same indices give the same digest, whichever file or order they came from
        (MLflow's dataset inputs carry it, pipelines/tracking.py)."""
        order = np.argsort(self.index, kind="stable")
        # a block at a time: never a second copy of every image
        blocks = (self.images[order[start:start + 4096]] for start in range(0, len(order), 4096))
        return digest_of(self.image_shape, self.num_classes, self.index[order], self.labels[order], blocks)


def digest_of(image_shape: tuple[int, int, int], num_classes: int, index: np.ndarray, labels: np.ndarray,
              image_blocks: Iterable[np.ndarray]) -> str:
    """:meth:`ImageDataset.digest` of a set given as its index and labels (int64 (N,), in index order) and
    its images as consecutive blocks in the same order (uint8 (n, H, W, C) each), so that a set too large
    for memory is digested block by block."""
    digest = hashlib.sha256(repr((tuple(image_shape), num_classes)).encode())
    digest.update(np.asarray(index, np.int64).tobytes())
    digest.update(np.asarray(labels, np.int64).tobytes())
    for block in image_blocks:
        digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()[:16]


def images_to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] → uint8 (N, H, W, C), rounding to the nearest level."""
    q = torch.round(x.detach().clamp(0, 1) * 255.0).to(torch.uint8)
    return q.permute(0, 2, 3, 1).contiguous().numpy()


def sorted_with_dense_index(dataset: ImageDataset, split: str, format_has_no_index: str) -> ImageDataset:
    """``dataset`` sorted by index, for formats that store rows in order: the index must be 0..N-1.

    ``format_has_no_index`` completes the error message, e.g. "the CIFAR format has no index column".
    """
    ordered = dataset.sorted_by_index()
    if not np.array_equal(ordered.index, np.arange(len(ordered))):
        raise InvalidInputError(f"{dataset.name} ({split}): {format_has_no_index}, so the index must be 0..N-1")
    return ordered


def balanced_subset(dataset: ImageDataset, size: int, seed: int = 0) -> ImageDataset:
    """A seeded random subset of ``size`` rows with the classes as equally represented as possible.

    Rows are drawn class by class (floor(size / C) each, the remainder from the first classes that
    have rows left); the result keeps the source's indices, sorted by index.
    """
    if not 0 < size <= len(dataset):
        raise InvalidInputError(f"{dataset.name}: subset size must be in [1, {len(dataset)}], got {size}")
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(dataset.labels == c)) for c in range(dataset.num_classes)]
    quota = np.array([min(len(rows), size // dataset.num_classes) for rows in by_class])
    for c in np.argsort(-np.array([len(rows) for rows in by_class]), kind="stable"):
        extra = min(size - quota.sum(), len(by_class[c]) - quota[c])
        quota[c] += max(0, extra)
    chosen = np.concatenate([rows[:q] for rows, q in zip(by_class, quota)])
    return dataset.subset(chosen).sorted_by_index()

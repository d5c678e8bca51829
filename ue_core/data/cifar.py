"""CIFAR-10 / CIFAR-100 in the original "python version" layout, which torchvision also uses.

CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1`` … ``data_batch_5``, ``test_batch`` and
``batches.meta`` (key ``label_names``). CIFAR-100: ``cifar-100-python/`` with ``train``, ``test`` and
``meta`` (key ``fine_label_names``; labels under ``fine_labels``). Each batch is a pickled dict holding
``data``, a uint8 array (n, 3072) of 32×32 images stored channel-first (1024 R, 1024 G, 1024 B values),
and a list of n labels.

The files are pickles, so they are read with a restricted unpickler that can only build the numpy arrays
the format needs: a file that asks for anything else (``os.system``, ``builtins.eval``, …) is rejected
before any of it runs. Rows get ``index`` 0..n-1 in file order (batch 1 first).
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from fsspec import AbstractFileSystem

from ue_core.data.atomic import staged_directory
from ue_core.data.dataset import ImageDataset, sorted_with_dense_index
from ue_core.data.fsutil import contained_listing, filesystem, first_line, join, read_bytes
from ue_core.errors import DatasetFormatError, InvalidInputError

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

CifarVariant = Literal["cifar10", "cifar100"]
CIFAR_IMAGE_SHAPE = (32, 32, 3)
CIFAR10_TRAIN_BATCHES = 5


@dataclass(frozen=True)
class _Layout:
    """File names and dict keys of one CIFAR variant."""

    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    names_key: str
    labels_key: str


LAYOUTS: dict[str, _Layout] = {
    "cifar10": _Layout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, CIFAR10_TRAIN_BATCHES + 1)),
        "test_batch",
        "batches.meta",
        "label_names",
        "labels",
    ),
    "cifar100": _Layout("cifar-100-python", ("train",), "test", "meta", "fine_label_names", "fine_labels"),
}

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR batch needs (numpy arrays and dtypes)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def load_pickle_safely(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    """The dict pickled in ``path``, with bytes keys decoded as latin-1.

    Raises DatasetFormatError naming the file if it is truncated, not a pickle, not a dict, or refers to
    anything but numpy arrays.
    """
    data = read_bytes(fs, path)
    try:
        content = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:  # a corrupt pickle can raise almost anything; all of it means "bad file"
        raise DatasetFormatError(f"not a valid CIFAR pickle: {path}: {first_line(error)}") from error
    if not isinstance(content, dict):
        raise DatasetFormatError(
            f"not a valid CIFAR pickle: {path}: expected a dict, got {type(content).__name__}"
        )
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def find_cifar_dir(fs: AbstractFileSystem, path: str, variant: CifarVariant) -> str | None:
    """The directory holding ``variant``'s files: ``path`` itself or ``path/<standard folder>``; else None."""
    layout = LAYOUTS[variant]
    for candidate in (path, join(path, layout.folder)):
        if fs.isfile(join(candidate, layout.meta)) and (
            fs.isfile(join(candidate, layout.test)) or fs.isfile(join(candidate, layout.train[0]))
        ):
            return candidate
    return None


def read_cifar(
    source: str | os.PathLike, split: str = "train", variant: CifarVariant | Literal["auto"] = "auto"
) -> ImageDataset:
    """Read one split ("train" or "test") of CIFAR-10 or CIFAR-100 (``variant="auto"`` tells them apart).

    ``source`` is the directory holding ``cifar-10-batches-py``/``cifar-100-python`` or that folder itself.
    Returns images uint8 (N, 32, 32, 3), labels and index 0..N-1 in file order.
    """
    source = os.fspath(source)
    if split not in ("train", "test"):
        raise InvalidInputError(f"CIFAR split must be 'train' or 'test', got {split!r} for {source}")
    fs, path = filesystem(source)
    variants = ("cifar10", "cifar100") if variant == "auto" else (variant,)
    for name in variants:
        directory = find_cifar_dir(fs, path, name)
        if directory is not None:
            return _read_split(fs, path, directory, name, split)
    raise DatasetFormatError(
        f"no {' or '.join(LAYOUTS[v].folder for v in variants)} batches found at {source}"
    )


def _read_split(
    fs: AbstractFileSystem, root: str, directory: str, variant: CifarVariant, split: str
) -> ImageDataset:
    """Concatenate the batches of one split in ``directory`` (``root`` or below it; every file read must
    stay inside ``root``: ue_core.data.fsutil.contained), after checking each of them."""
    layout = LAYOUTS[variant]
    files = layout.train if split == "train" else (layout.test,)
    meta_path, *batch_paths = contained_listing(fs, root, [join(directory, f) for f in (layout.meta, *files)])
    class_names = _class_names(load_pickle_safely(fs, meta_path), layout.names_key, meta_path)
    batches = [_read_batch(fs, path, layout.labels_key, len(class_names)) for path in batch_paths]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return ImageDataset(
        images=images, labels=labels, num_classes=len(class_names), class_names=class_names, name=variant
    )


def _class_names(meta: dict[str, Any], key: str, path: str) -> tuple[str, ...]:
    """Class names from a meta pickle (bytes names decoded as latin-1)."""
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not names:
        raise DatasetFormatError(f"CIFAR meta file has no list {key!r}: {path}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def _read_batch(
    fs: AbstractFileSystem, path: str, labels_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """One batch file → images uint8 (n, 32, 32, 3) and labels int64 (n,)."""
    batch = load_pickle_safely(fs, path)
    data, labels = batch.get("data"), batch.get(labels_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DatasetFormatError(f"CIFAR batch 'data' must be a uint8 array (n, 3072), got {shape}: {path}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DatasetFormatError(f"CIFAR batch {labels_key!r} is not a list of integers: {path}") from None
    if labels.shape != (len(data),):
        raise DatasetFormatError(
            f"CIFAR batch has {len(data)} images but {labels.size} {labels_key!r}: {path}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(f"CIFAR batch has labels outside [0, {num_classes}): {path}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def write_cifar_batches(
    train: ImageDataset,
    root: str | os.PathLike,
    test: ImageDataset | None = None,
    variant: CifarVariant = "cifar10",
    overwrite: bool = False,
) -> str:
    """Write ``root/cifar-10-batches-py`` (or ``root/cifar-100-python``) in the original pickle format.

    CIFAR-10 gets five train batches (``np.array_split`` sizes), CIFAR-100 a single ``train`` file; both
    get the meta file, and the test file when ``test`` is given. Images must be uint8 (N, 32, 32, 3). The
    format has no index column, so each set is written in index order and its index must be 0..N-1.
    Pickles use protocol 2, like the originals, so :func:`read_cifar` and torchvision both load them.

    torchvision's ``CIFAR10``/``CIFAR100`` check the md5 of every file against the original release, so
    they reject any modified copy: load the output with ue_core.data.ReleasedCIFAR10 / ReleasedCIFAR100.
    Returns the written folder's path or URI.
    """
    train = _checked_for_cifar(train, "train")
    with staged_directory(join(os.fspath(root), _layout(variant).folder), overwrite) as (fs, staging):
        writer = CifarWriter(fs, staging, train, len(train), test, variant)
        writer.add(train)
        writer.close()
    return join(os.fspath(root), _layout(variant).folder)


class CifarWriter:
    """The CIFAR batches written batch by batch, for a train set of ``count`` images that arrive in index
    order 0, 1, …, count − 1 (the format has no index column): each train batch file is written once its
    rows have come (CIFAR-10: five files of ``np.array_split`` sizes; CIFAR-100: one), the meta file and
    the test file (when ``test`` is given) at once. ``like`` gives the classes and image shape; ``folder``
    is the variant's folder itself (``cifar-10-batches-py`` or ``cifar-100-python``)."""

    def __init__(self, fs: AbstractFileSystem, folder: str, like: ImageDataset, count: int,
                 test: ImageDataset | None = None, variant: CifarVariant = "cifar10") -> None:
        self.layout = _layout(variant)
        _check_cifar_shape(like, "train")
        self.fs, self.folder, self.count, self.like = fs, folder, count, like
        fs.makedirs(folder, exist_ok=True)
        self.sizes = [len(rows) for rows in np.array_split(np.arange(count), len(self.layout.train))]
        self.pending: list[ImageDataset] = []
        self.written = 0  # rows in batch files so far
        self.files_written = 0
        _write_pickle(fs, join(folder, self.layout.meta), {self.layout.names_key: list(like.class_names)})
        if test is not None:
            if test.class_names != like.class_names:
                raise InvalidInputError(f"{test.name}: the test set's class names differ from the train set's")
            test = _checked_for_cifar(test, "test")
            batch = _batch(test, np.arange(len(test)), self.layout, "testing batch 1 of 1")
            _write_pickle(fs, join(folder, self.layout.test), batch)

    def add(self, rows: ImageDataset) -> None:
        """Append train rows whose indices continue the set: the next ones of 0..count − 1, in order."""
        _check_cifar_shape(rows, "train")
        start = self.written + sum(len(part) for part in self.pending)
        if not np.array_equal(rows.index, np.arange(start, start + len(rows))) or start + len(rows) > self.count:
            raise InvalidInputError(
                f"{rows.name} (train): the CIFAR format has no index column, so the index must be 0..N-1"
            )
        self.pending.append(rows)
        while (number := self._next_file()) is not None and 0 < self.sizes[number] <= self._pending_rows():
            self._write_next()

    def close(self) -> None:
        """Write the files still due (those of no rows, for a set of fewer than five images)."""
        if self.written + self._pending_rows() != self.count:
            raise InvalidInputError(f"the CIFAR writer of {self.folder} was given fewer than its {self.count} rows")
        while self._next_file() is not None:
            self._write_next()

    def _pending_rows(self) -> int:
        return sum(len(part) for part in self.pending)

    def _next_file(self) -> int | None:
        """The train file to write next (None when all are written)."""
        number = self.files_written
        return number if number < len(self.sizes) else None

    def _write_next(self) -> None:
        number = self._next_file()
        parts = self.pending or [self.like.subset(np.arange(0))]
        rows = ImageDataset(
            images=np.concatenate([part.images for part in parts]),
            labels=np.concatenate([part.labels for part in parts]),
            index=np.concatenate([part.index for part in parts]),
            num_classes=self.like.num_classes, class_names=self.like.class_names, name=self.like.name,
        )
        size = self.sizes[number]
        batch_label = f"training batch {number + 1} of {len(self.layout.train)}"
        _write_pickle(self.fs, join(self.folder, self.layout.train[number]),
                      _batch(rows, np.arange(size), self.layout, batch_label))
        self.pending = [rows.subset(np.arange(size, len(rows)))] if len(rows) > size else []
        self.written += size
        self.files_written += 1


def _layout(variant: str) -> _Layout:
    if variant not in LAYOUTS:
        raise InvalidInputError(f"CIFAR variant must be 'cifar10' or 'cifar100', got {variant!r}")
    return LAYOUTS[variant]


def _check_cifar_shape(dataset: ImageDataset, split: str) -> None:
    if dataset.image_shape != CIFAR_IMAGE_SHAPE:
        raise InvalidInputError(
            f"{dataset.name} ({split}): the CIFAR format holds 32x32x3 images, got {dataset.image_shape}"
        )


def _checked_for_cifar(dataset: ImageDataset, split: str) -> ImageDataset:
    """The dataset sorted by index, after checking it fits the CIFAR format."""
    _check_cifar_shape(dataset, split)
    return sorted_with_dense_index(dataset, split, "the CIFAR format has no index column")


def _batch(dataset: ImageDataset, rows: np.ndarray, layout: _Layout, batch_label: str) -> dict[str, Any]:
    """The dict of one batch file: channel-first flattened pixels and a list of labels."""
    data = dataset.images[rows].transpose(0, 3, 1, 2).reshape(len(rows), 3072)
    return {"batch_label": batch_label, layout.labels_key: dataset.labels[rows].tolist(), "data": data}


def _write_pickle(fs: AbstractFileSystem, path: str, content: dict[str, Any]) -> None:
    with fs.open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)

"""Image folders: class-per-directory sets, the "PNG folder with labels.csv" release format, and the
ImageFolder export.

Class folder: ``ROOT/<class>/*.{png,jpg,jpeg,bmp}``; classes are the sorted directory names (hidden ones
skipped), rows are in (class, file name) order with ``index`` 0..N-1.

PNG folder: ``ROOT/images/<index>.png``, ``ROOT/labels.csv`` with the columns ``filename,index,label``
(file names relative to ROOT) and ``ROOT/dataset.json`` with the name, class count and class names (the
reader falls back to max(label) + 1 numbered classes without it). This is the layout other
unlearnable-example benchmarks read.

ImageFolder export: ``ROOT/<class folder>/<index>.png`` and ``ROOT/metadata.csv`` with the columns
``file_name,label``, what torchvision.datasets.ImageFolder and Hugging Face's ``imagefolder`` read. Class
folders sort in label order (:func:`class_folder_names`), so ImageFolder's class k is label k; the index is
zero-padded to one width, so ImageFolder lists each class's images in index order.

All images of a set must share one size. A set whose images are all grayscale gets C = 1, any other set is
converted to RGB (C = 3).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence

import numpy as np
from fsspec import AbstractFileSystem

from ue_core.data.atomic import staged_directory
from ue_core.data.dataset import ImageDataset
from ue_core.data.fsutil import contained, contained_listing, filesystem, first_line, join, read_bytes
from ue_core.data.images import decode_image_files, encode_png, is_image_file
from ue_core.errors import DatasetFormatError, InvalidInputError

LABELS_CSV = "labels.csv"
DATASET_JSON = "dataset.json"
IMAGES_DIR = "images"
CSV_COLUMNS = ("filename", "index", "label")
METADATA_CSV = "metadata.csv"
METADATA_COLUMNS = ("file_name", "label")
# a class name used as is in a folder name: ASCII letters, digits, space, _ . + -, starting and ending with
# a letter or digit (so "Ankle boot" is, "T-shirt/top" is not)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 _.+-]{0,98}[A-Za-z0-9])?")


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _class_dirs(fs: AbstractFileSystem, path: str) -> list[str]:
    """Sorted non-hidden subdirectories of ``path``."""
    entries = fs.ls(path, detail=True)
    dirs = [
        e["name"] for e in entries if e["type"] == "directory" and not _basename(e["name"]).startswith(".")
    ]
    return sorted(dirs, key=_basename)


def _image_files(fs: AbstractFileSystem, directory: str) -> list[str]:
    """Sorted image files directly inside ``directory``."""
    return sorted(p for p in fs.ls(directory, detail=False) if is_image_file(p) and fs.isfile(p))


def is_class_folder(fs: AbstractFileSystem, path: str) -> bool:
    """True if some subdirectory of ``path`` directly holds an image file."""
    return fs.isdir(path) and any(_image_files(fs, d) for d in _class_dirs(fs, path))


def read_class_folder(source: str | os.PathLike) -> ImageDataset:
    """Read ``source/<class>/*`` images: uint8 (N, H, W, C), labels by sorted class name, index 0..N-1.

    A listed file (or class folder) that is a symlink out of ``source`` is an InvalidInputError naming it.
    """
    source = os.fspath(source)
    fs, root = filesystem(source)
    class_dirs = _class_dirs(fs, root) if fs.isdir(root) else []
    files = [_image_files(fs, d) for d in class_dirs]
    if not any(files):
        raise DatasetFormatError(f"no <class>/<image> files found at {source}")
    paths = contained_listing(fs, root, [p for class_files in files for p in class_files])
    labels = np.concatenate([np.full(len(f), label, dtype=np.int64) for label, f in enumerate(files)])
    return ImageDataset(
        images=decode_image_files(fs, paths),
        labels=labels,
        num_classes=len(class_dirs),
        class_names=tuple(_basename(d) for d in class_dirs),
        name=_basename(root),
    )


def is_png_folder(fs: AbstractFileSystem, path: str) -> bool:
    """True if ``path`` holds ``labels.csv``."""
    return fs.isfile(join(path, LABELS_CSV))


def write_png_folder(dataset: ImageDataset, root: str | os.PathLike, overwrite: bool = False) -> str:
    """Write ``root/images/<index>.png`` (grayscale if C = 1, RGB if C = 3), ``labels.csv`` and
    ``dataset.json``, rows in index order. Returns ``root``."""
    root = os.fspath(root)
    with staged_directory(root, overwrite) as (fs, staging):
        writer = PngFolderWriter(fs, staging, dataset)
        writer.add(dataset.sorted_by_index())
        writer.close()
    return root


class PngFolderWriter:
    """The PNG folder written batch by batch: each image as it comes, labels.csv and dataset.json at
    :meth:`close`, rows in the order added (:func:`write_png_folder` adds them in index order). ``like``
    gives the set's name, classes and image shape."""

    def __init__(self, fs: AbstractFileSystem, folder: str, like: ImageDataset) -> None:
        _check_png_channels(like)
        self.fs, self.folder, self.like = fs, folder, like
        self.table = io.StringIO()
        self.rows = csv.writer(self.table, lineterminator="\n")
        self.rows.writerow(CSV_COLUMNS)
        fs.makedirs(join(folder, IMAGES_DIR), exist_ok=True)

    def add(self, rows: ImageDataset) -> None:
        for image, index, label in zip(rows.images, rows.index, rows.labels):
            file_name = f"{IMAGES_DIR}/{index}.png"
            with self.fs.open(join(self.folder, file_name), "wb") as f:
                f.write(encode_png(image))
            self.rows.writerow((file_name, int(index), int(label)))

    def close(self) -> None:
        with self.fs.open(join(self.folder, LABELS_CSV), "w") as f:
            f.write(self.table.getvalue())
        description = {"name": self.like.name, "num_classes": self.like.num_classes,
                       "class_names": self.like.class_names}
        with self.fs.open(join(self.folder, DATASET_JSON), "w") as f:
            json.dump(description, f, indent=1)


def _check_png_channels(dataset: ImageDataset) -> None:
    if dataset.image_shape[2] not in (1, 3):
        raise InvalidInputError(f"{dataset.name}: PNG images need 1 or 3 channels, got {dataset.image_shape}")


def class_folder_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """One folder name per class whose sorted order is label order: ``<label>-<class name>``, or just
    ``<label>`` for a class whose name is not a plain folder name (``_PLAIN_NAME``), the label zero-padded
    to the width of the largest (Fashion-MNIST: ``0``, ``1-Trouser``, …, ``9-Ankle boot``)."""
    width = len(str(len(class_names) - 1))
    return tuple(
        f"{label:0{width}d}-{name}" if _PLAIN_NAME.fullmatch(name) else f"{label:0{width}d}"
        for label, name in enumerate(class_names)
    )


def write_image_folder(dataset: ImageDataset, root: str | os.PathLike, overwrite: bool = False) -> str:
    """Write the ImageFolder export (module docstring): ``root/<class folder>/<index>.png`` (grayscale if
    C = 1, RGB if C = 3) and ``root/metadata.csv``, rows in (label, index) order. Returns ``root``.

    Every class needs an image: ImageFolder numbers only the class folders it finds, so a missing one would
    shift the labels after it.
    """
    root = os.fspath(root)
    _check_png_channels(dataset)
    _check_every_class(dataset.name, dataset.num_classes, dataset.labels)
    with staged_directory(root, overwrite) as (fs, staging):
        writer = ImageFolderWriter(fs, staging, dataset, int(dataset.index.max(initial=0)))
        writer.add(dataset)
        writer.close()
    return root


class ImageFolderWriter:
    """The ImageFolder export written batch by batch: each image as it comes into its class folder, and
    metadata.csv, in (label, index) order, at :meth:`close`, which also checks that every class got an
    image. ``like`` gives the set's name, classes and image shape; ``max_index``, the largest index of the
    whole set, fixes the zero-padded width of every file name."""

    def __init__(self, fs: AbstractFileSystem, folder: str, like: ImageDataset, max_index: int) -> None:
        _check_png_channels(like)
        self.fs, self.folder, self.like = fs, folder, like
        self.class_folders = class_folder_names(like.class_names)
        self.width = len(str(max_index))
        self.entries: list[tuple[int, int, str]] = []  # (label, index, file name)
        for class_folder in self.class_folders:
            fs.makedirs(join(folder, class_folder), exist_ok=True)

    def add(self, rows: ImageDataset) -> None:
        for image, index, label in zip(rows.images, rows.index, rows.labels):
            file_name = f"{self.class_folders[label]}/{index:0{self.width}d}.png"
            with self.fs.open(join(self.folder, file_name), "wb") as f:
                f.write(encode_png(image))
            self.entries.append((int(label), int(index), file_name))

    def close(self) -> None:
        _check_every_class(self.like.name, self.like.num_classes, np.array([label for label, _, _ in self.entries]))
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        writer.writerows((file_name, label) for label, _, file_name in sorted(self.entries))
        with self.fs.open(join(self.folder, METADATA_CSV), "w") as f:
            f.write(table.getvalue())


def _check_every_class(name: str, num_classes: int, labels: np.ndarray) -> None:
    empty = sorted(set(range(num_classes)) - set(labels.tolist()))
    if empty:
        raise InvalidInputError(
            f"{name}: the imagefolder export needs an image of every class, class {empty[0]} has none"
        )


def read_png_folder(source: str | os.PathLike) -> ImageDataset:
    """Read a PNG folder written by :func:`write_png_folder` (or any folder with such a labels.csv).

    Returns rows in labels.csv order with the index and label it gives; images uint8 (N, H, W, C). Every
    file name must stay inside the folder (ue_core.data.fsutil.contained); one that leaves it is an
    InvalidInputError naming it, raised before any image is read.
    """
    source = os.fspath(source)
    fs, root = filesystem(source)
    csv_path = contained(fs, root, LABELS_CSV, "file")
    file_names, index, labels = _read_labels_csv(fs, csv_path)
    name, num_classes, class_names = _read_description(fs, root, labels)
    paths = [contained(fs, root, f, f"{LABELS_CSV} entry") for f in file_names]
    images = decode_image_files(fs, paths)
    try:
        return ImageDataset(
            images=images,
            labels=labels,
            index=index,
            num_classes=num_classes,
            class_names=class_names,
            name=name,
        )
    except InvalidInputError as error:
        raise DatasetFormatError(f"{csv_path}: {error}") from error


def _read_labels_csv(fs: AbstractFileSystem, path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """File names, int64 indices and int64 labels from labels.csv."""
    reader = csv.DictReader(io.StringIO(read_bytes(fs, path).decode("utf-8", "replace")))
    if reader.fieldnames is None or not set(CSV_COLUMNS) <= set(reader.fieldnames):
        raise DatasetFormatError(f"labels.csv needs the columns {','.join(CSV_COLUMNS)}: {path}")
    file_names, index, labels = [], [], []
    for line_number, row in enumerate(reader, start=2):
        try:
            index.append(int(row["index"]))
            labels.append(int(row["label"]))
        except (TypeError, ValueError):
            raise DatasetFormatError(
                f"line {line_number}: index and label must be integers: {path}"
            ) from None
        file_names.append(row["filename"])
    if not file_names:
        raise DatasetFormatError(f"labels.csv lists no images: {path}")
    return file_names, np.array(index, dtype=np.int64), np.array(labels, dtype=np.int64)


def _read_description(
    fs: AbstractFileSystem, root: str, labels: np.ndarray
) -> tuple[str, int, tuple[str, ...]]:
    """(name, num_classes, class_names) from dataset.json, or defaults derived from the labels."""
    path = contained(fs, root, DATASET_JSON, "file")
    if not fs.isfile(path):
        num_classes = int(labels.max()) + 1
        return _basename(root), num_classes, tuple(str(c) for c in range(num_classes))
    try:
        description = json.loads(read_bytes(fs, path))
        return str(description["name"]), int(description["num_classes"]), tuple(description["class_names"])
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetFormatError(f"invalid {DATASET_JSON} ({first_line(error)}): {path}") from error

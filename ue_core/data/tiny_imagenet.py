"""Tiny ImageNet's folder layout (``tiny-imagenet-200``).

``ROOT/wnids.txt`` lists the class ids (one WordNet id a line); the train split is
``ROOT/train/<wnid>/images/*.JPEG`` and the val split is ``ROOT/val/images/*.JPEG`` labelled by
``ROOT/val/val_annotations.txt`` (tab-separated: file name, wnid, then a bounding box x, y, w, h). The test
split has no labels, so "val" is the test split here ("test" is accepted as its alias).

Labels follow the sorted wnids and the class names are the wnids. Images are converted to RGB: uint8
(N, 64, 64, 3) for the real data (any size is accepted if all images share it). Rows are in sorted file
order (train: by wnid then file name; val: by file name) and get ``index`` 0..N-1 in that order.

Every file read must stay inside ROOT, and every annotated name inside ``val/images``
(ue_core.data.fsutil.contained): a symlink out of ROOT or a name such as ``../../x.JPEG`` is an
InvalidInputError naming it.
"""

from __future__ import annotations

import os

from fsspec import AbstractFileSystem

from ue_core.data.dataset import ImageDataset
from ue_core.data.fsutil import contained, contained_listing, filesystem, join, read_bytes
from ue_core.data.images import decode_image_files, is_image_file
from ue_core.errors import DatasetFormatError, InvalidInputError

NAME = "tiny-imagenet"
SPLIT_ALIASES = {"train": "train", "val": "val", "test": "val"}


def is_tiny_imagenet(fs: AbstractFileSystem, path: str) -> bool:
    """True if ``path`` has ``wnids.txt`` and a ``train`` or ``val`` directory."""
    return fs.isfile(join(path, "wnids.txt")) and (
        fs.isdir(join(path, "train")) or fs.isdir(join(path, "val"))
    )


def read_tiny_imagenet(source: str | os.PathLike, split: str = "train") -> ImageDataset:
    """Read the "train" or "val" split (alias "test") of a Tiny ImageNet tree at ``source``.

    Returns images uint8 (N, H, W, 3), labels by sorted wnid, class names = sorted wnids.
    """
    source = os.fspath(source)
    if split not in SPLIT_ALIASES:
        raise InvalidInputError(f"Tiny ImageNet split must be 'train' or 'val', got {split!r} for {source}")
    fs, root = filesystem(source)
    wnids = _read_wnids(fs, contained(fs, root, "wnids.txt", "file"))
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    if SPLIT_ALIASES[split] == "train":
        paths, labels = _train_files(fs, root, label_of)
    else:
        paths, labels = _val_files(fs, root, label_of)
    if not paths:
        raise DatasetFormatError(f"no images in the {split} split of {source}")
    images = decode_image_files(fs, paths, rgb=True)
    return ImageDataset(images=images, labels=labels, num_classes=len(wnids), class_names=wnids, name=NAME)


def _read_wnids(fs: AbstractFileSystem, path: str) -> tuple[str, ...]:
    """Sorted class ids; an empty or duplicated list is an error naming the file."""
    wnids = [line.strip() for line in read_bytes(fs, path).decode("utf-8", "replace").splitlines()]
    wnids = [wnid for wnid in wnids if wnid]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetFormatError(f"wnids.txt must list distinct class ids, one a line: {path}")
    return tuple(sorted(wnids))


def _train_files(fs: AbstractFileSystem, root: str, label_of: dict[str, int]) -> tuple[list[str], list[int]]:
    """Image paths and labels of ``train/<wnid>/images/``, by wnid then file name, each inside ``root``."""
    train = join(root, "train")
    if not fs.isdir(train):
        raise DatasetFormatError(f"missing directory {train}")
    for directory in fs.ls(train, detail=False):
        if fs.isdir(directory) and directory.rstrip("/").rsplit("/", 1)[-1] not in label_of:
            raise DatasetFormatError(f"class directory not listed in wnids.txt: {directory}")
    paths: list[str] = []
    labels: list[int] = []
    for wnid, label in sorted(label_of.items()):
        files = _listed_images(fs, root, join(train, f"{wnid}/images"))
        paths += files
        labels += [label] * len(files)
    return paths, labels


def _val_files(fs: AbstractFileSystem, root: str, label_of: dict[str, int]) -> tuple[list[str], list[int]]:
    """Image paths of ``val/images/`` by file name (each inside ``root``), labelled by
    ``val/val_annotations.txt`` (whose names must stay inside ``val/images``)."""
    images_dir = join(root, "val/images")
    files = _listed_images(fs, root, images_dir)
    annotations_path = contained(fs, root, "val/val_annotations.txt", "file")
    wnid_of = _read_annotations(fs, annotations_path, label_of)
    for name in wnid_of:
        contained(fs, images_dir, name, "val_annotations.txt entry")
    names = [path.rsplit("/", 1)[-1] for path in files]
    unlabelled = [path for path, name in zip(files, names) if name not in wnid_of]
    if unlabelled:
        raise DatasetFormatError(f"image not listed in {annotations_path}: {unlabelled[0]}")
    missing = sorted(set(wnid_of) - set(names))
    if missing:
        raise DatasetFormatError(f"{annotations_path} lists {missing[0]}, which is not in {images_dir}")
    return files, [label_of[wnid_of[name]] for name in names]


def _listed_images(fs: AbstractFileSystem, root: str, directory: str) -> list[str]:
    """Sorted image files directly in ``directory`` (none if it is missing), each kept inside ``root``."""
    if not fs.isdir(directory):
        return []
    return contained_listing(fs, root, sorted(p for p in fs.ls(directory, detail=False) if is_image_file(p)))


def _read_annotations(fs: AbstractFileSystem, path: str, label_of: dict[str, int]) -> dict[str, str]:
    """File name → wnid from ``val_annotations.txt``; a malformed line is an error naming file and line."""
    wnid_of: dict[str, str] = {}
    for number, line in enumerate(read_bytes(fs, path).decode("utf-8", "replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of or fields[0] in wnid_of:
            raise DatasetFormatError(
                f"bad line {number} (file, known wnid, box; no duplicates expected): {path}"
            )
        wnid_of[fields[0]] = fields[1]
    return wnid_of

"""read_dataset: recognising every layout, explicit layouts, split subdirectories, unknown layouts."""

import uuid

import fsspec
import numpy as np
import pytest

from ue_core.data import (
    ImageDataset,
    read_dataset,
    write_cifar_batches,
    write_idx,
    write_png_folder,
    write_shards,
)
from ue_core.data.images import encode_png
from ue_core.errors import DatasetFormatError, InvalidInputError


def _class_folder(root, dataset):
    for image, label, index in zip(dataset.images, dataset.labels, dataset.index):
        path = root / dataset.class_names[label] / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_png(image))


def _tiny_imagenet(root, dataset):
    (root / "wnids.txt").write_text("\n".join(dataset.class_names))
    _class_folder(root / "train_flat", dataset)
    for class_name in dataset.class_names:
        (root / "train" / class_name).mkdir(parents=True)
        (root / "train_flat" / class_name).rename(root / "train" / class_name / "images")


LAYOUT_WRITERS = {
    "parquet": lambda root, d: write_shards(d, root),
    "cifar10": lambda root, d: write_cifar_batches(d, root, d, variant="cifar10"),
    "cifar100": lambda root, d: write_cifar_batches(d, root, d, variant="cifar100"),
    "idx": lambda root, d: write_idx(d, root / "FashionMNIST" / "raw", d),
    "tiny-imagenet": _tiny_imagenet,
    "png-labels": lambda root, d: write_png_folder(d, root),
    "class-folder": _class_folder,
}
SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "idx": (28, 28, 1)}
INDEX_BY_SORTED_FILES = ("tiny-imagenet", "class-folder")  # no index in the files: 0..N-1 by (class, file)


@pytest.mark.parametrize("layout", list(LAYOUT_WRITERS))
def test_auto_detects_every_layout(tmp_path, dataset_factory, same_rows, layout):
    dataset = dataset_factory(n=6, shape=SHAPES.get(layout, (6, 6, 3)), num_classes=3)
    if layout == "idx":  # Fashion-MNIST's torchvision layout: ten named classes
        dataset = dataset_factory(n=6, shape=(28, 28, 1), num_classes=10)
    root = tmp_path / "d"
    root.mkdir()
    LAYOUT_WRITERS[layout](root, dataset)
    if layout in INDEX_BY_SORTED_FILES:
        in_file_order = dataset.subset(np.lexsort((dataset.index, dataset.labels)))
        dataset = ImageDataset(images=in_file_order.images, labels=in_file_order.labels, num_classes=3)
    for layout_argument in ("auto", layout):
        same_rows(read_dataset(root, "train", layout=layout_argument), dataset)


@pytest.mark.parametrize("layout", list(LAYOUT_WRITERS))
def test_every_layout_reads_through_an_fsspec_uri(tmp_path, dataset_factory, layout):
    dataset = dataset_factory(n=6, shape=SHAPES.get(layout, (6, 6, 3)), num_classes=3)
    LAYOUT_WRITERS[layout](tmp_path, dataset)
    local = read_dataset(tmp_path, "train")
    fs, bucket = fsspec.filesystem("memory"), f"memory://layouts-{uuid.uuid4().hex}"
    try:
        fs.put(str(tmp_path), f"{bucket}/{tmp_path.name}", recursive=True)  # same name: class folders use it
        remote = read_dataset(f"{bucket}/{tmp_path.name}", "train")
    finally:
        fs.rm(bucket, recursive=True)
    assert remote.name == local.name and remote.class_names == local.class_names
    for field in ("images", "labels", "index"):
        np.testing.assert_array_equal(getattr(remote, field), getattr(local, field))


def test_split_subdirectories_for_single_set_layouts(tmp_path, dataset_factory, same_rows):
    train, test = dataset_factory(n=8, seed=1), dataset_factory(n=3, seed=2)
    write_shards(train, tmp_path / "train")
    write_png_folder(test, tmp_path / "test")
    same_rows(read_dataset(tmp_path, "train"), train)
    same_rows(read_dataset(tmp_path, "test"), test)
    same_rows(read_dataset(tmp_path / "test", "train"), test)  # a set itself: split has nothing to pick


def test_reads_through_an_fsspec_uri(dataset_factory, same_rows):
    uri = f"memory://readers-{uuid.uuid4().hex}/set"
    dataset = dataset_factory(n=5)
    try:
        write_png_folder(dataset, uri)
        same_rows(read_dataset(uri), dataset)
    finally:
        fsspec.filesystem("memory").rm(uri, recursive=True)


def test_unknown_layout_is_one_line_naming_the_source(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    with pytest.raises(DatasetFormatError) as error:
        read_dataset(tmp_path)
    message = str(error.value)
    assert message.startswith(f"cannot recognise the dataset layout at {tmp_path}; expected one of: release")
    assert "cifar10" in message and "class-folder" in message and "\n" not in message


def test_missing_path_and_bad_arguments(tmp_path):
    with pytest.raises(DatasetFormatError, match=f"no such file or directory: {tmp_path / 'nope'}"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(InvalidInputError, match="'imagenet'"):
        read_dataset(tmp_path, layout="imagenet")
    with pytest.raises(DatasetFormatError, match="cifar-10-batches-py"):
        read_dataset(tmp_path, layout="cifar10")  # explicit layout: the reader says what is missing


def test_explicit_layout_alias_and_split_check(tmp_path, dataset_factory):
    dataset = dataset_factory(n=4, shape=(28, 28, 1), num_classes=10)
    write_idx(dataset, tmp_path / "fm")
    assert len(read_dataset(tmp_path / "fm", layout="fashion-mnist")) == 4
    with pytest.raises(InvalidInputError, match="split"):
        read_dataset(tmp_path / "fm", split="validation")


def test_real_fashion_mnist(fashion_mnist_root):
    train = read_dataset(fashion_mnist_root, "train")
    test = read_dataset(fashion_mnist_root, "test")
    assert train.images.shape == (60_000, 28, 28, 1) and test.images.shape == (10_000, 28, 28, 1)
    assert train.num_classes == test.num_classes == 10 and train.name == "fashion-mnist"
    assert np.bincount(train.labels).tolist() == [6_000] * 10
    assert np.bincount(test.labels).tolist() == [1_000] * 10
    assert 60 < train.images.mean() < 90  # real clothes on a black background, not noise (mean 127.5)

"""MNIST-style idx files: files made by hand, our writer, torchvision's layout, corrupt files."""

import gzip
import struct

import numpy as np
import pytest
import torchvision

from ue_core.data import read_idx, write_idx
from ue_core.errors import DatasetFormatError, InvalidInputError


def _idx_bytes(magic, values):
    return struct.pack(f">I{values.ndim}I", magic, *values.shape) + values.tobytes()


def _hand_made_split(directory, prefix, n, compress, seed=0):
    """Write {prefix}-images-idx3-ubyte / -labels-idx1-ubyte byte by byte; return (images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    for name, content in (
        (f"{prefix}-images-idx3-ubyte", _idx_bytes(0x803, images)),
        (f"{prefix}-labels-idx1-ubyte", _idx_bytes(0x801, labels)),
    ):
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_reads_hand_made_idx_files(tmp_path, compress):
    expected = {
        "train": _hand_made_split(tmp_path, "train", 9, compress, seed=1),
        "test": _hand_made_split(tmp_path, "t10k", 4, compress, seed=2),
    }
    for split, (images, labels) in expected.items():
        dataset = read_idx(tmp_path, split)
        assert dataset.images.shape == (len(images), 28, 28, 1)
        np.testing.assert_array_equal(dataset.images[..., 0], images)
        np.testing.assert_array_equal(dataset.labels, labels)
        np.testing.assert_array_equal(dataset.index, np.arange(len(images)))


def test_torchvision_layout_gets_fashion_mnist_names(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images, _ = _hand_made_split(raw, "train", 5, compress=False)
    dataset = read_idx(tmp_path, "train")
    np.testing.assert_array_equal(dataset.images[..., 0], images)
    assert (
        dataset.name == "fashion-mnist"
        and dataset.num_classes == 10
        and dataset.class_names[0] == "T-shirt/top"
    )


@pytest.mark.parametrize("compress", [False, True])
def test_write_then_read_round_trip(tmp_path, dataset_factory, same_rows, compress):
    train = dataset_factory(n=10, shape=(28, 28, 1), num_classes=10, seed=3)
    test = dataset_factory(n=3, shape=(28, 28, 1), num_classes=10, seed=4)
    write_idx(train.subset(np.arange(10)[::-1]), tmp_path / "out", test, compress=compress)
    suffix = ".gz" if compress else ""
    assert (tmp_path / "out" / f"train-images-idx3-ubyte{suffix}").is_file()
    same_rows(read_idx(tmp_path / "out", "train"), train)
    same_rows(read_idx(tmp_path / "out", "test"), test)


def test_torchvision_reads_what_we_write(tmp_path, dataset_factory):
    train = dataset_factory(n=8, shape=(28, 28, 1), num_classes=10, seed=5)
    test = dataset_factory(n=3, shape=(28, 28, 1), num_classes=10, seed=6)
    write_idx(train, tmp_path / "FashionMNIST" / "raw", test, compress=False)
    loaded = torchvision.datasets.FashionMNIST(str(tmp_path), train=True, download=False)
    np.testing.assert_array_equal(loaded.data.numpy(), train.images[..., 0])
    np.testing.assert_array_equal(loaded.targets.numpy(), train.labels)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_file_is_one_line_error_naming_it(tmp_path, compress):
    _hand_made_split(tmp_path, "train", 6, compress)
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DatasetFormatError) as error:
        read_idx(tmp_path, "train")
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_wrong_magic_and_count_mismatch(tmp_path):
    _hand_made_split(tmp_path, "train", 6, compress=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx_bytes(0x803, np.zeros((6, 1, 1), np.uint8)))
    with pytest.raises(DatasetFormatError, match="magic"):
        read_idx(tmp_path, "train")
    labels.write_bytes(_idx_bytes(0x801, np.zeros(5, np.uint8)))
    with pytest.raises(DatasetFormatError, match="6 images .* 5 labels"):
        read_idx(tmp_path, "train")


def test_missing_split_names_the_file(tmp_path):
    _hand_made_split(tmp_path, "train", 3, compress=True)
    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte"):
        read_idx(tmp_path, "test")


def test_writer_rejects_colour_images(tmp_path, dataset_factory):
    with pytest.raises(InvalidInputError, match="1-channel"):
        write_idx(dataset_factory(shape=(28, 28, 3)), tmp_path / "out")
    assert not (tmp_path / "out").exists()

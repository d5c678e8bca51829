"""CIFAR-10/100 python batches: files made like the originals, our writer, torchvision, unsafe pickles."""

import builtins
import os
import pickle
import struct

import numpy as np
import pytest
import torchvision

from ue_core.data import ReleasedCIFAR10, ReleasedCIFAR100, read_cifar, write_cifar_batches
from ue_core.errors import DatasetFormatError, InvalidInputError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _flatten(images):
    """(n, 32, 32, 3) → the format's (n, 3072) rows: 1024 R, then 1024 G, then 1024 B values."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _pickle_to(path, content):
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=2)


def _py2_str(text):
    """Python 2 str opcode (SHORT_BINSTRING / BINSTRING): raw bytes, which Python 3 decodes as latin-1."""
    data = text if isinstance(text, bytes) else text.encode("latin1")
    return b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data


def _py2_pickle(value):
    """The protocol-2 opcodes Python 2's cPickle wrote for the original CIFAR files (dict, str, int, list,
    uint8 ndarray via numpy.core.multiarray._reconstruct with the pixels as a Python 2 str)."""
    if isinstance(value, dict):
        items = b"".join(_py2_pickle(k) + _py2_pickle(v) for k, v in value.items())
        return b"}(" + items + b"u"
    if isinstance(value, list):
        return b"](" + b"".join(_py2_pickle(v) for v in value) + b"e"
    if isinstance(value, (int, np.integer)):
        return b"J" + struct.pack("<i", int(value))
    if isinstance(value, str):
        return _py2_str(value)
    assert isinstance(value, np.ndarray) and value.dtype == np.uint8
    shape = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in value.shape) + b"t"
    dtype = (
        b"cnumpy\ndtype\n"
        + _py2_str("u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + _py2_str("|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _py2_str("b")
        + b"\x87R"
        + b"(K\x01"
        + shape
        + dtype
        + b"\x89"
        + _py2_str(value.tobytes())
        + b"tb"
    )


def _py2_pickle_to(path, content):
    path.write_bytes(b"\x80\x02" + _py2_pickle(content) + b".")


def _original_style_cifar10(root, images_per_batch=3, writer="python2", seed=0):
    """A tiny cifar-10-batches-py made like the original (Python 2 pickles) or by Python 3 with bytes keys."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    key = (lambda k: k) if writer == "python2" else (lambda k: k.encode())
    pickle_to = _py2_pickle_to if writer == "python2" else _pickle_to
    pickle_to(
        folder / "batches.meta",
        {key("num_cases_per_batch"): 10000, key("label_names"): CIFAR10_NAMES, key("num_vis"): 3072},
    )
    splits = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(images_per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=images_per_batch).tolist()
        pickle_to(
            folder / name,
            {
                key("batch_label"): f"batch {name}",
                key("labels"): labels,
                key("data"): _flatten(images),
                key("filenames"): [f"{name}_{i}.png" for i in range(images_per_batch)],
            },
        )
        split = "test" if name == "test_batch" else "train"
        splits.setdefault(split, []).append((images, labels))
    return {
        s: (np.concatenate([b[0] for b in v]), np.concatenate([b[1] for b in v])) for s, v in splits.items()
    }


def test_python2_pickle_helper_matches_numpy():
    array = np.arange(300, dtype=np.uint8).reshape(3, 100)
    loaded = pickle.loads(
        b"\x80\x02" + _py2_pickle({"data": array, "labels": [1, 2]}) + b".", encoding="latin1"
    )
    np.testing.assert_array_equal(loaded["data"], array)
    assert loaded["labels"] == [1, 2]


@pytest.mark.parametrize("writer", ["python2", "python3-bytes-keys"])
def test_reads_original_style_cifar10(tmp_path, writer):
    expected = _original_style_cifar10(tmp_path, writer=writer)
    for split in ("train", "test"):
        dataset = read_cifar(tmp_path, split)
        images, labels = expected[split]
        np.testing.assert_array_equal(dataset.images, images)
        np.testing.assert_array_equal(dataset.labels, labels)
        np.testing.assert_array_equal(dataset.index, np.arange(len(images)))
        assert dataset.class_names == tuple(CIFAR10_NAMES) and dataset.name == "cifar10"
    assert len(read_cifar(tmp_path / "cifar-10-batches-py", "train")) == 15  # the folder itself also works


def test_reads_original_style_cifar100(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"fine{c}" for c in range(100)]
    _pickle_to(
        folder / "meta", {"fine_label_names": names, "coarse_label_names": [f"c{c}" for c in range(20)]}
    )
    images = rng.integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    fine = rng.integers(0, 100, size=7).tolist()
    _pickle_to(folder / "train", {"data": _flatten(images), "fine_labels": fine, "coarse_labels": [0] * 7})
    dataset = read_cifar(tmp_path, "train")
    assert dataset.name == "cifar100" and dataset.num_classes == 100
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, fine)


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_write_then_read_round_trip(tmp_path, dataset_factory, same_rows, variant):
    train = dataset_factory(n=13, shape=(32, 32, 3), num_classes=10 if variant == "cifar10" else 100, seed=2)
    test = dataset_factory(n=4, shape=(32, 32, 3), num_classes=train.num_classes, seed=3)
    shuffled = train.subset(np.random.default_rng(0).permutation(len(train)))  # written in index order anyway
    output = write_cifar_batches(shuffled, tmp_path, test, variant=variant)
    assert output.endswith("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    same_rows(read_cifar(tmp_path, "train"), train)
    same_rows(read_cifar(tmp_path, "test"), test)
    assert read_cifar(tmp_path, "train").class_names == train.class_names
    expected_files = 7 if variant == "cifar10" else 3
    assert len(os.listdir(output)) == expected_files


def test_torchvision_loads_written_cifar10_through_released_class(tmp_path, dataset_factory):
    train = dataset_factory(n=11, shape=(32, 32, 3), num_classes=10, seed=4)
    test = dataset_factory(n=5, shape=(32, 32, 3), num_classes=10, seed=5)
    write_cifar_batches(train, tmp_path, test, variant="cifar10")
    for split, expected in (("train", train), ("test", test)):
        loaded = ReleasedCIFAR10(str(tmp_path), train=split == "train", download=False)
        np.testing.assert_array_equal(loaded.data, expected.images)
        assert loaded.targets == expected.labels.tolist()
        assert loaded.classes == list(expected.class_names)
        image, target = loaded[0]
        assert target == expected.labels[0]
        np.testing.assert_array_equal(np.asarray(image), expected.images[0])
    # The stock class compares every file's md5 with the original release, so it rejects any modified copy.
    with pytest.raises(RuntimeError, match="corrupted"):
        torchvision.datasets.CIFAR10(str(tmp_path), train=True, download=False)


def test_torchvision_loads_written_cifar100_through_released_class(tmp_path, dataset_factory):
    train = dataset_factory(n=6, shape=(32, 32, 3), num_classes=100, seed=6)
    test = dataset_factory(n=2, shape=(32, 32, 3), num_classes=100, seed=7)
    write_cifar_batches(train, tmp_path, test, variant="cifar100")
    loaded = ReleasedCIFAR100(str(tmp_path), train=True)
    np.testing.assert_array_equal(loaded.data, train.images)
    assert loaded.targets == train.labels.tolist() and len(loaded.classes) == 100


class _RunsShellCommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.eval, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize("payload_class", [_RunsShellCommand, _CallsEval])
@pytest.mark.parametrize("target_file", ["data_batch_1", "batches.meta"])
def test_malicious_pickle_is_rejected_before_running(tmp_path, payload_class, target_file):
    # The payload is live: plain pickle runs it.
    proof = tmp_path / "plain_pickle_ran_it"
    pickle.loads(pickle.dumps({"data": payload_class(proof)}, protocol=2))
    assert proof.exists()

    _original_style_cifar10(tmp_path / "root")
    marker = tmp_path / "reader_ran_it"
    victim = tmp_path / "root" / "cifar-10-batches-py" / target_file
    _pickle_to(victim, {"data": payload_class(marker), "labels": [], "label_names": ["x"]})
    with pytest.raises(DatasetFormatError) as error:
        read_cifar(tmp_path / "root", "train")
    message = str(error.value)
    assert str(victim) in message and "refusing" in message and "\n" not in message
    assert not marker.exists()


def test_truncated_batch_is_one_line_error_naming_the_file(tmp_path):
    _original_style_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DatasetFormatError) as error:
        read_cifar(tmp_path, "train")
    assert str(batch) in str(error.value) and "\n" not in str(error.value)


def test_wrong_data_shape_and_label_count_are_rejected(tmp_path):
    _original_style_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    _pickle_to(batch, {"data": np.zeros((2, 3000), np.uint8), "labels": [0, 1]})
    with pytest.raises(DatasetFormatError, match="3072"):
        read_cifar(tmp_path, "test")
    _pickle_to(batch, {"data": np.zeros((2, 3072), np.uint8), "labels": [0]})
    with pytest.raises(DatasetFormatError, match="test_batch"):
        read_cifar(tmp_path, "test")


def test_writer_rejects_non_cifar_images_and_gapped_index(tmp_path, dataset_factory):
    with pytest.raises(InvalidInputError, match="32x32x3"):
        write_cifar_batches(dataset_factory(shape=(28, 28, 1)), tmp_path / "out")
    gapped = dataset_factory(n=4, shape=(32, 32, 3), index=np.array([0, 1, 2, 7]))
    with pytest.raises(InvalidInputError, match="0..N-1"):
        write_cifar_batches(gapped, tmp_path / "out")
    assert not (tmp_path / "out").exists()

"""Tiny ImageNet's folder layout, with real JPEG files compared against PIL's decoding of them."""

import numpy as np
import pytest
from PIL import Image

from ue_core.data import read_tiny_imagenet
from ue_core.errors import DatasetFormatError

WNIDS = ["n03444034", "n01443537", "n02094433"]  # deliberately unsorted in wnids.txt
SIZE = 16  # the real set is 64x64; any size shared by all images is accepted


def _save_jpeg(path, rng, grayscale=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (SIZE, SIZE) if grayscale else (SIZE, SIZE, 3)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path, format="JPEG", quality=90)


def _pil_rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def tiny_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        for i in range(3):
            _save_jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", rng, grayscale=i == 1)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    annotations = []
    for i, wnid in enumerate(["n02094433", "n01443537", "n03444034", "n01443537"]):
        _save_jpeg(root / "val" / "images" / f"val_{i}.JPEG", rng)
        annotations.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t{SIZE - 1}\t{SIZE - 1}")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return root


def test_train_split_matches_pil_in_sorted_order(tiny_root):
    dataset = read_tiny_imagenet(tiny_root, "train")
    sorted_wnids = sorted(WNIDS)
    files = [tiny_root / "train" / w / "images" / f"{w}_{i}.JPEG" for w in sorted_wnids for i in range(3)]
    assert dataset.images.shape == (9, SIZE, SIZE, 3)
    np.testing.assert_array_equal(dataset.images, np.stack([_pil_rgb(f) for f in files]))
    np.testing.assert_array_equal(dataset.labels, np.repeat(np.arange(3), 3))
    np.testing.assert_array_equal(dataset.index, np.arange(9))
    assert dataset.class_names == tuple(sorted_wnids) and dataset.name == "tiny-imagenet"


def test_val_split_labels_from_annotations(tiny_root):
    dataset = read_tiny_imagenet(tiny_root, "val")
    files = [tiny_root / "val" / "images" / f"val_{i}.JPEG" for i in range(4)]
    np.testing.assert_array_equal(dataset.images, np.stack([_pil_rgb(f) for f in files]))
    label = {w: c for c, w in enumerate(sorted(WNIDS))}
    expected = [label[w] for w in ["n02094433", "n01443537", "n03444034", "n01443537"]]
    np.testing.assert_array_equal(dataset.labels, expected)
    np.testing.assert_array_equal(read_tiny_imagenet(tiny_root, "test").images, dataset.images)  # alias


def test_unlisted_val_image_is_an_error_naming_it(tiny_root):
    _save_jpeg(tiny_root / "val" / "images" / "val_9.JPEG", np.random.default_rng(1))
    with pytest.raises(DatasetFormatError, match="val_9.JPEG"):
        read_tiny_imagenet(tiny_root, "val")


def test_odd_sized_and_corrupt_images_are_named(tiny_root):
    odd = tiny_root / "train" / WNIDS[0] / "images" / "odd.JPEG"
    Image.fromarray(np.zeros((SIZE + 1, SIZE, 3), np.uint8)).save(odd, format="JPEG")
    with pytest.raises(DatasetFormatError, match="odd.JPEG"):
        read_tiny_imagenet(tiny_root, "train")
    odd.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetFormatError) as error:
        read_tiny_imagenet(tiny_root, "train")
    assert str(odd) in str(error.value) and "\n" not in str(error.value)

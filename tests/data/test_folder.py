"""Class-per-directory image folders and the PNG folder with labels.csv."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from ue_core.data import read_class_folder, read_png_folder, write_png_folder
from ue_core.errors import DatasetFormatError, InvalidInputError


def _save(path, pixels, format_=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=format_)


def test_class_folder_rgb_round_trip_in_sorted_order(tmp_path):
    rng = np.random.default_rng(0)
    expected = []
    for class_name in ["zebra", "ant", "moth"]:
        for file_name in ["b.png", "a.bmp", "c.PNG"]:
            pixels = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
            _save(tmp_path / class_name / file_name, pixels, "BMP" if file_name.endswith("bmp") else "PNG")
            expected.append((class_name, file_name, pixels))
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    dataset = read_class_folder(tmp_path)
    expected.sort(key=lambda e: (e[0], e[1]))
    assert dataset.class_names == ("ant", "moth", "zebra") and dataset.name == tmp_path.name
    np.testing.assert_array_equal(dataset.images, np.stack([e[2] for e in expected]))
    np.testing.assert_array_equal(dataset.labels, np.repeat(np.arange(3), 3))
    np.testing.assert_array_equal(dataset.index, np.arange(9))


def test_grayscale_only_gives_one_channel_and_mixed_gives_rgb(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    _save(tmp_path / "a" / "1.png", gray)
    _save(tmp_path / "b" / "1.png", gray[::-1])
    dataset = read_class_folder(tmp_path)
    assert dataset.image_shape == (4, 5, 1)
    np.testing.assert_array_equal(dataset.images[0, ..., 0], gray)
    colour = np.zeros((4, 5, 3), np.uint8)
    colour[..., 1] = 200
    _save(tmp_path / "c" / "1.png", colour)
    mixed = read_class_folder(tmp_path)
    assert mixed.image_shape == (4, 5, 3)
    np.testing.assert_array_equal(mixed.images[0], np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(mixed.images[2], colour)


def test_class_folder_odd_size_and_corrupt_file_are_named(tmp_path):
    _save(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    _save(tmp_path / "b" / "2.png", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(DatasetFormatError) as error:
        read_class_folder(tmp_path)
    assert str(tmp_path / "b" / "2.png") in str(error.value)
    (tmp_path / "b" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetFormatError) as error:
        read_class_folder(tmp_path)
    assert str(tmp_path / "b" / "2.png") in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_folder_round_trip(tmp_path, dataset_factory, same_rows, channels):
    dataset = dataset_factory(
        n=7, shape=(5, 6, channels), num_classes=3, index=np.array([9, 2, 40, 3, 7, 11, 0])
    )
    write_png_folder(dataset, tmp_path / "release")
    with open(tmp_path / "release" / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["filename", "index", "label"]
    assert [int(r["index"]) for r in rows] == sorted(dataset.index.tolist())
    assert rows[0]["filename"] == "images/0.png" and (tmp_path / "release" / "images" / "40.png").is_file()
    loaded = read_png_folder(tmp_path / "release")
    same_rows(loaded, dataset)
    assert loaded.class_names == dataset.class_names and loaded.name == dataset.name


def test_png_folder_without_dataset_json_and_with_bad_csv(tmp_path, dataset_factory):
    dataset = dataset_factory(n=4, shape=(3, 3, 3), num_classes=5)  # the highest class never appears
    write_png_folder(dataset, tmp_path / "r")
    assert json.loads((tmp_path / "r" / "dataset.json").read_text())["num_classes"] == 5
    (tmp_path / "r" / "dataset.json").unlink()
    assert read_png_folder(tmp_path / "r").num_classes == 4  # max(label) + 1 without it
    csv_path = tmp_path / "r" / "labels.csv"
    csv_path.write_text("filename,index,label\nimages/0.png,zero,1\n")
    with pytest.raises(DatasetFormatError) as error:
        read_png_folder(tmp_path / "r")
    assert str(csv_path) in str(error.value) and "line 2" in str(error.value)
    csv_path.write_text("name,label\nimages/0.png,1\n")
    with pytest.raises(DatasetFormatError, match="filename,index,label"):
        read_png_folder(tmp_path / "r")


def test_png_writer_rejects_unsupported_channels(tmp_path, dataset_factory):
    with pytest.raises(InvalidInputError, match="1 or 3 channels"):
        write_png_folder(dataset_factory(shape=(4, 4, 2)), tmp_path / "out")
    assert not (tmp_path / "out").exists()

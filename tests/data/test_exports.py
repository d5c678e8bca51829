"""The imagefolder and delta release formats, on real Fashion-MNIST images written by write_release."""

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from pipelines.config import load_protect_config
from ue_core.data.dataset import ImageDataset, balanced_subset
from ue_core.data.folder import class_folder_names, write_image_folder
from ue_core.data.readers import read_dataset
from ue_core.errors import InvalidInputError, ReleaseCheckError
from ue_core.release import read_release, snapshot_path, verify_release, write_release

FORMATS = ("parquet", "imagefolder", "delta")


def perturbed(clean: ImageDataset, size: int, seed: int) -> ImageDataset:
    """``clean`` with a random integer perturbation in ±``size`` levels, clipped to [0, 255]."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-size, size + 1, size=clean.images.shape)
    return clean.with_images(np.clip(clean.images.astype(np.int16) + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def clean(fashion_mnist_root) -> ImageDataset:
    return balanced_subset(read_dataset(str(fashion_mnist_root)), 60, seed=3)


@pytest.fixture(scope="module")
def release_dir(clean, tmp_path_factory):
    """A release of ``clean`` ±8 in parquet, imagefolder and delta, with a snapshot after round 1 (±4)."""
    out = tmp_path_factory.mktemp("exports") / "release"
    snapshot = perturbed(clean, 4, seed=1)
    write_release(perturbed(clean, 8, seed=0), out, {"method": "test"}, formats=FORMATS,
                  snapshots={1: (snapshot, {"method": "test", "rounds": 1})}, clean=clean)
    return out


def _pixels(path: str) -> np.ndarray:
    """A PNG as stored: uint8 (H, W, 1), its grey-scale mode kept (ImageFolder's default loader makes RGB)."""
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)[..., None]


def _by_label_then_index(dataset: ImageDataset) -> ImageDataset:
    return dataset.subset(np.lexsort((dataset.index, dataset.labels)))


@pytest.mark.parametrize("where", ["", snapshot_path(1)])
def test_imagefolder_loads_the_parquet_pixels_and_labels(release_dir, clean, where):
    folder = release_dir / where / "imagefolder"
    loaded = ImageFolder(str(folder), loader=_pixels)
    assert loaded.classes == list(class_folder_names(clean.class_names))
    assert loaded.classes[:2] == ["0", "1-Trouser"] and loaded.classes[9] == "9-Ankle boot"
    expected = _by_label_then_index(read_release(release_dir / where))
    np.testing.assert_array_equal(np.array(loaded.targets), expected.labels)
    np.testing.assert_array_equal(np.stack([image for image, _ in loaded]), expected.images)
    file_index = [int(path.rsplit("/", 1)[-1].removesuffix(".png")) for path, _ in loaded.samples]
    np.testing.assert_array_equal(file_index, expected.index)


def test_metadata_csv_lists_every_file_with_its_label(release_dir):
    folder = release_dir / "imagefolder"
    with open(folder / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file_name", "label"]
    files = sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.png"))
    assert sorted(row["file_name"] for row in rows) == files and len(files) == 60
    release = read_release(release_dir)
    label_of = dict(zip(release.index.tolist(), release.labels.tolist()))
    for row in rows:
        class_folder, file_name = row["file_name"].split("/")
        assert int(row["label"]) == label_of[int(file_name.removesuffix(".png"))]
        assert int(class_folder.split("-", 1)[0]) == int(row["label"])


@pytest.mark.parametrize("where", ["", snapshot_path(1)])
def test_delta_plus_the_clean_images_is_the_release(release_dir, clean, where):
    folder = release_dir / where / "delta"
    delta, index = np.load(folder / "delta.npy"), np.load(folder / "index.npy")
    assert delta.dtype == np.int8 and delta.shape == (60, 1, 28, 28) and index.dtype == np.int64
    release = read_release(release_dir / where).sorted_by_index()
    np.testing.assert_array_equal(index, release.index)
    x = clean.sorted_by_index().images.transpose(0, 3, 1, 2).astype(np.int16)
    np.testing.assert_array_equal((x + delta).astype(np.uint8), release.images.transpose(0, 3, 1, 2))
    assert np.abs(delta).max() <= (8 if where == "" else 4) and delta.any()
    saved = torch.load(folder / "delta.pt", weights_only=True)
    assert saved["delta"].dtype == torch.int8 and saved["index"].dtype == torch.int64
    np.testing.assert_array_equal(saved["delta"].numpy(), delta)
    np.testing.assert_array_equal(saved["index"].numpy(), index)


@pytest.mark.parametrize("changed", ["imagefolder/metadata.csv", "delta/delta.npy", "delta/delta.pt",
                                     f"{snapshot_path(1)}/delta/index.npy"])
def test_verify_lists_the_exports_and_names_a_changed_one(release_dir, tmp_path, changed):
    manifest = verify_release(release_dir)
    assert manifest["formats"] == list(FORMATS) and changed in manifest["files"]
    assert any(name.startswith("imagefolder/1-Trouser/") for name in manifest["files"])
    copy = tmp_path / "copy"
    shutil.copytree(release_dir, copy)
    data = bytearray((copy / changed).read_bytes())
    data[-1] ^= 1
    (copy / changed).write_bytes(bytes(data))
    with pytest.raises(ReleaseCheckError) as error:
        verify_release(copy)
    assert str(error.value) == f"release {copy}: {changed} does not match its sha256 in the manifest"


def test_delta_beyond_int8_is_refused_and_nothing_is_written(clean, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InvalidInputError) as error:
        write_release(perturbed(clean, 200, seed=0), out, {}, formats=FORMATS, clean=clean)
    assert "int8" in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_delta_without_the_clean_images_is_refused(clean, tmp_path):
    with pytest.raises(InvalidInputError, match="needs the clean images"):
        write_release(clean, tmp_path / "out", {}, formats=FORMATS)
    assert list(tmp_path.iterdir()) == []


def test_a_budget_above_127_levels_refuses_delta_before_any_work():
    assert load_protect_config("fashion-mnist", overrides={"budget.eps": "127/255", "formats": list(FORMATS)})
    with pytest.raises(InvalidInputError) as error:
        load_protect_config("fashion-mnist", overrides={"budget.eps": "128/255", "formats": list(FORMATS)})
    assert str(error.value) == ("the delta release format stores q - x as int8, so it needs eps <= 127/255; "
                                "eps 0.502 (linf) allows 128 levels")
    assert load_protect_config("fashion-mnist", overrides={"budget.eps": "128/255"})  # no delta: fine


def test_class_folders_sort_in_label_order():
    names = tuple(f"class {c}" if c % 3 else f"odd/{c}" for c in range(12))
    folders = class_folder_names(names)
    assert folders[:3] == ("00", "01-class 1", "02-class 2") and sorted(folders) == list(folders)
    assert class_folder_names((" lead", "trail.", "ok_1+x", "ü")) == ("0", "1", "2-ok_1+x", "3")


def test_imagefolder_needs_every_class(clean, tmp_path):
    with pytest.raises(InvalidInputError, match="class 9 has none"):
        write_image_folder(clean.subset(clean.labels < 9), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []

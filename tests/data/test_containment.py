"""Every path a dataset names stays inside the dataset: `..`, absolute paths, URLs and symlinks out of the
root are refused with one line naming the entry, before anything outside is read; writers never follow links.

Each refused case has a secret image outside the root that, if it were read, would become a row of the
dataset (and so of a release); a spy on the local filesystem checks that it is never even opened.
"""

import csv
import json
import os

import fsspec
import numpy as np
import pytest
import test_tiny_imagenet as tiny
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from ue_core.data import (
    read_class_folder,
    read_dataset,
    read_png_folder,
    read_shards,
    read_tiny_imagenet,
    write_cifar_batches,
    write_png_folder,
    write_shards,
)
from ue_core.data.fsutil import contained
from ue_core.errors import InvalidInputError
from ue_core.release import read_release, verify_release, write_release

tiny_root = tiny.tiny_root  # Tiny ImageNet's test tree, as test_tiny_imagenet builds it
SHAPE = (8, 8, 3)


@pytest.fixture
def secret(tmp_path):
    """``tmp_path/secret/private.png``: an image outside every dataset root below, all pixels 77."""
    path = tmp_path / "secret" / "private.png"
    path.parent.mkdir()
    Image.fromarray(np.full(SHAPE, 77, np.uint8)).save(path)
    return path


@pytest.fixture
def opened(monkeypatch):
    """The paths every local fsspec read or write opens, in order."""
    paths = []
    real_open = LocalFileSystem._open

    def spy(self, path, *args, **kwargs):
        paths.append(os.fspath(path))
        return real_open(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", spy)
    return paths


def _refused(read, entry, why, opened, secret):
    """``read()`` raises an InvalidInputError of one line naming ``entry`` and ``why``; the secret is never
    opened."""
    with pytest.raises(InvalidInputError) as error:
        read()
    message = str(error.value)
    assert f"{entry!r}" in message and why in message and "\n" not in message
    assert not any(os.path.realpath(p) == str(secret) for p in opened)
    return message


def _png_folder(root, dataset_factory):
    write_png_folder(dataset_factory(n=4, shape=SHAPE), root)
    return root


def _list_in_labels_csv(root, file_name):
    """Point labels.csv's last row at ``file_name``."""
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    rows[-1][0] = file_name
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


# ------------------------------------------------------------------------------------ the rule itself


def test_contained_normalises_and_refuses_local_entries(tmp_path):
    fs, root = LocalFileSystem(), str(tmp_path / "root")
    (tmp_path / "root" / "a").mkdir(parents=True)
    assert contained(fs, root, "a/../b.png", "labels.csv entry") == f"{root}/b.png"
    assert contained(fs, root, "./a//c.png", "labels.csv entry") == f"{root}/a/c.png"
    for entry, why in (
        ("../x.png", f"leaves the dataset root {root}"),
        ("a/../../x.png", "leaves the dataset root"),
        ("..", "leaves the dataset root"),
        ("/etc/passwd", "is an absolute path"),
        ("file:///etc/passwd", "is a URL"),
        ("s3://bucket/key.png", "is a URL"),
    ):
        with pytest.raises(InvalidInputError, match="^labels.csv entry ") as error:
            contained(fs, root, entry, "labels.csv entry")
        assert f"{entry!r}" in str(error.value) and why in str(error.value)


def test_object_store_keys_stay_under_the_prefix():
    """No symlinks on an object store: the key is normalised and must stay under the prefix."""
    fs = fsspec.filesystem("memory")
    assert contained(fs, "bucket/prefix", "images/./0.png", "file") == "bucket/prefix/images/0.png"
    assert contained(fs, "bucket/prefix", "a/../0.png", "file") == "bucket/prefix/0.png"
    for entry in ("../other/0.png", "images/../../prefix2/0.png", "/bucket/other/0.png", "s3://bucket/x.png"):
        with pytest.raises(InvalidInputError, match="bucket/prefix"):
            contained(fs, "bucket/prefix", entry, "labels.csv entry")


def test_symlinks_inside_the_root_are_read(tmp_path, dataset_factory):
    root = _png_folder(tmp_path / "png", dataset_factory)
    os.symlink("0.png", root / "images" / "alias.png")
    _list_in_labels_csv(root, "images/alias.png")
    dataset = read_png_folder(root)
    np.testing.assert_array_equal(dataset.images[-1], dataset.images[0])


# ------------------------------------------------------------------------------- PNG folder, labels.csv


def test_png_folder_traversal_is_refused(tmp_path, dataset_factory, secret, opened):
    """The reported bug: labels.csv lists ../../secret/private.png, whose pixels ended up in the release."""
    root = _png_folder(tmp_path / "data" / "png", dataset_factory)
    _list_in_labels_csv(root, "../../secret/private.png")
    message = _refused(lambda: read_png_folder(root), "../../secret/private.png", "leaves the dataset root",
                       opened, secret)
    assert message == f"labels.csv entry '../../secret/private.png' leaves the dataset root {root}"
    _refused(lambda: read_dataset(root), "../../secret/private.png", str(root), opened, secret)


def test_png_folder_absolute_and_url_entries_are_refused(tmp_path, dataset_factory, secret, opened):
    root = _png_folder(tmp_path / "png", dataset_factory)
    for entry, why in ((str(secret), "is an absolute path"), (f"file://{secret}", "is a URL")):
        _list_in_labels_csv(root, entry)
        _refused(lambda: read_png_folder(root), entry, why, opened, secret)


def test_png_folder_symlink_out_of_the_root_is_refused(tmp_path, dataset_factory, secret, opened):
    root = _png_folder(tmp_path / "png", dataset_factory)
    (root / "images" / "3.png").unlink()
    os.symlink(secret, root / "images" / "3.png")
    _refused(lambda: read_png_folder(root), "images/3.png", "through a symlink", opened, secret)
    (root / "labels.csv").rename(tmp_path / "labels.csv")
    os.symlink(tmp_path / "labels.csv", root / "labels.csv")  # the table itself outside the root
    _refused(lambda: read_png_folder(root), "labels.csv", "through a symlink", opened, secret)


def test_object_store_png_folder_cannot_reach_outside_its_prefix(dataset_factory):
    """A PNG folder on an object store whose labels.csv names a key beside its prefix."""
    fs = fsspec.filesystem("memory")
    write_png_folder(dataset_factory(n=4, shape=SHAPE, seed=1), "memory://bucket/secret")
    write_png_folder(dataset_factory(n=4, shape=SHAPE), "memory://bucket/public")
    table = fs.cat("/bucket/public/labels.csv").decode().replace("images/3.png", "../secret/images/0.png")
    fs.pipe("/bucket/public/labels.csv", table.encode())
    try:
        with pytest.raises(InvalidInputError, match="'../secret/images/0.png' leaves the dataset root"):
            read_dataset("memory://bucket/public")
    finally:
        fs.rm("/bucket", recursive=True)


# ---------------------------------------------------------------------------------------- class folder


def test_class_folder_symlinks_out_of_the_root_are_refused_or_never_listed(tmp_path, secret, opened):
    root = tmp_path / "classes"
    for class_name in ("cat", "dog"):
        (root / class_name).mkdir(parents=True)
        Image.fromarray(np.zeros(SHAPE, np.uint8)).save(root / class_name / "0.png")
    os.symlink(secret, root / "cat" / "1.png")
    _refused(lambda: read_class_folder(root), "cat/1.png", "leaves the dataset root", opened, secret)
    (root / "cat" / "1.png").unlink()
    os.symlink(secret.parent, root / "bird")  # a linked folder is not a class folder: it is never listed
    dataset = read_dataset(root)
    assert dataset.class_names == ("cat", "dog") and len(dataset) == 2
    assert not any(os.path.realpath(p) == str(secret) for p in opened)


# --------------------------------------------------------------------------------------- Tiny ImageNet


def test_tiny_imagenet_annotation_names_stay_in_val_images(tiny_root, secret, opened):
    annotations = tiny_root / "val" / "val_annotations.txt"
    entry = "../../../secret/private.png"
    annotations.write_text(annotations.read_text() + f"{entry}\t{tiny.WNIDS[0]}\t0\t0\t1\t1\n")
    _refused(lambda: read_tiny_imagenet(tiny_root, "val"), entry, "leaves the dataset root", opened, secret)
    annotations.write_text(annotations.read_text().replace(entry, str(secret)))
    _refused(lambda: read_tiny_imagenet(tiny_root, "val"), str(secret), "is an absolute path", opened, secret)


def test_tiny_imagenet_image_symlinks_out_of_the_root_are_refused(tiny_root, secret, opened):
    wnid = tiny.WNIDS[0]
    os.symlink(secret, tiny_root / "train" / wnid / "images" / "x.JPEG")
    _refused(lambda: read_tiny_imagenet(tiny_root, "train"), f"train/{wnid}/images/x.JPEG",
             "through a symlink", opened, secret)
    os.symlink(secret, tiny_root / "val" / "images" / "val_9.JPEG")
    _refused(lambda: read_tiny_imagenet(tiny_root, "val"), "val/images/val_9.JPEG", "through a symlink",
             opened, secret)


# ------------------------------------------------------------------------ shards, CIFAR, idx, releases


def test_shard_cifar_and_idx_folders_symlinked_out_of_the_root_are_refused(
    tmp_path, dataset_factory, fashion_mnist_root
):
    outside = tmp_path / "outside"
    write_shards(dataset_factory(n=4, shape=SHAPE), outside / "shards")
    (tmp_path / "shards").mkdir()
    os.symlink(outside / "shards" / "part-00000.parquet", tmp_path / "shards" / "part-00000.parquet")
    with pytest.raises(InvalidInputError, match="^file 'part-00000.parquet' leaves .* through a symlink$"):
        read_shards(tmp_path / "shards")
    write_cifar_batches(dataset_factory(n=10, shape=(32, 32, 3), num_classes=10), outside)
    (tmp_path / "cifar").mkdir()
    os.symlink(outside / "cifar-10-batches-py", tmp_path / "cifar" / "cifar-10-batches-py")
    with pytest.raises(InvalidInputError, match="^file 'cifar-10-batches-py/batches.meta' leaves"):
        read_dataset(tmp_path / "cifar")
    (tmp_path / "idx").mkdir()
    os.symlink(fashion_mnist_root / "FashionMNIST", tmp_path / "idx" / "FashionMNIST")
    with pytest.raises(InvalidInputError, match="^file 'FashionMNIST/raw/t10k-images-idx3-ubyte' leaves"):
        read_dataset(tmp_path / "idx", split="test")


@pytest.fixture
def release(tmp_path, dataset_factory):
    out = tmp_path / "release"
    write_release(dataset_factory(n=4, shape=SHAPE), out, {"method": "test"})
    return out


def test_manifest_entries_outside_the_release_are_refused(release, secret, opened):
    manifest = json.loads((release / "manifest.json").read_text())
    for entry, why in (("../secret/private.png", "leaves the dataset root"), (str(secret), "absolute path")):
        files = {**manifest["files"], entry: "0" * 64}
        (release / "manifest.json").write_text(json.dumps({**manifest, "files": files}))
        message = _refused(lambda: verify_release(release), entry, why, opened, secret)
        assert message.startswith(f"manifest.json entry {entry!r}")


def test_release_parquet_folder_symlinked_out_is_refused(release, tmp_path):
    (release / "parquet").rename(tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", release / "parquet")
    for read in (read_release, read_dataset):
        with pytest.raises(InvalidInputError, match="^folder 'parquet' leaves .* through a symlink$"):
            read(release)


def test_writers_refuse_a_symlink_target_and_never_write_through_it(tmp_path, dataset_factory):
    """The choice (ue_core.data.atomic): a link at the output is refused, overwrite or not, dangling or not;
    neither the link nor what it points at changes."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("untouched")
    os.symlink(target, tmp_path / "link")
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    for out in (tmp_path / "link", tmp_path / "dangling"):
        for overwrite in (False, True):
            with pytest.raises(InvalidInputError, match=f"^output is a symbolic link: {out} "):
                write_release(dataset_factory(n=4, shape=SHAPE), out, {}, overwrite=overwrite)
    assert os.readlink(tmp_path / "link") == str(target) and os.readlink(tmp_path / "dangling")
    assert [p.name for p in target.iterdir()] == ["keep.txt"] and not (tmp_path / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "target"]  # no staging left

"""Writers refuse to replace existing output by accident and leave nothing behind when they fail."""

import os
import uuid

import fsspec
import numpy as np
import pytest

import ue_core.data.folder
import ue_core.data.shards
from ue_core.data import (
    read_dataset,
    read_shards,
    write_cifar_batches,
    write_idx,
    write_image_folder,
    write_png_folder,
    write_shards,
)
from ue_core.errors import InvalidInputError


def _fail_on_call(number, real):
    """A stand-in for ``real`` that raises on its ``number``-th call."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    return wrapper


WRITERS = {
    "shards": lambda d, out, **kw: write_shards(d, out, rows_per_shard=4, **kw),
    "png": lambda d, out, **kw: write_png_folder(d, out, **kw),
    "cifar": lambda d, out, **kw: write_cifar_batches(d, out, **kw),
    "idx": lambda d, out, **kw: write_idx(d, out, **kw),
    "imagefolder": lambda d, out, **kw: write_image_folder(d, out, **kw),
}
SHAPES = {"shards": (5, 5, 3), "png": (5, 5, 3), "cifar": (32, 32, 3), "idx": (28, 28, 1),
          "imagefolder": (5, 5, 3)}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_refuses_non_empty_output_unless_overwrite(tmp_path, dataset_factory, writer):
    dataset = dataset_factory(n=6, shape=SHAPES[writer])
    output = tmp_path / "out"
    output.mkdir()
    target = output / "cifar-10-batches-py" if writer == "cifar" else output
    target.mkdir(exist_ok=True)
    (target / "keep.txt").write_text("precious")
    with pytest.raises(InvalidInputError) as error:
        WRITERS[writer](dataset, output)
    assert str(target) in str(error.value) and "overwrite" in str(error.value)
    assert os.listdir(target) == ["keep.txt"]
    WRITERS[writer](dataset, output, overwrite=True)
    assert "keep.txt" not in os.listdir(target)
    assert len(read_dataset(output)) == 6


def test_empty_existing_directory_is_fine(tmp_path, dataset_factory):
    (tmp_path / "out").mkdir()
    write_shards(dataset_factory(), tmp_path / "out")
    assert len(read_shards(tmp_path / "out")) == 12


def _entries(directory):
    return sorted(os.listdir(directory))


def test_failed_shard_write_leaves_nothing(tmp_path, dataset_factory, monkeypatch):
    monkeypatch.setattr(
        ue_core.data.shards.pq, "write_table", _fail_on_call(2, ue_core.data.shards.pq.write_table)
    )
    with pytest.raises(OSError, match="simulated"):
        write_shards(dataset_factory(n=12), tmp_path / "out", rows_per_shard=4)
    assert _entries(tmp_path) == []


def test_failed_overwrite_keeps_the_previous_output(tmp_path, dataset_factory, same_rows, monkeypatch):
    previous = dataset_factory(n=5, seed=1)
    write_png_folder(previous, tmp_path / "out")
    monkeypatch.setattr(ue_core.data.folder, "encode_png", _fail_on_call(3, ue_core.data.folder.encode_png))
    with pytest.raises(OSError, match="simulated"):
        write_png_folder(dataset_factory(n=5, seed=2), tmp_path / "out", overwrite=True)
    assert _entries(tmp_path) == ["out"]
    same_rows(read_dataset(tmp_path / "out"), previous)


def test_failed_write_to_fsspec_uri_leaves_nothing(dataset_factory, monkeypatch):
    fs = fsspec.filesystem("memory")
    parent = f"/atomic-{uuid.uuid4().hex}"
    fs.makedirs(parent)
    monkeypatch.setattr(
        ue_core.data.shards.pq, "write_table", _fail_on_call(3, ue_core.data.shards.pq.write_table)
    )
    with pytest.raises(OSError, match="simulated"):
        write_shards(dataset_factory(n=12), f"memory://{parent}/out", rows_per_shard=4)
    assert fs.ls(parent, detail=False) == []
    monkeypatch.undo()
    files = write_shards(dataset_factory(n=12), f"memory://{parent}/out", rows_per_shard=4)
    assert fs.ls(parent, detail=False) == [f"{parent}/out"] and len(files) == 3
    fs.rm(parent, recursive=True)


def test_invalid_input_creates_nothing(tmp_path, dataset_factory):
    with pytest.raises(InvalidInputError):
        write_shards(dataset_factory(n=3), tmp_path / "out", extra={"delta": np.zeros(3, np.float32)})
    assert _entries(tmp_path) == []


def test_an_object_store_release_is_copied_with_its_manifest_last(dataset_factory, monkeypatch):
    """Off a local disk the publish is a copy file by file: a writer killed during it must leave no manifest,
    so manifest.json is copied only after every other file (the early release's own manifest included)."""
    from fsspec.implementations.memory import MemoryFileSystem

    from ue_core.release import verify_release, write_release

    copied: list[list[str]] = []
    real_copy = MemoryFileSystem.copy

    def recording_copy(self, path1, path2, *args, **kwargs):
        copied.append(list(path2) if isinstance(path2, list) else [path2])
        return real_copy(self, path1, path2, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "copy", recording_copy)
    out = f"memory://atomic-{uuid.uuid4().hex}/release"
    early = (dataset_factory(n=6, shape=(5, 5, 3), seed=1), {"method": "test"})
    write_release(dataset_factory(n=6, shape=(5, 5, 3)), out, {"method": "test"}, formats=("parquet", "png"),
                  snapshots={1: early})
    release = out.removeprefix("memory://")
    *others, final = copied
    assert [name.lstrip("/") for name in final] == [f"{release}/manifest.json"]
    everything = [name.lstrip("/") for group in others for name in group]
    assert len(everything) > 6 and f"{release}/manifest.json" not in everything
    assert any(name.endswith("rounds/round-00001/manifest.json") for name in everything)
    assert verify_release(out)["count"] == 6

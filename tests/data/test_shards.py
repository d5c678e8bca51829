"""The Parquet shard format, on local disk and through fsspec's memory:// filesystem."""

import json
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ue_core.data import read_shards, read_shards_with_extra, write_shards
from ue_core.errors import DatasetFormatError, InvalidInputError


@pytest.fixture
def memory_uri():
    uri = f"memory://shards-test-{uuid.uuid4().hex}"
    yield uri
    fs = fsspec.filesystem("memory")
    if fs.exists(uri):
        fs.rm(uri, recursive=True)


@pytest.fixture(params=["local", "memory"])
def output_uri(request, tmp_path, memory_uri):
    return str(tmp_path / "shards") if request.param == "local" else f"{memory_uri}/shards"


def test_round_trip_with_several_shards(output_uri, dataset_factory, same_rows):
    dataset = dataset_factory(n=23, shape=(4, 5, 3), num_classes=6, index=np.arange(23)[::-1] * 3 + 100)
    files = write_shards(dataset, output_uri, rows_per_shard=10)
    assert files == [f"{output_uri}/part-{i:05d}.parquet" for i in range(3)]
    loaded = read_shards(output_uri)
    same_rows(loaded, dataset)
    assert loaded.class_names == dataset.class_names and loaded.name == dataset.name
    assert loaded.num_classes == 6
    same_rows(read_shards(files[1]), dataset.sorted_by_index().subset(np.arange(10, 20)))  # one file alone


def test_schema_and_metadata_are_as_documented(tmp_path, dataset_factory):
    dataset = dataset_factory(n=5, shape=(2, 3, 1))
    delta = np.random.default_rng(0).normal(size=(5, 1, 2, 3)).astype(np.float32)
    (path,) = write_shards(dataset, tmp_path / "s", extra={"delta": delta})
    table = pq.read_table(path)
    assert table.schema.field("index").type == pa.int64() and table.schema.field("label").type == pa.int32()
    assert table.schema.field("image").type == pa.binary() and table.schema.field("delta").type == pa.binary()
    assert table.column("image")[0].as_py() == dataset.images[0].tobytes()
    metadata = json.loads(table.schema.metadata[b"ue_core"])
    assert metadata["image_shape"] == [2, 3, 1] and metadata["extra_shapes"] == {"delta": [1, 2, 3]}
    assert metadata["num_classes"] == 4 and metadata["class_names"] == list(dataset.class_names)


def test_extra_columns_come_back_aligned_by_index(output_uri, dataset_factory):
    dataset = dataset_factory(n=9, shape=(3, 3, 3), index=np.array([5, 1, 8, 0, 3, 2, 7, 6, 4]))
    rng = np.random.default_rng(1)
    delta = rng.normal(size=(9, 3, 3, 3)).astype(np.float32)
    moment = rng.random(size=(9, 3, 3, 3))  # float64: stored as float32
    write_shards(dataset, output_uri, rows_per_shard=4, extra={"delta": delta, "adam_m": moment})
    loaded, extra = read_shards_with_extra(output_uri)
    position = {int(i): row for row, i in enumerate(dataset.index)}
    for row, index in enumerate(loaded.index):
        np.testing.assert_array_equal(extra["delta"][row], delta[position[int(index)]])
        np.testing.assert_array_equal(extra["adam_m"][row], moment[position[int(index)]].astype(np.float32))
    assert extra["delta"].dtype == np.float32 and set(extra) == {"delta", "adam_m"}


def test_not_parquet_is_an_error_naming_the_file(tmp_path, dataset_factory):
    write_shards(dataset_factory(), tmp_path / "s", rows_per_shard=5)
    bad = tmp_path / "s" / "part-00001.parquet"
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(DatasetFormatError) as error:
        read_shards(tmp_path / "s")
    assert str(bad) in str(error.value) and "\n" not in str(error.value)


def test_truncated_shard_is_an_error_naming_the_file(tmp_path, dataset_factory):
    (path,) = write_shards(dataset_factory(), tmp_path / "s")
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(content[: len(content) - 40])
    with pytest.raises(DatasetFormatError, match="part-00000.parquet"):
        read_shards(tmp_path / "s")


def test_parquet_without_our_schema_is_rejected(tmp_path):
    directory = tmp_path / "s"
    directory.mkdir()
    pq.write_table(pa.table({"index": [0], "label": [1], "image": [b"x"]}), directory / "a.parquet")
    with pytest.raises(DatasetFormatError, match="without ue_core shard metadata"):
        read_shards(directory)


def test_image_bytes_of_wrong_length_are_rejected(tmp_path, dataset_factory):
    (path,) = write_shards(dataset_factory(n=4, shape=(2, 2, 3)), tmp_path / "s")
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[2] = images[2][:-1]
    table = table.set_column(2, pa.field("image", pa.binary()), pa.array(images, pa.binary()))
    pq.write_table(table, path)  # the schema metadata travels with the table
    with pytest.raises(DatasetFormatError) as error:
        read_shards(tmp_path / "s")
    assert "row 2 holds 11 bytes, 12 expected" in str(error.value) and path in str(error.value)


def test_missing_column_and_inconsistent_metadata(tmp_path, dataset_factory):
    (path,) = write_shards(dataset_factory(n=4), tmp_path / "s")
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["label"]), path)
    with pytest.raises(DatasetFormatError, match="'label'"):
        read_shards(path)
    write_shards(dataset_factory(n=4, shape=(8, 8, 3)), tmp_path / "a")
    write_shards(dataset_factory(n=4, shape=(4, 4, 3), index=np.arange(4, 8)), tmp_path / "b")
    (tmp_path / "b" / "part-00000.parquet").rename(tmp_path / "a" / "part-00001.parquet")
    with pytest.raises(DatasetFormatError, match="part-00001.parquet"):
        read_shards(tmp_path / "a")


def test_bad_arguments(tmp_path, dataset_factory):
    dataset = dataset_factory(n=3)
    with pytest.raises(InvalidInputError, match="rows_per_shard"):
        write_shards(dataset, tmp_path / "s", rows_per_shard=0)
    with pytest.raises(InvalidInputError, match="'image'"):
        write_shards(dataset, tmp_path / "s", extra={"image": np.zeros((3, 2), np.float32)})
    with pytest.raises(InvalidInputError, match="'delta'"):
        write_shards(dataset, tmp_path / "s", extra={"delta": np.zeros((2, 2), np.float32)})
    with pytest.raises(DatasetFormatError, match="no such file"):
        read_shards(tmp_path / "missing")
    assert not (tmp_path / "s").exists()

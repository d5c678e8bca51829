"""A release written batch by batch (ue_core.release.open_release) is the release written at once, file for file."""

import numpy as np
import pytest

from ue_core.data.dataset import ImageDataset
from ue_core.data.fsutil import filesystem
from ue_core.data.shards import ShardWriter, empty_like, read_shards, shard_set_digest, write_shards
from ue_core.errors import InvalidInputError
from ue_core.release import open_release, read_release, verify_release, write_release

FORMATS = ("parquet", "png", "cifar", "imagefolder", "delta")
SPLITS = (1, 7, 2, 13)  # uneven batches of the 23 rows, across the CIFAR-10 batch boundaries (5, 5, 5, 4, 4)


def cifar_like(count: int, seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    return ImageDataset(rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
                        np.arange(count) % 10, 10, class_names=tuple(f"c{k}" for k in range(10)), name="tiny")


def perturbed(clean: ImageDataset, seed: int) -> ImageDataset:
    noise = np.random.default_rng(seed).integers(-8, 9, clean.images.shape)
    return clean.with_images(np.clip(clean.images.astype(np.int16) + noise, 0, 255).astype(np.uint8))


def batches(dataset: ImageDataset, sizes=SPLITS):
    starts = np.cumsum((0, *sizes))
    return [dataset.subset(np.arange(start, stop)) for start, stop in zip(starts[:-1], starts[1:])]


@pytest.fixture(scope="module")
def data():
    clean = cifar_like(sum(SPLITS), seed=0)
    return clean, perturbed(clean, 1), perturbed(clean, 2), cifar_like(6, seed=3)


def test_batch_by_batch_gives_the_same_files_as_at_once(data, tmp_path):
    clean, release, snapshot, test = data
    at_once = write_release(release, tmp_path / "at-once", {"method": "test"}, formats=FORMATS, test=test,
                            snapshots={2: (snapshot, {"method": "test", "rounds": 2})}, clean=clean)
    with open_release(tmp_path / "batched") as folder:
        snapshot_writer = folder.writer(clean, FORMATS, test, rounds=2)
        for snapshot_rows, clean_rows in zip(batches(snapshot), batches(clean)):
            snapshot_writer.add(snapshot_rows, clean_rows)
        snapshot_writer.finish({"method": "test", "rounds": 2})
        writer = folder.writer(clean, FORMATS, test)
        for release_rows, clean_rows in zip(batches(release), batches(clean)):
            writer.add(release_rows, clean_rows)
        batched = writer.finish({"method": "test", "snapshots": {"2": "rounds/round-00002"}})
    # parquet 1, png 23 + 2, cifar meta + 5 + test, imagefolder 23 + 1, delta 3; twice, and the snapshot manifest
    assert len(at_once["files"]) == 2 * (1 + 25 + 7 + 24 + 3) + 1
    assert batched == at_once
    verify_release(tmp_path / "batched")
    assert np.array_equal(read_release(tmp_path / "batched").images, release.images)


def test_rows_out_of_index_order_are_refused_and_nothing_is_published(data, tmp_path):
    clean, release, _, _ = data
    first, second, *_ = batches(release)
    with pytest.raises(InvalidInputError, match="ascending index order"):
        with open_release(tmp_path / "out") as folder:
            writer = folder.writer(clean, ("parquet",))
            writer.add(second)
            writer.add(first)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_a_writer_given_fewer_rows_than_its_count_publishes_nothing(data, tmp_path):
    clean, release, _, _ = data
    with pytest.raises(InvalidInputError, match="got 1 rows, not 23"):
        with open_release(tmp_path / "out") as folder:
            writer = folder.writer(clean, ("parquet", "cifar"))
            writer.add(batches(release)[0])
            writer.finish({"method": "test"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("rows_per_shard", [1, 4, 23, 100])
def test_shard_writer_parts_do_not_depend_on_the_batches(data, tmp_path, rows_per_shard):
    clean = data[0]
    write_shards(clean, tmp_path / "at-once", rows_per_shard=rows_per_shard)
    fs, path = filesystem(str(tmp_path / "batched"))
    writer = ShardWriter(fs, path, clean, rows_per_shard)
    for rows in batches(clean):
        writer.add(rows)
    names = writer.close()
    assert names == sorted(p.name for p in (tmp_path / "at-once").iterdir())
    for name in names:
        assert (tmp_path / "batched" / name).read_bytes() == (tmp_path / "at-once" / name).read_bytes()
    back = read_shards(tmp_path / "batched")
    assert np.array_equal(back.images, clean.images) and np.array_equal(back.index, clean.index)


def test_a_shard_set_digest_is_the_dataset_digest_read_part_by_part(tmp_path):
    rng = np.random.default_rng(4)
    dataset = ImageDataset(rng.integers(0, 256, (23, 5, 5, 3), dtype=np.uint8), rng.integers(0, 4, 23), 4,
                           index=rng.permutation(100)[:23])
    write_shards(dataset, tmp_path / "shards", rows_per_shard=4)
    assert shard_set_digest(tmp_path / "shards") == dataset.digest()
    assert shard_set_digest(tmp_path / "shards") != dataset.with_images(dataset.images ^ 1).digest()
    like = empty_like(tmp_path / "shards")
    assert (len(like), like.image_shape, like.num_classes, like.class_names) == (0, (5, 5, 3), 4, dataset.class_names)

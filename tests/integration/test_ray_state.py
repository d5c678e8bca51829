"""The Ray engine's state in bounded pieces, on a real local Ray: the surrogate's training set filled a block at
a time is the all-at-once one value for value, the canonical layout keeps every block within its byte
bound in equal blocks, a multiple of the pass actors, and the finish's read of a written state gives every row
once, in index order, a batch at a time."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch

from pipelines.ray_engine import state as state_module
from pipelines.ray_engine.resources import Resources
from pipelines.ray_engine.state import (
    DatasetInfo,
    canonical_layout,
    images_and_delta,
    index_ordered_batches,
    state_row_bytes,
    state_rows,
    training_set,
)

IMAGE_SHAPE = (5, 4, 3)  # H, W, C


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def shuffled_state(rows: int, seed: int) -> ray.data.Dataset:
    """State rows (index, label, image, delta, steps) in a shuffled index order."""
    rng = np.random.default_rng(seed)
    index = rng.permutation(np.arange(1000, 1000 + rows))
    height, width, channels = IMAGE_SHAPE
    return ray.data.from_items([
        {"index": int(i), "label": int(rng.integers(0, 4)),
         "image": rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8),
         "delta": rng.uniform(-0.03, 0.03, (channels, height, width)).astype(np.float32), "steps": 0}
        for i in index
    ])


def resources(actors: int) -> Resources:
    return Resources(pass_nodes=("node",) * actors, pass_cpus=0.1, pass_gpus=0.0, pass_threads=1, task_cpus=0.1,
                     task_gpus=0.0, task_threads=1, task_nodes=("node",), trainer_cpus=0.1, trainer_gpus=0.0,
                     trainer_threads=1)


@pytest.mark.parametrize("with_delta", [True, False])
def test_the_training_set_filled_a_block_at_a_time_is_the_all_at_once_one(local_ray, with_delta):
    blocks = shuffled_state(37, seed=3).repartition(5).materialize().to_arrow_refs()
    assert len(blocks) == 5
    images, labels = training_set(blocks, with_delta=with_delta)

    rows = state_rows(ray.get(blocks), ("index", "label", "image", "delta"))
    x, delta = images_and_delta(rows)
    expected = x + delta if with_delta else x
    assert images.dtype == torch.float32 and images.shape == (37, 3, 5, 4)
    assert torch.equal(images, expected)
    assert torch.equal(labels, torch.from_numpy(rows["label"]))
    # and independently of state_rows: row r holds the image with the r-th smallest index
    by_index = {row["index"]: row for block in ray.get(blocks) for row in block.to_pylist()}
    for r, index in enumerate(range(1000, 1037)):
        image = torch.tensor(np.asarray(by_index[index]["image"], np.uint8)).permute(2, 0, 1).float() / 255
        if with_delta:
            image = image + torch.tensor(np.asarray(by_index[index]["delta"], np.float32))
        assert torch.equal(images[r], image) and labels[r] == by_index[index]["label"]


def test_the_canonical_layout_bounds_each_block(local_ray, monkeypatch):
    columns = ["index", "label", "image", "delta", "steps"]
    row_bytes = state_row_bytes(IMAGE_SHAPE, columns)
    assert row_bytes == 60 + 4 * 60 + 3 * 8
    state = shuffled_state(40, seed=4).materialize()  # its blocks in a fixed order: the order given
    info = DatasetInfo(IMAGE_SHAPE, 4, 40, "tiny")

    small = canonical_layout(state, columns, info, resources(actors=2))
    assert small.num_blocks() == 4  # two per actor while the state is small

    monkeypatch.setattr(state_module, "BLOCK_BYTES", 7 * row_bytes)  # 40 rows → 6 blocks, rounded up to 3 per actor
    bounded = canonical_layout(state, columns, info, resources(actors=2))
    sizes = [ray.get(ref).num_rows for ref in bounded.to_arrow_refs()]
    assert len(sizes) == 6 and sum(sizes) == 40 and max(sizes) - min(sizes) <= 1
    assert max(sizes) * row_bytes <= 7 * row_bytes
    # the rows in the order given, block after block
    index = np.concatenate([ray.get(ref).column("index").to_numpy() for ref in bounded.to_arrow_refs()])
    given = np.concatenate([ray.get(ref).column("index").to_numpy() for ref in state.to_arrow_refs()])
    assert np.array_equal(index, given)


@pytest.mark.parametrize("row_group_rows", [None, 4])
def test_the_finish_reads_a_written_state_in_index_order_a_batch_at_a_time(local_ray, tmp_path, row_group_rows):
    columns = ["index", "label", "image", "delta"]
    state = shuffled_state(53, seed=5).repartition(4).materialize()
    state.write_parquet(str(tmp_path / "state"), use_dictionary=False)
    if row_group_rows:  # several row groups in a file, as a state written by another writer may hold
        for path in (tmp_path / "state").glob("*.parquet"):
            pq.write_table(pq.read_table(path), path, row_group_size=row_group_rows)
        assert max(pq.ParquetFile(path).num_row_groups for path in (tmp_path / "state").glob("*.parquet")) > 1

    batches = list(index_ordered_batches(str(tmp_path / "state"), columns, batch_rows=6))

    assert [len(batch["index"]) for batch in batches] == [6] * 8 + [5]
    assert all(set(batch) == set(columns) for batch in batches)
    index = np.concatenate([batch["index"] for batch in batches])
    assert np.array_equal(index, np.arange(1000, 1053))
    # each row's values are those the state holds under its index (read independently, by Ray)
    by_index = {row["index"]: row for row in state.iter_rows()}
    for name in ("label", "image", "delta"):
        values = np.concatenate([batch[name] for batch in batches])
        assert np.array_equal(values, np.stack([np.asarray(by_index[i][name]) for i in index]))


def test_the_finish_reads_an_empty_state_as_no_batches(tmp_path):
    (tmp_path / "state").mkdir()
    assert list(index_ordered_batches(str(tmp_path / "state"), ["index"], batch_rows=6)) == []

"""The Ray engine's finish streams the release from its work directory a batch at a time (release_pairs):
batches of bounded size in index order, the same release as quantising every row at once, and a state that
lost a row is refused."""

import numpy as np
import pytest
import ray
import torch

from pipelines.ray_engine.engine import release_pairs
from pipelines.ray_engine.state import JobState, collect, read_state
from pipelines.storage import WorkDir
from ue_core.data.dataset import ImageDataset
from ue_core.data.shards import empty_like, write_shards
from ue_core.errors import InvalidInputError
from ue_core.methods.base import release_of
from ue_core.pga import Budget

BUDGET = Budget(eps=8 / 255)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def work_dir_with_a_round(root, clean: ImageDataset, delta: np.ndarray, keep: np.ndarray) -> JobState:
    """A job's work directory: ``clean`` ingested, and round 0's state holding δ for the rows ``keep``
    (written out of index order, as the rounds leave it)."""
    job = JobState(WorkDir(str(root)))
    write_shards(clean, job.ingest_uri, rows_per_shard=9)
    shuffled = np.random.default_rng(0).permutation(keep)
    state = ray.data.from_items([
        {"index": int(clean.index[row]), "label": int(clean.labels[row]), "image": clean.images[row],
         "delta": delta[row]} for row in shuffled
    ])
    job.write_round(0, state, {"name": "none"})
    return job


def test_the_release_comes_in_bounded_batches_in_index_order(local_ray, tmp_path):
    rng = np.random.default_rng(1)
    clean = ImageDataset(rng.integers(0, 256, (30, 6, 6, 1), dtype=np.uint8), rng.integers(0, 3, 30), 3,
                         index=np.arange(100, 130), class_names=("a", "b", "c"), name="tiny")
    delta = rng.uniform(-0.1, 0.1, (30, 1, 6, 6)).astype(np.float32)
    job = work_dir_with_a_round(tmp_path / "work", clean, delta, np.arange(30))
    ingested = collect(read_state(job.ingest_uri), ["index"])["index"]
    batches = list(release_pairs(job, 1, empty_like(job.ingest_uri), ingested, BUDGET, batch_rows=7))
    assert [len(rows) for rows, _ in batches] == [7, 7, 7, 7, 2]
    index = np.concatenate([rows.index for rows, _ in batches])
    assert np.array_equal(index, clean.index)
    expected = release_of(clean, torch.from_numpy(delta), BUDGET)
    assert np.array_equal(np.concatenate([release.images for _, release in batches]), expected.images)
    assert np.array_equal(np.concatenate([rows.images for rows, _ in batches]), clean.images)
    assert all(rows.class_names == ("a", "b", "c") and rows.name == "tiny" for rows, _ in batches)


def test_a_state_that_lost_a_row_is_refused(local_ray, tmp_path):
    rng = np.random.default_rng(2)
    clean = ImageDataset(rng.integers(0, 256, (12, 6, 6, 1), dtype=np.uint8), rng.integers(0, 3, 12), 3)
    delta = np.zeros((12, 1, 6, 6), np.float32)
    job = work_dir_with_a_round(tmp_path / "work", clean, delta, np.delete(np.arange(12), 5))
    ingested = collect(read_state(job.ingest_uri), ["index"])["index"]
    with pytest.raises(InvalidInputError, match="does not hold exactly the ingested indices"):
        list(release_pairs(job, 1, empty_like(job.ingest_uri), ingested, BUDGET, batch_rows=4))

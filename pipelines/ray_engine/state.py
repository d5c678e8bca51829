"""The Ray engine's state: the rows each pass reads and writes, the surrogate's spec, and the work directory
that makes a job resumable (a small object of its own, :class:`JobState`).

State rows: index, label, image (uint8 H × W × C), δ (float32 C × H × W), Adam's moments under
``update: adam``, and the per-row step count.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import torch
from ray.data.dataset import MaterializedDataset

from pipelines.config import upgrade_keys
from pipelines.ray_engine.resources import Resources
from pipelines.storage import WorkDir, pyarrow_filesystem, remove
from ue_core.data.fsutil import filesystem
from ue_core.errors import InvalidInputError
from ue_core.models import Classifier, build_model
from ue_core.pga import PGAConfig

MOMENT_COLUMNS = ("exp_avg", "exp_avg_sq")

Rows = dict[str, np.ndarray]
"""Columns of the same rows: name → array whose first axis is the row."""


def state_columns(pga: PGAConfig) -> list[str]:
    """The columns of the state shards: Adam's two moments only under ``update: adam``.

    The sign and L2 rules never read the moments; storing them would triple the state's bytes moved
    through Arrow in every pass and written every round.
    """
    moments = list(MOMENT_COLUMNS) if pga.update == "adam" else []
    return ["index", "label", "image", "delta", *moments, "steps"]


@dataclass(frozen=True)
class DatasetInfo:
    """What every pass needs to know about the images: (H, W, C), classes, count."""

    image_shape: tuple[int, int, int]
    num_classes: int
    count: int
    name: str

    @staticmethod
    def from_dict(info: dict[str, Any]) -> DatasetInfo:
        return DatasetInfo(tuple(info["image_shape"]), info["num_classes"], info["count"], info["name"])

    def to_dict(self) -> dict[str, Any]:
        return {"image_shape": list(self.image_shape), "num_classes": self.num_classes, "count": self.count,
                "name": self.name}


def load_model(spec: dict[str, Any]) -> Classifier:
    """The surrogate a spec describes (name, num_classes, in_channels, image_size, state_dict), in eval mode."""
    model = build_model(
        spec["name"], spec["num_classes"], in_channels=spec["in_channels"], image_size=spec["image_size"]
    )
    model.load_state_dict(spec["state_dict"])
    return model.eval()


def clean_images(batch: Rows) -> torch.Tensor:
    """Clean images x (B, C, H, W) float32 in [0, 1] from a state batch's uint8 (B, H, W, C) images."""
    x = torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous()


def images_and_delta(batch: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean images x (B, C, H, W) in [0, 1] and δ (B, C, H, W) from a state batch."""
    return clean_images(batch), torch.from_numpy(np.ascontiguousarray(batch["delta"]))


def initial_state(
    batch: Rows, image_shape: tuple[int, int, int], columns: list[str]
) -> Rows:
    """Ingest shard rows (index, label, image bytes) → state rows of ``columns`` (:func:`state_columns`), with
    δ = 0 and zero Adam moments."""
    height, width, channels = image_shape
    images = np.frombuffer(b"".join(batch["image"]), np.uint8).reshape(-1, height, width, channels)
    zeros = np.zeros((len(images), channels, height, width), np.float32)
    state = {
        "index": batch["index"].astype(np.int64),
        "label": batch["label"].astype(np.int64),
        "image": images,
        "delta": zeros,
        **{name: zeros.copy() for name in MOMENT_COLUMNS if name in columns},
        "steps": np.zeros(len(images), np.int64),
    }
    return {name: state[name] for name in columns}


def concat_rows(parts: list[Rows]) -> Rows:
    """The rows of ``parts`` (each with the same columns) one after another."""
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def sorted_by_index(rows: Rows) -> Rows:
    """``rows`` in the order of their ``index`` column (the reference engine's order)."""
    order = np.argsort(rows["index"], kind="stable")
    return {name: values[order] for name, values in rows.items()}


def collect(dataset: ray.data.Dataset, columns: list[str]) -> Rows:
    """Bring ``columns`` of a dataset to the driver, rows sorted by index."""
    return sorted_by_index(concat_rows(
        list(dataset.select_columns(columns).iter_batches(batch_size=None, batch_format="numpy"))
    ))


def block_columns(block: Any, columns: list[str]) -> Rows:
    """``columns`` of one state block (an Arrow table from the object store) as NumPy arrays, rows as stored."""
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(BlockAccessor.for_block(block).select(columns)).to_batch_format("numpy")


def state_rows(blocks: list[Any], columns: tuple[str, ...]) -> Rows:
    """``columns`` of the state blocks (Arrow tables from the object store), rows sorted by index."""
    return sorted_by_index(concat_rows([block_columns(block, list(columns)) for block in blocks]))


def training_set(blocks: list[ray.ObjectRef], with_delta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The surrogate's training set from the state blocks: images x, or x + δ when ``with_delta``, float32
    (N, C, H, W), and labels int64 (N,), rows sorted by index: the same values as :func:`images_and_delta`
    on :func:`state_rows`. Filled a block at a time, so the process holds the images once (4 bytes per
    value) and one block's columns, not every column of every block at once."""
    keys = [block_columns(ray.get(ref), ["index", "label"]) for ref in blocks]
    order = np.argsort(np.concatenate([part["index"] for part in keys]), kind="stable")
    destination = np.empty_like(order)
    destination[order] = np.arange(len(order))  # where each row, taken in block order, lands in index order
    images: torch.Tensor | None = None
    start = 0
    for ref in blocks:
        rows = block_columns(ray.get(ref), ["image", "delta"] if with_delta else ["image"])
        x = clean_images(rows)
        if images is None:
            images = torch.empty((len(order), *x.shape[1:]), dtype=torch.float32)
        rows_here = torch.from_numpy(destination[start:start + len(x)])
        images[rows_here] = x + torch.from_numpy(np.ascontiguousarray(rows["delta"])) if with_delta else x
        start += len(x)
    if images is None:
        raise InvalidInputError("the state holds no rows")
    labels = torch.from_numpy(np.concatenate([part["label"] for part in keys])[order].astype(np.int64))
    return images, labels


BLOCK_BYTES = 128 * 2**20
"""A state block's bytes at most. A pass actor's call holds a few copies of its block (the Arrow columns,
their NumPy views, the new δ, the block it returns: ~16 bytes per pixel value, bench/README.md "Scale"),
so bounding the block bounds a pass actor's memory whatever N."""


def state_row_bytes(image_shape: tuple[int, int, int], columns: list[str]) -> int:
    """Bytes of one state row of ``columns`` (:func:`state_columns`): uint8 image, float32 δ and moments,
    int64 index, label and steps."""
    values = int(np.prod(image_shape))
    per_column = {"image": values, "delta": 4 * values, **{name: 4 * values for name in MOMENT_COLUMNS}}
    return sum(per_column.get(name, 8) for name in columns)


def canonical_layout(
    state: ray.data.Dataset, columns: list[str], info: DatasetInfo, resources: Resources
) -> MaterializedDataset:
    """The state ``columns`` in equal blocks, rows in the order given, in the object store: a multiple of the
    actors, at least two per actor, and as many more as keep each block within :data:`BLOCK_BYTES`.

    A round's batches follow the blocks, and float results can depend on the batch a row is in; an equal
    split depends only on the row order and the block count (a function of N, the image shape and the
    actors), which a Parquet write and read keep, so the state handed on in memory and the same state read
    back after a resume give the same blocks.
    """
    actors = max(1, resources.actors)
    state_bytes = info.count * state_row_bytes(info.image_shape, columns)
    per_actor = max(2, math.ceil(state_bytes / BLOCK_BYTES / actors))
    return state.select_columns(columns).repartition(per_actor * actors).materialize()


def _read_json(uri: str) -> Any:
    fs, path = filesystem(uri)
    with fs.open(path, "r") as f:
        return json.load(f)


def _write_json(uri: str, content: Any) -> None:
    fs, path = filesystem(uri)
    with fs.open(path, "w") as f:
        json.dump(content, f, indent=2)


def read_state(uri: str) -> ray.data.Dataset:
    """State shards written by :meth:`JobState.write_round` (or the ingest shards), read lazily."""
    fs, path = pyarrow_filesystem(uri)
    return ray.data.read_parquet(path, filesystem=fs)


def index_ordered_batches(uri: str, columns: list[str], batch_rows: int) -> Iterator[Rows]:
    """``columns`` of the state shards at ``uri``, ``batch_rows`` rows at a time in index order, read in this
    process a Parquet row group at a time: it holds the index column (8 bytes a row), one row group (a state
    block, :data:`BLOCK_BYTES` at most) and one batch, whatever N.

    The rounds split and join blocks but never shuffle rows, so a row group holds long runs of consecutive
    indices and is read about once; rows in any other order come out right, only slower (a row group is read
    again for each batch that needs it). Ray Data's own read of the state, sorted, held memory that grew
    with N (bench/README.md "Scale").
    """
    fs, path = pyarrow_filesystem(uri)

    def read_group(file: str, number: int, names: list[str]) -> Any:
        # opened for each read: an open ParquetFile keeps memory for every row group it has read
        with pq.ParquetFile(fs.open_input_file(file)) as parquet:
            return parquet.read_row_group(number, columns=names)

    files = sorted(entry.path for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                   if entry.path.endswith(".parquet"))
    groups, indices = [], []  # (file, row group number) of each row group, and its index column
    for file in files:
        with pq.ParquetFile(fs.open_input_file(file)) as parquet:
            for number in range(parquet.num_row_groups):
                groups.append((file, number))
                indices.append(parquet.read_row_group(number, columns=["index"]).column("index").to_numpy())
    if not groups:
        return
    group_of = np.repeat(np.arange(len(groups)), [len(index) for index in indices])
    row_of = np.concatenate([np.arange(len(index)) for index in indices])
    order = np.argsort(np.concatenate(indices), kind="stable")
    cached: tuple[int, Rows] | None = None
    for start in range(0, len(order), batch_rows):
        chosen = order[start:start + batch_rows]
        positions, parts = [], []
        for g in dict.fromkeys(group_of[chosen].tolist()):  # the row groups this batch needs, in first-use order
            if cached is None or cached[0] != g:
                cached = None  # freed before the next row group is read
                cached = (g, block_columns(read_group(*groups[g], columns), columns))
            mine = np.flatnonzero(group_of[chosen] == g)
            positions.append(mine)
            parts.append({name: values[row_of[chosen[mine]]] for name, values in cached[1].items()})
        back = np.argsort(np.concatenate(positions))
        yield {name: values[back] for name, values in concat_rows(parts).items()}


class JobState:
    """The work directory of one protect job, which makes it resumable:

        WORK/job.json               the job (source, config) and the dataset's info, written after the ingest
        WORK/ingest/                the source as Parquet shards
        WORK/rounds/round-NNNNN/    state/ (Parquet shards), surrogate.pt, round.json written last

    A round counts as done once its round.json exists; a re-run of the same job resumes after the last one,
    and a job with another source or config is refused rather than mixed in.
    """

    def __init__(self, work: WorkDir) -> None:
        self.work = work

    @property
    def ingest_uri(self) -> str:
        return self.work.path("ingest")

    def recorded_info(self, job: dict[str, Any]) -> DatasetInfo | None:
        """The dataset info recorded for ``job`` ({"source", "config"}; None before its ingest); another job's
        is an error. A config recorded with keys of an older layout is compared in today's (upgrade_keys)."""
        fs, path = filesystem(self.work.path("job.json"))
        if not fs.exists(path):
            return None
        recorded = _read_json(self.work.path("job.json"))
        if {**recorded["job"], "config": upgrade_keys(recorded["job"]["config"])} != job:
            raise InvalidInputError(
                f"work directory {self.work.uri} belongs to a job with another source or config; "
                "remove it (or choose another --work-dir) to start afresh"
            )
        return DatasetInfo.from_dict(recorded["info"])

    def record_job(self, job: dict[str, Any], info: DatasetInfo) -> None:
        """Written last by the ingest: from now on the job resumes instead of ingesting again."""
        _write_json(self.work.path("job.json"), {"job": job, "info": info.to_dict()})

    def completed_rounds(self) -> list[int]:
        """Rounds whose round.json exists, in order."""
        fs, path = filesystem(self.work.path("rounds"))
        if not fs.exists(path):
            return []
        done = []
        for entry in fs.ls(path, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("round-") and fs.exists(f"{entry.rstrip('/')}/round.json"):
                done.append(int(name.removeprefix("round-")))
        return sorted(done)

    def records(self, round_index: int) -> list[dict[str, float]]:
        """The history records of a completed round."""
        return _read_json(f"{self.work.round_dir(round_index)}/round.json")

    def state_after(self, round_index: int) -> ray.data.Dataset:
        """The state after a completed round (lazy)."""
        return read_state(f"{self.work.round_dir(round_index)}/state")

    def state_batches_after(self, round_index: int, columns: list[str], batch_rows: int) -> Iterator[Rows]:
        """The state after a completed round, in index order, read here a batch at a time
        (:func:`index_ordered_batches`)."""
        return index_ordered_batches(f"{self.work.round_dir(round_index)}/state", columns, batch_rows)

    def surrogate_of(self, round_index: int) -> dict[str, Any]:
        """The surrogate spec of a completed round."""
        fs, path = filesystem(f"{self.work.round_dir(round_index)}/surrogate.pt")
        with fs.open(path, "rb") as f:
            return torch.load(io.BytesIO(f.read()), weights_only=True)

    def write_round(self, round_index: int, state: ray.data.Dataset, surrogate: dict[str, Any]) -> None:
        """A round's state shards (first removing what a killed attempt may have left) and surrogate."""
        round_dir = self.work.round_dir(round_index)
        remove(f"{round_dir}/state")
        arrow_fs, arrow_path = pyarrow_filesystem(f"{round_dir}/state")
        # Plain encoding, no dictionary: Ray Data's Parquet reader sizes its read tasks by the row groups'
        # encoded bytes, and a dictionary-encoded δ (zeros, or a few sign steps) looks tiny, so one task
        # would read every file of the state at once (4.3 GB for 10,000 Tiny-ImageNet images; bench/README.md)
        state.write_parquet(arrow_path, filesystem=arrow_fs, use_dictionary=False)
        buffer = io.BytesIO()
        torch.save(surrogate, buffer)
        fs, path = filesystem(f"{round_dir}/surrogate.pt")
        with fs.open(path, "wb") as f:
            f.write(buffer.getvalue())

    def complete_round(self, round_index: int, records: list[dict[str, float]]) -> None:
        """round.json, written after everything else of the round: from now on the round counts as done."""
        _write_json(f"{self.work.round_dir(round_index)}/round.json", records)

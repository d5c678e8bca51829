"""The project's Parquet shard format: the primary release format and the state kept during protection.

Each shard ``part-NNNNN.parquet`` has the columns

- ``index`` int64: the stable sample id (the join key; row order means nothing),
- ``label`` int32,
- ``image`` binary: the H×W×C uint8 pixels in C order (H·W·C bytes),
- optional extra columns, binary: one float32 array per sample in C order (e.g. ``delta``, ``adam_m``,
  ``adam_v`` of shape C×H×W), each with a fixed per-sample shape,

and the file's key-value metadata holds, under the key ``ue_core``, the JSON object
``{"format": "ue_core.shards", "version": 1, "name", "num_classes", "class_names", "image_shape": [H, W, C],
"extra_shapes": {column: shape}}``. Every shard of a set carries the same metadata.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from ue_core.data.atomic import staged_directory
from ue_core.data.dataset import ImageDataset, digest_of
from ue_core.data.fsutil import contained_listing, filesystem, first_line, join
from ue_core.errors import DatasetFormatError, InvalidInputError

METADATA_KEY = b"ue_core"
FORMAT_NAME = "ue_core.shards"
FORMAT_VERSION = 1
BASE_COLUMNS = ("index", "label", "image")
SHARD_SUFFIX = ".parquet"
DEFAULT_ROWS_PER_SHARD = 10_000


@dataclass(frozen=True)
class _ShardContent:
    """What one shard file holds, decoded."""

    metadata: dict[str, Any]
    index: np.ndarray  # int64 (n,)
    labels: np.ndarray  # int64 (n,)
    images: np.ndarray  # uint8 (n, H, W, C)
    extra: dict[str, np.ndarray]  # float32 (n, *shape) per column


def is_shard_set(fs: AbstractFileSystem, path: str) -> bool:
    """True if ``path`` is a ``.parquet`` file or a directory directly holding one."""
    if fs.isfile(path):
        return path.endswith(SHARD_SUFFIX)
    return fs.isdir(path) and any(p.endswith(SHARD_SUFFIX) for p in fs.ls(path, detail=False))


def write_shards(
    dataset: ImageDataset,
    uri: str | os.PathLike,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    extra: Mapping[str, np.ndarray] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write ``dataset`` as shards ``uri/part-00000.parquet``, … (local path or any fsspec URI).

    Args:
        dataset: the rows to write; they are stored in index order.
        uri: output directory; must not exist or be empty unless ``overwrite``.
        rows_per_shard: rows per file (>= 1).
        extra: per-sample float arrays aligned with ``dataset``'s rows, each of shape (N, *shape); stored
            as float32 columns named by their keys.
        overwrite: replace an existing output (only once the new one is completely written).

    Returns:
        The URIs of the written files, in order.
    """
    uri = os.fspath(uri)
    extra_arrays = _checked_extra(dataset, extra or {}, uri)
    order = np.argsort(dataset.index, kind="stable")
    with staged_directory(uri, overwrite) as (fs, staging):
        writer = ShardWriter(fs, staging, dataset, rows_per_shard,
                             {name: array.shape[1:] for name, array in extra_arrays.items()})
        for start in range(0, len(order), rows_per_shard):  # a shard's rows at a time: no sorted copy of the set
            rows = order[start:start + rows_per_shard]
            writer.add(dataset.subset(rows), {name: array[rows] for name, array in extra_arrays.items()})
        file_names = writer.close()
    return [join(uri, file_name) for file_name in file_names]


class ShardWriter:
    """A shard set written part by part, for data that does not fit in memory at once.

    Rows given to :meth:`add` (in ascending index order across calls) fill ``part-00000.parquet``,
    ``part-00001.parquet``, … of ``rows_per_shard`` rows each, so the same rows give the same files however
    they are split into calls; memory holds at most one part's rows beside the batch being added.
    ``like`` gives the set's name, classes and image shape; ``extra_shapes`` the per-sample shape of each
    extra float32 column (module docstring).
    """

    def __init__(
        self, fs: AbstractFileSystem, folder: str, like: ImageDataset, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        extra_shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        if rows_per_shard < 1:
            raise InvalidInputError(f"rows_per_shard must be >= 1, got {rows_per_shard} for {folder}")
        extra_shapes = dict(extra_shapes or {})
        metadata = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "name": like.name,
            "num_classes": like.num_classes,
            "class_names": list(like.class_names),
            "image_shape": list(like.image_shape),
            "extra_shapes": {name: list(shape) for name, shape in extra_shapes.items()},
        }
        self.schema = pa.schema(
            [("index", pa.int64()), ("label", pa.int32()), ("image", pa.binary())]
            + [(name, pa.binary()) for name in extra_shapes],
            metadata={METADATA_KEY: json.dumps(metadata).encode()},
        )
        self.fs, self.folder, self.rows_per_shard, self.extra_names = fs, folder, rows_per_shard, list(extra_shapes)
        fs.makedirs(folder, exist_ok=True)
        self.pending: list[dict[str, np.ndarray]] = []
        self.file_names: list[str] = []
        self.last_index: int | None = None

    def add(self, rows: ImageDataset, extra: Mapping[str, np.ndarray] | None = None) -> None:
        """Append ``rows`` (indices ascending, above every index added before) and their extra columns."""
        if len(rows) == 0:
            return
        steps = np.diff(rows.index)
        if (steps <= 0).any() or (self.last_index is not None and rows.index[0] <= self.last_index):
            raise InvalidInputError(f"{rows.name}: shard rows must come in ascending index order (writing {self.folder})")
        self.last_index = int(rows.index[-1])
        extra = extra or {}
        self.pending.append({"index": rows.index, "label": rows.labels, "image": rows.images,
                             **{name: np.asarray(extra[name], np.float32) for name in self.extra_names}})
        if sum(len(part["index"]) for part in self.pending) >= self.rows_per_shard:
            pending = self._concatenated()
            full = len(pending["index"]) // self.rows_per_shard * self.rows_per_shard
            for start in range(0, full, self.rows_per_shard):
                self._write_part({name: values[start:start + self.rows_per_shard] for name, values in pending.items()})
            self.pending = [{name: values[full:] for name, values in pending.items()}] if full < len(pending["index"]) else []

    def close(self) -> list[str]:
        """Write the last (partial) part, or one empty part for an empty set; returns the file names in order."""
        if self.pending:
            self._write_part(self._concatenated())
        elif not self.file_names:
            self._write_part({"index": np.zeros(0, np.int64), "label": np.zeros(0, np.int64),
                              "image": np.zeros((0, 1), np.uint8),
                              **{name: np.zeros((0, 1), np.float32) for name in self.extra_names}})
        return self.file_names

    def _concatenated(self) -> dict[str, np.ndarray]:
        if len(self.pending) == 1:
            return self.pending[0]
        return {name: np.concatenate([part[name] for part in self.pending]) for name in self.pending[0]}

    def _write_part(self, rows: dict[str, np.ndarray]) -> None:
        """``rows`` as the next part file."""
        columns = [
            pa.array(rows["index"], pa.int64()),
            pa.array(rows["label"].astype(np.int32), pa.int32()),
            _binary_column(rows["image"]),
        ] + [_binary_column(rows[name]) for name in self.extra_names]
        file_name = f"part-{len(self.file_names):05d}{SHARD_SUFFIX}"
        with self.fs.open(join(self.folder, file_name), "wb") as f:
            pq.write_table(pa.Table.from_arrays(columns, schema=self.schema), f)
        self.file_names.append(file_name)


def _checked_extra(dataset: ImageDataset, extra: Mapping[str, np.ndarray], uri: str) -> dict[str, np.ndarray]:
    """The extra arrays as float32, after checking names and row counts."""
    checked = {}
    for name, array in extra.items():
        array = np.asarray(array)
        if name in BASE_COLUMNS or not name:
            raise InvalidInputError(f"extra column name {name!r} is reserved or empty (writing {uri})")
        if array.ndim < 2 or len(array) != len(dataset) or not np.issubdtype(array.dtype, np.floating):
            raise InvalidInputError(
                f"extra column {name!r} must be a float array (N={len(dataset)}, ...), got {array.dtype} "
                f"{array.shape} (writing {uri})"
            )
        checked[name] = array.astype(np.float32, copy=False)
    return checked


def _binary_column(rows: np.ndarray) -> pa.Array:
    """Each row of an (n, ...) array as one binary value holding its C-order bytes."""
    row_bytes = int(np.prod(rows.shape[1:])) * rows.dtype.itemsize
    if len(rows) * row_bytes >= 2**31:
        raise InvalidInputError(
            f"a shard column would exceed 2 GiB ({len(rows)} rows of {row_bytes} bytes): lower rows_per_shard"
        )
    data = np.ascontiguousarray(rows).view(np.uint8).reshape(-1)
    offsets = np.arange(len(rows) + 1, dtype=np.int32) * np.int32(row_bytes)
    return pa.Array.from_buffers(pa.binary(), len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def read_shards(uri: str | os.PathLike) -> ImageDataset:
    """Read a shard set (a directory of ``.parquet`` files, or one file) into an ImageDataset.

    Rows come in file order then row order; use ``index``, never the position, to match them.
    """
    dataset, _ = _read_set(os.fspath(uri), with_extra=False)
    return dataset


def read_shards_with_extra(uri: str | os.PathLike) -> tuple[ImageDataset, dict[str, np.ndarray]]:
    """Like :func:`read_shards`, plus the extra columns as float32 arrays (N, *shape) whose row i belongs
    to the dataset's row i (that is, to ``dataset.index[i]``)."""
    return _read_set(os.fspath(uri), with_extra=True)


def _read_set(uri: str, with_extra: bool) -> tuple[ImageDataset, dict[str, np.ndarray]]:
    fs, path = filesystem(uri)
    paths = _shard_paths(fs, path, uri)
    shards = [_read_shard(fs, p, with_extra) for p in paths]
    metadata = shards[0].metadata
    for shard_path, shard in zip(paths, shards):
        if shard.metadata != metadata:
            raise DatasetFormatError(f"shard metadata differs from the first shard's: {shard_path}")
    try:
        dataset = ImageDataset(
            images=_joined([s.images for s in shards]),
            labels=_joined([s.labels for s in shards]),
            index=_joined([s.index for s in shards]),
            num_classes=int(metadata["num_classes"]),
            class_names=tuple(metadata["class_names"]),
            name=str(metadata["name"]),
        )
    except InvalidInputError as error:
        raise DatasetFormatError(f"invalid shard set {uri}: {error}") from error
    extra = {name: _joined([s.extra[name] for s in shards]) for name in shards[0].extra}
    return dataset, extra


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    """``arrays`` one after another (a single array as it is: no copy of a one-shard set)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def empty_like(uri: str | os.PathLike) -> ImageDataset:
    """A set of no rows with the name, classes and image shape of the shard set at ``uri`` (from its first
    file's metadata, no rows read)."""
    uri = os.fspath(uri)
    fs, path = filesystem(uri)
    first = _shard_paths(fs, path, uri)[0]
    try:
        with fs.open(first, "rb") as f:
            metadata = _shard_metadata(pq.ParquetFile(f).schema_arrow, first)
    except (pa.ArrowException, OSError) as error:
        raise DatasetFormatError(f"not a readable Parquet shard: {first}: {first_line(error)}") from error
    return ImageDataset(np.zeros((0, *metadata["image_shape"]), np.uint8), np.zeros(0, np.int64),
                        int(metadata["num_classes"]), class_names=tuple(metadata["class_names"]),
                        name=str(metadata["name"]))


def shard_set_digest(uri: str | os.PathLike) -> str:
    """:meth:`ImageDataset.digest` of the shard set at ``uri``, reading one part at a time (twice: the index
    and labels first, then the images), so a set larger than memory is digested too. A set whose parts are
    not in index order (:func:`write_shards` writes them in order) is read whole instead."""
    uri = os.fspath(uri)
    fs, path = filesystem(uri)
    paths = _shard_paths(fs, path, uri)
    keys = []
    for shard_path in paths:
        shard = _read_shard(fs, shard_path, with_extra=False)
        keys.append((shard.metadata, shard.index, shard.labels))
    index = np.concatenate([part_index for _, part_index, _ in keys])
    if len(index) and (np.diff(index) <= 0).any():
        return read_shards(uri).digest()
    metadata = keys[0][0]
    blocks = (_read_shard(fs, shard_path, with_extra=False).images for shard_path in paths)
    return digest_of(tuple(metadata["image_shape"]), int(metadata["num_classes"]), index,
                     np.concatenate([labels for _, _, labels in keys]), blocks)


def _shard_paths(fs: AbstractFileSystem, path: str, uri: str) -> list[str]:
    """The shard files of a set, sorted by name; in a directory, a symlink out of it is refused."""
    if fs.isfile(path):
        return [path]
    if not fs.isdir(path):
        raise DatasetFormatError(f"no such file or directory: {uri}")
    paths = sorted(p for p in fs.ls(path, detail=False) if p.endswith(SHARD_SUFFIX))
    if not paths:
        raise DatasetFormatError(f"no {SHARD_SUFFIX} files in {uri}")
    return contained_listing(fs, path, paths)


def _read_shard(fs: AbstractFileSystem, path: str, with_extra: bool) -> _ShardContent:
    """Decode one shard file, checking its metadata, schema and value lengths."""
    try:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            metadata = _shard_metadata(parquet.schema_arrow, path)
            columns = list(BASE_COLUMNS) + (list(metadata["extra_shapes"]) if with_extra else [])
            missing = sorted(set(columns) - set(parquet.schema_arrow.names))
            if missing:
                raise DatasetFormatError(f"shard lacks the column {missing[0]!r}: {path}")
            table = parquet.read(columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise DatasetFormatError(f"not a readable Parquet shard: {path}: {first_line(error)}") from error
    index, labels = table.column("index"), table.column("label")
    if not (pa.types.is_integer(index.type) and pa.types.is_integer(labels.type)):
        raise DatasetFormatError(f"shard columns index and label must be integers: {path}")
    if index.null_count or labels.null_count:
        raise DatasetFormatError(f"shard has null index or label values: {path}")
    image_shape = tuple(metadata["image_shape"])
    return _ShardContent(
        metadata=metadata,
        index=index.to_numpy().astype(np.int64),
        labels=labels.to_numpy().astype(np.int64),
        images=_fixed_width_rows(table.column("image"), image_shape, np.uint8, "image", path),
        extra={
            name: _fixed_width_rows(table.column(name), tuple(shape), np.float32, name, path)
            for name, shape in (metadata["extra_shapes"].items() if with_extra else ())
        },
    )


def _shard_metadata(schema: pa.Schema, path: str) -> dict[str, Any]:
    """The ``ue_core`` JSON metadata of a shard, checked for the fields the reader needs."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DatasetFormatError(f"Parquet file without ue_core shard metadata: {path}")
    try:
        metadata = json.loads(raw)
        valid = (
            metadata["format"] == FORMAT_NAME
            and isinstance(metadata["version"], int)
            and len(metadata["image_shape"]) == 3
            and all(isinstance(d, int) and d > 0 for d in metadata["image_shape"])
            and isinstance(metadata["extra_shapes"], dict)
            and isinstance(metadata["num_classes"], int)
            and isinstance(metadata["class_names"], list)
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise DatasetFormatError(f"invalid ue_core shard metadata: {path}")
    if metadata["version"] > FORMAT_VERSION:
        raise DatasetFormatError(
            f"shard format version {metadata['version']} is newer than this reader's: {path}"
        )
    return metadata


def _fixed_width_rows(
    column: pa.ChunkedArray, shape: tuple[int, ...], dtype: type, name: str, path: str
) -> np.ndarray:
    """A binary column whose values each hold one ``shape`` array of ``dtype`` → array (n, *shape)."""
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise DatasetFormatError(f"shard column {name!r} must be binary, got {column.type}: {path}")
    if column.null_count:
        raise DatasetFormatError(f"shard column {name!r} has null values: {path}")
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    lengths = pc.binary_length(column).to_numpy()
    wrong = np.flatnonzero(lengths != expected)
    if wrong.size:
        raise DatasetFormatError(
            f"shard column {name!r}: row {wrong[0]} holds {lengths[wrong[0]]} bytes, "
            f"{expected} expected for {shape} {np.dtype(dtype).name}: {path}"
        )
    parts = [_chunk_bytes(chunk) for chunk in column.chunks]
    # one copy, owned by NumPy (a single chunk's bytes are a view of the Arrow table, freed with it)
    data = parts[0].copy() if len(parts) == 1 else np.concatenate(parts) if parts else np.empty(0, np.uint8)
    return data.view(dtype).reshape(len(column), *shape)


def _chunk_bytes(chunk: pa.Array) -> np.ndarray:
    """The concatenated value bytes of one binary chunk, as uint8."""
    if len(chunk) == 0:
        return np.empty(0, np.uint8)
    offset_type = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
    _, offsets_buffer, data_buffer = chunk.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
    return np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]

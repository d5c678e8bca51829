"""The δ export of a release: the integer perturbation q − x, as EM's tooling and torch load it.

    ROOT/delta.npy   int8 (N, C, H, W): q − x in uint8 levels, channel-first, rows in index order
    ROOT/index.npy   int64 (N,): the index of each row
    ROOT/delta.pt    torch.save of {"delta": int8 tensor (N, C, H, W), "index": int64 tensor (N,)}

q is the released uint8 image and x the clean one of the same index, so x + δ (computed in a wider integer
type) is the release exactly. int8 holds |q − x| ≤ 127, that is a budget of at most 127 levels
(eps ≤ 127/255); a larger difference is refused, never wrapped.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from fsspec import AbstractFileSystem

from ue_core.data.atomic import staged_directory
from ue_core.data.dataset import ImageDataset
from ue_core.data.fsutil import join
from ue_core.errors import InvalidInputError

DELTA_NPY = "delta.npy"
INDEX_NPY = "index.npy"
DELTA_PT = "delta.pt"
DELTA_LIMIT = int(np.iinfo(np.int8).max)


def integer_delta(release: ImageDataset, clean: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """q − x per index: int8 (N, C, H, W) and the int64 index (N,), rows in index order.

    Raises InvalidInputError unless both sets hold the same indices and images of one shape, and every
    |q − x| ≤ 127.
    """
    release, clean = release.sorted_by_index(), clean.sorted_by_index()
    if not np.array_equal(release.index, clean.index) or release.image_shape != clean.image_shape:
        raise InvalidInputError(
            f"{release.name}: the delta export needs the clean image of every released index, "
            "in the same shape"
        )
    difference = release.images.astype(np.int16) - clean.images.astype(np.int16)
    largest = int(np.abs(difference).max(initial=0))
    if largest > DELTA_LIMIT:
        raise InvalidInputError(
            f"{release.name}: the delta export stores q - x as int8, but it reaches {largest} levels "
            f"(at most {DELTA_LIMIT})"
        )
    return difference.astype(np.int8).transpose(0, 3, 1, 2).copy(), release.index.copy()


def write_delta(
    release: ImageDataset, clean: ImageDataset, root: str | os.PathLike, overwrite: bool = False
) -> str:
    """Write ``root/delta.npy``, ``root/index.npy`` and ``root/delta.pt`` (module docstring); returns
    ``root``."""
    root = os.fspath(root)
    with staged_directory(root, overwrite) as (fs, staging):
        writer = DeltaWriter(fs, staging)
        writer.add(release, clean)
        writer.close()
    return root


class DeltaWriter:
    """The δ export written from batches of (release, clean) rows, in index order across calls.

    q − x is kept as int8 until :meth:`close` writes the three files, since delta.pt holds one tensor of every
    row: N·C·H·W bytes, a quarter of a float32 δ — the one release format that holds every row in memory.
    """

    def __init__(self, fs: AbstractFileSystem, folder: str) -> None:
        self.fs, self.folder = fs, folder
        fs.makedirs(folder, exist_ok=True)
        self.deltas: list[np.ndarray] = []
        self.indices: list[np.ndarray] = []

    def add(self, release: ImageDataset, clean: ImageDataset) -> None:
        delta, index = integer_delta(release, clean)
        if self.indices and len(index) and index[0] <= self.indices[-1][-1]:
            raise InvalidInputError(f"{release.name}: delta rows must come in ascending index order")
        self.deltas.append(delta)
        self.indices.append(index)

    def close(self) -> None:
        delta, index = np.concatenate(self.deltas), np.concatenate(self.indices)
        self.deltas, self.indices = [], []
        for name, array in ((DELTA_NPY, delta), (INDEX_NPY, index)):
            with self.fs.open(join(self.folder, name), "wb") as f:
                np.save(f, array, allow_pickle=False)
        with self.fs.open(join(self.folder, DELTA_PT), "wb") as f:
            f.write(_torch_bytes({"delta": torch.from_numpy(delta), "index": torch.from_numpy(index)}))


def _torch_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """``tensors`` as torch.save writes them (torch.load(..., weights_only=True) reads them)."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()

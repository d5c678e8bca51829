"""The mixing protocol of the evaluation (docs/method.md §4).

Each training index independently takes its protected version with probability ``ratio``. The draw for an
index is a keyed hash of (seed, index), so it depends on nothing else: not on row order, not on which other
indices are present. Victims are trained on one of four sets:

- ``clean-all``: every clean image;
- ``clean-only``: the clean images of the unprotected indices only (the protected ones are dropped);
- ``mixed``: the protected image for protected indices, the clean one for the others;
- ``poison-only``: every protected image (ratio ignored).

Rows of the clean and the protected set are always matched by index, never by position.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ue_core.data.atomic import check_output_free
from ue_core.data.dataset import ImageDataset
from ue_core.data.fsutil import filesystem, first_line, read_bytes
from ue_core.errors import DatasetFormatError, InvalidInputError

MixingMode = Literal["clean-all", "clean-only", "mixed", "poison-only"]
MODES: tuple[str, ...] = ("clean-all", "clean-only", "mixed", "poison-only")
_MAX_SHOWN = 5

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (wrapping arithmetic): a well-mixed 64-bit hash."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:  # also rejects NaN
        raise InvalidInputError(f"mixing ratio must be in [0, 1], got {ratio}")


def protected_mask(index: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Which indices are protected: a bool array aligned with ``index``.

    Each index is protected with probability ``ratio``, independently of the others, decided by a hash of
    (seed, index): the same index and seed always give the same answer, whatever the row order or the
    other indices present.
    """
    _check_ratio(ratio)
    index = np.asarray(index)
    if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
        raise InvalidInputError(f"index must be a 1-d integer array, got {index.dtype} {index.shape}")
    with np.errstate(over="ignore"):
        key = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        hashed = splitmix64(index.astype(np.int64).view(np.uint64) ^ key)
    uniform = (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53  # in [0, 1)
    return uniform < ratio


def build_training_set(
    clean: ImageDataset, protected: ImageDataset, mode: MixingMode, ratio: float, seed: int
) -> tuple[ImageDataset, np.ndarray]:
    """The training set of one evaluation arm, in ``clean``'s row order.

    Args:
        clean: the original training set.
        protected: its protected release: the same indices with the same labels (and image shape).
        mode: "clean-all", "clean-only", "mixed" or "poison-only" (see the module docstring).
        ratio: probability in [0, 1] that an index is protected (used by "clean-only" and "mixed").
        seed: the seed of :func:`protected_mask`.

    Returns:
        The training set and the sorted int64 indices drawn as protected: empty for "clean-all", every
        index for "poison-only", and for "clean-only" the indices it dropped.
    """
    _check_ratio(ratio)
    if mode not in MODES:
        raise InvalidInputError(f"mixing mode must be one of {', '.join(MODES)}, got {mode!r}")
    protected_rows = _protected_rows_for(clean, protected)
    if mode == "clean-all":
        return clean, np.empty(0, dtype=np.int64)
    if mode == "poison-only":
        return protected.subset(protected_rows), np.sort(clean.index)
    mask = protected_mask(clean.index, ratio, seed)
    drawn = np.sort(clean.index[mask])
    if mode == "clean-only":
        return clean.subset(~mask), drawn
    images = clean.images.copy()
    images[mask] = protected.images[protected_rows[mask]]
    return clean.with_images(images), drawn


def _protected_rows_for(clean: ImageDataset, protected: ImageDataset) -> np.ndarray:
    """For each row of ``clean``, the row of ``protected`` with the same index (after checking both agree)."""
    if clean.image_shape != protected.image_shape:
        raise InvalidInputError(
            f"clean images are {clean.image_shape}, protected images are {protected.image_shape}"
        )
    clean_order = np.argsort(clean.index, kind="stable")
    protected_order = np.argsort(protected.index, kind="stable")
    clean_sorted, protected_sorted = clean.index[clean_order], protected.index[protected_order]
    if len(clean_sorted) != len(protected_sorted) or not np.array_equal(clean_sorted, protected_sorted):
        only_clean = np.setdiff1d(clean_sorted, protected_sorted)[:_MAX_SHOWN].tolist()
        only_protected = np.setdiff1d(protected_sorted, clean_sorted)[:_MAX_SHOWN].tolist()
        raise InvalidInputError(
            f"clean and protected sets have different indices: only in clean {only_clean}, "
            f"only in protected {only_protected}"
        )
    rows = np.empty(len(clean), dtype=np.int64)
    rows[clean_order] = protected_order
    mismatched = np.flatnonzero(clean.labels != protected.labels[rows])
    if mismatched.size:
        shown = np.sort(clean.index[mismatched])[:_MAX_SHOWN].tolist()
        raise InvalidInputError(
            f"{mismatched.size} indices have different clean and protected labels, e.g. {shown}"
        )
    return rows


@dataclass(frozen=True)
class IndexSet:
    """The record of one mixing draw: how it was made and which indices were protected (sorted int64)."""

    mode: str
    ratio: float
    seed: int
    protected_indices: np.ndarray


def save_index_set(
    path: str | os.PathLike,
    protected_indices: np.ndarray,
    *,
    mode: MixingMode,
    ratio: float,
    seed: int,
    overwrite: bool = False,
) -> None:
    """Write the mixing record as JSON ``{"mode", "ratio", "seed", "protected_indices": [sorted]}``
    (local path or fsspec URI)."""
    path = os.fspath(path)
    fs, fs_path = filesystem(path)
    check_output_free(fs, fs_path, path, overwrite)
    record = {
        "mode": mode,
        "ratio": float(ratio),
        "seed": int(seed),
        "protected_indices": np.sort(np.asarray(protected_indices, dtype=np.int64)).tolist(),
    }
    text = json.dumps(record)
    parent = fs_path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(fs_path, "w") as f:
        f.write(text)


def load_index_set(path: str | os.PathLike) -> IndexSet:
    """Read a record written by :func:`save_index_set`."""
    path = os.fspath(path)
    fs, fs_path = filesystem(path)
    try:
        record = json.loads(read_bytes(fs, fs_path))
        index_set = IndexSet(
            mode=str(record["mode"]),
            ratio=float(record["ratio"]),
            seed=int(record["seed"]),
            protected_indices=np.asarray(record["protected_indices"], dtype=np.int64),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetFormatError(f"invalid index-set file ({first_line(error)}): {path}") from error
    if index_set.protected_indices.ndim != 1:
        raise DatasetFormatError(f"invalid index-set file (protected_indices must be a list): {path}")
    return index_set

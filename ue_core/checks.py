"""The project's checks, in one place: the invariants every release must pass before it is published, and
the shape of the image batches that training and the defences take.

Like AutoAttack's built-in checks: the budget in integers, the value range, NaN, shapes, and that every
input index appears exactly once with its original label. A release violation raises ReleaseCheckError
naming the offending indices; it is never a warning. A malformed image batch raises InvalidInputError.
"""

from __future__ import annotations

import numpy as np
import torch

from ue_core.data.dataset import ImageDataset
from ue_core.errors import InvalidInputError, ReleaseCheckError
from ue_core.pga import Budget

_SHOWN = 10


def check_images(x: torch.Tensor, allow_empty: bool = False) -> None:
    """Raise InvalidInputError unless ``x`` is a float image batch (N, C, H, W), with N >= 1 unless
    ``allow_empty``."""
    if (not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point()
            or (len(x) == 0 and not allow_empty)):
        raise InvalidInputError(
            f"x: must be a float tensor of shape (N, C, H, W){'' if allow_empty else ' with N >= 1'}, got "
            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
        )


def _fail(what: str, indices: np.ndarray) -> None:
    shown = indices[:_SHOWN].tolist()
    more = f" and {indices.size - _SHOWN} more" if indices.size > _SHOWN else ""
    raise ReleaseCheckError(f"release {what} at {indices.size} samples: indices {shown}{more}")


def check_release(clean: ImageDataset, release: ImageDataset, budget: Budget) -> None:
    """Raise ReleaseCheckError unless ``release`` is a valid protected version of ``clean``.

    Checks: uint8 pixels of the same (H, W, C); the same index set, each index exactly once (rows are
    matched by index, not by position); the same label per index; the perturbation within ``budget`` in
    integers (L∞: max |q - x| ≤ floor(255 eps) levels; L2: ‖q - x‖₂ ≤ 255 eps levels; L0: at most eps
    changed pixels per image, a pixel changed if any of its channels changed).
    """
    if release.images.dtype != np.uint8:
        raise ReleaseCheckError(f"release pixels must be uint8, got {release.images.dtype}")
    if release.image_shape != clean.image_shape:
        raise ReleaseCheckError(f"release images are {release.image_shape}, the source's are {clean.image_shape}")
    missing = np.setdiff1d(clean.index, release.index)
    if missing.size:
        _fail("is missing source samples", missing)
    extra = np.setdiff1d(release.index, clean.index)
    if extra.size:
        _fail("has samples that are not in the source", extra)
    if len(release) != len(clean):
        raise ReleaseCheckError(f"release has {len(release)} rows for {len(clean)} source samples")
    clean, release = clean.sorted_by_index(), release.sorted_by_index()
    relabelled = clean.index[clean.labels != release.labels]
    if relabelled.size:
        _fail("changes labels", relabelled)
    difference = release.images.astype(np.int16) - clean.images.astype(np.int16)
    flat = difference.reshape(len(difference), -1)
    if budget.norm == "linf":
        size = np.abs(flat).max(axis=1, initial=0)
    elif budget.norm == "l0":
        size = (difference != 0).any(axis=3).reshape(len(difference), -1).sum(axis=1)
    else:
        size = np.sqrt(np.square(flat, dtype=np.float64).sum(axis=1))
    over = clean.index[size > budget.integer_budget + 1e-9]
    if over.size:
        unit = "changed pixels" if budget.norm == "l0" else "levels"
        _fail(f"exceeds the {budget.norm} budget of {budget.integer_budget:g} {unit}", over)

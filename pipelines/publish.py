"""Publishing what a protect job made, batch by batch: the release, its early releases, their quality.

Either engine hands over a :class:`ProtectedRows`: the release as aligned (clean rows, release rows) batches
in index order, never every image at once (the Ray engine streams them from its work directory; the
reference engine, which holds the release in memory anyway, as one batch). :func:`publish` writes them with
ue_core.release.open_release, measures PSNR/SSIM on the way (ue_core.quality.QualityMeter) and keeps the
first batch for the image grid, so the publishing process holds one batch of images at a time (and N × D
features, N per-image quality values, and, for the ``delta`` format only, q − x as int8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ue_core.data.dataset import ImageDataset
from ue_core.quality import QualityMeter
from ue_core.release import open_release, snapshot_path

Pairs = Iterable[tuple[ImageDataset, ImageDataset]]
"""Aligned (clean rows, release rows) batches, in ascending index order across batches."""


@dataclass
class ProtectedRows:
    """What a protect job publishes, from either engine.

    Attributes:
        like: rows of the clean set (zero or more) giving its name, classes and image shape.
        count, max_index: the whole set's row count and largest index.
        source_digest: ImageDataset.digest of the clean set.
        history: the method's per-step records; summary: its headline numbers (BEO: β̂ of clean and release).
        surrogate: the final surrogate's spec (protect.surrogate_spec), or None.
        release_rounds: the rounds after which an early release is published.
        pairs: pairs(None) gives the release's batches, pairs(k) those of the release after round k.
    """

    like: ImageDataset
    count: int
    max_index: int
    source_digest: str
    history: list[dict[str, float]]
    summary: dict[str, float]
    surrogate: dict[str, Any] | None
    release_rounds: list[int]
    pairs: Callable[[int | None], Pairs]

    @staticmethod
    def in_memory(clean: ImageDataset, release: ImageDataset, snapshots: dict[int, ImageDataset],
                  history: list[dict[str, float]], summary: dict[str, float],
                  surrogate: dict[str, Any] | None) -> ProtectedRows:
        """A release held in memory (rows aligned with ``clean``) as one batch; ``snapshots`` maps a round to
        the release after it."""
        order = np.argsort(clean.index, kind="stable")
        clean_sorted = clean.subset(order)
        releases = {None: release, **snapshots}
        return ProtectedRows(
            like=clean.subset(np.arange(0)), count=len(clean), max_index=int(clean.index.max(initial=0)),
            source_digest=clean.digest(), history=history, summary=summary, surrogate=surrogate,
            release_rounds=sorted(snapshots), pairs=lambda rounds: [(clean_sorted, releases[rounds].subset(order))],
        )


@dataclass
class Published:
    """What :func:`publish` wrote: the main manifest, the release's summary (the method's numbers and
    psnr_db, ssim), and its first batch (clean rows, release rows) for the image grid."""

    manifest: dict[str, Any]
    summary: dict[str, float]
    sample: tuple[ImageDataset, ImageDataset]


def publish(rows: ProtectedRows, out: str, manifest: dict[str, Any], formats: tuple[str, ...],
            test: ImageDataset | None, overwrite: bool) -> Published:
    """Write the release at ``out`` with each early release inside it (ue_core.release's layout), each
    manifest being ``manifest`` plus its summary (and, for an early release, its round and the history up to
    it), atomically with the main manifest last."""
    with open_release(out, overwrite) as folder:
        for rounds in rows.release_rounds:
            writer = folder.writer(rows.like, formats, test, rounds=rounds, count=rows.count, max_index=rows.max_index)
            quality, _ = _write_pairs(writer, rows.pairs(rounds))
            writer.finish({**manifest, "rounds": rounds, "summary": quality,
                           "history": [record for record in rows.history if record["round"] < rounds]})
        writer = folder.writer(rows.like, formats, test, count=rows.count, max_index=rows.max_index)
        quality, sample = _write_pairs(writer, rows.pairs(None))
        summary = {**rows.summary, **quality}
        written = writer.finish({**manifest, "summary": summary, "history": rows.history,
                                 "snapshots": {str(k): snapshot_path(k) for k in rows.release_rounds}})
    return Published(written, summary, sample)


def _write_pairs(writer: Any, pairs: Pairs) -> tuple[dict[str, float], tuple[ImageDataset, ImageDataset]]:
    """Add every batch to ``writer``; returns the quality of the release and its first batch."""
    meter, sample = QualityMeter(), None
    for clean_rows, release_rows in pairs:
        writer.add(release_rows, clean_rows)
        meter.add(clean_rows.images, release_rows.images)
        sample = sample or (clean_rows, release_rows)
    return meter.result(), sample

"""A published release: the protected images in one or more formats, and manifest.json written last.

Layout of a release at URI (a local folder or any fsspec URI):

    URI/parquet/part-00000.parquet …   the primary format (ue_core.data.shards)
    URI/png/images/*.png, labels.csv   optional: what other unlearnable-example benchmarks read
    URI/cifar/cifar-10-batches-py/ …   optional: the CIFAR python batches (32×32×3 only)
    URI/imagefolder/<class>/<index>.png, metadata.csv
                                       optional: for torchvision's ImageFolder and Hugging Face's imagefolder
                                       (ue_core.data.folder.write_image_folder)
    URI/delta/delta.npy, index.npy, delta.pt
                                       optional: q − x as int8 (N, C, H, W) with its indices, needs the clean
                                       images and a budget of at most 127 levels (ue_core.data.delta)
    URI/rounds/round-00010/ …          optional: the release after round 10 of the same run, itself a whole
                                       release (formats and manifest.json) that `ue evaluate` reads as any
    URI/manifest.json                  config, counts, ε, history, the sha256 of every file above, and the
                                       release's digest (:func:`files_digest`), what identifies it

No manifest, no release: everything is written under a hidden staging folder, the manifest goes in last,
and only then does the folder appear under its name (ue_core.data.atomic).

:func:`write_release` writes a release held in memory; :func:`open_release` and its :class:`ReleaseWriter`
write the same files batch by batch (rows in index order), for releases larger than memory: every format
streams, except that ``delta`` keeps q − x as int8 (N·C·H·W bytes) until its end.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, get_args

from fsspec import AbstractFileSystem

from ue_core.data.atomic import check_output_free, staged_directory
from ue_core.data.cifar import LAYOUTS, CifarWriter
from ue_core.data.dataset import ImageDataset
from ue_core.data.delta import DELTA_LIMIT, DeltaWriter
from ue_core.data.folder import ImageFolderWriter, PngFolderWriter
from ue_core.data.fsutil import contained, filesystem, first_line, join, read_bytes
from ue_core.data.readers import read_release_shards
from ue_core.data.shards import ShardWriter
from ue_core.errors import DatasetFormatError, InvalidInputError, ReleaseCheckError
from ue_core.pga import Budget

MANIFEST_NAME = "manifest.json"
ReleaseFormat = Literal["parquet", "png", "cifar", "imagefolder", "delta"]
RELEASE_FORMATS: tuple[str, ...] = get_args(ReleaseFormat)


def write_release(
    release: ImageDataset,
    uri: str | os.PathLike,
    manifest: dict[str, Any],
    formats: tuple[str, ...] = ("parquet",),
    test: ImageDataset | None = None,
    overwrite: bool = False,
    snapshots: dict[int, tuple[ImageDataset, dict[str, Any]]] | None = None,
    clean: ImageDataset | None = None,
) -> dict[str, Any]:
    """Write ``release`` at ``uri`` in ``formats`` with ``manifest`` (plus counts and checksums) last.

    ``test`` is the clean test split, written beside the train batches in the CIFAR format (torchvision's
    loaders expect both). ``snapshots`` maps a round k to the release after that round and its manifest:
    each is written as a whole release at ``URI/rounds/round-0000k`` (:func:`snapshot_path`), inside the
    same atomic publish, and the main manifest lists its files too. ``clean`` is the source of ``release``
    (and of every snapshot), which the ``delta`` format needs. Returns the main manifest as written.
    For data that does not fit in memory at once, :func:`open_release` writes the same files batch by batch.
    """
    check_formats(formats, with_clean=clean is not None)
    snapshots = snapshots or {}
    clean = None if clean is None else clean.sorted_by_index()
    with open_release(uri, overwrite) as folder:
        for rounds, (snapshot, snapshot_manifest) in sorted(snapshots.items()):
            writer = folder.writer(snapshot, formats, test, rounds=rounds)
            writer.add(snapshot.sorted_by_index(), clean)
            writer.finish(snapshot_manifest)
        writer = folder.writer(release, formats, test)
        writer.add(release.sorted_by_index(), clean)
        written = writer.finish({**manifest, "snapshots": {str(k): snapshot_path(k) for k in sorted(snapshots)}})
    return written


def check_formats(formats: tuple[str, ...], with_clean: bool) -> None:
    """The release formats must include parquet and be known; ``delta`` needs the clean images."""
    unknown = sorted(set(formats) - set(RELEASE_FORMATS))
    if unknown or "parquet" not in formats:
        raise InvalidInputError(
            f"release formats must include parquet and be among {', '.join(RELEASE_FORMATS)}, got {', '.join(formats)}"
        )
    if "delta" in formats and not with_clean:
        raise InvalidInputError("the delta release format needs the clean images (write_release's clean=)")


class ReleaseFolder:
    """The staging folder of a release being published (:func:`open_release`): where its writers go."""

    def __init__(self, fs: AbstractFileSystem, staging: str) -> None:
        self.fs, self.staging = fs, staging

    def writer(self, like: ImageDataset, formats: tuple[str, ...], test: ImageDataset | None = None,
               rounds: int | None = None, count: int | None = None, max_index: int | None = None) -> ReleaseWriter:
        """A writer of the release (``rounds`` None) or of the release after round ``rounds`` (a snapshot,
        whose writer must finish before the release's). ``like`` gives the name, classes and image shape;
        ``count`` and ``max_index`` (default: ``like``'s) the whole set's row count and largest index."""
        folder = self.staging if rounds is None else join(self.staging, snapshot_path(rounds))
        count = len(like) if count is None else count
        max_index = int(like.index.max(initial=0)) if max_index is None else max_index
        return ReleaseWriter(self.fs, folder, like, count, max_index, formats, test)


@contextmanager
def open_release(uri: str | os.PathLike, overwrite: bool = False) -> Iterator[ReleaseFolder]:
    """Publish a release at ``uri`` atomically (ue_core.data.atomic, manifest.json last): write it with
    the writers of the yielded :class:`ReleaseFolder`, each finished before the block ends."""
    with staged_directory(os.fspath(uri), overwrite, last=MANIFEST_NAME) as (fs, staging):
        yield ReleaseFolder(fs, staging)


class ReleaseWriter:
    """One release (or snapshot) folder written batch by batch: :meth:`add` rows in ascending index order
    across calls, then :meth:`finish` with the manifest. Every format streams its files as rows come
    (the ``delta`` format keeps q − x as int8 until the end, ue_core.data.delta), so memory holds a batch,
    not the release; the same rows give the same files however they are split into batches."""

    def __init__(self, fs: AbstractFileSystem, folder: str, like: ImageDataset, count: int, max_index: int,
                 formats: tuple[str, ...], test: ImageDataset | None) -> None:
        self.fs, self.folder, self.like, self.count, self.formats = fs, folder, like, count, formats
        self.added = 0
        self.writers: dict[str, Any] = {"parquet": ShardWriter(fs, join(folder, "parquet"), like)}
        if "png" in formats:
            self.writers["png"] = PngFolderWriter(fs, join(folder, "png"), like)
        if "cifar" in formats:
            variant = "cifar100" if like.num_classes == 100 else "cifar10"
            self.writers["cifar"] = CifarWriter(fs, join(join(folder, "cifar"), LAYOUTS[variant].folder), like, count,
                                                test, variant)
        if "imagefolder" in formats:
            self.writers["imagefolder"] = ImageFolderWriter(fs, join(folder, "imagefolder"), like, max_index)
        if "delta" in formats:
            self.writers["delta"] = DeltaWriter(fs, join(folder, "delta"))

    def add(self, release: ImageDataset, clean: ImageDataset | None = None) -> None:
        """Append released rows (ascending index, above those added before) and, for the ``delta`` format,
        the clean rows of the same indices (the same rows: q − x is taken row by row, ue_core.data.delta)."""
        for name, writer in self.writers.items():
            if name == "delta":
                if clean is None:
                    raise InvalidInputError("the delta release format needs the clean images of every batch")
                writer.add(release, clean)
            else:
                writer.add(release)
        self.added += len(release)

    def finish(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Close every format, then write the manifest (the sha256 of every file under the folder); returns
        the manifest as written."""
        if self.added != self.count:
            raise InvalidInputError(f"the release writer of {self.folder} got {self.added} rows, not {self.count}")
        for writer in self.writers.values():
            writer.close()
        files = {path[len(self.folder) + 1 :]: file_sha256(self.fs, path) for path in sorted(self.fs.find(self.folder))}
        written = {
            **manifest,
            "formats": list(self.formats),
            "count": self.count,
            "num_classes": self.like.num_classes,
            "image_shape": list(self.like.image_shape),
            "files": files,
            "digest": files_digest(files),
        }
        with self.fs.open(join(self.folder, MANIFEST_NAME), "w") as f:
            json.dump(written, f, indent=2, sort_keys=True)
        return written


def snapshot_path(rounds: int) -> str:
    """Where, inside a release, the release after round ``rounds`` of the same run lives."""
    return f"rounds/round-{rounds:05d}"


def snapshot_uri(release_uri: str, rounds: int) -> str:
    """Where the release after ``rounds`` rounds lives inside the release at ``release_uri`` (local or URL)."""
    return f"{release_uri.rstrip('/')}/{snapshot_path(rounds)}"


def file_sha256(fs: AbstractFileSystem, path: str, chunk_bytes: int = 1 << 23) -> str:
    """The sha256 of a file, read 8 MiB at a time; a missing or unreadable file is a DatasetFormatError."""
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                digest.update(chunk)
    except OSError as error:
        raise DatasetFormatError(f"cannot read {path}: {first_line(error)}") from error
    return digest.hexdigest()


def files_digest(files: dict[str, str]) -> str:
    """What identifies a release: 16 hex digits of the sha256 of its manifest's ``files`` (every file's name
    and sha256), so equal files give equal digests. Written in the manifest as ``digest``; MLflow's dataset
    inputs carry it (pipelines/tracking.py)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def release_digest(manifest: dict[str, Any]) -> str:
    """The digest of the release this manifest describes (:func:`files_digest`), for releases written before
    manifests held it too."""
    return files_digest(manifest["files"])


def check_delta_budget(budget: Budget) -> None:
    """Refuse the ``delta`` format for a budget that lets |q − x| exceed int8's 127 levels (eps ≥ 128/255),
    before any work: whether the format can be written would otherwise depend on how far the images moved.

    A release that passed ue_core.checks.check_release has every |q − x| ≤ floor(255 eps) (L∞), and
    ≤ ‖q − x‖₂ ≤ 255 eps (L2), an integer either way; an L0 budget bounds the changed pixels, not their
    change, which may be 255 levels.
    """
    levels = 255 if budget.norm == "l0" else math.floor(budget.integer_budget + 1e-9)
    if levels > DELTA_LIMIT:
        raise InvalidInputError(
            f"the delta release format stores q - x as int8, so it needs eps <= {DELTA_LIMIT}/255; "
            f"eps {budget.eps:.4g} ({budget.norm}) allows {levels} levels"
        )


def check_release_target(uri: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail early, before any work, when ``uri`` already holds something and ``overwrite`` is off."""
    fs, path = filesystem(os.fspath(uri))
    check_output_free(fs, path, os.fspath(uri), overwrite)


def read_manifest(uri: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the release at ``uri``; a folder without one is not a release."""
    uri = os.fspath(uri)
    fs, path = filesystem(uri)
    manifest_path = contained(fs, path, MANIFEST_NAME, "file")
    if not fs.exists(manifest_path):
        raise ReleaseCheckError(f"no {MANIFEST_NAME} at {uri}: not a published release")
    try:
        return json.loads(read_bytes(fs, manifest_path))
    except json.JSONDecodeError as error:
        raise ReleaseCheckError(f"{uri}/{MANIFEST_NAME} is not valid JSON: {error}") from None


def verify_release(uri: str | os.PathLike) -> dict[str, Any]:
    """Re-read every file listed in the manifest and compare its sha256; returns the manifest.

    A listed name that leaves the release (``..``, absolute, a URL, a symlink out of it) is an
    InvalidInputError naming it (ue_core.data.fsutil.contained), raised before that file is read.
    """
    uri = os.fspath(uri)
    manifest = read_manifest(uri)
    fs, path = filesystem(uri)
    for name, expected in manifest["files"].items():
        file_path = contained(fs, path, name, f"{MANIFEST_NAME} entry")
        if not fs.exists(file_path):
            raise ReleaseCheckError(f"release {uri} is missing {name}, listed in its manifest")
        if file_sha256(fs, file_path) != expected:
            raise ReleaseCheckError(f"release {uri}: {name} does not match its sha256 in the manifest")
    if manifest.get("digest", release_digest(manifest)) != release_digest(manifest):
        raise ReleaseCheckError(f"release {uri}: its manifest's digest does not match its files")
    return manifest


def read_release(uri: str | os.PathLike) -> ImageDataset:
    """The released images (from the Parquet shards) of a published release."""
    uri = os.fspath(uri)
    read_manifest(uri)
    return read_release_shards(uri)

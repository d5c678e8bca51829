"""Writers publish a directory all at once: they write into a hidden staging sibling, which replaces the
target only when every file is written. A failed write removes the staging directory, so no partial output
is ever visible under the target name.

On a local disk the final step is a single ``rename`` (atomic). On other fsspec filesystems (``s3://``,
``memory://``) it is a copy of every file, then the staging folder's removal: the target appears only after
every file was written, but it is not filled in one step. The file a reader takes as the mark of a whole
output (``last``: a release's manifest.json) is copied after all others, so a writer killed during the copy
leaves at most a target without that mark — not a release (ue_core.release) — which a rerun replaces only
with ``--overwrite``.

Writers never follow symlinks. A target that is a symlink (dangling or not) is refused with an
InvalidInputError, with or without overwrite: replacing it would either write through the link into
wherever it points or silently turn a link someone made into a folder, and neither is what "write here"
means. Nothing inside the staging directory can be a link: it is a fresh, randomly named directory created
with ``exist_ok=False`` (a link already at that name fails the creation), and only the writers put files
in it.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from ue_core.data.fsutil import filesystem
from ue_core.errors import InvalidInputError


def check_output_free(fs: AbstractFileSystem, path: str, uri: str, overwrite: bool) -> None:
    """Refuse a symlink at ``path`` (always), and an existing file or non-empty directory unless
    ``overwrite``."""
    if isinstance(fs, LocalFileSystem) and os.path.islink(path):
        raise InvalidInputError(f"output is a symbolic link: {uri} (outputs are never written through links)")
    if overwrite or not fs.exists(path):
        return
    if not fs.isdir(path) or fs.ls(path, detail=False):
        raise InvalidInputError(
            f"output already exists and is not empty: {uri} (replace it with --overwrite, or overwrite=True)"
        )


@contextmanager
def staged_directory(
    uri: str | os.PathLike, overwrite: bool = False, last: str | None = None
) -> Iterator[tuple[AbstractFileSystem, str]]:
    """Yield ``(fs, staging_path)``; write every output file under ``staging_path``.

    On normal exit the staging directory replaces ``uri`` (an existing output is removed only then, and
    only if ``overwrite``), the file ``last`` (a path relative to the folder) published after every other;
    on an exception the staging directory is deleted and ``uri`` is left as it was.
    """
    uri = os.fspath(uri)
    fs, path = filesystem(uri)
    check_output_free(fs, path, uri, overwrite)
    if "/" not in path:
        raise InvalidInputError(f"cannot write directly at the root of a filesystem or bucket: {uri}")
    staging = f"{_staging_prefix(path)}{uuid.uuid4().hex[:12]}"
    fs.makedirs(staging, exist_ok=False)
    try:
        yield fs, staging
        _publish(fs, staging, path, last)
    except BaseException:
        _remove_quietly(fs, staging)
        raise


def _staging_prefix(path: str) -> str:
    """The name of every staging folder of ``path`` up to its random part: ``PARENT/.NAME.partial-``."""
    parent, name = path.rsplit("/", 1)
    return f"{parent}/.{name}.partial-"


def remove_stale_staging(uri: str | os.PathLike) -> list[str]:
    """Remove the staging folders of ``uri`` that killed writers left behind; returns their paths.

    Only for a caller that no other writer of ``uri`` can be running beside (a job holding the claim of
    ``uri``, pipelines.storage.claim_output): a live writer's staging folder looks the same."""
    fs, path = filesystem(os.fspath(uri))
    if "/" not in path:
        return []
    stale = fs.glob(f"{_staging_prefix(path)}*")
    for folder in stale:
        fs.rm(folder, recursive=True)
    return stale


def _publish(fs: AbstractFileSystem, staging: str, path: str, last: str | None) -> None:
    """Move ``staging`` to ``path``, replacing whatever is there; off a local disk, ``last`` is copied last."""
    if isinstance(fs, LocalFileSystem):
        if os.path.lexists(path):
            old = f"{staging}.old"
            os.rename(path, old)
            os.rename(staging, path)
            if os.path.isdir(old) and not os.path.islink(old):  # a link is removed, never followed
                shutil.rmtree(old)
            else:
                os.remove(old)
        else:
            os.rename(staging, path)
        return
    if fs.exists(path):
        fs.rm(path, recursive=True)
    # file by file: object stores have no folders, and a recursive move trips over folder entries
    files = fs.find(staging)
    final = [name for name in files if last is not None and name == f"{staging}/{last}"]
    for group in ([name for name in files if name not in final], final):
        if group:
            fs.copy(group, [path + name[len(staging):] for name in group])
    fs.rm(staging, recursive=True)


def _remove_quietly(fs: AbstractFileSystem, path: str) -> None:
    """Best-effort removal of a staging directory (the original error matters more than this one)."""
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except OSError:
        pass

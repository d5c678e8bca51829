"""Small helpers shared by the readers and writers: URIs to filesystems, containment of the paths a dataset
names, and one-line error text."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from ue_core.errors import DatasetFormatError, InvalidInputError

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def filesystem(uri: str | os.PathLike) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem and the path in it for a URI (``s3://…``, ``memory://…``) or a local path.

    A scheme fsspec does not know, or one whose package is missing (``gs://`` without gcsfs), is an
    InvalidInputError naming the URI: a URI is never taken for a local path."""
    try:
        fs, path = url_to_fs(os.fspath(uri))
    except (ValueError, ImportError) as error:
        raise InvalidInputError(f"cannot use {os.fspath(uri)}: {first_line(error)}") from None
    return fs, path.rstrip("/") or "/"


def join(directory: str, name: str) -> str:
    """``directory/name`` for fsspec paths and URIs (always with "/")."""
    return f"{directory.rstrip('/')}/{name}"


def contained(fs: AbstractFileSystem, root: str, entry: str, what: str) -> str:
    """The path in ``fs`` of ``entry``, a path that a dataset names relative to its ``root``.

    This is the one containment rule of every reader: an entry that carries a URL scheme, is absolute, or
    leaves ``root`` is refused with an InvalidInputError naming it (one line), before anything is read. The
    key is normalised first (``a/../b`` is ``b``), so on an object store an entry cannot step out of the
    prefix ``root``; on a local disk both ``root`` and the entry are also resolved with os.path.realpath, so
    a symlink that points outside ``root`` is refused too (one that stays inside is fine).

    Args:
        fs: the dataset's filesystem.
        root: the dataset's root in ``fs`` (as :func:`filesystem` gives it).
        entry: the dataset-relative path ("/"-separated), e.g. a labels.csv file name.
        what: where the entry comes from, for the message, e.g. "labels.csv entry" or "file".

    Returns:
        ``root/entry`` with the entry normalised.
    """
    where = f"the dataset root {root}"
    if _URL_SCHEME.match(entry):
        raise InvalidInputError(f"{what} {entry!r} is a URL, not a path inside {where}")
    if entry.startswith("/"):
        raise InvalidInputError(f"{what} {entry!r} is an absolute path, not a path inside {where}")
    key = posixpath.normpath(entry)
    if key == ".." or key.startswith("../"):
        raise InvalidInputError(f"{what} {entry!r} leaves {where}")
    path = root if key == "." else join(root, key)
    if isinstance(fs, LocalFileSystem) and not _inside(os.path.realpath(path), os.path.realpath(root)):
        raise InvalidInputError(f"{what} {entry!r} leaves {where} through a symlink")
    return path


def contained_listing(fs: AbstractFileSystem, root: str, paths: Iterable[str]) -> list[str]:
    """``paths`` listed under ``root`` (by ``fs.ls``/``fs.find``), each checked by :func:`contained`: a listed
    symlink that points outside ``root`` is refused, naming it relative to ``root``."""
    prefix = join(root, "")
    return [contained(fs, root, path.removeprefix(prefix), "file") for path in paths]


def _inside(path: str, root: str) -> bool:
    """True if the resolved ``path`` is ``root`` or below it."""
    return os.path.commonpath([path, root]) == root


def read_bytes(fs: AbstractFileSystem, path: str) -> bytes:
    """The whole content of a file; a missing or unreadable file is a DatasetFormatError naming it."""
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise DatasetFormatError(f"cannot read {path}: {first_line(error)}") from error


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (messages reach the user as one line)."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

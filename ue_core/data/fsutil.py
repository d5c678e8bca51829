"""Small helpers shared by the readers and writers: URIs to filesystems, and one-line error text."""

from __future__ import annotations

import os

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from ue_core.errors import DatasetFormatError, InvalidInputError


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

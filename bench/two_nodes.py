"""Benchmark: the Ray engine's passes on two local nodes vs one, each node pinned to its own core.

This machine has 2 cores, so "one node" and "two nodes" only compare if each node gets the same hardware: the
script starts a Ray head pinned to core 0 and, for the two-node runs, a worker node pinned to core 1 (taskset),
each declaring 2 logical CPUs as cluster/local's nodes do (with 1, the one-node job hangs: Ray Data's
1-CPU tasks never fit beside the surrogate trainer's 0.05 CPU); the benchmark's own process (the job's
driver) stays on core 0. Both configurations
protect the same class-balanced Fashion-MNIST subset with the same config (fashion-mnist preset, exact
estimator), jobs interleaved (one node, two nodes, one node, …), and the per-pass seconds come from the
release manifests. Run from the repository root:

    python bench/two_nodes.py --size 12000 --rounds 1 --repeat 2

Prints Markdown rows for bench/README.md and the speed-up (one node / two nodes) of each pass's median.
Target (DESIGN.md): ≥ 1.6× for the ascent pass.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# nodes and driver authenticate with ~/.ray/auth_token, as in cluster/local; read when ray is imported
os.environ.setdefault("RAY_AUTH_MODE", "token")

import ray

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster" / "local"))
from localcluster import free_ports, process_start, stop_group  # the local cluster's process helpers
from protect_round import round_seconds  # same folder: the per-round split by pass

from pipelines.config import load_protect_config
from pipelines.protect import protect

PASSES = ("surrogate", "features", "estimator", "ascent")  # parts of protect_round.round_seconds
RAY = str(Path(sys.executable).parent / "ray")
OPENMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}  # 2 logical CPUs on 1 core: idle OpenMP threads sleep (as in cluster/local)


def start_node(core: int, root: Path, gcs_port: int, head: bool) -> int:
    """A Ray node pinned to ``core``, declaring 2 logical CPUs: the head (GCS on ``gcs_port``) or a node joining it.
    It leads its own process group; returns its PID."""
    ports = free_ports(7)
    command = ["taskset", "-c", str(core), RAY, "start", "--block", "--num-cpus=2", "--node-ip-address=127.0.0.1",
               "--disable-usage-stats", f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
               f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
               f"--runtime-env-agent-port={ports[4]}", f"--metrics-export-port={ports[5]}"]
    if head:
        command += ["--head", f"--port={gcs_port}", "--include-dashboard=false", f"--temp-dir={root / 'ray'}",
                    f"--ray-client-server-port={ports[6]}"]
    else:
        command += [f"--address=127.0.0.1:{gcs_port}"]
    with open(root / f"node-{core}.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **OPENMP_ENV}, start_new_session=True)
    return process.pid


def wait_for_nodes(address: str, count: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
            alive = sum(1 for node in ray.nodes() if node["Alive"])
            ray.shutdown()
            if alive >= count:
                return
        except (ConnectionError, RuntimeError):
            pass
        time.sleep(1.0)
    raise SystemExit(f"error: {count} Ray node(s) did not come up within {timeout:.0f} s")


def run(nodes: int, args: argparse.Namespace, config, directory: Path, attempt: int) -> dict[str, float]:
    """One protect job on a fresh cluster of ``nodes`` pinned nodes; seconds per pass, summed over steps."""
    root = directory / f"{nodes}-node-{attempt}"
    root.mkdir(parents=True)
    gcs_port = free_ports(1)[0]
    components = []  # as localcluster records them: pid and start time, so a reused pid is never stopped
    try:
        for node in range(nodes):
            pid = start_node(node, root, gcs_port, head=node == 0)
            components.append({"pid": pid, "started": process_start(pid)})
        address = f"127.0.0.1:{gcs_port}"
        wait_for_nodes(address, nodes)
        started = time.perf_counter()
        protect(args.source, str(root / "release"), config, engine="ray", progress=False, ray_address=address,
                tracking_uri=f"sqlite:///{directory}/mlruns.db", experiment="bench-two-nodes")
        total = time.perf_counter() - started
        ray.shutdown()
    finally:
        for component in reversed(components):
            stop_group(component)
    with open(root / "release" / "manifest.json") as f:
        history = json.load(f)["history"]
    rounds = round_seconds(history)
    seconds = {part: sum(r[part] for r in rounds) / len(rounds) for part in PASSES}
    shutil.rmtree(root / "ray", ignore_errors=True)
    return {"total": total, **seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data")
    parser.add_argument("--size", type=int, default=12000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="jobs per configuration, interleaved")
    args = parser.parse_args()
    if os.cpu_count() is None or os.cpu_count() < 2 or shutil.which("taskset") is None:
        raise SystemExit("error: needs 2 cores and taskset (util-linux)")
    os.sched_setaffinity(0, {0})  # the driver shares the head's core
    overrides = {"data.subset": args.size, "data.test_subset": 0, "beo.rounds": args.rounds,
                 "beo.surrogate.epochs": args.epochs, "formats": ["parquet"]}
    config = load_protect_config("fashion-mnist", overrides=overrides)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ue-two-nodes-") as tmp:
        for attempt in range(args.repeat):
            for nodes in (1, 2):
                seconds = run(nodes, args, config, Path(tmp), attempt)
                rows.append((nodes, seconds))
                print(f"# {nodes} node(s), job {attempt + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
                      flush=True)
    print(f"N={args.size}, rounds={args.rounds}, surrogate epochs={args.epochs}; seconds per round, 1 core per node")
    print("| date | N | nodes | total job (s) | " + " | ".join(PASSES) + " |")
    print("|---|---|---|---|" + "---|" * len(PASSES))
    for nodes, seconds in rows:
        print(f"| {datetime.date.today()} | {args.size} | {nodes} | {seconds['total']:.0f} | "
              + " | ".join(f"{seconds[key]:.1f}" for key in PASSES) + " |")
    medians = {n: {key: statistics.median(s[key] for m, s in rows if m == n) for key in PASSES} for n in (1, 2)}
    print("speed-up, one node / two nodes (medians): "
          + ", ".join(f"{part} {medians[1][part] / medians[2][part]:.2f}×" for part in PASSES))


if __name__ == "__main__":
    main()

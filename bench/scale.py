"""Benchmark: `ue protect` (Ray engine) at scale — seconds per pass, and where memory goes.

Protects N images with the Ray engine and reports, beside the per-pass seconds of each round (from the
release manifest's history) and the rest (start-up, ingest, finish and publishing), the peak resident memory of the driver (this
process), of every Ray worker process (their kernel high-water marks, /proc/PID/status VmHWM, read every
0.25 s while they live) and the object store's peak use (Ray's memory summary, sampled every 2 s).
Appends one JSON line to bench/results/scale.jsonl and prints it.

    python bench/scale.py --dataset fashion-mnist --size 60000 --rounds 2       # real Fashion-MNIST (data/)
    source /tmp/ue-local-cluster/env    # the local two-node cluster (cluster/local); the nodes hold the S3 keys
    ray job submit -- python $PWD/bench/scale.py --dataset synthetic-tiny --size 100000 --rounds 1 \\
        --set beo.surrogate.epochs=1 --address auto --source s3://datasets/tiny100000 \\
        --out s3://releases/tiny100000 --tracking-uri $MLFLOW_TRACKING_URI      # the source written first if missing

``synthetic-tiny`` is Tiny-ImageNet-shaped data (64 × 64 × 3, 200 classes, uniform random pixels) written
as Parquet shards at ``--source`` (a folder or an s3:// URI, with the usual AWS_* variables). The protect
config is the ``fashion-mnist`` preset (small-CNN surrogate, exact estimator) with ``--set`` overrides.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import ray

from pipelines.config import load_protect_config
from pipelines.config.files import parse_override
from pipelines.protect import code_version, protect
from pipelines.ray_utils import connect
from ue_core.data.dataset import ImageDataset
from ue_core.data.fsutil import filesystem
from ue_core.release import read_manifest

RESULTS = Path(__file__).parent / "results" / "scale.jsonl"
TINY_SHAPE, TINY_CLASSES = (64, 64, 3), 200


def write_synthetic_tiny(uri: str, size: int, seed: int = 0) -> None:
    """``size`` random 64 × 64 × 3 images in 200 balanced classes as Parquet shards at ``uri``, generated
    and written 10,000 at a time (never the whole set in memory)."""
    from ue_core.data.shards import ShardWriter

    rng = np.random.default_rng(seed)
    fs, path = filesystem(uri)
    writer = None
    for start in range(0, size, 10_000):
        count = min(10_000, size - start)
        rows = ImageDataset(rng.integers(0, 256, (count, *TINY_SHAPE), dtype=np.uint8),
                            np.arange(start, start + count) % TINY_CLASSES, TINY_CLASSES,
                            index=np.arange(start, start + count), name="synthetic-tiny-imagenet")
        writer = writer or ShardWriter(fs, path, rows)
        writer.add(rows)
    writer.close()


class MemorySampler(threading.Thread):
    """Peak resident memory of every Ray worker process (VmHWM), the peak of its private part (RssAnon, sampled;
    VmHWM also counts the object store's shared pages a process has read, which the store holds once for
    all), the same private peak of this process, and the object store's peak use. A peak is
    attributed to the process title (a task's or an actor's name) seen when it last rose, or, when the
    worker is back to ``ray::IDLE`` by then, to the last title seen before: with a sample every 0.25 s, a
    pooled task worker's peak names the task that caused it unless that task ran entirely between samples.
    With ``only_descendants`` (an embedded Ray, whose processes this one starts) other Ray instances on the
    machine are left out; a cluster's workers are not this process's descendants, so a cluster run counts
    every Ray worker on the machine."""

    def __init__(self, only_descendants: bool) -> None:
        super().__init__(daemon=True)
        self.only_descendants = only_descendants
        self.workers: dict[int, tuple[str, int]] = {}  # pid → (the work that raised its peak, peak bytes)
        self.private: dict[int, tuple[str, int]] = {}  # the same for the private part
        self.own_private_peak = 0
        self.last_work: dict[int, str] = {}  # pid → the last title seen other than ray::IDLE
        self.object_store_peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        ticks = 0
        while not self.stopped.wait(0.25):
            self.own_private_peak = max(self.own_private_peak, private_bytes(Path("/proc/self/status").read_text()))
            for pid_dir in Path("/proc").glob("[0-9]*"):
                try:
                    title = (pid_dir / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    if not title.startswith("ray::") or int(pid_dir.name) == os.getpid():
                        continue
                    if self.only_descendants and not descends_from_this_process(int(pid_dir.name)):
                        continue
                    status = (pid_dir / "status").read_text()
                except OSError:
                    continue
                pid = int(pid_dir.name)
                peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
                if title != "ray::IDLE":
                    self.last_work[pid] = title
                if peak > self.workers.get(pid, ("", 0))[1]:
                    self.workers[pid] = (self.last_work.get(pid, title), peak)
                private = private_bytes(status)
                if private > self.private.get(pid, ("", 0))[1]:
                    self.private[pid] = (self.last_work.get(pid, title), private)
            ticks += 1
            if ticks % 8 == 0 and ray.is_initialized():  # every 2 s
                self.object_store_peak = max(self.object_store_peak, object_store_used())

    def stop(self) -> dict:
        self.stopped.set()
        self.join()
        return {"worker_peak_rss_mib": peaks_by_title(self.workers.values()),
                "worker_peak_private_mib": peaks_by_title(self.private.values()),
                "driver_peak_private_mib": round(self.own_private_peak / 2**20),
                "object_store_peak_mib": round(self.object_store_peak / 2**20)}


def private_bytes(status: str) -> int:
    """A process's private resident bytes (RssAnon) from its /proc/PID/status text."""
    return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) * 1024


def peaks_by_title(peaks: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The largest of ``(title, bytes)`` peaks per title, in MiB."""
    by_title: dict[str, int] = {}
    for title, peak in peaks:
        by_title[title] = max(by_title.get(title, 0), peak)
    return {title: round(peak / 2**20) for title, peak in sorted(by_title.items())}


def descends_from_this_process(pid: int) -> bool:
    """Whether ``pid``'s chain of parents reaches this process (/proc/PID/stat's fourth field)."""
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat[stat.rindex(")") + 2:].split()[1])  # after "pid (comm) state"
        if pid == os.getpid():
            return True
    return False


def object_store_used() -> int:
    """Bytes in the object store now (Ray's `ray memory --stats-only` summary); 0 when unavailable."""
    try:
        from ray._private.internal_api import memory_summary

        summary = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    except Exception:  # noqa: BLE001 - an internal API: its absence must not stop the benchmark
        return 0
    match = re.search(r"Plasma memory usage (\d+) MiB", summary)
    return int(match.group(1)) * 2**20 if match else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("fashion-mnist", "synthetic-tiny"), default="fashion-mnist")
    parser.add_argument("--source", default="data")
    parser.add_argument("--size", type=int, default=60000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--address", default=None, help="a running cluster (default: an embedded Ray)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the fashion-mnist preset")
    parser.add_argument("--out", default=None, help="where the release goes (default: a temporary folder)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: a temporary sqlite store; a cluster needs a server)")
    args = parser.parse_args()
    if args.dataset == "synthetic-tiny":
        fs, path = filesystem(args.source)
        if not fs.exists(path):
            write_synthetic_tiny(args.source, args.size)
    overrides = {"data.subset": args.size, "data.test_subset": 0,
                 "beo.rounds": args.rounds, "formats": ["parquet"]}
    overrides |= dict(parse_override(item) for item in args.set)
    config = load_protect_config("fashion-mnist", overrides=overrides)
    with tempfile.TemporaryDirectory() as directory:
        out = args.out or f"{directory}/release"
        connect(args.address, progress=False)
        sampler = MemorySampler(only_descendants=args.address is None)
        sampler.start()
        started = time.perf_counter()
        try:
            summary = protect(args.source, out, config, engine="ray", progress=False, ray_address=args.address,
                              tracking_uri=args.tracking_uri or f"sqlite:///{directory}/mlruns.db", experiment="bench")
        finally:
            memory = sampler.stop()
            ray.shutdown()
        total = time.perf_counter() - started
        history = read_manifest(out)["history"]
    seconds = {key: round(sum(h.get(key, 0.0) for h in history), 1) for key in
               ("seconds_read", "seconds_surrogate", "seconds_features", "seconds_estimator", "seconds_ascent",
                "seconds_write")}
    result = {
        "date": str(datetime.date.today()), "code": code_version(), "dataset": args.dataset, "size": summary.count, "rounds": args.rounds,
        "address": args.address, "overrides": args.set, "total_seconds": round(total),
        "seconds_per_pass_all_rounds": seconds,
        "seconds_other": round(total - sum(seconds.values())),  # start-up, ingest, finish and publishing
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), **memory,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

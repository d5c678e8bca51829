"""Benchmark: the memory of reading a protect job's state back, as the finish does.

Builds the state of N Tiny-ImageNet-shaped images as the Ray engine does (ingest shards → δ = 0 and the
other state columns, in blocks of the canonical layout), writes it with or without Parquet dictionary
encoding and reads the release's columns back in batches, either as the finish does today (``--reader
finish``: pyarrow in this process, a row group at a time, in index order; pipelines/ray_engine/state.py
``index_ordered_batches``) or with Ray Data's Parquet reader (``--reader ray-data``, how the finish read
it until 2026-12-03, there followed by a sort). Reports the row groups' encoded size beside the state's,
this process's peak resident memory during the read and each Ray worker's, named by the task that raised it
(bench/scale.py's sampler). Ray 2.60 sizes its Parquet read tasks by the row groups' encoded bytes: a
dictionary-encoded δ looks tiny, so one task reads the whole state (bench/README.md "Scale").

    python bench/state_read.py --size 10000 --reader ray-data --dictionary   # before 2026-12-03
    python bench/state_read.py --size 10000 --reader ray-data               # plain encoding, Ray Data's read
    python bench/state_read.py --size 10000                                 # what the finish does now
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import ray
from scale import MemorySampler, write_synthetic_tiny

from pipelines.ray_engine.resources import Resources
from pipelines.ray_engine.state import (
    DatasetInfo,
    canonical_layout,
    index_ordered_batches,
    initial_state,
    read_state,
    state_row_bytes,
)

COLUMNS = ["index", "label", "image", "delta", "steps"]
RELEASE_COLUMNS = ["index", "label", "image", "delta"]
SHAPE = (64, 64, 3)
BATCH_ROWS = 341  # the finish's batch of Tiny-ImageNet rows (pipelines/ray_engine/engine.py RELEASE_BATCH_VALUES)


def own_peak_rss_mib() -> int:
    """This process's peak resident memory since the last :func:`reset_own_peak_rss` (VmHWM)."""
    status = Path("/proc/self/status").read_text()
    return round(int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024)


def reset_own_peak_rss() -> None:
    """Lower this process's VmHWM to its present resident memory (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--dictionary", action="store_true", help="write with Parquet's default dictionary encoding")
    parser.add_argument("--reader", choices=("finish", "ray-data"), default="finish")
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as folder:
        write_synthetic_tiny(f"{folder}/ingest", args.size)
        state = canonical_layout(
            read_state(f"{folder}/ingest").map_batches(initial_state, fn_kwargs={"image_shape": SHAPE, "columns": COLUMNS}),
            COLUMNS, DatasetInfo(SHAPE, 200, args.size, "synthetic-tiny"), Resources.from_cluster(),
        )
        state.write_parquet(f"{folder}/state", use_dictionary=args.dictionary)
        row_groups = [pq.ParquetFile(path).metadata for path in sorted(Path(f"{folder}/state").glob("*.parquet"))]
        sampler = MemorySampler(only_descendants=True)
        sampler.start()
        reset_own_peak_rss()
        before = own_peak_rss_mib()
        if args.reader == "finish":
            batches = index_ordered_batches(f"{folder}/state", RELEASE_COLUMNS, BATCH_ROWS)
        else:
            batches = read_state(f"{folder}/state").select_columns(RELEASE_COLUMNS).iter_batches(
                batch_size=BATCH_ROWS, batch_format="numpy")
        rows = sum(len(batch["index"]) for batch in batches)
        driver = {"driver_rss_before_read_mib": before, "driver_peak_rss_during_read_mib": own_peak_rss_mib()}
        memory = sampler.stop()
    ray.shutdown()
    encoded = sum(m.row_group(i).total_byte_size for m in row_groups for i in range(m.num_row_groups))
    print(json.dumps({"size": args.size, "reader": args.reader, "dictionary": args.dictionary, "rows_read": rows, "files": len(row_groups),
                      "state_mib": round(args.size * state_row_bytes(SHAPE, COLUMNS) / 2**20),
                      "row_groups_encoded_mib": round(encoded / 2**20), **driver, **memory}, indent=1))


if __name__ == "__main__":
    main()

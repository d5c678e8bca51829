"""Benchmark: the memory of Ray Data's Parquet read of a protect job's state, as the finish reads it back.

Builds the state of N Tiny-ImageNet-shaped images as the Ray engine does (ingest shards → δ = 0 and the
other state columns, in blocks of the canonical layout), writes it with or without Parquet dictionary
encoding, reads it back (select the release's columns, iterate in batches) and reports the row groups'
encoded size beside the state's and each Ray worker's peak resident memory, named by the task that raised
it (bench/scale.py's sampler). Ray 2.60 sizes its Parquet read tasks by the row groups' encoded bytes: a dictionary-encoded δ
looks tiny, so one task reads the whole state (bench/README.md "Scale").

    python bench/state_read.py --size 10000 --dictionary       # how the state was written before 2026-12-03
    python bench/state_read.py --size 10000                    # how pipelines/ray_engine/state.py writes it
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import ray
from scale import MemorySampler, write_synthetic_tiny

from pipelines.ray_engine.resources import Resources
from pipelines.ray_engine.state import (
    DatasetInfo,
    canonical_layout,
    initial_state,
    read_state,
    state_row_bytes,
)

COLUMNS = ["index", "label", "image", "delta", "steps"]
SHAPE = (64, 64, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--dictionary", action="store_true", help="write with Parquet's default dictionary encoding")
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
        rows = sum(len(batch["index"]) for batch in read_state(f"{folder}/state").select_columns(
            ["index", "label", "image", "delta"]).iter_batches(batch_size=341, batch_format="numpy"))
        memory = sampler.stop()
    ray.shutdown()
    encoded = sum(m.row_group(i).total_byte_size for m in row_groups for i in range(m.num_row_groups))
    print(json.dumps({"size": args.size, "dictionary": args.dictionary, "rows_read": rows, "files": len(row_groups),
                      "state_mib": round(args.size * state_row_bytes(SHAPE, COLUMNS) / 2**20),
                      "row_groups_encoded_mib": round(encoded / 2**20), **memory}, indent=1))


if __name__ == "__main__":
    main()

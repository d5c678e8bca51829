"""Benchmark: wall time per BEO round, Ray engine on one node vs the one-process reference, same data.

Both engines protect the same class-balanced Fashion-MNIST subset with the same config (small CNN
surrogate, exact estimator); the per-round time and its split by pass come from the release manifests'
history (surrogate training, features, estimator, ascent, and for Ray the state's Parquet read and write).
Run from the repository root:

    python bench/protect_round.py --size 4000 --rounds 2 --repeat 2

Prints Markdown rows for bench/README.md, one per job, engines interleaved (reference, ray, reference, …),
then the ratio of the median round times. The reference uses all the machine's threads; the Ray engine
sizes its actor pools from ray.available_resources() as it does for users.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time

import ray

from pipelines.config import load_protect_config
from pipelines.protect import protect
from pipelines.ray_engine import worker_env

PARTS = {
    "surrogate": ("seconds_surrogate",),
    "features": ("seconds_features",),
    "estimator": ("seconds_estimator",),
    "ascent": ("seconds_ascent",),
    "state I/O": ("seconds_read", "seconds_write"),
}


def per_round(history: list[dict[str, float]]) -> dict[str, float]:
    """Seconds per round of each part (read, surrogate and write are per round; the passes per step)."""
    rounds = sorted({h["round"] for h in history})
    split = dict.fromkeys(PARTS, 0.0)
    for r in rounds:
        steps = [h for h in history if h["round"] == r]
        for part, keys in PARTS.items():
            for key in keys:
                if key in ("seconds_features", "seconds_estimator", "seconds_ascent"):
                    split[part] += sum(h.get(key, 0.0) for h in steps)
                else:
                    split[part] += steps[0].get(key, 0.0)
    return {part: seconds / len(rounds) for part, seconds in split.items()}


def run(engine: str, args: argparse.Namespace, config, directory: str, attempt: int) -> tuple[float, dict]:
    out = f"{directory}/{engine}-{attempt}"
    if engine == "ray":
        # as `ue protect` starts a local Ray (pipelines.ray_engine.connect), with its workers' environment
        ray.init(include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": worker_env()})
    try:
        started = time.perf_counter()
        protect(args.source, out, config, engine=engine, progress=False,
                tracking_uri=f"sqlite:///{directory}/mlruns.db", experiment="bench")
        total = time.perf_counter() - started
    finally:
        if engine == "ray":
            ray.shutdown()
    with open(f"{out}/manifest.json") as f:
        return total, per_round(json.load(f)["history"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data")
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="jobs per engine, interleaved")
    parser.add_argument("--engines", default="reference,ray")
    args = parser.parse_args()
    overrides = {"data.subset": args.size, "data.test_subset": 0, "beo.rounds": args.rounds,
                 "beo.surrogate.epochs": args.epochs, "formats": ["parquet"]}
    config = load_protect_config("fashion-mnist", overrides=overrides)
    engines = args.engines.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for attempt in range(args.repeat):
            for engine in engines:
                total, split = run(engine, args, config, directory, attempt)
                rows.append((engine, total, split))
                print(f"# {engine} job {attempt + 1}: {total:.0f} s, round {sum(split.values()):.1f} s", flush=True)
    medians = {e: statistics.median(sum(s.values()) for en, _, s in rows if en == e) for e in engines}
    reference = medians.get("reference")
    print(f"N={args.size}, rounds={args.rounds}, surrogate epochs={args.epochs}; seconds per round")
    print("| date | N | engine | total job (s) | " + " | ".join(PARTS) + " | round (s) | vs reference |")
    print("|---|---|---|---|" + "---|" * len(PARTS) + "---|---|")
    for engine, total, split in rows:
        round_seconds = sum(split.values())
        parts = " | ".join(f"{v:.1f}" if v else "—" for v in split.values())
        ratio = f"{round_seconds / reference:.2f}×" if reference else "—"
        print(f"| {datetime.date.today()} | {args.size} | {engine} | {total:.0f} | {parts} | {round_seconds:.1f} | "
              f"{ratio} |")
    if reference and "ray" in medians:
        print(f"median round: ray {medians['ray']:.1f} s, reference {reference:.1f} s, "
              f"ratio {medians['ray'] / reference:.2f}×")


if __name__ == "__main__":
    main()

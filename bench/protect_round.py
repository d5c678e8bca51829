"""Benchmark: wall time per BEO round, Ray engine on one node vs the one-process reference, same data.

Both engines protect the same class-balanced Fashion-MNIST subset with the same config (small CNN
surrogate, exact estimator); the per-round time and its split by pass come from the release manifests'
history (surrogate training, features, estimator, ascent). Run from the repository root:

    python bench/protect_round.py --size 4000 --rounds 2

Prints Markdown rows for bench/README.md. The reference uses all the machine's threads; the Ray engine
sizes its actor pools from ray.available_resources() as it does for users.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time

import ray

from pipelines.config import load_protect_config
from pipelines.protect import protect


def per_round(history: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    rounds = len({h["round"] for h in history})
    return {k: sum(h.get(k, 0.0) for h in history) / rounds for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data")
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    overrides = {"data.subset": args.size, "data.test_subset": 0, "beo.rounds": args.rounds,
                 "beo.surrogate.epochs": args.epochs, "formats": ["parquet"]}
    config = load_protect_config("fashion-mnist", overrides=overrides)
    rows = {}
    with tempfile.TemporaryDirectory() as directory:
        tracking = f"sqlite:///{directory}/mlruns.db"
        for engine in ("reference", "ray"):
            if engine == "ray":
                ray.init(include_dashboard=False, log_to_driver=False)
            started = time.perf_counter()
            protect(args.source, f"{directory}/{engine}", config, engine=engine, progress=False,
                    tracking_uri=tracking, experiment="bench")
            total = time.perf_counter() - started
            with open(f"{directory}/{engine}/manifest.json") as f:
                history = json.load(f)["history"]
            rows[engine] = (total, per_round(history, ("seconds_surrogate", "seconds_features", "seconds_estimator",
                                                       "seconds_ascent")))
        ray.shutdown()
    print(f"N={args.size}, rounds={args.rounds}, surrogate epochs={args.epochs}; seconds per round")
    print("| date | engine | total job (s) | surrogate | features | estimator | ascent | round (s) | vs reference |")
    print("|---|---|---|---|---|---|---|---|---|")
    reference_round = None
    for engine, (total, split) in rows.items():
        round_seconds = sum(split.values())
        if engine == "reference":
            reference_round = round_seconds
        parts = " | ".join(f"{v:.1f}" if v else "—" for v in split.values())
        print(f"| {datetime.date.today()} | {engine} | {total:.0f} | {parts} | {round_seconds:.1f} | "
              f"{round_seconds / reference_round:.2f}× |")


if __name__ == "__main__":
    main()

"""Benchmark: wall time per BEO round, Ray engine on one node vs the one-process reference, same data.

Both engines protect the same class-balanced Fashion-MNIST subset with the same config (small CNN
surrogate, exact estimator); the per-round time and its split by pass come from the release manifests'
history (surrogate training and its test accuracy, features, estimator, ascent, and for Ray the state's read
and write). Run from the repository root:

    python bench/protect_round.py                      # N = 30,000, 2 rounds, 2 jobs per engine
    python bench/protect_round.py --size 12000 --rounds 3

The first round of a job carries the job's one-time costs (for Ray: the Train run's start-up beside the
first Parquet read and layout of the state), so each job reports its first round and its steady-state
round (the mean of the later rounds) separately, and its whole wall time. Prints Markdown rows for
bench/README.md, one per job, engines interleaved (reference, ray, reference, …), then the ratios of the
medians. The reference uses all the machine's threads; the Ray engine sizes its actor pools from
ray.available_resources() as it does for users.
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
from pipelines.ray_utils import connect

PARTS = {
    "surrogate": ("seconds_surrogate",),
    "features": ("seconds_features",),
    "estimator": ("seconds_estimator",),
    "ascent": ("seconds_ascent",),
    "state I/O": ("seconds_read", "seconds_write"),
}


def round_seconds(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Seconds of each part of each round (read, surrogate and write are per round; the passes per step)."""
    rounds = []
    for r in sorted({h["round"] for h in history}):
        steps = [h for h in history if h["round"] == r]
        split = {}
        for part, keys in PARTS.items():
            per_step = keys[0] in ("seconds_features", "seconds_estimator", "seconds_ascent")
            split[part] = sum(sum(h.get(k, 0.0) for h in steps) if per_step else steps[0].get(k, 0.0) for k in keys)
        rounds.append(split)
    return rounds


def summarise(total: float, rounds: list[dict[str, float]]) -> dict:
    """The job's wall time, its first round, and its steady state: the mean split of the later rounds."""
    later = rounds[1:] or rounds
    steady = {part: sum(r[part] for r in later) / len(later) for part in PARTS}
    return {"total": total, "first": sum(rounds[0].values()), "steady": steady, "round": sum(steady.values())}


def run(engine: str, args: argparse.Namespace, config, directory: str, attempt: int) -> dict:
    out = f"{directory}/{engine}-{attempt}"
    if engine == "ray":
        connect(None, progress=False)  # the local Ray `ue protect` starts; shut down after each job
    try:
        started = time.perf_counter()
        protect(args.source, out, config, engine=engine, progress=False,
                tracking_uri=f"sqlite:///{directory}/mlruns.db", experiment="bench")
        total = time.perf_counter() - started
    finally:
        if engine == "ray":
            ray.shutdown()
    with open(f"{out}/manifest.json") as f:
        return summarise(total, round_seconds(json.load(f)["history"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data")
    # defaults: the configuration reported against the target in bench/README.md (~16 min here)
    parser.add_argument("--size", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="jobs per engine, interleaved")
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
                job = run(engine, args, config, directory, attempt)
                rows.append((engine, job))
                print(f"# {engine} job {attempt + 1}: {job['total']:.0f} s, first round {job['first']:.1f} s, "
                      f"later rounds {job['round']:.1f} s", flush=True)
    medians = {e: {key: statistics.median(job[key] for en, job in rows if en == e) for key in ("total", "round")}
               for e in engines}
    print(f"N={args.size}, rounds={args.rounds}, surrogate epochs={args.epochs}; seconds; the split is per round "
          "after the first (mean)")
    print("| date | N | engine | total job (s) | first round (s) | " + " | ".join(PARTS)
          + " | later rounds (s) | vs reference |")
    print("|---|---|---|---|---|" + "---|" * len(PARTS) + "---|---|")
    reference = medians.get("reference")
    for engine, job in rows:
        parts = " | ".join(f"{v:.1f}" if v else "—" for v in job["steady"].values())
        ratio = f"{job['round'] / reference['round']:.2f}×" if reference else "—"
        print(f"| {datetime.date.today()} | {args.size} | {engine} | {job['total']:.0f} | {job['first']:.1f} | "
              f"{parts} | {job['round']:.1f} | {ratio} |")
    if reference and "ray" in medians:
        ray_round, ray_total = medians["ray"]["round"], medians["ray"]["total"]
        print(f"medians: round after the first: ray {ray_round:.1f} s, reference {reference['round']:.1f} s, "
              f"ratio {ray_round / reference['round']:.2f}×; whole job: ray {ray_total:.0f} s, "
              f"reference {reference['total']:.0f} s, ratio {ray_total / reference['total']:.2f}×")


if __name__ == "__main__":
    main()

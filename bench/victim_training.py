"""Benchmark: victim training through Ray Train vs a plain PyTorch loop, same data, model, recipe and threads.

Each repeat trains the same victim twice on the same class-balanced Fashion-MNIST subset: once with
ue_core.training.fit in this process (torch on all the node's cores), once with pipelines.victims.train_victim
(one TorchTrainer, workers and threads from Scaling.for_victim, MLflow off). Both evaluate on the same clean
test subset after every epoch (outside the timed epochs), and the final test accuracies should be identical.
The order alternates between repeats so that drift in the machine's load hits both sides. Run from the
repository root:

    python bench/victim_training.py --size 10000 --model small_cnn --epochs 3 --repeats 2

Throughput = N · epochs / Σ epoch seconds (fit's own per-epoch timing, on both sides: pure training, the
steady state); "best epoch" = N / the fastest epoch, which load from other processes (that only ever slows
an epoch down) disturbs least. Wall = everything one victim costs; for Ray Train that is train_victim's whole
call (Ray Data ingest, TorchTrainer start-up, training, checkpoint), with the local Ray already started.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import tempfile
import time

import ray
import torch
from ray.train import UserCallback

from pipelines.config import load_evaluate_config
from pipelines.ray_utils import Shared, connect
from pipelines.victims import train_victim
from ue_core.data import read_dataset
from ue_core.data.dataset import balanced_subset
from ue_core.defences import adversarial_training, train_transform, training_loss
from ue_core.models import build_model
from ue_core.training import evaluate, fit


def plain(train, test, config, threads: int) -> dict[str, float]:
    """The victim with ue_core.fit in this process, as the Ray worker runs it (rank 0 of 1)."""
    started = time.perf_counter()
    torch.set_num_threads(threads)
    x, y = train.tensors()
    test_x, test_y = test.tensors()
    height, _, channels = train.image_shape
    model = build_model(config.victim.model, train.num_classes, in_channels=channels, image_size=height,
                        seed=config.seed)
    history = fit(model, x, y, config.victim.to_recipe(1), seed=config.seed,
                  adversarial=adversarial_training(config.defence),
                  batch_transform=train_transform(config.defence, train.num_classes),
                  training_loss=training_loss(config.defence, config.victim.epochs),
                  on_epoch_end=lambda record: evaluate(model, test_x, test_y))
    accuracy = evaluate(model, test_x, test_y)
    return {"train": sum(h["seconds"] for h in history), "wall": time.perf_counter() - started,
            "epochs": [h["seconds"] for h in history], "accuracy": accuracy}


class EpochSeconds(UserCallback):
    """Appends rank 0's epoch_seconds to a local file (callbacks run in the Ray Train controller process)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if "epoch_seconds" in metrics[0]:
            with open(self.path, "a") as f:
                f.write(json.dumps(metrics[0]["epoch_seconds"]) + "\n")


def on_ray(train, test, config, storage: str, name: str) -> dict[str, float]:
    """The victim with pipelines.victims.train_victim; epoch seconds from the reports of the Ray Train run."""
    started = time.perf_counter()
    test_x, test_y = test.tensors()
    log = f"{storage}/{name}.epochs"
    result = train_victim(train, Shared.put((test_x.numpy(), test_y.numpy())), config, name, storage,
                          callbacks=[EpochSeconds(log)])
    wall = time.perf_counter() - started
    with open(log) as f:
        epochs = [json.loads(line) for line in f]
    return {"train": sum(epochs), "wall": wall, "epochs": epochs, "accuracy": result.final_test_accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data")
    parser.add_argument("--size", type=int, default=10000, help="training images (class-balanced subset)")
    parser.add_argument("--test-size", type=int, default=1000, help="clean test images evaluated per epoch")
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    config = load_evaluate_config(overrides={"victim.model": args.model, "victim.epochs": args.epochs,
                                             "test_subset": args.test_size})
    train = balanced_subset(read_dataset(args.source, split="train"), args.size, seed=config.seed)
    test = balanced_subset(read_dataset(args.source, split="test"), args.test_size, seed=config.seed)
    started = time.perf_counter()
    connect("local", progress=False)  # a fresh local Ray, as `ue evaluate` starts one
    print(f"ray start-up {time.perf_counter() - started:.1f} s (once, not in the wall times below)")
    threads = os.cpu_count() or 1
    images = args.size * args.epochs
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for repeat in range(args.repeats):
            order = ("plain", "ray") if repeat % 2 == 0 else ("ray", "plain")
            runs = {}
            for side in order:
                runs[side] = (plain(train, test, config, threads) if side == "plain"
                              else on_ray(train, test, config, storage, f"victim-{repeat}"))
                print(f"repeat {repeat} {side}: epochs {[round(s, 1) for s in runs[side]['epochs']]} s, "
                      f"wall {runs[side]['wall']:.1f} s, test accuracy {runs[side]['accuracy']:.4f}", flush=True)
            rows.append((repeat, runs["plain"], runs["ray"]))
    ray.shutdown()
    print(f"\n{args.model}, N={args.size}, epochs={args.epochs}, torch threads {threads}; "
          f"images/s = N·epochs / Σ epoch seconds")
    print("| date | model | N × epochs | repeat | plain img/s | Ray Train img/s | throughput ratio | "
          "best epoch: plain / Ray img/s | best-epoch ratio | plain wall (s) | Ray Train wall (s) | wall: Ray / plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for repeat, p, r in rows:
        print(f"| {datetime.date.today()} | {args.model} | {args.size} × {args.epochs} | {repeat} | "
              f"{images / p['train']:.0f} | {images / r['train']:.0f} | {p['train'] / r['train']:.2f}× | "
              f"{args.size / min(p['epochs']):.0f} / {args.size / min(r['epochs']):.0f} | "
              f"{min(p['epochs']) / min(r['epochs']):.2f}× | "
              f"{p['wall']:.1f} | {r['wall']:.1f} | {r['wall'] / p['wall']:.2f}× |")
    for label, ratios in (("throughput, Ray / plain", [p["train"] / r["train"] for _, p, r in rows]),
                          ("wall time, Ray / plain", [r["wall"] / p["wall"] for _, p, r in rows])):
        print(f"{label}: median {statistics.median(ratios):.2f}×, "
              f"range {min(ratios):.2f}–{max(ratios):.2f}× over {len(ratios)} repeats")
    best = min(min(p["epochs"]) for _, p, _ in rows) / min(min(r["epochs"]) for _, _, r in rows)
    print(f"best epoch over all repeats, Ray / plain: {best:.2f}×; target ≥ 0.8× throughput")


if __name__ == "__main__":
    main()

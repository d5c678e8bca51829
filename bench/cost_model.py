"""The cost model of a BEO round, fitted to the scale runs (bench/results/scale.jsonl), and what it predicts.

A round's four passes each do a known amount of arithmetic (counted, not guessed: torch's FLOP counter on
the real model at the real image shape):

    surrogate   N · E · train(model, shape)          E epochs of forward + backward (weights)
    features    N · forward(model, shape)
    estimator   6 · N² · D                            exact kernel estimate: three N × N × D GEMMs
    ascent      N · S · vjp(model, shape)             S ascent steps: forward + backward to the pixels

and seconds = work / throughput, where each pass's throughput (FLOP/s) is fitted per run. The features,
estimator and ascent passes split their rows over every pass worker (data-parallel); the surrogate is one
Train worker (ideal DDP would split it too: stated as an assumption wherever it is used). docs/cost-model.md
explains the model and its predictions.

    python bench/cost_model.py                         # the fit: one row per scale run
    python bench/cost_model.py --dates 2026-12-03 --predict --gpu-tflops 30 --gpus 8
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipelines.config import load_protect_config
from pipelines.config.files import parse_override
from ue_core.models import build_model

RESULTS = Path(__file__).parent / "results" / "scale.jsonl"
SHAPES = {"fashion-mnist": ((1, 28, 28), 10), "synthetic-tiny": ((3, 64, 64), 200)}
PASSES = ("surrogate", "features", "estimator", "ascent")
TARGETS = {  # the paper presets (pipelines/presets): model, (C, H, W), classes, N, surrogate epochs, steps per round
    "CIFAR-10 (cifar10-paper)": ("resnet18", (3, 32, 32), 10, 50_000, 30, 1),
    "Tiny ImageNet (tiny-imagenet-paper)": ("resnet18", (3, 64, 64), 200, 100_000, 30, 1),
}


@functools.cache
def per_image_flops(model_name: str, shape: tuple[int, int, int], classes: int) -> dict[str, float]:
    """FLOPs per image (2 per multiply-add) of a forward pass, a training step and a pixel VJP."""
    model = build_model(model_name, classes, in_channels=shape[0], image_size=shape[1], seed=0)
    x = torch.rand(4, *shape)
    with FlopCounterMode(display=False) as counter:
        model.features(x)
    forward = counter.get_total_flops() / len(x)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)).backward()
    train = counter.get_total_flops() / len(x)
    model.requires_grad_(False)
    pixels = x.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        model.features(pixels).sum().backward()
    return {"forward": forward, "train": train, "vjp": counter.get_total_flops() / len(x),
            "feature_dim": float(model.feature_dim)}


def round_work(model_name: str, shape: tuple[int, int, int], classes: int, n: int, epochs: int,
               steps: int) -> dict[str, float]:
    """FLOPs of each pass of one round."""
    flops = per_image_flops(model_name, shape, classes)
    return {"surrogate": n * epochs * flops["train"], "features": n * flops["forward"],
            "estimator": 6.0 * n * n * flops["feature_dim"], "ascent": n * steps * flops["vjp"]}


def fitted_runs(dates: list[str] | None = None) -> list[dict]:
    """Per scale run (of ``dates``, default all): N, the seconds of each pass per round and the throughput
    they imply (GFLOP/s)."""
    fits = []
    for line in RESULTS.read_text().splitlines():
        run = json.loads(line)
        if dates and run["date"] not in dates:
            continue
        shape, classes = SHAPES[run["dataset"]]
        overrides = dict(parse_override(item) for item in run["overrides"])
        beo = load_protect_config("fashion-mnist", overrides=overrides).beo
        work = round_work(beo.surrogate.model, shape, classes, run["size"], beo.surrogate.epochs,
                          beo.steps_per_round)
        seconds = {name: run["seconds_per_pass_all_rounds"][f"seconds_{name}"] / run["rounds"] for name in PASSES}
        fits.append({"date": run["date"], "dataset": run["dataset"], "n": run["size"], "code": run["code"],
                     "seconds": seconds, "gflops": {name: work[name] / seconds[name] / 1e9 for name in PASSES}})
    return fits


HERE = {  # this machine's scale runs (bench/scale.py): dataset, N, surrogate epochs, steps per round
    "Fashion-MNIST 60,000 (fashion-mnist preset)": ("fashion-mnist", 60_000, 3, 1),
    "Tiny-ImageNet-shaped 100,000 (1-epoch surrogate)": ("synthetic-tiny", 100_000, 1, 1),
}


def predict_here(fits: list[dict]) -> None:
    """Seconds per round of :data:`HERE` on this machine: each network pass at the median throughput fitted
    on the same image shape (it differs between shapes), the estimator at that of the largest N fitted (its
    work does not depend on the shape, and its rate grows with N as its fixed costs amortise)."""
    largest = max(fits, key=lambda fit: fit["n"])
    print("\nprediction for this machine (GFLOP/s: the median of the runs on the same shape; the estimator's "
          f"from N = {largest['n']}: {largest['gflops']['estimator']:.0f})")
    print("| run | surrogate (s) | features | estimator | ascent | round (s) |")
    print("|---|---|---|---|---|---|")
    for name, (dataset, n, epochs, steps) in HERE.items():
        same = [fit for fit in fits if fit["dataset"] == dataset] or fits
        rates = {p: sorted(fit["gflops"][p] for fit in same)[len(same) // 2] * 1e9 for p in PASSES}
        rates["estimator"] = largest["gflops"]["estimator"] * 1e9
        shape, classes = SHAPES[dataset]
        work = round_work("small_cnn", shape, classes, n, epochs, steps)
        seconds = {p: work[p] / rates[p] for p in PASSES}
        print(f"| {name} | " + " | ".join(f"{seconds[p]:.0f}" for p in PASSES) + f" | {sum(seconds.values()):.0f} |")


def predict(gpu_tflops: float, gpus: int, estimator_tflops: float) -> None:
    """Seconds per round and per job of the paper presets on ``gpus`` GPUs at an assumed achieved rate."""
    print(f"\nprediction: {gpus} GPU(s) at an assumed {gpu_tflops} TFLOP/s achieved in the network passes, "
          f"{estimator_tflops} TFLOP/s in the estimator's GEMMs; every pass split ideally over the GPUs")
    print("| target | surrogate (s) | features | estimator | ascent | round (s) | 100 rounds (h) |")
    print("|---|---|---|---|---|---|---|")
    for name, (model, shape, classes, n, epochs, steps) in TARGETS.items():
        work = round_work(model, shape, classes, n, epochs, steps)
        seconds = {p: work[p] / ((estimator_tflops if p == "estimator" else gpu_tflops) * 1e12) / gpus
                   for p in PASSES}
        total = sum(seconds.values())
        print(f"| {name} | " + " | ".join(f"{seconds[p]:.1f}" for p in PASSES)
              + f" | {total:.0f} | {100 * total / 3600:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predict", action="store_true", help="also predict the paper presets on GPUs")
    parser.add_argument("--gpu-tflops", type=float, default=30.0, help="assumed achieved rate, network passes")
    parser.add_argument("--estimator-tflops", type=float, default=20.0, help="assumed achieved rate, GEMMs")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--dates", nargs="*", help="fit only the runs of these dates (a quiet machine's)")
    args = parser.parse_args()
    print("| date | dataset | N | code | " + " | ".join(f"{p} s (GFLOP/s)" for p in PASSES) + " |")
    print("|---|---|---|---|" + "---|" * len(PASSES))
    fits = fitted_runs(args.dates)
    for fit in fits:
        cells = " | ".join(f"{fit['seconds'][p]:.1f} ({fit['gflops'][p]:.0f})" for p in PASSES)
        print(f"| {fit['date']} | {fit['dataset']} | {fit['n']} | {fit['code']} | {cells} |")
    print("\nper image:", {f"{m} {s}": {k: f"{v / 1e9:.3f} GFLOP" if k != "feature_dim" else int(v)
                                       for k, v in per_image_flops(m, s, c).items()}
                         for m, s, c in [("small_cnn", (1, 28, 28), 10), ("small_cnn", (3, 64, 64), 200),
                                         ("resnet18", (3, 32, 32), 10), ("resnet18", (3, 64, 64), 200)]})
    if args.predict:
        predict_here(fits)
        predict(args.gpu_tflops, args.gpus, args.estimator_tflops)


if __name__ == "__main__":
    main()

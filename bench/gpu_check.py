"""GPU check: the reference engine's passes on one device, and CPU-vs-device agreement on a small set.

Needs only torch, torchvision, numpy, pyarrow, pyyaml, tqdm and pillow (ue_core; never Ray, MLflow or
pipelines/). Run from the repository root:

    PYTHONPATH=. python bench/gpu_check.py --out gpu_check.json                       # CUDA, synthetic data
    PYTHONPATH=. python bench/gpu_check.py --fashion-mnist data/fashion-mnist --out gpu_check.json
    PYTHONPATH=. python bench/gpu_check.py --device cpu --size 512 --out dry.json   # a CPU dry run

For each shape, Fashion-MNIST (28×28×1, 10 classes: the real training set with ``--fashion-mnist DIR``,
else synthetic uniform uint8 with random labels) and CIFAR (32×32×3, 10 classes, synthetic), with ``--size``
images (default 60,000 and 50,000), and each surrogate in ``--models`` (small_cnn, resnet18), it times the
passes of one BEO step as ue_core.methods.beo runs them on ``--device``: surrogate training (1 epoch, plain
recipe, batch 128), features, the exact estimator (value and gradient, bandwidth "nearest-neighbour") and
the ascent (feature VJP on the device, the update on the host), each in seconds and images/s, plus the
device's peak memory (torch.cuda.max_memory_allocated, GiB; 0 on the CPU). Images, δ and the optimiser state
stay on the host; batches move (pinned on CUDA). The surrogates in ``--fast-models`` (default resnet18) are
timed a second time with channels-last memory and bf16 autocast (ue_core.compute; column "compute").

Consistency: per shape, BEO (small_cnn, 1 epoch, 1 round, sign steps) on ``--consistency-size`` images runs
on the CPU and on the device, TF32 off on the device; β̂ (each step's and the release's) must agree within
BETA_TOLERANCE and at most PIXEL_TOLERANCE of the release's pixels may differ (a feature gradient entry
near 0 can change sign with the order of floating-point sums). Exit status 1 when a check fails.

Expected time on one H200: about 4–6 minutes for the defaults (the ResNet-18 epochs and VJPs dominate, timed
twice; the 60,000² exact kernel is two GEMM passes), within the 8 minutes this check is sized for; the first row's
times include CUDA's start-up (context, cuDNN autotuning). Prints a Markdown
table and writes everything to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from ue_core.compute import Compute
from ue_core.data import read_dataset
from ue_core.data.dataset import ImageDataset, balanced_subset
from ue_core.methods.beo import (
    BEO,
    BEOConfig,
    EstimatorConfig,
    SurrogateConfig,
    estimate_step,
    estimator_generator,
    normalise_with_anchors,
    pixel_step,
    train_surrogate,
)
from ue_core.pga import Budget, PGAConfig, PixelState
from ue_core.training import compute_features, resolve_device

BETA_TOLERANCE = 1e-3
"""Largest |β̂_cpu − β̂_device| the consistency check accepts (β̂ is a fraction in [0, 1])."""
PIXEL_TOLERANCE = 0.005
"""Largest fraction of release pixels (uint8 values) that may differ between the CPU and the device."""
SHAPES = {"fashion-mnist": ((28, 28, 1), 60_000), "cifar": ((32, 32, 3), 50_000)}
BUDGET = Budget(eps=8 / 255)
T = TypeVar("T")


def dataset(shape: str, size: int | None, fashion_mnist: str | None) -> ImageDataset:
    """``size`` images (None: the shape's default) of ``shape``: real Fashion-MNIST (a class-balanced subset
    of its training split) when a folder is given for that shape, else synthetic uint8 (N, H, W, C)."""
    (height, width, channels), default = SHAPES[shape]
    count = size or default
    if shape == "fashion-mnist" and fashion_mnist:
        data = read_dataset(fashion_mnist, split="train")
        return data if count >= len(data) else balanced_subset(data, count, seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, height, width, channels), dtype=np.uint8)
    return ImageDataset(images, rng.integers(0, 10, count), 10, name=f"synthetic-{shape}")


def timed(device: torch.device, work: Callable[[], T]) -> tuple[T, float]:
    """``work()`` and its wall seconds, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started


FAST = Compute(channels_last=True, bf16=True)


def time_passes(data: ImageDataset, model: str, device: torch.device, compute: Compute = Compute()) -> dict[str, Any]:
    """Seconds and images/s of each pass of one BEO step on ``data`` with surrogate ``model`` on ``device``
    under ``compute``, and the device's peak memory in GiB."""
    config = BEOConfig(rounds=1, surrogate=SurrogateConfig(model=model, epochs=1),
                       estimator=EstimatorConfig(kind="exact", bandwidth="nearest-neighbour"), compute=compute)
    images, labels = data.tensors()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    surrogate, seconds_surrogate = timed(device, lambda: train_surrogate(
        None, images, labels, data.num_classes, config.surrogate, seed=0, device=device, compute=compute))
    raw, seconds_features = timed(device, lambda: compute_features(
        surrogate, images, batch_size=config.batch_size, device=device, compute=compute))

    def estimator() -> tuple[Any, float]:
        features, _, scale = normalise_with_anchors(raw, None)
        sigma = config.estimator.step_sigma(features, (0, 0, 0))
        return estimate_step(features, labels, data.num_classes, config.estimator, sigma,
                             estimator_generator(config.estimator, 0), True, device=device), scale

    (estimate, scale), seconds_estimator = timed(device, estimator)
    state = PixelState.zeros(tuple(images.shape))
    _, seconds_ascent = timed(device, lambda: pixel_step(
        surrogate, images, state, [estimate.gradient / scale], [None], BUDGET, config.pga, config.batch_size, device,
        compute))
    seconds = {"surrogate": seconds_surrogate, "features": seconds_features, "estimator": seconds_estimator,
               "ascent": seconds_ascent}
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    name = "+".join(k for k in ("channels_last", "bf16") if getattr(compute, k)) or "float32"
    return {"dataset": data.name, "model": model, "compute": name, "images": len(data), "seconds": seconds,
            "images_per_second": {k: len(data) / v for k, v in seconds.items()}, "peak_memory_gib": peak,
            "bayes_error": float(estimate.value)}


def consistency(data: ImageDataset, device: torch.device, size: int) -> dict[str, Any]:
    """BEO on ``size`` images of ``data`` on the CPU and on ``device`` (TF32 off): β̂ and release agreement."""
    small = balanced_subset(data, size, seed=1)
    config = BEOConfig(rounds=1, pga=PGAConfig(update="sign", step_size=2 / 255), batch_size=64,
                       surrogate=SurrogateConfig(model="small_cnn", epochs=1, lr=0.05, batch_size=64),
                       estimator=EstimatorConfig(kind="exact", bandwidth="nearest-neighbour"))
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cpu, other = (BEO(BUDGET, config, str(d)).protect(small) for d in (torch.device("cpu"), device))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    betas = [(a["bayes_error"], b["bayes_error"]) for a, b in zip(cpu.history, other.history, strict=True)]
    betas.append((cpu.summary["bayes_error_release"], other.summary["bayes_error_release"]))
    beta_difference = max(abs(a - b) for a, b in betas)
    pixels = float(np.mean(cpu.release.images != other.release.images))
    return {"dataset": data.name, "images": size, "beta_cpu": betas[-1][0], "beta_device": betas[-1][1],
            "max_beta_difference": beta_difference, "pixels_differing": pixels,
            "passed": beta_difference <= BETA_TOLERANCE and pixels <= PIXEL_TOLERANCE}


def markdown(device: torch.device, timings: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """The timings and the consistency checks as Markdown tables."""
    header = ("| data | model | compute | N | surrogate s (img/s) | features s (img/s) | estimator s (img/s) "
              "| ascent s (img/s) | peak GiB |")
    lines = [f"Device: {device}", "", header, "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for t in timings:
        cells = [f"{t['seconds'][p]:.2f} ({t['images_per_second'][p]:,.0f})" for p in t["seconds"]]
        lines.append(f"| {t['dataset']} | {t['model']} | {t['compute']} | {t['images']:,} | {' | '.join(cells)} "
                     f"| {t['peak_memory_gib']:.2f} |")
    lines += ["", f"CPU vs {device} (β̂ within {BETA_TOLERANCE:g}, ≤ {PIXEL_TOLERANCE:.1%} of pixels differing):", "",
              "| data | N | β̂ CPU | β̂ device | max Δβ̂ | pixels differing | passed |", "|---|---:|---:|---:|---:|---:|---|"]
    for c in checks:
        lines.append(f"| {c['dataset']} | {c['images']} | {c['beta_cpu']:.4f} | {c['beta_device']:.4f} "
                     f"| {c['max_beta_difference']:.2e} | {c['pixels_differing']:.4%} | {c['passed']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu or auto")
    parser.add_argument("--size", type=int, help="images per shape (default: 60000 Fashion-MNIST, 50000 CIFAR)")
    parser.add_argument("--fashion-mnist", help="a Fashion-MNIST folder (ue_core.data.read_dataset); else synthetic")
    parser.add_argument("--models", default="small_cnn,resnet18", help="surrogates to time, comma-separated")
    parser.add_argument("--fast-models", default="resnet18",
                        help="surrogates also timed with channels-last and bf16, comma-separated ('' for none)")
    parser.add_argument("--consistency-size", type=int, default=256, help="images of the CPU-vs-device check")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    timings, checks = [], []
    for shape in SHAPES:
        data = dataset(shape, args.size, args.fashion_mnist)
        for model in args.models.split(","):
            for compute in (Compute(), FAST) if model in args.fast_models.split(",") else (Compute(),):
                timings.append(time_passes(data, model, device, compute))
                print(f"{data.name} {model} {timings[-1]['compute']}: {timings[-1]['seconds']}", file=sys.stderr)
        checks.append(consistency(data, device, min(args.consistency_size, len(data))))
    report = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "beta_tolerance": BETA_TOLERANCE, "pixel_tolerance": PIXEL_TOLERANCE,
              "timings": timings, "consistency": checks}
    with open(args.out, "w") as file:
        json.dump(report, file, indent=2)
    print(markdown(device, timings, checks))
    return 0 if all(c["passed"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Efficacy of a protection on real Fashion-MNIST: victims trained on its releases, one JSON line per release.

    python bench/efficacy.py --name beo-e16 --eps 16/255 --rounds 60 --release-rounds 10,30 \
        --set beo.estimator.sigma=1.0 --seeds 0 1 --recipes plain standard

One protect run (ue_core's one-process engine, the same config machinery as `ue protect --preset
fashion-mnist`) publishes its releases after the rounds asked for and at the end; for each release and
each (victim recipe, seed) this trains victims on the mixed arm (ratio r) and on the release alone
(poison-only), beside the clean-all and clean-only references of the same seed (cached in the results
file's folder), and reports test accuracies on a fixed class-balanced clean test subset, β̂ of the clean
images and of the release in one fixed clean feature space (a clean-trained small CNN of the seed 0),
PSNR/SSIM and the generation seconds. The victim is a small CNN of width 64 by default (the surrogate's
default width is 32), so victims are never the surrogate; `--victim mobilenetv2` (or any zoo name, with
`small_cnn:W` for a width) trains another architecture.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pipelines.config import ProtectConfig, load_protect_config, parse_override
from ue_core.bayes_error import target_classes
from ue_core.data import read_dataset
from ue_core.data.dataset import ImageDataset, balanced_subset
from ue_core.data.mixing import build_training_set
from ue_core.methods.base import ProtectionResult
from ue_core.methods.beo import EstimatorConfig, measure_bayes_error
from ue_core.models import build_model
from ue_core.quality import psnr, ssim
from ue_core.training import evaluate, fit, recipe

DEFAULT_VICTIM = "small_cnn:64"
FIXED_SPACE_SIGMA = 0.3


def train_victim(train: ImageDataset, test: ImageDataset, recipe_name: str, epochs: int, seed: int,
                 victim: str = DEFAULT_VICTIM):
    """A ``victim`` ("name" or "small_cnn:W") trained on ``train``; returns (model, clean test accuracy in %)."""
    x, y = train.tensors()
    name, _, width = victim.partition(":")
    model = build_model(name, train.num_classes, x.shape[1], x.shape[-1], width=int(width) if width else None,
                        seed=seed)
    fit(model, x, y, recipe(recipe_name, epochs=epochs), seed=seed)
    return model, 100.0 * evaluate(model, *test.tensors())


def clean_references(clean, test, recipe_name, epochs, seed, ratio, cache: Path,
                     victim: str = DEFAULT_VICTIM) -> dict[str, float]:
    """Clean-all and clean-only accuracies of one (victim, recipe, seed), computed once per cache file."""
    key = f"{len(clean)}-{len(test)}-{recipe_name}-{epochs}-{seed}-{ratio}"
    if victim != DEFAULT_VICTIM:
        key += f"-{victim}"
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if key not in cached:
        accuracies = {}
        for arm in ("clean-all", "clean-only"):
            train, _ = build_training_set(clean, clean, arm, ratio, seed)
            accuracies[arm] = train_victim(train, test, recipe_name, epochs, seed, victim)[1]
        cached[key] = accuracies
        cache.write_text(json.dumps(cached, indent=1))
    return cached[key]


def fixed_space(clean: ImageDataset, epochs: int, cache: Path) -> torch.nn.Module:
    """The clean-trained model (plain recipe, seed 0) whose feature space every β̂ here is measured in."""
    if cache.exists():
        x, _ = clean.tensors()
        model = build_model("small_cnn", clean.num_classes, x.shape[1], x.shape[-1], width=64, seed=0)
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    model, _ = train_victim(clean, clean, "plain", epochs, 0)  # the default victim
    torch.save(model.state_dict(), cache)
    return model.eval()


def hit_rate(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of ``images`` (N, C, H, W) that ``model`` classifies as ``targets`` (N,)."""
    with torch.no_grad():
        predicted = torch.cat([model(batch).argmax(1) for batch in images.split(256)])
    return float((predicted == targets).float().mean())


def target_rate(model: torch.nn.Module, release: ImageDataset, estimator: EstimatorConfig) -> float:
    """Fraction of the release's images that ``model`` puts in the run's target class: that of BEO's
    "target" objective (``target_shift`` or ``target_map``), by default (y + 1) mod C, TAP's target too."""
    images, labels = release.tensors()
    targets = target_classes(labels, release.num_classes, estimator.target_shift, estimator.target_map)
    return hit_rate(model, images, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the run's name in the results file")
    parser.add_argument("--method", default="beo")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--rounds", type=int, default=None, help="BEO rounds (default: the preset's)")
    parser.add_argument("--release-rounds", default="", help="comma-separated rounds released early")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the fashion-mnist preset")
    add_harness_arguments(parser)
    args = parser.parse_args()

    overrides = dict(parse_override(text) for text in args.set)
    overrides |= {"method": args.method, "budget.eps": args.eps, "data.subset": args.size, **round_overrides(args)}
    config = load_protect_config("fashion-mnist", overrides=overrides)
    torch.manual_seed(0)
    clean, test = clean_and_test(args)
    started = time.perf_counter()
    result = config.build(test).protect(clean, progress=True)
    record_releases(args, config, overrides, result, time.perf_counter() - started, clean, test)


def round_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The BEO round keys that ``--rounds`` and ``--release-rounds`` (comma-separated) set, when given."""
    overrides: dict[str, object] = {}
    if args.rounds is not None:
        overrides["beo.rounds"] = args.rounds
    if args.release_rounds:
        overrides["beo.release_rounds"] = [int(k) for k in args.release_rounds.split(",")]
    return overrides


def record_releases(args: argparse.Namespace, config: ProtectConfig, overrides: dict, result: ProtectionResult,
                    seconds: float, clean: ImageDataset, test: ImageDataset) -> None:
    """Measure every release of one protect run (its early releases and the final one) with
    :func:`measure_release` and append a results line for each to ``args.out``."""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    releases = {**result.snapshots, config.beo.rounds: result.release}
    history = {int(r["round"]) + 1: r for r in result.history} if config.method == "beo" else {}
    for rounds, release in sorted(releases.items()):
        record = {
            "name": args.name, "method": config.method, "eps": round(config.budget.eps * 255, 3),
            "rounds": rounds if config.method == "beo" else None,
            "overrides": {k: v for k, v in overrides.items() if k not in ("method", "budget.eps")},
            "seconds_protect": round(seconds, 1), "size": args.size, "victim": args.victim,
        }
        if config.method == "beo":
            last = history[rounds]
            record |= {k: round(last[k], 4) for k in ("bayes_error", "surrogate_test_accuracy",
                                                      "surrogate_train_accuracy", "delta_mean_abs") if k in last}
        record |= measure_release(clean, test, release, args, out, config.beo.estimator)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


def measure_release(clean: ImageDataset, test: ImageDataset, release: ImageDataset, args: argparse.Namespace,
                    out: Path, target: EstimatorConfig | None = None) -> dict:
    """PSNR/SSIM, β̂ and the wrong-class evidence in the fixed clean space, and the victims of each (recipe,
    seed) in ``args`` with their clean references: the measured part of one results line. ``target`` names
    the target class map behind ``fixed_model_target_rate`` (default (y + 1) mod C)."""
    space = fixed_space(clean, args.epochs, out.parent / f"fixed-space-{args.size}-{args.epochs}.pt")
    estimator = EstimatorConfig(sigma=FIXED_SPACE_SIGMA)
    clean_images, labels = clean.tensors()
    record = {
        "psnr_db": round(psnr(clean.images, release.images), 2), "ssim": round(ssim(clean.images, release.images), 4),
        "bayes_error_fixed_clean": round(measure_bayes_error(space, clean_images, labels, clean.num_classes,
                                                             estimator), 4),
        "bayes_error_fixed_release": round(measure_bayes_error(
            space, release.tensors()[0], labels, clean.num_classes, estimator), 4),
        # how much wrong-class evidence the release carries for a clean model: its accuracy on the
        # release (on the clean images it is 100% or near) and how often it predicts the target class
        "fixed_model_accuracy_on_release": round(100 * evaluate(space, *release.tensors()), 2),
        "fixed_model_target_rate": round(100 * target_rate(space, release, target or EstimatorConfig()), 2),
    }
    for recipe_name in args.recipes:
        for seed in args.seeds:
            arms = dict(clean_references(clean, test, recipe_name, args.epochs, seed, args.ratio,
                                         out.parent / "clean-references.json", args.victim))
            for arm in ("mixed", "poison-only"):
                train, _ = build_training_set(clean, release, arm, args.ratio, seed)
                arms[arm] = train_victim(train, test, recipe_name, args.epochs, seed, args.victim)[1]
            record[f"{recipe_name}/seed{seed}"] = {k: round(v, 2) for k, v in arms.items()}
            print(json.dumps({recipe_name: arms, "seed": seed}), flush=True)
    return record


def add_harness_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, victims and results-file options every efficacy script shares."""
    parser.add_argument("--source", default="data")
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=10, help="victim epochs")
    parser.add_argument("--recipes", nargs="+", default=["plain"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--victim", default=DEFAULT_VICTIM, help="victim model: a zoo name, or small_cnn:WIDTH")
    parser.add_argument("--out", default="bench/results/efficacy.jsonl")


def clean_and_test(args: argparse.Namespace) -> tuple[ImageDataset, ImageDataset]:
    """The class-balanced training subset (seed 0) and the fixed clean test subset of ``args``."""
    clean = balanced_subset(read_dataset(args.source, split="train"), args.size, seed=0)
    test = balanced_subset(read_dataset(args.source, split="test"), args.test_size, seed=0)
    return clean, test


if __name__ == "__main__":
    main()

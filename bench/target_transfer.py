"""How much wrong-class evidence can a budget carry on real Fashion-MNIST? Targeted PGD, its transfer, and victims.

    python bench/target_transfer.py --eps 16/255 --target shift          # (y + 1) mod 10, as TAP and BEO's target
    python bench/target_transfer.py --eps 16/255 --target runner-up      # each image's most confusable class
    python bench/target_transfer.py --eps 16/255 --surrogate-adversarial-eps 16/255   # a robust surrogate

A poison can push a victim trained on a 50/50 mix below the clean half alone only if the protected half
carries evidence of a wrong class that the victim's features will also see in clean test images. This
measures the most a budget can carry here, with the strongest cheap tool: a surrogate (small CNN of width
32, plain recipe, 10 epochs, optionally PGD adversarially trained) and targeted L∞ PGD on it (minimising the
cross-entropy to the target, no random start), then reports how often the perturbed images are put in their
target class by the surrogate itself (white-box success) and by a clean-trained width-64 small CNN (the fixed
feature space of bench/efficacy.py: transfer), and the clean test accuracy of width-64 victims trained on the
mixed (r = 0.5) and poison-only arms, beside the clean references of the same seed. Targets: ``shift``
(y + 1) mod C; ``runner-up`` the surrogate's second most likely class of each clean image; ``class-map`` per
class, the class its images' runner-ups most often are. One JSON line per run in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from efficacy import (  # bench/efficacy.py, beside this script
    clean_references,
    fixed_space,
    hit_rate,
    train_victim,
)

from ue_core.config import parse_fraction
from ue_core.data import read_dataset
from ue_core.data.dataset import ImageDataset, balanced_subset
from ue_core.data.mixing import build_training_set
from ue_core.models import build_model
from ue_core.training import PGDConfig, fit, pgd_attack, recipe

TARGETS = ("shift", "runner-up", "class-map")


def target_classes(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """int64 (N,) target classes from the surrogate's clean logits (N, C) and the labels (N,)."""
    num_classes = logits.shape[1]
    if kind == "shift":
        return (labels + 1) % num_classes
    runner_up = logits.scatter(1, labels[:, None], -torch.inf).argmax(1)
    if kind == "runner-up":
        return runner_up
    confusion = torch.zeros(num_classes, num_classes).index_put_(
        (labels, runner_up), torch.ones(len(labels)), accumulate=True)
    return confusion.argmax(1)[labels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data")
    parser.add_argument("--eps", default="16/255")
    parser.add_argument("--target", choices=TARGETS, default="shift")
    parser.add_argument("--steps", type=int, default=100, help="PGD steps of 1/255")
    parser.add_argument("--surrogate-adversarial-eps", default="0", help="PGD adversarial training radius (0: off)")
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=10, help="surrogate and victim epochs")
    parser.add_argument("--out", default="bench/results/target-transfer.jsonl")
    args = parser.parse_args()

    eps, robust_eps = parse_fraction(args.eps), parse_fraction(args.surrogate_adversarial_eps)
    clean = balanced_subset(read_dataset(args.source, split="train"), args.size, seed=0)
    test = balanced_subset(read_dataset(args.source, split="test"), 2000, seed=0)
    out = Path(args.out)
    space = fixed_space(clean, args.epochs, out.parent / f"fixed-space-{args.size}-{args.epochs}.pt")
    started = time.perf_counter()
    x, y = clean.tensors()
    surrogate = build_model("small_cnn", clean.num_classes, x.shape[1], x.shape[-1], seed=0)
    adversarial = PGDConfig(eps=robust_eps, step=robust_eps / 4, steps=7) if robust_eps > 0 else None
    fit(surrogate, x, y, recipe("plain", epochs=args.epochs, lr=0.05), seed=0, adversarial=adversarial)
    surrogate.eval()
    with torch.no_grad():
        logits = torch.cat([surrogate(batch) for batch in x.split(256)])
    targets = target_classes(logits, y, args.target)
    attack = PGDConfig(eps=eps, step=1 / 255, steps=args.steps, random_start=False)
    perturbed = torch.cat([pgd_attack(surrogate, xb, tb, attack, minimise=True)
                           for xb, tb in zip(x.split(256), targets.split(256))])
    release: ImageDataset = clean.with_images(
        (perturbed * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy())
    images = release.tensors()[0]
    record = {"eps": round(eps * 255, 3), "target": args.target, "steps": args.steps,
              "surrogate_adversarial_eps": round(robust_eps * 255, 3), "size": args.size,
              "white_box_hit_rate": round(100 * hit_rate(surrogate, images, targets), 2),
              "transfer_hit_rate": round(100 * hit_rate(space, images, targets), 2),
              "seconds_attack": round(time.perf_counter() - started, 1)}
    print(json.dumps(record), flush=True)
    for seed in args.seeds:
        arms = clean_references(clean, test, "plain", args.epochs, seed, 0.5, out.parent / "clean-references.json")
        for arm in ("mixed", "poison-only"):
            train, _ = build_training_set(clean, release, arm, 0.5, seed)
            arms[arm] = train_victim(train, test, "plain", args.epochs, seed)[1]
        record[f"plain/seed{seed}"] = {k: round(v, 2) for k, v in arms.items()}
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()

"""How strong is BEO's surrogate? Its clean train and test accuracy after each number of epochs of its recipe.

    python bench/surrogate_strength.py --epochs 1 3 20

The `fashion-mnist` preset's surrogate (small CNN of width 32, plain recipe, lr 0.05, batch 128), trained as
the first round of a run trains it (ue_core.methods.beo.train_surrogate, seed round_seed(0, 0)) on the
study's class-balanced 2,000-image subset, scored on it and on the 2,000-image test subset (docs/study.md).
Prints one JSON line per epoch count.
"""

from __future__ import annotations

import argparse
import json

from ue_core.data import read_dataset
from ue_core.data.dataset import balanced_subset
from ue_core.methods.beo import SurrogateConfig, round_seed, train_surrogate
from ue_core.training import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default="data")
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3, 20])
    args = parser.parse_args()
    clean = balanced_subset(read_dataset(args.source, split="train"), args.size, seed=0)
    test = balanced_subset(read_dataset(args.source, split="test"), 2000, seed=0)
    (x, y), (test_x, test_y) = clean.tensors(), test.tensors()
    for epochs in args.epochs:
        config = SurrogateConfig(model="small_cnn", mode="fixed", epochs=epochs, recipe="plain", lr=0.05,
                                 batch_size=128)
        model = train_surrogate(None, x, y, clean.num_classes, config, seed=round_seed(0, 0))
        print(json.dumps({"epochs": epochs, "train_accuracy": round(100 * evaluate(model, x, y), 2),
                          "test_accuracy": round(100 * evaluate(model, test_x, test_y), 2)}), flush=True)


if __name__ == "__main__":
    main()

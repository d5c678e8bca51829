#!/usr/bin/env bash
# Set up (scripts/setup.sh), protect a 2,000-image Fashion-MNIST subset with BEO on this machine (the
# fashion-mnist-demo preset), publish the release in outputs/fashion-mnist-beo (Parquet shards, PNGs +
# labels.csv, manifest.json), then measure it: small-CNN victims of width 64 (not the surrogate's 32) on the
# clean-all / clean-only / mixed (r = 0.5) arms and on the release alone, results in outputs/fashion-mnist-eval.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ue protect --preset fashion-mnist-demo --source data --out outputs/fashion-mnist-beo --overwrite "$@"
.venv/bin/ue verify outputs/fashion-mnist-beo
.venv/bin/ue evaluate --source data --release outputs/fashion-mnist-beo --out outputs/fashion-mnist-eval \
    --overwrite --victim small_cnn --set victim.width=64 --epochs 10 --ratio 0.5 --test-subset 2000 --poison-only

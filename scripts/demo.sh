#!/usr/bin/env bash
# Set up (scripts/setup.sh), then protect a 2,000-image Fashion-MNIST subset with BEO on this machine and
# publish the release in outputs/fashion-mnist-beo (Parquet shards, PNGs + labels.csv, manifest.json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ue protect --preset fashion-mnist --source data --out outputs/fashion-mnist-beo --overwrite "$@"
.venv/bin/ue verify outputs/fashion-mnist-beo

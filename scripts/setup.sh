#!/usr/bin/env bash
# Set up a fresh checkout: a virtual environment in .venv with the project and its test/dev tools, and
# the real Fashion-MNIST in data/ (from Debian's dataset-fashion-mnist package, or torchvision's download).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    # The releases this project is tested with (a CPU runs the CUDA build; pip takes them from the local
    # wheel cache where one exists).
    .venv/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi
.venv/bin/pip install --quiet -e ".[dev]"
.venv/bin/ue fetch fashion-mnist --root data

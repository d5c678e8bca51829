#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: two pytest-xdist workers, each test file on one
# worker (its module fixtures — a Ray job, a server — are built once), the slowest tests listed at the end.
# Two workers fill this project's 2-core machines: much of a test's time is spent waiting on processes
# (Ray start, servers, pip), and the suite aims at ~30 min. A worker that crashes fails the run at once
# (--max-worker-restart=0): with --dist loadfile, pytest-xdist 3.8 hands the crashed test to each replacement
# worker in turn and then waits forever.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile --max-worker-restart=0 --durations=60 "$@"

#!/usr/bin/env bash
# The main job in its quick form: sets up .venv if needed, downloads and renders the
# built-in emoji data set (npm registry; cached under .cache/), and compares
# baseline vs +translation vs +SFT for four PML losses (1 seed, 2 epochs, ~15-20 min
# on 2 CPU cores). Results: runs/quick/summary.md, runs.csv and PNG plots.
# Extra arguments go to benchmarks.compare, e.g. `bash benchmarks/run_quick_from_scratch.sh --workers 1`.
# It augments from the first step (2 epochs are too few for the late start); the
# main command is benchmarks/run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup-venv
exec .venv/bin/python -m benchmarks.compare --quick "$@"

#!/usr/bin/env bash
# The from-scratch comparison on test classes (small CNN, 32 px, 6 epochs, 4 losses x
# {none, translation, sft} x 3 seeds), rerun with the schedule chosen in the pretrained
# study (issue 11): augmentation starts at 50 % of training (epoch 3) and its weight
# ramps to 1 over the next 25 % (1.5 epochs). Everything else is the original
# comparison (`python -m benchmarks.compare`, benchmarks/results/emoji_comparison).
# Resumable; ~1 h on 2 CPU cores. Results: runs/from_scratch_late/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup-venv
exec .venv/bin/python -m benchmarks.compare --warmup-epochs 3 --ramp-epochs 1.5 \
    --out runs/from_scratch_late "$@"

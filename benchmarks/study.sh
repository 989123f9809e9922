#!/usr/bin/env bash
# The pretrained study on validation classes (issue 11): fast tier (EfficientNet-Lite0
# pretrained on ImageNet, blocks before 15 frozen and cached, 64 px), the training
# methods of the feature-augmentation literature one at a time around the SFT
# defaults, 3 seeds, each run at its best validation epoch. Learning rates were tuned
# for the baselines first (benchmarks/results/pretrained_lr_tuning). Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup-venv
common=(--preset study --methods sft --seeds 0 1 2 --workers 2
    --backbone efficientnet_lite0 --pretrained true --image-size 64
    --train-from-block 15 --epochs 20 --eval-every 2 --lr 3e-3 --proxy-lr 0.1
    --select best-epoch)
.venv/bin/python -m benchmarks.compare "${common[@]}" --study-losses multisimilarity \
    --out runs/study_multisimilarity "$@"
# ProxyAnchor: the default and the validated winner on 3 seeds, more variants on one
.venv/bin/python -m benchmarks.compare "${common[@]}" --study-losses proxyanchor \
    --variants default late --out runs/study_proxyanchor "$@"
.venv/bin/python -m benchmarks.compare "${common[@]}" --study-losses proxyanchor \
    --seeds 0 --variants default "synthetic only as negatives" late "centres: the loss" \
    --out runs/study_proxyanchor_seed0 "$@"

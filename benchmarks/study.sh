#!/usr/bin/env bash
# The pretrained study on validation classes (issue 11): fast tier (EfficientNet-Lite0
# pretrained on ImageNet, blocks before 15 frozen and cached, 64 px), the training
# methods of the feature-augmentation literature one at a time around the SFT
# defaults, each run at its best validation epoch. Learning rates were tuned for the
# baselines first (benchmarks/results/pretrained_lr_tuning). Resumable: finished runs
# are reused. These are the commands behind benchmarks/results/pretrained_study_*.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/setup-venv
common=(--preset study --methods sft --workers 2
    --backbone efficientnet_lite0 --pretrained true --image-size 64
    --train-from-block 15 --epochs 20 --eval-every 2 --lr 3e-3 --proxy-lr 0.1
    --select best-epoch)
# MultiSimilarity: every option, 3 seeds
.venv/bin/python -m benchmarks.compare "${common[@]}" --study-losses multisimilarity \
    --seeds 0 1 2 --out runs/study_multisimilarity "$@"
# MultiSimilarity: the default and the winner, 3 seeds, SFT and translation
.venv/bin/python -m benchmarks.compare "${common[@]}" --study-losses multisimilarity \
    --methods translation sft --seeds 0 1 2 --variants first late \
    --out runs/study_multisimilarity_3seeds "$@"
# ProxyAnchor: the winner of MultiSimilarity, 3 seeds, SFT and translation; more
# options on seed 0
.venv/bin/python -m benchmarks.compare "${common[@]}" --study-losses proxyanchor \
    --methods translation sft --seeds 0 1 2 --variants late --out runs/study_proxyanchor "$@"
.venv/bin/python -m benchmarks.compare "${common[@]}" --study-losses proxyanchor \
    --seeds 0 --variants first "synthetic only as negatives" "centres: the loss" \
    --out runs/study_proxyanchor_seed0 "$@"
# Confirmation tier (MultiSimilarity): blocks 11-15 + head conv fine-tuned (their input
# cached) instead of block 15 alone; the fast tier's winner against the baseline and
# against translation with the same schedule, 3 seeds
.venv/bin/python -m benchmarks.compare --preset study --methods translation sft \
    --workers 2 --backbone efficientnet_lite0 --pretrained true --image-size 64 \
    --train-from-block 11 --epochs 20 --eval-every 2 --lr 3e-3 --proxy-lr 0.1 \
    --select best-epoch --study-losses multisimilarity --seeds 0 1 2 --variants late \
    --out runs/confirm_multisimilarity "$@"

#!/usr/bin/env bash
# Train recipes on a lent GPU machine (../shared/docs/GPU.md), which has PyTorch but not this
# package: the training loop needs only PyTorch, numpy and Pillow, so src/ on PYTHONPATH is
# enough. FER2013 travels in a git-ignored folder of the checkout (.data/fer2013.tar.gz); the
# run folders come back in $OUT/runs (copy them into ~/.cache/emotion-server/runs here, then
# `emotion-server export --run NAME ...` on the CPU).
#   here:  mkdir -p .data && cp ../shared/data/fer2013.tar.gz .data/
#   there: bash scripts/model/gpu_train.sh configs/gpu/vgg64.toml [more recipes...] (seeds: SEEDS="1 2")
# A run whose checkpoint is already in $OUT/runs (carried there in the checkout) is resumed.
# Runs are named gpu-RECIPE-sSEED, so they never collide with the CPU's runs of the same family
# (configs/vgg64.toml's vgg64-s1 and configs/gpu/vgg64.toml's gpu-vgg64-s1 are different runs).
set -euo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 EMOTION_RUNS_DIR=${EMOTION_RUNS_DIR:-${OUT:-runs}/runs}
mkdir -p "$EMOTION_RUNS_DIR"
for recipe in "$@"; do
  for seed in ${SEEDS:-1}; do
    name=gpu-$(basename "$recipe" .toml)-s$seed
    if [ -f "$EMOTION_RUNS_DIR/$name/checkpoint.pt" ]; then
      args=(--resume "$name")
    else
      args=(--config "$recipe" --seed "$seed" --name "$name" --data .data/fer2013.tar.gz)
    fi
    python3 -m emotion_server.cli train "${args[@]}" 2>&1 | tee -a "$EMOTION_RUNS_DIR/$name.log"
  done
done

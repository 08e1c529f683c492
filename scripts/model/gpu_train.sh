#!/usr/bin/env bash
# Train recipes on a lent GPU machine (../shared/docs/GPU.md; docs/training.md, "On a lent GPU
# machine"), which has PyTorch but not this package: the training loop needs only PyTorch,
# numpy and Pillow, so src/ on PYTHONPATH is enough.
#
# Sized to the device tool's limits: one command runs at most 10 minutes, what travels is at
# most 64 MiB (the tracked files are about 40 MB, FER2013's tar.gz 46 MB), and at most 8 files
# of 16 MiB each come back. So:
#   here:  mkdir -p .data && cp ../shared/data/fer2013.tar.gz .data/
#          move models/ and src/emotion_server/weights/ out of the working tree for the call
#          (training needs neither; `git checkout -- models src/emotion_server/weights` puts
#          them back), and carry .data in the call
#   there: BUDGET=7m SEEDS="1 2 3" bash scripts/model/gpu_train.sh configs/gpu/vgg64.toml
# Every recipe x seed trains at once, each pinned to its share of the CPU cores (they prepare
# the batches) and ending within BUDGET with its schedule complete (`train --time-budget`).
# Each run comes back as $OUT/NAME.run.pt (best weights in float16, recipe, log: transfer.py)
# with its log as $OUT/NAME.log; here, `python -m emotion_server.training.transfer unpack
# FILE...` makes them runs for `export --run` and `ensemble`.
# Runs are named gpu-RECIPE-sSEED, so they never collide with the CPU's runs of the same family.
set -euo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 EMOTION_RUNS_DIR=${EMOTION_RUNS_DIR:-/tmp/gpu-runs}
out=${OUT:-runs}
mkdir -p "$EMOTION_RUNS_DIR" "$out"
jobs=()
for recipe in "$@"; do
  for seed in ${SEEDS:-1}; do jobs+=("$recipe:$seed"); done
done
cores=$(nproc)
share=$(( cores / ${#jobs[@]} ))
(( share >= 1 )) || share=1
# FER2013 decoded once, into the cache every run then reads.
python3 -c "from emotion_server.training.data import load_cached; load_cached('.data/fer2013.tar.gz')"
names=() pids=()
for index in "${!jobs[@]}"; do
  recipe=${jobs[$index]%:*} seed=${jobs[$index]##*:}
  name=gpu-$(basename "$recipe" .toml)-s$seed
  names+=("$name")
  first=$(( index * share % cores ))
  pin=()
  if command -v taskset > /dev/null; then pin=(taskset -c "$first-$(( first + share - 1 ))"); fi
  "${pin[@]}" python3 -m emotion_server.cli train \
    --config "$recipe" --seed "$seed" --name "$name" --data .data/fer2013.tar.gz \
    --time-budget "${BUDGET:-7m}" > "$out/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
for name in "${names[@]}"; do
  if [ -f "$EMOTION_RUNS_DIR/$name/best.pt" ]; then
    python3 -m emotion_server.training.transfer pack "$name" --out "$out"
  fi
  tail -n 3 "$out/$name.log"
done
exit $status

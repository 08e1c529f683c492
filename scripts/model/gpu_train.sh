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
# Runs are named gpu-RECIPE-sSEED, so they never collide with the CPU's runs of the same family;
# one already in $EMOTION_RUNS_DIR (the same machine, called again) is resumed within BUDGET
# where it stopped part-way, and only packed again where it finished.
# At most 4 runs a call (8 files come back), each packed under 16 MiB (ResNet-18's 11.2 M
# parameters are 22 MB even in float16: too many to come back this way).
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: [BUDGET=7m] [SEEDS=\"1 2 3\"] bash $0 RECIPE.toml..." >&2
  exit 2
fi
export PYTHONPATH=src PYTHONUNBUFFERED=1 EMOTION_RUNS_DIR=${EMOTION_RUNS_DIR:-/tmp/gpu-runs}
out=${OUT:-runs}
mkdir -p "$EMOTION_RUNS_DIR" "$out"
jobs=()
for recipe in "$@"; do
  for seed in ${SEEDS:-1}; do jobs+=("$recipe:$seed"); done
done
if (( ${#jobs[@]} > 4 )); then
  echo "gpu_train.sh: ${#jobs[@]} runs would return $(( 2 * ${#jobs[@]} )) files; 8 come back" >&2
  exit 2
fi
# The CPUs this process may run on, by number (nproc can be told otherwise by OMP_NUM_THREADS,
# and a container's CPUs need not start at 0); each run gets an equal share of them.
read -r -a cpus <<< "$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
share=$(( ${#cpus[@]} / ${#jobs[@]} ))
(( share >= 1 )) || share=1
# FER2013 decoded once, into the cache every run then reads.
python3 -c "from emotion_server.training.data import load_cached; load_cached('.data/fer2013.tar.gz')"
names=() pids=()
for index in "${!jobs[@]}"; do
  recipe=${jobs[$index]%:*} seed=${jobs[$index]##*:}
  name=gpu-$(basename "$recipe" .toml)-s$seed
  names+=("$name")
  mine=("${cpus[@]:$(( index * share % ${#cpus[@]} )):$share}")
  pin=()
  if command -v taskset > /dev/null; then pin=(taskset -c "$(IFS=,; echo "${mine[*]}")"); fi
  if [ -f "$EMOTION_RUNS_DIR/$name/checkpoint.pt" ]; then
    if python3 -c "import sys, torch; s = torch.load(sys.argv[1], weights_only=False); \
sys.exit(s['epoch'] < s['recipe']['epochs'])" "$EMOTION_RUNS_DIR/$name/checkpoint.pt"; then
      echo "$name has finished its schedule: packed again, not trained" >> "$out/$name.log"
      continue
    fi
    args=(--resume "$name")
  else
    args=(--config "$recipe" --seed "$seed" --name "$name")
  fi
  "${pin[@]}" python3 -m emotion_server.cli train "${args[@]}" --data .data/fer2013.tar.gz \
    --time-budget "${BUDGET:-7m}" >> "$out/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
for name in "${names[@]}"; do
  if [ -f "$EMOTION_RUNS_DIR/$name/checkpoint.pt" ]; then
    python3 -m emotion_server.training.transfer pack "$name" --out "$out" || status=$?
    if [ -f "$out/$name.run.pt" ] && (( $(wc -c < "$out/$name.run.pt") > 16 * 1024 * 1024 )); then
      echo "gpu_train.sh: $out/$name.run.pt is over 16 MiB and will not come back" >&2
      status=1
    fi
  fi
  tail -n 3 "$out/$name.log"
done
exit $status

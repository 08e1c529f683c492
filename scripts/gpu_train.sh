#!/usr/bin/env bash
# Train recipes on a lent GPU machine (../shared/docs/GPU.md): Keras wheels and FER2013 travel in
# git-ignored folders of the checkout (.whl/, .data/fer2013.tar.gz); models come back in $OUT.
#   here:  echo /.whl/ >> .git/info/exclude; pip download keras namex optree ... -d .whl
#          mkdir -p .data && cp ../shared/data/fer2013.tar.gz .data/
#   there: bash scripts/gpu_train.sh configs/gpu/vgg64.toml [more recipes...] (seeds: SEEDS="1 2")
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
out=${OUT:-runs}
for recipe in "$@"; do
  for seed in ${SEEDS:-1}; do
    name=$(basename "$recipe" .toml)-s$seed
    python3 -m emotion_server.cli train --config "$recipe" --seed "$seed" \
      --data .data/fer2013.tar.gz --output "$out/$name" 2>&1 | tee "$out/$name.log"
    rm -f "$out/$name/inference_best.keras"  # the .keras and .h5 copies remain
  done
done

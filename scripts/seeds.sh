#!/usr/bin/env bash
# Train and infer one recipe for several seeds, then blend the runs by score.
#
#   scripts/seeds.sh 1 2 3
#   DATA=data/ml-latest-small TAG=bce TRAIN_ARGS="--loss bce --history windows" scripts/seeds.sh 1 2 3
#
# Writes $SUBS/<dataset>-<TAG>-s<seed>.csv per seed and $SUBS/<dataset>-<TAG>-seeds.csv (SUBS: submissions).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/demo}
PY=${PY:-.venv/bin/python}
SUBS=${SUBS:-submissions}
TAG=${TAG:-sasrec}
TRAIN_ARGS=${TRAIN_ARGS:-}
[ $# -gt 0 ] || { echo "usage: scripts/seeds.sh SEED [SEED ...]" >&2; exit 2; }
name=$(basename "$DATA")
files=()
for seed in "$@"; do
  run="${name}-${TAG}-s${seed}"
  # shellcheck disable=SC2086
  $PY 02_train.py --data "$DATA" --seed "$seed" --run-name "$run" --no-progress $TRAIN_ARGS
  $PY 03_inference.py "$DATA/runs/$run/checkpoint.pt" --out-dir "$SUBS"
  files+=("$SUBS/$run.top100.csv")
done
$PY 04_ensemble.py "${files[@]}" --method score --data "$DATA" --out "$SUBS/${name}-${TAG}-seeds.csv"

#!/usr/bin/env bash
# The winning recipe in one command: EASE (two variants), a sequential model over several seeds, and their
# score blend.
#
#   scripts/recipe.sh 1 2 3
#   DATA=data/Beauty SEQ_ARGS="--preset ce-full" EASE_ARGS="--model ease --l2 50" EASE_WEIGHT=0.5 scripts/recipe.sh 1 2 3
#
# Trains and infers EASE (EASE_ARGS, default --preset ease-seq) and a second EASE (EASE2_ARGS, default
# --preset ease-soft; set it empty to skip), runs scripts/seeds.sh with SEQ_ARGS (default --preset ce-full)
# for each seed, then blends the candidate files by z-scored score with weights EASE_WEIGHT and EASE2_WEIGHT
# for the two EASE runs and SEQ_WEIGHT shared by the seeds. Writes
# $SUBS/<dataset>-recipe.csv (SUBS: submissions) and prints the local score when the dataset has a hold-out.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/demo}
PY=${PY:-.venv/bin/python}
SUBS=${SUBS:-submissions}
EASE_ARGS=${EASE_ARGS:---preset ease-seq}
EASE2_ARGS=${EASE2_ARGS---preset ease-soft}
SEQ_ARGS=${SEQ_ARGS:---preset ce-full}
EASE_WEIGHT=${EASE_WEIGHT:-1}
EASE2_WEIGHT=${EASE2_WEIGHT:-1}
SEQ_WEIGHT=${SEQ_WEIGHT:-1}
[ $# -gt 0 ] || { echo "usage: scripts/recipe.sh SEED [SEED ...]" >&2; exit 2; }
name=$(basename "$DATA")
files=()
weights=()
# add_run RUN WEIGHT ARGS: train and infer one run, and add its candidates to the blend
add_run() {
  # shellcheck disable=SC2086
  $PY 02_train.py --data "$DATA" --run-name "$1" $3
  $PY 03_inference.py "$DATA/runs/$1/checkpoint.pt" --out-dir "$SUBS"
  files+=("$SUBS/$1.top100.csv")
  weights+=("$2")
}
add_run "${name}-recipe-ease" "$EASE_WEIGHT" "$EASE_ARGS"
[ -z "$EASE2_ARGS" ] || add_run "${name}-recipe-ease2" "$EASE2_WEIGHT" "$EASE2_ARGS"
DATA="$DATA" PY="$PY" SUBS="$SUBS" TAG=recipe-seq TRAIN_ARGS="$SEQ_ARGS" scripts/seeds.sh "$@"
per_seed=$($PY -c "print($SEQ_WEIGHT / $#)")
for seed in "$@"; do
  files+=("$SUBS/${name}-recipe-seq-s${seed}.top100.csv")
  weights+=("$per_seed")
done
$PY 04_ensemble.py "${files[@]}" --weights "${weights[@]}" --method score --norm zscore --data "$DATA" \
  --out "$SUBS/${name}-recipe.csv"

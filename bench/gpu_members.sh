#!/usr/bin/env bash
# Train a recipe's members on ml-latest-small hold-out splits on a GPU machine, the splits side by side, and
# pack each split's run folders (weights left out) for the CPU machine, whose 06_submission.py reuses them:
# a run's key holds its flags and its data's fingerprint, not where it ran (README, "Reuse").
#   INPUT=path/to/ml-latest-small SEEDS="3 4" PY=python3 bench/gpu_members.sh   # RECIPE=recipes/gpu-rerank-seq.toml
# On the CPU machine, from the repository root: tar xzf runs-h3.tgz, then
#   .venv/bin/python bench/submission.py --dataset ml --seeds 3 --recipe recipes/gpu-rerank.toml
# (DEVICE=cpu runs the same on a machine without a GPU, to check the packing and the reuse.)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results/gpu-members}
INPUT=${INPUT:?the ml-latest-small folder}
RECIPE=${RECIPE:-recipes/gpu-rerank-seq.toml}
SEEDS=${SEEDS:-3 4}
THREADS=${THREADS:-4}
LIMIT=${LIMIT:-480}   # seconds for all the splits; what is finished by then is packed all the same
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
for s in $SEEDS; do
  timeout "$LIMIT" $PY 06_submission.py --input "$INPUT" --recipe "$RECIPE" --name "bench-ml-h$s" --seed "$s" \
      --holdout-last 5 --holdout-random 5 --out-dir "${REPORTS:-/tmp/gpu-members}" --threads "$THREADS" --device "${DEVICE:-cuda}" --no-final \
      > "$OUT/h$s.log" 2>&1 &
done
wait
for s in $SEEDS; do
  d=data/bench-ml-h$s-split
  echo "== split $s: fingerprint $($PY -c "import json; print(json.load(open('$d/meta.json'))['fingerprint'])")"
  grep -E "reused|: [0-9.]+s, peak|recall@10 of|reranker" "$OUT/h$s.log" | tail -n 40
  finished=$(ls -d $d/runs/*/step.json 2>/dev/null | xargs -r -n1 dirname)
  [ -n "$finished" ] && tar czf "$OUT/runs-h$s.tgz" --exclude='*.pt' $finished
done
ls -la "$OUT"

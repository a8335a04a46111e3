#!/usr/bin/env bash
# The full-scale demo on one GPU: step profile (fp32, the default, and bf16 autocast), whole training epochs with their
# evaluation, EASE on the GPU and inference. JSON lines land in bench/results/; a copy of everything in $OUT
# when that is set (the GPU machine). Usage: PY=python3 bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT" bench/results
export PYTHONUNBUFFERED=1
log() { echo "== $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
log "make the full-scale demo"
[ -f data/raw/demo-full/train_ratings.csv ] || /usr/bin/time -f "%e s %M KB" $PY 00_make_demo.py --scale full --out data/raw/demo-full --seed 0
for spec in "default:" "default-bf16:--amp bf16" "holdout-ce:--preset holdout-ce" "holdout-ce-bf16:--preset holdout-ce --amp bf16"; do
  tag=${spec%%:*}; flags=${spec#*:}
  log "profile $tag"
  $PY bench/step_profile.py --device cuda --steps 40 --tag "gpu-$tag" -- $flags 2>&1 | grep -v USDT
done
time_run() { /usr/bin/time -f "%e s wall, %M KB peak host memory" "$@"; }
log "default SASRec, 3 epochs (fp32, the default, then bf16 autocast)"
time_run $PY 02_train.py --data data/demo-full --device cuda --epochs 3 --no-progress --run-name gpu-default
time_run $PY 02_train.py --data data/demo-full --device cuda --epochs 3 --no-progress --run-name gpu-default-bf16 --amp bf16
log "holdout-ce, 3 epochs"
time_run $PY 02_train.py --data data/demo-full --device cuda --preset holdout-ce --epochs 3 --no-progress --run-name gpu-holdout-ce
log "EASE l2=500 on the GPU"
time_run $PY 02_train.py --data data/demo-full --device cuda --model ease --l2 500 --run-name gpu-ease
log "inference, all users"
time_run $PY 03_inference.py data/demo-full/runs/gpu-default/checkpoint.pt --device cuda --out-dir /tmp/gpu-subs
for run in gpu-default gpu-default-bf16 gpu-holdout-ce gpu-ease; do
  cp data/demo-full/runs/$run/metrics.jsonl "$OUT/$run.metrics.jsonl"
done
cp bench/results/profile.jsonl "$OUT/" 2>/dev/null || true

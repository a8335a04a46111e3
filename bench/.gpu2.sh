set -e; export PYTHONUNBUFFERED=1; cd /work 2>/dev/null || true
for spec in "hce-bf16-nocudnn:" "hce-fp32:--amp off"; do tag=${spec%%:*}; flags=${spec#*:}
  echo "== $tag"; python3 02_train.py --data data/demo-full --device cuda --preset holdout-ce --epochs 3 --no-progress --run-name $tag $flags
  cp data/demo-full/runs/$tag/metrics.jsonl $OUT/$tag.metrics.jsonl; done
echo "== default bf16 nocudnn"; python3 02_train.py --data data/demo-full --device cuda --epochs 3 --no-progress --run-name def-bf16-nocudnn

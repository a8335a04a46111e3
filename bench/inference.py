"""Time 03_inference.py on full-scale demo data (31,360 users x 6,807 items), model loading excluded.

    .venv/bin/python bench/inference.py     # targets: < 10 s scoring, < 2 GB peak on 2 CPU cores
Needs a run from `bench/train.py --data full` (data/demo-full/runs/demo-full-bench-bce).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import PY, ROOT, measure, report  # noqa: E402


def main(run: str = "demo-full-bench-bce"):
    ckpt = ROOT / "data" / "demo-full" / "runs" / run / "checkpoint.pt"
    if not ckpt.exists():
        raise SystemExit(f"{ckpt} not found: run bench/train.py --data full first")
    m = measure([PY, "03_inference.py", str(ckpt), "--out-dir", "/tmp/bench-submissions"])
    scoring = float(re.search(r"in ([\d.]+)s", m["stdout"]).group(1))
    report("inference", {"run": run, "scoring_seconds": scoring, "total_seconds": m["seconds"],
                         "peak_mb": m["peak_mb"], "target_seconds": 10, "target_peak_mb": 2048})


if __name__ == "__main__":
    main(*sys.argv[1:])

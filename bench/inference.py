"""Time 03_inference.py on a checkpoint of the full-scale demo (31,360 users x 6,807 items), model loading
excluded from the scoring figure: fp32 and bf16 autocast alternated, each with its recall on the answers
of --split (validation by default: the figure that may choose between them).

    .venv/bin/python bench/inference.py --threads 2 --repeats 3    # target (issue 16): < 3 s scoring on 2 cores
    .venv/bin/python bench/inference.py --checkpoint data/bench-members/runs/amp-off-s0/checkpoint.pt

The default checkpoint is the run of `bench/train.py --data full` (data/demo-full/runs/demo-full-bench-bce).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import PY, ROOT, last_json, measure, report  # noqa: E402

TARGET_SECONDS = 3.0
TARGET_PEAK_MB = 4096


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "data/demo-full/runs/demo-full-bench-bce/checkpoint.pt"))
    p.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=["off", "bf16"])
    p.add_argument("--repeats", type=int, default=3, help="runs of each setting, alternated")
    p.add_argument("--split", default="valid", choices=["valid", "test"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    ckpt = Path(a.checkpoint)
    if not ckpt.exists():
        raise SystemExit(f"{ckpt} not found: run bench/train.py --data full first, or name one with --checkpoint")
    runs = {amp: [] for amp in a.amp}
    for _ in range(a.repeats):
        for amp in a.amp:  # alternated, so that a change in the machine's load touches every setting alike
            m = measure([PY, "03_inference.py", str(ckpt), "--split", a.split, "--amp", amp, "--threads",
                         str(a.threads), "--batch-size", str(a.batch_size), "--out-dir", f"/tmp/bench-inference-{amp}"])
            runs[amp].append({"scoring_seconds": float(re.search(r"in ([\d.]+)s", m["stdout"]).group(1)),
                              "total_seconds": m["seconds"], "peak_mb": m["peak_mb"], **last_json(m["stdout"])})
    for amp, rs in runs.items():
        scoring = [r["scoring_seconds"] for r in rs]
        report("inference", {"checkpoint": str(ckpt), "amp": amp, "threads": a.threads, "batch_size": a.batch_size,
                             "scoring_seconds": scoring, "scoring_median": median(scoring),
                             "total_seconds": [r["total_seconds"] for r in rs],
                             "peak_mb": max(r["peak_mb"] for r in rs), "answers": a.split,
                             "recall@10": rs[0].get("recall@10"), "ndcg@10": rs[0].get("ndcg@10"),
                             "target_seconds": TARGET_SECONDS, "target_peak_mb": TARGET_PEAK_MB})


if __name__ == "__main__":
    main()

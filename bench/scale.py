"""Scaling: the --scale 3x demo (~100k users, 20k items, ~15M interactions) beside the full-scale one.

    .venv/bin/python bench/scale.py                    # both scales, 2 threads
    .venv/bin/python bench/scale.py --scales 3x --threads 2

Per scale: preprocessing (seconds, peak memory), EASE λ=500 (fit seconds, whole command, peak memory;
targets at 3x: < 5 min, < 8 GB) and one default SASRec training epoch without evaluation (--select last),
with its training tokens per second: an epoch linear in tokens keeps that rate across scales. JSON lines go
to bench/results/scale.jsonl. EASE refuses, before any work, a catalogue whose two dense item-item
matrices would not fit in the free memory (common.recommend.check_dense_memory).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import PY, ROOT, measure, report  # noqa: E402

import numpy as np  # noqa: E402

from common.data import Dataset  # noqa: E402
from common.model import SASRecArgs  # noqa: E402


def epoch_record(run: Path) -> dict:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", nargs="+", default=["full", "3x"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    threads = ["--threads", str(args.threads)]
    for scale in args.scales:
        raw, name = ROOT / "data" / "raw" / f"demo-{scale}", f"demo-{scale}"
        if not (raw / "train_ratings.csv").exists():
            subprocess.run([PY, "00_make_demo.py", "--scale", scale, "--out", str(raw)], cwd=ROOT, check=True)
        pre = measure([PY, "01_preprocess.py", "--input", str(raw), "--name", name])
        data = f"data/{name}"
        ds = Dataset(ROOT / data, "valid")
        ease = measure([PY, "02_train.py", "--data", data, "--model", "ease", "--l2", "500", "--run-name",
                        "bench-ease", *threads])
        fit = epoch_record(ROOT / data / "runs" / "bench-ease")
        seq = measure([PY, "02_train.py", "--data", data, "--run-name", "bench-sasrec-epoch", "--epochs", "1",
                       "--select", "last", "--no-progress", *threads])
        epoch = epoch_record(ROOT / data / "runs" / "bench-sasrec-epoch")
        lengths = np.diff(ds.indptr)
        tokens = int(np.minimum(lengths[lengths >= 2] - 1, SASRecArgs().max_len).sum())  # --history last
        report("scale", {"scale": scale, "users": ds.n_users, "items": ds.n_items, "interactions": int(ds.indptr[-1]),
                         "threads": args.threads, "preprocess_seconds": pre["seconds"], "preprocess_peak_mb": pre["peak_mb"],
                         "ease_fit_seconds": fit["fit_seconds"], "ease_seconds": ease["seconds"],
                         "ease_peak_mb": ease["peak_mb"], "ease_recall@10": round(fit.get("recall@10", float("nan")), 5),
                         "sasrec_epoch_seconds": epoch["seconds"], "sasrec_tokens": tokens,
                         "sasrec_tokens_per_second": round(tokens / epoch["seconds"]), "sasrec_peak_mb": seq["peak_mb"]})


if __name__ == "__main__":
    main()

"""Seconds per epoch, peak memory and local scores of 02_train.py.

    .venv/bin/python bench/train.py --data ml     # ml-latest-small 5+5: pop, bce, bpr (target: < 2 s/epoch)
    .venv/bin/python bench/train.py --data full   # full-scale demo: sasrec defaults, 2 epochs (target: < 30 s/epoch,
                                                  # < 4 GB), then EASE λ=500 (target: fit < 60 s, < 4 GB),
                                                  # then --preset ease-seq and ease-soft (same targets),
                                                  # then --preset holdout-ce, 1 epoch
Extra arguments after `--` go to 02_train.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import PY, ROOT, ensure_full_demo, measure, report  # noqa: E402

ML = ROOT.parent / "shared" / "data" / "ml-latest-small"


def epochs_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def bench_run(data: str, tag: str, extra: list[str]) -> None:
    name = Path(data).name
    run = f"{name}-bench-{tag}"
    m = measure([PY, "02_train.py", "--data", data, "--run-name", run, "--no-progress", *extra])
    epochs = epochs_of(ROOT / data / "runs" / run)
    secs = sorted(e["seconds"] for e in epochs)
    best = max(epochs, key=lambda e: e.get("recall@10", 0))
    fit = [e["fit_seconds"] for e in epochs if "fit_seconds" in e]
    report("train", {"data": name, "run": tag, "args": " ".join(extra), "epochs": len(epochs),
                     "median_epoch_seconds": secs[len(secs) // 2], **({"fit_seconds": fit[0]} if fit else {}),
                     "peak_mb": m["peak_mb"],
                     "total_seconds": m["seconds"], "best_epoch": best["epoch"],
                     "recall@10": round(best.get("recall@10", float("nan")), 5),
                     "ndcg@10": round(best.get("ndcg@10", float("nan")), 5)})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", choices=("ml", "full"), default="ml")
    ap.add_argument("--epochs", type=int, default=0, help="0: each recipe's default")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.data == "ml":
        measure([PY, "01_preprocess.py", "--input", str(ML), "--seed", "0"])
        bench_run("data/ml-latest-small", "pop", ["--model", "pop"])
        for loss in ("bce", "bpr"):
            ep = ["--epochs", str(args.epochs)] if args.epochs else []
            bench_run("data/ml-latest-small", loss, ["--loss", loss, *ep, *extra])
    else:
        raw = Path("data/raw/demo-full")
        ensure_full_demo(raw)
        measure([PY, "01_preprocess.py", "--input", str(raw), "--name", "demo-full"])
        bench_run("data/demo-full", "bce", ["--epochs", str(args.epochs or 2), *extra])
        bench_run("data/demo-full", "ease", ["--model", "ease", "--l2", "500"])
        for preset in ("ease-seq", "ease-soft"):
            bench_run("data/demo-full", preset, ["--preset", preset])
        bench_run("data/demo-full", "holdout-ce", ["--preset", "holdout-ce", "--epochs", "1", *extra])


if __name__ == "__main__":
    main()

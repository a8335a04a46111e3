"""The one-command submission over several hold-out seeds: honest test scores against plain EASE.

    .venv/bin/python bench/submission.py --dataset ml --seeds 3 4 --recipe recipes/default.toml
    .venv/bin/python bench/submission.py --dataset beauty --seeds 0 --recipe recipes/beauty.toml
    .venv/bin/python bench/submission.py --dataset full --seeds 0 --recipe recipes/default.toml --final

For each hold-out seed S it runs 06_submission.py (every choice on validation answers; --final also
refits on the full data and times the whole command), then fits plain EASE λ=500 on the same split's
training part as the yardstick. Prints a Markdown table and appends JSON lines to
bench/results/submission.jsonl. --cutoff Q holds out by one global time instead of per user.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import PY, ROOT, ensure_full_demo, last_json, measure, report  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
FULL_RAW = ROOT / "data" / "raw" / "demo-full"
DATASETS = {  # name: (input, hold-out flags)
    "ml": (SHARED / "ml-latest-small", ["--holdout-last", "5", "--holdout-random", "5"]),
    "beauty": (SHARED / "s3rec" / "Beauty.txt", ["--holdout-last", "1", "--holdout-random", "0"]),
    "full": (FULL_RAW, ["--holdout-last", "5", "--holdout-random", "5"]),
}
BASELINE = ["--model", "ease", "--l2", "500"]


def run_seed(dataset: str, seed: int, recipe: str, cutoff: float, final: bool, threads: int, device: str) -> dict:
    src, holdout = DATASETS[dataset]
    if cutoff:
        holdout = ["--holdout-cutoff", str(cutoff), "--holdout-random", "5"]
    shape = f"c{cutoff:g}" if cutoff else "h"
    name = f"bench-{dataset}-{shape}{seed}"
    out_dir = f"data/bench-submissions/{Path(recipe).stem}"
    m = measure([PY, "06_submission.py", "--input", str(src), "--recipe", recipe, "--name", name, "--seed", str(seed),
                 *holdout, "--out-dir", out_dir, "--threads", str(threads), "--device", device,
                 "--final" if final else "--no-final"])
    rep = json.loads((ROOT / out_dir / f"{name}-report" / "report.json").read_text())
    split = f"data/{name}-split"
    run = f"baseline-ease-l500-s{seed}"
    measure([PY, "02_train.py", "--data", split, "--split", "test", "--run-name", run, "--no-progress",
             "--threads", str(threads), *BASELINE])
    base = last_json(measure([PY, "03_inference.py", f"{split}/runs/{run}/checkpoint.pt", "--split", "test",
                              "--out-dir", f"{split}/runs/{run}", "--threads", str(threads)])["stdout"])
    rr = rep.get("rerank")  # with blend = "rerank" the reranker's order is the submitted one
    row = {"dataset": dataset, "split": seed, "shape": shape, "recipe": recipe, "final": final,
           "method": rep.get("method", "linear"), "test": rr["test"] if rr else rep["blend"]["test"],
           "valid_recall@10": (rr or rep["blend"])["valid"]["recall@10"],
           "linear_test": rep["blend"]["test"], "linear_valid_recall@10": rep["blend"]["valid"]["recall@10"],
           "importance": rr["importance"] if rr else None,
           "weights": rep["blend"]["weights"],
           "members_test": {x["name"]: x["test"].get("recall@10") for x in rep["members"]},
           "chosen": {x["name"]: x["chosen"] for x in rep["members"]},
           "ease_l500_test": {k: base[k] for k in ("recall@10", "ndcg@10")},
           "seconds": m["seconds"], "peak_mb": rep["peak_mb"]}
    row["x_ease"] = round(row["test"]["recall@10"] / base["recall@10"], 4)
    report("submission", row)
    return row


def table(rows: list[dict]) -> str:
    out = ["| split | test Recall@10 | NDCG@10 | validation | linear blend test | EASE λ=500 test | × EASE | seconds "
           "| peak MB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r['shape']}{r['split']} | {r['test']['recall@10']:.4f} | {r['test']['ndcg@10']:.4f} | "
                   f"{r['valid_recall@10']:.4f} | {r['linear_test']['recall@10']:.4f} | "
                   f"{r['ease_l500_test']['recall@10']:.4f} | {r['x_ease']:.3f} | "
                   f"{r['seconds']:.0f} | {r['peak_mb']:.0f} |")
    rec = np.array([r["test"]["recall@10"] for r in rows])
    ratio = np.array([r["x_ease"] for r in rows])
    out.append(f"| mean ± std | {rec.mean():.4f} ± {rec.std():.4f} | | | | | {ratio.mean():.3f} | | |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=tuple(DATASETS), default="ml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--recipe", default="recipes/default.toml")
    ap.add_argument("--cutoff", type=float, default=0.0, help="hold out after this time quantile (0: per user)")
    ap.add_argument("--final", action="store_true", help="also refit on the full data (times the whole command)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.dataset == "full":
        ensure_full_demo(FULL_RAW)
    rows = [run_seed(args.dataset, s, args.recipe, args.cutoff, args.final, args.threads, args.device)
            for s in args.seeds]
    print(table(rows))


if __name__ == "__main__":
    main()

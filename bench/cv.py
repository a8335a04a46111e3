"""Score recipes over several hold-out seeds: mean ± std of Recall@10 and NDCG@10 per model and blend.

    .venv/bin/python bench/cv.py --dataset ml --seeds 0 1 2
    .venv/bin/python bench/cv.py --dataset beauty --seeds 0 --recipes pop ease sasrec-ce

One split of ml-latest-small has 610 users, so a single hold-out is noisy: compare recipes by the
mean over splits. Each split is preprocessed with --seed S; every recipe trains and infers on it;
blends combine the candidate files of their recipes with 04_ensemble.py at fixed weights.
Every run picks its epoch on the validation answers and is scored on the test answers. --cutoff Q holds
out by one global time instead (data/cv-<dataset>-c<Q>-<S>). Prints a Markdown table and appends JSON
lines to bench/results/cv.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import PY, ROOT, last_json, measure, report  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DATASETS = {
    "ml": (SHARED / "ml-latest-small", ["--holdout-last", "5", "--holdout-random", "5"]),
    "beauty": (SHARED / "s3rec" / "Beauty.txt", ["--holdout-last", "1", "--holdout-random", "0"]),
}
RECIPES = {
    "pop": ["--model", "pop"],
    "ease": ["--model", "ease", "--l2", "500"],
    "ease-l50": ["--model", "ease", "--l2", "50"],
    "ease-recency": ["--preset", "ease-recent"],
    "ease-seq": ["--preset", "ease-seq"],
    "ease-soft": ["--preset", "ease-soft"],
    "sasrec-bce": ["--loss", "bce", "--history", "windows"],
    "sasrec-bpr": ["--preset", "bpr-full"],
    "sasrec-ce": ["--preset", "ce-full"],
    "sasrec-holdout": ["--preset", "holdout-ce", "--seed", "0"],
    "sasrec-holdout-s1": ["--preset", "holdout-ce", "--seed", "1"],
    "sasrec-holdout-s2": ["--preset", "holdout-ce", "--seed", "2"],
    "sasrec-holdout-ema": ["--preset", "holdout-ce", "--seed", "0", "--ema", "0.995"],
}
# Blend weights are fixed in advance (not tuned on the splits they are scored on).
ZSCORE = ["--method", "score", "--norm", "zscore"]
HOLDOUT_SEEDS = ["sasrec-holdout", "sasrec-holdout-s1", "sasrec-holdout-s2"]
BLENDS = {  # name: (recipes, weights, 04_ensemble arguments)
    "ease+sasrec-ce": (["ease", "sasrec-ce"], [1.0, 0.1], ZSCORE),
    "ease+sasrec-bpr": (["ease", "sasrec-bpr"], [1.0, 0.1], ZSCORE),
    "ease+sasrec-holdout": (["ease", "sasrec-holdout"], [1.0, 0.25], ZSCORE),
    "ease-recency+sasrec-holdout": (["ease-recency", "sasrec-holdout"], [1.0, 0.25], ZSCORE),
    "sasrec-holdout-3seeds": (HOLDOUT_SEEDS, [1.0, 1.0, 1.0], ZSCORE),
    "ease-recency+sasrec-holdout-3seeds": (["ease-recency", *HOLDOUT_SEEDS], [1.0, *[0.25 / 3] * 3], ZSCORE),
    "ease-seq+sasrec-holdout": (["ease-seq", "sasrec-holdout"], [1.0, 0.75], ZSCORE),
    "ease-seq+ease-soft": (["ease-seq", "ease-soft"], [1.0, 1.0], ZSCORE),
    "ease-seq+ease-soft+sasrec-holdout": (["ease-seq", "ease-soft", "sasrec-holdout"], [1.0, 1.0, 0.25], ZSCORE),
}


def run_split(dataset: str, seed: int, recipes: list[str], blends: list[str], extra: list[str],
              cutoff: float = 0.0) -> list[dict]:
    src, holdout = DATASETS[dataset]
    data = f"data/cv-{dataset}-h{seed}"
    if cutoff:  # one global time: everything after the cutoff quantile + random earlier items
        holdout = ["--holdout-cutoff", str(cutoff), "--holdout-random", holdout[holdout.index("--holdout-random") + 1]]
        data = f"data/cv-{dataset}-c{cutoff:g}-{seed}"
    measure([PY, "01_preprocess.py", "--input", str(src), "--out", data, "--name", Path(data).name,
             "--seed", str(seed), *holdout])
    rows, subs = [], {}
    for name in recipes:
        m = measure([PY, "02_train.py", "--data", data, "--run-name", name, "--no-progress",
                     *RECIPES[name], *extra])
        epochs = [json.loads(x) for x in (ROOT / data / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        inf = measure([PY, "03_inference.py", f"{data}/runs/{name}/checkpoint.pt",
                       "--out-dir", f"{data}/submissions"])
        subs[name] = f"{data}/submissions/{name}.top100.csv"
        rows.append({**last_json(inf["stdout"]), "dataset": dataset, "split": seed, "cutoff": cutoff, "recipe": name,
                     "train_seconds": m["seconds"], "epochs": len(epochs)})
    for name in blends:
        parts, weights, args = BLENDS[name]
        if not all(p in subs for p in parts):
            continue
        m = measure([PY, "04_ensemble.py", *[subs[p] for p in parts], "--weights", *map(str, weights),
                     "--data", data, "--out", f"{data}/submissions/{name}.csv", *args])
        rows.append({**last_json(m["stdout"]), "dataset": dataset, "split": seed, "cutoff": cutoff, "recipe": name})
    for r in rows:
        report("cv", r)
    return rows


def table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["recipe"] for r in rows))
    out = ["| recipe | Recall@10 | NDCG@10 | splits |", "| --- | --- | --- | --- |"]
    for n in names:
        rec = np.array([r["recall@10"] for r in rows if r["recipe"] == n])
        nd = np.array([r["ndcg@10"] for r in rows if r["recipe"] == n])
        out.append(f"| {n} | {rec.mean():.4f} ± {rec.std():.4f} | {nd.mean():.4f} ± {nd.std():.4f} | {len(rec)} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=tuple(DATASETS), default="ml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=tuple(RECIPES))
    ap.add_argument("--blends", nargs="*", default=list(BLENDS), choices=tuple(BLENDS))
    ap.add_argument("--cutoff", type=float, default=0.0, help="hold out after this time quantile (0: per user)")
    args, extra = ap.parse_known_args()
    rows = []
    for seed in args.seeds:
        rows += run_split(args.dataset, seed, args.recipes, args.blends, [a for a in extra if a != "--"], args.cutoff)
    print(table(rows))


if __name__ == "__main__":
    main()

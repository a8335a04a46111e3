"""The two-stage members at competition size: seconds per epoch and peak memory of the transition model,
Mult-VAE, RecVAE and the cloze model, and the seconds and memory of the reranker stage over real candidate files.

    .venv/bin/python bench/members.py                 # full-scale demo (31,360 users, 6,807 items), 2 threads
    .venv/bin/python bench/members.py --epochs 3 --threads 2
    .venv/bin/python bench/members.py --members transition --no-rerank
    .venv/bin/python bench/members.py --members --reuse-candidates   # the reranker stage alone
    .venv/bin/python bench/members.py --members --reuse-candidates --time-window 0.05 --follow-steps 5
    .venv/bin/python bench/members.py --members --reuse-candidates --time-window 0.05 --follow-steps 5 --attributes
    .venv/bin/python bench/members.py --members --reuse-candidates --recipe recipes/rerank.toml   # its [rerank] table
    .venv/bin/python bench/members.py --members --reuse-candidates --recipe recipes/rerank.toml --bags 1

Each member trains --epochs epochs on the validation split (evaluation on the validation answers included in
each epoch's seconds). The reranker stage reads the validation candidates (top 100) of EASE (--preset
ease-seq) and Mult-VAE, builds the features of their union, cross-fits the classifier (validation score and
permutation importance over 3,000 users), learns it on all validation pairs and orders the candidates; its seconds and the
peak memory of this process are reported (targets: < 5 min, < 4 GB). With --recipe the reranker takes that recipe's
`[rerank]` settings (its feature groups, trees and bags; one carve, since only the validation candidates are made
here) in place of the defaults and the three feature flags. JSON lines go to bench/results/members.jsonl.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import PY, ROOT, ensure_full_demo, measure, report  # noqa: E402

from common import rerank  # noqa: E402
from common.data import Dataset  # noqa: E402
from common.recipe import load_recipe  # noqa: E402

MEMBERS = {
    "transition": ["--preset", "transition"],  # closed form: its one "epoch" is the fit and its scoring
    "multvae": ["--model", "multvae", "--batch-size", "500", "--anneal-steps", "2000"],  # the Beauty recipe's batch
    "recvae": ["--model", "recvae", "--batch-size", "64", "--lr", "1e-3", "--gamma", "0.01"],
    "cloze": ["--model", "cloze", "--history", "windows", "--max-len", "200", "--batch-size", "128", "--dropout-attn",
              "0.2", "--dropout-hidden", "0.2", "--pre-ln", "--final-ln"],
}


def train(data: str, name: str, args: list[str], threads: int) -> dict:
    m = measure([PY, "02_train.py", "--data", data, "--run-name", name, "--no-progress", "--threads", str(threads),
                 *args])
    epochs = [json.loads(line) for line in (ROOT / data / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return {"epochs": len(epochs), "epoch_seconds": [e["seconds"] for e in epochs],
            "recall@10": [round(e.get("recall@10", float("nan")), 5) for e in epochs],
            "seconds": m["seconds"], "peak_mb": m["peak_mb"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--members", nargs="*", default=list(MEMBERS))
    ap.add_argument("--reuse-candidates", action="store_true",
                    help="keep candidate files an earlier call wrote (refused if the data changed since)")
    ap.add_argument("--time-window", type=float, default=0.0, help="the reranker's time features (0: none)")
    ap.add_argument("--follow-steps", type=int, default=0, help="the reranker's follow features (0: none)")
    ap.add_argument("--attributes", action="store_true", help="the reranker's attribute features")
    ap.add_argument("--recipe", default="", help="take the reranker's settings from this recipe's [rerank] table")
    ap.add_argument("--bags", type=int, default=0, help="the reranker's bags in place of the recipe's (0: keep)")
    ap.add_argument("--no-rerank", dest="rerank", action="store_false", help="time the members alone")
    args = ap.parse_args()
    if args.bags < 0:
        ap.error(f"--bags: at least 1 (0: the recipe's), got {args.bags}")
    raw = ROOT / "data" / "raw" / "demo-full"
    ensure_full_demo(raw)
    data = "data/bench-members"
    measure([PY, "01_preprocess.py", "--input", str(raw), "--out", data, "--name", "bench-members", "--validation"])
    for name in args.members:
        row = train(data, f"bench-{name}", [*MEMBERS[name], "--epochs", str(args.epochs)], args.threads)
        report("members", {"member": name, "threads": args.threads, **row})
        print(json.dumps({"member": name, **row}))
    if not args.rerank:
        return

    files = {}
    for name, flags in (("ease-seq", ["--preset", "ease-seq"]), ("multvae", MEMBERS["multvae"] + ["--epochs", "2"])):
        run = f"bench-cand-{name}"
        files[name] = [ROOT / data / "runs" / run / f"{run}.valid.top100.csv"]
        if args.reuse_candidates and files[name][0].exists():
            continue
        measure([PY, "02_train.py", "--data", data, "--run-name", run, "--no-progress", "--threads", str(args.threads),
                 *flags])
        measure([PY, "03_inference.py", f"{data}/runs/{run}/checkpoint.pt", "--split", "valid", "--out-dir",
                 f"{data}/runs/{run}", "--threads", str(args.threads)])
    ds = Dataset(ROOT / data, "valid")
    rerank.fit_threads(args.threads)
    if args.recipe:
        cfg = dataclasses.replace(load_recipe(Path(args.recipe)).rerank, carves=1, shifted_carves=0)
    else:
        cfg = rerank.RerankConfig(time_window=args.time_window, follow_steps=args.follow_steps,
                                  attributes=args.attributes)
    if args.bags:
        cfg = dataclasses.replace(cfg, bags=args.bags)
    t0 = time.time()
    c = rerank.build_candidates(files, ds, 100, cfg)
    t1 = time.time()
    metrics, importance = rerank.cross_fit(c, ds, cfg, 10)
    t2 = time.time()
    model = rerank.fit(c, rerank.labels(c, ds), cfg, rerank.answered_rows(c, ds))
    users, top = rerank.rerank(model, c, ds, 10)
    t3 = time.time()
    row = {"pairs": len(c.users), "features": len(c.names), "build_seconds": round(t1 - t0, 1),
           "cross_fit_seconds": round(t2 - t1, 1), "fit_and_order_seconds": round(t3 - t2, 1),
           "seconds": round(t3 - t0, 1), "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "valid_recall@10": round(metrics["recall@10"], 5), "importance": importance[:5]}
    report("members", {"member": "rerank", "threads": args.threads, "recipe": args.recipe,
                       "config": dataclasses.asdict(cfg), **row})
    print(json.dumps({"member": "rerank", **row}))


if __name__ == "__main__":
    main()

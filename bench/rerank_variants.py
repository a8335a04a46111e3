"""Reranker settings compared on the candidates of finished `bench/submission.py --recipe recipes/rerank.toml` runs.

    .venv/bin/python bench/submission.py --dataset ml --seeds 3 4 --recipe recipes/rerank.toml --threads 1
    .venv/bin/python bench/rerank_variants.py --seeds 3 4 --recipe rerank

A variant that learns from `carves` validation carves (and `shifted_carves` shifted ones) needs a run whose
recipe fitted the members on at least that many (its `[rerank] carves` and `shifted_carves`); the others are
skipped with a note. Beside the cross-fitted score
on the validation answers it prints the mean over every carve the run fitted (each half of the users scored
by the model that learned from the other half): the same answers whatever a variant learns from.

For each split it reads the report, builds the validation and test candidates of every member, and for each
variant prints the cross-fitted validation Recall@10 (two halves of the validation users, each scored by a
model learned on the other: the number to choose by) and the test Recall@10 of the model learned on all
validation pairs (reported, never chosen on). JSON lines go to bench/results/rerank_variants.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import ROOT, report  # noqa: E402

from common import rerank  # noqa: E402
from common.data import Dataset  # noqa: E402

BASE = rerank.RerankConfig(max_iter=200, learning_rate=0.05, max_leaf_nodes=31, min_samples_leaf=40)
SMALL = rerank.RerankConfig(max_iter=300, learning_rate=0.02, max_leaf_nodes=7, min_samples_leaf=200)
VARIANTS = {  # name: (settings, with the linear blend's value as a feature)
    "base": (BASE, False),
    "base+blend": (BASE, True),
    "medium+blend": (replace(BASE, max_iter=100, max_leaf_nodes=15, min_samples_leaf=100), True),
    "small+blend": (SMALL, True),
    "small": (SMALL, False),
    "small+blend+time0.02": (replace(SMALL, time_window=0.02), True),
    "small+blend+time0.05": (replace(SMALL, time_window=0.05), True),
    "small+blend+follow5": (replace(SMALL, follow_steps=5), True),
    "small+blend+time0.02+follow5": (replace(SMALL, time_window=0.02, follow_steps=5), True),
    "small+blend carves2": (replace(SMALL, carves=2), True),
    "small+blend carves3": (replace(SMALL, carves=3), True),
    "medium+blend carves3": (replace(BASE, max_iter=100, max_leaf_nodes=15, min_samples_leaf=100, carves=3), True),
    "small+blend+time0.02+follow5 carves3": (replace(SMALL, time_window=0.02, follow_steps=5, carves=3), True),
    "small+blend+time0.05+follow5 carves3": (replace(SMALL, time_window=0.05, follow_steps=5, carves=3), True),
    "small+blend+time0.05+follow5+attributes carves3": (replace(SMALL, time_window=0.05, follow_steps=5, attributes=True,
                                                               carves=3), True),
    "small+blend+time0.05+follow5+profile carves3": (replace(SMALL, time_window=0.05, follow_steps=5, profile=True,
                                                            carves=3), True),
    "small+blend+time0.05+follow5 carves3 500 trees": (replace(SMALL, time_window=0.05, follow_steps=5, carves=3,
                                                                max_iter=500), True),
    "small+blend+time0.05+follow5+attributes carves3 500 trees": (replace(SMALL, time_window=0.05, follow_steps=5,
                                                                           attributes=True, carves=3, max_iter=500), True),
    "small+blend+time0.05+follow5+relative carves3": (replace(SMALL, time_window=0.05, follow_steps=5, relative=True,
                                                             carves=3), True),
    "small+blend+time0.05+follow5+relative carves3 500 trees": (replace(SMALL, time_window=0.05, follow_steps=5,
                                                                         relative=True, carves=3, max_iter=500), True),
    "small+blend+time0.05+follow5+fill5 carves3": (replace(SMALL, time_window=0.05, follow_steps=5, fill_steps=5,
                                                          carves=3), True),
    "small+blend+time0.05+follow5+fill20 carves3": (replace(SMALL, time_window=0.05, follow_steps=5, fill_steps=20,
                                                           carves=3), True),
    "small+blend+time0.05+follow5+fill5+relative carves3": (replace(SMALL, time_window=0.05, follow_steps=5,
                                                                   fill_steps=5, relative=True, carves=3), True),
    "small+blend+time0.05+follow5 carves3 depth50": (replace(SMALL, time_window=0.05, follow_steps=5, carves=3,
                                                             depth=50), True),
    "small+blend+time0.02+follow10 carves3": (replace(SMALL, time_window=0.02, follow_steps=10, carves=3), True),
    "small+blend carves4": (replace(SMALL, carves=4), True),
    "small+blend+time0.02+follow5 carves4": (replace(SMALL, time_window=0.02, follow_steps=5, carves=4), True),
    "small+blend+time0.05+follow5+ties carves3": (replace(SMALL, time_window=0.05, follow_steps=5, ties=True,
                                                         carves=3), True),
    "small+blend+time0.05+follow5+ties carves3 500 trees": (replace(SMALL, time_window=0.05, follow_steps=5,
                                                                   ties=True, carves=3, max_iter=500), True),
    "small+blend+time0.05+follow5+kinds carves3": (replace(SMALL, time_window=0.05, follow_steps=5, kinds=True,
                                                          carves=3), True),
    "small+blend+time0.05+follow5 carves3 shifted1": (replace(SMALL, time_window=0.05, follow_steps=5, carves=3,
                                                              shifted_carves=1), True),
    "small+blend+time0.05+follow5 carves3 shifted2": (replace(SMALL, time_window=0.05, follow_steps=5, carves=3,
                                                              shifted_carves=2), True),
    "small+blend+time0.05+follow5 carves1 shifted2": (replace(SMALL, time_window=0.05, follow_steps=5, carves=1,
                                                              shifted_carves=2), True),
    "small+blend+time0.05+follow5 carves3 bags5": (replace(SMALL, time_window=0.05, follow_steps=5, carves=3, bags=5),
                                                   True),
    "small+blend+time0.05+follow5 carves3 bags5 features0.5": (replace(SMALL, time_window=0.05, follow_steps=5, carves=3,
                                                                       bags=5, max_features=0.5), True),
    "small+blend+time0.05+follow5 carves3 features0.5": (replace(SMALL, time_window=0.05, follow_steps=5, carves=3,
                                                                 max_features=0.5), True),
    "small+blend+time0.05+follow5+ties+attributes+fill20 carves3": (
        replace(SMALL, time_window=0.05, follow_steps=5, ties=True, attributes=True, fill_steps=20, carves=3), True),
    "small+blend+time0.05+follow5+ties+attributes+fill20 carves3 bags5": (
        replace(SMALL, time_window=0.05, follow_steps=5, ties=True, attributes=True, fill_steps=20, carves=3, bags=5), True),
}


def groups(rep: dict, phase: str, root: Path, carve: int = 0) -> dict[str, list[Path]]:
    """Each member's candidate files of `phase` ("tune", "test", or "carves" with the carve's index j)."""
    def run_of(s: dict) -> tuple[str, str]:
        if phase == "carves":
            return s["runs"]["carves"][carve - 2], f".valid{carve}"
        return s["runs"][phase], ".valid" if phase == "tune" else ""
    return {m["name"]: [root / "runs" / run / f"{run}{suffix}.top100.csv" for run, suffix in map(run_of, m["seeds_detail"])]
            for m in rep["members"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--recipe", default="rerank", help="the recipe's name (its report folder)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = ap.parse_args()
    for seed in args.seeds:
        rep = json.loads((ROOT / f"data/bench-submissions/{args.recipe}/bench-ml-h{seed}-report/report.json").read_text())
        root = ROOT / f"data/bench-ml-h{seed}-split"
        valid, test = Dataset(root, "valid"), Dataset(root, "test")
        weights = rep["blend"]["weights"]
        fitted = 1 + len(rep["members"][0]["seeds_detail"][0]["runs"].get("carves", []))
        shifted = rep["rerank"]["config"].get("shifted_carves", 0)  # the last `shifted` of those fitted
        held, held_shifted = valid.meta.get("carves", 1), valid.meta.get("shifted_carves", 0)
        # the folder may have been preprocessed again with other carves: a random carve j is the same file
        # whatever the count, a shifted one only after the same number of random ones
        plain = min(held - held_shifted, fitted - shifted)
        later = min(held_shifted, shifted) if held - held_shifted == fitted - shifted else 0
        if (plain, later) != (fitted - shifted, shifted):
            print(f"split {seed}: {root} holds {held} carve(s) ({held_shifted} shifted) and the run fitted {fitted} "
                  f"({shifted} shifted); using {plain} and {later} shifted")
        for name in args.variants:
            cfg, blend = VARIANTS[name]
            if cfg.carves > plain or cfg.shifted_carves > later:
                print(f"split {seed}: {name} skipped: it needs {cfg.carves} carves and {cfg.shifted_carves} shifted, "
                      f"{plain} and {later} are usable")
                continue
            w = weights if blend else None
            cv = rerank.build_candidates(groups(rep, "tune", root), valid, 100, cfg, w)
            ct = rerank.build_candidates(groups(rep, "test", root), test, 100, cfg, w)

            def carve_set(j: int):
                carve = Dataset(root, f"valid{j}")
                return rerank.build_candidates(groups(rep, "carves", root, j), carve, 100, cfg, w), carve
            randoms = [carve_set(j) for j in range(2, plain + 1)]  # the variant learns from its first cfg.carves - 1
            extra, scored = randoms[:cfg.carves - 1], randoms[cfg.carves - 1:]
            learn_only = [carve_set(fitted - shifted + m) for m in range(1, cfg.shifted_carves + 1)]
            users, top = rerank.learn_and_order(rerank.learning_set([(cv, valid), *extra, *learn_only], cfg), ct, test,
                                                  cfg, 10)
            cross = rerank.cross_fit(cv, valid, cfg, 10, 0, extra, scored, learn_only)[0]
            report("rerank_variants", {"split": seed, "variant": name,
                                       "valid_cross_fitted": round(cross["recall@10"], 4),
                                       "valid_all_carves": round(cross.get("recall@10, all carves", cross["recall@10"]), 4),
                                       "test": round(rerank.score(top, users, test, 10)["recall@10"], 4),
                                       "linear_valid": rep["blend"]["valid"]["recall@10"],
                                       "linear_test": rep["blend"]["test"]["recall@10"]})


if __name__ == "__main__":
    main()

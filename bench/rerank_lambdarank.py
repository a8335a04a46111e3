"""LightGBM's ranking objectives in place of the reranker's binary classifier, on the kept runs of
`bench/submission.py --recipe recipes/rerank.toml` (the recipe's other settings: three carves, time 0.05,
follow 5, 300 trees of 7 leaves, at least 200 pairs a leaf, learning rate 0.02).

    .venv/bin/pip install lightgbm==4.7.0      # not a dependency of the project: this bench alone needs it
    .venv/bin/python bench/rerank_lambdarank.py --seeds 3 4 --objective lambdarank rank_xendcg

The cross-fit, the carves and the ordering are those of common/rerank.py; only the model that scores the
pairs changes (one query group per user and carve). Prints, as bench/rerank_variants.py does, the
cross-fitted validation Recall@10, its mean over all carves (the figure to choose by) and the test Recall@10
(reported, never chosen on). JSON lines go to bench/results/rerank_lambdarank.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import ROOT, report  # noqa: E402
from rerank_variants import SMALL, groups  # noqa: E402

from common import rerank  # noqa: E402
from common.data import Dataset  # noqa: E402

TRUNCATION = 20  # lambdarank: pairs below this rank in the current order are not weighed


class Ranker:
    """A LightGBM ranker behind the classifier's predict_proba (column 1: the pair's score)."""

    def __init__(self, model):
        self.model = model

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        s = self.model.predict(X)
        return np.stack([-s, s], axis=1)


def ranker_fit(objective: str, threads: int):
    import lightgbm

    def fit(c: rerank.Candidates | rerank.Stacked, y: np.ndarray, cfg: rerank.RerankConfig,
            rows: np.ndarray | None = None):
        rows = rerank.learning_rows(y, np.arange(len(y)) if rows is None else rows, cfg.max_pairs, cfg.seed)
        u = c.users[rows]  # sorted within each carve: a group is a run of one user
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
        model = lightgbm.LGBMRanker(objective=objective, n_estimators=cfg.max_iter, learning_rate=cfg.learning_rate,
                                    num_leaves=cfg.max_leaf_nodes, min_child_samples=cfg.min_samples_leaf,
                                    reg_lambda=cfg.l2_regularization, lambdarank_truncation_level=TRUNCATION,
                                    random_state=cfg.seed, n_jobs=threads, verbose=-1)
        return Ranker(model.fit(c.take(rows), y[rows], group=np.diff(np.r_[starts, len(rows)])))
    return fit


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--recipe", default="rerank", help="the recipe's name (its report folder)")
    ap.add_argument("--objective", nargs="+", default=["lambdarank", "rank_xendcg"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        import lightgbm  # noqa: F401
    except ImportError:
        sys.exit("bench/rerank_lambdarank.py needs lightgbm: .venv/bin/pip install lightgbm==4.7.0")
    cfg = replace(SMALL, time_window=0.05, follow_steps=5, carves=3)
    for seed in args.seeds:
        rep = json.loads((ROOT / f"data/bench-submissions/{args.recipe}/bench-ml-h{seed}-report/report.json").read_text())
        root = ROOT / f"data/bench-ml-h{seed}-split"
        valid, test = Dataset(root, "valid"), Dataset(root, "test")
        w = rep["blend"]["weights"]
        cv = rerank.build_candidates(groups(rep, "tune", root), valid, 100, cfg, w)
        ct = rerank.build_candidates(groups(rep, "test", root), test, 100, cfg, w)
        extra = []
        for j in range(2, cfg.carves + 1):
            carve = Dataset(root, f"valid{j}")
            extra.append((rerank.build_candidates(groups(rep, "carves", root, j), carve, 100, cfg, w), carve))
        for objective in args.objective:
            rerank.fit = ranker_fit(objective, args.threads)  # the one model swapped; the rest is the recipe's
            users, top = rerank.learn_and_order(rerank.learning_set([(cv, valid), *extra], cfg), ct, test, cfg, 10)
            cross = rerank.cross_fit(cv, valid, cfg, 10, 0, extra)[0]
            report("rerank_lambdarank", {"split": seed, "objective": objective,
                                         "valid_cross_fitted": round(cross["recall@10"], 4),
                                         "valid_all_carves": round(cross["recall@10, all carves"], 4),
                                         "test": round(rerank.score(top, users, test, 10)["recall@10"], 4)})


if __name__ == "__main__":
    main()

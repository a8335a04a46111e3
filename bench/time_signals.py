"""Do time signals add to plain EASE on ml-latest-small? Validation answers of hold-out splits 3 and 4 only.

Three ideas, each scored by validation Recall@10 beside EASE lambda=500 fitted on the same training part:
  release   drop candidates first rated (by anyone) more than `gap` days after the user's last rating
  local     add the z-scored log count of the item's ratings within `w` days of the user's active span
  gaps      weight each history item by the time gap around it (a dropped item leaves a longer gap)

    .venv/bin/python bench/time_signals.py        # needs data/bench-ml-h{3,4}-split (bench/submission.py)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.data import Dataset, csr_offsets, row_owners  # noqa: E402
from common.metrics import recall_at_k  # noqa: E402
from common.recommend import EASERecommender  # noqa: E402

DAY = 86400.0
L2 = 500.0
K = 10


def per_user_z(S: np.ndarray, seen: np.ndarray) -> np.ndarray:
    S = np.where(seen, np.nan, S)
    return np.nan_to_num((S - np.nanmean(S, 1, keepdims=True)) / (np.nanstd(S, 1, keepdims=True) + 1e-12))


def per_user_median(values: np.ndarray, owner: np.ndarray, n_users: int, empty: float) -> np.ndarray:
    """np.median of each user's values (rows sorted by owner), `empty` for a user without any."""
    counts = np.bincount(owner, minlength=n_users)
    start = csr_offsets(counts)[:-1]
    v = values[np.lexsort((values, owner))]
    lo, hi = start + (counts - 1) // 2, start + counts // 2
    mid = (v[np.minimum(lo, len(v) - 1)] + v[np.minimum(hi, len(v) - 1)]) / 2
    return np.where(counts > 0, mid, empty)


def main(seeds=(3, 4)):
    for seed in seeds:
        ds = Dataset(Path(f"data/bench-ml-h{seed}-split"), "valid")
        U, V = ds.n_users, ds.n_items + 1
        u = row_owners(ds.indptr)
        X = ds.seen_matrix()
        B = EASERecommender.fit(ds, L2)["B"].double().numpy()
        seen = X.toarray() > 0
        seen[:, 0] = True
        users = ds.eval_users()
        truth = ds.answers_padded(users)

        def recall(S: np.ndarray) -> float:
            top = np.argpartition(-np.where(seen, -np.inf, S)[users], K, 1)[:, :K]
            return round(recall_at_k(top, truth, K), 4)

        S = X @ B
        t_first = np.full(V, np.inf)
        np.minimum.at(t_first, ds.items, ds.times)
        u_last, u_first = np.full(U, -np.inf), np.full(U, np.inf)
        np.maximum.at(u_last, u, ds.times)
        np.minimum.at(u_first, u, ds.times)
        row = {"seed": seed, "ease": recall(S)}
        row["release"] = {gap: recall(np.where(t_first[None] > u_last[:, None] + gap * DAY, -np.inf, S))
                          for gap in (0, 30, 365)}
        order = np.argsort(ds.times, kind="stable")
        times, items = ds.times[order], ds.items[order]
        z = per_user_z(S, seen)
        row["local"] = {}
        for w in (30, 365):
            C = np.zeros((U, V))
            for i in np.unique(items):  # a small catalogue: one searchsorted over all users per item
                t = times[items == i]
                C[:, i] = np.searchsorted(t, u_last + w * DAY, "right") - np.searchsorted(t, u_first - w * DAY)
            zl = per_user_z(np.log1p(C), seen)
            row["local"][w] = {a: recall(z + a * zl) for a in (0.1, 0.2, 0.4)}
        pos = np.arange(len(u)) - ds.indptr[u]
        n = np.diff(ds.indptr)[u]
        prev_gap = np.where(pos > 0, ds.times - np.roll(ds.times, 1), 0.0)
        next_gap = np.where(pos < n - 1, np.roll(ds.times, -1) - ds.times, 0.0)
        typical = per_user_median(prev_gap[pos > 0], u[pos > 0], U, 1.0)
        rel = np.maximum(prev_gap, next_gap) / np.maximum(typical[u], 1.0)
        row["gaps"] = {a: recall(sp.csr_matrix((1 + a * np.log1p(np.minimum(rel, 3.0)), (u, ds.items)),
                                               shape=(U, V)) @ B) for a in (0.1, 0.3, 1.0)}
        print(json.dumps(row))


if __name__ == "__main__":
    main()

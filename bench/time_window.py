"""Does the time between two items add to the windowed Gram of `--preset ease-seq`? Validation answers only.

EASE with `--window` counts two items of a user d steps apart with weight exp(-(d - 1) / tau). Here that
weight is also multiplied by alpha + (1 - alpha) exp(-dt / T), dt the seconds between the two ratings, for
a few (T, alpha); each point is scored by validation Recall@10 on hold-out splits 3 and 4 (l2 100, window 100,
tau 20, recency 2 over 10 items: the settings ease-seq's grid chose there).

    .venv/bin/python bench/time_window.py        # needs data/bench-ml-h{3,4}-split (bench/submission.py)
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import ROOT, report  # noqa: E402

from common.data import Dataset  # noqa: E402
from common.recommend import EASERecommender, evaluate  # noqa: E402
from common.utils import set_seed  # noqa: E402

L2, WINDOW, TAU, RECENCY, RECENCY_TAU = 100.0, 100, 20.0, 2.0, 10.0
DAY = 86400.0
POINTS = [(None, 1.0), (DAY / 24, 0.5), (DAY, 0.5), (DAY, 0.2), (7 * DAY, 0.5), (30 * DAY, 0.5)]  # (T, alpha)


def time_decay(ds: Dataset, T: float, alpha: float):
    """pair_weight for `cooccurrence`: alpha + (1 - alpha) exp(-dt / T) for the pair's time gap dt."""
    t = torch.from_numpy(ds.times.astype(np.float64))

    def weight(a: torch.Tensor, d: int) -> torch.Tensor:
        return (alpha + (1 - alpha) * torch.exp(-(t[a + d] - t[a]).clamp_min(0) / T)).float()
    return weight


def fit(ds: Dataset, pair_weight) -> EASERecommender:
    B = EASERecommender.fit(ds, L2, window=WINDOW, window_tau=TAU, pair_weight=pair_weight)["B"]
    return EASERecommender(B, ds, RECENCY, RECENCY_TAU)


def main(seeds=(3, 4)):
    set_seed(0)
    torch.set_num_threads(1)
    for seed in seeds:
        ds = Dataset(ROOT / f"data/bench-ml-h{seed}-split", "valid")
        for T, alpha in POINTS:
            rec = fit(ds, None if T is None else time_decay(ds, T, alpha))
            r = evaluate(rec, ds)["recall@10"]
            print(f"split {seed}: T {'-' if T is None else f'{T / DAY:.3g} days'}, alpha {alpha:g}: "
                  f"validation Recall@10 {r:.4f}", flush=True)
            report("time_window", {"split": seed, "T_days": None if T is None else T / DAY, "alpha": alpha,
                                   "valid_recall@10": round(r, 4)})


if __name__ == "__main__":
    main()

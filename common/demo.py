"""Synthetic data in the competition layout, deterministic per seed.

Planted structure, so that both static and sequential models can beat popularity:
  * skewed item popularity (Zipf-like weights);
  * user taste groups: each group prefers a few genres;
  * sequential transitions: items of a genre form a chain, and a user often watches one of the
    next few items of the chain after the current one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import atomic_path

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western")


@dataclass(frozen=True)
class DemoShape:
    n_users: int
    n_items: int
    median_len: int
    min_len: int
    max_len: int
    max_raw_item: int
    max_raw_user: int


SCALES = {
    "small": DemoShape(n_users=3000, n_items=1200, median_len=40, min_len=10, max_len=400,
                       max_raw_item=20_000, max_raw_user=10_000),
    # the competition's shape: 31,360 users, 6,807 items, ~5.15M interactions
    "full": DemoShape(n_users=31_360, n_items=6_807, median_len=114, min_len=16, max_len=2_912,
                      max_raw_item=120_000, max_raw_user=140_000),
    # three times the competition: ~100k users, 20k items, ~15M interactions (the scaling bench)
    "3x": DemoShape(n_users=100_000, n_items=20_000, median_len=105, min_len=16, max_len=2_912,
                    max_raw_item=400_000, max_raw_user=450_000),
}
LEN_SIGMA = 0.85  # lognormal spread of history lengths: mean ≈ 1.43 × median
N_GROUPS = 16
GROUP_GENRES = 3
GROUP_AFFINITY = 8.0
POP_EXPONENT = 0.9
P_NEXT_IN_CHAIN = 0.45
CHAIN_STEPS = 3
OVERDRAW = 1.6  # draw more steps than needed; repeats are dropped
SECONDS_PER_DAY = 86_400


def _group_sampler(rng, weights: np.ndarray):
    """Vectorised draw from one of several categorical distributions (rows of `weights`)."""
    cdf = np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)
    cdf[:, -1] = 1.0
    n_cat = weights.shape[1]
    flat = (cdf + np.arange(len(weights))[:, None]).ravel()

    def draw(groups: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(flat, groups + rng.random(len(groups)), side="right")
        return np.minimum(idx - groups * n_cat, n_cat - 1)
    return draw


def generate(shape: DemoShape, seed: int = 0):
    """Return (ratings DataFrame user,item,time; side frames by kind) with raw ids."""
    rng = np.random.default_rng(seed)
    n_items = shape.n_items
    genre = rng.integers(len(GENRES), size=n_items)  # primary genre per item
    pop = 1.0 / (rng.permutation(n_items) + 10.0) ** POP_EXPONENT

    prefs = np.stack([rng.choice(len(GENRES), GROUP_GENRES, replace=False) for _ in range(N_GROUPS)])
    affinity = np.ones((N_GROUPS, len(GENRES)))
    np.put_along_axis(affinity, prefs, GROUP_AFFINITY, axis=1)
    draw = _group_sampler(rng, pop[None, :] * affinity[:, genre])  # [G, n_items]

    # chains: within each genre, a random order; successor k of an item is k steps further along
    order = np.lexsort((rng.random(n_items), genre))
    chain_pos = np.empty(n_items, dtype=np.int64)
    chain_pos[order] = np.arange(n_items)
    genre_start = np.searchsorted(genre[order], np.arange(len(GENRES)))
    genre_size = np.bincount(genre, minlength=len(GENRES))

    def successor(items: np.ndarray) -> np.ndarray:
        g = genre[items]
        step = rng.integers(1, CHAIN_STEPS + 1, size=len(items))
        p = (chain_pos[items] - genre_start[g] + step) % np.maximum(genre_size[g], 1)
        return order[genre_start[g] + p]

    lengths = np.exp(np.log(shape.median_len) + LEN_SIGMA * rng.standard_normal(shape.n_users))
    lengths = np.clip(lengths.round().astype(np.int64), shape.min_len, shape.max_len)
    steps = np.ceil(lengths * OVERDRAW).astype(np.int64)
    group = rng.integers(N_GROUPS, size=shape.n_users)

    cols_u, cols_i = [], []
    last = draw(group)
    cols_u.append(np.arange(shape.n_users))
    cols_i.append(last)
    for t in range(1, int(steps.max())):
        active = np.flatnonzero(steps > t)
        nxt = draw(group[active])
        chained = rng.random(len(active)) < P_NEXT_IN_CHAIN
        nxt[chained] = successor(last[active[chained]])
        last[active] = nxt
        cols_u.append(active)
        cols_i.append(nxt)
    users = np.concatenate(cols_u)
    items = np.concatenate(cols_i)
    step_of = np.concatenate([np.full(len(c), t) for t, c in enumerate(cols_u)])

    # keep first occurrence of each (user, item), then each user's first `lengths[u]` rows
    o = np.lexsort((step_of, users))
    users, items = users[o], items[o]
    _, first = np.unique(users * n_items + items, return_index=True)
    first.sort()
    users, items = users[first], items[first]
    starts = np.searchsorted(users, np.arange(shape.n_users))
    rank = np.arange(len(users)) - starts[users]
    keep = rank < lengths[users]
    users, items = users[keep], items[keep]

    t0 = rng.integers(1_100_000_000, 1_400_000_000, size=shape.n_users)
    gaps = rng.exponential(SECONDS_PER_DAY, size=len(users)).astype(np.int64)
    ustarts = np.searchsorted(users, np.arange(shape.n_users))
    csum = np.cumsum(gaps)
    times = t0[users] + csum - csum[ustarts[users]]

    item_raw = rng.choice(np.arange(1, shape.max_raw_item + 1), n_items, replace=False)
    user_raw = np.sort(rng.choice(np.arange(1, shape.max_raw_user + 1), shape.n_users, replace=False))
    ratings = pd.DataFrame({"user": user_raw[users], "item": item_raw[items], "time": times})

    year = np.clip((1950 + 60 * rng.beta(4, 2, size=n_items)).astype(int), 1920, 2015)
    n_directors = max(n_items // 4, 1)
    director = (genre * (n_directors // len(GENRES) + 1) + rng.integers(n_directors // len(GENRES) + 1,
                                                                         size=n_items)) % n_directors
    extra_genre = rng.integers(len(GENRES), size=n_items)
    has_extra = rng.random(n_items) < 0.5
    ids = np.arange(n_items)
    side = {
        "titles": pd.DataFrame({"item": item_raw, "title": [f"Movie {r} ({y})" for r, y in zip(item_raw, year)]}),
        "years": pd.DataFrame({"item": item_raw, "year": year}),
        "genres": pd.DataFrame({"item": np.concatenate([item_raw, item_raw[has_extra]]),
                                "genre": np.asarray(GENRES)[np.concatenate([genre, extra_genre[has_extra]])]}
                               ).drop_duplicates(),
        "directors": pd.DataFrame({"item": item_raw, "director": [f"nm{d:07d}" for d in director]}),
        "writers": pd.DataFrame({"item": item_raw[ids % 3 != 0],
                                 "writer": [f"nm{(d * 7 + 3) % (2 * n_directors):07d}" for d in director[ids % 3 != 0]]}),
    }
    return ratings, side


def write_demo(out: Path, scale: str = "small", seed: int = 0) -> pd.DataFrame:
    ratings, side = generate(SCALES[scale], seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "train_ratings.csv") as tmp:
        ratings.to_csv(tmp, index=False)
    for kind, df in side.items():
        with atomic_path(out / f"{kind}.tsv") as tmp:
            df.sort_values("item", kind="stable").to_csv(tmp, sep="\t", index=False)
    return ratings

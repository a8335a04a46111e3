"""Blending ranked lists of several runs into one top-k list per user.

Each input contributes a value to every (user, item) pair it lists; the blend is the weighted sum.
  rrf    reciprocal rank fusion: 1 / (rrf_c + rank)
  borda  Borda count: (L - rank + 1) / L, for a list of length L per user
  score  the candidate file's score, normalised per user (minmax or zscore); a pair missing from
         an input gets that user's lowest normalised value in it
Ranks are 1-based. Ties in the blend are broken by the lower dense item id.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.data import Dataset
from common.io import InputError
from common.submission import check_source, read_ranked, seen_mask, to_dense

METHODS = ("rrf", "borda", "score")
NORMS = ("minmax", "zscore")
RRF_C = 60.0


def load_inputs(paths: list[Path], ds: Dataset, method: str) -> list[pd.DataFrame]:
    """Read each file as dense (user, item, rank[, score]); all must cover the same users of `ds`."""
    if not paths:
        raise InputError("no input files given")
    frames, first_users = [], None
    for path in paths:
        check_source(path, ds)
        df = read_ranked(path, with_scores=(method == "score"))
        users, items = to_dense(df, ds, path)
        seen = seen_mask(ds, users, items)
        if seen.any():  # what 03_inference.py never lists: the file was made on other data or another split
            i = int(np.flatnonzero(seen)[0])
            raise InputError(f"{path}: row {i + 2}: item {df['item'].iat[i]} is in user {df['user'].iat[i]}'s training "
                             f"history in {ds.root} ({ds.split} split): made on other data? run 03_inference.py "
                             "again on it")
        frame = pd.DataFrame({"user": users, "item": items})
        if method == "score":
            frame["score"] = df["score"].to_numpy()
        frame["rank"] = frame.groupby("user").cumcount() + 1  # file order is rank order
        user_set = np.unique(users)
        if first_users is None:
            first_users = user_set
        elif not np.array_equal(user_set, first_users):
            raise InputError(f"{path}: its users differ from those of {paths[0]} "
                             f"({len(user_set):,} vs {len(first_users):,}); blend runs of the same dataset")
        frames.append(frame)
    return frames


def _contribution(frame: pd.DataFrame, method: str, norm: str, rrf_c: float) -> tuple[np.ndarray, np.ndarray]:
    """(value per row, value for a pair this input does not list, per user)."""
    if method == "rrf":
        return 1.0 / (rrf_c + frame["rank"].to_numpy()), None
    if method == "borda":
        length = frame.groupby("user")["rank"].transform("max").to_numpy()
        return (length - frame["rank"].to_numpy() + 1) / length, None
    s = frame["score"].to_numpy(np.float64)
    g = frame.groupby("user")["score"]
    if norm == "minmax":
        lo, hi = g.transform("min").to_numpy(), g.transform("max").to_numpy()
        v = np.where(hi > lo, (s - lo) / np.where(hi > lo, hi - lo, 1.0), 1.0)
    else:
        mu, sd = g.transform("mean").to_numpy(), g.transform("std", ddof=0).to_numpy()
        v = np.where(sd > 0, (s - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    floor = pd.Series(v).groupby(frame["user"].to_numpy()).min()
    return v, floor


def contribution_matrix(frames: list[pd.DataFrame], method: str, norm: str = "minmax", rrf_c: float = RRF_C):
    """Union of (user, item) pairs and each input's value on them: (users [P], items [P], C [F, P])."""
    users = np.concatenate([f["user"].to_numpy() for f in frames])
    items = np.concatenate([f["item"].to_numpy() for f in frames])
    n_items = int(items.max()) + 1
    pairs, inverse = np.unique(users * n_items + items, return_inverse=True)
    pu, pi = pairs // n_items, pairs % n_items
    C = np.zeros((len(frames), len(pairs)))
    start = 0
    for f, frame in enumerate(frames):
        value, floor = _contribution(frame, method, norm, rrf_c)
        if floor is not None:
            C[f] = floor.reindex(pu).to_numpy()
        C[f, inverse[start:start + len(frame)]] = value
        start += len(frame)
    return pu, pi, C


def popular_order(ds: Dataset) -> np.ndarray:
    """Dense item ids, most popular in training first (ties: lower id)."""
    counts = np.bincount(ds.items, minlength=ds.n_items + 1)[1:]
    return np.lexsort((np.arange(1, ds.n_items + 1), -counts)) + 1


def top_k_of_pairs(pu: np.ndarray, pi: np.ndarray, value: np.ndarray, users: np.ndarray, k: int):
    """The k highest-valued items of each of `users` among the pairs (ties: lower item id).

    Returns (items [len(users), k] with 0 where a user has fewer than k pairs, have [len(users), k] bool)."""
    order = np.lexsort((pi, -value, pu))
    pu, pi = pu[order], pi[order]
    start = np.searchsorted(pu, users)
    end = np.searchsorted(pu, users, side="right")
    out = np.zeros((len(users), k), dtype=np.int64)
    src = start[:, None] + np.arange(k)[None, :]  # [U, k]
    have = src < end[:, None]
    out[have] = pi[src[have]]
    return out, have


def blend_top_k(pu: np.ndarray, pi: np.ndarray, value: np.ndarray, ds: Dataset, k: int,
                users: np.ndarray) -> np.ndarray:
    """Top-k items [len(users), k] per user from blended pair values; seen items dropped,
    short lists filled with the most popular unseen items."""
    keep = ~seen_mask(ds, pu, pi)
    out, have = top_k_of_pairs(pu[keep], pi[keep], value[keep], users, k)
    short = np.flatnonzero(~have.all(axis=1))
    if len(short):
        pop = popular_order(ds)
        for r in short:  # only users whose blended lists are shorter than k
            u, n = users[r], int(have[r].sum())
            taken = set(out[r, :n].tolist()) | set(ds.sequence(u).tolist())
            fill = [i for i in pop[:n + k + len(taken)] if i not in taken][:k - n]
            if len(fill) < k - n:
                fill = [i for i in pop if i not in taken][:k - n]
            out[r, n:] = fill
    return out

"""Training examples for the sequential model, built with numpy without per-position loops.

An example is a window of a user's training sequence that ends at flat position `end`
(exclusive): input = items[end-1-L : end-1], target = items[end-L : end], left-padded with 0.

History modes:
  last     one window per user, ending at the sequence's end (the baseline)
  windows  consecutive windows covering the whole history, from the end backwards
  crops    one window per user per epoch, ending at a uniformly drawn position
"""
from __future__ import annotations

import numpy as np

from common.data import Dataset
from common.io import InputError

HISTORY_MODES = ("last", "windows", "crops")
MAX_RESAMPLE_ROUNDS = 50


def window_ends(indptr: np.ndarray, max_len: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Flat end positions (exclusive) of this epoch's training windows."""
    starts, ends = indptr[:-1], indptr[1:]
    lengths = ends - starts
    users = np.flatnonzero(lengths >= 2)  # a window needs an input and a target
    if mode == "last":
        return ends[users]
    if mode == "crops":
        # end - start is the window's length + 1, at least 2
        return starts[users] + 2 + (rng.random(len(users)) * (lengths[users] - 1)).astype(np.int64)
    if mode == "windows":
        n_win = np.ceil((lengths[users] - 1) / max_len).astype(np.int64)  # windows per user
        owner = np.repeat(users, n_win)
        back = np.arange(n_win.sum()) - np.repeat(np.cumsum(n_win) - n_win, n_win)  # 0 = latest window
        return ends[owner] - back * max_len
    raise ValueError(f"unknown history mode {mode!r}; choose from {HISTORY_MODES}")


def _window_positions(indptr: np.ndarray, ends: np.ndarray, max_len: int):
    """(user [B], flat target positions [B, L], valid [B, L]) of windows ending at `ends`."""
    user = np.searchsorted(indptr, ends - 1, side="right") - 1  # [B]
    col = np.arange(max_len)[None, :]  # [1, L]
    tgt_pos = ends[:, None] - max_len + col  # [B, L]
    valid = tgt_pos - 1 >= indptr[user][:, None]  # the input position must belong to the user
    return user, tgt_pos, valid


def gather_windows(indptr: np.ndarray, items: np.ndarray, ends: np.ndarray, max_len: int):
    """(input [B, L], target [B, L], user [B]) for windows ending at `ends`."""
    user, tgt_pos, valid = _window_positions(indptr, ends, max_len)
    target = np.where(valid, items[np.where(valid, tgt_pos, 0)], 0)
    inp = np.where(valid, items[np.where(valid, tgt_pos - 1, 0)], 0)
    return inp, target, user


def gather_future(indptr: np.ndarray, items: np.ndarray, ends: np.ndarray, max_len: int, horizon: int):
    """The next `horizon` training items after each input position: [B, L, horizon], 0 past the
    user's last item. future[..., 0] is gather_windows' target."""
    user, tgt_pos, valid = _window_positions(indptr, ends, max_len)
    fpos = tgt_pos[:, :, None] + np.arange(horizon)  # [B, L, K]
    ok = valid[:, :, None] & (fpos < indptr[user + 1][:, None, None])
    return np.where(ok, items[np.where(ok, fpos, 0)], 0)


class NegativeSampler:
    """Uniform negatives over real item ids 1..n_items, excluding the user's own training items."""

    def __init__(self, ds: Dataset, rng: np.random.Generator):
        self.n_items = ds.n_items
        self.rng = rng
        users = np.repeat(np.arange(ds.n_users), np.diff(ds.indptr))
        counts = np.bincount(ds.items, minlength=ds.n_items + 1)[1:] + 1.0  # add-one smoothing
        self.pop_q = counts / counts.sum()  # [n_items] popularity distribution over ids 1..n_items
        self.keys = np.unique(users * (ds.n_items + 1) + ds.items)  # sorted (user, item) pairs

    def seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users * (self.n_items + 1) + items
        idx = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return self.keys[idx] == q

    def sample(self, users: np.ndarray, shape: tuple) -> np.ndarray:
        """Negatives of shape `users.shape + shape`, none seen by its user."""
        u = np.broadcast_to(users.reshape(users.shape + (1,) * len(shape)), users.shape + shape)
        neg = self.rng.integers(1, self.n_items + 1, size=u.shape)
        for _ in range(MAX_RESAMPLE_ROUNDS):
            bad = self.seen(u, neg)
            if not bad.any():
                return neg
            neg[bad] = self.rng.integers(1, self.n_items + 1, size=int(bad.sum()))
        bad = np.flatnonzero(self.seen(u, neg).ravel())
        flat_u, flat_neg = u.ravel(), neg.reshape(-1)
        for user in np.unique(flat_u[bad]):  # users who have seen almost every item: draw exactly
            unseen = np.setdiff1d(np.arange(1, self.n_items + 1), self.items_of(user))
            if len(unseen) == 0:
                raise InputError(f"user (dense id {user}) has seen every item; no negative can be drawn")
            rows = bad[flat_u[bad] == user]
            flat_neg[rows] = self.rng.choice(unseen, size=len(rows))
        return flat_neg.reshape(neg.shape)

    def items_of(self, user: int) -> np.ndarray:
        base = user * (self.n_items + 1)
        lo, hi = np.searchsorted(self.keys, [base, base + self.n_items + 1])
        return self.keys[lo:hi] - base

    def shared(self, m: int, dist: str = "uniform") -> np.ndarray:
        """M negatives shared by a batch, drawn uniformly or by popularity (may include positives)."""
        if dist == "pop":
            return self.rng.choice(self.n_items, size=m, p=self.pop_q) + 1
        return self.rng.integers(1, self.n_items + 1, size=m)

    def log_q(self, dist: str = "uniform") -> np.ndarray:
        """log of each id's sampling probability [n_items + 1] (id 0: 0)."""
        q = self.pop_q if dist == "pop" else np.full(self.n_items, 1.0 / self.n_items)
        return np.concatenate([[0.0], np.log(q)]).astype(np.float32)

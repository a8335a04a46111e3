"""Training examples for the sequential model, built with numpy without per-position loops.

An example is a window of a user's training sequence that ends at flat position `end`
(exclusive): input = items[end-1-L : end-1], target = items[end-L : end], left-padded with 0.

History modes:
  last     one window per user, ending at the sequence's end (the baseline)
  windows  consecutive windows covering the whole history, from the end backwards
  crops    one window per user per epoch, ending at a uniformly drawn position
  holdout  simulated hidden sets (`holdout_examples`): the model reads a user's history with some
           items removed and predicts, at its last position, the next items plus the removed ones,
           the way the competition hides the latest and some randomly dropped earlier items
"""
from __future__ import annotations

from functools import cached_property

import numpy as np

from common.data import PAD, Dataset, distinct, owner_of, row_owners
from common.io import InputError

HISTORY_MODES = ("last", "windows", "crops", "holdout")
MIN_INPUT = 3  # a simulated hidden set leaves at least this many input items
MAX_RESAMPLE_ROUNDS = 50
SEEN_BITSET_BYTES = 64 << 20  # a user-by-item bit table up to this size (the full-scale demo's: 27 MB)


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


def holdout_users(indptr: np.ndarray, n_last: int, n_random: int) -> np.ndarray:
    """Users long enough for a simulated hidden set of n_last + n_random items."""
    return np.flatnonzero(np.diff(indptr) >= n_last + n_random + MIN_INPUT)


def sample_subsets(size: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct positions drawn uniformly from range(size[b]) for every row b: [B, k].

    Floyd's algorithm, vectorised over rows: k draws, no per-row loop. Needs size >= k."""
    chosen = np.empty((len(size), k), dtype=np.int64)
    for i in range(k):
        j = size - k + i  # [B]
        t = (rng.random(len(size)) * (j + 1)).astype(np.int64)  # uniform in 0..j
        taken = (chosen[:, :i] == t[:, None]).any(axis=1)
        chosen[:, i] = np.where(taken, j, t)
    return chosen


def holdout_cuts(indptr: np.ndarray, users: np.ndarray, n_last: int, n_random: int,
                 rng: np.random.Generator) -> np.ndarray:
    """A uniformly drawn cut per entry of `users`, as a flat position: the simulated hidden set starts
    there. A cut leaves n_last items after it and n_random + MIN_INPUT before it."""
    start, length = indptr[users], indptr[users + 1] - indptr[users]  # [B]
    lo = n_random + MIN_INPUT  # smallest cut, counted from the user's first item
    return start + lo + (rng.random(len(users)) * (length - n_last - lo + 1)).astype(np.int64)  # [B]


def holdout_examples(indptr: np.ndarray, items: np.ndarray, cuts: np.ndarray, rng: np.random.Generator,
                     max_len: int, n_last: int, n_random: int):
    """The simulated hidden set of each cut (from `holdout_cuts`).

    The targets are the n_last items from the cut on and n_random items drawn uniformly from before
    it; the input is the latest max_len items before the cut that were not drawn, left-padded.
    Returns (input [B, L], targets [B, n_last + n_random], user [B])."""
    user = owner_of(indptr, cuts)  # [B]; a cut is never a user's first item
    start = indptr[user]
    cut = cuts - start  # [B] position within the user's sequence
    dropped = sample_subsets(cut, n_random, rng)  # [B, R] positions before the cut
    width = max_len + n_random  # enough positions before the cut to leave max_len undropped ones
    cand = cut[:, None] - width + np.arange(width)  # [B, L + R] positions just before the cut
    keep = (cand >= 0) & ~(cand[:, :, None] == dropped[:, None, :]).any(axis=2)  # [B, L + R]
    right = np.argsort(keep, axis=1, kind="stable")[:, n_random:]  # [B, L] kept positions move right, in order
    pos, ok = np.take_along_axis(cand, right, 1), np.take_along_axis(keep, right, 1)  # [B, L]
    inp = np.where(ok, items[start[:, None] + np.where(ok, pos, 0)], 0)  # [B, L]
    nxt = cut[:, None] + np.arange(n_last)  # [B, n_last]
    targets = items[start[:, None] + np.concatenate([nxt, dropped], axis=1)]  # [B, n_last + R]
    return inp, targets, user


def padded_columns(seq: np.ndarray) -> int:
    """How many leading columns of left-padded rows [B, L] are padding in every row: a batch drops them
    (positions count from the end, so no real position's output changes)."""
    return int(np.argmax((seq != PAD).any(axis=0)))


def pack_rows(lengths: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows for sequences of `lengths` (each 1..width) set side by side, so that short ones share a row:
    (row [B], end [B]), sequence b filling columns end - lengths[b] .. end - 1 of its row. Best fit by
    decreasing length: each sequence goes into the open row with the least room that still holds it (the
    lowest such row), else a new row; in a row the first placed ends at the last column. Sequences of one
    length are placed together: the tightest rows fill first, each with as many as it holds, which is what
    placing them one at a time does."""
    row = np.full(len(lengths), -1, dtype=np.int64)
    room = np.zeros(0, dtype=np.int64)  # [R] free columns of each open row
    for n in np.unique(lengths)[::-1]:  # at most `width` lengths, the longest first
        todo = np.flatnonzero(lengths == n)
        fits = np.flatnonzero(room >= n)
        fits = fits[np.argsort(room[fits], kind="stable")]  # the tightest first, then the lowest
        held = np.cumsum(room[fits] // n)  # [F] how many the tightest rows hold together
        placed = min(len(todo), int(held[-1]) if len(held) else 0)
        row[todo[:placed]] = fits[np.searchsorted(held, np.arange(placed), side="right")]
        extra = np.arange(len(todo) - placed) // (width // n)  # the rest fill new rows in turn
        row[todo[placed:]] = len(room) + extra
        room = np.r_[room, np.full(int(extra[-1]) + 1 if len(extra) else 0, width)]
        room -= n * np.bincount(row[todo], minlength=len(room))
    order = np.lexsort((np.arange(len(lengths)), -lengths, row))  # by row, then in the order placed
    before = np.cumsum(lengths[order]) - lengths[order]  # [B] columns placed before it, over all rows
    row_start = np.flatnonzero(np.r_[True, row[order][1:] != row[order][:-1]])[:len(order)]
    right = before - np.repeat(before[row_start], np.diff(np.r_[row_start, len(order)]))  # ... within its row
    end = np.empty(len(lengths), dtype=np.int64)
    end[order] = width - right
    return row, end


def pack_windows(seq: np.ndarray) -> dict:
    """Left-padded windows [B, L] packed into fewer rows of the same width (`pack_rows`): the gather that
    does it and what attention needs to keep the windows apart. Returns {source [R, L]: flat index into
    [B, L] of each packed column (-1 for padding), segment [R, L]: 1 + the window's row in `seq` (0 for
    padding), position [R, L]: the column's distance to its window's last item}. A packed column reads the
    same items at the same positions as before, and `attention_mask` with `segment` lets it read only its
    own window, so every real position's output is unchanged."""
    B, L = seq.shape
    length = (seq != PAD).sum(axis=1)  # [B] real columns, the rightmost ones
    keep = np.flatnonzero(length)
    row, end = pack_rows(length[keep], L)
    n = length[keep]
    window = np.repeat(keep, n)  # [T] each real token's window
    back = np.repeat(np.cumsum(n) - 1, n) - np.arange(n.sum())  # [T] distance to its window's last item
    R = int(row.max()) + 1 if len(row) else 0
    flat = np.repeat(row * L + end - 1, n) - back  # [T] packed flat column
    source = np.full(R * L, -1, dtype=np.int64)
    source[flat] = window * L + (L - 1 - back)
    segment = np.zeros(R * L, dtype=np.int64)
    segment[flat] = window + 1
    position = np.zeros(R * L, dtype=np.int64)
    position[flat] = back
    return {"source": source.reshape(R, L), "segment": segment.reshape(R, L), "position": position.reshape(R, L)}


def gather_packed(values: np.ndarray, source: np.ndarray) -> np.ndarray:
    """values [B, L, ...] laid out as `pack_windows`' source [R, L] says (0 at padding): [R, L, ...]."""
    B, L = values.shape[:2]
    flat = values.reshape(B * L, *values.shape[2:])[np.maximum(source, 0)]
    return np.where((source >= 0).reshape(source.shape + (1,) * (values.ndim - 2)), flat, 0)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch; a last batch of one row joins the previous one (SP needs two rows)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def epoch_batches(indptr: np.ndarray, ends: np.ndarray, max_len: int, batch_size: int, rng: np.random.Generator,
                  bucket: bool = True) -> list[np.ndarray]:
    """This epoch's batches of window ends (or cuts), in random order.

    With `bucket`, windows of similar length share a batch (random within a length): batches are
    trimmed to their longest window, so short sequences no longer pay for max_len positions.
    """
    ends = ends[rng.permutation(len(ends))]
    if bucket:
        user = owner_of(indptr, ends - 1)
        ends = ends[np.argsort(np.minimum(ends - indptr[user], max_len), kind="stable")]
    bounds = batch_bounds(len(ends), batch_size)
    return [ends[lo:hi] for lo, hi in (bounds[i] for i in rng.permutation(len(bounds)))]


def _window_positions(indptr: np.ndarray, ends: np.ndarray, max_len: int):
    """(user [B], flat target positions [B, L], valid [B, L]) of windows ending at `ends`."""
    user = owner_of(indptr, ends - 1)  # [B]
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
        self.ds, self.n_items, self.rng = ds, ds.n_items, rng
        counts = np.bincount(ds.items, minlength=ds.n_items + 1)[1:] + 1.0  # add-one smoothing
        self.pop_q = counts / counts.sum()  # [n_items] popularity distribution over ids 1..n_items
        # one bit for every possible (user, item) key where that table is small enough
        self.bit_table = ds.n_users * (ds.n_items + 1) <= 8 * SEEN_BITSET_BYTES

    @cached_property
    def keys(self) -> np.ndarray:
        """Sorted (user, item) keys of the training pairs; built when first needed (a full softmax never is)."""
        return distinct(row_owners(self.ds.indptr) * (self.n_items + 1) + self.ds.items)

    @cached_property
    def bits(self) -> np.ndarray | None:
        """`keys` as a bit table (None where it would pass SEEN_BITSET_BYTES)."""
        if not self.bit_table:
            return None
        bits = np.zeros(-(-self.ds.n_users * (self.n_items + 1) // 8), dtype=np.uint8)
        if len(self.keys):
            byte = self.keys >> 3  # sorted, so each byte's keys are adjacent; distinct keys: their sum is their or
            first = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])
            bits[byte[first]] = np.add.reduceat(1 << (self.keys & 7), first)
        return bits

    def seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each user has each item among its training items: one bit read per pair (a search of the
        sorted keys on catalogues too large for the bits)."""
        q = users * (self.n_items + 1) + items
        if self.bits is not None:
            return ((self.bits[q >> 3] >> (q & 7)) & 1).astype(bool)
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

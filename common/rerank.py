"""The second stage: a gradient-boosted reranker over the union of the members' candidates.

Candidates are the union of every member's top-N (its candidate files, user,item,score,rank). Each
(user, item) pair gets features (all vectorised, no per-user loop):
  <member>_z        the member's score, z-scored within the user and averaged over its seeds; a pair the
                    member does not list gets the user's lowest listed value (the sentinel)
  <member>_rank     its best rank over the seeds (1 = first); N + 1 where no seed lists it
  <member>_listed   the share of its seeds that list the pair
  blend             the linear blend's value at the weights tuned on validation (z-scores, as 04_ensemble)
  item_pop          log(1 + training interactions of the item)
  item_pop_recent   log(1 + its interactions in the latest `recent_share` of the training time span)
  item_age          time since the item's first interaction, as a share of the training time span
  user_len          log(1 + the user's training items)
  near_step         steps back (0 = latest) to the history item that co-occurs most with the candidate
                    (cosine of their user sets, among the latest `near_window` items)
  near_cos, recent_cos   that cosine, and the mean cosine with the user's latest 5 items
With `time_window` w > 0, times are read as shares of the training interactions (q(t): the share at or
before t), which makes them comparable across data sets, and each pair also gets:
  user_last         q of the user's latest training interaction
  first_gap         q of the item's first interaction minus user_last (> 0: the item came after the user)
  pop_at_last       the item's share of the interactions within w of user_last
  pop_in_span       its share of those from w before the user's first interaction to w after the latest
With `follow_steps` s > 0:
  follow_last, follow_recent   how often the candidate comes within s steps after the user's latest item
                    (after each of the latest 5, averaged) in the training sequences, as a share of all
                    that come within s steps after that item
With `fill_steps` s > 0, the candidate against the whole history, by items seen close together (within s
steps of each other, either way, in the training sequences; the count over the root of the two items'
counts):
  fill_max, fill_mean   that closeness to the history item it is closest to, and its mean over the history
With `profile` on, the candidate against the user's own taste in popularity:
  user_pop          the mean item_pop of the user's training items
  pop_gap           item_pop minus user_pop
  pop_gap_recent    item_pop minus the mean item_pop of the user's latest 5 items
With `attributes` on, for each kind of item attribute (genre, year as a decade, director, writer, ...):
  <kind>_share      the mean, over the candidate's attributes of that kind, of the share of the user's
                    training items that hold the attribute (-1 where the candidate has none of that kind)
  <kind>_recent     the same over the user's latest 5 items
With `ties` on, the candidate against the user's items that share a time stamp. Items with the same time keep
the file's order (common/data.py), which in MovieLens is by movie id, and dense ids follow raw ids; so a
dropped item of a block of tied items lies between its tied neighbours' ids, and latest answers that tie with
the user's latest training item come after its id:
  tie_count         how many pairs of consecutive tied items in the user's history have ids either side of the
                    candidate's
  tie_density       the sum, over those pairs, of 1 / (the number of catalogue items between their ids)
  last_block        log(1 + the number of the user's training items that share the latest one's time, besides it)
  after_last        (the candidate's id minus the latest training item's) / the number of items
With `relative` on, for the blend, each member's z-score and the item, history, time and follow features
above (those built), the pair against the user's other candidates:
  <feature>_urank   its rank among the user's candidates by that feature (1 = highest; ties share the best)
  <feature>_gap     its value minus the user's RELATIVE_CUT-th highest (the lowest where fewer)
Labels are the answers of the data the candidates were made on: validation answers for the model that
scores the test candidates, test answers (and the validation ones) for the model that scores the final
candidates. With `carves` > 1 the members are also fitted on each extra validation carve (other random
draws of the validation answers, common/data.py), and the classifier learns from those candidates too: more
users' worth of answers. With `shifted_carves` > 0 it also learns from carves of the data as it stood one
hold-out earlier (new latest answers); those are left out of the all-carves score. A classifier (scikit-learn's HistGradientBoostingClassifier) orders each user's
candidates; its validation score is cross-fitted over two halves of the users (every carve of a user on the
same side), and scored on the first carve's answers alone. With `kinds` on, two classifiers learn, one of the
latest answers and one of the random earlier ones (a user's last `holdout last` answers are the latest), and a
pair's value is the sum of their probabilities. With `bags` > 1, that many classifiers learn, each from a
bootstrap draw of the users with its own seed (and, with `max_features` < 1, each split choosing among that
share of the features), and a pair's value is the mean of their probabilities.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from common.blend import blend_top_k, contribution_matrix, load_inputs
from common.config import setting
from common.data import MAX_CARVES, Dataset, pad_rows, row_owners, row_positions
from common.io import InputError
from common.metrics import all_metrics

RECENT_ITEMS = 5  # history items averaged in recent_cos
IMPORTANCE_USERS = 3000  # users whose pairs the permutation importance reads
IMPORTANCE_PAIRS = 200_000  # and about this many pairs at most: fewer users where lists are long or users many
RELATIVE_CUT = 10  # the place in the user's candidates that the _gap features are measured from: the list scored
PREDICT_ROWS = 500_000  # pairs scored at once: the classifier copies what it scores to float64
RELATIVE_OF = ("blend", "item_pop", "item_pop_recent", "near_cos", "recent_cos", "pop_at_last", "pop_in_span",
               "follow_last", "follow_recent")  # besides every <member>_z


@dataclass
class RerankConfig:
    # chosen on the cross-fitted validation score of ml-latest-small splits 3 and 4 (docs/results.md): with a
    # few hundred answered users, small trees and strong smoothing beat the usual 31 leaves
    max_iter: int = setting(300, ge=1)
    learning_rate: float = setting(0.02, gt=0)
    max_leaf_nodes: int = setting(7, ge=2)
    min_samples_leaf: int = setting(200, ge=1)
    l2_regularization: float = setting(1.0, ge=0)
    # pairs one classifier learns from: every answer pair, plus a uniform sample of the other pairs up to
    # this count (0: all). Within a user the order of the learned scores is what counts, and dropping
    # negatives at random only shifts their log-odds by a constant.
    max_pairs: int = setting(1_000_000, ge=0)
    recent_share: float = setting(0.1, gt=0, le=1)
    near_window: int = setting(50, ge=1)
    time_window: float = setting(0.0, ge=0, le=1)  # 0: no time features
    follow_steps: int = setting(0, ge=0)  # 0: no follow features
    attributes: bool = setting(False)  # the side-file features (<kind>_share, <kind>_recent)
    fill_steps: int = setting(0, ge=0)  # 0: no fill features
    profile: bool = setting(False)  # the popularity-profile features (user_pop, pop_gap, pop_gap_recent)
    relative: bool = setting(False)  # the per-user relative features (<feature>_urank, <feature>_gap)
    ties: bool = setting(False)  # the tied-time features (tie_count, tie_density, last_block, after_last)
    # two classifiers, of the latest answers and of the random earlier ones, whose probabilities are summed:
    # the hidden set is a mixture of the two, which one classifier's additive log-odds fit less well
    kinds: bool = setting(False)
    depth: int = setting(0, ge=0)  # read each member's top `depth` candidates alone (0: all the recipe's)
    # classifiers averaged, each learning from a bootstrap draw of the learning users (every carve of a drawn
    # user, as often as drawn) with its own seed; 1: one classifier, from every user
    bags: int = setting(1, ge=1)
    max_features: float = setting(1.0, gt=0, le=1)  # the share of the features each split may choose from
    carves: int = setting(1, ge=1, le=MAX_CARVES)  # validation carves to learn from (1: the validation answers)
    # further carves to learn from, each from the data as it stood one hold-out's latest items earlier
    # (common/data.py): new latest answers, where the random carves repeat the validation carve's
    shifted_carves: int = setting(0, ge=0, le=MAX_CARVES - 1)
    seed: int = setting(0, ge=0)

    RULES = ((lambda c: c.carves + c.shifted_carves <= MAX_CARVES,
              f"[rerank] carves + shifted_carves is at most {MAX_CARVES}, got {{c.carves}} + {{c.shifted_carves}}"),)


@dataclass
class Candidates:
    users: np.ndarray  # [P] dense user of each pair, sorted by user
    items: np.ndarray  # [P] dense item
    X: np.ndarray  # [P, F] float32 features
    names: list[str]  # [F]

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.X[rows]


@dataclass
class Stacked:
    """Several candidate sets read as one learning set, their feature matrices left where they are: a
    classifier reads only the rows it learns from (`take`), at most max_pairs of them, where a copy of every
    set's features would cost gigabytes at competition size."""
    users: np.ndarray  # [P] the sets' users, one after the other
    items: np.ndarray  # [P] their items
    parts: list[np.ndarray]  # each set's X
    starts: np.ndarray  # [S + 1] each set's first row, and the total
    names: list[str]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The feature rows `rows` (in that order) of the sets read as one: [len(rows), F] float32."""
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), len(self.names)), np.float32)
        for j, X in enumerate(self.parts):
            at = np.flatnonzero(part == j)
            out[at] = X[rows[at] - self.starts[j]]
        return out


def member_features(groups: dict[str, list[Path]], ds: Dataset, n: int, weights: dict[str, float] | None = None):
    """Union of the candidate pairs of every member (its seed runs' files) and their member features; with
    `weights` (member -> weight, shared by its seeds) also the linear blend's value at those weights.

    Returns (users [P], items [P], features [P, 3M (+1)], names)."""
    paths = [p for ps in groups.values() for p in ps]
    frames = [f[f["rank"] <= n].reset_index(drop=True) for f in load_inputs(paths, ds, "score")]  # each one's top n
    pu, pi, C = contribution_matrix(frames, "score", "zscore")  # C [R, P]: z-score, floor where unlisted
    key = pu * (ds.n_items + 1) + pi  # sorted
    rank = np.full((len(frames), len(pu)), n + 1.0)
    for r, f in enumerate(frames):
        rank[r, np.searchsorted(key, f["user"].to_numpy() * (ds.n_items + 1) + f["item"].to_numpy())] = f["rank"]
    cols, names, start = [], [], 0
    for name, ps in groups.items():
        rows = slice(start, start + len(ps))
        start += len(ps)
        cols += [C[rows].mean(0), rank[rows].min(0), (rank[rows] <= n).mean(0)]
        names += [f"{name}_z", f"{name}_rank", f"{name}_listed"]
    if weights is not None:
        cols.append(np.array([weights[name] / len(ps) for name, ps in groups.items() for _ in ps]) @ C)
        names.append("blend")
    return pu, pi, np.stack(cols, axis=1), names


def item_features(ds: Dataset, recent_share: float) -> tuple[np.ndarray, list[str]]:
    """[n_items + 1, 3]: popularity, recent popularity, age (row 0, padding, is 0)."""
    V = ds.n_items + 1
    t0, t1 = (float(ds.times.min()), float(ds.times.max())) if len(ds.times) else (0.0, 0.0)
    span = max(t1 - t0, 1e-9)
    recent = ds.times >= t1 - recent_share * span
    first = np.full(V, np.inf)
    np.minimum.at(first, ds.items, ds.times)
    age = np.where(np.isfinite(first), (t1 - first) / span, 0.0)
    table = np.stack([np.log1p(np.bincount(ds.items, minlength=V)),
                      np.log1p(np.bincount(ds.items[recent], minlength=V)), age], axis=1)
    return table, ["item_pop", "item_pop_recent", "item_age"]


def cooccurrence_cosine(ds: Dataset):
    """Dense [n_items + 1, n_items + 1] float32 cosine of the items' user sets (row and column 0 are 0)."""
    X = ds.seen_matrix()  # [U, V] 0/1
    G = (X.T @ X).toarray().astype(np.float32)
    norm = np.sqrt(np.maximum(G.diagonal(), 1.0)).astype(np.float32)
    G /= norm[:, None]
    G /= norm[None, :]
    G[0] = 0.0
    G[:, 0] = 0.0
    return G


def history_features(ds: Dataset, pu: np.ndarray, pi: np.ndarray, window: int, chunk: int = 200_000):
    """[P, 4]: user_len, near_step, near_cos, recent_cos of each pair."""
    cos = cooccurrence_cosine(ds)
    lengths = np.diff(ds.indptr)
    out = np.zeros((len(pu), 4), dtype=np.float32)
    out[:, 0] = np.log1p(lengths[pu])
    for s in range(0, len(pu), chunk):
        u, i = pu[s:s + chunk], pi[s:s + chunk]
        hist = pad_rows(ds.indptr, ds.items, u, window, left=True)[:, ::-1]  # [c, W], column 0 = latest
        c = cos[i[:, None], hist]  # [c, W], 0 on padding
        best = c.argmax(1)
        out[s:s + chunk, 1] = np.where(c.max(1) > 0, best, window)
        out[s:s + chunk, 2] = c.max(1)
        out[s:s + chunk, 3] = c[:, :RECENT_ITEMS].mean(1)
    return out, ["user_len", "near_step", "near_cos", "recent_cos"]


def time_features(ds: Dataset, pu: np.ndarray, pi: np.ndarray, window: float):
    """[P, 4]: user_last, first_gap, pop_at_last, pop_in_span of each pair (times as shares of the
    interactions, see the module's docstring)."""
    n = len(ds.times)
    q = np.searchsorted(np.sort(ds.times), ds.times, side="right") / max(n, 1)  # [N] in (0, 1]
    lengths = np.diff(ds.indptr)
    has = lengths > 0
    last = np.where(has, q[np.maximum(ds.indptr[1:] - 1, 0)] if n else 0.0, 1.0)  # [U]; no history: the end
    first = np.where(has, q[np.minimum(ds.indptr[:-1], max(n - 1, 0))] if n else 0.0, 1.0)
    item_first = np.ones(ds.n_items + 1)
    np.minimum.at(item_first, ds.items, q)
    key = np.sort(ds.items * 2.0 + q)  # items in blocks of width 2, q within (0, 1]

    def share(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The pair's item's share of the interactions with q in [lo, hi]."""
        lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
        count = np.searchsorted(key, pi * 2.0 + hi, side="right") - np.searchsorted(key, pi * 2.0 + lo, side="left")
        return count / np.maximum((hi - lo) * n, 1.0)

    ql, qf = last[pu], first[pu]
    out = np.stack([ql, item_first[pi] - ql, share(ql - window, ql + window), share(qf - window, ql + window)], axis=1)
    return out.astype(np.float32), ["user_last", "first_gap", "pop_at_last", "pop_in_span"]


def follow_matrix(ds: Dataset, steps: int, normalise: bool = True):
    """Dense [n_items + 1, n_items + 1] float32: row a holds how often each item comes within `steps` steps
    after a in a training sequence, divided by the row's total (rows and column 0 are 0 where empty;
    `normalise=False`: the counts)."""
    owner = row_owners(ds.indptr)
    V = ds.n_items + 1
    F = np.zeros(V * V, dtype=np.float32)
    # one offset at a time, each vectorised over all interactions: the pairs of every offset at once took
    # 2.5 GB at competition size with 20 steps
    for d in range(1, steps + 1):
        same = owner[d:] == owner[:-d]
        F += np.bincount(ds.items[:-d][same].astype(np.int64) * V + ds.items[d:][same], minlength=V * V)
    F = F.reshape(V, V)
    if normalise:
        F /= np.maximum(F.sum(1, keepdims=True), 1.0)
    return F


def follow_features(ds: Dataset, pu: np.ndarray, pi: np.ndarray, steps: int, chunk: int = 200_000):
    """[P, 2]: follow_last, follow_recent of each pair."""
    F = follow_matrix(ds, steps)
    out = np.zeros((len(pu), 2), dtype=np.float32)
    for s in range(0, len(pu), chunk):
        u, i = pu[s:s + chunk], pi[s:s + chunk]
        hist = pad_rows(ds.indptr, ds.items, u, RECENT_ITEMS, left=True)[:, ::-1]  # [c, 5], column 0 = latest
        f = F[hist, i[:, None]]  # [c, 5], 0 on padding
        out[s:s + chunk, 0] = f[:, 0]
        out[s:s + chunk, 1] = f.mean(1)
    return out, ["follow_last", "follow_recent"]


def closeness_matrix(ds: Dataset, steps: int):
    """Dense [n_items + 1, n_items + 1] float32, symmetric: how often two items come within `steps` steps of
    each other in a training sequence, over the root of the product of their counts (row and column 0: 0)."""
    F = follow_matrix(ds, steps, normalise=False)
    F += F.T
    norm = np.sqrt(np.maximum(np.bincount(ds.items, minlength=ds.n_items + 1), 1.0)).astype(np.float32)
    F /= norm[:, None]
    F /= norm[None, :]
    return F


def fill_features(ds: Dataset, pu: np.ndarray, pi: np.ndarray, steps: int, budget: int = 20_000_000):
    """[P, 2]: fill_max, fill_mean of each pair. Pairs go in chunks of at most `budget` (pair, history item)
    cells, each gathered flat and reduced per pair."""
    C = closeness_matrix(ds, steps)
    cum = np.cumsum(np.diff(ds.indptr)[pu])
    cuts = np.searchsorted(cum, np.arange(budget, cum[-1] if len(cum) else 0, budget), side="right")
    out = np.zeros((len(pu), 2), dtype=np.float32)
    for lo, hi in itertools.pairwise(np.unique(np.r_[0, cuts, len(pu)])):
        flat, n = row_positions(ds.indptr, pu[lo:hi])  # the pairs' users' histories, one after another
        has = n > 0
        if has.any():
            v = C[ds.items[flat], np.repeat(pi[lo:hi], n)]
            starts = (np.cumsum(n) - n)[has]
            out[lo:hi][has] = np.stack([np.maximum.reduceat(v, starts), np.add.reduceat(v, starts) / n[has]], axis=1)
    return out, ["fill_max", "fill_mean"]


def profile_features(ds: Dataset, pu: np.ndarray, pi: np.ndarray, item_pop: np.ndarray):
    """[P, 3]: user_pop, pop_gap, pop_gap_recent of each pair (`item_pop`: [n_items + 1], log1p counts)."""
    lengths = np.diff(ds.indptr)
    user_pop = np.bincount(row_owners(ds.indptr), weights=item_pop[ds.items], minlength=ds.n_users) / np.maximum(lengths, 1)
    hist = pad_rows(ds.indptr, ds.items, np.arange(ds.n_users), RECENT_ITEMS, left=True)  # [U, 5], 0 = padding
    recent = np.where(hist > 0, item_pop[hist], 0.0).sum(1) / np.maximum((hist > 0).sum(1), 1)
    out = np.stack([user_pop[pu], item_pop[pi] - user_pop[pu], item_pop[pi] - recent[pu]], axis=1)
    return out.astype(np.float32), ["user_pop", "pop_gap", "pop_gap_recent"]


def tie_features(ds: Dataset, pu: np.ndarray, pi: np.ndarray):
    """[P, 4]: tie_count, tie_density, last_block, after_last of each pair (`pu` sorted; see the module's
    docstring). A pair (lo, hi) of tied neighbours holds the candidate c when lo < c < hi: their count is the
    pairs with lo < c less those with hi <= c (each of which also has lo < c), both read off sorted keys."""
    owner = row_owners(ds.indptr)
    tied = (owner[1:] == owner[:-1]) & (ds.times[1:] == ds.times[:-1])
    a, b, u = ds.items[:-1][tied], ds.items[1:][tied], owner[1:][tied].astype(np.int64)
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    width = 1.0 / np.maximum(hi - lo - 1, 1)  # catalogue items strictly between the two ids
    base = ds.n_items + 1
    key, start = pu.astype(np.int64) * base + pi, pu.astype(np.int64) * base

    def below(ends: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
        """The count and the width sum of the user's pairs whose end is < c ('left') or <= c ('right')."""
        ends_key = u * base + ends
        order = np.argsort(ends_key, kind="stable")
        sorted_key, cum = ends_key[order], np.r_[0.0, np.cumsum(width[order])]
        at, first = np.searchsorted(sorted_key, key, side=side), np.searchsorted(sorted_key, start, side="left")
        return at - first, cum[at] - cum[first]

    (n_lo, w_lo), (n_hi, w_hi) = below(lo, "left"), below(hi, "right")
    lengths = np.diff(ds.indptr)
    has = lengths > 0
    last_pos = np.maximum(ds.indptr[1:] - 1, 0)
    last_item = np.where(has, ds.items[last_pos] if len(ds.items) else 0, 0)
    last_time = ds.times[last_pos] if len(ds.times) else np.zeros(len(lengths))
    block = np.bincount(owner, weights=ds.times == last_time[owner], minlength=len(lengths)) - has
    after = np.where(has[pu], (pi.astype(np.int64) - last_item[pu]) / max(ds.n_items, 1), 0.0)
    out = np.stack([n_lo - n_hi, w_lo - w_hi, np.log1p(np.maximum(block, 0))[pu], after], axis=1)
    return out.astype(np.float32), ["tie_count", "tie_density", "last_block", "after_last"]


def attribute_features(ds: Dataset, pu: np.ndarray, pi: np.ndarray, chunk: int = 200_000):
    """[P, 2K]: <kind>_share and <kind>_recent of each pair, for the K attribute kinds of the data set (see the
    module's docstring). Each chunk of pairs makes its users' attribute profiles ([users, attributes], dense)
    and gathers them at the candidates' attributes."""
    import scipy.sparse as sp
    indptr, ids, names = ds.attributes()
    kinds = sorted({n.split("=", 1)[0] for n in names})
    if not kinds:
        return np.zeros((len(pu), 0), dtype=np.float32), []
    V, A = ds.n_items + 1, len(names)
    kind_of = np.searchsorted(kinds, [n.split("=", 1)[0] for n in names])  # [A]
    item_of = row_owners(indptr)  # [nnz] the item of each (item, attribute) entry
    I = sp.csr_matrix((np.ones(len(ids), np.float32), (item_of, ids - 1)), shape=(V, A))
    n_kind = np.zeros((V, len(kinds)))  # attributes of each kind per item
    np.add.at(n_kind, (item_of, kind_of[ids - 1]), 1.0)
    X = ds.seen_matrix()  # [U, V] 0/1
    lengths = np.maximum(np.diff(ds.indptr), 1)
    out = np.zeros((len(pu), 2 * len(kinds)), dtype=np.float32)
    for s in range(0, len(pu), chunk):
        u, i = pu[s:s + chunk], pi[s:s + chunk]
        users, pos = np.unique(u, return_inverse=True)
        whole = (X[users] @ I).toarray() / lengths[users, None]  # [cu, A] share of the history holding a
        hist = pad_rows(ds.indptr, ds.items, users, RECENT_ITEMS, left=True)  # [cu, 5], 0 = padding
        row, col = np.nonzero(hist)
        R = sp.csr_matrix((np.ones(len(row), np.float32), (row, hist[row, col])), shape=(len(users), V))
        recent = (R @ I).toarray() / np.maximum((hist > 0).sum(1), 1)[:, None]
        flat, count = row_positions(I.indptr, i)  # the candidates' attributes, one entry each
        pair = np.repeat(np.arange(len(i)), count)
        attr = I.indices[flat]
        cell = pair * len(kinds) + kind_of[attr]
        has = n_kind[i].ravel()
        for j, profile in enumerate((whole, recent)):
            total = np.bincount(cell, weights=profile[pos[pair], attr], minlength=len(i) * len(kinds))
            out[s:s + chunk, j::2] = np.where(has > 0, total / np.maximum(has, 1.0), -1.0).reshape(len(i), len(kinds))
    return out, [f"{k}_{what}" for k in kinds for what in ("share", "recent")]


def relative_features(pu: np.ndarray, X: np.ndarray, names: list[str], cut: int = RELATIVE_CUT):
    """[P, 2R]: <feature>_urank and <feature>_gap of each pair (`pu` sorted) for the R columns of `X` named in
    RELATIVE_OF or ending in _z. One sort per column, by user and then by falling value."""
    cols = [j for j, name in enumerate(names) if name in RELATIVE_OF or name.endswith("_z")]
    start = np.searchsorted(pu, pu, side="left")  # [P] the first pair of each pair's user
    end = np.searchsorted(pu, pu, side="right")
    out = np.zeros((len(pu), 2 * len(cols)), dtype=np.float32)
    position = np.arange(len(pu))
    for r, j in enumerate(cols):
        x = X[:, j].astype(np.float64)
        order = np.lexsort((-x, pu))  # the users keep their blocks: start and end hold for the sorted pairs too
        xs = x[order]  # pu[order] is pu itself
        new = np.r_[True, (pu[1:] != pu[:-1]) | (xs[1:] != xs[:-1])]
        first_equal = np.maximum.accumulate(np.where(new, position, 0))
        out[order, 2 * r] = first_equal - start + 1
        out[order, 2 * r + 1] = xs - xs[np.minimum(start + cut - 1, end - 1)]
    return out, [f"{names[j]}_{what}" for j in cols for what in ("urank", "gap")]


def build_candidates(groups: dict[str, list[Path]], ds: Dataset, n: int, cfg: RerankConfig,
                     weights: dict[str, float] | None = None) -> Candidates:
    n = min(n, cfg.depth) if cfg.depth else n
    blocks, names = [], []  # float32 as they come: at competition size the float64 blocks and their join took 2 GB

    def add(block: np.ndarray, block_names: list[str]) -> None:
        blocks.append(block.astype(np.float32, copy=False))
        names.extend(block_names)
    pu, pi, M, member_names = member_features(groups, ds, n, weights)
    add(M, member_names)
    del M
    items, item_names = item_features(ds, cfg.recent_share)
    add(items[pi], item_names)
    add(*history_features(ds, pu, pi, cfg.near_window))
    if cfg.time_window > 0:
        add(*time_features(ds, pu, pi, cfg.time_window))
    if cfg.follow_steps > 0:
        add(*follow_features(ds, pu, pi, cfg.follow_steps))
    if cfg.fill_steps > 0:
        add(*fill_features(ds, pu, pi, cfg.fill_steps))
    if cfg.profile:
        add(*profile_features(ds, pu, pi, items[:, 0]))
    if cfg.attributes:
        add(*attribute_features(ds, pu, pi))
    if cfg.ties:
        add(*tie_features(ds, pu, pi))
    X = np.concatenate(blocks, axis=1)
    del blocks
    if cfg.relative:
        R, relative_names = relative_features(pu, X, names)
        X, names = np.concatenate([X, R], axis=1), names + relative_names
    return Candidates(pu, pi, X, names)


def fit_threads(threads: int):
    """Let the classifier's OpenMP work use `threads` threads (0: one per core) from now on (or within a `with`
    block, when used as one). Set explicitly because a process that has started torch's thread pool holds two
    OpenMP runtimes, and the classifier's default then follows torch's setting: on 16 cores, with torch at 2
    threads, a fit took 12.5 s by default and 4.1 s at 16 threads (bench/rerank_threads.py)."""
    return threadpool_limits(limits=threads or os.cpu_count() or 1, user_api="openmp")


LATEST, EARLIER = 1, 2  # the labels of the two kinds of answers (0: not an answer)


def answer_kinds(ds: Dataset) -> np.ndarray:
    """[A] LATEST or EARLIER for each answer of `ds`. A user's answers are stored in time order and the
    latest ones come last (common/data.py), so they are the last `holdout last` of each user's."""
    holdout = ds.meta.get("holdout") or {}
    if holdout.get("cutoff", 0.0) or not holdout.get("last"):
        raise InputError(f"{ds.root}: [rerank] kinds needs a hold-out of each user's latest items "
                         "(01_preprocess.py without --holdout-cutoff, with --holdout-last > 0)")
    owner = row_owners(ds.ans_indptr)
    from_end = ds.ans_indptr[owner + 1] - np.arange(len(owner))  # 1 for a user's last answer
    return np.where(from_end <= holdout["last"], LATEST, EARLIER).astype(np.int8)


def labels(c: Candidates, ds: Dataset, kinds: bool = False) -> np.ndarray:
    """1 where the pair is one of the user's answers in `ds` (kinds: LATEST or EARLIER, by the answer's kind)."""
    base = ds.n_items + 1
    key = row_owners(ds.ans_indptr).astype(np.int64) * base + ds.ans_items
    pair = c.users.astype(np.int64) * base + c.items
    hit = np.isin(pair, key)
    y = hit.astype(np.int8)
    if kinds:
        order = np.argsort(key)
        y[hit] = answer_kinds(ds)[order[np.searchsorted(key[order], pair[hit])]]
    return y


def stack(sets: list[tuple[Candidates, Dataset]], kinds: bool = False) -> tuple[Stacked, np.ndarray, np.ndarray]:
    """The candidates of several (candidates, dataset) pairs as one learning set: (the sets read as one,
    labels from each pair's own answers, the rows of answered users)."""
    y = np.concatenate([labels(c, ds, kinds) for c, ds in sets])
    starts = np.cumsum([0] + [len(c.users) for c, _ in sets])
    rows = np.concatenate([start + answered_rows(c, ds) for start, (c, ds) in zip(starts, sets)])
    c0 = sets[0][0]
    assert all(c.names == c0.names for c, _ in sets), "candidate sets with different features"
    stacked = Stacked(np.concatenate([c.users for c, _ in sets]), np.concatenate([c.items for c, _ in sets]),
                      [c.X for c, _ in sets], starts, c0.names)
    return stacked, y, rows


def learning_rows(y: np.ndarray, rows: np.ndarray, max_pairs: int, seed: int) -> np.ndarray:
    """`rows` cut to at most `max_pairs` (0: no cut): all positive rows, then negatives drawn uniformly."""
    if max_pairs == 0 or len(rows) <= max_pairs:
        return rows
    pos, neg = rows[y[rows] > 0], rows[y[rows] == 0]
    keep = np.random.default_rng(seed).choice(len(neg), size=max(max_pairs - len(pos), 0), replace=False)
    return np.sort(np.concatenate([pos, neg[keep]]))


class SummedProba:
    """Classifiers behind one predict_proba: column 1 is `weight` times the sum of their probabilities (with
    one classifier per kind of answer and weight 1, the chance that the pair is an answer of either kind; with
    bagged classifiers and weight 1 / bags, their mean), column 0 is 1 minus it."""

    def __init__(self, models: list, weight: float = 1.0):
        self.models, self.weight = models, weight

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = self.weight * np.sum([m.predict_proba(X)[:, 1] for m in self.models], axis=0)
        return np.stack([1.0 - p, p], axis=1)


def bootstrap_rows(users: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`rows` of a bootstrap draw of their users: as many users drawn with replacement as there are, and each
    drawn user's rows repeated as often as the user was drawn."""
    owners, owner = np.unique(users[rows], return_inverse=True)
    draws = np.bincount(rng.integers(len(owners), size=len(owners)), minlength=len(owners))
    return np.repeat(rows, draws[owner])


def fit(c: Candidates | Stacked, y: np.ndarray, cfg: RerankConfig, rows: np.ndarray | None = None):
    """A classifier of the answers among the candidate pairs (`rows`: a subset to learn from, cut to
    `cfg.max_pairs`); with cfg.kinds (`y` from labels(kinds=True)), one per kind of answer, summed; with
    cfg.bags > 1, that many, each from a bootstrap draw of the users, averaged."""
    rows = learning_rows(y, np.arange(len(y)) if rows is None else rows, cfg.max_pairs, cfg.seed)

    def classifier(target: np.ndarray, rows: np.ndarray, seed: int):
        model = HistGradientBoostingClassifier(max_iter=cfg.max_iter, learning_rate=cfg.learning_rate,
                                               max_leaf_nodes=cfg.max_leaf_nodes, min_samples_leaf=cfg.min_samples_leaf,
                                               l2_regularization=cfg.l2_regularization, max_features=cfg.max_features,
                                               early_stopping=False, random_state=seed)
        return model.fit(c.take(rows), target[rows])

    def one(rows: np.ndarray, seed: int):
        if cfg.kinds:
            return SummedProba([classifier((y == kind).astype(np.int8), rows, seed) for kind in (LATEST, EARLIER)])
        return classifier((y > 0).astype(np.int8), rows, seed)
    if cfg.bags == 1:
        return one(rows, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    return SummedProba([one(bootstrap_rows(c.users, rows, rng), cfg.seed + b) for b in range(cfg.bags)], 1 / cfg.bags)


def probability(model, X: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """[len(rows)] the model's probability that each pair of X (its `rows`, default all) is an answer, scored
    PREDICT_ROWS at a time: a competition-size set at once would take a float64 copy of X (1.4 GB)."""
    n = len(X) if rows is None else len(rows)
    out = np.empty(n)
    for s in range(0, n, PREDICT_ROWS):
        part = X[s:s + PREDICT_ROWS] if rows is None else X[rows[s:s + PREDICT_ROWS]]
        out[s:s + PREDICT_ROWS] = model.predict_proba(part)[:, 1]
    return out


def answered_rows(c: Candidates, ds: Dataset) -> np.ndarray:
    """The pairs of users who have answers in `ds` (only they teach the classifier anything)."""
    return np.flatnonzero(np.isin(c.users, ds.eval_users()))


def rerank(model, c: Candidates, ds: Dataset, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(users [U], top-k items [U, k]) ordered by the classifier; short lists filled with popular items."""
    users = np.unique(c.users)
    value = probability(model, c.X)
    return users, blend_top_k(c.users, c.items, value, ds, k, users)


def learning_set(sets: list[tuple[Candidates, Dataset]], cfg: RerankConfig) -> tuple[Candidates, np.ndarray]:
    """What a classifier learns from: the answered users' pairs of every (candidates, dataset) pair of `sets`,
    labelled by that pair's own answers and cut to cfg.max_pairs as `fit` cuts them, copied out of the sets:
    (candidates, labels). `fit` on it learns what it would on the sets themselves, and the sets' feature
    matrices can be let go once it is made (at competition size each is about 0.8 GB)."""
    stacked, y, rows = stack(sets, cfg.kinds)
    keep = learning_rows(y, rows, cfg.max_pairs, cfg.seed)
    return Candidates(stacked.users[keep], stacked.items[keep], stacked.take(keep), stacked.names), y[keep]


def learn_and_order(learning: tuple[Candidates, np.ndarray], c: Candidates, ds: Dataset, cfg: RerankConfig,
                    k: int) -> tuple[np.ndarray, np.ndarray]:
    """Learn the classifier on a `learning_set`, then order the candidates `c` of `ds`: (users [U], top-k
    items [U, k])."""
    learned, y = learning
    return rerank(fit(learned, y, cfg), c, ds, k)


def score(top: np.ndarray, users: np.ndarray, ds: Dataset, k: int) -> dict:
    ev = ds.eval_users()
    return all_metrics(top[np.searchsorted(users, ev)], ds.answers_padded(ev), k)


def cross_fit(c: Candidates, ds: Dataset, cfg: RerankConfig, k: int,
              importance_users: int = IMPORTANCE_USERS,
              extra: list[tuple[Candidates, Dataset]] = (),
              score_only: list[tuple[Candidates, Dataset]] = (),
              learn_only: list[tuple[Candidates, Dataset]] = ()) -> tuple[dict, list[dict]]:
    """Validation score of the reranker with the users split in two halves (each half scored by a model
    that learned on the other, from `ds`'s answers and those of the `extra` carves), and each feature's
    permutation importance: the drop in recall@k, over at most `importance_users` of the users (0: none)
    holding about IMPORTANCE_PAIRS pairs at most, when the feature's column is shuffled across their pairs.

    With `extra` carves the same two models also score each carve's held-out half, and the mean recall@k
    over all carves (the first included, and the `score_only` ones, which are not learned from) comes back
    as "recall@k, all carves": more answers, less noise, and the same answers for any number learned from.
    The `learn_only` carves (shifted ones) are learned from, and left out of that mean."""
    users = ds.eval_users()
    rng = np.random.default_rng(cfg.seed)
    half = rng.permutation(len(users)) % 2
    learn, learn_y, learn_rows = stack([(c, ds), *extra, *learn_only], cfg.kinds)
    sets = [(c, ds), *extra, *score_only]
    values, models = [np.zeros(len(cj.users)) for cj, _ in sets], []
    for h in (0, 1):
        model = fit(learn, learn_y, cfg, learn_rows[np.isin(learn.users[learn_rows], users[half != h])])
        for j, ((cj, _), value) in enumerate(zip(sets, values)):
            rows = np.flatnonzero(np.isin(cj.users, users[half == h]))
            value[rows] = probability(model, cj.X, rows)
            if j == 0:  # the permutation importance reads the first carve
                models.append((model, rows))

    def recall(value: np.ndarray, users: np.ndarray, c: Candidates = c, ds: Dataset = ds) -> dict:
        keep = np.isin(c.users, users)
        top = blend_top_k(c.users[keep], c.items[keep], value[keep], ds, k, users)
        return all_metrics(top, ds.answers_padded(users), k)

    value = values[0]
    metrics = recall(value, users)
    if len(sets) > 1:
        metrics[f"recall@{k}, all carves"] = float(np.mean(
            [recall(v, users, cj, dj)[f"recall@{k}"] for (cj, dj), v in zip(sets, values)]))
    if importance_users == 0:
        return metrics, []
    per_user = len(c.users) / max(len(np.unique(c.users)), 1)
    size = min(importance_users, len(users), max(1, int(IMPORTANCE_PAIRS / per_user)))
    sample = np.sort(rng.choice(users, size=size, replace=False))
    keep = np.flatnonzero(np.isin(c.users, sample))  # the sample's pairs, and each model's share of them
    part = Candidates(c.users[keep], c.items[keep], c.X[keep], c.names)
    sample_value = value[keep]
    base = recall(sample_value, sample, part)[f"recall@{k}"]
    scorers = [(model, np.flatnonzero(np.isin(keep, rows))) for model, rows in models]
    shuffle_rng = np.random.default_rng(cfg.seed + 1)
    importance = []
    for f, name in enumerate(c.names):
        shuffled = sample_value.copy()
        for model, rows in scorers:
            X = part.X[rows]
            X[:, f] = X[shuffle_rng.permutation(len(X)), f]
            shuffled[rows] = probability(model, X)
        importance.append({"feature": name, f"recall@{k} drop": base - recall(shuffled, sample, part)[f"recall@{k}"]})
    return metrics, sorted(importance, key=lambda r: -r[f"recall@{k} drop"])

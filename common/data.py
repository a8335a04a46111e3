"""Preprocessed dataset: dense ids, time-ordered sequences, hold-out answers, item attributes.

Artifacts under `data/<dataset>/` (numpy arrays and JSON only, no pickles):
  meta.json        format version, sizes, hold-out settings, summary counts
  maps.npz         user_raw[n_users], item_raw[n_items + 1] (item_raw[0] = -1 is padding)
  sequences.npz    indptr[n_users + 1], items[n_train], times[n_train]: each user's training items in time
                   order, and their timestamps (positions for data without timestamps)
  holdout.npz      indptr[n_users + 1], items[n_holdout]: the local test answers (empty without a hold-out)
  answers.csv      the same answers with raw ids, `user,item`
  valid.npz        indptr[n_users + 1], items[n_valid], positions[n_valid]: validation answers carved out of the
                   training part by the same procedure, and their flat positions in sequences.npz (empty
                   without a validation split)
  valid_answers.csv  the validation answers with raw ids, `user,item`
  validJ.npz, validJ_answers.csv   the same for extra validation carve J = 2, 3, ... (with `carves` > 1)
  attributes.npz   indptr[n_items + 2], ids: attribute ids (1-based, 0 is padding) of each dense item
  attributes.json  attribute names; name of id a is names[a - 1]

Rules:
  * Dense item ids are 1..n_items in order of raw id; 0 is padding. Users are 0..n_users-1.
  * Sequences are ordered by time; ties keep file order.
  * A repeated (user, item) pair keeps its first occurrence in that order; later ones are dropped and counted.
  * Hold-out: for a user with at least last + random + MIN_TRAIN_LEFT interactions, the last `last`
    interactions and `random` uniformly drawn earlier ones are answers. Other users keep everything.
    With a cutoff quantile q instead: every interaction after the q-quantile of all timestamps, plus
    `random` uniformly drawn earlier ones, for each user who keeps random + MIN_TRAIN_LEFT earlier ones.
  * Validation: the same procedure applied again to the training part (another random draw; with a
    cutoff, the q-quantile of the training part's timestamps). Every choice (epochs, settings, blend
    weights) reads these answers; the test answers are only reported. A `Dataset` opened with
    split="valid" trains on what is left and answers with the validation items.
  * Extra validation carves (`carves` > 1): carve j = 2, 3, ... draws the random answers again with another
    seed (the latest ones are the same), written to validJ.npz. A Dataset opened with split="validJ" trains on
    the training part without those answers. They give a learned second stage more users' worth of answers
    to learn from; nothing is chosen on them.
  * Shifted carves (`shifted` = M > 0, per-user hold-outs only): M more carves after those, carve m of them
    (m = 1..M) set as the data stood `last`·m interactions earlier: each user long enough for it loses its
    latest `last`·m training rows (validJ.npz's `hidden` positions: neither trained on nor answers), then the
    same procedure carves answers from what is left. Their latest answers are new ones, not the validation
    carve's again.
  * meta.json's fingerprint is a hash of the arrays; a Dataset refuses files that do not match it. Extra
    carves have fingerprints of their own (the base one stays that of the test and validation views).
  * A user with a single interaction is kept: it gets recommendations, but gives no training pair.
  * Side rows for items that never occur in the interactions are dropped and counted.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import UMASK, InputError, atomic_path, read_json, read_npz, write_json, write_npz
from common.readers import RawData

PAD = 0  # the padding item id: dense item ids are 1..n_items

FORMAT_VERSION = 3  # 3: sequences.npz holds the timestamps
MAX_CARVES = 6  # validation carves a data set can hold, shifted ones included: valid, valid2, ..., valid6
SPLITS = ("test", "valid", *(f"valid{j}" for j in range(2, MAX_CARVES + 1)))  # answers a Dataset view scores against
FINGERPRINT_FILES = ("maps.npz", "sequences.npz", "holdout.npz", "valid.npz")
MIN_TRAIN_LEFT = 3  # a held-out user keeps at least this many training interactions
DECADE = 10
NOT_A_YEAR = "years (not a number)"  # side_rows_dropped key for year values that are not numbers
ATTRIBUTE_KINDS = ("genres", "years", "directors", "writers", "attributes")
DENSE_ID_TABLE_FACTOR = 16  # raw ids up to this many times the row count are mapped through a presence table


def csr_offsets(group_sizes: np.ndarray) -> np.ndarray:
    indptr = np.zeros(len(group_sizes) + 1, dtype=np.int64)
    np.cumsum(group_sizes, out=indptr[1:])
    return indptr


def row_owners(indptr: np.ndarray) -> np.ndarray:
    """The group of every flat row of a CSR layout: [indptr[-1]]."""
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def same_row_pairs(owner: np.ndarray, k: int) -> np.ndarray:
    """Flat positions a whose position a + k is in the same row (`owner` from row_owners): [P]."""
    return np.flatnonzero(owner[:-k] == owner[k:])


def row_positions(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flat positions of `rows` of a CSR layout, row after row, and each row's length."""
    count = indptr[rows + 1] - indptr[rows]
    start = np.cumsum(count) - count  # where each row begins in the output
    return np.arange(int(count.sum())) - np.repeat(start - indptr[rows], count), count


def owner_of(indptr: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The group that each flat position belongs to."""
    return np.searchsorted(indptr, positions, side="right") - 1


def dense_ids(values: np.ndarray):
    """np.unique(values, return_inverse=True): the sorted distinct values and each row's index among them.

    Non-negative integer ids no larger than DENSE_ID_TABLE_FACTOR times the row count go through a presence
    table (one pass instead of a sort); other values take np.unique. Both give the same arrays."""
    values = np.asarray(values)
    if values.dtype.kind in "iu" and len(values) and values.min() >= 0 \
            and values.max() <= DENSE_ID_TABLE_FACTOR * len(values):
        present = np.zeros(int(values.max()) + 1, dtype=bool)
        present[values] = True
        index = np.cumsum(present, dtype=np.int64) - 1
        return np.flatnonzero(present).astype(values.dtype), index[values]
    return np.unique(values, return_inverse=True)


def distinct(values: np.ndarray) -> np.ndarray:
    """np.unique(values): the sorted distinct values, by one sort. numpy's own call hashes first, which for
    millions of values spread over a wide range took 5-6 s against 0.3 s here (5M (user, item) keys)."""
    values = np.sort(np.asarray(values).ravel())
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def time_order(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The order of np.lexsort((arange, times, users)): by user, then time, then file order.

    A file already in that order (the usual case) is recognised in one pass."""
    same_user = users[1:] == users[:-1]
    if (users[1:] >= users[:-1]).all() and (times[1:] >= times[:-1])[same_user].all():
        return np.arange(len(users))
    order = np.argsort(times, kind="stable")
    return order[np.argsort(users[order], kind="stable")]


def order_and_dedupe(users: np.ndarray, items: np.ndarray, times: np.ndarray):
    """Sort by (user, time, file order); drop repeated (user, item) pairs after the first.

    Returns (users, items, times, n_dropped) in sorted order.
    """
    times = np.asarray(times)
    order = time_order(users, times)
    users, items, times = users[order], items[order], times[order]
    key = users.astype(np.int64) * (int(items.max()) + 1) + items
    sorted_key = np.sort(key)
    if not (sorted_key[1:] == sorted_key[:-1]).any():  # no repeats: a sort instead of np.unique's argsort
        return users, items, times, 0
    _, first = np.unique(key, return_index=True)
    keep = np.zeros(len(key), dtype=bool)
    keep[first] = True
    return users[keep], items[keep], times[keep], int((~keep).sum())


def _draw_earlier(indptr: np.ndarray, candidate: np.ndarray, n_random: int, seed) -> np.ndarray:
    """Mask of `n_random` rows per user drawn uniformly among its `candidate` rows (all of them if fewer)."""
    n = int(indptr[-1])
    user = row_owners(indptr)  # [n]
    rng = np.random.default_rng(seed)
    keys = rng.random(n)
    keys[~candidate] = 2.0  # never drawn
    # the order of np.lexsort((keys, user)) (by user, key, position) from two plain sorts. Keys are >= 0, so
    # their int64 bit patterns sort like them (an integer sort is faster). The candidates' keys are distinct in
    # practice, and then any sort equals the stable one: the non-candidates rank after every candidate of their
    # user and are never drawn, so their order among themselves does not matter
    by_key = np.argsort(keys.view(np.int64))
    sorted_keys = keys[by_key]
    if ((sorted_keys[1:] == sorted_keys[:-1]) & (sorted_keys[1:] <= 1.0)).any():
        by_key = np.argsort(keys, kind="stable")
    key_rank = np.empty(n, dtype=np.int64)
    key_rank[by_key] = np.arange(n)
    order = np.argsort(user * n + key_rank)  # distinct values: any sort gives this order
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - indptr[user[order]]
    return (rank < n_random) & (keys <= 1.0)


def latest_rows(indptr: np.ndarray, n: int, min_length: int) -> np.ndarray:
    """Boolean mask over the flat sorted rows: the latest `n` rows of each user with at least `min_length`."""
    lengths = np.diff(indptr)
    user = row_owners(indptr)
    pos = np.arange(int(indptr[-1])) - indptr[user]
    return (lengths[user] >= min_length) & (pos >= lengths[user] - n)


def split_holdout(indptr: np.ndarray, last: int, n_random: int, seed, times: np.ndarray | None = None,
                  cutoff: float = 0.0) -> np.ndarray:
    """Boolean mask over the flat sorted rows: True marks a held-out answer.

    cutoff 0: per user with n >= last + n_random + MIN_TRAIN_LEFT rows, its last `last` rows and
    `n_random` rows drawn uniformly from the earlier ones.
    cutoff q in (0, 1): `times` [n] gives each row's time; every row after the q-quantile t of all
    times is an answer, plus `n_random` rows drawn from before t, for each user with at least
    n_random + MIN_TRAIN_LEFT rows before t (a user with nothing after t gets random answers only).
    Other users keep everything.
    """
    lengths = np.diff(indptr)
    user = row_owners(indptr)  # [n]
    if cutoff:
        after = np.asarray(times) > np.quantile(times, cutoff)  # [n]
        before = np.bincount(user[~after], minlength=len(lengths))
        eligible = (before >= n_random + MIN_TRAIN_LEFT)[user]
        is_last = eligible & after
    else:
        eligible = lengths[user] >= last + n_random + MIN_TRAIN_LEFT
        is_last = latest_rows(indptr, last, last + n_random + MIN_TRAIN_LEFT)
    if n_random == 0:
        return is_last
    return is_last | _draw_earlier(indptr, eligible & ~is_last, n_random, seed)


def carve_file(split: str) -> str:
    """The answers file of a validation view ("valid" -> valid.npz, "valid2" -> valid2.npz)."""
    return f"{split}.npz"


def split_suffix(split: str) -> str:
    """What a run's output names carry for a view: "" for test, ".valid", ".valid2", ..."""
    return "" if split == "test" else f".{split}"


def dataset_fingerprint(root: Path, loaded: dict | None = None, files: tuple[str, ...] = FINGERPRINT_FILES,
                        base: str = "") -> str:
    """sha256 (first 16 hex digits) of the arrays that define a preprocessed dataset (`files`; after `base`,
    an earlier fingerprint, when given).

    `loaded` ({file name: arrays}) saves reading files already in memory."""
    h = hashlib.sha256(base.encode())
    for name in files:
        arrays = (loaded or {}).get(name) or read_npz(Path(root) / name)
        for key in sorted(arrays):
            a = np.ascontiguousarray(arrays[key])
            h.update(f"{name}:{key}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def build_attributes(raw: RawData, item_raw: np.ndarray):
    """One attribute table from every side kind present. Returns (indptr, ids, names, dropped counts)."""
    n_rows = len(item_raw)  # including padding row 0
    frames, names, dropped = [], [], {}
    for kind in ATTRIBUTE_KINDS:
        df = raw.side.get(kind)
        if df is None or len(df) == 0:
            continue
        values = df["value"].to_numpy()
        if kind == "years":
            year = pd.to_numeric(df["value"], errors="coerce")
            ok = year.notna().to_numpy()
            dropped[NOT_A_YEAR] = int((~ok).sum())
            df, year = df[ok], year[ok]
            values = [f"{int(y) // DECADE * DECADE}s" for y in year]
        dense = np.searchsorted(item_raw[1:], df["item"].to_numpy()) + 1
        known = (dense < n_rows) & (item_raw[np.minimum(dense, n_rows - 1)] == df["item"].to_numpy())
        dropped[kind] = int((~known).sum())
        label = kind.rstrip("s") if kind != "attributes" else "attr"
        frames.append(pd.DataFrame({"item": dense[known], "name": [f"{label}={v}" for v, k in zip(values, known) if k]}))
    if not frames:
        return np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), [], dropped
    table = pd.concat(frames, ignore_index=True).drop_duplicates()
    vocab, codes = np.unique(table["name"].to_numpy().astype(str), return_inverse=True)
    ids = codes.astype(np.int64) + 1
    order = np.lexsort((ids, table["item"].to_numpy()))
    items_sorted = table["item"].to_numpy()[order]
    indptr = csr_offsets(np.bincount(items_sorted, minlength=n_rows))
    return indptr, ids[order], [str(v) for v in vocab], dropped


@dataclass
class BuildSummary:
    n_users: int
    n_items: int
    n_interactions: int
    n_train: int
    n_holdout: int
    n_holdout_users: int
    n_valid: int
    n_valid_users: int
    duplicates_dropped: int
    single_interaction_users: int
    n_attributes: int
    side_rows_dropped: dict


def _write_answers(path: Path, user_raw: np.ndarray, item_raw: np.ndarray, users: np.ndarray, items: np.ndarray):
    with atomic_path(path) as tmp:
        pd.DataFrame({"user": user_raw[users], "item": item_raw[items]}).to_csv(tmp, index=False)


def build_dataset(raw: RawData, out: Path, holdout_last: int = 5, holdout_random: int = 5,
                  seed: int = 0, holdout: bool = True, name: str = "", validation: bool = False,
                  cutoff: float = 0.0, extra: dict[str, str] | None = None, carves: int = 1,
                  shifted: int = 0) -> BuildSummary:
    """Turn raw interactions into the artifacts listed in the module docstring (plus the text files
    `extra`, {name: text}), built in a folder beside `out` and swapped in whole (see `swap_in`).

    With `validation` the same hold-out procedure runs again on the training part (see the module docstring),
    `carves` times with different draws, then `shifted` times on the data as it stood one hold-out earlier each.
    """
    if not 1 <= carves + shifted <= MAX_CARVES or carves < 1 or shifted < 0:
        raise InputError(f"carves {carves} + shifted {shifted}: must be at least 1 + 0 and at most {MAX_CARVES}")
    if shifted and (cutoff or holdout_last == 0):
        raise InputError("shifted carves need a per-user hold-out of the latest items (holdout_last > 0, no cutoff)")
    if len(raw.users) == 0:
        raise InputError(f"{raw.source}: no interactions")
    user_raw, user_dense = dense_ids(raw.users)
    item_raw_real, item_dense = dense_ids(raw.items)
    item_raw = np.concatenate([[-1], item_raw_real]).astype(np.int64)
    n_users = len(user_raw)
    users, items, times, n_dup = order_and_dedupe(user_dense.astype(np.int64), item_dense.astype(np.int64) + 1,
                                                  raw.times)
    indptr = csr_offsets(np.bincount(users, minlength=n_users))
    lengths = np.diff(indptr)

    if holdout:
        answer = split_holdout(indptr, holdout_last, holdout_random, seed, times, cutoff)
    else:
        answer = np.zeros(len(users), dtype=bool)
    tr_users, tr_items, tr_times = users[~answer], items[~answer], times[~answer]
    tr_indptr = csr_offsets(np.bincount(tr_users, minlength=n_users))
    if holdout and validation:  # the same procedure on what is left, with another draw
        valid = split_holdout(tr_indptr, holdout_last, holdout_random, [seed, 1], tr_times, cutoff)
    else:
        valid = np.zeros(len(tr_items), dtype=bool)
    ho_indptr = csr_offsets(np.bincount(users[answer], minlength=n_users))
    va_indptr = csr_offsets(np.bincount(tr_users[valid], minlength=n_users))
    a_indptr, a_ids, a_names, dropped = build_attributes(raw, item_raw)

    final, out = Path(out), building_folder(Path(out))
    try:
        write_npz(out / "maps.npz", user_raw=user_raw.astype(np.int64), item_raw=item_raw)
        write_npz(out / "sequences.npz", indptr=tr_indptr, items=tr_items, times=tr_times.astype(np.float64))
        write_npz(out / "holdout.npz", indptr=ho_indptr, items=items[answer])
        write_npz(out / "valid.npz", indptr=va_indptr, items=tr_items[valid], positions=np.flatnonzero(valid))
        fingerprint = dataset_fingerprint(out)
        carve_prints = {}
        for j in range(2, carves + shifted + 1) if holdout and validation else ():
            split, shift = f"valid{j}", holdout_last * max(j - carves, 0)
            long_enough = shift + holdout_last + holdout_random + MIN_TRAIN_LEFT
            hidden = latest_rows(tr_indptr, shift, long_enough)
            shifted_user = np.diff(tr_indptr)[tr_users] >= long_enough  # [n_train] a shifted carve answers these alone
            kept = np.flatnonzero(~hidden & (shifted_user if shift else True))  # the rows answers are drawn from
            k_indptr = csr_offsets(np.bincount(tr_users[kept], minlength=n_users))
            mask = np.zeros(len(tr_items), dtype=bool)
            mask[kept[split_holdout(k_indptr, holdout_last, holdout_random, [seed, j], tr_times[kept], cutoff)]] = True
            write_npz(out / carve_file(split), indptr=csr_offsets(np.bincount(tr_users[mask], minlength=n_users)),
                      items=tr_items[mask], positions=np.flatnonzero(mask),
                      **({"hidden": np.flatnonzero(hidden)} if shift else {}))  # unshifted files stay as they were
            _write_answers(out / f"{split}_answers.csv", user_raw, item_raw, tr_users[mask], tr_items[mask])
            carve_prints[split] = dataset_fingerprint(out, files=(carve_file(split),), base=fingerprint)
        write_npz(out / "attributes.npz", indptr=a_indptr, ids=a_ids)
        write_json(out / "attributes.json", a_names)
        _write_answers(out / "answers.csv", user_raw, item_raw, users[answer], items[answer])
        _write_answers(out / "valid_answers.csv", user_raw, item_raw, tr_users[valid], tr_items[valid])
        summary = BuildSummary(
            n_users=n_users, n_items=len(item_raw_real), n_interactions=len(users),
            n_train=int((~answer).sum()), n_holdout=int(answer.sum()),
            n_holdout_users=int((np.diff(ho_indptr) > 0).sum()), n_valid=int(valid.sum()),
            n_valid_users=int((np.diff(va_indptr) > 0).sum()), duplicates_dropped=n_dup,
            single_interaction_users=int((lengths == 1).sum()), n_attributes=len(a_names),
            side_rows_dropped=dropped)
        shape = {"last": 0 if cutoff else holdout_last, "random": holdout_random, "seed": seed, "cutoff": cutoff}
        write_json(out / "meta.json", {
            "format_version": FORMAT_VERSION, "dataset": name, "source": raw.source,
            "holdout": shape if holdout else None, "validation": bool(holdout and validation),
            "carves": 1 + len(carve_prints), "shifted_carves": shifted if carve_prints else 0,
            "carve_fingerprints": carve_prints,
            "fingerprint": fingerprint, **summary.__dict__})
        for file, text in (extra or {}).items():
            (out / file).write_text(text)
        swap_in(out, final)
    finally:
        if out.exists():
            shutil.rmtree(out)
    return summary


def building_folder(final: Path) -> Path:
    """A fresh folder beside `final` to build it in; leftovers of builds that died are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
    os.chmod(folder, 0o777 & ~UMASK)  # mkdtemp makes owner-only folders; use the usual permissions
    return folder


def swap_in(built: Path, final: Path) -> None:
    """Replace `final` by the folder `built` with renames; the runs trained on the old data move along
    (their checkpoints name the old fingerprint, so nothing reuses them on other data)."""
    if final.exists():
        old = built.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        if (old / "runs").is_dir():
            os.replace(old / "runs", built / "runs")
        os.replace(built, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, final)


class Dataset:
    """Read-only view of a preprocessed `data/<dataset>/` folder.

    split="test" (default): the training part, scored against the test answers.
    split="valid": the training part without the validation answers, scored against them.
    """

    def __init__(self, root: Path, split: str = "test"):
        self.root = Path(root)
        self.meta = read_json(self.root / "meta.json")
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise InputError(f"{self.root / 'meta.json'}: format_version {self.meta.get('format_version')} "
                             f"is not {FORMAT_VERSION}; run 01_preprocess.py again")
        if split not in SPLITS:
            raise InputError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        loaded = {name: read_npz(self.root / name) for name in FINGERPRINT_FILES}
        self.fingerprint = dataset_fingerprint(self.root, loaded)
        if self.fingerprint != self.meta.get("fingerprint"):
            raise InputError(f"{self.root}: its arrays do not match the fingerprint in meta.json (a preprocessing "
                             "run was interrupted or files were changed); run 01_preprocess.py again")
        if split.startswith("valid") and split != "valid":
            carves = self.meta.get("carve_fingerprints", {})
            if split not in carves:
                raise InputError(f"{self.root}: no validation carve {split!r} (it holds {1 + len(carves)}); run "
                                 "01_preprocess.py with a larger --carves")
            loaded[carve_file(split)] = read_npz(self.root / carve_file(split))  # read once: hashed, then used
            self.fingerprint = dataset_fingerprint(self.root, loaded, files=(carve_file(split),), base=self.fingerprint)
            if self.fingerprint != carves[split]:
                raise InputError(f"{self.root}: {carve_file(split)} does not match its fingerprint in meta.json; "
                                 "run 01_preprocess.py again")
        self.user_raw, self.item_raw = loaded["maps.npz"]["user_raw"], loaded["maps.npz"]["item_raw"]
        seqs = loaded["sequences.npz"]
        self.indptr, self.items, self.times = seqs["indptr"], seqs["items"], seqs["times"]
        self.split = split
        answers = loaded["holdout.npz"]
        if split != "test":
            if not self.meta.get("validation"):
                raise InputError(f"{self.root}: preprocessed without a validation split; run 01_preprocess.py "
                                 "with a hold-out and --validation")
            answers = loaded[carve_file(split)]
            keep = np.ones(len(self.items), dtype=bool)
            keep[answers["positions"]] = False
            keep[answers.get("hidden", [])] = False  # a shifted carve's later rows
            owner = row_owners(self.indptr)
            self.indptr = csr_offsets(np.bincount(owner[keep], minlength=len(self.user_raw)))
            self.items, self.times = self.items[keep], self.times[keep]
        self.ans_indptr, self.ans_items = answers["indptr"], answers["items"]
        self._attr = None
        self._seen = {}  # (recency, tau) -> seen_matrix

    @property
    def answers_label(self) -> str:
        """Which answers this view scores against, as printed beside every score."""
        return "test" if self.split == "test" else "validation" + ("" if self.split == "valid" else f" ({self.split})")

    @property
    def has_validation(self) -> bool:
        return bool(self.meta.get("validation"))

    @property
    def name(self) -> str:
        return self.meta["dataset"]

    @property
    def n_users(self) -> int:
        return len(self.user_raw)

    @property
    def n_items(self) -> int:
        """Number of real items; dense ids are 1..n_items."""
        return len(self.item_raw) - 1

    @property
    def has_holdout(self) -> bool:
        return len(self.ans_items) > 0

    def attributes(self):
        """(indptr, ids, names) of the item-attribute table."""
        if self._attr is None:
            a = read_npz(self.root / "attributes.npz")
            self._attr = (a["indptr"], a["ids"], read_json(self.root / "attributes.json"))
        return self._attr

    def sequence(self, u: int) -> np.ndarray:
        return self.items[self.indptr[u]:self.indptr[u + 1]]

    def seen_matrix(self, recency: float = 0.0, tau: float = 10.0):
        """Sparse [n_users, n_items + 1] matrix of training interactions.

        Entries are 1, or with `recency` > 0, 1 + recency · exp(-r / tau) where r is 0 for the user's
        latest item, 1 for the one before, and so on.
        """
        import scipy.sparse as sp
        key = (recency, tau)
        if key not in self._seen:  # built once per view: models and their per-epoch evaluation share it
            data = np.ones(len(self.items), dtype=np.float32)
            if recency:
                user = row_owners(self.indptr)
                r = self.indptr[user + 1] - 1 - np.arange(len(self.items))  # steps back from the latest item
                data += (recency * np.exp(-r / tau)).astype(np.float32)
            self._seen[key] = sp.csr_matrix((data, self.items, self.indptr), shape=(self.n_users, self.n_items + 1))
        return self._seen[key]

    def recent_matrix(self, window: int, tau: float):
        """Sparse [n_users, n_items + 1] matrix of each user's latest `window` items, weighted exp(-r / tau)
        where r is 0 for the latest item, 1 for the one before, and so on."""
        import scipy.sparse as sp
        key = ("recent", window, tau)
        if key not in self._seen:
            user = row_owners(self.indptr)
            r = self.indptr[user + 1] - 1 - np.arange(len(self.items))  # steps back from the latest item
            keep = r < window
            data = np.exp(-r / tau).astype(np.float32) * keep
            m = sp.csr_matrix((data, self.items, self.indptr), shape=(self.n_users, self.n_items + 1))
            m.eliminate_zeros()
            self._seen[key] = m
        return self._seen[key]

    def answers_padded(self, users: np.ndarray) -> np.ndarray:
        """Answers of `users` as a [len(users), max_answers] array padded with 0."""
        return pad_rows(self.ans_indptr, self.ans_items, users)

    def eval_users(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.ans_indptr) > 0)


def pad_rows(indptr: np.ndarray, values: np.ndarray, rows: np.ndarray, width: int | None = None,
             left: bool = False) -> np.ndarray:
    """Rows of a CSR array as a dense [len(rows), width] array padded with PAD (0).

    With `left=True` rows are right-aligned and keep their last `width` values.
    """
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    width = int(lengths.max(initial=0)) if width is None else width
    take = np.minimum(lengths, width)
    out = np.zeros((len(rows), width), dtype=values.dtype)
    col = np.arange(width)[None, :]  # [1, W]
    if left:
        src = ends[:, None] - width + col  # [R, W] aligned to the end
        valid = col >= width - take[:, None]
    else:
        src = starts[:, None] + col
        valid = col < take[:, None]
    out[valid] = values[src[valid]]
    return out

"""Submission and candidate files: writing, reading and validating against a dataset.

submission:  `user,item`, k rows per user, users ascending, items in rank order, raw ids.
candidates:  `user,item,score,rank`, the same with each item's score and 1-based rank.
source:      `<file>.source.json` beside a file the scripts write: the sha256 of the file and the data it
             was made on (dataset, fingerprint, split). Readers refuse a file whose source names other
             data; a file without one (made by other tools) is checked against the training histories only.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from common.data import Dataset, csr_offsets, row_owners
from common.io import InputError, file_sha256, json_text, read_json, staged_files, write_csv
from common.readers import read_csv_checked, int_column

SUBMISSION_COLUMNS = ["user", "item"]
CANDIDATE_COLUMNS = ["user", "item", "score", "rank"]
SCORE_FORMAT = "%.6g"  # six significant digits


def source_path(path: Path) -> Path:
    return Path(path).with_suffix(".source.json")


def data_source(ds: Dataset, made_by: str) -> dict:
    return {"dataset": ds.name, "data_fingerprint": ds.fingerprint, "split": ds.split, "made_by": made_by}


def write_ranked(path: Path, user_raw: np.ndarray, item_raw: np.ndarray, scores: np.ndarray | None = None,
                 source: dict | None = None, stage=None) -> None:
    """Write [U, K] ranked raw items for raw users; with scores, the candidates layout
    (pairs scored -inf, i.e. seen or padding, are left out). With `source` (see data_source), also
    `<path>.source.json`. Both appear together, when `stage` (a staged_files stage) commits, or at once."""
    U, K = item_raw.shape
    cols = {"user": np.repeat(user_raw, K), "item": item_raw.ravel()}
    if scores is not None:
        cols["score"] = scores.ravel()
        cols["rank"] = np.tile(np.arange(1, K + 1), U)
        listed = np.isfinite(cols["score"])  # a user with fewer unseen items than K gets a shorter list
        cols = {name: col[listed] for name, col in cols.items()}
    with nullcontext(stage) if stage is not None else staged_files() as st:
        tmp = st(path)
        write_csv(tmp, cols, {"score": SCORE_FORMAT})
        if source is not None:
            st(source_path(path)).write_text(json_text({**source, "file": Path(path).name,
                                                        "sha256": file_sha256(tmp)}))


def check_source(path: Path, ds: Dataset) -> None:
    """Refuse a file whose source sidecar names other data than `ds` (or no longer matches the file)."""
    side = source_path(path)
    if not side.exists():
        return
    src = read_json(side)
    if src.get("sha256") != file_sha256(path):
        raise InputError(f"{path}: changed since {src.get('made_by', 'its script')} wrote it (its hash differs "
                         f"from {side.name}); write it again, or delete {side.name} to use it as a file of your own")
    if src.get("data_fingerprint") != ds.fingerprint or src.get("split") != ds.split:
        raise InputError(f"{path}: made on the {src.get('split')} split of data {src.get('data_fingerprint')}, not the "
                         f"{ds.split} split of {ds.root} ({ds.fingerprint}); run {src.get('made_by', 'it')} again on it")


def read_ranked(path: Path, with_scores: bool = False) -> pd.DataFrame:
    """Read a submission (or candidates) file with checked header and integer ids."""
    path = Path(path)
    df = read_csv_checked(path)
    need = CANDIDATE_COLUMNS if with_scores else SUBMISSION_COLUMNS
    if list(df.columns[:len(need)]) != need:
        raise InputError(f"{path}: header must start with '{','.join(need)}', found '{','.join(map(str, df.columns))}'")
    if len(df) == 0:
        raise InputError(f"{path}: no rows")
    out = pd.DataFrame({"user": int_column(df["user"], path, "user"), "item": int_column(df["item"], path, "item")})
    if with_scores:
        score = pd.to_numeric(df["score"], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(score)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{path}: row {i + 2}, column 'score': {df['score'].iat[i]!r} is not a finite number")
        out["score"] = score
        out["rank"] = int_column(df["rank"], path, "rank")
    dup = out.duplicated(["user", "item"]).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise InputError(f"{path}: row {i + 2}: user {out['user'].iat[i]}, item {out['item'].iat[i]} is repeated (listed twice)")
    return out


def dense_ids(raw_ids: np.ndarray, raw_map: np.ndarray, path: Path, col: str, offset: int = 0) -> np.ndarray:
    """Map raw ids to dense positions in the sorted `raw_map` (+offset); unknown ids are an error."""
    pos = np.minimum(np.searchsorted(raw_map, raw_ids), len(raw_map) - 1)
    bad = raw_map[pos] != raw_ids
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: row {i + 2}, column '{col}': {col} {raw_ids[i]} is not in the dataset")
    return pos + offset


def to_dense(df: pd.DataFrame, ds: Dataset, path: Path) -> tuple[np.ndarray, np.ndarray]:
    users = dense_ids(df["user"].to_numpy(), ds.user_raw, path, "user")
    items = dense_ids(df["item"].to_numpy(), ds.item_raw[1:], path, "item", offset=1)
    return users, items


def seen_mask(ds: Dataset, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """True where dense `items[i]` is in the training data of dense `users[i]`."""
    keys = row_owners(ds.indptr) * (ds.n_items + 1) + ds.items
    keys.sort()
    q = users * (ds.n_items + 1) + items
    idx = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
    return keys[idx] == q if len(keys) else np.zeros(len(q), dtype=bool)


def submission_matrix(df: pd.DataFrame, ds: Dataset, path: Path, k: int,
                      required_users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a submission and return (dense users [U], dense items [U, k] in rank order).

    Checks: every required user present, exactly k unique items per user, none seen, none unknown.
    """
    users, items = to_dense(df, ds, path)
    seen = seen_mask(ds, users, items)
    if seen.any():
        i = int(np.flatnonzero(seen)[0])
        raise InputError(f"{path}: row {i + 2}: item {df['item'].iat[i]} is already in user {df['user'].iat[i]}'s history")
    order = np.argsort(users, kind="stable")
    users_sorted = users[order]
    uniq, counts = np.unique(users_sorted, return_counts=True)
    if (counts != k).any():
        u = uniq[np.flatnonzero(counts != k)[0]]
        raise InputError(f"{path}: user {ds.user_raw[u]} has {counts[uniq == u][0]} rows, expected {k}")
    mat = items[order].reshape(len(uniq), k)  # [U, k]
    srt = np.sort(mat, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    if dup.any():
        raise InputError(f"{path}: user {ds.user_raw[uniq[np.flatnonzero(dup)[0]]]} has a repeated item")
    if required_users is not None:
        missing = np.setdiff1d(required_users, uniq)
        if len(missing):
            raise InputError(f"{path}: {len(missing)} users are missing, e.g. user {ds.user_raw[missing[0]]}")
    return uniq, mat


def read_answers(path: Path, ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Answers `user,item` (raw ids) as CSR (indptr [n_users + 1], dense items), checked against `ds`."""
    df = read_ranked(path)
    users, items = to_dense(df, ds, path)
    seen = seen_mask(ds, users, items)
    if seen.any():
        i = int(np.flatnonzero(seen)[0])
        raise InputError(f"{path}: row {i + 2}: answer item {df['item'].iat[i]} is in user {df['user'].iat[i]}'s "
                         f"training data; the answers do not belong to {ds.root}")
    order = np.argsort(users, kind="stable")
    return csr_offsets(np.bincount(users, minlength=ds.n_users)), items[order]

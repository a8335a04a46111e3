"""Readers for the supported raw layouts. Each returns a `RawData` with raw ids.

Layouts:
  competition  train_ratings.csv (user,item,time) + optional titles/years/genres/directors/writers.tsv
  ml-csv       MovieLens latest-small/20m/25m: ratings.csv + movies.csv
  ml-dat       MovieLens 1m: ratings.dat + movies.dat ('::' separated)
  ml-100k      MovieLens 100k: u.data + u.item
  s3rec        <name>.txt ('user item item ...' in order) + <name>_item2attributes.json
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import InputError

FORMATS = ("auto", "competition", "ml-csv", "ml-dat", "ml-100k", "s3rec")
SIDE_FILES = ("genres", "years", "directors", "writers")  # attribute kinds from the competition layout
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class RawData:
    """Interactions in file order with raw ids, plus side data as (item, value) frames per kind."""
    users: np.ndarray  # [N] int64
    items: np.ndarray  # [N] int64
    times: np.ndarray  # [N] float64; for order-only data, the position in the file
    source: str
    side: dict = field(default_factory=dict)  # kind -> DataFrame(item:int64, value:str)


# ---------------------------------------------------------------- validation helpers

def _require_file(path: Path) -> Path:
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    return path


def _require_columns(df: pd.DataFrame, cols, path: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, df.columns))})")
    if len(df) == 0:
        raise InputError(f"{path}: no data rows")


INT64_MAX = np.iinfo(np.int64).max
FLOAT_EXACT = 2 ** 53  # every integer up to this has an exact float64


def int_column(values, path: Path, col: str, first_row: int = 2) -> np.ndarray:
    """Column as int64, or an error naming the first bad row (file line numbers, header = 1): a value that is
    not integral, that int64 cannot hold, or that was read as a float beyond 2**53 (where floats skip
    integers, so the id it names is not certain)."""
    s = pd.Series(values)
    if s.dtype == np.int64:
        return s.to_numpy()
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna() | (num != np.floor(num.fillna(0)))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{path}: row {i + first_row}, column '{col}': expected an integer id, got {s.iloc[i]!r}")
    big = num.abs() > (FLOAT_EXACT if num.dtype.kind == "f" else INT64_MAX)
    if big.any():
        i = int(np.flatnonzero(big.to_numpy())[0])
        why = ("is beyond the range of int64" if num.dtype.kind != "f" or abs(float(num.iloc[i])) >= 2.0 ** 63
               else "was read as a float (the column has values such as 5.0) and is too long to be exact; write every "
                    "id as a plain integer")
        raise InputError(f"{path}: row {i + first_row}, column '{col}': id {s.iloc[i]} {why}")
    return num.to_numpy().astype(np.int64)


def time_column(values, path: Path, col: str, first_row: int = 2) -> np.ndarray:
    s = pd.Series(values)
    num = pd.to_numeric(s, errors="coerce")
    bad = ~np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path}: row {i + first_row}, column '{col}': expected a number, got {s.iloc[i]!r}")
    return num.to_numpy(dtype=np.float64)


def read_csv_checked(path: Path, **kw) -> pd.DataFrame:
    """pandas.read_csv with one-line errors naming the file."""
    _require_file(path)
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: cannot parse: {str(e).splitlines()[0]}") from None


def _interactions(df: pd.DataFrame, path: Path, ucol: str, icol: str, tcol: str, source: str,
                  first_row: int = 2) -> RawData:
    _require_columns(df, (ucol, icol, tcol), path)
    return RawData(users=int_column(df[ucol], path, ucol, first_row),
                   items=int_column(df[icol], path, icol, first_row),
                   times=time_column(df[tcol], path, tcol, first_row), source=source)


def _side_frame(items, values, path: Path, first_row: int = 2) -> pd.DataFrame:
    df = pd.DataFrame({"item": int_column(items, path, "item", first_row),
                       "value": pd.Series(values).astype(str).str.strip().to_numpy()})
    return df[(df["value"] != "") & (df["value"] != "nan")]


# ---------------------------------------------------------------- readers

def read_competition(folder: Path) -> RawData:
    path = folder / "train_ratings.csv"
    raw = _interactions(read_csv_checked(path), path, "user", "item", "time", "competition")
    for kind in SIDE_FILES + ("titles",):
        side_path = folder / f"{kind}.tsv"
        if not side_path.exists():
            continue
        df = read_csv_checked(side_path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
        if df.shape[1] < 2 or df.columns[0] != "item":
            raise InputError(f"{side_path}: expected a header 'item<TAB>value' with two columns")
        raw.side[kind] = _side_frame(df.iloc[:, 0], df.iloc[:, 1], side_path)
    return raw


def _movielens_side(item_ids, titles, genres, path: Path, first_row: int, genre_sep: str = "|") -> dict:
    titles = pd.Series(titles).astype(str)
    years = titles.str.extract(YEAR_IN_TITLE, expand=False)
    side = {"titles": _side_frame(item_ids, titles.to_numpy(), path, first_row),
            "years": _side_frame(item_ids, years.to_numpy(), path, first_row)}
    g = pd.DataFrame({"item": np.asarray(item_ids), "value": pd.Series(genres).astype(str).str.split(genre_sep)})
    g = g.explode("value")
    g = g[g["value"] != "(no genres listed)"]
    side["genres"] = _side_frame(g["item"].to_numpy(), g["value"].to_numpy(), path, first_row)
    return side


def read_ml_csv(folder: Path) -> RawData:
    path = folder / "ratings.csv"
    raw = _interactions(read_csv_checked(path), path, "userId", "movieId", "timestamp", "ml-csv")
    movies_path = folder / "movies.csv"
    if movies_path.exists():
        m = read_csv_checked(movies_path, dtype=str, keep_default_na=False)
        _require_columns(m, ("movieId", "title", "genres"), movies_path)
        raw.side = _movielens_side(m["movieId"], m["title"], m["genres"], movies_path, first_row=2)
    return raw


def read_ml_dat(folder: Path) -> RawData:
    path = folder / "ratings.dat"
    df = read_csv_checked(path, sep="::", engine="python", header=None,
                   names=["user", "item", "rating", "time"], encoding="latin-1")
    raw = _interactions(df, path, "user", "item", "time", "ml-dat", first_row=1)
    movies_path = folder / "movies.dat"
    if movies_path.exists():
        m = read_csv_checked(movies_path, sep="::", engine="python", header=None, dtype=str,
                      names=["item", "title", "genres"], encoding="latin-1")
        raw.side = _movielens_side(m["item"], m["title"], m["genres"], movies_path, first_row=1)
    return raw


def read_ml_100k(folder: Path) -> RawData:
    path = folder / "u.data"
    df = read_csv_checked(path, sep="\t", header=None, names=["user", "item", "rating", "time"])
    raw = _interactions(df, path, "user", "item", "time", "ml-100k", first_row=1)
    items_path = folder / "u.item"
    if items_path.exists():
        cols = ["item", "title", "release", "video", "url", *ML100K_GENRES]
        m = read_csv_checked(items_path, sep="|", header=None, names=cols, dtype=str, encoding="latin-1")
        flags = m[list(ML100K_GENRES)].to_numpy() == "1"
        genres = ["|".join(g for g, f in zip(ML100K_GENRES, row) if f) for row in flags]
        raw.side = _movielens_side(m["item"], m["title"], genres, items_path, first_row=1)
    return raw


def read_s3rec(path: Path) -> RawData:
    """`path` is `<name>.txt`; attributes come from `<name>_item2attributes.json` beside it."""
    _require_file(path)
    users, items = [], []
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                ids = [int(p) for p in parts]
            except ValueError:
                raise InputError(f"{path}: row {lineno}: expected integer ids, got {line.strip()[:60]!r}") from None
            if len(ids) < 2:
                raise InputError(f"{path}: row {lineno}: a user id and at least one item are needed")
            users.extend([ids[0]] * (len(ids) - 1))
            items.extend(ids[1:])
    if not users:
        raise InputError(f"{path}: file has no sequences")
    n = len(users)
    raw = RawData(users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
                  times=np.arange(n, dtype=np.float64), source="s3rec")
    attr_path = path.with_name(path.stem + "_item2attributes.json")
    if attr_path.exists():
        try:
            table = json.loads(attr_path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{attr_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
            raise InputError(f"{attr_path}: expected an object {{item_id: [attribute_id, ...]}}")
        pairs = [(k, str(a)) for k, attrs in table.items() for a in attrs]
        keys, values = zip(*pairs) if pairs else ((), ())
        raw.side["attributes"] = _side_frame(list(keys), list(values), attr_path, first_row=1)
    return raw


def detect_format(path: Path) -> str:
    path = Path(path)
    if path.is_file():
        if path.suffix == ".txt":
            return "s3rec"
        if path.name == "train_ratings.csv":
            return "competition"
        raise InputError(f"{path}: cannot tell the format of this file; pass a folder or --format")
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    for name, fmt in (("train_ratings.csv", "competition"), ("ratings.csv", "ml-csv"),
                      ("ratings.dat", "ml-dat"), ("u.data", "ml-100k")):
        if (path / name).exists():
            return fmt
    txts = [p for p in path.glob("*.txt") if (p.parent / f"{p.stem}_item2attributes.json").exists()]
    if len(txts) == 1:
        return "s3rec"
    raise InputError(f"{path}: no train_ratings.csv, ratings.csv, ratings.dat, u.data or <name>.txt with "
                     f"<name>_item2attributes.json found; name the file or pass --format")


def read_raw(path: Path, fmt: str = "auto") -> RawData:
    path = Path(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "s3rec":
        if path.is_dir():
            txts = [p for p in path.glob("*.txt") if (p.parent / f"{p.stem}_item2attributes.json").exists()]
            if len(txts) != 1:
                raise InputError(f"{path}: expected exactly one <name>.txt with attributes; name the file")
            path = txts[0]
        return read_s3rec(path)
    folder = path.parent if path.is_file() else path
    return {"competition": read_competition, "ml-csv": read_ml_csv, "ml-dat": read_ml_dat,
            "ml-100k": read_ml_100k}[fmt](folder)

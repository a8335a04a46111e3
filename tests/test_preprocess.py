"""Preprocessing: every input layout, ordering and de-duplication rules, attributes, the hold-out,
clean one-line errors for bad input (01_preprocess.py and 05_evaluate.py), and atomic artifacts.

Every input here is a tiny hand-written file under tmp_path.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data import Dataset, _draw_earlier, build_dataset, dense_ids, distinct, order_and_dedupe, row_positions, split_holdout
from common.io import InputError, atomic_path, write_npz
from common.metrics import recall_at_k
from common.readers import RawData, int_column, read_raw, time_column
from common.submission import read_answers, read_ranked, submission_matrix
from conftest import assert_one_line_error, describe, leftover_tmp_files, run_scripts

MIN_TRAIN_LEFT = 3  # the documented rule: a held-out user keeps at least 3 training interactions

# ML-100k's genre flag order (u.genre), written out independently of the reader
ML100K_GENRE_ORDER = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                      "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                      "Romance", "Sci-Fi", "Thriller", "War", "Western"]


# ---------------------------------------------------------------- helpers

def write(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def view(out: Path):
    """A preprocessed folder in raw ids: (meta, sequences {user: [items]}, answers {user: [items]},
    attributes {item: {names}})."""
    ds = Dataset(out)
    seqs = {int(ds.user_raw[u]): [int(ds.item_raw[i]) for i in ds.sequence(u)] for u in range(ds.n_users)}
    answers = {}
    for u in range(ds.n_users):
        a = ds.ans_items[ds.ans_indptr[u]:ds.ans_indptr[u + 1]]
        if len(a):
            answers[int(ds.user_raw[u])] = [int(ds.item_raw[i]) for i in a]
    indptr, ids, names = ds.attributes()
    assert len(indptr) == ds.n_items + 2
    attrs = {int(ds.item_raw[i]): {names[a - 1] for a in ids[indptr[i]:indptr[i + 1]]}
             for i in range(1, ds.n_items + 1)}
    assert indptr[1] == 0, "padding item 0 must have no attributes"
    return ds.meta, seqs, answers, attrs


def build(raw_folder_or_file: Path, out: Path, **kw):
    raw = read_raw(raw_folder_or_file)
    kw.setdefault("holdout", False)
    build_dataset(raw, out, **kw)
    return raw, view(out)


# ---------------------------------------------------------------- competition layout

# File order matters: ties in time keep file order; repeated (user, item) pairs keep the first
# occurrence in (time, file) order.
COMPETITION_RATINGS = """user,item,time
8,9,100
5,500,30
11,20,10
11,7,5
5,7,30
11,500,10
11,20,50
42,7,1
5,20,40
8,8,50
5,7,45
8,9,10
"""
# expected, in raw ids:
#   user 11: 7@5, 20@10 (file row 3), 500@10 (row 6); 20@50 is a repeat      -> [7, 20, 500]
#   user 5 : 500@30 (row 2), 7@30 (row 5), 20@40; 7@45 is a repeat           -> [500, 7, 20]
#   user 42: a single interaction                                              -> [7]
#   user 8 : 9@10 (last row), 8@50; 9@100 (first row) is the later repeat     -> [9, 8]
EXPECTED_SEQS = {11: [7, 20, 500], 5: [500, 7, 20], 42: [7], 8: [9, 8]}


def make_competition(folder: Path) -> Path:
    write(folder / "train_ratings.csv", COMPETITION_RATINGS)
    write(folder / "genres.tsv", "item\tgenre\n7\tAction\n7\tComedy\n20\tDrama\n999\tHorror\n")
    write(folder / "years.tsv", "item\tyear\n7\t1995\n500\t1989\n8\t2003\n")
    write(folder / "directors.tsv", "item\tdirector\n9\tnm0000001\n")
    write(folder / "writers.tsv", "item\twriter\n20\tnm0000002\n12345\tnm0000003\n")
    write(folder / "titles.tsv", "item\ttitle\n7\tSeven (1995)\n")
    return folder


def test_competition_layout(tmp_path):
    raw, (meta, seqs, answers, attrs) = build(make_competition(tmp_path / "comp"), tmp_path / "out", holdout=True)
    assert raw.source == "competition"
    assert seqs == EXPECTED_SEQS
    assert answers == {}  # nobody has 5 + 5 + 3 interactions
    maps = np.load(tmp_path / "out" / "maps.npz")
    assert maps["item_raw"].tolist() == [-1, 7, 8, 9, 20, 500]  # 0 is padding, then raw ids ascending
    assert maps["user_raw"].tolist() == [5, 8, 11, 42]
    assert meta["n_users"] == 4 and meta["n_items"] == 5 and meta["n_interactions"] == 9
    assert meta["duplicates_dropped"] == 3
    assert attrs == {
        7: {"genre=Action", "genre=Comedy", "year=1990s"},
        8: {"year=2000s"},
        9: {"director=nm0000001"},
        20: {"genre=Drama", "writer=nm0000002"},
        500: {"year=1980s"},
    }
    assert meta["n_attributes"] == 8
    # rows for items 999 (genres) and 12345 (writers) never occur in the interactions
    dropped = {k: v for k, v in meta["side_rows_dropped"].items() if v}
    assert dropped == {"genres": 1, "writers": 1}


def test_dense_sequences_follow_time_then_file_order(tmp_path):
    """The dense arrays themselves: indptr per user in user_raw order, items in time order."""
    build(make_competition(tmp_path / "comp"), tmp_path / "out")
    ds = Dataset(tmp_path / "out")
    assert ds.indptr.tolist() == [0, 3, 5, 8, 9]  # users 5, 8, 11, 42
    assert ds.items.min() >= 1  # 0 is padding, never an interaction
    # dense ids: 7->1, 8->2, 9->3, 20->4, 500->5
    assert ds.items.tolist() == [5, 1, 4, 3, 2, 1, 4, 5, 1]


def test_single_interaction_user_is_kept_and_counted(tmp_path):
    _, (meta, seqs, answers, _) = build(make_competition(tmp_path / "comp"), tmp_path / "out", holdout=True,
                                        holdout_last=1, holdout_random=0)
    # with last=1, random=0 users need 1 + 0 + 3 = 4 interactions: nobody here is eligible
    assert seqs[42] == [7]
    assert 42 not in answers
    assert meta["single_interaction_users"] == 1


def test_unknown_side_items_counted_per_kind(tmp_path):
    folder = make_competition(tmp_path / "comp")
    write(folder / "directors.tsv", "item\tdirector\n9\tnm1\n70\tnm2\n71\tnm3\n72\tnm4\n")
    _, (meta, _, _, attrs) = build(folder, tmp_path / "out")
    assert meta["side_rows_dropped"]["directors"] == 3
    assert attrs[9] >= {"director=nm1"}
    assert not any(n in {"director=nm2", "director=nm3", "director=nm4"} for s in attrs.values() for n in s)


# ---------------------------------------------------------------- MovieLens layouts and S3-Rec

def test_ml_csv_layout(tmp_path):
    folder = tmp_path / "ml-csv"
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n"
                                  "1,10,4.0,964982703\n1,3,4.0,964981247\n2,20,3.5,1445714835\n2,10,5.0,1445714836\n")
    write(folder / "movies.csv", "movieId,title,genres\n"
                                 "3,Grumpier Old Men (1995),Comedy|Romance\n"
                                 '10,"GoldenEye, The (1995)",Action|Adventure|Thriller\n'
                                 "20,Some Film (1980),(no genres listed)\n"
                                 "99,Never Rated (2001),Drama|Horror\n")
    raw, (meta, seqs, _, attrs) = build(folder, tmp_path / "out")
    assert raw.source == "ml-csv"
    assert seqs == {1: [3, 10], 2: [20, 10]}  # by timestamp, not file order
    assert attrs[3] == {"genre=Comedy", "genre=Romance", "year=1990s"}
    assert attrs[10] == {"genre=Action", "genre=Adventure", "genre=Thriller", "year=1990s"}
    assert attrs[20] == {"year=1980s"}  # '(no genres listed)' is not a genre
    assert meta["side_rows_dropped"]["genres"] == 2 and meta["side_rows_dropped"]["years"] == 1  # movie 99


def test_ml_dat_layout(tmp_path):
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    write(folder / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                 "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n")
    raw, (_, seqs, _, attrs) = build(folder, tmp_path / "out")
    assert raw.source == "ml-dat"
    assert seqs == {1: [1193, 661], 2: [1193]}
    assert attrs[1193] == {"genre=Drama", "year=1970s"}
    assert attrs[661] == {"genre=Animation", "genre=Children's", "genre=Musical", "year=1990s"}


def _u_item_row(item: int, title: str, genres: list[str]) -> str:
    flags = ["1" if g in genres else "0" for g in ML100K_GENRE_ORDER]
    return "|".join([str(item), title, "01-Jan-1995", "", "http://example.org/x"] + flags) + "\n"


def test_ml_100k_layout(tmp_path):
    folder = tmp_path / "ml-100k"
    write(folder / "u.data", "196\t1\t3\t881250949\n196\t2\t4\t881250900\n186\t1\t5\t891717742\n")
    write(folder / "u.item", _u_item_row(1, "Toy Story (1995)", ["Animation", "Children's", "Comedy"])
          + _u_item_row(2, "GoldenEye (1995)", ["Action", "Adventure", "Thriller"]))
    raw, (_, seqs, _, attrs) = build(folder, tmp_path / "out")
    assert raw.source == "ml-100k"
    assert seqs == {186: [1], 196: [2, 1]}
    assert attrs[1] == {"genre=Animation", "genre=Children's", "genre=Comedy", "year=1990s"}
    assert attrs[2] == {"genre=Action", "genre=Adventure", "genre=Thriller", "year=1990s"}


def make_s3rec(folder: Path, attributes: str | None = None) -> Path:
    write(folder / "Beauty.txt", "1 3 5 7\n2 5 9\n\n")
    write(folder / "Beauty_item2attributes.json",
          attributes if attributes is not None else json.dumps({"3": [5, 8], "5": [5], "7": [], "77": [1]}))
    return folder


@pytest.mark.parametrize("by_file", [False, True], ids=["folder", "txt-file"])
def test_s3rec_layout(tmp_path, by_file):
    folder = make_s3rec(tmp_path / "s3")
    raw, (meta, seqs, _, attrs) = build(folder / "Beauty.txt" if by_file else folder, tmp_path / "out")
    assert raw.source == "s3rec"
    assert seqs == {1: [3, 5, 7], 2: [5, 9]}  # file order is the time order
    assert attrs == {3: {"attr=5", "attr=8"}, 5: {"attr=5"}, 7: set(), 9: set()}
    assert meta["side_rows_dropped"]["attributes"] == 1  # item 77


def test_explicit_format_overrides_detection(tmp_path):
    folder = make_competition(tmp_path / "comp")
    assert read_raw(folder, "competition").source == "competition"
    with pytest.raises(InputError, match="ratings.csv"):
        read_raw(folder, "ml-csv")  # no ratings.csv there: named in the error


# ---------------------------------------------------------------- hold-out

def holdout_mask_by_user(lengths, last, n_random, seed):
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    mask = split_holdout(indptr, last, n_random, seed)
    return [mask[indptr[u]:indptr[u + 1]] for u in range(len(lengths))]


def test_split_holdout_sizes_last_and_random():
    L, R = 5, 5
    need = L + R + MIN_TRAIN_LEFT  # 13
    lengths = [1, 2, need - 1, need, need + 1, 40, 200]
    for n, m in zip(lengths, holdout_mask_by_user(lengths, L, R, seed=0)):
        if n < need:
            assert not m.any(), f"user with {n} < {need} interactions must keep everything"
            continue
        assert m.sum() == L + R
        assert m[-L:].all(), "the last L interactions are answers"
        assert m[:-L].sum() == R, "exactly R answers among the earlier interactions"
        assert (~m).sum() >= MIN_TRAIN_LEFT


def test_split_holdout_without_random_part():
    lengths = [3, 4, 5, 9]
    for n, m in zip(lengths, holdout_mask_by_user(lengths, 1, 0, seed=0)):
        expected = np.zeros(n, bool)
        if n >= 1 + MIN_TRAIN_LEFT:
            expected[-1] = True
        assert m.tolist() == expected.tolist()


def test_split_holdout_seeds():
    lengths = [30] * 50
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    a = split_holdout(indptr, 5, 5, seed=0)
    b = split_holdout(indptr, 5, 5, seed=0)
    c = split_holdout(indptr, 5, 5, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.sum() == c.sum() == 50 * 10


def test_split_holdout_random_part_is_uniform_over_earlier_rows():
    # 3000 users of 20: each of the 15 earlier positions is drawn with probability 5/15 = 1/3,
    # i.e. ~1000 times (sd ~26); a biased draw (e.g. always the first or the latest rows) is far off.
    n_users, n, L, R = 3000, 20, 5, 5
    masks = np.stack(holdout_mask_by_user([n] * n_users, L, R, seed=3))
    counts = masks[:, :n - L].sum(axis=0)
    assert counts.sum() == n_users * R
    assert np.all(np.abs(counts - n_users * R / (n - L)) < 150), counts


@pytest.mark.parametrize("values", [
    [5, 3, 5, 0, 9, 3],  # small non-negative ids: the presence table
    [10**12, 7, 10**12, 3],  # ids far above the row count: np.unique
    [-4, 2, -4, 8],  # negative ids: np.unique
    ["b", "a", "b"],  # not integers: np.unique
])
def test_dense_ids_equal_np_unique(values):
    got, inverse = dense_ids(np.asarray(values))
    want, want_inverse = np.unique(np.asarray(values), return_inverse=True)
    assert got.tolist() == want.tolist() and got.dtype == want.dtype
    assert inverse.tolist() == want_inverse.tolist()


@pytest.mark.parametrize("values", [[5, 3, 5, 0, 9, 3], [10**12, 7, 10**12, -3], [4], []])
def test_distinct_equals_np_unique(values):
    want = np.unique(np.asarray(values, dtype=np.int64))
    got = distinct(np.asarray(values, dtype=np.int64))
    assert got.tolist() == want.tolist() and got.dtype == want.dtype


def lexsort_dedupe_reference(users, items, times):
    """The rule written plainly: order by (user, time, file order), keep each pair's first row."""
    order = np.lexsort((np.arange(len(users)), times, users))
    seen, keep = set(), []
    for row in order:
        pair = (users[row], items[row])
        keep.append(pair not in seen)
        seen.add(pair)
    keep = np.asarray(keep)
    return users[order][keep], items[order][keep], times[order][keep], int((~keep).sum())


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("repeats", [False, True])
def test_order_and_dedupe_matches_the_plain_rule(shuffled, repeats):
    rng = np.random.default_rng(4)
    n = 400
    users = np.sort(rng.integers(0, 20, n))
    times = rng.integers(0, 30, n).astype(np.float64)  # many ties: file order decides
    items = rng.integers(1, 60, n) if repeats else np.arange(1, n + 1)
    if not shuffled:  # already in (user, time) order: the one-pass path
        order = np.lexsort((times, users))
        users, items, times = users[order], items[order], times[order]
    else:
        perm = rng.permutation(n)
        users, items, times = users[perm], items[perm], times[perm]
    got = order_and_dedupe(users, items, times)
    want = lexsort_dedupe_reference(users, items, times)
    for g, w in zip(got[:3], want[:3]):
        assert g.tolist() == w.tolist()
    assert got[3] == want[3] and (got[3] > 0) == repeats


def test_draw_earlier_equals_the_lexsort_draw_even_with_tied_keys(monkeypatch):
    """The draw takes, per user, the candidates with the smallest random keys (ties by position)."""
    indptr = np.array([0, 12, 12, 30, 37])
    candidate = np.random.default_rng(1).random(37) < 0.7

    def reference(keys):
        keys = keys.copy()
        keys[~candidate] = 2.0
        user = np.repeat(np.arange(4), np.diff(indptr))
        order = np.lexsort((np.arange(37), keys, user))
        rank = np.empty(37, dtype=np.int64)
        rank[order] = np.arange(37) - indptr[user[order]]
        return (rank < 4) & (keys <= 1.0)

    draws = {"distinct": np.random.default_rng(7).random(37),
             "tied": np.round(np.random.default_rng(7).random(37), 1)}  # tied keys: the stable fallback
    for name, keys in draws.items():
        class Fixed:
            def random(self, n):
                return keys.copy()
        monkeypatch.setattr(np.random, "default_rng", lambda seed: Fixed())
        assert _draw_earlier(indptr, candidate, 4, 0).tolist() == reference(keys).tolist(), name


def random_raw(seed: int = 0, n_users: int = 40, n_items: int = 80) -> RawData:
    """Users 1000.. with 1..40 distinct items each, distinct times, rows shuffled in the file."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        n = int(rng.integers(1, 41))
        users += [1000 + u] * n
        items += (rng.choice(n_items, n, replace=False) * 3 + 7).tolist()
    users, items = np.asarray(users), np.asarray(items)
    times = rng.permutation(len(users)).astype(np.float64) * 60 + 1e9
    perm = rng.permutation(len(users))
    return RawData(users=users[perm], items=items[perm], times=times[perm], source="test")


def test_build_dataset_holdout(tmp_path):
    raw = random_raw()
    L, R, seed = 3, 4, 7
    s = build_dataset(raw, tmp_path / "a", holdout_last=L, holdout_random=R, seed=seed)
    meta, seqs, answers, _ = view(tmp_path / "a")

    by_user = {}
    for u, i, t in zip(raw.users, raw.items, raw.times):
        by_user.setdefault(int(u), []).append((t, int(i)))
    n_eligible = 0
    for u, rows in by_user.items():
        rows.sort()
        ans = answers.get(u, [])
        assert not set(ans) & set(seqs[u]), f"user {u}: an answer is also a training item"
        assert sorted(ans + seqs[u]) == sorted(i for _, i in rows), f"user {u}: rows lost or invented"
        assert seqs[u] == [i for _, i in rows if i not in ans], f"user {u}: training items not in time order"
        if len(rows) >= L + R + MIN_TRAIN_LEFT:
            n_eligible += 1
            assert len(ans) == L + R
            latest = {i for _, i in rows[-L:]}
            assert latest <= set(ans), f"user {u}: the {L} latest interactions must be answers"
        else:
            assert ans == []
    assert n_eligible > 5  # the case exercises both kinds of user
    assert meta["n_holdout"] == s.n_holdout == n_eligible * (L + R)
    assert meta["n_holdout_users"] == n_eligible
    assert meta["n_train"] + meta["n_holdout"] == meta["n_interactions"] == len(raw.users)
    assert meta["holdout"] == {"last": L, "random": R, "seed": seed, "cutoff": 0.0}

    # answers.csv is the same hold-out in raw ids
    csv = pd.read_csv(tmp_path / "a" / "answers.csv")
    assert list(csv.columns) == ["user", "item"]
    assert sorted(map(tuple, csv.to_numpy().tolist())) == sorted((u, i) for u, a in answers.items() for i in a)

    # same seed: same split; another seed: another one (same sizes)
    build_dataset(raw, tmp_path / "b", holdout_last=L, holdout_random=R, seed=seed)
    build_dataset(raw, tmp_path / "c", holdout_last=L, holdout_random=R, seed=seed + 1)
    a, b, c = (np.load(tmp_path / d / "holdout.npz") for d in "abc")
    assert np.array_equal(a["items"], b["items"]) and np.array_equal(a["indptr"], b["indptr"])
    assert np.array_equal(a["indptr"], c["indptr"])
    assert not np.array_equal(a["items"], c["items"])


def test_build_dataset_without_holdout(tmp_path):
    raw = random_raw()
    build_dataset(raw, tmp_path / "o", holdout=False)
    meta, seqs, answers, _ = view(tmp_path / "o")
    assert answers == {}
    assert meta["holdout"] is None and meta["n_holdout"] == 0
    assert meta["n_train"] == len(raw.users)
    assert len(pd.read_csv(tmp_path / "o" / "answers.csv")) == 0


# ---------------------------------------------------------------- library errors

def without_base(text: str, base: Path) -> str:
    """`text` with the temporary folder replaced, so that fragments cannot match the test's own folder names."""
    return text.replace(str(base), "<tmp>")


def one_line_input_error(excinfo, base: Path, *fragments):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    short = without_base(msg, base)
    for f in fragments:
        assert re.search(f, short), f"{f!r} not in {short!r}"
    return msg


@pytest.mark.parametrize("case", ["missing", "empty", "header_only", "missing_column", "non_integer",
                                  "float_id", "nan_time", "side_header", "side_one_column", "side_bad_id"])
def test_reader_errors(tmp_path, case):
    folder = make_competition(tmp_path / "comp")
    ratings = folder / "train_ratings.csv"
    expect = [r"train_ratings\.csv"]
    if case == "missing":
        ratings.unlink()
        expect.append("not found")
    elif case == "empty":
        ratings.write_text("")
        expect.append("empty")
    elif case == "header_only":
        ratings.write_text("user,item,time\n")
        expect.append("no data|empty")
    elif case == "missing_column":
        ratings.write_text("user,item,timestamp\n1,2,3\n")
        expect.append(r"\btime\b")
    elif case == "non_integer":
        ratings.write_text("user,item,time\n1,2,3\n1,abc,4\n")
        expect += [r"\brow 3\b", r"\bitem\b", "abc"]
    elif case == "float_id":
        ratings.write_text("user,item,time\n1,2,3\n1.5,3,4\n")
        expect += [r"\brow 3\b", r"\buser\b"]
    elif case == "nan_time":
        ratings.write_text("user,item,time\n1,2,3\n1,3,4\n1,4,\n")
        expect += [r"\brow 4\b", r"\btime\b"]
    elif case == "side_header":
        write(folder / "genres.tsv", "7\tAction\n20\tDrama\n")
        expect = [r"genres\.tsv", "header"]
    elif case == "side_one_column":
        write(folder / "genres.tsv", "item\n7\n")
        expect = [r"genres\.tsv"]
    elif case == "side_bad_id":
        write(folder / "years.tsv", "item\tyear\n7\t1995\nx7\t1990\n")
        expect = [r"years\.tsv", r"\brow 3\b", r"\bitem\b"]
    with pytest.raises(InputError) as e:
        read_raw(folder, "competition")
    one_line_input_error(e, tmp_path, *expect)


def test_detect_and_movielens_errors(tmp_path):
    with pytest.raises(InputError) as e:
        read_raw(tmp_path / "no_input")
    one_line_input_error(e, tmp_path, "no_input", "no such")
    write(tmp_path / "unknown" / "readme.md", "nothing to read\n")
    with pytest.raises(InputError) as e:
        read_raw(tmp_path / "unknown")
    one_line_input_error(e, tmp_path, "unknown", r"ratings\.csv")
    write(tmp_path / "ml" / "ratings.csv", "userId,movieId,rating,timestamp\nu1,10,4.0,5\n")
    with pytest.raises(InputError) as e:
        read_raw(tmp_path / "ml")
    one_line_input_error(e, tmp_path, r"ratings\.csv", r"\brow 2\b", r"\buserId\b")
    write(tmp_path / "ml" / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n")
    write(tmp_path / "ml" / "movies.csv", "movieId,title\n10,Heat (1995)\n")
    with pytest.raises(InputError) as e:
        read_raw(tmp_path / "ml")
    one_line_input_error(e, tmp_path, r"movies\.csv", r"\bgenres\b")


def test_int_and_time_columns_name_the_first_bad_row():
    p = Path("x.csv")
    assert int_column(["3", "4", "5.0"], p, "item").tolist() == [3, 4, 5]
    with pytest.raises(InputError, match=r"x\.csv: row 4, column 'item'"):
        int_column(["3", "4", "4.5", "bad"], p, "item")
    assert time_column(["1", "2.5"], p, "time").tolist() == [1.0, 2.5]
    with pytest.raises(InputError, match=r"x\.csv: row 3, column 'time'"):
        time_column(["1", "inf"], p, "time")
    with pytest.raises(InputError, match=r"x\.csv: row 2, column 'time'"):
        time_column([np.nan, "1"], p, "time")


def test_ml_dat_ratings_error_names_file_line(tmp_path):
    # .dat files have no header: line N of the file is row N
    write(tmp_path / "d" / "ratings.dat", "1::1193::5::978300760\n1::zz::3::978302109\n")
    with pytest.raises(InputError) as e:
        read_raw(tmp_path / "d")
    one_line_input_error(e, tmp_path, r"ratings\.dat", r"\brow 2\b", r"\bitem\b")


def test_ml_dat_movies_error_names_file_line(tmp_path):
    # movies.dat has no header either: the bad id is on line 2 of the file
    write(tmp_path / "d" / "ratings.dat", "1::1193::5::978300760\n")
    write(tmp_path / "d" / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                         "xx::Bad (1990)::Drama\n")
    with pytest.raises(InputError) as e:
        read_raw(tmp_path / "d")
    one_line_input_error(e, tmp_path, r"movies\.dat", r"\bitem\b", r"\brow 2\b")


def test_ml_100k_item_error_names_file_line(tmp_path):
    write(tmp_path / "k" / "u.data", "196\t1\t3\t881250949\n")
    write(tmp_path / "k" / "u.item", _u_item_row(1, "Toy Story (1995)", ["Comedy"])
          + _u_item_row(1, "Bad (1995)", ["Drama"]).replace("1|Bad", "b1|Bad", 1))
    with pytest.raises(InputError) as e:
        read_raw(tmp_path / "k")
    one_line_input_error(e, tmp_path, r"u\.item", r"\bitem\b", r"\brow 2\b")


def test_s3rec_errors(tmp_path):
    folder = tmp_path / "s3"
    write(folder / "Beauty.txt", "1 3 5\n2 x 9\n")
    with pytest.raises(InputError) as e:
        read_raw(folder / "Beauty.txt")
    one_line_input_error(e, tmp_path, r"Beauty\.txt", r"\brow 2\b")
    write(folder / "Beauty.txt", "1 3 5\n2\n")
    with pytest.raises(InputError) as e:
        read_raw(folder / "Beauty.txt")
    one_line_input_error(e, tmp_path, r"Beauty\.txt", r"\brow 2\b")
    write(folder / "Beauty.txt", "1 3 5\n")
    write(folder / "Beauty_item2attributes.json", "{not json")
    with pytest.raises(InputError) as e:
        read_raw(folder)
    one_line_input_error(e, tmp_path, r"Beauty_item2attributes\.json")


def test_read_ranked_checks_header_and_ids(tmp_path):
    with pytest.raises(InputError) as e:
        read_ranked(write(tmp_path / "s.csv", "usr,item\n1,2\n"))
    one_line_input_error(e, tmp_path, r"s\.csv", "header")
    with pytest.raises(InputError) as e:
        read_ranked(write(tmp_path / "s.csv", "user,item\n1,2\n1,two\n"))
    one_line_input_error(e, tmp_path, r"s\.csv", r"\brow 3\b", r"\bitem\b")
    df = read_ranked(write(tmp_path / "s.csv", "user,item\n1,2\n1,3\n"))
    assert df["item"].tolist() == [2, 3]


# ---------------------------------------------------------------- a small dataset for submissions

N_SUB_ITEMS = 40
SUB_USERS = [101, 102, 103, 104]  # 16 interactions each: eligible for last 2 + random 2
SHORT_USER = 105  # 5 interactions: keeps everything, no answers


def make_submission_dataset(out: Path) -> Path:
    rng = np.random.default_rng(11)
    items_raw = 1000 + 10 * np.arange(N_SUB_ITEMS)
    users, items = [], []
    for u in SUB_USERS + [SHORT_USER]:
        n = 16 if u != SHORT_USER else 5
        users += [u] * n
        items += rng.choice(items_raw, n, replace=False).tolist()
    raw = RawData(users=np.asarray(users), items=np.asarray(items), source="test",
                  times=np.arange(len(users), dtype=np.float64))
    build_dataset(raw, out, holdout_last=2, holdout_random=2, seed=0)
    return out


def valid_submission(out: Path, k: int = 10) -> pd.DataFrame:
    """For every user: the first k items by raw id that are not in its training data."""
    ds = Dataset(out)
    rows = []
    for u in range(ds.n_users):
        seen = set(ds.sequence(u).tolist())
        picks = [i for i in range(1, ds.n_items + 1) if i not in seen][:k]
        rows += [(int(ds.user_raw[u]), int(ds.item_raw[i])) for i in picks]
    return pd.DataFrame(rows, columns=["user", "item"])


def train_items(out: Path, user: int) -> list[int]:
    ds = Dataset(out)
    u = int(np.searchsorted(ds.user_raw, user))
    return [int(ds.item_raw[i]) for i in ds.sequence(u)]


def test_submission_dataset_shape(tmp_path):
    """The dataset the submission checks run on is what they assume."""
    out = make_submission_dataset(tmp_path / "ds")
    meta, seqs, answers, _ = view(out)
    assert sorted(answers) == SUB_USERS and all(len(a) == 4 for a in answers.values())
    assert 16 <= meta["n_items"] <= N_SUB_ITEMS
    sub = valid_submission(out)
    assert (sub.groupby("user").size() == 10).all()


def test_submission_matrix_library_checks(tmp_path):
    out = make_submission_dataset(tmp_path / "ds")
    ds = Dataset(out)
    sub = valid_submission(out)
    p = tmp_path / "s.csv"
    users, mat = submission_matrix(sub, ds, p, 10, required_users=ds.eval_users())
    assert mat.shape == (ds.n_users, 10)
    bad = sub.copy()
    bad.loc[0, "item"] = train_items(out, int(bad.loc[0, "user"]))[0]
    with pytest.raises(InputError) as e:
        submission_matrix(bad, ds, p, 10)
    one_line_input_error(e, tmp_path, r"s\.csv", r"\brow 2\b")
    with pytest.raises(InputError) as e:
        submission_matrix(sub, ds, p, 5)
    one_line_input_error(e, tmp_path, r"s\.csv", r"expected 5")
    ans_indptr, ans_items = read_answers(out / "answers.csv", ds)
    assert np.array_equal(ans_indptr, ds.ans_indptr)
    assert sorted(ans_items.tolist()) == sorted(ds.ans_items.tolist())


# ---------------------------------------------------------------- 05_evaluate.py end to end

def _evaluate_cases(tmp: Path):
    out = make_submission_dataset(tmp / "ds")
    sub = valid_submission(out)
    answers = pd.read_csv(out / "answers.csv")
    cases = {}

    def sub_case(name, df, *fragments, extra=()):
        path = tmp / f"sub{len(cases)}.csv"
        df.to_csv(path, index=False)
        cases[name] = (["05_evaluate.py", path, "--data", out, *extra], [re.escape(path.name), *fragments])

    def ans_case(name, df, *fragments):
        path = tmp / f"answers{len(cases)}.csv"
        df.to_csv(path, index=False)
        cases[name] = (["05_evaluate.py", tmp / "sub_valid.csv", "--data", out, "--answers", path],
                       [re.escape(path.name), *fragments])

    sub_case("valid", sub)
    sub_case("wrong_header", sub.rename(columns={"user": "usr"}), "header")
    first_102 = sub.index[sub.user == 102][0]
    sub_case("wrong_k_rows", sub.drop(index=first_102), r"\b102\b")
    sub_case("wrong_k_flag", sub, r"\b5\b", extra=("--k", "5"))
    rep = sub.copy()
    rows_103 = rep.index[rep.user == 103]
    rep.loc[rows_103[-1], "item"] = rep.loc[rows_103[0], "item"]
    sub_case("repeated_item", rep, r"\b103\b", "repeat")
    seen = sub.copy()
    rows_101 = seen.index[seen.user == 101]
    seen_item = train_items(out, 101)[0]
    seen.loc[rows_101[4], "item"] = seen_item  # file row 2 + 4 = 6
    sub_case("seen_item", seen, r"\brow 6\b", rf"\b{seen_item}\b")
    unk = sub.copy()
    unk.loc[sub.index[sub.user == 104][2], "item"] = 999999
    sub_case("unknown_item", unk, r"\b999999\b", r"\bitem\b")
    unk_user = pd.concat([sub, pd.DataFrame({"user": [777] * 10, "item": sub.item[:10].to_numpy()})])
    sub_case("unknown_user", unk_user, r"\b777\b", r"\buser\b")
    sub_case("missing_user", sub[sub.user != 102], r"\b102\b", "missing")
    bad_ans = pd.concat([answers, pd.DataFrame({"user": [999], "item": [answers.item.iloc[0]]})])
    ans_case("answers_unknown_user", bad_ans, r"\b999\b", r"\buser\b")
    trained = train_items(out, 101)[1]
    ans_case("answers_seen_item", pd.concat([answers, pd.DataFrame({"user": [101], "item": [trained]})]),
             rf"\b{trained}\b", r"\b101\b")
    return out, cases


@pytest.fixture(scope="module")
def evaluate_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    out, cases = _evaluate_cases(tmp)
    results = run_scripts(*(argv for argv, _ in cases.values()))
    return out, {name: (p, frags, tmp) for (name, (_, frags)), p in zip(cases.items(), results)}


def test_evaluate_accepts_valid_submission_and_scores_it(evaluate_runs):
    out, runs = evaluate_runs
    p, _, _ = runs["valid"]
    assert p.returncode == 0, describe(p)
    scores = json.loads(p.stdout.strip().splitlines()[-1])
    # recompute Recall@10 here from the files
    ds = Dataset(out)
    sub = pd.read_csv(p.args[2])
    ev = ds.eval_users()
    topk = np.stack([np.searchsorted(ds.item_raw[1:], sub.item[sub.user == ds.user_raw[u]].to_numpy()) + 1
                     for u in ev])
    expected = recall_at_k(topk, ds.answers_padded(ev), 10)
    assert scores["recall@10"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("case", ["wrong_header", "wrong_k_rows", "wrong_k_flag", "repeated_item", "seen_item",
                                  "unknown_item", "unknown_user", "missing_user", "answers_unknown_user",
                                  "answers_seen_item"])
def test_evaluate_rejects_bad_input_in_one_line(evaluate_runs, case):
    _, runs = evaluate_runs
    p, fragments, tmp = runs[case]
    line = without_base(assert_one_line_error(p), tmp)
    for f in fragments:
        assert re.search(f, line), f"{f!r} not in {line!r}"


# ---------------------------------------------------------------- 01_preprocess.py end to end

def _preprocess_cases(tmp: Path):
    """name -> (argv, regexes the error line must contain, out folder); rc 0 expected where regexes is None."""
    cases = {}

    def case(name, make, fragments, *extra):
        folder = tmp / f"case{len(cases)}"  # neutral names: fragments must match the message, not the path
        src = make(folder / "in")
        out = folder / "out"
        cases[name] = (["01_preprocess.py", "--input", src, "--out", out, *extra], fragments, out)

    def ratings(text):
        def make(folder):
            make_competition(folder)
            (folder / "train_ratings.csv").write_text(text)
            return folder
        return make

    def side(kind, text):
        def make(folder):
            make_competition(folder)
            write(folder / f"{kind}.tsv", text)
            return folder
        return make

    def missing_ratings(folder):
        make_competition(folder)
        (folder / "train_ratings.csv").unlink()
        return folder

    def long_users(folder):  # 20 users x 20 interactions: everyone is eligible for 5 + 5
        rows = [f"{u},{(u * 7 + j * 3) % 50 + 1},{j}" for u in range(1, 21) for j in range(20)]
        write(folder / "train_ratings.csv", "user,item,time\n" + "\n".join(rows) + "\n")
        return folder

    def s3rec_json_list(folder):
        return make_s3rec(folder, attributes="[[5, 8], [5]]")

    case("missing_file", missing_ratings, [r"train_ratings\.csv", "not found"], "--format", "competition")
    case("missing_column", ratings("user,item,timestamp\n1,2,3\n"), [r"train_ratings\.csv", "column", r"\btime\b"])
    case("non_integer_id", ratings("user,item,time\n1,2,3\n1,abc,4\n"),
         [r"train_ratings\.csv", r"\brow 3\b", r"\bitem\b"])
    case("nan_time", ratings("user,item,time\n1,2,3\n1,3,4\n1,4,\n"),
         [r"train_ratings\.csv", r"\brow 4\b", r"\btime\b"])
    case("empty_file", ratings(""), [r"train_ratings\.csv", "empty"])
    case("side_no_header", side("genres", "7\tAction\n20\tDrama\n"), [r"genres\.tsv", "header"])
    case("s3rec_attributes_not_an_object", s3rec_json_list, [r"Beauty_item2attributes\.json"])
    case("no_holdout", long_users, None, "--no-holdout")
    return cases


@pytest.fixture(scope="module")
def preprocess_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preprocess")
    cases = _preprocess_cases(tmp)
    # a failing run must leave an earlier, complete output untouched
    nan_out = cases["nan_time"][2]
    build_dataset(read_raw(make_competition(tmp / "earlier")), nan_out)
    before = {p.name: p.read_bytes() for p in nan_out.iterdir()}
    results = run_scripts(*(argv for argv, _, _ in cases.values()))
    runs = {name: (p, frags, out) for (name, (_, frags, out)), p in zip(cases.items(), results)}
    return runs, before, tmp


ERROR_CASES = ["missing_file", "missing_column", "non_integer_id", "nan_time", "empty_file", "side_no_header",
               "s3rec_attributes_not_an_object"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_preprocess_rejects_bad_input_in_one_line(preprocess_runs, case):
    runs, _, tmp = preprocess_runs
    p, fragments, out = runs[case]
    line = without_base(assert_one_line_error(p), tmp)
    for f in fragments:
        assert re.search(f, line), f"{f!r} not in {line!r}"
    assert leftover_tmp_files(out) == []


def test_failed_preprocess_leaves_earlier_output_intact(preprocess_runs):
    runs, before, _ = preprocess_runs
    p, _, out = runs["nan_time"]
    assert p.returncode == 2, describe(p)
    assert leftover_tmp_files(out) == []
    assert {q.name: q.read_bytes() for q in out.iterdir()} == before


def test_preprocess_script_no_holdout(preprocess_runs, tmp_path):
    runs, _, _ = preprocess_runs
    p, _, out = runs["no_holdout"]
    assert p.returncode == 0, describe(p)
    meta, seqs, answers, _ = view(out)
    assert answers == {} and meta["n_holdout"] == 0 and meta["holdout"] is None
    assert len(pd.read_csv(out / "answers.csv")) == 0
    assert len(np.load(out / "holdout.npz")["items"]) == 0
    assert len(seqs) == 20 and all(len(s) == 20 for s in seqs.values())
    assert leftover_tmp_files(out) == []
    assert json.loads((out / "preprocess_config.json").read_text())["holdout"] is False
    # control: the same input with the default hold-out does hold out 5 + 5 per user
    src = Path(p.args[p.args.index("--input") + 1])
    build_dataset(read_raw(src), tmp_path / "ho", holdout_last=5, holdout_random=5, seed=0)
    meta_ho, _, answers_ho, _ = view(tmp_path / "ho")
    assert meta_ho["n_holdout"] == 200 and all(len(a) == 10 for a in answers_ho.values())


# ---------------------------------------------------------------- atomic writes

def test_atomic_path_keeps_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            Path(tmp).write_text("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert leftover_tmp_files(tmp_path) == []


def test_failed_write_leaves_no_temporary_file(tmp_path):
    (tmp_path / "x.npz").mkdir()  # the rename onto a folder fails
    with pytest.raises(OSError):
        write_npz(tmp_path / "x.npz", a=np.arange(3))
    assert leftover_tmp_files(tmp_path) == []


def test_row_positions_by_hand():
    indptr = np.array([0, 2, 2, 5])  # rows of 2, 0 and 3 entries
    flat, count = row_positions(indptr, np.array([2, 1, 0, 2]))
    assert count.tolist() == [3, 0, 2, 3]
    assert flat.tolist() == [2, 3, 4, 0, 1, 2, 3, 4]

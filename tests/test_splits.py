"""Nested local evaluation: validation answers carved out of the training part, the global-time hold-out,
the data fingerprint, and the recipe file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data import Dataset, build_dataset, csr_offsets, split_holdout
from common.io import InputError, staged_files, write_npz
from common.readers import RawData
from common.recipe import load_recipe, settings_flags
from common.submission import check_source, data_source, source_path, write_ranked
from conftest import ROOT, assert_one_line_error, run_script


def raw_from_rows(rows: list[tuple[int, int, float]]) -> RawData:
    users, items, times = (np.array(c) for c in zip(*rows))
    return RawData(users=users.astype(np.int64), items=items.astype(np.int64), times=times.astype(np.float64),
                   source="hand")


def sequences_raw(ds: Dataset) -> dict:
    return {int(ds.user_raw[u]): [int(ds.item_raw[i]) for i in ds.sequence(u)] for u in range(ds.n_users)}


def answers_raw(ds: Dataset) -> dict:
    out = {}
    for u in range(ds.n_users):
        a = ds.ans_items[ds.ans_indptr[u]:ds.ans_indptr[u + 1]]
        out[int(ds.user_raw[u])] = sorted(int(ds.item_raw[i]) for i in a)
    return out


# ---------------------------------------------------------------- the global-time cutoff

def test_cutoff_by_hand():
    # user 0: times 1..8; user 1: times 1..4 (nothing after the cut); user 2: times 6..9 (too little before it)
    times = np.array([1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 6, 7, 8, 9], dtype=np.float64)
    indptr = csr_offsets(np.array([8, 4, 4]))
    q = 0.5  # the median of the 16 times is 4.5: rows after it are answers
    mask = split_holdout(indptr, last=5, n_random=1, seed=0, times=times, cutoff=q)
    user0, user1, user2 = mask[:8], mask[8:12], mask[12:]
    assert user0[4:].all(), "user 0: every row after the cut is an answer"
    assert user0[:4].sum() == 1, "user 0: plus one random earlier row"
    assert user1.sum() == 1, "user 1 has nothing after the cut: one random answer only"
    assert not user2.any(), "user 2 keeps fewer than random + 3 rows before the cut: no answers"
    no_random = split_holdout(indptr, last=5, n_random=0, seed=0, times=times, cutoff=q)
    assert no_random.tolist() == [False] * 4 + [True] * 4 + [False] * 8


def test_cutoff_random_part_is_uniform():
    times = np.arange(10, dtype=np.float64)  # one user; the cut at q = 0.7 leaves rows 0..6 before it
    indptr = np.array([0, 10])
    counts = np.zeros(10)
    for seed in range(3000):
        m = split_holdout(indptr, 0, 2, seed, times, 0.7)
        assert m[7:].all() and m[:7].sum() == 2
        counts += m
    assert np.allclose(counts[:7] / 3000, 2 / 7, atol=0.03)


# ---------------------------------------------------------------- validation carved out of the training part

def random_raw(n_users=40, seed=0) -> RawData:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(5, 60))
        items = rng.choice(500, size=n, replace=False) + 1
        rows += [(u + 100, int(i), float(t)) for t, i in zip(np.sort(rng.random(n) * 1e6), items)]
    return raw_from_rows(rows)


@pytest.mark.parametrize("cutoff", [0.0, 0.8])
def test_validation_is_the_same_procedure_on_the_training_part(tmp_path, cutoff):
    raw = random_raw()
    build_dataset(raw, tmp_path / "v", 3, 2, seed=4, validation=True, cutoff=cutoff)
    build_dataset(raw, tmp_path / "t", 3, 2, seed=4, validation=False, cutoff=cutoff)
    test, valid, plain = Dataset(tmp_path / "v"), Dataset(tmp_path / "v", "valid"), Dataset(tmp_path / "t")
    assert test.has_validation and not plain.has_validation
    # the test split is the one built without validation: validation only cuts into the training part
    assert answers_raw(test) == answers_raw(plain) and sequences_raw(test) == sequences_raw(plain)
    seq_t, seq_v, ans_t, ans_v = sequences_raw(test), sequences_raw(valid), answers_raw(test), answers_raw(valid)
    assert sum(map(len, ans_v.values())) > 0
    for u in seq_t:
        assert not set(ans_v[u]) & set(ans_t[u]), "a validation answer is also a test answer"
        assert not set(ans_v[u]) & set(seq_v[u]), "a validation answer is in the validation training part"
        assert seq_v[u] == [i for i in seq_t[u] if i not in ans_v[u]], "validation must cut the training part only"
    # the validation answers are the hold-out rule applied to the training part (another draw)
    tr = Dataset(tmp_path / "t")
    rows = [(int(tr.user_raw[u]), i, float(t)) for u in range(tr.n_users)
            for t, i in enumerate(seq_t[int(tr.user_raw[u])])]
    if cutoff == 0.0:
        again = build_dataset(raw_from_rows(rows), tmp_path / "again", 3, 2, seed=4)
        assert again.n_holdout == sum(map(len, ans_v.values()))


def test_leave_last_out_validation_is_the_second_to_last_item(tmp_path):
    rows = [(u, 10 * u + j, float(j)) for u in range(1, 6) for j in range(1, 4 + u)]
    build_dataset(raw_from_rows(rows), tmp_path / "b", 1, 0, validation=True)
    test, valid = Dataset(tmp_path / "b"), Dataset(tmp_path / "b", "valid")
    full = {u: [10 * u + j for j in range(1, 4 + u)] for u in range(1, 6)}
    for u, items in full.items():
        if len(items) >= 1 + 3:
            assert answers_raw(test)[u] == [items[-1]], "test = the last item"
        if len(items) >= 2 + 3:
            assert answers_raw(valid)[u] == [items[-2]], "validation = the second-to-last item"
            assert sequences_raw(valid)[u] == items[:-2]


def test_dataset_views_and_labels(tmp_path):
    build_dataset(random_raw(), tmp_path / "d", 3, 2, validation=True)
    v = Dataset(tmp_path / "d", "valid")
    assert v.split == "valid" and v.answers_label == "validation"
    assert len(v.indptr) == v.n_users + 1 and v.indptr[-1] == len(v.items)
    build_dataset(random_raw(), tmp_path / "n", 3, 2, validation=False)
    with pytest.raises(InputError, match="without a validation split"):
        Dataset(tmp_path / "n", "valid")


# ---------------------------------------------------------------- fingerprint

def test_fingerprint_changes_with_the_answers_and_catches_mixed_files(tmp_path):
    raw = random_raw()
    build_dataset(raw, tmp_path / "a", 3, 2, seed=0, validation=True)
    build_dataset(raw, tmp_path / "b", 3, 2, seed=1, validation=True)
    build_dataset(raw, tmp_path / "c", 3, 2, seed=0, validation=True)
    fa, fb, fc = (Dataset(tmp_path / x).fingerprint for x in "abc")
    assert fa == fc, "same data, same fingerprint"
    assert fa != fb, "another hold-out draw is other data"
    # a file from another preprocessing run next to this one's meta.json is refused
    ho = np.load(tmp_path / "b" / "holdout.npz")
    write_npz(tmp_path / "a" / "holdout.npz", indptr=ho["indptr"], items=ho["items"])
    with pytest.raises(InputError, match="do not match the fingerprint"):
        Dataset(tmp_path / "a")


def test_a_written_file_names_its_data_and_is_refused_on_other_data(tmp_path):
    raw = random_raw()
    build_dataset(raw, tmp_path / "a", 3, 2, seed=0, validation=True)
    build_dataset(raw, tmp_path / "b", 3, 2, seed=1, validation=True)
    a, a_valid, b = Dataset(tmp_path / "a"), Dataset(tmp_path / "a", "valid"), Dataset(tmp_path / "b")
    path = tmp_path / "run.top2.csv"
    write_ranked(path, a.user_raw, a.item_raw[np.ones((a.n_users, 2), dtype=np.int64)],
                 np.ones((a.n_users, 2)), source=data_source(a, "test"))
    assert source_path(path).exists()
    check_source(path, a)  # its own data: accepted
    with pytest.raises(InputError, match="not the valid split"):
        check_source(path, a_valid)
    with pytest.raises(InputError, match=f"made on the test split of data {a.fingerprint}"):
        check_source(path, b)
    path.write_text(path.read_text().replace(",1\n", ",2\n", 1))
    with pytest.raises(InputError, match="changed since test wrote it"):
        check_source(path, a)
    source_path(path).unlink()
    check_source(path, b)  # a file of the user's own: nothing to compare


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    (tmp_path / "a.csv").write_text("old\n")
    with pytest.raises(OSError):
        with staged_files() as stage:
            stage(tmp_path / "a.csv").write_text("new\n")
            stage(tmp_path / "b.csv").write_text("new\n")
            raise OSError("disk full")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.csv"] and (tmp_path / "a.csv").read_text() == "old\n"
    with staged_files() as stage:
        stage(tmp_path / "a.csv").write_text("new\n")
        stage(tmp_path / "b.csv").write_text("new\n")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.csv", "b.csv"]
    assert (tmp_path / "a.csv").read_text() == "new\n"


def test_inference_refuses_a_run_made_on_another_split(tmp_path):
    """The stale-run leak: a run trained on split 0 must not score split 1 of the same name."""
    raw = tmp_path / "raw"
    p = run_script("00_make_demo.py", "--out", raw)
    assert p.returncode == 0
    ds = tmp_path / "ds"
    assert run_script("01_preprocess.py", "--input", raw, "--out", ds, "--seed", "0").returncode == 0
    p = run_script("02_train.py", "--data", ds, "--model", "pop", "--run-name", "old")
    assert p.returncode == 0, p.stderr
    assert run_script("01_preprocess.py", "--input", raw, "--out", ds, "--seed", "1").returncode == 0
    p = run_script("03_inference.py", ds / "runs" / "old" / "checkpoint.pt", "--out-dir", tmp_path / "subs")
    assert_one_line_error(p, "checkpoint.pt", "fingerprint", "train again")
    assert not (tmp_path / "subs").exists()


# ---------------------------------------------------------------- 01_preprocess flags

def test_preprocess_refuses_bad_holdout_flags(tmp_path):
    for flags, frag in [(["--holdout-last", "-1"], "--holdout-last"), (["--holdout-cutoff", "1.5"], "--holdout-cutoff"),
                        (["--holdout-last", "0", "--holdout-random", "0"], "nothing to hold out"),
                        (["--carves", "7"], "--carves"),
                        (["--carves", "4", "--shifted-carves", "3"], "at most 6"),
                        (["--shifted-carves", "1", "--holdout-cutoff", "0.9"], "--shifted-carves"),
                        (["--shifted-carves", "1", "--holdout-last", "0"], "--holdout-last > 0"),
                        (["--carves", "2", "--holdout-random", "0"], "--holdout-random > 0"),
                        (["--carves", "2", "--no-validation"], "--validation")]:
        p = run_script("01_preprocess.py", "--input", ROOT / "missing", "--out", tmp_path / "x", *flags)
        assert_one_line_error(p, frag)
        assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- recipe files

GOOD = '''
epoch_scale = 1.5
weight_grid = [0, 0.5, 1]
candidates = 20

[[member]]
name = "ease"
args = "--model ease"

[member.grid]  # the same as grid = { ... }
l2 = [50.0, 200.0]
window = [0, 20]
pre_ln = [true]

[[member]]
name = "seq"
args = "--loss ce --epochs 3"
seeds = [1, 2]
weight = 0.5
'''


def test_recipe_parses(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(GOOD)
    r = load_recipe(path)
    assert [m.name for m in r.members] == ["ease", "seq"]
    ease, seq = r.members
    assert ease.weight == "tune" and ease.seeds == [42] and seq.weight == 0.5 and seq.seeds == [1, 2]
    assert seq.args == ["--loss", "ce", "--epochs", "3"]
    assert ease.grid_points() == [{"l2": 50.0, "window": 0, "pre_ln": True}, {"l2": 50.0, "window": 20, "pre_ln": True},
                                  {"l2": 200.0, "window": 0, "pre_ln": True}, {"l2": 200.0, "window": 20, "pre_ln": True}]
    assert seq.grid_points() == [{}]
    assert settings_flags({"l2": 50.0, "pre_ln": True, "tied": False}) == ["--l2", "50.0", "--pre-ln", "--no-tied"]
    # refit epochs: epochs trained up to the best 0-based epoch, times epoch_scale, at least 1
    assert (r.refit_epochs(0), r.refit_epochs(3), r.refit_epochs(9)) == (2, 6, 15)
    assert r.weight_grid == [0.0, 0.5, 1.0] and r.candidates == 20


@pytest.mark.parametrize("text, fragment", [
    ("k = 10\n", "needs at least one [[member]]"),
    ("kk = 1\n[[member]]\nname = 'a'\n", "unknown key(s) kk"),
    ("[[member]]\nname = 'a b'\n", "'name' must be"),
    ("[[member]]\nname = 'a'\nweight = -1\n", "'weight' must be"),
    ("[[member]]\nname = 'a'\nweight = 'auto'\n", "'weight' must be"),
    ("[[member]]\nname = 'a'\nseeds = []\n", "'seeds' must be"),
    ("[[member]]\nname = 'a'\nseeds = [1, 1]\n", "'seeds' must be"),
    ("[[member]]\nname = 'a'\nlr = 1\n", "unknown key(s) lr"),
    ("[[member]]\nname = 'a'\ngrid = { l2 = [] }\n", "grid 'l2'"),
    ("[[member]]\nname = 'a'\nargs = '--l2 5'\ngrid = { l2 = [1.0] }\n", "both in 'args' and in the grid"),
    ("[[member]]\nname = 'a'\n[[member]]\nname = 'a'\n", "distinct"),
    ("[[member]]\nname = 'a'\nweight = 0\n", "fixed weights are all 0"),
    ("candidates = 5\n[[member]]\nname = 'a'\n", "candidates"),
    ("epoch_scale = 0\n[[member]]\nname = 'a'\n", "epoch_scale"),
    ("[[member]\n", "not valid TOML"),
    ("[[member]]\nname = 'a'\n[rerank]\nmax_leaf_nodes = 1\n", "rerank.max_leaf_nodes must be >= 2, got 1"),
    ("[[member]]\nname = 'a'\n[rerank]\nrecent_share = 1.5\n", "rerank.recent_share must be <= 1"),
    ("[[member]]\nname = 'a'\n[rerank]\nmax_iter = 2.5\n", "rerank.max_iter: must be an integer"),
    ("[[member]]\nname = 'a'\n[rerank]\ntrees = 3\n", "rerank.trees: unknown key"),
    ("[[member]]\nname = 'a'\n[rerank]\nattributes = 1\n", "rerank.attributes: must be true or false"),
    # flags the pipeline sets itself
    ("[[member]]\nname = 'a'\nargs = '--seed 3'\n", "'args' sets --seed, which the pipeline sets itself"),
    ("[[member]]\nname = 'a'\nargs = '--select=last'\n", "'args' sets --select, which the pipeline sets itself"),
    ("[[member]]\nname = 'a'\ngrid = { split = ['test'] }\n", "grid 'split' is set by the pipeline"),
    ("train_args = '--k 20'\n[[member]]\nname = 'a'\n", "sets --k, which the pipeline sets itself"),
    ("[[member]]\nname = 'a'\nargs = '--l2=5'\ngrid = { l2 = [1.0] }\n", "both in 'args' and in the grid"),
])
def test_recipe_errors_name_the_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and fragment in msg, msg


def test_shipped_recipes_parse():
    for path in sorted((ROOT / "recipes").glob("*.toml")):
        r = load_recipe(path)
        assert r.members, path
    assert {p.name for p in (ROOT / "recipes").glob("*.toml")} >= {"default.toml", "gpu.toml", "demo.toml"}


def test_the_gpu_members_recipe_makes_the_runs_that_gpu_rerank_reuses():
    """bench/gpu_members.sh trains recipes/gpu-rerank-seq.toml on a GPU machine; recipes/gpu-rerank.toml reuses
    those runs only if every run key agrees: member names, flags, seeds, k, candidates, train args, carves."""
    seq, full = load_recipe(ROOT / "recipes" / "gpu-rerank-seq.toml"), load_recipe(ROOT / "recipes" / "gpu-rerank.toml")
    by_name = {m.name: m for m in full.members}
    for m in seq.members:
        assert m.name in by_name and (m.args, m.seeds, m.grid) == (by_name[m.name].args, by_name[m.name].seeds,
                                                                  by_name[m.name].grid), m.name
    assert (seq.k, seq.candidates, seq.train_args, seq.blend) == (full.k, full.candidates, full.train_args, full.blend)
    assert (seq.rerank.carves, seq.rerank.shifted_carves) == (full.rerank.carves, full.rerank.shifted_carves)


def test_meta_records_the_split_shape(tmp_path):
    build_dataset(random_raw(), tmp_path / "m", 3, 2, seed=5, validation=True, cutoff=0.8)
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["holdout"] == {"last": 0, "random": 2, "seed": 5, "cutoff": 0.8} and meta["validation"] is True
    assert meta["n_valid"] > 0 and len(meta["fingerprint"]) == 16
    assert Path(tmp_path / "m" / "valid_answers.csv").read_text().startswith("user,item\n")


def test_cutoff_needs_timestamps(tmp_path):
    src = tmp_path / "Toy.txt"
    src.write_text("".join(f"{u} " + " ".join(str(i) for i in range(1, 15)) + "\n" for u in range(1, 4)))
    p = run_script("01_preprocess.py", "--input", src, "--out", tmp_path / "o", "--holdout-cutoff", "0.8")
    assert_one_line_error(p, "Toy.txt", "no timestamps", "--holdout-cutoff")
    assert not (tmp_path / "o").exists()


def test_a_run_that_read_the_validation_answers_cannot_score_them(tmp_path):
    raw = tmp_path / "raw"
    assert run_script("00_make_demo.py", "--out", raw).returncode == 0
    ds = tmp_path / "ds"
    assert run_script("01_preprocess.py", "--input", raw, "--out", ds).returncode == 0
    p = run_script("02_train.py", "--data", ds, "--model", "pop", "--split", "test")
    assert p.returncode == 0, p.stderr
    run = ds / "runs" / "raw-pop-testsplit-s42"  # named apart from the default validation run
    p = run_script("03_inference.py", run / "checkpoint.pt", "--split", "valid", "--out-dir", tmp_path / "subs")
    assert_one_line_error(p, "checkpoint.pt", "validation answers")
    p = run_script("03_inference.py", run / "checkpoint.pt", "--out-dir", tmp_path / "subs")
    assert p.returncode == 0 and '"answers": "test"' in p.stdout

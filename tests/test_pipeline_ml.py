"""End to end on real MovieLens latest-small (01 -> 02 pop -> 03 -> 05), and the synthetic demo generator."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data import Dataset
from common.metrics import recall_at_k
from common.readers import read_raw
from conftest import describe, leftover_tmp_files, run_script, run_scripts

K = 10


@pytest.fixture(scope="module")
def ml_small(shared_data) -> Path:
    folder = shared_data / "ml-latest-small"
    if not (folder / "ratings.csv").exists():
        pytest.skip(f"{folder} not found")
    return folder


@pytest.fixture(scope="module")
def pop_pipeline(ml_small, tmp_path_factory):
    """Preprocess with 5 last + 5 random answers, fit pop, write its submission, evaluate it."""
    tmp = tmp_path_factory.mktemp("ml")
    data = tmp / "ml"
    p = run_script("01_preprocess.py", "--input", ml_small, "--out", data,
                   "--holdout-last", "5", "--holdout-random", "5", "--seed", "0")
    assert p.returncode == 0, describe(p)
    p = run_script("02_train.py", "--model", "pop", "--data", data, "--no-progress")
    assert p.returncode == 0, describe(p)
    ckpts = sorted((data / "runs").glob("*/checkpoint.pt"))
    assert len(ckpts) == 1, ckpts
    subs = tmp / "subs"
    p = run_script("03_inference.py", ckpts[0], "--out-dir", subs, "--candidates", "0")
    assert p.returncode == 0, describe(p)
    sub_path = subs / f"{ckpts[0].parent.name}.csv"
    assert sub_path.exists(), describe(p)
    p = run_script("05_evaluate.py", sub_path, "--data", data, "--k", str(K))
    assert p.returncode == 0, describe(p)
    json_lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1, describe(p)
    return data, sub_path, json.loads(json_lines[0])


def test_holdout_sizes_on_movielens(pop_pipeline):
    data, _, _ = pop_pipeline
    meta = json.loads((data / "meta.json").read_text())
    # every one of the 610 users has >= 20 ratings, so every one gives 5 + 5 answers
    assert meta["n_users"] == 610
    assert meta["n_holdout"] == 6100
    assert meta["n_holdout_users"] == 610
    assert meta["n_train"] + meta["n_holdout"] == meta["n_interactions"]
    assert leftover_tmp_files(data) == []


def test_submission_is_valid_for_every_user(pop_pipeline):
    data, sub_path, _ = pop_pipeline
    ds = Dataset(data)
    sub = pd.read_csv(sub_path)
    assert list(sub.columns) == ["user", "item"]
    assert len(sub) == 610 * K
    assert sorted(sub.user.unique().tolist()) == ds.user_raw.tolist()
    assert (sub.groupby("user").size() == K).all()
    assert (sub.groupby("user").item.nunique() == K).all()
    assert sub.user.is_monotonic_increasing
    items = np.searchsorted(ds.item_raw[1:], sub.item.to_numpy()) + 1
    assert np.array_equal(ds.item_raw[np.minimum(items, ds.n_items)], sub.item.to_numpy()), "unknown item"
    users = np.searchsorted(ds.user_raw, sub.user.to_numpy())
    for u in range(ds.n_users):
        seen = set(ds.sequence(u).tolist())
        assert not seen & set(items[users == u].tolist()), f"user {ds.user_raw[u]}: a seen item is recommended"


def test_pop_beats_random(pop_pipeline):
    data, sub_path, scores = pop_pipeline
    assert set(scores) >= {f"recall@{K}", f"ndcg@{K}", f"hr@{K}"}
    ds = Dataset(data)
    ev = ds.eval_users()
    truth = ds.answers_padded(ev)

    # the printed score is the submission's score
    sub = pd.read_csv(sub_path)
    topk = (np.searchsorted(ds.item_raw[1:], sub.item.to_numpy()) + 1).reshape(-1, K)
    rows = np.searchsorted(ds.user_raw, sub.user.to_numpy()[::K])
    pos = np.searchsorted(rows, ev)
    assert scores[f"recall@{K}"] == pytest.approx(recall_at_k(topk[pos], truth, K), abs=1e-5)

    # a random recommender: K random unseen items per user
    rng = np.random.default_rng(0)
    rand = np.zeros((len(ev), K), dtype=np.int64)
    for r, u in enumerate(ev):
        unseen = np.setdiff1d(np.arange(1, ds.n_items + 1), ds.sequence(u))
        rand[r] = rng.choice(unseen, K, replace=False)
    random_recall = recall_at_k(rand, truth, K)
    assert random_recall < 0.02  # ~ K / n_items
    assert scores[f"recall@{K}"] > random_recall
    assert scores[f"recall@{K}"] > 3 * random_recall + 0.01


# ---------------------------------------------------------------- demo data

def test_demo_data_is_deterministic_per_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    runs = run_scripts(["00_make_demo.py", "--out", a, "--seed", "3"],
                       ["00_make_demo.py", "--out", b, "--seed", "3"],
                       ["00_make_demo.py", "--out", c, "--seed", "4"])
    for p in runs:
        assert p.returncode == 0, describe(p)
    files = sorted(f.name for f in a.iterdir())
    assert "train_ratings.csv" in files
    assert sorted(f.name for f in b.iterdir()) == files
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs for the same seed"
    assert (a / "train_ratings.csv").read_bytes() != (c / "train_ratings.csv").read_bytes()
    for d in (a, b, c):
        assert leftover_tmp_files(d) == []

    # the generated folder is valid competition-layout input, with every side kind
    raw = read_raw(a)
    assert raw.source == "competition"
    assert {"genres", "years", "directors", "writers"} <= set(raw.side)
    ratings = pd.read_csv(a / "train_ratings.csv")
    assert list(ratings.columns) == ["user", "item", "time"]
    assert not ratings.duplicated(["user", "item"]).any()
    assert len(raw.users) == len(ratings)

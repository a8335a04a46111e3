"""Blending (common/blend.py, 04_ensemble.py) and chunked inference."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.blend import blend_top_k, contribution_matrix, load_inputs
from common.data import Dataset, build_dataset
from common.readers import RawData
from common.submission import write_ranked

ROOT = Path(__file__).resolve().parents[1]
K = 3


@pytest.fixture()
def tiny(tmp_path) -> Dataset:
    """4 users (raw 10..13) x 8 items (raw 101..108); user 10 has seen 101,102; others see 2-3 items."""
    seqs = {10: [101, 102], 11: [103, 104, 105], 12: [101, 106], 13: [107, 108, 102]}
    users = np.concatenate([[u] * len(s) for u, s in seqs.items()])
    items = np.concatenate(list(seqs.values()))
    raw = RawData(users=users, items=items, times=np.arange(len(users), dtype=float), source="tiny")
    build_dataset(raw, tmp_path / "tiny", holdout=False, name="tiny")
    return Dataset(tmp_path / "tiny")


def write(path: Path, ds: Dataset, rows: dict, scores: dict | None = None) -> Path:
    """rows: raw user -> ranked raw items."""
    users = np.array(sorted(rows))
    items = np.array([rows[u] for u in users])
    sc = None if scores is None else np.array([scores[u] for u in users], dtype=float)
    write_ranked(path, users, items, sc)
    return path


def ensemble(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "04_ensemble.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True)


LISTS_A = {10: [103, 104, 105], 11: [101, 102, 106], 12: [102, 103, 104], 13: [101, 103, 104]}
LISTS_B = {10: [105, 106, 107], 11: [106, 107, 108], 12: [108, 107, 103], 13: [106, 105, 104]}


def blended(ds, paths, weights, method="rrf"):
    frames = load_inputs(paths, ds, method)
    pu, pi, C = contribution_matrix(frames, method)
    users = np.arange(ds.n_users)
    return ds.item_raw[blend_top_k(pu, pi, np.asarray(weights, float) @ C, ds, K, users)]


def test_blend_with_itself_keeps_ranking(tiny, tmp_path):
    a = write(tmp_path / "a.csv", tiny, LISTS_A)
    for method in ("rrf", "borda"):
        out = blended(tiny, [a, a], [1, 1], method)
        assert out.tolist() == [LISTS_A[u] for u in sorted(LISTS_A)]


def test_zero_weight_drops_input(tiny, tmp_path):
    a = write(tmp_path / "a.csv", tiny, LISTS_A)
    b = write(tmp_path / "b.csv", tiny, LISTS_B)
    out = blended(tiny, [a, b], [0, 1])
    assert out.tolist() == [LISTS_B[u] for u in sorted(LISTS_B)]


def test_rank_fusion_hand_computed(tiny, tmp_path):
    a = write(tmp_path / "a.csv", tiny, LISTS_A)
    b = write(tmp_path / "b.csv", tiny, LISTS_B)
    out = blended(tiny, [a, b], [1, 1])
    # user 12, RRF with c = 60: A = [102, 103, 104], B = [108, 107, 103]
    #   103: 1/62 + 1/63 = 0.03200;  102: 1/61 = 0.01639;  108: 1/61 = 0.01639;  107: 1/62;  104: 1/63
    #   102 and 108 tie: the lower dense id (102) first.  -> [103, 102, 108]
    assert out[2].tolist() == [103, 102, 108]
    # user 13, Borda (L = 3): A = [101, 103, 104], B = [106, 105, 104]; 102 is seen
    #   104: 1/3 + 1/3 = 0.667; 101: 1; 106: 1; 103: 2/3; 105: 2/3 -> 101, 106 (tie, lower id first), then
    #   103, 104, 105 all 2/3 -> lowest id 103
    out_borda = blended(tiny, [a, b], [1, 1], "borda")
    assert out_borda[3].tolist() == [101, 106, 103]


def test_score_blend_normalises_per_user(tiny, tmp_path):
    a = write(tmp_path / "a.top3.csv", tiny, LISTS_A, {u: [30.0, 20.0, 10.0] for u in LISTS_A})
    b = write(tmp_path / "b.top3.csv", tiny, LISTS_B, {u: [3.0, 2.0, 1.0] for u in LISTS_B})
    # minmax: A -> 1, .5, 0 and B -> 1, .5, 0; missing pairs get 0. user 10: 105 = 0 + 1 = 1,
    # 103 = 1, 104 = .5, 106 = .5, 107 = 0 -> [103, 105, 104] (ties by lower id)
    out = blended(tiny, [a, b], [1, 1], "score")
    assert out[0].tolist() == [103, 105, 104]


def test_output_has_k_unique_unseen_and_fills_with_popular(tiny, tmp_path):
    short = {10: [103], 11: [101], 12: [102], 13: [101]}
    a = write(tmp_path / "a.csv", tiny, short)
    out = blended(tiny, [a], [1])
    for u in range(tiny.n_users):
        row = out[u]
        assert len(set(row.tolist())) == K
        assert not set(row.tolist()) & set(tiny.item_raw[tiny.sequence(u)].tolist())
    # user 10 (seen 101, 102): 103 first, then the most popular unseen: 102 is seen, so counts
    # 101:2, 102:2, 103..108:1 -> 104 (lowest id among count 1 after 103)
    assert out[0].tolist() == [103, 104, 105]


@pytest.mark.parametrize("case", ["different_users", "missing_header", "weights", "empty"])
def test_bad_inputs_fail_with_one_line(tiny, tmp_path, case):
    a = write(tmp_path / "a.csv", tiny, LISTS_A)
    data = ["--data", tiny.root, "--out", tmp_path / "out.csv"]
    if case == "different_users":
        b = write(tmp_path / "b.csv", tiny, {u: v for u, v in LISTS_B.items() if u != 13})
        p, needle = ensemble(a, b, *data), "b.csv"
    elif case == "missing_header":
        b = tmp_path / "b.csv"
        b.write_text("10,105\n10,106\n")
        p, needle = ensemble(a, b, *data), "b.csv"
    elif case == "weights":
        p, needle = ensemble(a, a, "--weights", "1", *data), "--weights"
    else:
        b = tmp_path / "b.csv"
        b.write_text("user,item\n")
        p, needle = ensemble(a, b, *data), "b.csv"
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], p.stderr
    assert not (tmp_path / "out.csv").exists()


def test_no_inputs_is_an_error(tiny, tmp_path):
    p = ensemble("--data", tiny.root, "--out", tmp_path / "o.csv")
    assert p.returncode == 2 and "no input" in p.stderr


def test_chunked_inference_equals_unchunked(tmp_path):
    """03_inference.py with 1-user batches writes the same files as one batch."""
    raw = tmp_path / "raw"
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], cwd=ROOT, check=True,  # noqa: E731
                                    capture_output=True, text=True)
    run("00_make_demo.py", "--out", raw, "--seed", "3")
    # keep a small subset of users so the test stays fast
    df = pd.read_csv(raw / "train_ratings.csv")
    df[df.user.isin(df.user.unique()[:150])].to_csv(raw / "train_ratings.csv", index=False)
    run("01_preprocess.py", "--input", raw, "--out", tmp_path / "ds")
    run("02_train.py", "--data", tmp_path / "ds", "--hidden", "16", "--epochs", "1", "--run-name", "r",
        "--no-progress")
    ckpt = tmp_path / "ds" / "runs" / "r" / "checkpoint.pt"
    run("03_inference.py", ckpt, "--out-dir", tmp_path / "one", "--batch-size", "100000")
    run("03_inference.py", ckpt, "--out-dir", tmp_path / "many", "--batch-size", "7")
    for name in ("r.csv", "r.top100.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()

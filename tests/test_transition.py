"""The transition model (common.transition): its Gram matrices by hand and against explicit S and Y, its
solution against numpy's, its scoring input, a chain it learns exactly, and flags it refuses."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, make_small_demo, run_script
from test_models_extra import raw_from_sets

from common.data import Dataset, build_dataset
from common.io import InputError
from common import recommend
from common.recommend import top_k
from common.transition import TransitionRecommender, gram_weights, lag_weights, transition_grams


def dataset(tmp_path, sets: dict[int, list[int]], name: str = "t") -> Dataset:
    out = tmp_path / name
    build_dataset(raw_from_sets(sets), out, holdout=False, name=name)
    return Dataset(out)


def explicit_rows(ds: Dataset, context: int, context_tau: float, ahead: int, ahead_tau: float):
    """S and Y as dense arrays, one row per position with an item before it, built position by position."""
    S, Y = [], []
    for u in range(ds.n_users):
        seq = ds.sequence(u) - 1  # 0-based items in time order
        for t in range(1, len(seq)):
            s, y = np.zeros(ds.n_items), np.zeros(ds.n_items)
            for d in range(1, context + 1):
                if t - d >= 0:
                    s[seq[t - d]] += math.exp(-(d - 1) / context_tau)
            for h in range(ahead):
                if t + h < len(seq):
                    y[seq[t + h]] += math.exp(-h / ahead_tau)
            S.append(s)
            Y.append(y)
    return np.array(S), np.array(Y)


def test_grams_by_hand(tmp_path):
    # raw 10*j is dense item j. User 1: 1 2 3. User 2: 3 1.
    ds = dataset(tmp_path, {1: [10, 20, 30], 2: [30, 10]})
    G, R = transition_grams(ds, context=2, context_tau=1.0, ahead=2, ahead_tau=1.0)
    e = math.exp(-1)
    # rows (input -> target): user 1 t=1: {1} -> {2, e*3}; t=2: {2, e*1} -> {3}; user 2 t=1: {3} -> {1}
    want_G = np.array([[1 + e * e, e, 0], [e, 1, 0], [0, 0, 1]])
    want_R = np.array([[0, 1, e + e], [0, 0, 1], [1, 0, 0]])
    assert np.allclose(G.numpy(), want_G, atol=1e-6), G
    assert np.allclose(R.numpy(), want_R, atol=1e-6), R


@pytest.mark.parametrize("context, context_tau, ahead, ahead_tau", [(1, 1.0, 1, 1.0), (3, 2.0, 2, 0.5),
                                                                    (10, 5.0, 4, 3.0), (2, 1e9, 6, 1e9)])
def test_grams_match_explicit_rows(tmp_path, context, context_tau, ahead, ahead_tau):
    rng = np.random.default_rng(0)
    sets = {u: list(rng.choice(np.arange(1, 13) * 10, size=rng.integers(1, 9), replace=False)) for u in range(15)}
    ds = dataset(tmp_path, sets)
    S, Y = explicit_rows(ds, context, context_tau, ahead, ahead_tau)
    G, R = transition_grams(ds, context, context_tau, ahead, ahead_tau)
    assert np.allclose(G.numpy(), S.T @ S, atol=1e-5)
    assert np.allclose(R.numpy(), S.T @ Y, atol=1e-5)
    assert np.abs(S.T @ Y).max() > 0  # the reference is not trivially zero


def test_weight_tables():
    K = lag_weights(2, 1.0, 2, 1.0)  # m = d + h with d in {1, 2}, h in {0, 1}
    assert K.tolist() == pytest.approx([0, 1, math.exp(-1) + math.exp(-1), math.exp(-2)])
    C = gram_weights(2, 1.0)  # C[k, m] = sum_{d <= m} w_d w_{d+k}, w = [_, 1, e^-1], 0 beyond
    assert C[0].tolist() == pytest.approx([0, 1, 1 + math.exp(-2)])
    assert C[1].tolist() == pytest.approx([0, math.exp(-1), math.exp(-1)])
    assert C[2].tolist() == [0, 0, 0]


def test_fit_is_the_ridge_solution_and_scores_use_the_latest_items(tmp_path):
    rng = np.random.default_rng(1)
    sets = {u: list(rng.choice(np.arange(1, 9) * 10, size=rng.integers(2, 7), replace=False)) for u in range(20)}
    ds = dataset(tmp_path, sets)
    args = dict(context=3, context_tau=2.0, ahead=2, ahead_tau=1.0)
    S, Y = explicit_rows(ds, **args)
    want = np.linalg.solve(S.T @ S + 5.0 * np.eye(ds.n_items), S.T @ Y)
    B = TransitionRecommender.fit(ds, **args, ridge=5.0)["B"]
    assert torch.all(B[0] == 0) and torch.all(B[:, 0] == 0), "padding row and column"
    assert np.allclose(B[1:, 1:].numpy(), want, atol=1e-5)
    rec = TransitionRecommender(B, ds, context=3, context_tau=2.0)
    got = rec.score(np.arange(ds.n_users)).numpy()
    for u in range(ds.n_users):
        seq = ds.sequence(u) - 1
        x = np.zeros(ds.n_items)
        for back, item in enumerate(seq[::-1][:3]):  # the latest three items, the latest weighing 1
            x[item] = math.exp(-back / 2.0)
        assert np.allclose(got[u, 1:], x @ want, atol=1e-5), u


def test_answers_are_never_read(tmp_path):
    """B depends on the training part alone: two data sets that differ only in their hidden answers fit
    the same B."""
    base = {u: [10 * ((u + j) % 9 + 1) for j in range(8)] for u in range(30)}
    other = {u: items[:7] + [10 * ((u + 8) % 9 + 1)] for u, items in base.items()}  # another latest item
    views = []
    for name, sets in (("a", base), ("b", other)):
        out = tmp_path / name
        build_dataset(raw_from_sets(sets), out, holdout_last=1, holdout_random=1, seed=0, name=name)
        views.append(Dataset(out))
    a, b = views
    assert np.array_equal(a.items, b.items) and np.array_equal(a.indptr, b.indptr)
    assert not np.array_equal(a.ans_items, b.ans_items), "the answers differ"
    fit = dict(context=4, context_tau=2.0, ahead=3, ahead_tau=1.0, ridge=1.0)
    assert torch.equal(TransitionRecommender.fit(a, **fit)["B"], TransitionRecommender.fit(b, **fit)["B"])


def test_a_chain_is_learned_exactly(tmp_path):
    """Every user walks the same chain 1 -> 2 -> ... -> 8 from some start: after any prefix the next item
    of the chain comes first."""
    sets = {u: [10 * i for i in range(1 + u % 4, 1 + u % 4 + 3 + u % 3)] for u in range(40)}
    ds = dataset(tmp_path, sets)
    B = TransitionRecommender.fit(ds, context=3, context_tau=2.0, ahead=2, ahead_tau=1.0, ridge=0.01)["B"]
    rec = TransitionRecommender(B, ds, context=3, context_tau=2.0)
    users = np.array([u for u in range(ds.n_users) if ds.sequence(u)[-1] < ds.n_items])  # the chain goes on
    ids, _ = top_k(rec, ds, users, 1)
    assert np.array_equal(ids[:, 0], np.array([ds.sequence(u)[-1] + 1 for u in users]))


def test_refuses_a_catalogue_beyond_free_memory(tmp_path, monkeypatch):
    ds = dataset(tmp_path, {1: [10, 20, 30]})
    monkeypatch.setattr(recommend, "free_bytes", lambda device: 3 * 4 * (ds.n_items + 1) ** 2 - 1)
    with pytest.raises(InputError, match="--model transition: .* need 3 dense"):
        TransitionRecommender.fit(ds, context=2, context_tau=1.0, ahead=1, ahead_tau=1.0, ridge=1.0)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return make_small_demo(tmp_path_factory.mktemp("demo"), 30, seed=2)


@pytest.mark.parametrize("flag, value", [("--context", "0"), ("--context-tau", "0"), ("--ahead", "0"),
                                         ("--ahead-tau", "-1"), ("--ridge", "0")])
def test_bad_settings_are_refused(small_demo, flag, value):
    ds = small_demo
    p = run_script("02_train.py", "--data", ds, "--model", "transition", "--no-progress", flag, value)
    assert_one_line_error(p, flag, value)
    assert not (ds / "runs").exists() or not any((ds / "runs").iterdir()), "no partial run folder"

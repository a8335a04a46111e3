"""The reranker: its features against a slow per-pair reference, its labels, and that the order it
gives the test candidates never depends on the test answers."""
from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common import rerank
from common.data import Dataset, build_dataset
from common.io import InputError
from common.readers import RawData
from common.recipe import Member, Recipe
from common.pipeline import rerank_candidates, rerank_stage
from common.submission import write_ranked

N = 6  # candidates per user per run


def toy_raw() -> RawData:
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for u in range(30):
        n = int(rng.integers(14, 25))
        users += [u] * n
        items += rng.choice(np.arange(1, 41), size=n, replace=False).tolist()
        times += sorted(rng.uniform(0, 1000, size=n).tolist())
    import pandas as pd
    genre_items = [i for i in range(1, 41) if i % 7]  # items 7, 14, ... have no genre
    genres = pd.DataFrame({"item": np.repeat(genre_items, [1 + i % 3 for i in genre_items]),
                           "value": [f"g{(i + j) % 5}" for i in genre_items for j in range(1 + i % 3)]})
    years = pd.DataFrame({"item": np.arange(1, 41, 2), "value": [str(1950 + 7 * i) for i in range(20)]})
    return RawData(users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
                   times=np.asarray(times), source="toy", side={"genres": genres, "years": years})


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rr") / "d"
    build_dataset(toy_raw(), out, 3, 2, seed=1, validation=True, name="toy")
    return out


def candidate_file(path: Path, ds: Dataset, seed: int) -> Path:
    """N random unseen items per user with decreasing scores."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(ds.n_users):
        unseen = np.setdiff1d(np.arange(1, ds.n_items + 1), ds.sequence(u))
        rows.append(rng.choice(unseen, size=N, replace=False))
    ids = np.stack(rows)
    scores = np.sort(rng.normal(size=ids.shape), axis=1)[:, ::-1]
    write_ranked(path, ds.user_raw, ds.item_raw[ids], scores)
    return path


def groups_for(ds: Dataset, folder: Path, tag: str) -> dict[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    return {"a": [candidate_file(folder / f"{tag}-a0.csv", ds, 1), candidate_file(folder / f"{tag}-a1.csv", ds, 2)],
            "b": [candidate_file(folder / f"{tag}-b0.csv", ds, 3)]}


def slow_features(ds: Dataset, groups: dict, cfg: rerank.RerankConfig, weights: dict) -> dict:
    """{(user, item): {feature: value}} computed pair by pair, straight from the definitions."""
    import pandas as pd
    files = {name: [pd.read_csv(p) for p in ps] for name, ps in groups.items()}
    dense_item = {int(r): i for i, r in enumerate(ds.item_raw)}
    dense_user = {int(r): u for u, r in enumerate(ds.user_raw)}
    lists = {}  # (name, seed index) -> {user: [(item, score, rank)]}
    for name, frames in files.items():
        for s, f in enumerate(frames):
            per = lists.setdefault((name, s), {})
            for u, g in f.groupby("user", sort=False):
                per[dense_user[int(u)]] = [(dense_item[int(i)], float(sc), r + 1)
                                           for r, (i, sc) in enumerate(zip(g["item"], g["score"]))]
    seqs = [ds.sequence(u).tolist() for u in range(ds.n_users)]
    counts = np.bincount(ds.items, minlength=ds.n_items + 1)
    t0, t1 = ds.times.min(), ds.times.max()
    recent_cut = t1 - cfg.recent_share * (t1 - t0)
    users_of = [set(np.flatnonzero([i in s for s in seqs]).tolist()) for i in range(ds.n_items + 1)]

    def cos(a, b):
        if a == 0 or b == 0:
            return 0.0
        return len(users_of[a] & users_of[b]) / math.sqrt(max(len(users_of[a]), 1) * max(len(users_of[b]), 1))

    n = len(ds.times)
    q = [sum(t2 <= t for t2 in ds.times) / n for t in ds.times]  # share of the interactions at or before t
    follows = np.zeros((ds.n_items + 1, ds.n_items + 1))  # item a -> item b within follow_steps after it
    for s in seqs:
        for p, a in enumerate(s):
            for b in s[p + 1:p + 1 + cfg.follow_steps]:
                follows[a, b] += 1

    def follow(a, b):
        return follows[a, b] / follows[a].sum() if a and follows[a].sum() else 0.0

    def close(a, b):
        """How often a and b come within fill_steps of each other, over the root of their counts."""
        together = sum(1 for s in seqs for p in range(len(s)) for r in range(p + 1, min(p + 1 + cfg.fill_steps, len(s)))
                       if {s[p], s[r]} == {a, b} or (a == b == s[p] == s[r]))
        together *= 2 if a == b else 1
        return together / math.sqrt(max(counts[a], 1) * max(counts[b], 1))

    def share(i, lo, hi):
        lo, hi = max(lo, 0.0), min(hi, 1.0)
        return sum(ds.items[j] == i and lo <= q[j] <= hi for j in range(n)) / max((hi - lo) * n, 1.0)

    a_indptr, a_ids, a_names = ds.attributes()
    attrs = [{a_names[a - 1] for a in a_ids[a_indptr[i]:a_indptr[i + 1]]} for i in range(ds.n_items + 1)]
    kinds = sorted({name.split("=")[0] for name in a_names})

    def holding(i, kind, items):
        """Mean over i's attributes of `kind` of the share of `items` that hold it (-1: i has none)."""
        mine = [a for a in attrs[i] if a.startswith(kind + "=")]
        if not mine:
            return -1.0
        return float(np.mean([sum(a in attrs[h] for h in items) / max(len(items), 1) for a in mine]))

    out = {}
    for u in range(ds.n_users):
        pairs = sorted({i for (name, s), per in lists.items() for i, _, _ in per[u]})
        for i in pairs:
            f = {"blend": 0.0}
            for name, frames in files.items():
                zs, ranks, listed = [], [], 0
                for s in range(len(frames)):
                    row = lists[(name, s)][u]
                    sc = np.array([x[1] for x in row])
                    z = (sc - sc.mean()) / sc.std()
                    hit = [j for j, x in enumerate(row) if x[0] == i]
                    zs.append(z[hit[0]] if hit else z.min())
                    ranks.append(row[hit[0]][2] if hit else N + 1)
                    listed += bool(hit)
                f[f"{name}_z"], f[f"{name}_rank"], f[f"{name}_listed"] = np.mean(zs), min(ranks), listed / len(frames)
                f["blend"] += weights[name] / len(frames) * sum(zs)
            its = [j for j in range(len(ds.items)) if ds.items[j] == i]
            f["item_pop"] = math.log1p(counts[i])
            f["item_pop_recent"] = math.log1p(sum(ds.times[j] >= recent_cut for j in its))
            f["item_age"] = (t1 - min(ds.times[j] for j in its)) / (t1 - t0) if its else 0.0
            f["user_len"] = math.log1p(len(seqs[u]))
            back = seqs[u][::-1][:cfg.near_window]
            c = [cos(i, h) for h in back]
            f["near_step"] = int(np.argmax(c)) if c and max(c) > 0 else cfg.near_window
            f["near_cos"] = max(c + [0.0])
            f["recent_cos"] = sum(c[:rerank.RECENT_ITEMS]) / rerank.RECENT_ITEMS
            rows = range(ds.indptr[u], ds.indptr[u + 1])
            ql = q[rows[-1]] if rows else 1.0
            qf = q[rows[0]] if rows else 1.0
            w = cfg.time_window
            f["user_last"] = ql
            f["first_gap"] = min([q[j] for j in its] + [1.0]) - ql
            f["pop_at_last"] = share(i, ql - w, ql + w)
            f["pop_in_span"] = share(i, qf - w, ql + w)
            latest = seqs[u][::-1][:rerank.RECENT_ITEMS]
            f["follow_last"] = follow(latest[0], i) if latest else 0.0
            f["follow_recent"] = sum(follow(h, i) for h in latest) / rerank.RECENT_ITEMS
            closeness = [close(h, i) for h in seqs[u]]
            f["fill_max"] = max(closeness + [0.0])
            f["fill_mean"] = float(np.mean(closeness)) if closeness else 0.0
            pop = [math.log1p(counts[h]) for h in seqs[u]]
            f["user_pop"] = float(np.mean(pop)) if pop else 0.0
            f["pop_gap"] = f["item_pop"] - f["user_pop"]
            f["pop_gap_recent"] = f["item_pop"] - (float(np.mean([math.log1p(counts[h]) for h in latest])) if latest else 0.0)
            for kind in kinds:
                f[f"{kind}_share"] = holding(i, kind, seqs[u])
                f[f"{kind}_recent"] = holding(i, kind, latest)
            out[(u, i)] = f
    return out


def test_features_match_a_slow_reference(split, tmp_path):
    ds = Dataset(split, "valid")
    cfg = rerank.RerankConfig(near_window=7, time_window=0.1037, follow_steps=3, fill_steps=2, attributes=True,
                              profile=True)
    groups, weights = groups_for(ds, tmp_path, "v"), {"a": 2.0, "b": 0.5}
    c = rerank.build_candidates(groups, ds, N, cfg, weights)
    want = slow_features(ds, groups, cfg, weights)
    assert {"blend", "first_gap", "pop_in_span", "follow_recent", "genre_share", "year_recent", "pop_gap",
            "fill_max", "fill_mean"} <= set(c.names)
    assert c.X[:, c.names.index("fill_max")].max() > 0
    assert {-1.0, 0.0} <= set(c.X[:, c.names.index("genre_share")].tolist())  # items without a genre, and unmatched
    assert len(c.users) == len(want) and np.all(np.diff(c.users) >= 0)
    for p, (u, i) in enumerate(zip(c.users.tolist(), c.items.tolist())):
        for f, name in enumerate(c.names):
            assert c.X[p, f] == pytest.approx(want[(u, i)][name], rel=1e-4, abs=1e-5), (u, i, name)


def test_fill_features_do_not_depend_on_the_chunk_size(split):
    ds = Dataset(split, "valid")
    pu = np.repeat(np.arange(ds.n_users), 4)
    pi = (np.arange(len(pu)) * 7) % ds.n_items + 1
    whole, names = rerank.fill_features(ds, pu, pi, 2)
    chunked, _ = rerank.fill_features(ds, pu, pi, 2, budget=5)  # chunks smaller than one user's history
    assert names == ["fill_max", "fill_mean"]
    np.testing.assert_allclose(whole, chunked, rtol=1e-6)


def test_depth_reads_each_members_top_candidates_alone(split, tmp_path):
    ds = Dataset(split, "valid")
    groups = groups_for(ds, tmp_path, "v")
    full = rerank.build_candidates(groups, ds, N, rerank.RerankConfig())
    top = rerank.build_candidates(groups, ds, N, rerank.RerankConfig(depth=2))
    ranks = [full.names.index(f"{m}_rank") for m in ("a", "b")]
    keep = (full.X[:, ranks] <= 2).any(1)  # the pairs some member lists in its top 2
    np.testing.assert_array_equal(top.users, full.users[keep])
    np.testing.assert_array_equal(top.items, full.items[keep])
    r = top.X[:, ranks]
    assert set(np.unique(r).tolist()) <= {1.0, 2.0, 3.0} and (r == 3.0).any()  # 3 = not in the member's top 2
    assert len(top.users) < len(full.users)


def test_relative_features_by_hand():
    pu = np.array([0, 0, 0, 1, 1])
    X = np.array([[1.0, 5.0], [3.0, 5.0], [3.0, 4.0], [2.0, 0.0], [7.0, 0.0]], dtype=np.float32)
    R, names = rerank.relative_features(pu, X, ["blend", "user_len"], cut=2)
    assert names == ["blend_urank", "blend_gap"]  # user_len is not a relative feature
    # user 0: values 1, 3, 3 -> ranks 3, 1, 1 (ties share the best); the 2nd highest is 3
    # user 1: values 2, 7 -> ranks 2, 1; the 2nd highest is 2
    np.testing.assert_array_equal(R[:, 0], [3, 1, 1, 2, 1])
    np.testing.assert_array_equal(R[:, 1], [-2, 0, 0, 0, 5])
    R, _ = rerank.relative_features(pu, X, ["blend", "user_len"], cut=10)  # fewer candidates: the lowest
    np.testing.assert_array_equal(R[:, 1], [0, 2, 2, 0, 5])


def test_relative_features_match_a_slow_reference(split, tmp_path):
    ds = Dataset(split, "valid")
    cfg = rerank.RerankConfig(near_window=7, time_window=0.1037, follow_steps=3, relative=True)
    groups, weights = groups_for(ds, tmp_path, "v"), {"a": 2.0, "b": 0.5}
    c = rerank.build_candidates(groups, ds, N, cfg, weights)
    plain = rerank.build_candidates(groups, ds, N, replace(cfg, relative=False), weights)
    F = len(plain.names)
    assert c.names[:F] == plain.names
    np.testing.assert_array_equal(c.X[:, :F], plain.X)
    bases = [n for n in plain.names if n in rerank.RELATIVE_OF or n.endswith("_z")]
    assert {"blend", "a_z", "b_z", "follow_recent", "pop_at_last"} <= set(bases)
    assert c.names[F:] == [f"{b}_{what}" for b in bases for what in ("urank", "gap")]
    for b in bases:
        x = plain.X[:, plain.names.index(b)].tolist()
        for p, u in enumerate(c.users.tolist()):
            mine = sorted((x[q] for q in range(len(x)) if c.users[q] == u), reverse=True)
            assert c.X[p, c.names.index(f"{b}_urank")] == 1 + sum(v > x[p] for v in mine), (p, b)
            cut = mine[min(rerank.RELATIVE_CUT, len(mine)) - 1]
            assert c.X[p, c.names.index(f"{b}_gap")] == pytest.approx(x[p] - cut, abs=1e-6), (p, b)


def test_attribute_features_do_not_depend_on_the_chunk_size(split):
    ds = Dataset(split, "valid")
    pu = np.repeat(np.arange(ds.n_users), 4)
    pi = (np.arange(len(pu)) * 7) % ds.n_items + 1
    whole, names = rerank.attribute_features(ds, pu, pi)
    chunked, _ = rerank.attribute_features(ds, pu, pi, chunk=7)  # chunks that cut users in two
    assert names == ["genre_share", "genre_recent", "year_share", "year_recent"]
    np.testing.assert_array_equal(whole, chunked)


def test_tie_features_match_a_slow_reference(tmp_path):
    raw = toy_raw()
    raw = replace(raw, times=np.floor(raw.times / 120.0))  # coarse times: blocks of tied items
    build_dataset(raw, tmp_path / "d", 3, 2, seed=1, validation=True, name="ties")
    ds = Dataset(tmp_path / "d", "valid")
    pu = np.repeat(np.arange(ds.n_users), ds.n_items)  # every (user, item), seen ones included
    pi = np.tile(np.arange(1, ds.n_items + 1), ds.n_users)
    got, names = rerank.tie_features(ds, pu, pi)
    assert names == ["tie_count", "tie_density", "last_block", "after_last"]
    for p, (u, c) in enumerate(zip(pu.tolist(), pi.tolist())):
        seq = ds.sequence(u).tolist()
        times = ds.times[ds.indptr[u]:ds.indptr[u + 1]].tolist()
        around = [(min(a, b), max(a, b)) for a, b, s, t in zip(seq, seq[1:], times, times[1:]) if s == t]
        holding = [(lo, hi) for lo, hi in around if lo < c < hi]
        want = [len(holding), sum(1 / max(hi - lo - 1, 1) for lo, hi in holding),
                math.log1p(sum(t == times[-1] for t in times) - 1), (c - seq[-1]) / ds.n_items]
        np.testing.assert_allclose(got[p], want, rtol=1e-5, atol=1e-6, err_msg=str((u, c)))
    assert got[:, 0].max() >= 2 and (got[:, 2] > 0).any() and (got[:, 3] < 0).any() and (got[:, 3] > 0).any()


def test_labels_are_the_answers_of_the_dataset_given(split, tmp_path):
    ds = Dataset(split, "valid")
    c = rerank.build_candidates(groups_for(ds, tmp_path, "v"), ds, N, rerank.RerankConfig())
    y = rerank.labels(c, ds)
    answers = {(u, int(i)) for u in range(ds.n_users) for i in ds.ans_items[ds.ans_indptr[u]:ds.ans_indptr[u + 1]]}
    assert y.tolist() == [int((u, i) in answers) for u, i in zip(c.users.tolist(), c.items.tolist())]


def test_answer_kinds_are_the_latest_rows_and_the_earlier_ones(split, tmp_path):
    ds, full = Dataset(split, "valid"), Dataset(split, "test")  # the valid carve's rows index full's
    positions = np.load(split / "valid.npz")["positions"]
    owner = np.searchsorted(full.indptr, positions, side="right") - 1
    latest = positions >= full.indptr[owner + 1] - ds.meta["holdout"]["last"]
    kinds = rerank.answer_kinds(ds)
    assert kinds.tolist() == np.where(latest, rerank.LATEST, rerank.EARLIER).tolist()
    assert 0 < latest.mean() < 1
    c = rerank.build_candidates(groups_for(ds, tmp_path, "v"), ds, N, rerank.RerankConfig())
    kind_of = {(int(u), int(i)): int(k) for u, i, k in zip(owner, ds.ans_items, kinds)}
    y = rerank.labels(c, ds, kinds=True)
    assert y.tolist() == [kind_of.get((u, i), 0) for u, i in zip(c.users.tolist(), c.items.tolist())]
    assert np.array_equal(y > 0, rerank.labels(c, ds) == 1) and {1, 2} <= set(y.tolist())


def test_answer_kinds_refuse_a_time_cutoff_hold_out(tmp_path):
    build_dataset(toy_raw(), tmp_path / "d", 3, 2, seed=1, validation=True, name="cut", cutoff=0.8)
    with pytest.raises(InputError, match="kinds needs a hold-out of each user's latest items"):
        rerank.answer_kinds(Dataset(tmp_path / "d", "valid"))


def test_kinds_sum_one_classifier_per_kind(split, tmp_path):
    ds = Dataset(split, "valid")
    cfg = rerank.RerankConfig(max_iter=20, min_samples_leaf=5, kinds=True)
    c = rerank.build_candidates(groups_for(ds, tmp_path, "v"), ds, N, cfg)
    y = rerank.labels(c, ds, kinds=True)
    model = rerank.fit(c, y, cfg)
    latest = rerank.fit(c, (y == rerank.LATEST).astype(np.int8), replace(cfg, kinds=False))
    earlier = rerank.fit(c, (y == rerank.EARLIER).astype(np.int8), replace(cfg, kinds=False))
    np.testing.assert_allclose(model.predict_proba(c.X)[:, 1],
                               latest.predict_proba(c.X)[:, 1] + earlier.predict_proba(c.X)[:, 1])


def test_bootstrap_rows_draw_whole_users_as_often_as_drawn():
    users = np.array([0, 0, 0, 1, 1, 2, 5, 5, 5, 5])  # user 5's rows from two carves: drawn together
    rows = np.array([0, 2, 3, 4, 5, 6, 8, 9])  # a subset: rows 1 and 7 are not learned from
    drawn = rerank.bootstrap_rows(users, rows, np.random.default_rng(3))
    count = {int(u): int(n) for u, n in zip(*np.unique(users[drawn], return_counts=True))}
    times = {u: count.get(u, 0) // int((users[rows] == u).sum()) for u in (0, 1, 2, 5)}
    assert sum(times.values()) == 4, "as many draws as users"
    for u, t in times.items():  # each drawn user brings all its learning rows, t times each
        assert sorted(drawn[users[drawn] == u].tolist()) == sorted(rows[users[rows] == u].tolist() * t)
    assert np.array_equal(drawn, rerank.bootstrap_rows(users, rows, np.random.default_rng(3)))


def test_bags_average_classifiers_of_bootstrap_draws(split, tmp_path):
    ds = Dataset(split, "valid")
    cfg = rerank.RerankConfig(max_iter=20, min_samples_leaf=5, bags=3, max_features=0.5, seed=7)
    c = rerank.build_candidates(groups_for(ds, tmp_path, "v"), ds, N, cfg)
    y = rerank.labels(c, ds)
    rows = rerank.answered_rows(c, ds)
    model = rerank.fit(c, y, cfg, rows)
    rng, one = np.random.default_rng(7), replace(cfg, bags=1)
    alone = [rerank.fit(c, y, replace(one, seed=7 + b), rerank.bootstrap_rows(c.users, rows, rng)) for b in range(3)]
    p = [m.predict_proba(c.X)[:, 1] for m in alone]
    np.testing.assert_allclose(model.predict_proba(c.X)[:, 1], np.mean(p, axis=0))
    assert not np.allclose(p[0], p[1]), "the draws differ: the mean is not one classifier"


def test_probability_in_chunks_equals_one_call(split, tmp_path, monkeypatch):
    ds = Dataset(split, "valid")
    cfg = rerank.RerankConfig(max_iter=20, min_samples_leaf=5, bags=2)
    c = rerank.build_candidates(groups_for(ds, tmp_path, "v"), ds, N, cfg)
    model = rerank.fit(c, rerank.labels(c, ds), cfg)
    whole = model.predict_proba(c.X)[:, 1]
    monkeypatch.setattr(rerank, "PREDICT_ROWS", 7)  # chunks that do not divide the pairs
    assert len(c.X) > 7 and len(c.X) % 7
    assert np.array_equal(rerank.probability(model, c.X), whole)
    rows = np.flatnonzero(np.arange(len(c.X)) % 3 == 1)
    assert np.array_equal(rerank.probability(model, c.X, rows), whole[rows])


@pytest.mark.parametrize("options", [{}, {"kinds": True}, {"bags": 3, "max_features": 0.5}])
def test_the_reranker_never_reads_test_answers(split, tmp_path, options):
    """The order given to the test candidates is learned from the validation answers alone: other test
    answers change the test score, never the order."""
    valid, test = Dataset(split, "valid"), Dataset(split, "test")
    recipe = Recipe(path="r", members=[Member("a", []), Member("b", [])], k=3, candidates=N,
                    rerank=rerank.RerankConfig(max_iter=20, min_samples_leaf=5, **options))
    weights = {"a": 1.0, "b": 0.5}
    learn = {n: [{"candidates": str(p)} for p in ps] for n, ps in groups_for(valid, tmp_path, "v").items()}
    apply = {n: [{"candidates": str(p)} for p in ps] for n, ps in groups_for(test, tmp_path, "t").items()}
    learn_c = rerank_candidates(recipe, learn, valid, weights)
    apply_c = rerank_candidates(recipe, apply, test, weights)
    learning = rerank.learning_set([(learn_c, valid)], recipe.rerank)
    users, top, metrics = rerank_stage(recipe, learning, (apply_c, test))
    other = Dataset(split, "test")
    other.ans_items = np.random.default_rng(5).integers(1, other.n_items + 1, size=len(other.ans_items))
    users2, top2, metrics2 = rerank_stage(recipe, learning, (apply_c, other))
    assert np.array_equal(users, users2) and np.array_equal(top, top2)
    assert metrics != metrics2, "the test answers did change: the test must be able to fail"
    seen = [set(test.sequence(u).tolist()) for u in users]
    assert all(not (set(row.tolist()) & s) for row, s in zip(top, seen))


def test_cross_fit_scores_each_half_with_the_other_halfs_model(split, tmp_path):
    ds = Dataset(split, "valid")
    cfg = rerank.RerankConfig(max_iter=20, min_samples_leaf=5)
    c = rerank.build_candidates(groups_for(ds, tmp_path, "v"), ds, N, cfg)
    metrics, importance = rerank.cross_fit(c, ds, cfg, 3)
    assert 0 <= metrics["recall@3"] <= 1
    assert sorted(r["feature"] for r in importance) == sorted(c.names)


def test_permutation_importance_of_a_constant_column_is_zero_under_any_pair_budget(split, tmp_path, monkeypatch):
    ds = Dataset(split, "valid")
    cfg = rerank.RerankConfig(max_iter=20, min_samples_leaf=5)
    c = rerank.build_candidates(groups_for(ds, tmp_path, "v"), ds, N, cfg)
    c = rerank.Candidates(c.users, c.items, np.hstack([c.X, np.full((len(c.X), 1), 3.0, np.float32)]),
                          [*c.names, "constant"])
    for budget in (rerank.IMPORTANCE_PAIRS, 2 * N):  # all users, then about two users' pairs
        monkeypatch.setattr(rerank, "IMPORTANCE_PAIRS", budget)
        _, importance = rerank.cross_fit(c, ds, cfg, 3)
        drop = {r["feature"]: r["recall@3 drop"] for r in importance}
        assert set(drop) == set(c.names) and drop["constant"] == 0.0
        assert any(d != 0.0 for d in drop.values()), "shuffling the features the model reads must move recall"


def test_learning_rows_keep_every_answer_and_cut_the_rest_to_max_pairs():
    y = np.zeros(1000, dtype=np.int8)
    y[[3, 50, 400, 999]] = 1
    rows = np.arange(100, 1000)  # answers 400 and 999 inside
    kept = rerank.learning_rows(y, rows, 50, seed=0)
    assert len(kept) == 50 and len(np.unique(kept)) == 50 and np.all(np.diff(kept) > 0)
    assert set(kept.tolist()) <= set(rows.tolist()) and {400, 999} <= set(kept.tolist())
    assert np.array_equal(kept, rerank.learning_rows(y, rows, 50, seed=0))
    assert np.array_equal(rerank.learning_rows(y, rows, 0, seed=0), rows)
    assert np.array_equal(rerank.learning_rows(y, rows, 5000, seed=0), rows)


def test_fit_threads_sets_the_classifiers_openmp_threads():
    from threadpoolctl import threadpool_info

    def openmp_threads():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"}

    with rerank.fit_threads(1):
        assert openmp_threads() == {1}
    with rerank.fit_threads(0):  # 0: one per core, whatever torch was set to
        assert openmp_threads() == {os.cpu_count()}


def test_extra_carves_draw_the_random_answers_again(split, tmp_path):
    """Carves 2 and 3 keep the validation carve's latest answers, draw the random ones again, hide their own
    answers from their training part, and leave the test and validation views (and fingerprint) as they were."""
    from common.io import InputError
    base, test = Dataset(split, "valid"), Dataset(split, "test")
    rebuilt = tmp_path / "rebuilt"
    build_dataset(toy_raw(), rebuilt, 3, 2, seed=1, validation=True, name="toy", carves=3)
    assert Dataset(rebuilt, "valid").fingerprint == base.fingerprint == Dataset(rebuilt, "test").fingerprint
    views = [Dataset(rebuilt, s) for s in ("valid", "valid2", "valid3")]
    assert len({v.fingerprint for v in views}) == 3
    differ = 0
    for u in views[0].eval_users():
        train_all = set(test.sequence(u).tolist())
        answers = [set(v.ans_items[v.ans_indptr[u]:v.ans_indptr[u + 1]].tolist()) for v in views]
        latest = set(test.sequence(u)[-3:].tolist())
        for v, a in zip(views, answers):
            assert latest <= a and len(a) == 5
            assert not a & set(v.sequence(u).tolist()) and a | set(v.sequence(u).tolist()) == train_all
        differ += answers[0] != answers[1]
    assert differ > 0
    with pytest.raises(InputError, match="valid4"):
        Dataset(rebuilt, "valid4")


def test_stack_labels_each_set_by_its_own_answers(split, tmp_path):
    valid, test = Dataset(split, "valid"), Dataset(split, "test")
    cv = rerank.build_candidates(groups_for(valid, tmp_path, "v"), valid, N, rerank.RerankConfig())
    ct = rerank.build_candidates(groups_for(test, tmp_path, "t"), test, N, rerank.RerankConfig())
    c, y, rows = rerank.stack([(cv, valid), (ct, test)])
    assert len(c.users) == len(cv.users) + len(ct.users) and c.names == cv.names
    assert y.tolist() == rerank.labels(cv, valid).tolist() + rerank.labels(ct, test).tolist()
    assert rows.tolist() == rerank.answered_rows(cv, valid).tolist() + (len(cv.users) + rerank.answered_rows(ct, test)).tolist()
    whole = np.concatenate([cv.X, ct.X])  # what the stacked sets read as, without that copy being made
    picked = np.random.default_rng(0).integers(len(whole), size=50)  # unsorted, some repeated, both sets
    np.testing.assert_array_equal(c.take(picked), whole[picked])
    np.testing.assert_array_equal(c.take(rows), whole[rows])


@pytest.mark.parametrize("options", [{}, {"max_pairs": 300}, {"max_pairs": 300, "bags": 2}, {"kinds": True}])
def test_a_learning_set_teaches_what_its_sets_do(split, tmp_path, options):
    """The learning set copied out of the candidate sets (so that they can be let go) gives the classifier that
    the sets themselves give: the same pairs, cut to max_pairs the same way, the same bootstrap draws."""
    valid, test = Dataset(split, "valid"), Dataset(split, "test")
    cfg = rerank.RerankConfig(max_iter=20, min_samples_leaf=5, **options)
    cv = rerank.build_candidates(groups_for(valid, tmp_path, "v"), valid, N, cfg)
    ct = rerank.build_candidates(groups_for(test, tmp_path, "t"), test, N, cfg)
    sets = [(ct, test), (cv, valid)]
    stacked, y, rows = rerank.stack(sets, cfg.kinds)
    learned, labels = rerank.learning_set(sets, cfg)
    assert len(labels) == min(len(rows), cfg.max_pairs)  # the answered users' pairs, cut to max_pairs
    assert (labels > 0).sum() == (y[rows] > 0).sum()  # every answer kept, whatever the cut
    want = rerank.fit(stacked, y, cfg, rows).predict_proba(cv.X)
    np.testing.assert_array_equal(rerank.fit(learned, labels, cfg).predict_proba(cv.X), want)


def test_shifted_carves_are_carved_as_the_data_stood_one_holdout_earlier(tmp_path):
    """With 3 latest + 2 random answers, shifted carve m hides each long-enough user's latest 3·m training rows
    (neither trained on nor answered), then takes the 3 latest of what is left and 2 random earlier ones; the
    unshifted carves stay bit for bit as they were without shifted ones."""
    from common.data import MIN_TRAIN_LEFT
    from common.io import InputError
    plain, shifted = tmp_path / "plain", tmp_path / "shifted"
    build_dataset(toy_raw(), plain, 3, 2, seed=1, validation=True, name="toy", carves=2)
    build_dataset(toy_raw(), shifted, 3, 2, seed=1, validation=True, name="toy", carves=2, shifted=2)
    for view in ("test", "valid", "valid2"):
        assert Dataset(plain, view).fingerprint == Dataset(shifted, view).fingerprint
    test = Dataset(shifted, "test")
    seen_long = seen_short = 0
    for m, view in ((1, "valid3"), (2, "valid4")):
        v = Dataset(shifted, view)
        for u in range(test.n_users):
            train_all = test.sequence(u).tolist()
            answers = v.ans_items[v.ans_indptr[u]:v.ans_indptr[u + 1]].tolist()
            if len(train_all) >= 3 * m + 3 + 2 + MIN_TRAIN_LEFT:
                seen_long += 1
                before = train_all[:len(train_all) - 3 * m]  # the data as it stood 3·m rows earlier
                assert len(answers) == 5 and set(before[-3:]) <= set(answers) and set(answers) <= set(before)
                assert v.sequence(u).tolist() == [i for i in before if i not in answers]
            else:
                seen_short += 1
                assert answers == [] and v.sequence(u).tolist() == train_all
    assert seen_long and seen_short
    with pytest.raises(InputError, match="per-user hold-out"):
        build_dataset(toy_raw(), tmp_path / "cut", 3, 2, validation=True, cutoff=0.8, shifted=1)
    with pytest.raises(InputError, match="at most"):
        build_dataset(toy_raw(), tmp_path / "many", 3, 2, validation=True, carves=4, shifted=3)


def test_cross_fit_over_carves_never_learns_from_the_users_it_scores(tmp_path, monkeypatch):
    """Each of the two models learns from one half of the users, in every carve, and scores the other half;
    with the first carve given again as the extra one, the all-carves score is the first carve's."""
    root = tmp_path / "carved"
    build_dataset(toy_raw(), root, 3, 2, seed=1, validation=True, name="toy", carves=2)
    ds, ds2 = Dataset(root, "valid"), Dataset(root, "valid2")
    cfg = rerank.RerankConfig(max_iter=20, min_samples_leaf=5)
    c = rerank.build_candidates(groups_for(ds, tmp_path, "v"), ds, N, cfg)
    c2 = rerank.build_candidates(groups_for(ds2, tmp_path, "v2"), ds2, N, cfg)
    learned, real_fit = [], rerank.fit

    def spy(cands, y, cfg, rows):
        learned.append((set(cands.users[rows].tolist()), len(rows)))
        return real_fit(cands, y, cfg, rows)

    monkeypatch.setattr(rerank, "fit", spy)
    metrics, _ = rerank.cross_fit(c, ds, cfg, 3, 0, [(c2, ds2)])
    (first, n_first), (second, n_second) = learned
    assert first and second and not first & second
    assert first | second == set(ds.eval_users().tolist())
    one_carve = len(rerank.answered_rows(c, ds))
    assert n_first + n_second == one_carve + len(rerank.answered_rows(c2, ds2)) > one_carve
    assert 0 <= metrics["recall@3, all carves"] <= 1
    same, _ = rerank.cross_fit(c, ds, cfg, 3, 0, [(c, ds)])
    assert same["recall@3, all carves"] == pytest.approx(same["recall@3"])
    learned.clear()  # a carve scored only: learned from by neither model, and the first carve's score as alone
    scored, _ = rerank.cross_fit(c, ds, cfg, 3, 0, [], [(c2, ds2)])
    assert sum(n for _, n in learned) == one_carve
    alone, _ = rerank.cross_fit(c, ds, cfg, 3, 0)
    assert scored["recall@3"] == alone["recall@3"] and "recall@3, all carves" not in alone

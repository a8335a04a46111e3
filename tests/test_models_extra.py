"""Models and training options beyond the baseline: EASE against exact arithmetic, the full and sampled
softmax losses (padding, collisions, logQ), shared negative sampling, and every new 02_train.py flag
run end to end through the scripts.

Reference values are computed independently (fractions, plain `math`), never by the code under test.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, describe, make_small_demo, run_script, run_scripts

from common.batches import NegativeSampler
from common.config import flat_dict
from common.data import Dataset, build_dataset
from common.losses import ce_loss, sampled_softmax_loss
from common.model import SASRec, SASRecArgs
from common.next_item import make_batch, train_loss
from common.readers import RawData
from common import recommend
from common.io import InputError
from common.recommend import EASERecommender, cooccurrence, top_k
from common.training import train_config




def raw_from_sets(user_items: dict[int, list[int]]) -> RawData:
    """RawData from {raw user: [raw items in time order]}."""
    users, items, times = [], [], []
    t = 0
    for u, its in user_items.items():
        for i in its:
            users.append(u)
            items.append(i)
            times.append(float(t))
            t += 1
    return RawData(users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
                   times=np.asarray(times, np.float64), source="test")


# ---------------------------------------------------------------- EASE, exactly

# 7 users x 5 items; raw item 10*j has dense id j (ids are assigned in sorted raw order)
EASE_SETS = {1: [1, 2], 2: [2, 3], 3: [1, 2, 3], 4: [4, 5], 5: [1, 4], 6: [3, 5], 7: [2]}
EASE_N = 5
EASE_L2 = Fraction(2)


def frac_inverse(m: list[list[Fraction]]) -> list[list[Fraction]]:
    """Gauss-Jordan inverse in exact rational arithmetic."""
    n = len(m)
    a = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(m)]
    for c in range(n):
        p = next(r for r in range(c, n) if a[r][c] != 0)
        a[c], a[p] = a[p], a[c]
        piv = a[c][c]
        a[c] = [x / piv for x in a[c]]
        for r in range(n):
            if r != c and a[r][c] != 0:
                f = a[r][c]
                a[r] = [x - f * y for x, y in zip(a[r], a[c])]
    return [row[n:] for row in a]


def ease_reference():
    """(X [U][n] 0/1, B [n][n] as Fractions) for EASE_SETS, EASE_L2, by exact arithmetic."""
    X = [[Fraction(int(j + 1 in its)) for j in range(EASE_N)] for its in EASE_SETS.values()]
    G = [[sum(X[u][i] * X[u][j] for u in range(len(X))) + (EASE_L2 if i == j else 0)
          for j in range(EASE_N)] for i in range(EASE_N)]
    P = frac_inverse(G)
    for i in range(EASE_N):  # the inverse really is one
        for j in range(EASE_N):
            assert sum(G[i][k] * P[k][j] for k in range(EASE_N)) == int(i == j)
    B = [[Fraction(0) if i == j else -P[i][j] / P[j][j] for j in range(EASE_N)] for i in range(EASE_N)]
    return X, B


@pytest.fixture(scope="module")
def ease_ds(tmp_path_factory) -> Dataset:
    out = tmp_path_factory.mktemp("ease") / "ds"
    build_dataset(raw_from_sets({u: [10 * i for i in its] for u, its in EASE_SETS.items()}), out,
                  holdout=False, name="ease")
    ds = Dataset(out)
    assert ds.n_items == EASE_N and ds.n_users == len(EASE_SETS)
    assert ds.item_raw.tolist() == [-1, 10, 20, 30, 40, 50]
    assert ds.user_raw.tolist() == sorted(EASE_SETS)
    return ds


def test_ease_matches_exact_solution(ease_ds):
    X, B_ref = ease_reference()
    B = EASERecommender.fit(ease_ds, float(EASE_L2))["B"]
    assert B.shape == (EASE_N + 1, EASE_N + 1)
    assert torch.all(B[0] == 0) and torch.all(B[:, 0] == 0), "row and column 0 (padding) must be zero"
    want = torch.tensor([[float(x) for x in row] for row in B_ref])
    assert torch.all(torch.diagonal(B) == 0), "diag(B) must be exactly zero"
    assert torch.allclose(B[1:, 1:].double(), want.double(), atol=1e-5), f"\n{B[1:, 1:]}\nvs exact\n{want}"
    # the sanity of the reference itself: B is not symmetric in general, and not trivially zero
    assert want.abs().max() > 0.05


def test_ease_scores_and_top_k(ease_ds):
    X, B_ref = ease_reference()
    rec = EASERecommender(EASERecommender.fit(ease_ds, float(EASE_L2))["B"], ease_ds)
    users = np.array([0, 2, 3, 6])
    got = rec.score(users)
    assert got.shape == (len(users), EASE_N + 1)
    assert torch.all(got[:, 0] == 0), "padding column of the scores"
    for r, u in enumerate(users):
        want = [float(sum(X[u][k] * B_ref[k][j] for k in range(EASE_N))) for j in range(EASE_N)]
        assert got[r, 1:].tolist() == pytest.approx(want, abs=1e-5), f"user {u}"

    all_users = np.arange(ease_ds.n_users)
    k = 2  # every user has at least 2 unseen items
    ids, scores = top_k(rec, ease_ds, all_users, k, batch_size=3)  # several batches
    assert ids.shape == scores.shape == (len(all_users), k)
    for u in all_users:
        seen = set(EASE_SETS[int(ease_ds.user_raw[u])])
        row = ids[u].tolist()
        assert 0 not in row, f"user {u}: padding recommended"
        assert not (set(row) & seen), f"user {u}: seen items {set(row) & seen} recommended"
        assert len(set(row)) == k
        exact = {j + 1: float(sum(X[u][m] * B_ref[m][j] for m in range(EASE_N))) for j in range(EASE_N)}
        assert scores[u].tolist() == pytest.approx([exact[i] for i in row], abs=1e-5)
        assert list(scores[u]) == sorted(scores[u], reverse=True), "rank order"
        others = [exact[i] for i in exact if i not in seen and i not in row]
        if others:
            assert min(exact[i] for i in row) >= max(others) - 1e-5, f"user {u}: not the best unseen items"


def test_sparse_times_dense_on_one_thread_and_several():
    import scipy.sparse as sp
    rng = np.random.default_rng(0)
    x = sp.random(300, 400, density=0.05, format="csr", dtype=np.float32, random_state=1)
    ones = x.copy()
    ones.data[:] = 1.0
    B = torch.from_numpy(rng.standard_normal((400, 250)).astype(np.float32))
    threads = torch.get_num_threads()
    try:
        got = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            got[n] = recommend.sparse_times_dense(x, B), recommend.sparse_times_dense(ones, B)
    finally:
        torch.set_num_threads(threads)
    for m, want in ((x, got[1][0]), (ones, got[1][1])):
        exact = torch.from_numpy(m.toarray().astype(np.float64)) @ B.double()
        assert want.dtype == torch.float32 and want.shape == (300, 250)
        assert torch.allclose(want.double(), exact, atol=1e-4)
    assert torch.equal(got[2][0], got[3][0]), "torch's product depends on its thread count"
    assert torch.allclose(got[1][0], got[2][0], atol=1e-5)
    assert torch.equal(got[1][1], got[2][1]), "a matrix of ones scores to the bit on one thread and several"


def test_ease_recency_weights_the_latest_items(ease_ds):
    X, B_ref = ease_reference()
    B = EASERecommender.fit(ease_ds, float(EASE_L2))["B"]
    a, tau = 2.0, 1.5
    rec = EASERecommender(B, ease_ds, recency=a, recency_tau=tau)
    users = np.arange(ease_ds.n_users)
    got = rec.score(users)
    for u in users:
        items = EASE_SETS[int(ease_ds.user_raw[u])]  # time order; item j is dense id j, B_ref row j - 1
        w = {it - 1: 1 + a * math.exp(-(len(items) - 1 - pos) / tau) for pos, it in enumerate(items)}
        want = [float(sum(w.get(m, 0.0) * B_ref[m][j] for m in range(EASE_N))) for j in range(EASE_N)]
        assert got[u, 1:].tolist() == pytest.approx(want, abs=1e-5), f"user {u}"
    # user 2 (raw 3: items 1, 2, 3): the latest item weighs 1 + a, the first 1 + a e^(-2 / tau)
    x = ease_ds.seen_matrix(a, tau)[2].toarray()[0]
    assert x[1:4].tolist() == pytest.approx([1 + a * math.exp(-2 / tau), 1 + a * math.exp(-1 / tau), 1 + a])
    assert torch.equal(EASERecommender(B, ease_ds, recency=0.0).score(users), EASERecommender(B, ease_ds).score(users))


# ---------------------------------------------------------------- EASE on items near each other in time

WINDOW_SETS = {1: [10, 20, 30, 40], 2: [30, 10], 3: [20, 40, 10]}  # time order; raw 10*j is dense id j


def test_gram_matrix_in_column_blocks_is_x_transpose_x(window_ds, monkeypatch):
    X = window_ds.seen_matrix()[:, 1:].toarray().astype(np.float64)
    monkeypatch.setattr(recommend, "GRAM_BLOCK", 3)  # several blocks and a short last one
    np.testing.assert_array_equal(cooccurrence(window_ds).numpy(), X.T @ X)


def test_ease_refuses_a_catalogue_beyond_free_memory(window_ds, monkeypatch):
    need = recommend.ease_bytes(window_ds.n_items)
    assert need == 2 * 4 * (window_ds.n_items + 1) ** 2
    monkeypatch.setattr(recommend, "free_bytes", lambda device: need - 1)
    with pytest.raises(InputError, match="ease: .* need 2 dense .* matrices .* use --model multvae or sasrec"):
        EASERecommender.fit(window_ds, 10.0)


@pytest.fixture(scope="module")
def window_ds(tmp_path_factory) -> Dataset:
    out = tmp_path_factory.mktemp("window") / "ds"
    build_dataset(raw_from_sets(WINDOW_SETS), out, holdout=False, name="window")
    return Dataset(out)


def test_windowed_cooccurrence_by_hand(window_ds):
    tau = 2.0
    one, two = 1.0, math.exp(-1 / tau)  # weights of pairs 1 and 2 steps apart
    want = np.zeros((4, 4))
    # user 1: 1 2 3 4 -> (1,2) (2,3) (3,4) at 1 step, (1,3) (2,4) at 2; (1,4) is 3 apart: out of the window
    # user 2: 3 1 -> (3,1) at 1 step.  user 3: 2 4 1 -> (2,4) (4,1) at 1 step, (2,1) at 2
    for (a, b), w in {(1, 2): one + two, (2, 3): one, (3, 4): one, (1, 3): two + one, (2, 4): two + one,
                      (1, 4): one}.items():
        want[a - 1, b - 1] = want[b - 1, a - 1] = w
    np.fill_diagonal(want, [3, 2, 2, 2])  # how often each item occurs
    got = cooccurrence(window_ds, window=2, tau=tau)
    assert got.dtype == torch.float32 and got.shape == (4, 4)
    assert np.allclose(got.numpy(), want, atol=1e-6), f"\n{got}\nvs\n{want}"


def test_pair_weight_scales_each_pair_by_hand(window_ds):
    """pair_weight multiplies each pair's weight: here pairs 2 steps apart count 3 times, 1 step apart 0 times."""
    tau = 2.0
    got = cooccurrence(window_ds, window=2, tau=tau, pair_weight=lambda a, d: torch.full((len(a),), 3.0 * (d - 1)))
    want = np.zeros((4, 4))
    for (a, b), n in {(1, 2): 1, (1, 3): 1, (2, 4): 1}.items():  # the 2-step pairs of test_windowed_... above
        want[a - 1, b - 1] = want[b - 1, a - 1] = 3.0 * n * math.exp(-1 / tau)
    np.fill_diagonal(want, [3, 2, 2, 2])  # the diagonal keeps each item's count
    assert np.allclose(got.numpy(), want, atol=1e-6), f"\n{got}\nvs\n{want}"
    ones = cooccurrence(window_ds, window=2, tau=tau, pair_weight=lambda a, d: torch.ones(len(a)))
    assert torch.equal(ones, cooccurrence(window_ds, window=2, tau=tau))


def test_wide_window_without_decay_is_the_plain_gram(ease_ds, window_ds):
    for ds in (ease_ds, window_ds):
        plain = cooccurrence(ds)
        X = ds.seen_matrix()[:, 1:].toarray()
        assert torch.equal(plain, torch.from_numpy((X.T @ X).astype(np.float32)))
        assert torch.allclose(cooccurrence(ds, window=1000, tau=1e12), plain, atol=1e-5)
    narrow = cooccurrence(window_ds, window=1, tau=1e12)
    assert not torch.allclose(narrow, cooccurrence(window_ds)), "window 1 drops pairs"


def ease_from_gram(G: np.ndarray, l2: float, power: float = 1.0) -> np.ndarray:
    """Reference B = -P / diag(P)^power with a zero diagonal, P = (G + l2 I)^-1, by numpy's inverse."""
    P = np.linalg.inv(G + l2 * np.eye(len(G)))
    B = -P / np.diag(P)[None, :] ** power
    np.fill_diagonal(B, 0.0)
    return B


def test_ease_fit_with_window_and_diag_power(window_ds):
    l2, g = 0.5, 0.5
    G = cooccurrence(window_ds, window=2, tau=2.0).double().numpy()
    for power in (1.0, g, 0.0):
        B = EASERecommender.fit(window_ds, l2, window=2, window_tau=2.0, diag_power=power)["B"]
        want = ease_from_gram(G, l2, power)
        assert torch.all(B[0] == 0) and torch.all(B[:, 0] == 0)
        assert np.allclose(B[1:, 1:].numpy(), want, atol=1e-5), power
    # power 1 is plain EASE on the same Gram: the default
    assert torch.equal(EASERecommender.fit(window_ds, l2, window=2, window_tau=2.0)["B"],
                       EASERecommender.fit(window_ds, l2, window=2, window_tau=2.0, diag_power=1.0)["B"])
    # against power 1, power 0 scales column j by diag(P)_j of the plain Gram
    col0 = np.abs(EASERecommender.fit(window_ds, l2, diag_power=0.0)["B"][1:, 1:].numpy()).sum(0)
    col1 = np.abs(EASERecommender.fit(window_ds, l2)["B"][1:, 1:].numpy()).sum(0)
    X = window_ds.seen_matrix()[:, 1:].toarray()
    assert np.allclose(col0 / col1, np.diag(np.linalg.inv(X.T @ X + l2 * np.eye(4))), rtol=1e-4)


def test_ease_fits_a_windowed_gram_that_is_not_positive_definite(tmp_path):
    build_dataset(raw_from_sets({1: [10, 20, 30]}), tmp_path / "ds", holdout=False, name="chain")
    ds = Dataset(tmp_path / "ds")
    G = cooccurrence(ds, window=1).double().numpy()
    assert G.tolist() == [[1, 1, 0], [1, 1, 1], [0, 1, 1]]  # eigenvalues 1 - sqrt(2), 1, 1 + sqrt(2)
    l2 = 0.1
    B = EASERecommender.fit(ds, l2, window=1)["B"]
    assert np.allclose(B[1:, 1:].numpy(), ease_from_gram(G, l2), atol=1e-5)


class _RiggedScores:
    """Scores that put padding first and the user's own items next: top_k must skip all of them."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def score(self, users: np.ndarray) -> torch.Tensor:
        sc = -torch.arange(self.ds.n_items + 1, dtype=torch.float32).repeat(len(users), 1)  # [B, V]
        for r, u in enumerate(users):
            sc[r, torch.from_numpy(self.ds.sequence(int(u)))] = 100.0
        sc[:, 0] = 1000.0
        return sc


def test_top_k_masks_padding_and_seen_even_when_they_score_highest(ease_ds):
    users = np.arange(ease_ds.n_users)
    ids, scores = top_k(_RiggedScores(ease_ds), ease_ds, users, 2, batch_size=2)
    for u in users:
        seen = set(ease_ds.sequence(int(u)).tolist())
        unseen = [i for i in range(1, EASE_N + 1) if i not in seen]
        assert ids[u].tolist() == unseen[:2], f"user {u}: {ids[u].tolist()} (seen {sorted(seen)})"
        assert scores[u].tolist() == [-float(i) for i in unseen[:2]]


def test_mask_seen_writes_minus_inf_on_seen_items_and_padding_alone(ease_ds):
    users = np.array([6, 0, 2, 2, 4])  # any order, a user twice
    scores = torch.arange(len(users) * (EASE_N + 1), dtype=torch.float32).view(len(users), -1)
    before = scores.clone()
    recommend.mask_seen(scores, ease_ds, users)
    for r, u in enumerate(users):
        seen = set(ease_ds.sequence(int(u)).tolist()) | {0}
        for i in range(EASE_N + 1):
            expected = float("-inf") if i in seen else before[r, i].item()
            assert scores[r, i].item() == expected, (u, i)


def test_bf16_encoder_scores_stay_close_and_independent_of_the_batch_size():
    ds = Dataset.__new__(Dataset)  # a stand-in with what SASRecRecommender and top_k read
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, 40)
    ds.indptr = np.concatenate([[0], np.cumsum(lengths)])
    ds.items = np.concatenate([rng.choice(np.arange(1, 21), n, replace=False) for n in lengths])
    model = tiny_model(layers=2, max_len=8)
    rec = recommend.SASRecRecommender(model, ds, torch.device("cpu"))
    users = np.arange(len(lengths))
    full_ids, full_scores = top_k(rec, ds, users, 5, batch_size=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        runs = [top_k(rec, ds, users, 5, batch_size=b) for b in (1, 7, 64)]
    for ids, scores in runs[1:]:  # the same bits whatever the batch size
        assert np.array_equal(ids, runs[0][0]) and np.array_equal(scores, runs[0][1])
    ids, scores = runs[0]
    assert not np.array_equal(scores, full_scores), "autocast did not reach the encoder"
    np.testing.assert_allclose(scores, full_scores, rtol=0.05, atol=0.05)
    assert (ids[:, 0] == full_ids[:, 0]).mean() >= 0.9


# ---------------------------------------------------------------- full softmax (ce)

def tiny_model(n_items: int = 20, **kw) -> SASRec:
    torch.manual_seed(0)
    a = dict(n_items=n_items, hidden=16, layers=1, heads=2, dropout_attn=0.0, dropout_hidden=0.0, max_len=6,
             init_std=0.3)
    a.update(kw)
    return SASRec(SASRecArgs(**a)).eval()


def tiny_batch(n_items: int = 20, L: int = 6, seed: int = 0) -> dict:
    """3 left-padded windows, targets = inputs shifted by one."""
    rng = np.random.default_rng(seed)
    inp = np.zeros((3, L), np.int64)
    tgt = np.zeros((3, L), np.int64)
    for b, n in enumerate([7, 4, 2]):
        seq = rng.choice(np.arange(1, n_items + 1), n, replace=False)
        m = min(n - 1, L)
        inp[b, L - m:], tgt[b, L - m:] = seq[-m - 1:-1], seq[-m:]
    return {"input": torch.from_numpy(inp), "target": torch.from_numpy(tgt)}


def manual_ce(rows: list[list[float]], targets: list[int]) -> float:
    """Mean of -log softmax(row)[t] by plain math (log-sum-exp), -inf entries contributing nothing."""
    terms = []
    for row, t in zip(rows, targets):
        mx = max(x for x in row if x != -math.inf)
        lse = mx + math.log(sum(math.exp(x - mx) for x in row if x != -math.inf))
        terms.append(lse - row[t])
    return sum(terms) / len(terms)


def test_ce_loss_matches_cross_entropy_and_manual_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    logits[:, 0] = -math.inf  # the padding column, as train_loss passes it
    target = torch.tensor([1, 6, 3, 3, 2])
    got = ce_loss(logits, target)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-12)
    assert got.item() == pytest.approx(manual_ce(logits.tolist(), target.tolist()), rel=1e-12)


def test_train_loss_ce_gives_padding_no_probability():
    model = tiny_model(tied=False)
    with torch.no_grad():  # a padding output row that would take much of the mass if it were scored
        model.out_emb.weight[0] = 5 * torch.randn(model.args.hidden, generator=torch.Generator().manual_seed(1))
    batch = tiny_batch()
    got = train_loss(model, batch, "ce")
    with torch.no_grad():
        h = model(batch["input"])
        mask = batch["target"] != 0
        logits = (h[mask] @ model.output_embeddings().T).double()  # [N, V]
        targets = batch["target"][mask].tolist()
        over_real = manual_ce([r[1:] for r in logits.tolist()], [t - 1 for t in targets])
        with_padding = manual_ce(logits.tolist(), targets)
    assert abs(with_padding - over_real) > 1e-2, "the test must tell the two apart"
    assert got.item() == pytest.approx(over_real, rel=1e-4), f"got {got.item()}, with padding {with_padding}"
    got.backward()
    grad0 = model.out_emb.weight.grad[0]
    assert torch.all(grad0 == 0), "the padding output row receives gradient: id 0 is scored"


# ---------------------------------------------------------------- sampled softmax (shared negatives)

def sampled_reference(pos: list[float], neg: list[list[float]], targets: list[int], shared: list[int],
                      exclude: bool, logq: list[float] | None = None) -> float:
    terms = []
    for p, row, t in zip(pos, neg, targets):
        if logq is not None:
            p = p - logq[t]
        ns = [(x - logq[s] if logq is not None else x) for x, s in zip(row, shared) if not (exclude and s == t)]
        mx = max([p] + ns)
        lse = mx + math.log(sum(math.exp(x - mx) for x in [p] + ns))
        terms.append(lse - p)
    return sum(terms) / len(terms)


def shared_batch():
    batch = tiny_batch()
    targets = batch["target"][batch["target"] != 0].tolist()
    # two targets of the batch (one twice), plus ids that are nobody's target
    non_targets = [i for i in range(1, 21) if i not in targets][:3]
    shared = [targets[0], non_targets[0], targets[3], non_targets[1], targets[0], non_targets[2]]
    batch["shared"] = torch.tensor(shared)
    return batch, targets, shared


def raw_logits(model, batch):
    with torch.no_grad():
        h = model(batch["input"])[batch["target"] != 0]
        E = model.output_embeddings()
        targets = batch["target"][batch["target"] != 0]
        pos = [float(h[n] @ E[t]) for n, t in enumerate(targets.tolist())]
        neg = [[float(h[n] @ E[s]) for s in batch["shared"].tolist()] for n in range(len(targets))]
    return pos, neg


def test_sampled_softmax_excludes_colliding_negatives():
    model = tiny_model()
    batch, targets, shared = shared_batch()
    assert sum(t in shared for t in targets) >= 2
    got = train_loss(model, batch, "sampled")
    pos, neg = raw_logits(model, batch)
    want = sampled_reference(pos, neg, targets, shared, exclude=True)
    naive = sampled_reference(pos, neg, targets, shared, exclude=False)
    assert abs(want - naive) > 1e-3, "the test must tell the two apart"
    assert got.item() == pytest.approx(want, rel=1e-5), f"got {got.item()}, naive {naive}"
    model.zero_grad()
    got.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sampled_softmax_with_logq_correction():
    model = tiny_model()
    batch, targets, shared = shared_batch()
    q = np.arange(1, 21, dtype=np.float64) ** 2  # strongly non-uniform (uniform q would cancel out)
    q = q / q.sum()
    logq = [0.0] + np.log(q).tolist()
    batch["log_q"] = torch.tensor(logq, dtype=torch.float32)
    got = train_loss(model, batch, "sampled")
    pos, neg = raw_logits(model, batch)
    want = sampled_reference(pos, neg, targets, shared, exclude=True, logq=logq)
    plain = sampled_reference(pos, neg, targets, shared, exclude=True)
    assert abs(want - plain) > 1e-3
    assert got.item() == pytest.approx(want, rel=1e-5), f"got {got.item()}, without logQ {plain}"
    got.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sampled_softmax_loss_every_negative_masked_is_zero():
    """A position whose only negatives all equal its target: the positive alone, loss 0, no NaN."""
    pos = torch.tensor([0.3, -1.2], requires_grad=True)
    neg = torch.tensor([[-math.inf, -math.inf], [0.5, -math.inf]])
    got = sampled_softmax_loss(pos, neg)
    want = (0.0 + (math.log(math.exp(-1.2) + math.exp(0.5)) + 1.2)) / 2
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()
    assert torch.isfinite(pos.grad).all()


# ---------------------------------------------------------------- shared negatives and log q

@pytest.fixture(scope="module")
def skewed_ds(tmp_path_factory) -> Dataset:
    """12 items; item raw 100 + j is watched by about 40 / (j + 1) of 40 users (item 100 by all)."""
    rng = np.random.default_rng(0)
    sets = {}
    for u in range(40):
        its = [100 + j for j in range(12) if rng.random() < 1.0 / (j + 1)]
        sets[u] = its or [100]
    out = tmp_path_factory.mktemp("skewed") / "ds"
    build_dataset(raw_from_sets(sets), out, holdout=False, name="skewed")
    return Dataset(out)


@pytest.mark.parametrize("dist", ["uniform", "pop"])
def test_shared_negatives_are_real_item_ids(skewed_ds, dist):
    sampler = NegativeSampler(skewed_ds, np.random.default_rng(0))
    for m in (1, 7, 500):
        neg = np.asarray(sampler.shared(m, dist))
        assert neg.shape == (m,)
        assert np.issubdtype(neg.dtype, np.integer)
        assert neg.min() >= 1 and neg.max() <= skewed_ds.n_items
    draws = np.asarray(sampler.shared(20_000, dist))
    assert set(draws.tolist()) == set(range(1, skewed_ds.n_items + 1)), "every real item can be drawn"


def test_pop_negatives_follow_popularity_and_log_q(skewed_ds):
    ds = skewed_ds
    counts = np.bincount(ds.items, minlength=ds.n_items + 1)[1:]  # interactions of ids 1..n
    sampler = NegativeSampler(ds, np.random.default_rng(3))
    n_draws = 200_000
    freq = np.bincount(sampler.shared(n_draws, "pop"), minlength=ds.n_items + 1)
    assert freq[0] == 0
    top, bottom = int(np.argmax(counts)) + 1, int(np.argmin(counts)) + 1
    assert counts[top - 1] > 2 * counts[bottom - 1]
    assert freq[top] > freq[bottom], "the most popular item must be drawn more than the least popular"

    for dist in ("uniform", "pop"):
        lq = np.asarray(sampler.log_q(dist), dtype=np.float64)
        assert lq.shape == (ds.n_items + 1,)
        assert lq[0] == 0.0
        assert np.all(np.isfinite(lq))
        assert np.exp(lq[1:]).sum() == pytest.approx(1.0, abs=1e-5), f"{dist}: q must sum to 1 over 1..n"
    assert np.allclose(np.exp(sampler.log_q("uniform")[1:]), 1.0 / ds.n_items, rtol=1e-5)
    # the pop log q is the distribution that shared(..., "pop") samples from
    q = np.exp(np.asarray(sampler.log_q("pop"), dtype=np.float64)[1:])
    emp = freq[1:] / n_draws
    assert np.allclose(emp, q, atol=4 * np.sqrt(q * (1 - q) / n_draws) + 1e-4), f"\n{emp}\nvs q\n{q}"
    # and q increases with popularity
    assert q[top - 1] > q[bottom - 1]
    for a in range(ds.n_items):
        for b in range(ds.n_items):
            if counts[a] > counts[b]:
                assert q[a] > q[b]


def test_make_batch_shared_and_logq(skewed_ds):
    ds = skewed_ds
    cfg = train_config(loss="sampled", negatives=9, sampled_dist="pop", logq=True, max_len=5)
    sampler = NegativeSampler(ds, np.random.default_rng(0))
    ends = np.asarray(ds.indptr[1:])[np.diff(ds.indptr) >= 2]
    batch = make_batch(ds, ends, sampler, cfg, torch.device("cpu"))
    assert batch["shared"].shape == (9,)
    assert int(batch["shared"].min()) >= 1 and int(batch["shared"].max()) <= ds.n_items
    assert batch["log_q"].shape == (ds.n_items + 1,)
    assert torch.allclose(batch["log_q"].double(), torch.from_numpy(np.asarray(sampler.log_q("pop"), np.float64)))
    assert "negatives" not in batch
    cfg2 = train_config(loss="sampled", negatives=9, logq=False, max_len=5)
    assert "log_q" not in make_batch(ds, ends, sampler, cfg2, torch.device("cpu"))


# ---------------------------------------------------------------- every flag end to end

DEMO_USERS = 200
FLAG_RUNS = {
    "ease": ["--model", "ease", "--l2", "100"],
    "ease-recency": ["--model", "ease", "--l2", "100", "--recency", "2", "--recency-tau", "5"],
    "preset-ease": ["--preset", "ease-recent", "--l2", "100"],
    "ease-window": ["--model", "ease", "--l2", "100", "--window", "3", "--window-tau", "2", "--diag-power", "0.5"],
    "preset-ease-seq": ["--preset", "ease-seq", "--l2", "100"],
    "transition": ["--model", "transition", "--context", "5", "--context-tau", "2", "--ahead", "3",
                   "--ahead-tau", "1", "--ridge", "10"],
    "preset-transition": ["--preset", "transition", "--ridge", "10"],
    "ce": ["--loss", "ce"],
    "sampled": ["--loss", "sampled", "--negatives", "32"],
    "sampled-pop-logq": ["--loss", "sampled", "--negatives", "32", "--sampled-dist", "pop", "--logq"],
    "crops": ["--history", "crops"],
    "windows": ["--history", "windows"],
    "preln-finalln-untied": ["--pre-ln", "--final-ln", "--no-tied"],
    "bpr4": ["--negatives", "4", "--loss", "bpr"],
    "ema": ["--ema", "0.9"],
    "holdout-ce": ["--history", "holdout", "--loss", "ce", "--holdout-samples", "2"],
    "preset-holdout": ["--preset", "holdout-ce", "--max-len", "20", "--holdout-samples", "1"],
    "holdout-bpr": ["--history", "holdout", "--loss", "bpr", "--negatives", "4", "--holdout-last", "3",
                    "--holdout-random", "2"],
}
INFERENCE_RUNS = ("ease", "ease-recency", "ease-window", "transition", "preln-finalln-untied", "holdout-ce", "ema")


@pytest.fixture(scope="module")
def flag_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flags")
    ds = make_small_demo(tmp, DEMO_USERS, seed=1)
    base = ["--data", ds, "--epochs", "1", "--hidden", "16", "--no-progress"]
    names = list(FLAG_RUNS)
    procs = run_scripts(*[["02_train.py", *base, "--run-name", n, *FLAG_RUNS[n]] for n in names])
    train_procs = dict(zip(names, procs))
    subs = tmp / "subs"
    ok = [n for n in INFERENCE_RUNS if train_procs[n].returncode == 0]
    inf = run_scripts(*[["03_inference.py", ds / "runs" / n / "checkpoint.pt", "--out-dir", subs] for n in ok])
    return {"ds": ds, "train": train_procs, "inference": dict(zip(ok, inf)), "subs": subs}


@pytest.mark.parametrize("name", list(FLAG_RUNS))
def test_flag_trains_end_to_end(flag_runs, name):
    p = flag_runs["train"][name]
    assert p.returncode == 0, describe(p)
    assert "Traceback" not in p.stderr
    run_dir = flag_runs["ds"] / "runs" / name
    assert (run_dir / "checkpoint.pt").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(records) == 1 and records[0]["epoch"] == 0
    rec = records[0]
    if name.startswith(("ease", "preset-ease", "transition", "preset-transition")):
        assert "recall@10" in rec and math.isfinite(rec["recall@10"]) and 0 <= rec["recall@10"] <= 1
    else:
        assert math.isfinite(rec["loss"]) and rec["loss"] > 0
        assert math.isfinite(rec["recall@10"])
    cfg = flat_dict(json.loads((run_dir / "config.json").read_text()))
    if name == "preset-ease":  # the preset's other values, under the explicit --l2
        assert (cfg["model"], cfg["recency"], cfg["recency_tau"]) == ("ease", 2.0, 10.0)
    if name == "preset-ease-seq":
        assert (cfg["window"], cfg["window_tau"], cfg["recency"], cfg["l2"]) == (50, 20.0, 2.0, 100.0)
    if name == "preset-transition":
        assert (cfg["model"], cfg["context"], cfg["ahead"], cfg["ridge"]) == ("transition", 50, 10, 10.0)
    if name == "preset-holdout":
        assert (cfg["loss"], cfg["history"], cfg["batch_size"], cfg["pre_ln"]) == ("ce", "holdout", 128, True)
    flags = FLAG_RUNS[name]
    for flag, value in zip(flags, flags[1:] + [None]):  # each flag landed in the saved config
        if not flag.startswith("--"):
            continue
        key = flag[2:].replace("-", "_")
        if key.startswith("no_"):
            assert cfg[key[3:]] is False, (key, cfg)
        elif value is None or value.startswith("--"):
            assert cfg[key] is True, (key, cfg)
        else:
            assert str(cfg[key]) == value or cfg[key] == pytest.approx(float(value)), (key, cfg[key], value)


@pytest.mark.parametrize("flag, value", [("--window", "-1"), ("--window-tau", "0"), ("--diag-power", "-0.5"),
                                         ("--l2", "0"), ("--ema", "1.5")])
def test_bad_model_settings_are_refused(flag_runs, flag, value):
    p = run_script("02_train.py", "--data", flag_runs["ds"], "--model", "ease", "--no-progress", flag, value)
    assert_one_line_error(p, flag, value)


@pytest.mark.parametrize("name", INFERENCE_RUNS)
def test_inference_from_new_models(flag_runs, name):
    assert name in flag_runs["inference"], f"training of {name} failed"
    p = flag_runs["inference"][name]
    assert p.returncode == 0, describe(p)
    sub = pd.read_csv(flag_runs["subs"] / f"{name}.csv")
    assert list(sub.columns) == ["user", "item"]
    ds = Dataset(flag_runs["ds"])
    assert sorted(sub["user"].unique()) == sorted(ds.user_raw.tolist())
    assert (sub.groupby("user").size() == 10).all()
    assert (sub.groupby("user")["item"].nunique() == 10).all()
    assert sub["item"].isin(ds.item_raw[1:]).all(), "unknown (or padding) items in the submission"
    seen = {int(ds.user_raw[u]): set(ds.item_raw[ds.sequence(u)].tolist()) for u in range(ds.n_users)}
    overlap = [(u, i) for u, i in zip(sub["user"], sub["item"]) if i in seen[u]]
    assert not overlap, f"{len(overlap)} seen items recommended, e.g. {overlap[:3]}"


def test_gather_future_lists_the_next_items_of_the_same_user():
    from common.batches import gather_future, gather_windows
    # user 0: items 1..5 (flat 0..4); user 1: items 6..8 (flat 5..7)
    indptr = np.array([0, 5, 8])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    ends = np.array([4, 8])  # user 0's window stops before its last item; user 1's at its end
    future = gather_future(indptr, items, ends, max_len=3, horizon=3)  # [2, 3, 3]
    inp, target, _ = gather_windows(indptr, items, ends, max_len=3)
    assert np.array_equal(future[..., 0], target)
    # user 0: inputs [1, 2, 3] -> futures [2,3,4], [3,4,5], [4,5,0] (item 5 lies past the window
    # but still belongs to the user; nothing after it)
    assert future[0].tolist() == [[2, 3, 4], [3, 4, 5], [4, 5, 0]]
    # user 1: inputs [0, 6, 7] (left padding) -> [0,0,0], [7,8,0], [8,0,0]: never user 0's items
    assert inp[1].tolist() == [0, 6, 7]
    assert future[1].tolist() == [[0, 0, 0], [7, 8, 0], [8, 0, 0]]


def test_multi_target_ce_is_the_mean_over_real_targets():
    logits = torch.tensor([[-math.inf, 1.0, 2.0, 0.0], [-math.inf, 0.5, 0.5, 3.0]])
    target = torch.tensor([[1, 2], [3, 0]])  # the second row has one real target
    logp = torch.log_softmax(logits, dim=1)
    expected = -(logp[0, 1] + logp[0, 2] + logp[1, 3]) / 3
    assert torch.allclose(ce_loss(logits, target), expected)


def test_horizon_pairs_line_up_with_their_negatives(tmp_path):
    """With --horizon K every (position, future item) pair gets negatives unseen by its own user."""
    users = np.repeat([1, 2], [6, 5])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    raw = RawData(users=users, items=items, times=np.arange(11, dtype=float), source="t")
    build_dataset(raw, tmp_path / "d", holdout=False, name="d")
    ds = Dataset(tmp_path / "d")
    cfg = train_config(max_len=4, horizon=3, negatives=2, loss="bpr")
    sampler = NegativeSampler(ds, np.random.default_rng(0))
    batch = make_batch(ds, ds.indptr[1:].copy(), sampler, cfg, torch.device("cpu"))
    mask = batch["target"] != 0
    future = batch["future"][mask]
    rows, _ = torch.nonzero(future, as_tuple=True)
    user_of_row = batch["user"][mask][rows]  # each column's user
    assert len(batch["negatives"]) == int((future != 0).sum())
    for u, negs in zip(user_of_row.tolist(), batch["negatives"].tolist()):
        assert not set(negs) & set(ds.sequence(u).tolist())
    model = SASRec(SASRecArgs(n_items=ds.n_items, hidden=8, max_len=4))
    assert torch.isfinite(train_loss(model, batch, "bpr"))

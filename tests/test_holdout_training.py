"""Training on simulated hidden sets (`--history holdout`): the subset draw, the examples it builds,
the loss that leaves the input items out, and the flag's clean refusals."""
from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, make_small_demo, run_script

from common.batches import MIN_INPUT, holdout_cuts, holdout_examples, holdout_users, sample_subsets
from common.batches import NegativeSampler
from common.data import Dataset, build_dataset
from common.model import SASRec
from common.next_item import make_batch, train_loss, training_batches
from common.training import model_args, train_config
from test_training import make_raw

N_LAST, N_RANDOM, MAX_LEN = 2, 3, 4


@pytest.fixture(scope="module")
def seq_ds(tmp_path_factory) -> Dataset:
    """Users of 4..30 items, without a hold-out: lengths around the eligibility threshold of 8."""
    out = tmp_path_factory.mktemp("holdout") / "ds"
    build_dataset(make_raw([4, 7, 8, 9, 13, 30], n_items=40, seed=5), out, holdout=False, name="ho")
    return Dataset(out)


def test_sample_subsets_draws_every_subset_equally_often():
    n, k, draws = 5, 2, 40_000
    got = sample_subsets(np.full(draws, n), k, np.random.default_rng(0))
    assert got.shape == (draws, k)
    assert ((got >= 0) & (got < n)).all()
    assert (got[:, 0] != got[:, 1]).all(), "positions within a row are distinct"
    counts = Counter(map(tuple, np.sort(got, axis=1).tolist()))
    assert set(counts) == set(combinations(range(n), k)), "every 2-subset of 0..4 occurs, and nothing else"
    expected = draws / 10  # C(5, 2) = 10 subsets; binomial std ~ 60
    assert all(abs(c - expected) < 6 * 60 for c in counts.values()), counts


def test_sample_subsets_per_row_sizes():
    size = np.array([3, 3, 10, 1000])
    got = sample_subsets(np.repeat(size, 500), 3, np.random.default_rng(1))
    assert (got < np.repeat(size, 500)[:, None]).all()
    assert all(len(set(r)) == 3 for r in got.tolist())
    assert sorted(map(sorted, got[:500].tolist())) == [[0, 1, 2]] * 500, "a size-3 range has one 3-subset"
    assert sample_subsets(size, 0, np.random.default_rng(1)).shape == (4, 0)


def test_holdout_users_need_room_for_the_targets_and_an_input(seq_ds):
    users = holdout_users(seq_ds.indptr, N_LAST, N_RANDOM)
    need = N_LAST + N_RANDOM + MIN_INPUT
    assert users.tolist() == [u for u in range(seq_ds.n_users) if len(seq_ds.sequence(u)) >= need]
    assert 0 < len(users) < seq_ds.n_users


def test_holdout_examples_are_what_the_competition_hides(seq_ds):
    """Targets: the next N_LAST items after a cut plus N_RANDOM distinct earlier ones; input: the
    latest MAX_LEN earlier items that were not drawn, in order, left-padded; no overlap."""
    ds, rng = seq_ds, np.random.default_rng(2)
    users = np.repeat(holdout_users(ds.indptr, N_LAST, N_RANDOM), 2000)
    cuts = holdout_cuts(ds.indptr, users, N_LAST, N_RANDOM, rng)
    inp, targets, user = holdout_examples(ds.indptr, ds.items, cuts, rng, MAX_LEN, N_LAST, N_RANDOM)
    assert inp.shape == (len(users), MAX_LEN) and targets.shape == (len(users), N_LAST + N_RANDOM)
    assert (user == users).all()
    cuts_seen, dropped_pos = {}, {}
    for b, u in enumerate(users.tolist()):
        seq = ds.sequence(u).tolist()
        nxt, drop = targets[b, :N_LAST].tolist(), targets[b, N_LAST:].tolist()
        cut = seq.index(nxt[0])
        assert cuts[b] == ds.indptr[u] + cut
        assert nxt == seq[cut:cut + N_LAST], "the first targets are consecutive items from the cut"
        assert N_RANDOM + MIN_INPUT <= cut <= len(seq) - N_LAST
        assert len(set(drop)) == N_RANDOM and all(seq.index(i) < cut for i in drop), "dropped items precede the cut"
        kept = [i for i in seq[:cut] if i not in drop]
        n = min(MAX_LEN, len(kept))
        assert inp[b, :MAX_LEN - n].tolist() == [0] * (MAX_LEN - n), "left padding"
        assert inp[b, MAX_LEN - n:].tolist() == kept[-n:], "the latest undropped items, in order"
        assert not set(inp[b].tolist()) & set(targets[b].tolist())
        cuts_seen.setdefault(u, set()).add(cut)
        dropped_pos.setdefault(u, set()).update(seq.index(i) for i in drop)
    for u, got in cuts_seen.items():  # over many draws every allowed cut, and every earlier position, occurs
        n = len(ds.sequence(u))
        assert got == set(range(N_RANDOM + MIN_INPUT, n - N_LAST + 1)), (u, sorted(got))
        assert dropped_pos[u] == set(range(n - N_LAST)), (u, sorted(dropped_pos[u]))


def test_holdout_loss_leaves_the_input_items_out(seq_ds):
    """Full softmax at the last position over every item except padding and the items read."""
    cfg = train_config(history="holdout", loss="ce", max_len=MAX_LEN, holdout_last=N_LAST,
                            holdout_random=N_RANDOM, hidden=8, heads=1, layers=1)
    torch.manual_seed(0)
    model = SASRec(model_args(cfg, seq_ds))
    users = np.repeat(holdout_users(seq_ds.indptr, N_LAST, N_RANDOM), 2)
    sampler = NegativeSampler(seq_ds, np.random.default_rng(3))
    cuts = holdout_cuts(seq_ds.indptr, users, N_LAST, N_RANDOM, sampler.rng)
    batch = make_batch(seq_ds, cuts, sampler, cfg, torch.device("cpu"))
    assert (batch["input"][:, 0] != 0).any(), "columns that are padding in every row are trimmed"
    assert (batch["target"][:, :-1] == 0).all() and (batch["target"][:, -1] != 0).all(), "one target position"
    model.eval()  # same dropout state for both computations
    with torch.no_grad():
        got = train_loss(model, batch, "ce")
        logits = model(batch["input"])[:, -1] @ model.item_emb.weight.T  # [B, V]
        terms = []
        for row, inp, tgt in zip(logits, batch["input"], batch["future"][:, -1]):
            allowed = torch.ones_like(row, dtype=torch.bool)
            allowed[0] = False
            allowed[inp[inp != 0]] = False
            logp = row[allowed].log_softmax(0)
            index = torch.cumsum(allowed.long(), 0) - 1  # position of an allowed item in row[allowed]
            terms += [-logp[index[t]] for t in tgt.tolist()]
        want = torch.stack(terms).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    unmasked = F.log_softmax(logits.index_fill(1, torch.tensor([0]), -torch.inf), 1)
    assert -unmasked.gather(1, batch["future"][:, -1]).mean().item() > want.item(), "masking input items matters"


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    return make_small_demo(tmp_path_factory.mktemp("hodemo"), 60, seed=2)


@pytest.mark.parametrize("flags, fragments", [
    (["--horizon", "2"], ["--history holdout", "--horizon"]),
    (["--stage", "pretrain"], ["--history holdout", "--stage pretrain"]),
    (["--holdout-samples", "0"], ["--holdout-samples"]),
    (["--holdout-last", "400"], ["no user has", "--holdout-last"]),
])
def test_holdout_history_refuses_bad_settings(small_demo, flags, fragments):
    p = run_script("02_train.py", "--data", small_demo, "--history", "holdout", "--epochs", "1", "--no-progress", *flags)
    assert_one_line_error(p, *fragments)


def test_holdout_batches_cover_each_user_and_group_similar_lengths(seq_ds):
    cfg = train_config(history="holdout", max_len=MAX_LEN, holdout_last=N_LAST, holdout_random=N_RANDOM,
                            holdout_samples=3, batch_size=2)
    batches = training_batches(seq_ds, cfg, np.random.default_rng(4))
    cuts = np.concatenate(batches)
    users = np.searchsorted(seq_ds.indptr, cuts, side="right") - 1
    eligible = holdout_users(seq_ds.indptr, N_LAST, N_RANDOM)
    assert sorted(users.tolist()) == sorted(np.repeat(eligible, 3).tolist()), "holdout_samples cuts per user"
    # bucketed: the input lengths min(cut, max_len) within a batch are neighbours in sorted order
    lengths = [np.minimum(b - seq_ds.indptr[np.searchsorted(seq_ds.indptr, b, side="right") - 1], MAX_LEN)
               for b in batches]
    order = sorted(lengths, key=lambda x: x.min())
    for a, b in zip(order, order[1:]):
        assert a.max() <= b.min()

"""S3-Rec pretraining: masking, segments, attribute targets, the four objectives, and fit/resume/load."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

import common.pretrain as pretrain_mod
from common.batches import batch_bounds, epoch_batches, window_ends
from common.data import Dataset, build_dataset
from common.io import InputError
from common.model import SASRec, SASRecArgs
from common.checkpoint import load_checkpoint
from common.losses import attribute_bce
from common.losses import attribute_loss as aap_loss
from common.losses import attribute_loss as map_loss
from common.losses import bilinear_bce_loss as mip_loss
from common.losses import bilinear_bce_loss as sp_loss
from common.pretrain import (PretrainConfig, S3RecPretrainer, attribute_multi_hot, fit_pretrain,
                             load_pretrained_encoder, make_pretrain_batch, pretrain_loss)
from common.readers import RawData
from common.utils import TrainingError
from conftest import assert_one_line_error, describe, run_script

N_ITEMS = 30
GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance")
MAX_LEN = 8
STEPS = 100


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Dataset:
    """Users with 1..20 distinct items (raw ids 1000 + k), every item with 1-3 genres."""
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for u, n in enumerate([2, 3, 5, 9, 13, 20, 4, 8, 1, 6, 11, 3]):
        its = rng.choice(N_ITEMS, size=n, replace=False) + 1000
        users += [100 + u] * n
        items += its.tolist()
        times += list(range(n))
    extra = np.setdiff1d(np.arange(N_ITEMS) + 1000, items)  # every item occurs, so n_items is exact
    users += [999] * len(extra)
    items += extra.tolist()
    times += list(range(len(extra)))
    g_items, g_values = [], []
    for item in range(1000, 1000 + N_ITEMS):
        for g in rng.choice(GENRES, size=int(rng.integers(1, 4)), replace=False):
            g_items.append(item)
            g_values.append(str(g))
    raw = RawData(users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
                  times=np.asarray(times, np.float64), source="test",
                  side={"genres": pd.DataFrame({"item": np.asarray(g_items, np.int64), "value": g_values})})
    out = tmp_path_factory.mktemp("pre") / "ds"
    build_dataset(raw, out, holdout=False, name="pre")
    d = Dataset(out)
    assert d.n_items == N_ITEMS and len(d.attributes()[2]) == len(GENRES)
    return d


def tiny_args(ds: Dataset, **kw) -> SASRecArgs:
    a = dict(n_items=ds.n_items, hidden=16, layers=1, heads=2, dropout_attn=0.0, dropout_hidden=0.0, max_len=MAX_LEN)
    a.update(kw)
    return SASRecArgs(**a)


def one_batch(ds: Dataset, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ends = window_ends(ds.indptr, MAX_LEN, "windows", rng)
    return make_pretrain_batch(ds, ends, rng, MAX_LEN, 0.2, attribute_multi_hot(ds))


def real(row: torch.Tensor) -> list[int]:
    return [int(x) for x in row if x != 0]


# ---------------------------------------------------------------- batches

def test_windows_are_the_training_sequences(ds):
    b = one_batch(ds)
    seq = b["seq"].numpy()
    for row, user in zip(seq, b["user"].numpy()):
        items = row[row != 0]
        assert (row[:len(row) - len(items)] == 0).all(), "left padding only"
        full = ds.sequence(user)
        assert len(items) >= 2
        assert any(np.array_equal(items, full[max(s - MAX_LEN, 0):s]) for s in range(2, len(full) + 1)), \
            "a window is a contiguous run of the user's sequence"
    assert b["seq"].shape[1] == (seq != 0).sum(1).max(), "all-padding columns are trimmed"


def test_mip_masks_real_positions_at_least_one_per_row(ds):
    for seed in range(5):
        b = one_batch(ds, seed)
        mask, seq = b["mip_mask"], b["seq"]
        assert (seq[mask] != 0).all(), "padding is never masked"
        assert mask.any(1).all(), "every row has a masked position"
        assert torch.equal(b["mip_pos"], seq[mask]), "targets are the masked items in row-major order"
        users = b["user"][:, None].expand_as(seq)[mask]
        for u, neg in zip(users.tolist(), b["mip_neg"].tolist()):
            assert 1 <= neg <= ds.n_items and neg not in ds.sequence(u), "a negative is an item the user never saw"


def test_mip_never_sees_the_masked_item(ds):
    torch.manual_seed(0)
    P = S3RecPretrainer(tiny_args(ds), len(GENRES)).eval()
    b = one_batch(ds)
    seq, mask = b["seq"], b["mip_mask"]
    with torch.no_grad():
        x = P.masked_input(seq, mask)
        L = seq.shape[1]
        pos = P.encoder.pos_emb(torch.arange(L - 1, -1, -1))  # [L, H], last position is 0
        want_masked = P.mask_emb + pos[None].expand(len(seq), -1, -1)
        assert torch.allclose(x[mask], want_masked[mask]), "a masked position holds mask_emb + its position"
        assert torch.allclose(x[~mask], P.encoder.embed(seq)[~mask]), "other positions are unchanged"

        # replace every masked item by another real item: nothing the encoder computes changes
        other = seq.clone()
        other[mask] = other[mask] % ds.n_items + 1
        assert not torch.equal(other, seq)
        assert torch.equal(P.masked_hidden(seq, mask), P.masked_hidden(other, mask))
        w = {"mip": 1.0, "map": 0.0}
        assert pretrain_loss(P, b, w)[0].item() == pretrain_loss(P, {**b, "seq": other}, w)[0].item()

        # while changing an unmasked item does change them (the check above can fail)
        r, c = [int(i) for i in torch.nonzero(~mask & (seq != 0))[0]]
        visible = seq.clone()
        visible[r, c] = visible[r, c] % ds.n_items + 1
        assert not torch.allclose(P.masked_hidden(seq, mask)[r], P.masked_hidden(visible, mask)[r])


def test_sp_positive_segment_is_the_masked_span_and_negative_comes_from_another_row(ds):
    for seed in range(5):
        b = one_batch(ds, seed)
        seq, sp_mask = b["seq"], b["sp_mask"]
        assert b["sp_valid"].all()
        for i in range(len(seq)):
            n = int((seq[i] != 0).sum())
            cols = torch.nonzero(sp_mask[i])[:, 0].tolist()
            assert cols == list(range(cols[0], cols[0] + len(cols))), "one contiguous segment"
            assert 1 <= len(cols) <= n // 2
            assert (seq[i, cols] != 0).all()
            pos = real(b["sp_pos"][i])
            assert pos == seq[i, cols].tolist(), "the positive is the same row's masked span, in order"
            j = int(b["sp_other"][i])
            assert j != i
            neg, other_items = real(b["sp_neg"][i]), real(seq[j])
            n_j = len(other_items)
            assert len(neg) == min(len(pos), n_j)
            starts = [s for s in range(n_j - len(neg) + 1) if other_items[s:s + len(neg)] == neg]
            assert starts, f"row {i}: negative {neg} is not a contiguous span of row {j} {other_items}"
            if len(neg) == len(pos) and not set(neg) & set(seq[i].tolist()):
                assert neg != pos


def test_sp_context_does_not_see_the_segment(ds):
    torch.manual_seed(0)
    P = S3RecPretrainer(tiny_args(ds), len(GENRES)).eval()
    b = one_batch(ds)
    seq, sp_mask = b["seq"], b["sp_mask"]
    other = seq.clone()
    other[sp_mask] = other[sp_mask] % ds.n_items + 1
    with torch.no_grad():
        assert torch.equal(P.masked_hidden(seq, sp_mask)[:, -1], P.masked_hidden(other, sp_mask)[:, -1])


def test_a_batch_of_one_row_has_no_sp_negative(ds):
    rng = np.random.default_rng(0)
    ends = window_ends(ds.indptr, MAX_LEN, "last", rng)[:1]
    b = make_pretrain_batch(ds, ends, rng, MAX_LEN, 0.2, attribute_multi_hot(ds))
    assert not b["sp_valid"].any()
    P = S3RecPretrainer(tiny_args(ds), len(GENRES))
    total, values = pretrain_loss(P, b, PretrainConfig().weights())
    assert math.isfinite(total.item()) and values["sp"] == 0.0
    assert batch_bounds(513, 256) == [(0, 256), (256, 513)], "a last batch of one joins the previous one"
    assert batch_bounds(1, 256) == [(0, 1)]


def test_aap_and_map_targets_match_the_attribute_table(ds):
    indptr, ids, names = ds.attributes()
    table = attribute_multi_hot(ds)
    assert table.shape == (ds.n_items + 1, len(names)) and not table[0].any()
    b = one_batch(ds)
    seq = b["seq"]
    assert b["aap_items"].tolist() == sorted(set(seq[seq != 0].tolist())), "AAP covers the batch's distinct items"
    for key_items, key_target in (("aap_items", "aap_target"), ("mip_pos", "map_target")):
        for item, row in zip(b[key_items].tolist(), b[key_target]):
            want = sorted(ids[indptr[item]:indptr[item + 1]].tolist())
            assert want, "every tiny item has a genre"
            assert (torch.nonzero(row)[:, 0] + 1).tolist() == want, f"{key_target} of item {item}"


def test_epoch_batches_cover_every_window_once_and_bucket_by_length(ds):
    rng = np.random.default_rng(0)
    ends = window_ends(ds.indptr, MAX_LEN, "windows", rng)
    for bucket in (False, True):
        batches = epoch_batches(ds.indptr, ends, MAX_LEN, 4, rng, bucket)
        assert sorted(np.concatenate(batches).tolist()) == sorted(ends.tolist())
    user = np.searchsorted(ds.indptr, ends - 1, side="right") - 1
    length = dict(zip(ends.tolist(), np.minimum(ends - ds.indptr[user], MAX_LEN).tolist()))
    spans = sorted((min(length[e] for e in b), max(length[e] for e in b)) for b in batches)
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:])), "bucketed batches do not overlap in length"


# ---------------------------------------------------------------- the objectives by hand

def test_attribute_bce_and_aap_map_by_hand():
    # z_na = q_n · a_a; loss = mean_n Σ_a -(t log σ(z) + (1 - t) log(1 - σ(z)))
    q = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    attrs = torch.tensor([[2.0, 1.0], [0.0, 3.0], [-1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    z = [[2.0, 0.0, -1.0], [0.0, -3.0, -1.5]]
    terms = [sum(-math.log(sig(zz)) if tt else -math.log(1 - sig(zz)) for zz, tt in zip(zr, tr))
             for zr, tr in zip(z, t.tolist())]
    want = sum(terms) / 2
    assert attribute_bce(q, attrs, t).item() == pytest.approx(want, rel=1e-6)
    # AAP and MAP apply their head first: (W x + b) · a; with W = 2I, b = 0 the logits double
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(2 * torch.eye(2))
        head.bias.zero_()
    terms2 = [sum(-math.log(sig(2 * zz)) if tt else -math.log(1 - sig(2 * zz)) for zz, tt in zip(zr, tr))
              for zr, tr in zip(z, t.tolist())]
    assert aap_loss(q, attrs, t, head).item() == pytest.approx(sum(terms2) / 2, rel=1e-6)
    assert map_loss(q, attrs, t, head).item() == pytest.approx(sum(terms2) / 2, rel=1e-6)


def test_mip_and_sp_by_hand():
    # s± = (W h + b) · e±; loss = mean_n -log σ(s+) - log(1 - σ(s-))
    h = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    pos = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    neg = torch.tensor([[-1.0, 0.0], [2.0, -0.5]])
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))  # W h = (h0, h0 + h1)
        head.bias.copy_(torch.tensor([0.0, 0.5]))
    # W h + b: row 0 -> (1, 3.5); row 1 -> (0, -0.5)
    s_pos = [1 * 0.5 + 3.5 * 0.5, 0 * 1 + -0.5 * 1]  # [2.25, -0.5]
    s_neg = [1 * -1 + 3.5 * 0, 0 * 2 + -0.5 * -0.5]  # [-1.0, 0.25]
    want = sum(-math.log(sig(p)) - math.log(1 - sig(n)) for p, n in zip(s_pos, s_neg)) / 2
    assert mip_loss(h, pos, neg, head).item() == pytest.approx(want, rel=1e-6)
    assert sp_loss(h, pos, neg, head).item() == pytest.approx(want, rel=1e-6)
    # large logits stay finite: log-sigmoid, not log(σ + eps)
    big = mip_loss(h * 1e4, pos, -pos, nn.Identity())
    assert math.isfinite(big.item())


def test_pretrain_loss_is_the_weighted_sum(ds):
    torch.manual_seed(0)
    P = S3RecPretrainer(tiny_args(ds), len(GENRES)).eval()
    b = one_batch(ds)
    weights = PretrainConfig().weights()
    with torch.no_grad():
        total, values = pretrain_loss(P, b, weights)
        assert set(values) == {"aap", "mip", "map", "sp"}
        assert total.item() == pytest.approx(sum(weights[k] * v for k, v in values.items()), rel=1e-5)
        # untrained item and attribute vectors are small, so MIP ≈ 2 log 2 and AAP ≈ A log 2
        assert values["mip"] == pytest.approx(2 * math.log(2), rel=0.05)
        assert values["aap"] == pytest.approx(len(GENRES) * math.log(2), rel=0.05)
        # SP compares LayerNorm-ed hidden states (not small): recompute it from its parts
        ctx = P.masked_hidden(b["seq"], b["sp_mask"])[:, -1]
        pos, neg = P.segment_hidden(b["sp_pos"]), P.segment_hidden(b["sp_neg"])
        assert values["sp"] == pytest.approx(sp_loss(ctx, pos, neg, P.sp).item(), rel=1e-5)
        only, vals = pretrain_loss(P, b, {"mip": 1.0})
        assert vals["aap"] is None and only.item() == pytest.approx(values["mip"], rel=1e-6)


def test_loss_decreases_on_a_fixed_batch(ds):
    torch.manual_seed(0)
    P = S3RecPretrainer(tiny_args(ds), len(GENRES)).train()
    b = one_batch(ds)
    weights = PretrainConfig().weights()
    opt = torch.optim.Adam(P.parameters(), lr=1e-2)
    first = None
    for _ in range(STEPS):
        loss, values = pretrain_loss(P, b, weights)
        first = first or values
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, last = pretrain_loss(P, b, weights)
    for name in ("aap", "mip", "map", "sp"):
        assert last[name] < 0.7 * first[name], f"{name}: {first[name]:.4f} -> {last[name]:.4f} after {STEPS} steps"


# ---------------------------------------------------------------- fit, resume, load

def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def run_fit(ds, out, epochs, resume=False, **kw):
    return fit_pretrain(PretrainConfig(), ds, out, torch.device("cpu"), tiny_args(ds, dropout_hidden=0.2), epochs=epochs,
                        batch_size=4, lr=1e-2, seed=3, progress=False, resume=resume, **kw)


def test_fit_resume_and_load_encoder(ds, tmp_path):
    straight = run_fit(ds, tmp_path / "straight", 2)
    m = read_metrics(tmp_path / "straight")
    assert [r["epoch"] for r in m] == [0, 1]
    for r in m:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("loss", "aap", "mip", "map", "sp", "seconds"))
    run_fit(ds, tmp_path / "resumed", 1)
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:  # logged, but stopped before its checkpoint
        f.write(json.dumps({"epoch": 1, "loss": 999.0}) + "\n")
    run_fit(ds, tmp_path / "resumed", 2, resume=True)
    r = read_metrics(tmp_path / "resumed")
    assert [x["epoch"] for x in r] == [0, 1]
    for a, c in zip(m, r):
        for k in ("loss", "aap", "mip", "map", "sp"):
            assert a[k] == pytest.approx(c[k], abs=1e-6), f"epoch {a['epoch']} {k}: {a[k]} vs resumed {c[k]}"

    path = tmp_path / "straight" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["model_type"] == "sasrec" and ckpt["stage"] == "pretrain" and ckpt["epoch"] == 1
    assert ckpt["objectives"] == PretrainConfig().weights() and ckpt["mask_prob"] == 0.2
    for key in ("user_raw", "item_raw", "data_dir", "config", "optimizer", "numpy_rng", "torch_rng", "pretrain_state"):
        assert key in ckpt
    assert set(ckpt["state_dict"]) == set(SASRec(tiny_args(ds)).state_dict()), "state_dict is the encoder alone"

    model = SASRec(tiny_args(ds))
    load_pretrained_encoder(model, path, ds)
    model.eval()
    straight.eval()
    seq = one_batch(ds)["seq"]
    with torch.no_grad():
        assert torch.equal(model(seq), straight.encoder(seq))
        assert torch.equal(model(seq, causal=False), straight.encoder(seq, causal=False))

    with pytest.raises(InputError, match="hidden=16") as e:
        load_pretrained_encoder(SASRec(tiny_args(ds, hidden=8)), path)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="not found"):
        load_pretrained_encoder(model, tmp_path / "nothing.pt")


def test_resume_needs_a_checkpoint(ds, tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        run_fit(ds, tmp_path / "never", 1, resume=True)


def test_non_finite_loss_stops_with_a_clear_error(ds, tmp_path, monkeypatch):
    def nan_loss(pretrainer, batch, weights):
        return pretrainer.mask_emb.sum() * float("nan"), {k: float("nan") for k in weights}
    monkeypatch.setattr(pretrain_mod, "pretrain_loss", nan_loss)
    with pytest.raises(TrainingError, match="loss became nan at pretraining epoch 0 step 0"):
        run_fit(ds, tmp_path / "nan", 1)


# ---------------------------------------------------------------- through the scripts

def test_pretrain_then_finetune_through_02_train(ds):
    common = ["02_train.py", "--data", ds.root, "--layers", "1", "--max-len", str(MAX_LEN), "--batch-size", "4",
              "--epochs", "1", "--no-progress", "--threads", "1"]
    base = common + ["--hidden", "16"]
    p = run_script(*base, "--stage", "pretrain", "--history", "windows", "--sp-weight", "0.25")
    assert p.returncode == 0, describe(p)
    pre_dir = ds.root / "runs" / "pre-s3rec-pretrain-s42"
    ckpt = load_checkpoint(pre_dir / "checkpoint.pt")
    assert ckpt["stage"] == "pretrain" and ckpt["objectives"]["sp"] == 0.25 and ckpt["objectives"]["aap"] == 0.2
    assert json.loads((pre_dir / "config.json").read_text())["stage"] == "pretrain"
    assert len(read_metrics(pre_dir)) == 1

    p = run_script(*base, "--loss", "bpr", "--init-from", pre_dir.name)
    assert p.returncode == 0, describe(p)
    assert "encoder initialised from" in p.stdout
    tuned = load_checkpoint(ds.root / "runs" / "pre-sasrec-bpr-pt-s42" / "checkpoint.pt")
    assert tuned.get("stage") != "pretrain" and tuned["config"]["init_from"] == pre_dir.name

    # a pretraining checkpoint is not a recommender; mismatched settings and models are refused
    assert_one_line_error(run_script("03_inference.py", pre_dir / "checkpoint.pt", "--out-dir", ds.root / "subs"),
                          "pretraining checkpoint", "--init-from")
    assert_one_line_error(run_script(*common, "--hidden", "8", "--init-from", pre_dir / "checkpoint.pt"), "hidden=16", "hidden=8")
    assert_one_line_error(run_script(*base, "--init-from", "pre-sasrec-bpr-pt-s42"),
                          "not a pretraining checkpoint")
    assert_one_line_error(run_script(*base, "--model", "ease", "--init-from", pre_dir.name), "--init-from")

"""The user autoencoders (Mult-VAE, RecVAE) and the cloze model: they overfit tiny data, train through
02_train.py and score through 03_inference.py, and the cloze model never sees what it predicts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint
from common.cloze import ClozeModel, cloze_loss, cloze_masks
from common.data import Dataset, build_dataset
from common.model import SASRecArgs
from common.readers import RawData
from common.recommend import build_recommender, top_k
from common.training import fit, train_config
from common.io import InputError
from common.vae import ItemBag, MultVAE, RecVAE, VAEArgs, multihot, multinomial_nll
from common.utils import to_device
from conftest import describe, run_script

N_ITEMS = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Dataset:
    """12 users in 3 groups; a group's users share 6 items (in a fixed order) and add 2 of their own."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(12):
        group = np.arange(6) + 1 + 6 * (u % 3)
        own = rng.choice(np.arange(19, N_ITEMS + 1), size=2, replace=False)
        seq = np.concatenate([group, own])
        users += [u] * len(seq)
        items += seq.tolist()
    raw = RawData(users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
                  times=np.arange(len(users), dtype=np.float64), source="tiny")
    out = tmp_path_factory.mktemp("members") / "d"
    build_dataset(raw, out, holdout=False, name="tiny")
    return Dataset(out)


def train(tiny, tmp_path, model, epochs, **settings):
    cfg = train_config(data=str(tiny.root), model=model, epochs=epochs, progress=False, seed=1, **settings)
    torch.manual_seed(1)
    fit(cfg, tiny, tmp_path / model, torch.device("cpu"))
    metrics = [json.loads(line) for line in (tmp_path / model / "metrics.jsonl").read_text().splitlines()]
    return load_checkpoint(tmp_path / model / "checkpoint.pt"), metrics


@pytest.mark.parametrize("model, settings", [
    ("multvae", dict(vae_hidden=32, latent=8, input_dropout=0.0, anneal_steps=1000, batch_size=4, lr=1e-2)),
    ("recvae", dict(vae_hidden=32, latent=8, input_dropout=0.0, batch_size=4, lr=1e-2, enc_passes=1)),
])
def test_autoencoders_overfit_tiny_data(tiny, tmp_path, model, settings):
    ckpt, metrics = train(tiny, tmp_path, model, 150, **settings)
    floor = 8 * np.log(8)  # 8 items of a user, each at best 1/8 of the softmax
    assert metrics[0]["nll"] > floor + 5 and metrics[-1]["nll"] < floor + 1, (metrics[0]["nll"], metrics[-1]["nll"])
    rec = build_recommender(ckpt, tiny, torch.device("cpu"))
    scores = rec.score(np.arange(tiny.n_users))  # [U, V]
    assert torch.isinf(scores[:, 0]).all(), "padding never scores"
    for u in range(tiny.n_users):  # each user's own 8 items are its 8 best scores
        top = set(torch.topk(scores[u], 8).indices.tolist())
        assert top == set(tiny.sequence(u).tolist()), (u, top)


def test_cloze_overfits_tiny_data(tiny, tmp_path):
    ckpt, metrics = train(tiny, tmp_path, "cloze", 150, hidden=16, heads=1, layers=1, max_len=9, dropout_attn=0.0,
                          dropout_hidden=0.0, history="last", batch_size=12, lr=1e-2, cloze_prob=0.3)
    assert metrics[-1]["loss"] < metrics[0]["loss"] / 3
    model = ClozeModel(SASRecArgs(**ckpt["model_args"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    seq = torch.from_numpy(np.stack([tiny.sequence(u) for u in range(tiny.n_users)]))  # [U, 8], one group each
    hit = 0
    for pos in range(6):  # mask one shared item: the group's other items name it
        mask = torch.zeros_like(seq, dtype=torch.bool)
        mask[:, pos] = True
        with torch.no_grad():
            logits = model.score_all(model(seq, mask)[:, pos]).scatter(1, seq.masked_fill(mask, 0), -float("inf"))
        hit += int((logits.argmax(1) == seq[:, pos]).sum())
    assert hit >= 0.75 * 6 * tiny.n_users, f"{hit} of {6 * tiny.n_users} masked items found (chance: 1 in 17)"


def test_cloze_never_sees_its_masked_targets(tiny):
    torch.manual_seed(0)
    model = ClozeModel(SASRecArgs(n_items=tiny.n_items, hidden=16, heads=2, layers=2, max_len=9, dropout_attn=0.0,
                                  dropout_hidden=0.0)).eval()
    seq = torch.from_numpy(np.stack([tiny.sequence(u) for u in range(tiny.n_users)]))
    mask = torch.from_numpy(cloze_masks(seq.numpy(), 0.3, 0.5, np.random.default_rng(0)))
    other = seq.masked_fill(mask, 5)  # other items where the targets were
    with torch.no_grad():
        assert torch.equal(model(seq, mask), model(other, mask)), "the hidden states depend on a masked item"
        shown = seq.clone()
        shown[~mask] = (shown[~mask] % tiny.n_items) + 1
        assert not torch.equal(model(seq, mask), model(shown, mask)), "the visible items must matter"
    batch = {"seq": seq, "mask": mask}
    loss = cloze_loss(model, batch)
    assert torch.isfinite(loss) and loss > 0


def test_cloze_last_position_alone_matches_the_full_forward(tiny):
    """What recommending reads: the masked last position, computed alone in the top block."""
    torch.manual_seed(0)
    model = ClozeModel(SASRecArgs(n_items=tiny.n_items, hidden=16, heads=2, layers=2, max_len=9)).eval()
    seq = torch.from_numpy(np.stack([tiny.sequence(u) for u in range(tiny.n_users)]))
    seq[:3, :4] = 0  # some rows left-padded
    mask = torch.zeros_like(seq, dtype=torch.bool)
    mask[:, -1] = True
    with torch.no_grad():
        full, last = model(seq, mask), model(seq, mask, last=True)
    assert last.shape == (tiny.n_users, 1, 16)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-6)


def test_cloze_masks_cover_every_row_and_only_real_items():
    seq = np.array([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 7]])
    for seed in range(20):
        m = cloze_masks(seq, 0.2, 0.5, np.random.default_rng(seed))
        assert m.any(axis=1).all() and not (m & (seq == 0)).any()
    assert cloze_masks(seq, 0.0, 1.0, np.random.default_rng(0))[:, -1].all(), "--cloze-end 1 masks every last item"


def test_recvae_phases_step_one_half_each(tiny):
    model = RecVAE(VAEArgs(n_items=tiny.n_items, vae_hidden=8, latent=4)).train()
    model.start_epoch()
    x = to_device(multihot(tiny.seen_matrix(), np.arange(4)), torch.device("cpu"))
    for phase, trained, frozen in (("encoder", model.encoder, model.decoder), ("decoder", model.decoder, model.encoder)):
        model.zero_grad(set_to_none=True)
        model.loss(x, phase)[0].backward()
        assert all(p.grad is not None for p in trained.parameters()), phase
        assert all(p.grad is None for p in frozen.parameters()), phase
        assert all(p.grad is None for p in model.previous.parameters())


def test_multvae_anneals_its_kl_weight(tiny):
    model = MultVAE(VAEArgs(n_items=tiny.n_items, vae_hidden=8, latent=4, beta=0.2, anneal_steps=10)).train()
    x = to_device(multihot(tiny.seen_matrix(), np.arange(4)), torch.device("cpu"))
    betas = [model.loss(x)[1]["beta"] for _ in range(4)]
    assert betas == pytest.approx([0.0, 0.1, 0.2, 0.2])


def test_sparse_rows_match_the_dense_formulas():
    """The first layer and the likelihood over sparse rows equal the dense ones: normalise the row, multiply
    by the weight; -Σ x_i log softmax_i. Row 1 is empty, row 2 holds weighted values, column 0 is dropped."""
    import scipy.sparse as sp
    X = sp.csr_matrix(np.array([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 2.5, 0, 0.5], [0, 0, 1, 0, 0]], np.float32))
    x = to_device(multihot(X, np.array([2, 1, 0, 3])), torch.device("cpu"))
    xd = torch.from_numpy(X[[2, 1, 0, 3]].toarray()[:, 1:])
    assert torch.equal(torch.zeros(4, 4).index_put_((x["row"], x["item"]), x["value"]), xd)
    torch.manual_seed(0)
    bag = ItemBag(4, 3).eval()
    want = torch.nn.functional.normalize(xd, dim=1) @ bag.weight + bag.bias
    torch.testing.assert_close(bag(x, dropout=0.5), want)  # no dropout outside training
    assert torch.equal(bag(x)[1], bag.bias), "an empty row gives the bias alone"
    logits = torch.randn(4, 4)
    torch.testing.assert_close(multinomial_nll(logits, x), -(torch.log_softmax(logits, 1) * xd).sum(1))
    assert multinomial_nll(logits, x)[1] == 0
    bag.train()  # dropout keeps or zeroes whole entries, scaling the kept ones by 1 / (1 - p)
    outs = torch.stack([bag(x, dropout=0.5) - bag.bias for _ in range(2000)])
    torch.testing.assert_close(outs.mean(0), want - bag.bias, atol=0.03, rtol=0)
    torch.manual_seed(1)
    with torch.no_grad():
        ratio = (bag(x, dropout=0.5) - bag.bias)[3] / bag.weight[1]
    assert {round(float(v), 4) for v in ratio} <= {0.0, 2.0}


def test_autoencoders_load_a_dense_input_checkpoint():
    """Checkpoints that stored the first layer as nn.Linear ([width, n_items]) still load, transposed."""
    torch.manual_seed(0)
    model = MultVAE(VAEArgs(n_items=7, vae_hidden=5, latent=2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["encoder.weight"] = state["encoder.weight"].t().contiguous()  # [5, 7], as nn.Linear held it
    fresh = MultVAE(VAEArgs(n_items=7, vae_hidden=5, latent=2))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.encoder.weight, model.encoder.weight)


@pytest.mark.parametrize("model, settings", [
    ("multvae", dict(vae_hidden=16, latent=4, batch_size=4)),
    ("recvae", dict(vae_hidden=16, latent=4, batch_size=4)),
    ("cloze", dict(hidden=8, heads=1, layers=1, max_len=6, history="windows")),
])
def test_members_resume_exactly_and_refuse_another_shape(tiny, tmp_path, model, settings):
    straight, _ = train(tiny, tmp_path / "straight", model, 3, select="last", **settings)
    train(tiny, tmp_path / "resumed", model, 2, select="last", **settings)
    resumed, metrics = train(tiny, tmp_path / "resumed", model, 3, select="last", resume=True, **settings)
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    assert all(torch.equal(straight["state_dict"][k], v) for k, v in resumed["state_dict"].items())
    wider = {**settings, "latent" if "latent" in settings else "hidden": 12}
    with pytest.raises(InputError, match="resume with the same model settings"):
        train(tiny, tmp_path / "resumed", model, 4, select="last", resume=True, **wider)


@pytest.mark.parametrize("model, flags", [
    ("multvae", ["--vae-hidden", "16", "--latent", "4"]),
    ("recvae", ["--vae-hidden", "16", "--latent", "4"]),
    ("cloze", ["--hidden", "8", "--heads", "1", "--layers", "1", "--max-len", "6", "--history", "windows"]),
])
def test_members_through_the_scripts(tiny, tmp_path, model, flags):
    p = run_script("02_train.py", "--data", tiny.root, "--model", model, "--epochs", "2", "--no-progress",
                   "--threads", "1", "--run-name", f"script-{model}", *flags)
    assert p.returncode == 0, describe(p)
    ckpt = tiny.root / "runs" / f"script-{model}" / "checkpoint.pt"
    p = run_script("03_inference.py", ckpt, "--out-dir", tmp_path, "--k", "3", "--candidates", "5", "--threads", "1")
    assert p.returncode == 0, describe(p)
    rec = build_recommender(load_checkpoint(ckpt), tiny, torch.device("cpu"))
    ids, _ = top_k(rec, tiny, np.arange(tiny.n_users), 3)
    seen = [set(tiny.sequence(u).tolist()) for u in range(tiny.n_users)]
    assert all(not (set(row.tolist()) & s) for row, s in zip(ids, seen)), "seen items are never recommended"

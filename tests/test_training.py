"""Training: negative sampling, training windows, the loss step, and 02_train.py / 03_inference.py end to end."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, make_small_demo

import common.trainer as trainer_mod  # noqa: E402
from common.batches import (NegativeSampler, gather_packed, gather_windows, pack_rows, pack_windows,  # noqa: E402
                            window_ends)
from common.checkpoint import load_checkpoint  # noqa: E402
from common.config import flat_dict  # noqa: E402
from common.data import Dataset, build_dataset, pad_rows  # noqa: E402
from common.io import InputError  # noqa: E402
from common.model import SASRec, SASRecArgs  # noqa: E402
from common.next_item import train_loss  # noqa: E402
from common.readers import RawData  # noqa: E402
from common.recommend import build_recommender, evaluate  # noqa: E402
from common.training import fit, train_config  # noqa: E402
from common.utils import set_seed  # noqa: E402

ML_SMALL = ROOT.parent / "shared" / "data" / "ml-latest-small"
DEMO_USERS = 400  # users kept from the synthetic demo data, to keep each training run short


def train_args(epochs: int = 1) -> list[str]:
    """Small, quick settings for a training run on the demo subset."""
    return ["--hidden", "16", "--max-len", "20", "--epochs", str(epochs), "--no-progress", "--batch-size", "512"]



def run_script(script: str, *args, cwd: Path | None = None, expect_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=600)
    if expect_rc is not None and proc.returncode != expect_rc:
        pytest.fail(f"{script} {' '.join(map(str, args))} exited {proc.returncode}, expected {expect_rc}\n"
                    f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]



# ---------------------------------------------------------------- a tiny hand-made dataset

def make_raw(lengths: list[int], n_items: int, seed: int = 0) -> RawData:
    """Users 100, 101, ... with `lengths[i]` distinct items each (raw ids 1000 + k), times increasing."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u, n in enumerate(lengths):
        its = rng.choice(n_items, size=n, replace=False) + 1000
        users += [100 + u] * n
        items += its.tolist()
        times += sorted(rng.integers(0, 10_000, size=n).tolist())
    # make sure every item occurs somewhere, so that n_items is exact
    extra = np.setdiff1d(np.arange(n_items) + 1000, items)
    users += [999] * len(extra)
    items += extra.tolist()
    times += list(range(len(extra)))
    return RawData(users=np.asarray(users, np.int64), items=np.asarray(items, np.int64),
                   times=np.asarray(times, np.float64), source="test")


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory) -> Dataset:
    out = tmp_path_factory.mktemp("tiny") / "ds"
    build_dataset(make_raw([1, 2, 5, 13, 9, 25, 4, 8], n_items=40), out, holdout=False, name="tiny")
    ds = Dataset(out)
    assert ds.n_items == 40
    return ds


# ---------------------------------------------------------------- NegativeSampler

def test_negative_sampler_never_returns_padding_or_seen_items(tiny_ds):
    ds = tiny_ds
    sampler = NegativeSampler(ds, np.random.default_rng(0))
    users = np.repeat(np.arange(ds.n_users), 500)
    neg = sampler.sample(users, (4,))
    assert neg.shape == (len(users), 4)
    assert neg.min() >= 1 and neg.max() <= ds.n_items
    for u in range(ds.n_users):
        seen = set(ds.sequence(u).tolist())
        drawn = set(neg[users == u].ravel().tolist())
        assert not (drawn & seen), f"user {u} got its own training items {sorted(drawn & seen)} as negatives"
        # uniform over the unseen items: with 2000 draws every unseen item turns up
        assert drawn == set(range(1, ds.n_items + 1)) - seen


def test_negative_sampler_excludes_per_user_not_globally(tiny_ds):
    """An item seen by one user is still a valid negative for another."""
    ds = tiny_ds
    sampler = NegativeSampler(ds, np.random.default_rng(1))
    a, b = 3, 5  # users with 13 and 25 training items
    only_a = set(ds.sequence(a).tolist()) - set(ds.sequence(b).tolist())
    neg_b = sampler.sample(np.full(4000, b), (1,)).ravel()
    assert only_a & set(neg_b.tolist())


def test_negative_sampler_seen_bits_equal_the_key_search(tiny_ds, monkeypatch):
    """`seen` by the bit table and by the search of sorted keys (catalogues too large for the bits) agree on
    every (user, item) pair, and both equal the training sequences."""
    ds = tiny_ds
    users, items = np.divmod(np.arange(ds.n_users * (ds.n_items + 1)), ds.n_items + 1)
    want = np.zeros((ds.n_users, ds.n_items + 1), dtype=bool)
    for u in range(ds.n_users):
        want[u, ds.sequence(u)] = True
    bits = NegativeSampler(ds, np.random.default_rng(0))
    monkeypatch.setattr("common.batches.SEEN_BITSET_BYTES", 0)
    search = NegativeSampler(ds, np.random.default_rng(0))
    assert bits.bits is not None and search.bits is None
    assert np.array_equal(bits.seen(users, items), want.ravel())
    assert np.array_equal(search.seen(users, items), want.ravel())


def test_negative_sampler_heavy_user_gets_no_seen_items(tmp_path):
    """A user who has seen all but 3 of 20 items: every negative must still be one of those 3."""
    out = tmp_path / "ds"
    build_dataset(make_raw([17, 3], n_items=20, seed=3), out, holdout=False, name="heavy")
    ds = Dataset(out)
    heavy = int(np.argmax(np.diff(ds.indptr)))
    unseen = set(range(1, ds.n_items + 1)) - set(ds.sequence(heavy).tolist())
    assert len(unseen) == 3
    neg = NegativeSampler(ds, np.random.default_rng(0)).sample(np.full(5000, heavy), (4,))
    bad = ~np.isin(neg, list(unseen))
    assert not bad.any(), (f"{int(bad.sum())} of {neg.size} negatives are items the user has seen, "
                           f"e.g. {sorted(set(neg[bad].tolist()))[:5]}")


# ---------------------------------------------------------------- window_ends / gather_windows

def check_windows(ds: Dataset, ends: np.ndarray, max_len: int):
    """Shared checks; returns per window (user, target items)."""
    inp, tgt, user = gather_windows(ds.indptr, ds.items, ends, max_len)
    assert inp.shape == tgt.shape == (len(ends), max_len)
    out = []
    for b in range(len(ends)):
        u = int(user[b])
        assert ds.indptr[u] + 2 <= ends[b] <= ds.indptr[u + 1], "window end outside its user's sequence"
        seq = ds.sequence(u).tolist()
        mask = tgt[b] != 0
        n = int(mask.sum())
        assert n >= 1
        assert not mask[:max_len - n].any() and mask[max_len - n:].all(), "targets must be left-padded"
        assert ((inp[b] != 0) == mask).all(), "an input exactly where there is a target"
        t, x = tgt[b][mask].tolist(), inp[b][mask].tolist()
        k = seq.index(t[0])
        assert k >= 1, "the first item of a sequence has no input, so it is never a target"
        assert t == seq[k:k + n], "targets are the user's training items in order"
        assert x == seq[k - 1:k - 1 + n], "inputs are the targets shifted by one"
        assert (inp[b, max_len - n + 1:] == tgt[b, max_len - n:-1]).all()
        # the window ends at `end`: its last target is item end-1, and it is as long as allowed
        assert t[-1] == ds.items[ends[b] - 1]
        assert n == min(max_len, ends[b] - ds.indptr[u] - 1)
        out.append((u, t))
    return out


def eligible_users(ds: Dataset) -> list[int]:
    return [u for u in range(ds.n_users) if len(ds.sequence(u)) >= 2]


@pytest.mark.parametrize("max_len", [4, 50])
def test_windows_last(tiny_ds, max_len):
    ds = tiny_ds
    ends = window_ends(ds.indptr, max_len, "last", np.random.default_rng(0))
    wins = check_windows(ds, ends, max_len)
    assert sorted(u for u, _ in wins) == eligible_users(ds)
    for u, t in wins:
        seq = ds.sequence(u).tolist()
        assert t == seq[1:][-max_len:], "the last window holds the latest max_len targets"


@pytest.mark.parametrize("max_len", [1, 3, 4, 12, 50])
def test_windows_cover_every_target_once(tiny_ds, max_len):
    ds = tiny_ds
    ends = window_ends(ds.indptr, max_len, "windows", np.random.default_rng(0))
    wins = check_windows(ds, ends, max_len)
    got = sorted((u, i) for u, t in wins for i in t)
    want = sorted((u, i) for u in eligible_users(ds) for i in ds.sequence(u).tolist()[1:])
    assert got == want, "every (user, target) once, and no other"
    # each user's windows: as few as possible, all full except possibly the earliest one
    for u in eligible_users(ds):
        lens = [len(t) for v, t in wins if v == u]
        assert len(lens) == math.ceil((len(ds.sequence(u)) - 1) / max_len)
        assert sorted(lens)[1:] == [max_len] * (len(lens) - 1)


def test_windows_crops(tiny_ds):
    ds, max_len = tiny_ds, 4
    rng = np.random.default_rng(0)
    seen_ends = {u: set() for u in eligible_users(ds)}
    for _ in range(400):  # 400 epochs
        ends = window_ends(ds.indptr, max_len, "crops", rng)
        wins = check_windows(ds, ends, max_len)
        assert sorted(u for u, _ in wins) == eligible_users(ds), "one crop per user per epoch"
        for u, t in wins:
            seen_ends[u].add(ds.sequence(u).tolist().index(t[-1]))
    for u, got in seen_ends.items():  # every possible end position is drawn at some epoch
        assert got == set(range(1, len(ds.sequence(u)))), f"user {u}: crop ends {sorted(got)}"


def test_window_ends_rejects_unknown_mode(tiny_ds):
    with pytest.raises(ValueError):
        window_ends(tiny_ds.indptr, 4, "everything", np.random.default_rng(0))


# ---------------------------------------------------------------- train_loss

def tiny_batch(n_items: int = 20, L: int = 8, seed: int = 0):
    """A hand-made batch: 4 left-padded sequences, targets shifted by one, one unseen negative each."""
    rng = np.random.default_rng(seed)
    lengths = [9, 6, 4, 2]  # items per user; a window has len - 1 targets
    inp = np.zeros((len(lengths), L), np.int64)
    tgt = np.zeros((len(lengths), L), np.int64)
    negs = []
    for b, n in enumerate(lengths):
        seq = rng.choice(np.arange(1, n_items + 1), n, replace=False)
        m = min(n - 1, L)
        inp[b, L - m:], tgt[b, L - m:] = seq[-m - 1:-1], seq[-m:]
        unseen = np.setdiff1d(np.arange(1, n_items + 1), seq)
        negs.append(rng.choice(unseen, size=(m, 1)))
    return {"input": torch.from_numpy(inp), "target": torch.from_numpy(tgt),
            "negatives": torch.from_numpy(np.concatenate(negs))}


def tiny_model(n_items: int = 20, **kw) -> SASRec:
    torch.manual_seed(0)
    a = dict(n_items=n_items, hidden=32, layers=1, heads=2, dropout_attn=0.0, dropout_hidden=0.0, max_len=8)
    a.update(kw)
    return SASRec(SASRecArgs(**a))


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_train_loss_matches_manual_computation(loss):
    model, batch = tiny_model(init_std=0.3).eval(), tiny_batch()
    got = train_loss(model, batch, loss)
    with torch.no_grad():
        h = model(batch["input"])
        E = model.output_embeddings()
        pos, neg = [], []
        n = 0
        for b in range(h.shape[0]):
            for j in range(h.shape[1]):
                if batch["target"][b, j] == 0:
                    continue  # padded positions do not count
                pos.append(float(h[b, j] @ E[batch["target"][b, j]]))
                neg.append([float(h[b, j] @ E[i]) for i in batch["negatives"][n]])
                n += 1
    assert n == len(batch["negatives"])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    if loss == "bce":
        terms = [-math.log(sig(p)) - sum(math.log(1 - sig(x)) for x in ns) for p, ns in zip(pos, neg)]
    else:
        terms = [-math.log(sig(p - x)) for p, ns in zip(pos, neg) for x in ns]
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-4)


def test_train_loss_full_softmax_matches_manual_computation():
    model, batch = tiny_model(init_std=0.3).eval(), tiny_batch()
    got = train_loss(model, batch, "ce")
    with torch.no_grad():
        h = model(batch["input"])
        logits = model.score_all(h)  # [B, L, V]
        mask = batch["target"] != 0
        terms = []
        for row, t in zip(logits[mask].tolist(), batch["target"][mask].tolist()):
            z = sum(math.exp(x) for x in row[1:])  # every real item, padding id 0 left out
            terms.append(-math.log(math.exp(row[t]) / z))
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-4)


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_tiny_sasrec_overfits_one_batch(loss):
    model, batch = tiny_model().train(), tiny_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        value = train_loss(model, batch, loss)
        first = value.item() if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    final = train_loss(model, batch, loss).item()
    assert first == pytest.approx(math.log(2) * (2 if loss == "bce" else 1), rel=0.05), "untrained scores ≈ 0"
    assert final < first / 20, f"{loss}: loss {first:.4f} -> {final:.4f} after 200 steps"


# ---------------------------------------------------------------- the training script

@pytest.fixture(scope="module")
def demo_ds(tmp_path_factory) -> Path:
    """Synthetic demo data cut to DEMO_USERS users, preprocessed with the scripts."""
    return make_small_demo(tmp_path_factory.mktemp("demo"), DEMO_USERS)


@pytest.fixture(scope="module")
def run_seed1(demo_ds) -> Path:
    run_script("02_train.py", "--data", demo_ds, *train_args(1), "--seed", "1", "--run-name", "seed1")
    return demo_ds / "runs" / "seed1"


def test_training_is_deterministic_per_seed(demo_ds, run_seed1):
    run_script("02_train.py", "--data", demo_ds, *train_args(1), "--seed", "1", "--run-name", "seed1-again")
    run_script("02_train.py", "--data", demo_ds, *train_args(1), "--seed", "2", "--run-name", "seed2")
    a = read_metrics(run_seed1)
    b = read_metrics(demo_ds / "runs" / "seed1-again")
    c = read_metrics(demo_ds / "runs" / "seed2")
    assert len(a) == len(b) == len(c) == 1
    assert math.isfinite(a[0]["loss"])
    assert abs(a[0]["loss"] - b[0]["loss"]) < 1e-9, f"same seed, different first-epoch loss: {a[0]} vs {b[0]}"
    assert abs(a[0]["recall@10"] - b[0]["recall@10"]) < 1e-9
    assert abs(a[0]["loss"] - c[0]["loss"]) > 1e-6, "another seed gave the same first-epoch loss"


def test_checkpoint_round_trip(demo_ds, run_seed1):
    ckpt = load_checkpoint(run_seed1 / "checkpoint.pt")
    for key in ("model_args", "state_dict", "config", "user_raw", "item_raw", "epoch", "best_score", "data_dir"):
        assert key in ckpt, f"checkpoint lacks {key}"
    ds = Dataset(demo_ds, ckpt["split"])  # the run trained and chose its epoch on the validation split
    assert ckpt["split"] == "valid" and ckpt["data_fingerprint"] == ds.fingerprint
    assert ckpt["model_type"] == "sasrec"
    assert ckpt["epoch"] == 0
    assert Path(ckpt["data_dir"]) == demo_ds.resolve()
    assert np.array_equal(ckpt["user_raw"].numpy(), ds.user_raw)
    assert np.array_equal(ckpt["item_raw"].numpy(), ds.item_raw)
    assert ckpt["model_args"]["hidden"] == flat_dict(ckpt["config"])["hidden"] == 16
    assert ckpt["model_args"]["n_items"] == ds.n_items
    assert flat_dict(ckpt["config"])["seed"] == 1

    users = np.arange(ds.n_users)
    rec = build_recommender(ckpt, ds, torch.device("cpu"))
    got = rec.score(users)

    model = SASRec(SASRecArgs(**ckpt["model_args"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    seq = torch.from_numpy(pad_rows(ds.indptr, ds.items, users, model.args.max_len, left=True))
    with torch.no_grad():
        want = model.score_all(model(seq)[:, -1])
    assert got.shape == (ds.n_users, ds.n_items + 1)
    assert torch.allclose(got, want, atol=1e-5)

    # the score logged for the best epoch is reproduced from the checkpoint
    logged = read_metrics(run_seed1)[0]
    assert ckpt["best_score"] == pytest.approx(logged["recall@10"])
    assert evaluate(rec, ds, 10)["recall@10"] == pytest.approx(logged["recall@10"], abs=1e-9)


def test_resume_matches_uninterrupted_run(demo_ds, run_seed1):
    run_script("02_train.py", "--data", demo_ds, *train_args(2), "--seed", "1", "--run-name", "full")
    run_script("02_train.py", "--data", demo_ds, *train_args(1), "--seed", "1", "--run-name", "resumed")
    # a run stopped after logging epoch 1 but before saving it: the resumed run logs epoch 1 again, once
    with open(demo_ds / "runs" / "resumed" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 1, "loss": 999.0}) + "\n")
    run_script("02_train.py", "--data", demo_ds, *train_args(2), "--seed", "1", "--run-name", "resumed", "--resume")
    full = read_metrics(demo_ds / "runs" / "full")
    resumed = read_metrics(demo_ds / "runs" / "resumed")
    assert [r["epoch"] for r in full] == [0, 1]
    assert [r["epoch"] for r in resumed] == [0, 1], "the resumed metrics.jsonl must hold both epochs"
    assert abs(full[0]["loss"] - read_metrics(run_seed1)[0]["loss"]) < 1e-9  # as in a 1-epoch run, same seed
    for f, r in zip(full, resumed):
        assert abs(f["loss"] - r["loss"]) < 1e-6, f"epoch {f['epoch']}: loss {f['loss']} vs resumed {r['loss']}"
        assert abs(f["recall@10"] - r["recall@10"]) < 1e-9
    # and the final weights agree
    a = torch.load(demo_ds / "runs" / "full" / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(demo_ds / "runs" / "resumed" / "last.pt", map_location="cpu", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    for name, w in a["state_dict"].items():
        assert torch.allclose(w, b["state_dict"][name], atol=1e-6), name


def test_resume_without_previous_run_fails_cleanly(demo_ds):
    proc = run_script("02_train.py", "--data", demo_ds, *train_args(1), "--run-name", "never-ran", "--resume",
                      expect_rc=2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error, got:\n{proc.stderr}"
    assert lines[0].startswith("error:")
    assert "last.pt" in lines[0] and "Traceback" not in proc.stderr
    assert not (demo_ds / "runs" / "never-ran" / "metrics.jsonl").exists()


# ---------------------------------------------------------------- real data end to end

@pytest.fixture(scope="module")
def ml_ds(tmp_path_factory) -> Path:
    if not (ML_SMALL / "ratings.csv").exists():
        pytest.skip(f"{ML_SMALL} not found")
    out = tmp_path_factory.mktemp("ml") / "ml-latest-small"
    run_script("01_preprocess.py", "--input", ML_SMALL, "--out", out,
               "--holdout-last", "5", "--holdout-random", "5", "--seed", "0")
    return out


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_ml_latest_small_end_to_end(ml_ds, loss, tmp_path):
    run_script("02_train.py", "--data", ml_ds, "--loss", loss, "--epochs", "2", "--hidden", "16", "--max-len", "20",
               "--batch-size", "512", "--no-progress", "--run-name", f"e2e-{loss}")
    run_dir = ml_ds / "runs" / f"e2e-{loss}"
    metrics = read_metrics(run_dir)
    assert [r["epoch"] for r in metrics] == [0, 1]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in metrics)
    assert all(math.isfinite(r["recall@10"]) for r in metrics)

    subs = tmp_path / "subs"
    run_script("03_inference.py", run_dir / "checkpoint.pt", "--out-dir", subs)
    sub = pd.read_csv(subs / f"e2e-{loss}.csv")
    assert list(sub.columns) == ["user", "item"]
    ds = Dataset(ml_ds)
    assert ds.n_users == 610
    assert sorted(sub["user"].unique()) == sorted(ds.user_raw.tolist())
    assert (sub.groupby("user")["item"].nunique() == 10).all()
    assert (sub.groupby("user").size() == 10).all()
    assert sub["item"].isin(ds.item_raw[1:]).all(), "unknown items in the submission"
    seen = {int(ds.user_raw[u]): set(ds.item_raw[ds.sequence(u)].tolist()) for u in range(ds.n_users)}
    overlap = [(u, i) for u, i in zip(sub["user"], sub["item"]) if i in seen[u]]
    assert not overlap, f"{len(overlap)} recommended items are already in the user's history, e.g. {overlap[:3]}"


def test_non_finite_loss_stops_before_any_weight_changes(tmp_path):
    from common.utils import TrainingError, optimizer_step
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    before = [p.detach().clone() for p in layer.parameters()]
    for bad in (float("nan"), float("inf")):
        loss = layer(torch.ones(1, 3)).sum().abs() * bad
        with pytest.raises(TrainingError, match=f"loss became {bad} at epoch 3 step 7; last good checkpoint: none"):
            optimizer_step(opt, loss, "epoch 3 step 7", tmp_path / "checkpoint.pt")
    assert all(torch.equal(a, p) for a, p in zip(before, layer.parameters())), "a non-finite loss changed weights"
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(TrainingError, match="checkpoint.pt. Lower --lr") as e:
        optimizer_step(opt, layer(torch.ones(1, 3)).sum() * float("nan"), "epoch 0 step 0", tmp_path / "checkpoint.pt")
    assert "\n" not in str(e.value)
    assert optimizer_step(opt, layer(torch.ones(1, 3)).sum() ** 2, "epoch 0 step 1", None) >= 0
    assert not all(torch.equal(a, p) for a, p in zip(before, layer.parameters())), "a finite loss steps"


# ---------------------------------------------------------------- moving average of the weights

@pytest.fixture(scope="module")
def ema_demo(tmp_path_factory):
    return Dataset(make_small_demo(tmp_path_factory.mktemp("ema"), 40, seed=3))


def fit_with_ema(ds, out: Path, epochs: int, resume: bool = False, ema: float = 0.8):
    cfg = train_config(data=str(ds.root), epochs=epochs, hidden=8, layers=1, heads=1, max_len=8,
                            batch_size=16, ema=ema, progress=False, threads=1, seed=5, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.trainer.seed)
    fit(cfg, ds, out, torch.device("cpu"))


def test_ema_saves_the_moving_average_of_the_steps(ema_demo, tmp_path, monkeypatch):
    steps = []  # every parameter after every optimizer step, in model.parameters() order
    real_step = trainer_mod.optimizer_step

    def recording_step(opt, loss, where, kept, **options):
        value = real_step(opt, loss, where, kept, **options)
        steps.append([p.detach().clone() for p in opt.param_groups[0]["params"]])
        return value

    monkeypatch.setattr(trainer_mod, "optimizer_step", recording_step)
    decay = 0.8
    fit_with_ema(ema_demo, tmp_path / "run", epochs=1, ema=decay)
    assert len(steps) >= 3
    want = [w.clone() for w in steps[0]]  # the first step is copied, later ones are averaged in
    for later in steps[1:]:
        want = [decay * e + (1 - decay) * w for e, w in zip(want, later)]
    saved = list(load_checkpoint(tmp_path / "run" / "checkpoint.pt")["state_dict"].values())
    assert len(saved) == len(want)
    for s, w in zip(saved, want):
        assert torch.allclose(s, w, atol=1e-6)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    trained = list(last["train_state_dict"].values())
    assert all(torch.equal(t, w) for t, w in zip(trained, steps[-1])), "last.pt keeps the trained weights too"
    assert not all(torch.allclose(t, s) for t, s in zip(trained, saved)), "the average differs from the last step"


def test_ema_run_resumes_exactly(ema_demo, tmp_path):
    fit_with_ema(ema_demo, tmp_path / "straight", epochs=2)
    fit_with_ema(ema_demo, tmp_path / "resumed", epochs=1)
    fit_with_ema(ema_demo, tmp_path / "resumed", epochs=2, resume=True)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for key in ("state_dict", "train_state_dict"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def test_resume_refuses_a_different_ema_setting(ema_demo, tmp_path):
    fit_with_ema(ema_demo, tmp_path / "run", epochs=1, ema=0.0)
    with pytest.raises(InputError, match="without --ema"):
        fit_with_ema(ema_demo, tmp_path / "run", epochs=2, resume=True, ema=0.5)


# ---------------------------------------------------------------- the GPU path, exercised on CPU

def test_bf16_autocast_trains_and_matches_full_precision(ema_demo, tmp_path):
    """--amp bf16 is the step CUDA runs by default; on CPU it runs the same code."""
    curves = {}
    for amp in ("off", "bf16"):
        cfg = train_config(data=str(ema_demo.root), epochs=3, hidden=16, layers=1, heads=2, max_len=8, batch_size=16,
                           amp=amp, progress=False, threads=1, seed=5, select="last", loss="ce")
        set_seed(cfg.trainer.seed)
        fit(cfg, ema_demo, tmp_path / amp, torch.device("cpu"))
        curves[amp] = [json.loads(x)["loss"] for x in (tmp_path / amp / "metrics.jsonl").read_text().splitlines()]
    assert curves["bf16"][-1] < curves["bf16"][0], "bf16 learns"
    np.testing.assert_allclose(curves["bf16"], curves["off"], rtol=0.02)


def test_lazy_loss_checks_still_stop_a_non_finite_run(ema_demo, tmp_path, monkeypatch):
    """--check-every N (CUDA's default 100) reads the loss every N steps: a NaN still stops the run, with
    where it was found, before any checkpoint holds the bad weights."""
    from common.utils import TrainingError
    real = trainer_mod.optimizer_step
    calls = []

    def poisoned(opt, loss, where, kept, check=True):
        calls.append(check)
        return real(opt, loss * float("nan") if len(calls) == 3 else loss, where, kept, check=check)

    monkeypatch.setattr(trainer_mod, "optimizer_step", poisoned)
    cfg = train_config(data=str(ema_demo.root), epochs=2, hidden=8, layers=1, heads=1, max_len=8, batch_size=4,
                       check_every=2, progress=False, threads=1)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 0 by step 3; last good checkpoint: none"):
        fit(cfg, ema_demo, tmp_path / "run", torch.device("cpu"))
    assert calls == [False] * 4, "no step waited for the loss; the check after step 4 found it"
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_host_found_target_positions_match_the_mask():
    model, batch = tiny_model().eval(), tiny_batch()
    with torch.no_grad():
        found_here = train_loss(model, batch, "ce")
        given = {**batch, "positions": torch.from_numpy(np.flatnonzero(batch["target"].numpy() != 0))}
        assert torch.equal(train_loss(model, given, "ce"), found_here)


@pytest.mark.parametrize("history", ["last", "windows", "crops"])
def test_bucketed_batches_drop_shared_padding_and_keep_every_target(tiny_ds, history):
    """With --bucket each batch holds windows of similar length and drops the columns that are padding in every
    row; the batches still hold each window's targets once, as the untrimmed windows do."""
    from common.next_item import make_batch, training_batches
    ds, max_len = tiny_ds, 12
    cfg = train_config(max_len=max_len, batch_size=3, history=history, seed=0, bucket=True, pack=False)
    batches = training_batches(ds, cfg, np.random.default_rng(0))
    ends = np.concatenate(batches)
    assert len(np.unique(ends)) == len(ends) == len(window_ends(ds.indptr, max_len, history, np.random.default_rng(0)))
    lengths = [np.minimum(e - ds.indptr[np.searchsorted(ds.indptr, e - 1, side="right") - 1] - 1, max_len)
               for e in batches]  # each window's targets
    widths = [int(n.max()) for n in lengths]
    spans = sorted((int(n.min()), int(n.max())) for n in lengths)
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:])), "batches do not overlap in length"
    sampler = NegativeSampler(ds, np.random.default_rng(0))
    got = []
    for ends_b, width in zip(batches, widths):
        batch = make_batch(ds, ends_b, sampler, cfg, torch.device("cpu"))
        inp, tgt = batch["input"].numpy(), batch["target"].numpy()
        assert inp.shape[1] == width < max_len or inp.shape[1] == max_len == width, "as wide as the longest window"
        assert (inp[:, 0] != 0).any(), "no column is padding in every row"
        full_inp, full_tgt, _ = gather_windows(ds.indptr, ds.items, ends_b, max_len)
        assert np.array_equal(full_inp[:, max_len - inp.shape[1]:], inp) and (full_inp[:, :max_len - inp.shape[1]] == 0).all()
        got += list(zip(batch["user"].numpy()[tgt != 0].tolist(), tgt[tgt != 0].tolist()))
    want = [(int(u), int(t)) for u, row in zip(*[gather_windows(ds.indptr, ds.items, ends, max_len)[i] for i in (2, 1)])
            for t in row[row != 0]]
    assert sorted(got) == sorted(want)


def test_loss_of_a_trimmed_batch_equals_the_padded_one():
    """Dropping the columns that are padding in every row leaves the loss unchanged (positions count from the end)."""
    model, batch = tiny_model(init_std=0.3, max_len=12).eval(), tiny_batch(L=12)  # the longest row has 8 targets: 4 empty columns
    cut = int(np.argmax((batch["input"] != 0).any(0).numpy()))
    assert cut == 4
    trimmed = {**batch, "input": batch["input"][:, cut:], "target": batch["target"][:, cut:]}
    with torch.no_grad():
        for loss in ("bce", "ce"):
            torch.testing.assert_close(train_loss(model, trimmed, loss), train_loss(model, batch, loss))


def test_scores_read_each_history_at_its_own_width():
    """SASRecRecommender pads each user to the next multiple of WIDTH_STEP (at most max_len): the scores match
    those of histories padded to max_len, and `order` groups users of one width."""
    from common.recommend import WIDTH_STEP, SASRecRecommender
    ds = Dataset.__new__(Dataset)  # a stand-in with what SASRecRecommender reads
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, 60)
    ds.indptr = np.concatenate([[0], np.cumsum(lengths)])
    ds.items = np.concatenate([rng.choice(np.arange(1, 31), n, replace=False) for n in lengths])
    model = tiny_model(n_items=30, max_len=20, layers=2, init_std=0.3).eval()
    rec = SASRecRecommender(model, ds, torch.device("cpu"))
    users = rng.permutation(len(lengths))
    widths = rec.widths(users)
    assert np.array_equal(widths, np.minimum(np.ceil(lengths[users] / WIDTH_STEP) * WIDTH_STEP, 20))
    assert (np.diff(widths[rec.order(users)]) >= 0).all()
    with torch.no_grad():
        full = model(torch.from_numpy(pad_rows(ds.indptr, ds.items, users, 20, left=True)), last=True)[:, -1]
        want = (full.double() @ model.output_embeddings().double().T).float()
    torch.testing.assert_close(rec.score(users), want, rtol=1e-5, atol=1e-5)


def test_batch_weights_make_every_target_count_the_same(tiny_ds):
    """A batch's loss weight is its targets over what a batch of its size holds on average, so the weighted
    mean losses add up to the sum over all targets divided by the mean per window."""
    from common.next_item import batch_weight, make_batch, targets_per_window, training_batches
    assert batch_weight(3, 2, 6.0) == 0.25  # 3 targets in 2 windows, against 6 per window on average
    ds, max_len = tiny_ds, 12
    cfg = train_config(max_len=max_len, batch_size=3, history="last", seed=0, bucket=True)
    batches = training_batches(ds, cfg, np.random.default_rng(0))
    per_window = targets_per_window(ds, np.concatenate(batches), max_len)
    n = np.diff(ds.indptr)
    assert sorted(per_window.tolist()) == sorted(np.minimum(n[n >= 2] - 1, max_len).tolist())  # inputs, at most max_len
    sampler = NegativeSampler(ds, np.random.default_rng(0))
    made = [make_batch(ds, b, sampler, cfg, torch.device("cpu"), float(per_window.mean())) for b in batches]
    weights = [m["weight"].item() for m in made]
    for m, w, b in zip(made, weights, batches):
        assert w == pytest.approx(len(m["positions"]) / (len(b) * per_window.mean()))
    assert sum(w * len(b) for w, b in zip(weights, batches)) == pytest.approx(len(per_window))
    assert min(weights) < 1 < max(weights), "bucketed: short windows' batches weigh less, long ones' more"
    model = tiny_model(n_items=40, max_len=max_len).eval()
    with torch.no_grad():  # the weight multiplies the batch's mean loss
        plain = train_loss(model, {k: v for k, v in made[0].items() if k != "weight"}, "bce")
        torch.testing.assert_close(train_loss(model, made[0], "bce"), plain * made[0]["weight"])


# ---------------------------------------------------------------- packed rows

def best_fit_decreasing(lengths: list[int], width: int) -> list[int]:
    """The rule written plainly: longest first (then lowest index), each into the open row with the least room
    that holds it (then the lowest row), else a new row."""
    room, row = [], [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fits = [r for r in range(len(room)) if room[r] >= lengths[i]]
        if not fits:
            room.append(width)
            fits = [len(room) - 1]
        row[i] = min(fits, key=lambda r: (room[r], r))
        room[row[i]] -= lengths[i]
    return row


def test_pack_rows_by_hand():
    """Width 10, lengths 7 3 5 4 4 2: 7 opens row 0 and 3 fills it; 5 opens row 1 and the first 4 joins it
    (1 column left); the second 4 opens row 2, and 2 goes there, the only row with room for it."""
    row, end = pack_rows(np.array([7, 3, 5, 4, 4, 2]), 10)
    assert row.tolist() == [0, 0, 1, 1, 2, 2]
    assert end.tolist() == [10, 3, 10, 5, 10, 6]  # the first placed in a row ends at its last column


@pytest.mark.parametrize("seed", range(20))
def test_pack_rows_is_best_fit_decreasing_without_overlap(seed):
    rng = np.random.default_rng(seed)
    width = int(rng.integers(1, 40))
    lengths = rng.integers(1, width + 1, int(rng.integers(0, 60)))
    row, end = pack_rows(lengths, width)
    assert row.tolist() == best_fit_decreasing(lengths.tolist(), width)
    used = np.zeros((int(row.max()) + 1 if len(row) else 0, width), dtype=int)
    for r, e, n in zip(row, end, lengths):
        assert 0 <= e - n and e <= width
        used[r, e - n:e] += 1
    assert used.max(initial=0) <= 1, "two sequences share a column"


def test_packed_rows_give_every_position_its_padded_output():
    """Each real position of packed rows has the output it has in its own left-padded row (a window reads only
    itself, at its own positions), and padding rows or columns are dropped."""
    rng = np.random.default_rng(0)
    L, lengths = 12, [12, 3, 7, 1, 0, 5, 9, 2]
    seq = np.zeros((len(lengths), L), np.int64)
    for b, n in enumerate(lengths):
        seq[b, L - n:] = rng.integers(1, 31, n)
    layout = pack_windows(seq)
    assert layout["source"].shape == (4, L), "12 | 9+3 | 7+5 | 2+1 fill four rows"
    packed = gather_packed(seq, layout["source"])
    assert sorted(packed[packed != 0].tolist()) == sorted(seq[seq != 0].tolist())
    model = tiny_model(n_items=30, max_len=L, layers=2, init_std=0.3).eval()
    with torch.no_grad():
        want = model(torch.from_numpy(seq))  # [B, L, H]
        got = model(torch.from_numpy(packed), segment=torch.from_numpy(layout["segment"]),
                    position=torch.from_numpy(layout["position"]))  # [R, L, H]
    real = layout["source"] >= 0
    torch.testing.assert_close(got[torch.from_numpy(real)], want.reshape(-1, want.size(-1))[layout["source"][real]],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("history", ["last", "windows"])
def test_packed_batch_holds_every_target_once_with_the_same_loss(tiny_ds, history):
    """make_batch with --pack (the default) holds each window's (user, target) pairs once, in fewer rows, and
    its full-softmax loss equals that of the one-window-a-row batch."""
    from common.next_item import make_batch, training_batches
    ds, max_len = tiny_ds, 12
    cfg = train_config(max_len=max_len, batch_size=8, history=history, seed=0, loss="ce")
    assert cfg.objective.pack
    plain_cfg = train_config(max_len=max_len, batch_size=8, history=history, seed=0, loss="ce", pack=False)
    model = tiny_model(n_items=40, max_len=max_len, init_std=0.3).eval()
    for ends in training_batches(ds, cfg, np.random.default_rng(0)):
        packed, plain = (make_batch(ds, ends, NegativeSampler(ds, np.random.default_rng(0)), c, torch.device("cpu"))
                         for c in (cfg, plain_cfg))
        assert len(packed["input"]) <= len(plain["input"])
        pairs = [sorted(zip(b["user"][b["target"] != 0].tolist(), b["target"][b["target"] != 0].tolist()))
                 for b in (packed, plain)]  # each column's user and target
        assert pairs[0] == pairs[1]
        with torch.no_grad():
            torch.testing.assert_close(train_loss(model, packed, "ce"), train_loss(model, plain, "ce"))

"""Data-parallel training: 2 gloo processes under torchrun follow the loss curve of one process with the
same global batch; rank 0 alone writes; a distributed run resumes; sharding and per-rank streams."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.checkpoint import load_checkpoint
from common.data import build_dataset
from common.distributed import World, rank_stream, shard, shardable
from common.readers import read_raw
from conftest import describe, run_script, run_scripts

N_USERS, LENGTH, MAX_LEN, BATCH = 16, 12, 8, 8  # every window full: each row has MAX_LEN targets


@pytest.fixture(scope="module")
def equal_ds(tmp_path_factory) -> Path:
    """Users of one length, no hold-out: every row of every batch has the same number of targets, so the
    mean of the two ranks' mean losses is the one-process mean."""
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    rows = [(u, int(i), t) for u in range(1, N_USERS + 1)
            for t, i in enumerate(rng.choice(np.arange(100, 140), size=LENGTH, replace=False))]
    (root / "raw").mkdir()
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(root / "raw" / "train_ratings.csv", index=False)
    build_dataset(read_raw(root / "raw"), root / "d", 0, 0, seed=0, holdout=False, name="d")
    return root / "d"


def train_args(data: Path, name: str, epochs: int, *extra: str) -> list[str]:
    return ["02_train.py", "--data", str(data), "--run-name", name, "--loss", "ce", "--history", "last",
            "--max-len", str(MAX_LEN), "--hidden", "16", "--heads", "2", "--layers", "1", "--dropout-attn", "0",
            "--dropout-hidden", "0", "--batch-size", str(BATCH), "--epochs", str(epochs), "--lr", "0.01",
            "--device", "cpu", "--threads", "1", "--no-progress", *extra]


def torchrun(*args: str) -> list[str]:
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(equal_ds):
    procs = run_scripts(train_args(equal_ds, "one", 3), torchrun(*train_args(equal_ds, "two", 3)),
                        torchrun(*train_args(equal_ds, "part", 2)))
    for p in procs:
        assert p.returncode == 0, describe(p)
    return equal_ds / "runs", procs


def test_two_gloo_processes_follow_the_one_process_loss_curve(runs):
    root, _ = runs
    one, two = losses(root / "one"), losses(root / "two")
    assert len(one) == len(two) == 3
    assert one[-1] < one[0], "the model learns"
    np.testing.assert_allclose(two, one, rtol=1e-4)
    w1 = load_checkpoint(root / "one" / "checkpoint.pt")["state_dict"]
    w2 = load_checkpoint(root / "two" / "checkpoint.pt")["state_dict"]
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-3, atol=1e-5)


def test_rank_zero_alone_writes_and_prints(runs):
    root, procs = runs
    two = procs[1]
    assert sorted(p.name for p in (root / "two").iterdir()) == ["checkpoint.pt", "config.json", "last.pt",
                                                                "metrics.jsonl"]
    assert two.stdout.count("wrote ") == 1, describe(two)
    assert "2 processes" in two.stdout


def test_a_distributed_run_resumes(runs):
    root, _ = runs
    p = run_script(*torchrun(*train_args(root.parent, "part", 3, "--resume")))
    assert p.returncode == 0, describe(p)
    np.testing.assert_allclose(losses(root / "part"), losses(root / "two"), rtol=1e-4)


def test_shards_cover_each_batch_once():
    rows = np.arange(11)
    parts = [shard(rows, World(r, 3)) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == rows.tolist()
    tagged = [shard(("encoder", rows), World(r, 2)) for r in range(2)]
    assert tagged[0][0] == "encoder" and len(tagged[0][1]) + len(tagged[1][1]) == 11
    assert shardable(rows[:3], World(0, 3)) and not shardable(rows[:2], World(0, 3))


def test_each_rank_samples_its_own_stream_and_leaves_the_epoch_in_step():
    gens = [np.random.default_rng(5) for _ in range(2)]
    draws = []
    for r, g in enumerate(gens):
        with rank_stream(g, World(r, 2)):
            draws.append(g.integers(0, 2 ** 30, size=4 + r))  # ranks draw different amounts
    assert not np.array_equal(draws[0][:4], draws[1][:4])
    after = [g.integers(2 ** 30) for g in gens]
    assert after[0] == after[1] == np.random.default_rng(5).integers(2 ** 30), "the shared stream is not advanced"
    alone = np.random.default_rng(5)
    with rank_stream(alone, World()):
        first = alone.integers(2 ** 30)
    assert first == np.random.default_rng(5).integers(2 ** 30), "one process: the generator is left alone"

"""The shell recipes: scripts/recipe.sh trains two EASE runs and a sequential model over seeds (through
scripts/seeds.sh) and blends them into one valid submission."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, describe, make_small_demo

from common.config import flat_dict
from common.data import Dataset

SEEDS = ("1", "2")


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    ds = make_small_demo(tmp, 120)
    env = {**os.environ, "DATA": str(ds), "PY": sys.executable, "SUBS": str(tmp / "subs"),
           "EASE_ARGS": "--model ease --l2 50", "EASE2_ARGS": "--model ease --l2 80 --window 5 --diag-power 0.5",
           "SEQ_ARGS": "--epochs 1 --hidden 16 --threads 1",
           "EASE_WEIGHT": "2", "EASE2_WEIGHT": "0.7", "SEQ_WEIGHT": "1"}
    p = subprocess.run(["scripts/recipe.sh", *SEEDS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return ds, tmp / "subs", p


def test_recipe_blends_ease_and_every_seed(recipe_run):
    ds_path, subs, p = recipe_run
    assert p.returncode == 0, describe(p)
    name = ds_path.name
    for seed in SEEDS:
        assert (subs / f"{name}-recipe-seq-s{seed}.top100.csv").is_file()
        assert flat_dict(json.loads((ds_path / "runs" / f"{name}-recipe-seq-s{seed}" / "config.json").read_text()))["seed"] == int(seed)
    meta = json.loads((subs / f"{name}-recipe.json").read_text())
    assert meta["weights"] == [2.0, 0.7, 0.5, 0.5], "EASE_WEIGHT, EASE2_WEIGHT, SEQ_WEIGHT shared by the seeds"
    assert len(meta["inputs"]) == 4 and meta["inputs"][0].endswith(f"{name}-recipe-ease.top100.csv")
    assert meta["inputs"][1].endswith(f"{name}-recipe-ease2.top100.csv")
    cfg2 = flat_dict(json.loads((ds_path / "runs" / f"{name}-recipe-ease2" / "config.json").read_text()))
    assert (cfg2["l2"], cfg2["window"], cfg2["diag_power"]) == (80.0, 5, 0.5)
    sub = pd.read_csv(subs / f"{name}-recipe.csv")
    ds = Dataset(ds_path)
    assert list(sub.columns) == ["user", "item"]
    assert sorted(sub["user"].unique()) == sorted(ds.user_raw.tolist())
    assert (sub.groupby("user")["item"].nunique() == 10).all() and len(sub) == 10 * ds.n_users
    seen = {int(ds.user_raw[u]): set(ds.item_raw[ds.sequence(u)].tolist()) for u in range(ds.n_users)}
    assert not any(i in seen[u] for u, i in zip(sub["user"], sub["item"])), "a seen item was recommended"
    assert '"recall@10"' in p.stdout, "the local score is printed"


def test_recipe_needs_seeds():
    p = subprocess.run(["scripts/recipe.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "usage: scripts/recipe.sh SEED" in p.stderr

"""06_submission.py end to end on a tiny cut of the demo data: the final file, the report, reuse of finished
runs, choices that never read the test answers, and runs of another split that are never reused."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import flat_dict
from common.data import Dataset
from conftest import ROOT, assert_one_line_error, describe, run_script

N_USERS = 150
RECIPE = '''
k = 10
candidates = 30
weight_grid = [0.0, 0.5, 1.0]
tune_rounds = 1

[[member]]
name = "ease"
args = "--model ease"
grid = { l2 = [5.0, 200.0] }

[[member]]
name = "seq"
args = "--loss ce --hidden 16 --max-len 20 --epochs 3 --patience 2"
seeds = [7]
'''


def tiny_raw(folder: Path) -> Path:
    """The demo data's first users, de-duplicated and written in (user, time) order: file order is time order."""
    p = run_script("00_make_demo.py", "--out", folder, "--seed", "0")
    assert p.returncode == 0, describe(p)
    df = pd.read_csv(folder / "train_ratings.csv")
    df = df[df["user"].isin(np.sort(df["user"].unique())[:N_USERS])]
    df = df.sort_values(["user", "time"], kind="stable").drop_duplicates(["user", "item"])
    df.to_csv(folder / "train_ratings.csv", index=False)
    return folder


def change_test_answers(src: Path, dst: Path) -> int:
    """A copy of `src` whose users' 5 latest items (the test hold-out's 'last' part) are other catalogue items.

    Everything before them is unchanged and the catalogue keeps every item, so the training part and the
    validation answers are the same; only the test answers differ. Returns the number of rows changed."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "train_ratings.csv":
            (dst / f.name).write_bytes(f.read_bytes())
    df = pd.read_csv(src / "train_ratings.csv")
    items = df["item"].to_numpy().copy()
    counts = pd.Series(items).value_counts().to_dict()
    catalogue = sorted(counts)
    rng = np.random.default_rng(0)
    changed = 0
    for _, rows in df.groupby("user").indices.items():
        if len(rows) < 5 + 5 + 3:  # not held out
            continue
        have = set(items[rows].tolist())
        for r in rows[-5:]:
            if counts[items[r]] < 2:  # the item would leave the catalogue
                continue
            new = int(rng.choice(catalogue))
            while new in have:
                new = int(rng.choice(catalogue))
            counts[items[r]] -= 1
            counts[new] += 1
            have.add(new)
            items[r] = new
            changed += 1
    df["item"] = items
    df.to_csv(dst / "train_ratings.csv", index=False)
    return changed


def submit(tmp: Path, raw: Path, name: str, *flags):
    return run_script("06_submission.py", "--input", raw, "--recipe", tmp / "recipe.toml", "--name", name,
                      "--data-dir", tmp / "data", "--out-dir", tmp / "subs", "--threads", "1", *flags, timeout=600)


def choices(report: dict) -> dict:
    """Everything the tuning decided: settings, epochs, weights, and the validation scores it read."""
    return {"weights": report["blend"]["weights"], "valid": report["blend"]["valid"],
            "members": [(m["name"], m["chosen"], [(s["best_epoch"], s["refit_epochs"], s["valid"])
                                                 for s in m["seeds_detail"]], m["grid"]) for m in report["members"]]}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("submission")
    (tmp / "recipe.toml").write_text(RECIPE)
    raw = tiny_raw(tmp / "raw")
    p = submit(tmp, raw, "tiny")
    return tmp, raw, p


def test_end_to_end_final_file_and_report(first):
    tmp, _, p = first
    assert p.returncode == 0, describe(p)
    final = pd.read_csv(tmp / "subs" / "tiny-final.csv")
    full = Dataset(tmp / "data" / "tiny-full")
    assert list(final.columns) == ["user", "item"] and not full.has_holdout
    assert len(final) == 10 * full.n_users and (final.groupby("user")["item"].nunique() == 10).all()
    assert sorted(final["user"].unique()) == sorted(full.user_raw.tolist())
    seen = {int(full.user_raw[u]): set(full.item_raw[full.sequence(u)].tolist()) for u in range(full.n_users)}
    assert not any(i in seen[u] for u, i in zip(final["user"], final["item"])), "a seen item was recommended"
    report = json.loads((tmp / "subs" / "tiny-report" / "report.json").read_text())
    assert [m["name"] for m in report["members"]] == ["ease", "seq"]
    ease, seq = report["members"]
    assert len(ease["grid"]) == 2 and ease["chosen"] in ({"l2": 5.0}, {"l2": 200.0})
    best = max(ease["grid"], key=lambda g: g["recall@10"])
    assert ease["chosen"] == best["settings"], "the grid point with the best validation score is chosen"
    s = seq["seeds_detail"][0]
    assert s["refit_epochs"] == s["best_epoch"] + 1, "the documented epoch rule"
    test_cfg = flat_dict(json.loads((tmp / "data" / "tiny-split" / "runs" / s["runs"]["test"] / "config.json").read_text()))
    assert test_cfg["epochs"] == s["refit_epochs"] and test_cfg["select"] == "last" and test_cfg["split"] == "test"
    assert 0 < report["blend"]["test"]["recall@10"] <= 1 and "recall@10" in report["blend"]["valid"]
    for m in report["members"]:
        assert (tmp / "subs" / "tiny-report" / m["curve_png"]).read_bytes()[:4] == b"\x89PNG"
        assert 0 <= m["test"]["recall@10"] <= 1
    md = (tmp / "subs" / "tiny-report" / "report.md").read_text()
    assert "validation" in md and "test" in md and "| **blend** |" in md
    assert all(st["seconds"] >= 0 and st["peak_mb"] > 0 for st in report["steps"])
    assert '"answers": "test"' in p.stdout and "honest test score" in p.stdout
    # --keep-weights final (the default): the final refits keep their checkpoints, every other run only its files
    finals = [s["runs"]["final"] for m in report["members"] for s in m["seeds_detail"] if s["runs"]["final"]]
    assert finals and all((tmp / "data" / "tiny-full" / "runs" / r / "checkpoint.pt").exists() for r in finals)
    others = [d for d in (tmp / "data" / "tiny-split" / "runs").iterdir() if (d / "step.json").exists()]
    assert others and not any((d / f).exists() for d in others for f in ("checkpoint.pt", "last.pt"))
    assert all((d / "config.json").exists() and list(d.glob("*.top30.csv")) for d in others)


def test_second_call_reuses_every_run(first):
    tmp, raw, p = first
    before = (tmp / "subs" / "tiny-final.csv").read_bytes()
    again = submit(tmp, raw, "tiny", "--threads", "2", "--device", "cpu")  # where a run runs is not its key
    assert again.returncode == 0, describe(again)
    assert "  train " not in again.stdout, "a finished run was trained again"
    weights = json.loads((tmp / "subs" / "tiny-report" / "report.json").read_text())["blend"]["weights"]
    kept = sum(w > 0 for w in weights.values())  # the final phase refits only members with weight > 0
    assert again.stdout.count("reused") == 3 + 2 + kept  # tune (2 grid points + seq), test, final
    assert (tmp / "subs" / "tiny-final.csv").read_bytes() == before
    # a run whose step.json is gone, its weights dropped: trained again, not inferred from missing weights
    run = next(d for d in sorted((tmp / "data" / "tiny-split" / "runs").iterdir()) if d.name.startswith("seq-tune"))
    (run / "step.json").unlink()
    assert (run / "trained.json").exists() and not (run / "checkpoint.pt").exists()
    third = submit(tmp, raw, "tiny", "--no-final")
    assert third.returncode == 0, describe(third)
    trained = [x.strip() for x in third.stdout.splitlines() if x.strip().startswith("train ")]
    assert trained and all(x.startswith("train tune seq s7") for x in trained), trained
    assert (run / "step.json").exists()


def test_changing_the_test_answers_changes_no_choice(first):
    tmp, raw, p = first
    other = tmp / "raw-other"
    assert change_test_answers(raw, other) > 50
    q = submit(tmp, other, "tiny-other", "--no-final")
    assert q.returncode == 0, describe(q)
    a = Dataset(tmp / "data" / "tiny-split")
    b = Dataset(tmp / "data" / "tiny-other-split")
    assert a.fingerprint != b.fingerprint and not np.array_equal(a.ans_items, b.ans_items)
    va, vb = Dataset(a.root, "valid"), Dataset(b.root, "valid")
    assert np.array_equal(va.items, vb.items) and np.array_equal(va.ans_items, vb.ans_items)
    ra = json.loads((tmp / "subs" / "tiny-report" / "report.json").read_text())
    rb = json.loads((tmp / "subs" / "tiny-other-report" / "report.json").read_text())
    assert choices(ra) == choices(rb)
    assert ra["blend"]["test"] != rb["blend"]["test"], "the test answers did change"


def test_a_run_made_on_another_split_is_never_reused(first):
    tmp, raw, p = first
    q = submit(tmp, raw, "tiny", "--seed", "1")  # the same name, another hold-out draw
    assert q.returncode == 0, describe(q)
    split = Dataset(tmp / "data" / "tiny-split")
    assert json.loads((tmp / "data" / "tiny-split" / "meta.json").read_text())["holdout"]["seed"] == 1
    lines = [x for x in q.stdout.splitlines() if "reused" in x]
    assert lines and all(x.lstrip().startswith("final ") for x in lines), "only runs on the unchanged full data"
    report = json.loads((tmp / "subs" / "tiny-report" / "report.json").read_text())
    for m in report["members"]:
        for s in m["seeds_detail"]:
            for phase in ("tune", "test"):
                step = json.loads((split.root / "runs" / s["runs"][phase] / "step.json").read_text())
                assert step["fingerprint"] == split.fingerprint


def test_bad_recipe_fails_in_one_line(tmp_path):
    (tmp_path / "r.toml").write_text("[[member]]\nname = 'x'\nweight = 'sometimes'\n")
    p = run_script("06_submission.py", "--input", ROOT / "data" / "raw" / "nothing", "--recipe", tmp_path / "r.toml",
                   "--data-dir", tmp_path / "data")
    assert_one_line_error(p, "r.toml", "weight")
    assert not (tmp_path / "data").exists()


def test_tune_weights_keeps_the_member_that_finds_the_answers(tmp_path):
    """Member 'a' lists each user's validation answers first, 'b' lists unseen items that are not answers:
    coordinate ascent over [0, 1] drops 'b'; a fixed weight is never changed."""
    from common.data import build_dataset
    from common.pipeline import tune_weights
    from common.readers import RawData
    from common.recipe import Member, Recipe
    from common.submission import write_ranked
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for u in range(30):
        its = rng.choice(np.arange(1, 200), size=40, replace=False)
        users += [u] * 40
        items += its.tolist()
        times += list(range(40))
    build_dataset(RawData(np.array(users), np.array(items), np.array(times, dtype=float), "hand"), tmp_path / "d",
                  2, 2, validation=True)
    ds = Dataset(tmp_path / "d", "valid")
    n, K = ds.n_users, 12
    good = np.zeros((n, K), dtype=np.int64)
    bad = np.zeros((n, K), dtype=np.int64)
    for u in range(n):
        seen = set(ds.sequence(u).tolist())
        answers = ds.ans_items[ds.ans_indptr[u]:ds.ans_indptr[u + 1]].tolist()
        others = [i for i in range(1, ds.n_items + 1) if i not in seen and i not in answers]
        good[u] = (answers + others)[:K]
        bad[u] = others[-K:]
    scores = np.tile(np.arange(K, 0, -1, dtype=np.float64), (n, 1))  # falling with rank
    runs = {}
    for name, top in (("a", good), ("b", bad)):
        path = tmp_path / f"{name}.csv"
        write_ranked(path, ds.user_raw, ds.item_raw[top], scores)
        runs[name] = [{"candidates": str(path)}]
    recipe = Recipe(path="r", members=[Member("a", []), Member("b", [])], k=4, weight_grid=[0.0, 1.0])
    weights, best, trace = tune_weights(recipe, runs, ds)
    assert weights == {"a": 1.0, "b": 0.0}
    assert best == pytest.approx(1.0) and trace[0]["weights"] == {"a": 1.0, "b": 1.0}
    fixed = Recipe(path="r", members=[Member("a", [], weight=0.5), Member("b", [])], k=4, weight_grid=[0.0, 1.0])
    weights, _, _ = tune_weights(fixed, runs, ds)
    assert weights == {"a": 0.5, "b": 0.0}


def test_the_reranker_orders_the_final_file(first):
    """blend = "rerank" with the same members: their runs are reused, the members are fitted again on a
    second validation carve and on a shifted one, the reranker learns on validation answers for the test score and on test
    answers for the final file, and the report shows both blends."""
    tmp, raw, _ = first
    recipe = RECIPE.replace("tune_rounds = 1\n", 'tune_rounds = 1\nblend = "rerank"\n')
    (tmp / "rerank.toml").write_text(recipe + "\n[rerank]\nmax_iter = 20\nmin_samples_leaf = 5\ncarves = 2\nshifted_carves = 1\n"
                                     "time_window = 0.05\nfollow_steps = 3\nattributes = true\n")
    p = run_script("06_submission.py", "--input", raw, "--recipe", tmp / "rerank.toml", "--name", "tiny",
                   "--data-dir", tmp / "data", "--out-dir", tmp / "subs-rr", "--threads", "1", timeout=600)
    assert p.returncode == 0, describe(p)
    assert "honest test score of the reranker" in p.stdout
    report = json.loads((tmp / "subs-rr" / "tiny-report" / "report.json").read_text())
    rr = report["rerank"]
    assert report["method"] == "rerank" and 0 < rr["test"]["recall@10"] <= 1 and "recall@10" in rr["valid"]
    assert "blend" in rr["features"] and {r["feature"] for r in rr["importance"]} == set(rr["features"])
    assert {"first_gap", "follow_last", "genre_share", "director_recent"} <= set(rr["features"]) and rr["carves"] == 2
    assert rr["shifted_carves"] == 1 and "reused" in p.stdout and "carve 2 of 3:" in p.stdout
    assert "carve 3 of 3 (shifted)" in p.stdout and Dataset(tmp / "data" / "tiny-split", "valid3").has_holdout
    for j in (2, 3):
        steps = [json.loads(s.read_text()) for s in (tmp / "data" / "tiny-split" / "runs").glob(f"*-carve{j}-*/step.json")]
        assert steps and {s["split"] for s in steps} == {f"valid{j}"}
    assert "**reranker**" in (tmp / "subs-rr" / "tiny-report" / "report.md").read_text()
    final = pd.read_csv(tmp / "subs-rr" / "tiny-final.csv")
    full = Dataset(tmp / "data" / "tiny-full")
    assert len(final) == 10 * full.n_users and (final.groupby("user")["item"].nunique() == 10).all()
    seen = {int(full.user_raw[u]): set(full.item_raw[full.sequence(u)].tolist()) for u in range(full.n_users)}
    assert not any(i in seen[u] for u, i in zip(final["user"], final["item"])), "a seen item was recommended"


def test_write_csv_gives_the_text_of_pandas_to_csv(tmp_path, monkeypatch):
    import common.io
    monkeypatch.setattr(common.io, "CSV_CHUNK_ROWS", 7)  # several chunks
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.standard_normal(20) * 10.0 ** rng.integers(-8, 9, 20),
                             [0.0, -0.0, 1e-5, 123456.5, 1234567.0, -2.5e-12]]).astype(np.float32)
    cols = {"user": rng.integers(0, 10**9, len(scores)), "item": rng.integers(-5, 5, len(scores)),
            "score": scores, "rank": np.arange(1, len(scores) + 1)}
    common.io.write_csv(tmp_path / "fast.csv", cols, {"score": "%.6g"})
    pd.DataFrame(cols).to_csv(tmp_path / "pandas.csv", index=False, float_format="%.6g")
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    common.io.write_csv(tmp_path / "empty.csv", {"user": np.zeros(0, np.int64), "item": np.zeros(0, np.int64)})
    assert (tmp_path / "empty.csv").read_text() == "user,item\n"


def test_a_child_step_reports_its_own_peak_not_the_parents(tmp_path):
    """A process started straight from this one would inherit its memory high-water mark at exec."""
    from common.io import InputError
    from common.pipeline import run_child
    big = np.ones(600_000_000 // 8)  # this process's high-water mark: at least 600 MB
    big += 1
    del big
    res = run_child(["-c", "import numpy as np; a = np.ones(200_000_000 // 8); a += 1"], tmp_path / "log.txt")
    assert 190 < res["peak_mb"] < 450, res  # 191 MiB of its own, plus the interpreter and numpy
    small = run_child(["-c", "pass"], tmp_path / "log.txt")
    assert 0 < small["peak_mb"] < 100, small
    with pytest.raises(InputError, match=r"exit 3\).*went wrong"):
        run_child(["-c", "import sys; print('error: went wrong'); sys.exit(3)"], tmp_path / "fails.txt")
    for sig in (signal.SIGKILL, signal.SIGTERM):
        with pytest.raises(InputError, match=rf"exit -{int(sig)}\)"):
            run_child(["-c", f"import os; os.kill(os.getpid(), {int(sig)})"], tmp_path / f"killed-{int(sig)}.txt")

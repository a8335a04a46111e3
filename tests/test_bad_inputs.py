"""Bad inputs and faults across every script, table-driven: each case must exit with a non-zero status, print
exactly one line on stderr that names the flag, file, column or row at fault (no traceback), and leave no new
or partial file behind. Plus Ctrl-C during training, and the atomic swap of a dataset folder."""
from __future__ import annotations

import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common import data as data_module
from common.data import Dataset, build_dataset
from common.readers import read_raw
from conftest import ROOT, _script_env, describe, run_script, run_scripts

N_USERS, N_ITEMS = 40, 60
HUGE = "12345678901234567890123"  # 23 digits: beyond int64


def write_raw(folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, N_USERS + 1):
        items = rng.choice(np.arange(101, 101 + N_ITEMS), size=int(rng.integers(14, 25)), replace=False)
        rows += [(u, int(i), 1_000_000 + 100 * u + t) for t, i in enumerate(items)]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["user", "item", "time"]).to_csv(folder / "train_ratings.csv", index=False)
    pd.DataFrame({"item": np.arange(101, 101 + N_ITEMS), "genre": "Drama"}).to_csv(folder / "genres.tsv", sep="\t",
                                                                                   index=False)
    return folder


def replace_line(n: int, new: str):
    def edit(text: str) -> str:
        lines = text.splitlines()
        lines[n] = new
        return "\n".join(lines) + "\n"
    return edit


def mixed_long_ids(text: str) -> str:
    """One id written 101.0 (so the column reads as floats) and one 17-digit id that floats cannot hold."""
    lines = text.splitlines()
    for n, new in ((1, ",101.0,"), (2, ",12345678901234567,")):
        u, _, t = lines[n].split(",")
        lines[n] = f"{u}{new}{t}"
    return "\n".join(lines) + "\n"


# raw folders: the good train_ratings.csv with its text changed
RAW_EDITS = {
    "r-col": replace_line(0, "user,item,when"),
    "r-user": replace_line(3, "abc,101,5"),
    "r-float": replace_line(3, "1,101.5,5"),
    "r-huge": replace_line(3, f"1,{HUGE},5"),
    "r-mixed": mixed_long_ids,
    "r-time": replace_line(3, "1,101,yesterday"),
    "r-empty": lambda t: "user,item,time\n",
    "r-bin": lambda t: "\x00\x01\x02garbage",
}
# candidate files: the good cand.csv (user,item,score,rank) changed
CAND_EDITS = {
    "c-inf.csv": lambda df: df.assign(score=df["score"].where(df.index != 3, np.inf)),
    "c-nan.csv": lambda df: df.assign(score=df["score"].where(df.index != 2, np.nan)),
    "c-dup.csv": lambda df: pd.concat([df.iloc[:5], df.iloc[[0]], df.iloc[5:]]),
    "c-head.csv": lambda df: df.rename(columns={"user": "usr"}),
    "c-item.csv": lambda df: df.assign(item=df["item"].where(df.index != 0, 999999)),
    "c-huge.csv": lambda df: df.astype({"item": object}).assign(
        item=df["item"].astype(object).where(df.index != 0, HUGE)),
    "s-dup.csv": lambda df: pd.concat([df.iloc[:3], df.iloc[[0]], df.iloc[3:]])[["user", "item"]],
}


def tree(root: Path) -> dict:
    """Every file under `root` with its size and modification time."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.join(dirpath, d)] = "dir"
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.join(dirpath, f)] = (st.st_size, st.st_mtime_ns)
    return out


def cases(w: Path) -> dict[str, tuple[list, str]]:
    """case id -> (argv, a fragment the one error line must contain)."""
    d, run = str(w / "d"), str(w / "d" / "runs" / "ease" / "checkpoint.pt")
    cand, sub = str(w / "cand.csv"), str(w / "sub.csv")
    raw, out = str(w / "raw"), str(w / "new")
    pre = ["01_preprocess.py", "--out", out]
    train = ["02_train.py", "--data", d, "--run-name", "new", "--no-progress", "--threads", "1"]
    ease = [*train, "--model", "ease"]
    sasrec = [*train, "--hidden", "8", "--max-len", "10", "--epochs", "1"]
    blend = ["04_ensemble.py", "--data", d, "--out", str(w / "blend.csv")]
    evaluate = ["05_evaluate.py", "--data", d]
    submit = ["06_submission.py", "--input", raw, "--data-dir", str(w / "sub-data"), "--out-dir", str(w / "sub-out")]
    c = {
        # 00_make_demo.py
        "demo-scale": (["00_make_demo.py", "--out", str(w / "demo"), "--scale", "huge"], "--scale"),
        "demo-seed": (["00_make_demo.py", "--out", str(w / "demo"), "--seed", "-1"], "--seed"),
        "demo-unknown-flag": (["00_make_demo.py", "--out", str(w / "demo"), "--size", "3"], "--size"),
        # 01_preprocess.py: flags
        "pre-missing-input": ([*pre, "--input", str(w / "nowhere")], "nowhere"),
        "pre-holdout-last": ([*pre, "--input", raw, "--holdout-last", "-1"], "--holdout-last"),
        "pre-holdout-random": ([*pre, "--input", raw, "--holdout-random", "-3"], "--holdout-random"),
        "pre-cutoff": ([*pre, "--input", raw, "--holdout-cutoff", "1.5"], "--holdout-cutoff"),
        "pre-nothing-held": ([*pre, "--input", raw, "--holdout-last", "0", "--holdout-random", "0"], "--holdout-last"),
        "pre-format": ([*pre, "--input", raw, "--format", "xml"], "--format"),
        "pre-seed": ([*pre, "--input", raw, "--seed", "-2"], "--seed"),
        "pre-abbrev": ([*pre, "--input", raw, "--holdout-l", "2"], "--holdout-l"),
        "pre-out-under-file": (["01_preprocess.py", "--input", raw, "--out", str(w / "afile" / "d")], "afile"),
        # 01_preprocess.py: raw files
        "raw-no-time-column": ([*pre, "--input", str(w / "r-col")],
                               "time"),
        "raw-user-text": ([*pre, "--input", str(w / "r-user")], "row"),
        "raw-item-float": ([*pre, "--input", str(w / "r-float")], "row"),
        "raw-item-huge": ([*pre, "--input", str(w / "r-huge")], "int64"),
        "raw-item-mixed-long": ([*pre, "--input", str(w / "r-mixed")], "row"),
        "raw-time-text": ([*pre, "--input", str(w / "r-time")], "time"),
        "raw-empty": ([*pre, "--input", str(w / "r-empty")], "train_ratings"),
        "raw-not-csv": ([*pre, "--input", str(w / "r-bin")], "train_ratings"),
        # 02_train.py: flags out of bounds
        "train-lr-negative": ([*sasrec, "--lr", "-1"], "--lr"),
        "train-lr-nan": ([*sasrec, "--lr", "nan"], "--lr"),
        "train-hidden-0": ([*sasrec, "--hidden", "0"], "--hidden"),
        "train-heads-3": ([*sasrec, "--hidden", "8", "--heads", "3"], "--heads"),
        "train-layers-0": ([*sasrec, "--layers", "0"], "--layers"),
        "train-batch-0": ([*sasrec, "--batch-size", "0"], "--batch-size"),
        "train-dropout-hidden": ([*sasrec, "--dropout-hidden", "1.5"], "--dropout-hidden"),
        "train-dropout-attn": ([*sasrec, "--dropout-attn", "-0.1"], "--dropout-attn"),
        "train-epochs-0": ([*sasrec, "--epochs", "0"], "--epochs"),
        "train-patience-0": ([*sasrec, "--patience", "0"], "--patience"),
        "train-max-len-0": ([*sasrec, "--max-len", "0"], "--max-len"),
        "train-init-std": ([*sasrec, "--init-std", "0"], "--init-std"),
        "train-ema-1": ([*sasrec, "--ema", "1"], "--ema"),
        "train-weight-decay": ([*sasrec, "--weight-decay", "-1"], "--weight-decay"),
        "train-negatives-0": ([*sasrec, "--negatives", "0"], "--negatives"),
        "train-horizon-0": ([*sasrec, "--horizon", "0"], "--horizon"),
        "train-threads": ([*sasrec, "--threads", "-1"], "--threads"),
        "train-k-0": ([*sasrec, "--k", "0"], "--k"),
        "train-seed": ([*sasrec, "--seed", "-5"], "--seed"),
        "train-eval-batch": ([*sasrec, "--eval-batch-size", "0"], "--eval-batch-size"),
        "train-l2-0": ([*ease, "--l2", "0"], "--l2"),
        "train-window": ([*ease, "--window", "-1"], "--window"),
        "train-window-tau": ([*ease, "--window-tau", "0"], "--window-tau"),
        "train-recency": ([*ease, "--recency", "-1"], "--recency"),
        "train-recency-tau": ([*ease, "--recency-tau", "0"], "--recency-tau"),
        "train-diag-power": ([*ease, "--diag-power", "-1"], "--diag-power"),
        "train-holdout-last": ([*sasrec, "--history", "holdout", "--holdout-last", "0"], "--holdout-last"),
        "train-holdout-samples": ([*sasrec, "--history", "holdout", "--holdout-samples", "0"], "--holdout-samples"),
        "train-mask-prob": ([*sasrec, "--stage", "pretrain", "--mask-prob", "0"], "--mask-prob"),
        "train-no-objective": ([*sasrec, "--stage", "pretrain", "--aap-weight", "0", "--mip-weight", "0",
                                "--map-weight", "0", "--sp-weight", "0"], "--stage pretrain"),
        "train-cloze-prob": ([*sasrec, "--model", "cloze", "--cloze-prob", "0"], "--cloze-prob"),
        "train-input-dropout": ([*train, "--model", "multvae", "--input-dropout", "1"], "--input-dropout"),
        "train-latent": ([*train, "--model", "multvae", "--latent", "0"], "--latent"),
        "train-enc-passes": ([*train, "--model", "recvae", "--enc-passes", "0"], "--enc-passes"),
        "train-min-delta": ([*sasrec, "--min-delta", "-0.1"], "--min-delta"),
        # 02_train.py: choices and relations
        "train-model": ([*train, "--model", "knn"], "--model"),
        "train-loss": ([*sasrec, "--loss", "hinge"], "--loss"),
        "train-abbrev": ([*sasrec, "--epoch", "3"], "--epoch"),
        "train-unknown-flag": ([*sasrec, "--hiden", "8"], "--hiden"),
        "train-pretrain-ease": ([*ease, "--stage", "pretrain"], "--stage pretrain"),
        "train-init-from-ease": ([*ease, "--init-from", "x"], "--init-from"),
        "train-holdout-ease": ([*ease, "--history", "holdout"], "--history holdout"),
        "train-holdout-horizon": ([*sasrec, "--history", "holdout", "--horizon", "3"], "--horizon"),
        "train-device-missing": ([*sasrec, "--device", "cuda:99"], "--device"),
        "train-device-unknown": ([*sasrec, "--device", "tpu"], "--device"),
        # 02_train.py: data
        "train-missing-data": ([*sasrec, "--data", str(w / "nowhere")], "nowhere"),
        "train-k-beyond-items-ease": ([*ease, "--k", "100000"], "--k"),
        "train-k-beyond-items-pop": ([*train, "--model", "pop", "--k", "100000"], "--k"),
        "train-k-beyond-items-sasrec": ([*sasrec, "--k", "100000"], "--k"),
        "train-resume-nothing": ([*sasrec, "--resume"], "--resume"),
        "train-corrupt-meta": ([*sasrec, "--data", str(w / "d-meta")], "meta.json"),
        "train-corrupt-npz": ([*sasrec, "--data", str(w / "d-npz")], "sequences.npz"),
        "train-mixed-artifacts": ([*sasrec, "--data", str(w / "d-mixed")], "fingerprint"),
        "train-nothing-to-learn": ([*sasrec, "--data", str(w / "d-single")], "nothing to learn"),
        "train-holdout-too-short": ([*sasrec, "--history", "holdout", "--holdout-last", "30"], "--holdout-last"),
        # 03_inference.py
        "infer-missing-checkpoint": (["03_inference.py", str(w / "none.pt")], "none.pt"),
        "infer-corrupt-checkpoint": (["03_inference.py", str(w / "garbage.pt")], "garbage.pt"),
        "infer-k-0": (["03_inference.py", run, "--k", "0"], "--k"),
        "infer-k-too-many": (["03_inference.py", run, "--k", "100000"], "--k"),
        "infer-candidates": (["03_inference.py", run, "--candidates", "-1"], "--candidates"),
        "infer-batch-0": (["03_inference.py", run, "--batch-size", "0"], "--batch-size"),
        "infer-split": (["03_inference.py", run, "--split", "train"], "--split"),
        "infer-amp": (["03_inference.py", run, "--amp", "fp16"], "--amp"),
        "infer-amp-ease": (["03_inference.py", run, "--amp", "bf16", "--candidates", "20", "--out-dir", str(w / "amp-out")],
                           "--amp bf16"),
        "infer-stale-run": (["03_inference.py", str(w / "stale" / "runs" / "ease" / "checkpoint.pt"),
                             "--out-dir", str(w / "out")], "fingerprint"),
        "infer-out-under-file": (["03_inference.py", run, "--candidates", "20", "--out-dir", str(w / "afile" / "x")],
                                 "afile"),
        # 04_ensemble.py
        "blend-weights-zero": ([*blend, cand, cand, "--weights", "0", "0"], "--weights"),
        "blend-weights-count": ([*blend, cand, cand, "--weights", "1"], "--weights"),
        "blend-weights-negative": ([*blend, cand, cand, "--weights", "-1", "1"], "--weights"),
        "blend-weights-nan": ([*blend, cand, "--weights", "nan"], "--weights"),
        "blend-inf-score": ([*blend, "--method", "score", str(w / "c-inf.csv")], "row 5"),
        "blend-nan-score": ([*blend, "--method", "score", str(w / "c-nan.csv")], "row 4"),
        "blend-duplicate-row": ([*blend, str(w / "c-dup.csv")], "row 7"),
        "blend-missing-file": ([*blend, str(w / "none.csv")], "none.csv"),
        "blend-bad-header": ([*blend, str(w / "c-head.csv")], "header"),
        "blend-unknown-item": ([*blend, str(w / "c-item.csv")], "999999"),
        "blend-huge-id": ([*blend, str(w / "c-huge.csv")], "int64"),
        "blend-k-0": ([*blend, cand, "--k", "0"], "--k"),
        "blend-method": ([*blend, cand, "--method", "vote"], "--method"),
        "blend-rrf-c": ([*blend, cand, "--rrf-c", "-1"], "--rrf-c"),
        "blend-no-inputs": (blend, "no input files"),
        "blend-grid-values-zero": ([*blend, cand, "--grid", "--grid-values", "0", "0"], "--grid-values"),
        "blend-stale-candidates": ([*blend, str(w / "stale-cand.csv"), "--data", str(w / "stale")], "training history"),
        "blend-source-other-data": ([*blend, str(w / "src-stale.top20.csv"), "--data", str(w / "stale")],
                                    "made on the test split of data"),
        "blend-source-changed": ([*blend, str(w / "src-changed.top20.csv")], "changed since"),
        # 05_evaluate.py
        "eval-missing": ([*evaluate, str(w / "none.csv")], "none.csv"),
        "eval-k-0": ([*evaluate, sub, "--k", "0"], "--k"),
        "eval-duplicate-row": ([*evaluate, str(w / "s-dup.csv")],
                               "row 5"),
        "eval-split": ([*evaluate, sub, "--split", "train"], "--split"),
        "eval-source-other-data": ([*evaluate, str(w / "src-stale.top20.csv"), "--data", str(w / "stale")],
                                   "made on the test split of data"),
        # 06_submission.py
        "submit-missing-recipe": ([*submit, "--recipe", str(w / "none.toml")], "none.toml"),
        "submit-bad-toml": ([*submit, "--recipe", str(w / "bad.toml")], "bad.toml"),
        "submit-holdout-last": ([*submit, "--holdout-last", "-1"], "--holdout-last"),
        "submit-cutoff": ([*submit, "--holdout-cutoff", "2"], "--holdout-cutoff"),
        "submit-keep-weights": ([*submit, "--keep-weights", "some"], "--keep-weights"),
        "submit-nothing-held": ([*submit, "--holdout-last", "0", "--holdout-random", "0"], "--holdout-last"),
        "submit-missing-input": ([*submit, "--input", str(w / "nowhere")], "nowhere"),
    }
    return c


def make_workspace(w: Path) -> None:
    raw = write_raw(w / "raw")
    build_dataset(read_raw(raw), w / "d", 2, 2, seed=0, name="d")
    build_dataset(read_raw(raw), w / "stale", 2, 2, seed=0, name="stale")
    trained = run_scripts(*[["02_train.py", "--data", w / name, "--model", "ease", "--run-name", "ease", "--threads",
                             "1"] for name in ("d", "stale")])
    inferred = run_scripts(*[["03_inference.py", w / name / "runs" / "ease" / "checkpoint.pt", "--out-dir",
                              w / f"out-{name}", "--threads", "1", "--candidates", "20"] for name in ("d", "stale")])
    for p in trained + inferred:
        assert p.returncode == 0, describe(p)
    for name in ("d", "stale"):  # copies that keep their source files
        for f in (w / f"out-{name}").glob("*.top20.*"):
            shutil.copy(f, w / f"src-{name}{f.name[f.name.index('.top20.'):]}")
    (w / "src-changed.top20.csv").write_text((w / "src-d.top20.csv").read_text().replace(",1\n", ",1 \n", 1))
    shutil.copy(w / "src-d.top20.source.json", w / "src-changed.top20.source.json")
    for name, dst in (("d", "cand.csv"), ("stale", "stale-cand.csv")):
        next((w / f"out-{name}").glob("*.top20.csv")).rename(w / dst)
    next(f for f in (w / "out-d").glob("*.csv") if "top" not in f.name).rename(w / "sub.csv")
    build_dataset(read_raw(raw), w / "stale", 2, 2, seed=1, name="stale")  # preprocessed again: its runs are stale
    text = (raw / "train_ratings.csv").read_text()
    for name, edit in RAW_EDITS.items():
        (w / name).mkdir()
        (w / name / "train_ratings.csv").write_text(edit(text))
    cand = pd.read_csv(w / "cand.csv")
    for name, edit in CAND_EDITS.items():
        edit(cand).to_csv(w / name, index=False)
    for name in ("d-meta", "d-npz", "d-mixed"):  # damaged dataset folders
        build_dataset(read_raw(raw), w / name, 2, 2, seed=0, name=name)
    (w / "d-meta" / "meta.json").write_text('{"format_version": 3, "datas')
    (w / "d-npz" / "sequences.npz").write_bytes((w / "d-npz" / "sequences.npz").read_bytes()[:100])
    build_dataset(read_raw(write_raw(w / "raw-other", seed=3)), w / "other", 2, 2, seed=0, name="other")
    (w / "d-mixed" / "sequences.npz").write_bytes((w / "other" / "sequences.npz").read_bytes())  # a half-finished rewrite
    (w / "raw-single").mkdir()
    pd.DataFrame({"user": np.arange(1, 11), "item": np.arange(101, 111), "time": np.arange(10)}).to_csv(
        w / "raw-single" / "train_ratings.csv", index=False)
    build_dataset(read_raw(w / "raw-single"), w / "d-single", 0, 0, seed=0, holdout=False, name="d-single")
    (w / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 10)
    (w / "afile").write_text("a regular file, not a folder\n")
    (w / "bad.toml").write_text("k = [1,\n")


CASE_IDS = list(cases(Path("/w")))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case run at once on one prepared workspace, with the file tree before and after."""
    w = tmp_path_factory.mktemp("bad")
    make_workspace(w)
    table = cases(w)
    before = tree(w)
    procs = dict(zip(table, run_scripts(*[argv for argv, _ in table.values()])))
    return w, before, tree(w), procs, {k: frag for k, (_, frag) in table.items()}


def test_the_corpus_is_large():
    assert len(CASE_IDS) >= 60 and len(set(CASE_IDS)) == len(CASE_IDS)


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_fails_in_one_line(results, case):
    _, _, _, procs, fragments = results
    p = procs[case]
    assert p.returncode != 0, describe(p)
    assert "Traceback" not in p.stderr + p.stdout, describe(p)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), describe(p)
    assert fragments[case] in lines[0], f"{fragments[case]!r} not in {lines[0]!r}"


def test_no_case_leaves_a_file_behind(results):
    w, before, after, _, _ = results
    assert sorted(set(after) - set(before)) == []
    changed = [f for f in before if f in after and before[f] != after[f]]
    assert changed == []


def start_training(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, list[str], Path]:
    """02_train.py started in the background on a fresh small dataset: (process, its flags, its run folder)."""
    build_dataset(read_raw(write_raw(tmp_path / "raw")), tmp_path / "d", 2, 2, seed=0, name="d")
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # pytest started as `... &` by a script: the child would
        signal.signal(signal.SIGINT, signal.default_int_handler)  # inherit the ignored SIGINT and never see it
    common = ["02_train.py", "--data", str(tmp_path / "d"), "--hidden", "8", "--max-len", "10", "--run-name", "r",
              "--no-progress", "--threads", "1", *flags]
    p = subprocess.Popen([sys.executable, *common], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=_script_env())
    return p, common, tmp_path / "d" / "runs" / "r"


def wait_for(path: Path, p: subprocess.Popen, poll: float) -> None:
    deadline = time.time() + 120
    while not path.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(poll)


def test_ctrl_c_during_training_says_how_to_continue(tmp_path):
    p, common, run = start_training(tmp_path, "--select", "last", "--epochs", "100000")  # the resume's --epochs wins
    last = run / "last.pt"
    wait_for(last, p, 0.1)
    assert last.exists(), p.communicate()
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted at epoch ") and "continue with --resume" in lines[0]
    assert not list(run.glob(".*.tmp"))
    epoch = int(lines[0].split()[3].rstrip(";"))
    resumed = run_script(*common, "--epochs", str(epoch + 1), "--resume")
    assert resumed.returncode == 0 and f"resuming r at epoch {epoch}" in resumed.stdout, describe(resumed)


def test_ctrl_c_before_the_first_epoch_leaves_no_run_folder(tmp_path):
    # more epochs than it can finish: the signal always lands while it trains, however late the poll sees it
    p, _, run = start_training(tmp_path, "--batch-size", "1", "--epochs", "100000", "--patience", "100000")
    wait_for(run / "config.json", p, 0.02)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err, (out, err)
    assert len(err.strip().splitlines()) == 1
    if not (run / "last.pt").exists():
        assert not run.exists()


def test_dataset_swap_keeps_runs_and_leaves_no_build_folder(tmp_path):
    raw = read_raw(write_raw(tmp_path / "raw"))
    build_dataset(raw, tmp_path / "d", 2, 2, seed=0, name="d")
    (tmp_path / "d" / "runs" / "r").mkdir(parents=True)
    (tmp_path / "d" / "runs" / "r" / "checkpoint.pt").write_text("x")
    first = Dataset(tmp_path / "d").fingerprint
    build_dataset(raw, tmp_path / "d", 2, 2, seed=1, name="d")
    assert Dataset(tmp_path / "d").fingerprint != first
    assert (tmp_path / "d" / "runs" / "r" / "checkpoint.pt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "raw"]


def test_a_failed_build_leaves_the_old_dataset_whole(tmp_path, monkeypatch):
    raw = read_raw(write_raw(tmp_path / "raw"))
    build_dataset(raw, tmp_path / "d", 2, 2, seed=0, name="d")
    before = tree(tmp_path / "d")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", "answers.csv")

    monkeypatch.setattr(data_module, "_write_answers", disk_full)
    with pytest.raises(OSError):
        build_dataset(raw, tmp_path / "d", 2, 2, seed=1, name="d")
    assert tree(tmp_path / "d") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "raw"]
    Dataset(tmp_path / "d")  # still readable, fingerprint intact

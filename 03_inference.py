"""Checkpoint -> submissions/<run>.csv (top-k unseen items per user) and submissions/<run>.top<N>.csv
(user,item,score,rank of the top N candidates, for blending by score).

Every user of the dataset is scored against every item; seen items and padding are excluded.
The input is each user's training sequence: the whole history for data preprocessed with
--no-holdout (final submission), the training part otherwise, scored against the test answers.
--split valid reads the training part without the validation answers and scores against those
(files <run>.valid.csv, <run>.valid.top<N>.csv): the candidates for choosing blend weights.
Each file gets a <file>.source.json naming the data it was made on; 04 and 05 refuse it on other data.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import parse_config, save_config, setting
from common.data import SPLITS, Dataset, split_suffix
from common.io import InputError, run_main, staged_files
from common.metrics import all_metrics
from common.checkpoint import check_dataset_matches, load_checkpoint
from common.recommend import build_recommender, top_k
from common.submission import data_source, source_path, write_ranked
from common.utils import autocast, autocast_dtype, pick_device


@dataclass
class InferenceConfig:
    checkpoint: str = field(default="", metadata={"positional": True, "help": "path to a run's checkpoint.pt"})
    k: int = setting(10, ge=1)
    candidates: int = setting(100, "rows per user in the candidates file (0: none)", ge=0)
    data: str = field(default="", metadata={"help": "dataset folder; default the one the run was trained on"})
    split: str = field(default="test", metadata={"choices": SPLITS, "help": "test: input the training part, score "
                                                 "on test answers; valid: input it without the validation answers"})
    out_dir: str = "submissions"
    batch_size: int = setting(512, "users scored at once", ge=1)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    threads: int = setting(0, "CPU threads (0: one per core)", ge=0)
    amp: str = setting("off", "bf16 autocast of a sequence model's encoder (sasrec, cloze); the last position's "
                              "projections and the score product stay in float64", choices=("off", "bf16"))


def main():
    cfg = parse_config(InferenceConfig, description=__doc__)
    ckpt_path = Path(cfg.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    if ckpt.get("stage") == "pretrain":
        raise InputError(f"{ckpt_path}: a pretraining checkpoint recommends nothing; "
                         "fine-tune it first with 02_train.py --init-from <its run>")
    ds = Dataset(Path(cfg.data or ckpt["data_dir"]), cfg.split)
    check_dataset_matches(ckpt, ds, str(ckpt_path))
    n = max(cfg.k, cfg.candidates)
    if n > ds.n_items:
        raise InputError(f"--k/--candidates {n} exceeds the {ds.n_items} items of {ds.root}")
    run = ckpt_path.parent.name + split_suffix(cfg.split)
    device = pick_device(cfg.device, cfg.threads)
    rec = build_recommender(ckpt, ds, device)
    if cfg.amp != "off" and not getattr(rec, "encoder_autocast", False):
        raise InputError(f"--amp {cfg.amp}: {ckpt['model_type']} scores in full precision only; "
                         "bf16 applies to the sequence models (sasrec, cloze)")
    amp = autocast_dtype(cfg.amp, device)  # a GPU without bf16 is refused here, before any file is written
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)  # before the scoring: an unusable path fails at once

    t0 = time.time()
    users = np.arange(ds.n_users)
    with autocast(amp, device):
        ids, scores = top_k(rec, ds, users, n, cfg.batch_size, progress=True)
    seconds = time.time() - t0

    short = ~np.isfinite(scores[:, :cfg.k]).all(axis=1)
    if short.any():
        u = int(np.flatnonzero(short)[0])
        raise InputError(f"{ds.root}: user {ds.user_raw[u]} has fewer than {cfg.k} unseen items; lower --k")
    sub_path = out / f"{run}.csv"
    source = data_source(ds, "03_inference.py")
    wrote = [sub_path, source_path(sub_path)]
    with staged_files() as stage:  # all files appear together, or none
        write_ranked(sub_path, ds.user_raw, ds.item_raw[ids[:, :cfg.k]], source=source, stage=stage)
        if cfg.candidates:
            cand_path = out / f"{run}.top{cfg.candidates}.csv"
            write_ranked(cand_path, ds.user_raw, ds.item_raw[ids[:, :cfg.candidates]], scores[:, :cfg.candidates],
                         source=source, stage=stage)
            wrote += [cand_path, source_path(cand_path)]
        save_config(cfg, out / f"{run}.inference.json", stage)
    print(f"scored {ds.n_users:,} users x {ds.n_items:,} items in {seconds:.1f}s")
    if ds.has_holdout:
        ev = ds.eval_users()
        metrics = all_metrics(ids[ev, :cfg.k], ds.answers_padded(ev), cfg.k)
        print(json.dumps({"run": run, "dataset": ds.name, "answers": ds.split,
                          **{k: round(v, 5) for k, v in metrics.items()}}))
    print(f"wrote {', '.join(map(str, wrote))} and {run}.inference.json")


if __name__ == "__main__":
    run_main(main)

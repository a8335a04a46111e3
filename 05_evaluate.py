"""Validate a submission CSV against a dataset and print its local scores (Recall@k, NDCG@k, HR@k).

Checks: header `user,item`; every answered user present; exactly k unique items per user;
no item already in the user's training data; no unknown user or item.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import parse_config, setting
from common.data import SPLITS, Dataset, pad_rows
from common.io import InputError, run_main
from common.metrics import all_metrics
from common.submission import check_source, read_answers, read_ranked, submission_matrix


@dataclass
class EvaluateConfig:
    submission: str = field(default="", metadata={"positional": True, "help": "submission CSV (user,item)"})
    data: str = field(default="data/demo", metadata={"help": "preprocessed dataset the submission is for"})
    answers: str = field(default="", metadata={"help": "answers CSV (user,item, raw ids); default <data>/answers.csv, "
                                                       "or valid_answers.csv with --split valid"})
    split: str = field(default="test", metadata={"choices": SPLITS, "help": "score against the test answers or "
                                                 "the validation answers (seen items: that split's training part)"})
    k: int = setting(10, ge=1)


def main():
    cfg = parse_config(EvaluateConfig, description=__doc__)
    ds = Dataset(Path(cfg.data), cfg.split)
    answers_path = Path(cfg.answers) if cfg.answers else ds.root / ("answers.csv" if cfg.split == "test"
                                                                    else f"{cfg.split}_answers.csv")
    if not cfg.answers and not ds.has_holdout:
        raise InputError(f"{ds.root}: preprocessed without a hold-out; pass --answers")
    ans_indptr, ans_items = read_answers(answers_path, ds)
    answered = np.flatnonzero(np.diff(ans_indptr) > 0)
    sub_path = Path(cfg.submission)
    check_source(sub_path, ds)
    users, mat = submission_matrix(read_ranked(sub_path), ds, sub_path, cfg.k, required_users=answered)
    rows = np.searchsorted(users, answered)
    metrics = all_metrics(mat[rows], pad_rows(ans_indptr, ans_items, answered), cfg.k)
    print(f"{sub_path}: well-formed ({len(users):,} users x {cfg.k} items); scored on {len(answered):,} users' "
          f"{'answers from ' + str(answers_path) if cfg.answers else ds.answers_label + ' answers'}")
    print(json.dumps({"submission": str(sub_path), "answers": "file" if cfg.answers else ds.split,
                      **{k: round(v, 5) for k, v in metrics.items()}}))


if __name__ == "__main__":
    run_main(main)

"""Blend several runs' submission or candidate CSVs into one submission.

  rank fusion from plain submissions:   --method rrf (default) or --method borda
  score blending from candidate files:  --method score --norm minmax|zscore (files from 03_inference's .topN.csv)

The output has exactly k unique unseen items per user; short lists are filled with popular items.
--split valid blends validation candidates (03_inference.py --split valid) and scores them against the
validation answers; --grid there chooses weights honestly: pass them with --weights to the test or final
files. --grid on the test split chooses on the answers it reports, and says so.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.blend import METHODS, NORMS, RRF_C, blend_top_k, contribution_matrix, load_inputs
from common.config import parse_config, save_config, setting
from common.data import SPLITS, Dataset
from common.io import InputError, run_main, staged_files
from common.metrics import all_metrics
from common.submission import data_source, source_path, write_ranked


@dataclass
class EnsembleConfig:
    inputs: list[str] = field(default_factory=list, metadata={"positional": True, "help": "CSV files to blend"})
    weights: list[float] = setting([], "one weight per input, >= 0, not all 0 (default: all 1)", ge=0)
    method: str = field(default="rrf", metadata={"choices": METHODS})
    norm: str = field(default="minmax", metadata={"choices": NORMS, "help": "per-user score normalisation"})
    rrf_c: float = setting(RRF_C, "rrf: score 1 / (rrf_c + rank)", ge=0)
    k: int = setting(10, ge=1)
    data: str = field(default="data/demo", metadata={"help": "the dataset the runs were made on"})
    split: str = field(default="test", metadata={"choices": SPLITS, "help": "which answers (and training part) the "
                                                 "inputs were made for: test, or valid"})
    out: str = field(default="submissions/blend.csv")
    grid: bool = field(default=False, metadata={"help": "search weights on the local hold-out"})
    grid_values: list[float] = setting([0.0, 0.25, 0.5, 0.75, 1.0], "weights each input may take in --grid",
                                       ge=0)

    RULES = ((lambda c: not c.weights or any(w > 0 for w in c.weights), "--weights are all 0: nothing to blend"),
             (lambda c: any(w > 0 for w in c.grid_values), "--grid-values are all 0: no weights to try"),
             (lambda c: bool(c.inputs), "no input files given"))


def grid_search(pu, pi, C, ds: Dataset, k: int, values: list[float]):
    """Every weight vector from `values`^F (up to scale), scored on the hold-out; returns (best, table)."""
    users = ds.eval_users()
    truth = ds.answers_padded(users)
    tried, table = set(), []
    for w in itertools.product(values, repeat=len(C)):
        w = np.asarray(w, dtype=np.float64)
        if w.sum() == 0:
            continue
        key = tuple(np.round(w / w.max(), 6))
        if key in tried:
            continue
        tried.add(key)
        top = blend_top_k(pu, pi, w @ C, ds, k, users)
        table.append((all_metrics(top, truth, k)[f"recall@{k}"], list(key)))
    table.sort(key=lambda t: -t[0])
    return table[0][1], table


def main():
    cfg = parse_config(EnsembleConfig, description=__doc__)
    ds = Dataset(Path(cfg.data), cfg.split)
    paths = [Path(p) for p in cfg.inputs]
    weights = cfg.weights or [1.0] * len(paths)
    if len(weights) != len(paths):
        raise InputError(f"--weights has {len(weights)} values for {len(paths)} inputs")
    frames = load_inputs(paths, ds, cfg.method)
    pu, pi, C = contribution_matrix(frames, cfg.method, cfg.norm, cfg.rrf_c)
    if cfg.grid:
        if not ds.has_holdout:
            raise InputError(f"{ds.root}: --grid needs a dataset preprocessed with a hold-out")
        weights, table = grid_search(pu, pi, C, ds, cfg.k, cfg.grid_values)
        for score, w in table[:5]:
            print(json.dumps({"weights": w, f"recall@{cfg.k}": round(score, 5)}))
        chosen = ("validation answers" if ds.split == "valid"
                  else "test answers: the score below is chosen on the answers it reports, so it is optimistic")
        print(f"best weights on the {chosen}: {' '.join(f'{w:g}' for w in weights)}")
    users = np.unique(frames[0]["user"].to_numpy())
    if ds.has_holdout and not np.isin(ds.eval_users(), users).all():
        raise InputError(f"{paths[0]}: some users with hold-out answers in {ds.root} are missing")
    top = blend_top_k(pu, pi, np.asarray(weights) @ C, ds, cfg.k, users)
    out = Path(cfg.out)
    cfg.weights = list(weights)
    with staged_files() as stage:
        write_ranked(out, ds.user_raw[users], ds.item_raw[top], source=data_source(ds, "04_ensemble.py"), stage=stage)
        save_config(cfg, out.with_suffix(".json"), stage)
    if ds.has_holdout:
        ev = ds.eval_users()
        rows = np.searchsorted(users, ev)
        metrics = all_metrics(top[rows], ds.answers_padded(ev), cfg.k)
        print(json.dumps({"blend": str(out), "weights": list(weights), "answers": ds.split,
                          **{k: round(v, 5) for k, v in metrics.items()}}))
    print(f"wrote {out} ({len(users):,} users x {cfg.k} items), {source_path(out)} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    run_main(main)

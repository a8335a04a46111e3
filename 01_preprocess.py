"""Raw interactions and side files -> dense, time-ordered artifacts under data/<dataset>/.

Detects the layout (competition, MovieLens csv/dat/100k, S3-Rec txt) unless --format names it.
With a hold-out (default 5 last + 5 random earlier per user; --holdout-cutoff q: everything after the
q-quantile of all timestamps + random earlier ones) it also writes the local test answers, and with
--validation (default) validation answers carved out of the training part the same way: every choice
reads those, the test answers are only reported. --carves N adds N - 1 further draws of the validation
answers (validJ.npz) for a learned second stage to learn from, and --shifted-carves M adds M more carved from the
data as it stood --holdout-last interactions earlier each (their latest answers are new ones). --no-holdout keeps
everything for training, the mode for the final submission.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import config_json, parse_config, setting
from common.data import MAX_CARVES, NOT_A_YEAR, build_dataset
from common.io import InputError, run_main
from common.readers import FORMATS, read_raw
from common.utils import set_seed


@dataclass
class PreprocessConfig:
    input: str = field(default="data/raw/demo", metadata={"help": "raw folder, or an S3-Rec <name>.txt"})
    format: str = field(default="auto", metadata={"choices": FORMATS})
    out: str = field(default="", metadata={"help": "output folder; default data/<dataset>"})
    name: str = field(default="", metadata={"help": "dataset name; default the input's name"})
    holdout: bool = field(default=True, metadata={"help": "write a local hold-out (--no-holdout: train on all)"})
    holdout_last: int = setting(5, "latest items per user held out (ignored with a cutoff)", ge=0)
    holdout_random: int = setting(5, "randomly dropped earlier items held out per user", ge=0)
    holdout_cutoff: float = setting(0.0, "hold out every interaction after this quantile of all timestamps, in "
                                         "(0, 1) (0: per user)", ge=0, lt=1)
    validation: bool = setting(True, "carve validation answers out of the training part the same way "
                                     "(--no-validation: test only)")
    carves: int = setting(1, "validation carves: 2 or more add validJ.npz, further random draws of the "
                             "validation answers for a learned second stage to learn from", ge=1, le=MAX_CARVES)
    shifted_carves: int = setting(0, "further carves after those, each from the data as it stood --holdout-last "
                                     "interactions earlier than the one before (their latest answers are new)",
                                  ge=0, le=MAX_CARVES - 1)
    seed: int = setting(0, ge=0)

    RULES = ((lambda c: not c.holdout or c.holdout_cutoff > 0 or c.holdout_last + c.holdout_random > 0,
              "--holdout-last and --holdout-random are both 0: nothing to hold out (use --no-holdout)"),
             (lambda c: c.carves == 1 or (c.holdout and c.validation and c.holdout_random > 0),
              "--carves above 1 needs a hold-out, --validation and --holdout-random > 0 (the carves differ only in "
              "their random answers)"),
             (lambda c: c.carves + c.shifted_carves <= MAX_CARVES,
              f"--carves plus --shifted-carves is at most {MAX_CARVES}"),
             (lambda c: c.shifted_carves == 0 or (c.holdout and c.validation and c.holdout_last > 0
                                                  and c.holdout_cutoff == 0),
              "--shifted-carves needs a hold-out, --validation, --holdout-last > 0 and no --holdout-cutoff (a carve "
              "is shifted by the latest items)"))


def main():
    cfg = parse_config(PreprocessConfig, description=__doc__)
    set_seed(cfg.seed)
    t0 = time.time()
    src = Path(cfg.input)
    name = cfg.name or (src.stem if src.is_file() else src.name)
    out = Path(cfg.out or f"data/{name}")
    raw = read_raw(src, cfg.format)
    if cfg.holdout and cfg.holdout_cutoff and raw.source == "s3rec":
        raise InputError(f"{src}: S3-Rec sequences carry no timestamps, so --holdout-cutoff has no time to cut at; "
                         "use --holdout-last/--holdout-random")
    s = build_dataset(raw, out, cfg.holdout_last, cfg.holdout_random, cfg.seed, cfg.holdout, name,
                      validation=cfg.validation, cutoff=cfg.holdout_cutoff, carves=cfg.carves,
                      shifted=cfg.shifted_carves, extra={"preprocess_config.json": config_json(cfg)})
    print(f"{raw.source}: {s.n_users:,} users, {s.n_items:,} items, {s.n_interactions:,} interactions "
          f"({s.duplicates_dropped:,} repeated pairs dropped), {s.n_attributes:,} attributes")
    if s.single_interaction_users:
        print(f"note: {s.single_interaction_users:,} users have a single interaction (kept, no training pair)")
    for kind, n in s.side_rows_dropped.items():
        if n:
            what = "rows ignored" if kind == NOT_A_YEAR else "rows for items without interactions were ignored"
            print(f"note: {kind}: {n:,} {what}")
    held = f"{s.n_holdout:,} test answers for {s.n_holdout_users:,} users" if cfg.holdout else "no hold-out"
    if s.n_valid:
        held += f", of the training rows {s.n_valid:,} validation answers for {s.n_valid_users:,} users"
        if cfg.carves > 1:
            held += f" (and {cfg.carves - 1} more draws of them)"
        if cfg.shifted_carves:
            held += f" (and {cfg.shifted_carves} shifted carves)"
    print(f"train {s.n_train:,} rows, {held}")
    print(f"wrote {out}/ (meta.json, maps.npz, sequences.npz, holdout.npz, valid.npz, answers.csv, "
          f"valid_answers.csv, "
          f"{''.join(f'valid{j}.npz, valid{j}_answers.csv, ' for j in range(2, cfg.carves + cfg.shifted_carves + 1))}attributes.*) in "
          f"{time.time() - t0:.1f}s")


if __name__ == "__main__":
    run_main(main)

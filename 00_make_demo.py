"""Write synthetic competition-layout data (train_ratings.csv + side files), deterministic per seed."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import parse_config, setting
from common.demo import SCALES, write_demo
from common.io import run_main
from common.utils import set_seed


@dataclass
class DemoConfig:
    out: str = field(default="data/raw/demo", metadata={"help": "folder to write"})
    scale: str = field(default="small", metadata={"choices": tuple(SCALES), "help": "small: ~2 min demo; full: competition shape; 3x: ~100k users, 20k items, ~15M rows"})
    seed: int = setting(0, ge=0)


def main():
    cfg = parse_config(DemoConfig, description=__doc__)
    set_seed(cfg.seed)
    t0 = time.time()
    ratings = write_demo(Path(cfg.out), cfg.scale, cfg.seed)
    print(f"wrote {cfg.out}/train_ratings.csv ({len(ratings):,} rows, {ratings.user.nunique():,} users, "
          f"{ratings.item.nunique():,} items) and side files in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    run_main(main)

"""Choose a member's settings on validation answers: every point of a grid trains with 02_train.py on each
hold-out split and reports its best validation Recall@10 (the epoch chosen on the same answers, as the
recipes do). Test answers are never read here.

    .venv/bin/python bench/member_grid.py --args "--model multvae --batch-size 64 --anneal-steps 2000" \\
        --grid beta=0.2,0.5 lr=1e-3,3e-3 --seeds 3 4

The splits are data/bench-ml-h<S>-split (bench/submission.py --dataset ml makes them). The splits of one
point train side by side, one thread each; without --epochs in --args, each trains up to 300 epochs with
patience 30. Prints a Markdown table, best mean first, and appends JSON lines to
bench/results/member_grid.jsonl.
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import PY, ROOT, report  # noqa: E402

sys.path.insert(0, str(ROOT))
from common.pipeline import read_curve  # noqa: E402

DEFAULT_TRAINING = ["--epochs", "300", "--patience", "30"]
K = 10


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {item!r}: expected name=v1,v2,...")
        grid[name.replace("_", "-")] = values.split(",")
    return grid


def best_valid(run: Path) -> tuple[float, int]:
    curve = read_curve(run, K)  # every epoch scored on validation answers (the runs pass --split valid)
    if not curve:
        raise SystemExit(f"{run}: no epoch was scored")
    best = max(curve, key=lambda r: r["recall"])
    return best["recall"], best["epoch"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--args", required=True, help="02_train.py flags shared by every point")
    p.add_argument("--grid", nargs="*", default=[], help="name=v1,v2,... (a 02_train.py flag without --)")
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    p.add_argument("--dataset", default="ml", help="data/bench-<dataset>-h<S>-split")
    a = p.parse_args()
    grid = parse_grid(a.grid)
    base = shlex.split(a.args)
    if "--epochs" not in base:
        base += DEFAULT_TRAINING
    rows = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        flags = [x for name, v in point.items() for x in (f"--{name}", v)]
        tag = "grid-" + "-".join(f"{n}{v}" for n, v in point.items()) if point else "grid-base"
        t0, procs = time.time(), []
        for seed in a.seeds:
            data = ROOT / "data" / f"bench-{a.dataset}-h{seed}-split"
            if not (data / "valid.npz").exists():
                raise SystemExit(f"{data}: missing (run bench/submission.py --dataset {a.dataset} first)")
            cmd = [PY, "02_train.py", "--data", str(data), *base, *flags, "--run-name", tag, "--split", "valid",
                   "--threads", "1", "--no-progress"]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        scores = []
        for seed, proc in zip(a.seeds, procs):
            _, err = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"seed {seed}, {point}: 02_train.py failed: {err.strip().splitlines()[-1:]}")
            scores.append(best_valid(ROOT / "data" / f"bench-{a.dataset}-h{seed}-split" / "runs" / tag))
        rec = {"args": a.args, "point": point, "seeds": a.seeds, "valid_recall": [s for s, _ in scores],
               "best_epoch": [e for _, e in scores], "mean": float(np.mean([s for s, _ in scores])),
               "seconds": round(time.time() - t0, 1)}
        report("member_grid", rec)
        rows.append(rec)
    rows.sort(key=lambda r: -r["mean"])
    lines = ["| setting | validation Recall@10 per split | mean | best epochs | seconds |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {' '.join(f'{k}={v}' for k, v in r['point'].items()) or '(base)'} | "
              f"{' / '.join(f'{s:.4f}' for s in r['valid_recall'])} | {r['mean']:.4f} | "
              f"{' / '.join(map(str, r['best_epoch']))} | {r['seconds']} |" for r in rows]
    print("\n".join(lines))


if __name__ == "__main__":
    main()

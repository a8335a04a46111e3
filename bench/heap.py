"""What keeping freed memory in glibc's heap, or huge pages, would buy and cost: measurements, not settings we use.

    .venv/bin/python bench/heap.py                       # scoring time and peak, default SASRec of data/bench-members
    .venv/bin/python bench/heap.py --items 6808 20000 50000 --rounds 1   # peak of a scoring loop over more items
    .venv/bin/python bench/heap.py --profile --rounds 1   # torch.profiler of the timed pass, each way

glibc maps each block above 32 MB (the most its threshold allows) anew from the system, which zeroes it page
by page on first touch, and unmaps it when freed. A scoring pass allocates a batch's large activations again
and again, so it pays that each time. Each measurement runs in a process of its own in each of ENVIRONMENTS,
in an order that turns each round, over --rounds:
  * default: glibc's defaults;
  * heap: MALLOC_MMAP_MAX_=0 and a high MALLOC_TRIM_THRESHOLD_: every block comes from the heap, and freed
    ones stay there;
  * thp: THP_MEM_ALLOC_ENABLE=1: torch aligns blocks of 2 MB and more to 2 MB and asks the kernel for huge
    pages (madvise), so a block faults once per 2 MB instead of once per 4 KB. Where the kernel's THP defrag
    setting is `madvise`, a fault may wait for memory to be compacted.
  * time: one evaluation pass (`common.recommend.evaluate`) of --checkpoint after one untimed pass, with its
    Recall@10 and the process's peak memory (--profile: torch.profiler's top operators of that pass by self
    time, with their shapes, to bench/results/heap-profile-<environment>.txt);
  * items: for each of --items V, 30 batches of a score-like loop (a [1024, V] product, seen items set to -inf,
    the top 100), and the process's peak memory. glibc 2.36's aligned allocations (torch's) do not fit the
    holes their own frees leave, so under `heap` the heap can grow to several times the largest tensor.
A JSON line goes to bench/results/heap.jsonl.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import PY, ROOT, report  # noqa: E402

ENVIRONMENTS = {"default": {}, "heap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)},
                "thp": {"THP_MEM_ALLOC_ENABLE": "1"}}
SCORE_ROWS, SCORE_BATCHES, SCORE_TOP, SCORE_SEEN = 1024, 30, 100, 50_000  # the score-like loop
SCORE_HIDDEN = 64  # the default SASRec's width


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_time(args) -> None:
    """One evaluation pass after an untimed one: prints seconds, Recall@10 and peak MB."""
    import torch
    from common import recommend
    from common.checkpoint import load_checkpoint
    from common.data import Dataset
    from common.utils import autocast, autocast_dtype, pick_device
    device = pick_device("cpu", args.threads)
    ds = Dataset(Path(args.data), "valid")
    rec = recommend.build_recommender(load_checkpoint(args.checkpoint), ds, device)
    profiler = torch.profiler.profile(record_shapes=True) if args.profile else nullcontext()
    with autocast(autocast_dtype(args.amp, device), device):
        recommend.evaluate(rec, ds)
        with profiler:
            t0 = time.perf_counter()
            recall = recommend.evaluate(rec, ds)["recall@10"]
            seconds = time.perf_counter() - t0
    if args.profile:
        table = profiler.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20)
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        (ROOT / "bench" / "results" / f"heap-profile-{args.environment}.txt").write_text(table)
    print(seconds, recall, peak_mb())


def child_items(args) -> None:
    """The score-like loop over args.items[0] items: prints peak MB."""
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    V = args.items[0]
    h, table = torch.randn(SCORE_ROWS, SCORE_HIDDEN), torch.randn(SCORE_HIDDEN, V)
    for _ in range(SCORE_BATCHES):
        scores = h @ table  # [rows, V]
        scores.view(-1)[torch.from_numpy(rng.integers(0, scores.numel(), SCORE_SEEN))] = float("-inf")
        torch.topk(scores, SCORE_TOP, dim=1).indices.numpy().copy()
    print(peak_mb())


def run_child(args, what: str, environment: str, extra: list[str]) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not any(k in e for e in ENVIRONMENTS.values())}
    flags = ["--data", args.data, "--checkpoint", args.checkpoint, "--amp", args.amp, "--threads", str(args.threads),
             "--environment", environment, *(["--profile"] if args.profile else [])]
    p = subprocess.run([PY, __file__, "--child", what, *flags, *extra], cwd=ROOT,
                       env={**env, **ENVIRONMENTS[environment]}, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench/heap.py --child {what} ({environment}) failed:\n{p.stderr[-2000:]}")
    return [float(x) for x in p.stdout.split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data" / "bench-members"))
    ap.add_argument("--checkpoint", default=str(ROOT / "data" / "bench-members" / "runs" / "amp-off-s0" / "checkpoint.pt"))
    ap.add_argument("--amp", default="off", choices=("off", "bf16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--items", type=int, nargs="*", default=[], help="also the score-like loop over these many items")
    ap.add_argument("--profile", action="store_true", help="profile the timed evaluation pass")
    ap.add_argument("--environment", choices=tuple(ENVIRONMENTS), help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=("time", "items"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_time(args) if args.child == "time" else child_items(args)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"--checkpoint {args.checkpoint}: no such file; train one with "
                         f"02_train.py --data {args.data} and pass its runs/<name>/checkpoint.pt")
    record = {"amp": args.amp, "threads": args.threads, "rounds": args.rounds, "environments": ENVIRONMENTS}
    names = list(ENVIRONMENTS)
    runs = {name: [] for name in names}
    for r in range(args.rounds):  # which goes first turns each round
        for name in names[r % len(names):] + names[:r % len(names)]:
            seconds, recall, peak = run_child(args, "time", name, [])
            runs[name].append({"seconds": round(seconds, 2), "recall@10": round(recall, 6), "peak_mb": peak})
    for name, rs in runs.items():
        print(f"evaluation pass, {name:7s}: " + ", ".join(f"{x['seconds']:.2f} s ({x['peak_mb']:.0f} MB)" for x in rs)
              + f"; recall@10 {rs[0]['recall@10']}")
    record["evaluation"] = runs
    peaks = {}
    for V in args.items:
        peaks[V] = {name: [run_child(args, "items", name, ["--items", str(V)])[0] for _ in range(args.rounds)]
                    for name in names}
        print(f"score-like loop, {V:,} items: peak MB " + ", ".join(f"{k} {v}" for k, v in peaks[V].items()))
    record["score_loop_peak_mb"] = peaks
    report("heap", record)


if __name__ == "__main__":
    main()

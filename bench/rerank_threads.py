"""Time the reranker's classifier fit at several OpenMP thread counts, in a process that has loaded torch (as
06_submission.py has), and list the OpenMP runtimes loaded. Each count runs in its own child process under a
time limit, so a stalled fit shows as "timed out" instead of hanging the bench.

    .venv/bin/python bench/rerank_threads.py --threads 1 2            # this machine
    python3 bench/rerank_threads.py --threads 0 1 4 16 --pairs 2000000   # a many-core machine (0: the default)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import PY, ROOT, report  # noqa: E402

CHILD = """
import json, sys, time
import numpy as np
import torch  # loaded first, as in 06_submission.py
from threadpoolctl import threadpool_info
from common.rerank import Candidates, RerankConfig, fit, fit_threads
threads, pairs, features, torch_first = (int(a) for a in sys.argv[1:5])
if torch_first:  # torch's own thread pool (and CUDA, where there is one) started before the fit
    torch.set_num_threads(torch_first)
    torch.randn(2048, 2048) @ torch.randn(2048, 2048)
    if torch.cuda.is_available():
        torch.randn(1024, 1024, device="cuda").sum().item()
rng = np.random.default_rng(0)
X = rng.standard_normal((pairs, features)).astype(np.float32)
y = (X[:, 0] + 0.5 * X[:, 1] + rng.standard_normal(pairs) > 2.5).astype(np.int8)
c = Candidates(np.arange(pairs), np.arange(pairs), X, [f"f{i}" for i in range(features)])
t = time.perf_counter()
with fit_threads(threads):
    fit(c, y, RerankConfig(max_pairs=0))
runtimes = sorted({(i["internal_api"], i.get("prefix", ""), i["num_threads"]) for i in threadpool_info()})
print(json.dumps({"fit_seconds": round(time.perf_counter() - t, 2), "runtimes": runtimes}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="OpenMP threads of the fit (0: default)")
    ap.add_argument("--pairs", type=int, default=1_000_000, help="candidate pairs (the default max_pairs)")
    ap.add_argument("--features", type=int, default=17)
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="start torch's CPU pool with this many threads (and CUDA) before the fit (0: no torch work)")
    ap.add_argument("--limit", type=float, default=600.0, help="seconds before a fit counts as stalled")
    a = ap.parse_args()
    for threads in a.threads:
        t = time.time()
        try:
            p = subprocess.run([PY, "-c", CHILD, str(threads), str(a.pairs), str(a.features), str(a.torch_threads)], cwd=ROOT,
                               capture_output=True, text=True, timeout=a.limit)
            if p.returncode != 0:
                raise SystemExit(f"failed ({p.returncode}) at {threads} threads:\n{p.stderr[-2000:]}")
            record = json.loads(p.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            record = {"fit_seconds": None, "timed_out": True}
        report("rerank_threads", {"threads": threads, "pairs": a.pairs, "features": a.features, "torch_threads": a.torch_threads,
                                  "wall_seconds": round(time.time() - t, 2), **record})


if __name__ == "__main__":
    main()

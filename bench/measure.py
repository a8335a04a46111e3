"""Run a command under /usr/bin/time -v and return its wall seconds, peak memory and output."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def measure(args: list[str]) -> dict:
    t0 = time.time()
    p = subprocess.run(["/usr/bin/time", "-v", *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(args)}\n{p.stderr[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return {"seconds": round(seconds, 2), "peak_mb": round(peak_kb / 1024, 1), "stdout": p.stdout}


def last_json(stdout: str) -> dict:
    """The last JSON object a script printed."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def ensure_full_demo(raw: Path, seed: int = 0) -> None:
    if not (raw / "train_ratings.csv").exists():
        subprocess.run([PY, "00_make_demo.py", "--scale", "full", "--out", str(raw), "--seed", str(seed)],
                       cwd=ROOT, check=True)


def report(name: str, record: dict) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    line = json.dumps({"bench": name, **record})
    with open(out / f"{name}.jsonl", "a") as f:
        f.write(line + "\n")
    print(line)

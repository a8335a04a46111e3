"""Time 01_preprocess.py on full-scale demo data (~5.1M rows) and record peak memory.

    .venv/bin/python bench/preprocess.py          # targets: < 10 s, < 3 GB on 2 CPU cores
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import PY, ensure_full_demo, measure, report  # noqa: E402

RAW = Path("data/raw/demo-full")


def main():
    ensure_full_demo(RAW)
    m = measure([PY, "01_preprocess.py", "--input", str(RAW), "--name", "demo-full"])
    report("preprocess", {"data": str(RAW), "seconds": m["seconds"], "peak_mb": m["peak_mb"],
                          "target_seconds": 10, "target_peak_mb": 3072})


if __name__ == "__main__":
    main()

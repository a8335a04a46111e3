"""Seeds, devices and small helpers shared by the scripts."""
from __future__ import annotations

import os
import random
import sys

import numpy as np


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (if loaded) from one value."""
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def pick_device(name: str = "auto", threads: int = 0):
    """`auto`: CUDA when available, else CPU with `threads` threads (0: one per core)."""
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.device(name)

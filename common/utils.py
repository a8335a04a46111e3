"""Seeds, devices and small helpers shared by the scripts."""
from __future__ import annotations

import os
import random
import sys

import numpy as np

from common.io import InputError


class TrainingError(InputError):
    """Training cannot go on (a non-finite loss); the message says which checkpoint was kept."""


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
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not (torch.cuda.is_available()
                                      and (device.index or 0) < torch.cuda.device_count()):
        raise InputError(f"--device {name}: no such CUDA device on this machine; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    return device


def optimizer_step(opt, loss, where: str, kept) -> float:
    """Back-propagate `loss` and step `opt`; returns the loss value.

    A NaN or infinite loss raises TrainingError before any weight changes, naming `where` it happened
    and the last good checkpoint `kept` (a path, or none when it does not exist yet).
    """
    value = loss.item()
    if not loss.isfinite():
        kept = kept if kept is not None and os.path.exists(kept) else "none"
        raise TrainingError(f"loss became {value} at {where}; last good checkpoint: {kept}. Lower --lr or check the data")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return value

"""Seeds, devices and small helpers shared by the scripts."""
from __future__ import annotations

import math
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
    if device.type == "cuda":  # cuDNN's attention plans each new shape anew (seconds per sequence length);
        torch.backends.cuda.enable_cudnn_sdp(False)  # the memory-efficient kernel needs no planning
    if device.type == "cpu":  # under torchrun the processes of one machine share its cores
        per_process = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(threads or max(1, per_process))
    return device


def autocast_dtype(amp: str, device):
    """The autocast dtype of --amp on `device`, or None for full precision."""
    import torch
    if amp != "bf16":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bf16 support; use --amp off")
    return torch.bfloat16


def autocast(dtype, device):
    """Autocast to `dtype` (from autocast_dtype, resolved once) on `device`, or nothing for None."""
    import torch
    from contextlib import nullcontext
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def check_finite(value: float, where: str, kept) -> None:
    """Raise TrainingError for a NaN or infinite loss `value`, naming `where` it happened and the last good
    checkpoint `kept` (a path, or none when it does not exist yet)."""
    if not math.isfinite(value):
        kept = kept if kept is not None and os.path.exists(kept) else "none"
        raise TrainingError(f"loss became {value} at {where}; last good checkpoint: {kept}. Lower --lr or check the data")


def optimizer_step(opt, loss, where: str, kept, check: bool = True) -> float | None:
    """Back-propagate `loss` and step `opt`. With `check`, returns the loss value, and a NaN or infinite
    loss raises TrainingError (see check_finite) before any weight changes; without, nothing waits for
    the device (the caller checks the accumulated loss now and then)."""
    value = loss.item() if check else None
    if check:
        check_finite(value, where, kept)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return value


def to_device(arrays: dict, device) -> dict:
    """numpy arrays -> tensors on `device`; to CUDA through pinned memory without waiting for the copy."""
    import torch
    out = {}
    for name, a in arrays.items():
        t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        out[name] = t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
    return out

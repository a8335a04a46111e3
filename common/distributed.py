"""Data-parallel training with torch.distributed, started by torchrun.

    torchrun --nproc_per_node N 02_train.py ...                      one machine, N processes (GPUs)
    torchrun --nnodes M --node_rank R --nproc_per_node N \\
             --rdzv_backend c10d --rdzv_endpoint HOST:PORT 02_train.py ...   M machines

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process; without them everything here is the
single-process case and changes nothing. The group uses NCCL on CUDA and gloo on CPU.

The split of work:
  * every rank draws the same epoch of batches (the batch order comes from the one seeded generator) and
    trains on its rows of each: rows rank, rank + W, ... (`shard`), so --batch-size stays the global batch
    and a run's settings mean the same on any number of processes;
  * within an epoch each rank samples (negatives, masks) from a stream of its own (`rank_stream`), and all
    ranks leave the epoch with the same generator state, so the next epoch's batches agree again;
  * so with the same global batch, a model that samples nothing follows one process's loss curve
    (tests/test_distributed.py), up to the order of floating-point sums;
  * DistributedDataParallel averages the gradients; every rank steps the same weights, scores the same
    epochs and stops at the same one; rank 0 alone writes files and prints.
"""
from __future__ import annotations

import hashlib
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place, from torchrun's variables (one process when they are absent)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> World:
    """Join the process group of a torchrun launch (a no-op for one process). Ranks other than 0 stop
    printing to stdout; errors still reach stderr."""
    w = world()
    if w.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        if not w.main:
            sys.stdout = open(os.devnull, "w")
    return w


def local_device(name: str) -> str:
    """Under torchrun each process on a machine takes the GPU of its local rank."""
    w = world()
    if w.distributed and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{w.local_rank % torch.cuda.device_count()}"
    return name


def shard(rows, w: World):
    """Rank w.rank's rows of one batch of examples: an array, or a tuple whose arrays are sharded."""
    if isinstance(rows, tuple):
        return tuple(shard(x, w) for x in rows)
    if isinstance(rows, np.ndarray):
        return rows[w.rank::w.size]
    return rows


def shardable(rows, w: World) -> bool:
    """Whether every rank gets at least one row of this batch (else all ranks skip it together)."""
    if isinstance(rows, tuple):
        return all(shardable(x, w) for x in rows)
    return not isinstance(rows, np.ndarray) or len(rows) >= w.size


@contextmanager
def rank_stream(rng: np.random.Generator, w: World):
    """Within the block `rng` draws from a stream of this rank's own, seeded by the shared state and the
    rank; afterwards every rank is back at the shared state, which the block did not advance (the next
    epoch's batches are those one process would draw when it samples nothing). One process: `rng` is left
    alone."""
    if not w.distributed:
        yield
        return
    shared = rng.bit_generator.state
    seed = int.from_bytes(hashlib.sha256(repr(shared).encode()).digest()[:8], "little")
    rng.bit_generator.state = np.random.default_rng([seed, w.rank]).bit_generator.state
    try:
        yield
    finally:
        rng.bit_generator.state = shared


class TaskLoss(nn.Module):
    """A task's loss as a module's forward, so that DistributedDataParallel sees the whole step."""

    def __init__(self, task):
        super().__init__()
        self.model = task.module
        self.task = task

    def forward(self, batch):
        return self.task.loss(batch)


def data_parallel(task, device: torch.device, w: World):
    """The callable that computes a batch's loss: the task's own, or a DDP wrapper that averages gradients
    over the ranks (weights are broadcast from rank 0 here)."""
    if not w.distributed:
        return task.loss
    ids = [device.index] if device.type == "cuda" else None
    unused = getattr(task, "unused_parameters", False)  # a task whose steps train part of the model says so
    wrapped = nn.parallel.DistributedDataParallel(TaskLoss(task), device_ids=ids, find_unused_parameters=unused)
    if w.rank:  # dropout masks of their own (the weights were just broadcast from rank 0)
        torch.manual_seed(torch.initial_seed() + w.rank)
    return wrapped


def mean_over_ranks(value: torch.Tensor, w: World) -> torch.Tensor:
    """The mean of a scalar tensor over the ranks (itself for one process)."""
    if not w.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / w.size


def from_main(value: float, w: World, device: torch.device) -> float:
    """Rank 0's value of a number every rank computed, so that decisions on it agree exactly."""
    if not w.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return float(t.item())


def teardown(w: World) -> None:
    """End the process group once every rank is done: a rank that tore down while another still used its
    connections aborted now and then ("terminate called without an active exception", 1 run in 16 on a
    loaded 2-core machine)."""
    if w.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

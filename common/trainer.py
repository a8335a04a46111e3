"""The one training loop of every gradient-trained model.

A model or objective plugs in as a task, a small object with:
  module            the nn.Module whose parameters are trained (already on the device)
  args              its model arguments (a dataclass; resume checks the saved shape against it)
  stage             "finetune" or "pretrain": written into checkpoints, checked on resume
  label             what progress bars and error messages call an epoch ("" or e.g. "pretraining ")
  describe()        one line printed before training
  batches(epoch)    this epoch's batches (a sized iterable; see `Lazy`)
  loss(batch)       a scalar tensor, or (tensor, {name: float or None}) to log named parts per epoch
  checkpoint(kept)  {model_type, model_args, state_dict, ...}: what inference or the next stage reads
                    from the kept weights
  evaluate(kept)    optional: metrics of the kept weights on the local answers; recall@k chooses the epoch
  unused_parameters optional, True when a step may leave parameters without a gradient (data-parallel
                    training must then look for them)

The trainer owns the epochs, the optimizer step with its non-finite check, bf16 autocast (--amp), the
moving average of the weights (--ema), evaluation and early stopping, checkpoint and resume, metrics.jsonl
and progress, and data-parallel training under torchrun (common.distributed: each rank trains on its rows
of every batch, rank 0 writes). On CUDA a step waits for the GPU only every --check-every steps.

Files in `out/`:
  checkpoint.pt   the kept weights: the best-scoring epoch, or the latest when nothing scores epochs
  last.pt         the latest epoch; --resume continues from it
  metrics.jsonl   one JSON line per epoch
Every checkpoint carries the resume state (optimizer, random generators, the trained weights).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from common.config import setting
from common.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from common.data import Dataset
from common.distributed import World, data_parallel, from_main, mean_over_ranks, rank_stream, shard, shardable
from common.io import InputError, Interrupted, append_jsonl, deferred_interrupt, keep_epochs_before
from common.utils import autocast, autocast_dtype, check_finite, optimizer_step

GPU_CHECK_EVERY = 100  # steps between loss checks on CUDA, where reading the loss waits for the GPU
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainerConfig:
    lr: float = setting(1e-3, gt=0)
    schedule: str = setting("constant", "the learning rate over the run: constant, or cosine (from --lr down a half "
                                        "cosine to --lr * --lr-floor at the end of epoch --decay-epochs, then held)",
                            choices=SCHEDULES)
    decay_epochs: int = setting(0, "cosine: epochs over which the rate falls; fixed apart from --epochs, so that a "
                                   "run stopped or refitted earlier follows the same rates", ge=0)
    lr_floor: float = setting(0.1, "cosine: the last rate, as a share of --lr", ge=0, le=1)
    warmup_epochs: float = setting(0.0, "rise linearly from 0 to the schedule's rate over this many epochs "
                                        "(fractions count steps: 0.5 is half an epoch's steps)", ge=0)
    weight_decay: float = setting(0.0, ge=0)
    ema: float = setting(0.0, "evaluate and save an exponential moving average of the weights with this decay per "
                              "step (0: off)", ge=0, lt=1)
    batch_size: int = setting(256, ge=1)
    epochs: int = setting(200, "maximum epochs (fixed count without a hold-out)", ge=1)
    select: str = field(default="best", metadata={"choices": ("best", "last"), "help": "best: keep the best-scoring "
                                                  "epoch and stop early; last: train --epochs, read no answers"})
    patience: int = setting(10, "epochs without a better Recall@k before stopping", ge=1)
    min_delta: float = setting(0.0, "patience restarts only when Recall@k beats the score that last restarted it "
                                    "by more than this (the best epoch is still the one kept)", ge=0)
    k: int = setting(10, ge=1)
    eval_batch_size: int = setting(1024, ge=1)
    seed: int = setting(42, ge=0)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    amp: str = setting("off", "bf16 autocast of the training step and of a sequence model's encoder in the epoch's "
                              "evaluation (off: full precision; at this project's model sizes bf16 measured no "
                              "faster on an H200, far slower on CPUs without a bf16 unit, and on one with AVX-512 "
                              "BF16 a quarter off a default SASRec epoch)",
                       choices=("off", "bf16"))
    check_every: int = setting(0, "steps between checks that the loss is finite (0: every step on CPU, 100 on "
                                  "CUDA, where each check waits for the GPU)", ge=0)
    threads: int = setting(0, "CPU threads (0: one per core)", ge=0)
    resume: bool = field(default=False, metadata={"help": "continue the run from its last.pt"})
    progress: bool = field(default=True, metadata={"help": "show tqdm bars"})

    RULES = ((lambda c: c.schedule != "cosine" or c.decay_epochs > 0,
              "--schedule cosine needs --decay-epochs (the epochs over which the rate falls)"),)


def learning_rate(cfg: TrainerConfig, epoch: int, step: int, steps: int) -> float:
    """The rate of step `step` (0-based) of epoch `epoch`, which has `steps` steps: a pure function of where
    the run is, so a resumed run takes the same steps. Progress is counted in epochs (epoch + step / steps),
    so epochs of different lengths each span one unit."""
    done = epoch + step / steps  # epochs finished before this step
    rate = cfg.lr
    if cfg.schedule == "cosine":
        share = min(done / cfg.decay_epochs, 1.0)
        rate *= cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * share))
    if cfg.warmup_epochs:
        rate *= min(1.0, (done + 1 / steps) / cfg.warmup_epochs)  # the first step already moves
    return rate


class Lazy:
    """`fn` applied to each of `items` while iterating, with a length (for progress bars)."""

    def __init__(self, items: Sequence, fn: Callable):
        self.items, self.fn = items, fn

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return (self.fn(x) for x in self.items)


def format_record(record: dict) -> str:
    return " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())


def adam(model: torch.nn.Module, lr: float, weight_decay: float, device: torch.device) -> torch.optim.Adam:
    """Adam over the model's parameters, as one fused kernel per step on CPU and CUDA (the per-tensor
    loop costs more than the model's own step when a wide item layer is trained).
    The first optimizer imports torch's compiler, whose class-building code turns a Ctrl-C that lands
    inside it into a RuntimeError: the Ctrl-C is held until the import is done."""
    with deferred_interrupt():
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay,
                                fused=device.type in ("cpu", "cuda"))


class Trainer:
    def __init__(self, cfg: TrainerConfig, ds: Dataset, out: Path, device: torch.device, config: dict,
                 world: World = World()):
        self.cfg, self.ds, self.out, self.device, self.world = cfg, ds, Path(out), device, world
        self.config = config  # the run's whole resolved config, saved in every checkpoint

    def fit(self, task, rng: np.random.Generator) -> None:
        """Train `task` for up to cfg.epochs epochs; `rng` draws its batches (its state is saved and resumed)."""
        cfg, ds, out, w = self.cfg, self.ds, self.out, self.world
        if w.main:
            out.mkdir(parents=True, exist_ok=True)
        model = task.module
        step_loss = data_parallel(task, self.device, w)  # before the moving average: it copies the broadcast weights
        opt = adam(model, cfg.lr, cfg.weight_decay, self.device)
        # the weights that are scored and saved: the model itself, or the moving average of its steps
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
        kept = ema.module if ema else model
        amp = autocast_dtype(cfg.amp, self.device)
        check_every = cfg.check_every or (1 if self.device.type == "cpu" else GPU_CHECK_EVERY)
        start_epoch, best, best_epoch, bad_epochs = 0, -math.inf, -1, 0
        mark = -math.inf  # the score that last restarted the patience count
        last_path, best_path, metrics_path = out / "last.pt", out / "checkpoint.pt", out / "metrics.jsonl"
        if cfg.resume:
            if not last_path.exists():
                raise InputError(f"{last_path}: nothing to resume; run without --resume first")
            st = load_checkpoint(last_path)
            check_resumable(st, ds, str(last_path), stage=task.stage, args=task.args, ema=bool(ema))
            model.load_state_dict(st["train_state_dict"])
            if ema:
                ema.load_state_dict(st["ema"])
            opt.load_state_dict(st["optimizer"])
            rng.bit_generator.state = st["numpy_rng"]
            torch.set_rng_state(st["torch_rng"])
            if self.device.type == "cuda" and "cuda_rng" in st:
                torch.cuda.set_rng_state(st["cuda_rng"], self.device)
            start_epoch, best, best_epoch, bad_epochs = st["epoch"] + 1, st["best_score"], st["best_epoch"], st["bad_epochs"]
            mark = st.get("patience_mark", best)
            if w.main:
                keep_epochs_before(metrics_path, start_epoch)
            print(f"resuming {out.name} at epoch {start_epoch}"
                  + (f" (best recall@{cfg.k} {best:.4f} at epoch {best_epoch})" if best_epoch >= 0 else ""))
        elif metrics_path.exists() and w.main:
            metrics_path.unlink()
        scored = ds.has_holdout and cfg.select == "best" and hasattr(task, "evaluate")  # answers choose the epoch
        scheduled = cfg.schedule != "constant" or cfg.warmup_epochs > 0  # metrics then record each epoch's last rate

        def save(path: Path, epoch: int, best_score, record: dict) -> None:
            if not w.main:
                return
            saved = task.checkpoint(kept)
            resume = {"stage": task.stage, "record": record, "optimizer": opt.state_dict(), "best_epoch": best_epoch,
                      "bad_epochs": bad_epochs, "patience_mark": mark, "numpy_rng": rng.bit_generator.state,
                      "torch_rng": torch.get_rng_state(), "train_state_dict": model.state_dict()}
            if self.device.type == "cuda":
                resume["cuda_rng"] = torch.cuda.get_rng_state(self.device)
            if ema:
                resume["ema"] = ema.state_dict()
            save_checkpoint(path, model_type=saved.pop("model_type"), model_args=saved.pop("model_args"),
                            state_dict=saved.pop("state_dict"), config=self.config, ds=ds, epoch=epoch,
                            best_score=best_score, extra={**resume, **saved})

        print(f"{task.describe()}, device {self.device}" + (", bf16 autocast" if amp else "")
              + (f", {w.size} processes" if w.distributed else ""))
        resume_at = start_epoch  # the epoch a --resume would start from: the one after last.pt's
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.time()
                model.train()
                batches = task.batches(epoch)  # the same on every rank
                if w.distributed:
                    batches = Lazy([shard(x, w) for x in batches.items if shardable(x, w)], batches.fn)
                total, steps, parts = torch.zeros((), device=self.device), 0, {}
                n_steps = max(len(batches), 1)
                bar = tqdm(batches, desc=f"{task.label}epoch {epoch}", disable=not (cfg.progress and w.main),
                           leave=False)
                with rank_stream(rng, w):
                    for batch in bar:
                        rate = learning_rate(cfg, epoch, steps, n_steps)
                        for group in opt.param_groups:
                            group["lr"] = rate
                        with autocast(amp, self.device):
                            loss = step_loss(batch)
                        loss, named = loss if isinstance(loss, tuple) else (loss, {})
                        where = f"{task.label}epoch {epoch} step {steps}" + (f" ({json.dumps(named)})" if named else "")
                        optimizer_step(opt, loss, where, best_path, check=check_every == 1)
                        if ema:
                            ema.update_parameters(model)
                        total, steps = total + loss.detach().float(), steps + 1
                        for name, v in named.items():  # a part that is never computed (None) stays None
                            if v is None:
                                parts.setdefault(name, None)
                            else:
                                parts[name] = (parts.get(name) or 0.0) + v
                        if steps % check_every == 0:  # every step on CPU, where optimizer_step has checked
                            mean = total.item() / steps
                            if check_every > 1:
                                check_finite(mean, f"{task.label}epoch {epoch} by step {steps - 1}", best_path)
                            bar.set_postfix(loss=f"{mean:.4f}")
                mean = mean_over_ranks(total, w).item() / max(steps, 1)
                check_finite(mean, f"{task.label}epoch {epoch} by step {steps - 1}", best_path)
                record = {"epoch": epoch, "loss": mean, **({"lr": rate} if steps and scheduled else {}),
                          **{name: None if s is None else s / max(steps, 1) for name, s in parts.items()}}
                improved = not scored
                if scored:
                    record["answers"] = ds.split
                    record.update(task.evaluate(kept))
                    score = from_main(record[f"recall@{cfg.k}"], w, self.device)  # every rank stops together
                    improved = score > best
                    if improved:
                        best, best_epoch = score, epoch
                    if score > mark + cfg.min_delta:
                        mark, bad_epochs = score, 0
                    else:
                        bad_epochs += 1
                record["seconds"] = round(time.time() - t0, 3)
                if w.main:
                    append_jsonl(metrics_path, record)
                print(format_record(record))
                if improved:
                    save(best_path, epoch, best if scored else None, record)
                with deferred_interrupt():  # last.pt and the epoch the message names change together
                    save(last_path, epoch, best, record)
                    resume_at = epoch + 1
                if scored and bad_epochs >= cfg.patience:
                    gain = f" by more than {cfg.min_delta:g}" if cfg.min_delta else ""
                    print(f"no better recall@{cfg.k}{gain} for {cfg.patience} epochs: stopping")
                    break
        except KeyboardInterrupt:
            saved = "continue with --resume" if last_path.exists() else "no epoch had finished; run it again"
            raise Interrupted(f"interrupted at epoch {resume_at}; {saved}") from None
        if scored:
            print(f"best recall@{cfg.k} ({ds.answers_label} answers) {best:.4f} at epoch {best_epoch}")

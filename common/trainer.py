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

The trainer owns the epochs, the optimizer step with its non-finite check, the moving average of the
weights (--ema), evaluation and early stopping, checkpoint and resume, metrics.jsonl and progress.

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
from common.io import InputError, Interrupted, append_jsonl, keep_epochs_before
from common.utils import optimizer_step


@dataclass
class TrainerConfig:
    lr: float = setting(1e-3, gt=0)
    weight_decay: float = setting(0.0, ge=0)
    ema: float = setting(0.0, "evaluate and save an exponential moving average of the weights with this decay per "
                              "step (0: off)", ge=0, lt=1)
    batch_size: int = setting(256, ge=1)
    epochs: int = setting(200, "maximum epochs (fixed count without a hold-out)", ge=1)
    select: str = field(default="best", metadata={"choices": ("best", "last"), "help": "best: keep the best-scoring "
                                                  "epoch and stop early; last: train --epochs, read no answers"})
    patience: int = setting(10, "epochs without a better Recall@k before stopping", ge=1)
    k: int = setting(10, ge=1)
    eval_batch_size: int = setting(1024, ge=1)
    seed: int = setting(42, ge=0)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    threads: int = setting(0, "CPU threads (0: one per core)", ge=0)
    resume: bool = field(default=False, metadata={"help": "continue the run from its last.pt"})
    progress: bool = field(default=True, metadata={"help": "show tqdm bars"})


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


class Trainer:
    def __init__(self, cfg: TrainerConfig, ds: Dataset, out: Path, device: torch.device, config: dict):
        self.cfg, self.ds, self.out, self.device = cfg, ds, Path(out), device
        self.config = config  # the run's whole resolved config, saved in every checkpoint

    def fit(self, task, rng: np.random.Generator) -> None:
        """Train `task` for up to cfg.epochs epochs; `rng` draws its batches (its state is saved and resumed)."""
        cfg, ds, out = self.cfg, self.ds, self.out
        out.mkdir(parents=True, exist_ok=True)
        model = task.module
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # the weights that are scored and saved: the model itself, or the moving average of its steps
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
        kept = ema.module if ema else model
        start_epoch, best, best_epoch, bad_epochs = 0, -math.inf, -1, 0
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
            keep_epochs_before(metrics_path, start_epoch)
            print(f"resuming {out.name} at epoch {start_epoch}"
                  + (f" (best recall@{cfg.k} {best:.4f} at epoch {best_epoch})" if best_epoch >= 0 else ""))
        elif metrics_path.exists():
            metrics_path.unlink()
        scored = ds.has_holdout and cfg.select == "best" and hasattr(task, "evaluate")  # answers choose the epoch

        def save(path: Path, epoch: int, best_score, record: dict) -> None:
            saved = task.checkpoint(kept)
            resume = {"stage": task.stage, "record": record, "optimizer": opt.state_dict(), "best_epoch": best_epoch,
                      "bad_epochs": bad_epochs, "numpy_rng": rng.bit_generator.state,
                      "torch_rng": torch.get_rng_state(), "train_state_dict": model.state_dict()}
            if self.device.type == "cuda":
                resume["cuda_rng"] = torch.cuda.get_rng_state(self.device)
            if ema:
                resume["ema"] = ema.state_dict()
            save_checkpoint(path, model_type=saved.pop("model_type"), model_args=saved.pop("model_args"),
                            state_dict=saved.pop("state_dict"), config=self.config, ds=ds, epoch=epoch,
                            best_score=best_score, extra={**resume, **saved})

        print(f"{task.describe()}, device {self.device}")
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t0 = time.time()
                model.train()
                total, steps, parts = 0.0, 0, {}
                bar = tqdm(task.batches(epoch), desc=f"{task.label}epoch {epoch}", disable=not cfg.progress,
                           leave=False)
                for batch in bar:
                    loss = task.loss(batch)
                    loss, named = loss if isinstance(loss, tuple) else (loss, {})
                    where = f"{task.label}epoch {epoch} step {steps}" + (f" ({json.dumps(named)})" if named else "")
                    value = optimizer_step(opt, loss, where, best_path)
                    if ema:
                        ema.update_parameters(model)
                    total, steps = total + value, steps + 1
                    for name, v in named.items():  # a part that is never computed (None) stays None
                        if v is None:
                            parts.setdefault(name, None)
                        else:
                            parts[name] = (parts.get(name) or 0.0) + v
                    bar.set_postfix(loss=f"{total / steps:.4f}")
                record = {"epoch": epoch, "loss": total / max(steps, 1),
                          **{name: None if s is None else s / max(steps, 1) for name, s in parts.items()}}
                improved = not scored
                if scored:
                    record["answers"] = ds.split
                    record.update(task.evaluate(kept))
                    score = record[f"recall@{cfg.k}"]
                    improved = score > best
                    if improved:
                        best, best_epoch, bad_epochs = score, epoch, 0
                    else:
                        bad_epochs += 1
                record["seconds"] = round(time.time() - t0, 3)
                append_jsonl(metrics_path, record)
                print(format_record(record))
                if improved:
                    save(best_path, epoch, best if scored else None, record)
                save(last_path, epoch, best, record)
                if scored and bad_epochs >= cfg.patience:
                    print(f"no better recall@{cfg.k} for {cfg.patience} epochs: stopping")
                    break
        except KeyboardInterrupt:
            saved = "continue with --resume" if last_path.exists() else "no epoch had finished; run it again"
            raise Interrupted(f"interrupted at epoch {epoch}; {saved}") from None
        if scored:
            print(f"best recall@{cfg.k} ({ds.answers_label} answers) {best:.4f} at epoch {best_epoch}")

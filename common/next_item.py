"""Next-item training of SASRec (S3-Rec's fine-tuning stage): the objective, its batches, and its task.

The loss (--loss) scores target positions: bce (the baseline: one sampled negative per position), bpr,
ce (softmax over all items) or sampled (negatives shared by the batch). The history mode (--history)
says which windows are read (see common.batches); `holdout` trains on simulated hidden sets: the next
items after a random cut plus randomly dropped earlier ones, predicted together from the rest.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.config import setting
from common.batches import (HISTORY_MODES, NegativeSampler, epoch_batches, gather_future, gather_windows,
                            gather_packed, holdout_cuts, holdout_examples, holdout_users, pack_windows,
                            padded_columns, window_ends)
from common.data import Dataset, owner_of
from common.losses import LOSSES
from common.model import SASRec, SASRecArgs
from common.pretrain import load_pretrained_encoder
from common.recommend import RecommenderTask, SASRecRecommender, restored
from common.trainer import Lazy
from common.utils import to_device


@dataclass
class ObjectiveConfig:
    loss: str = field(default="bce", metadata={"choices": tuple(LOSSES)})
    history: str = field(default="last", metadata={"choices": HISTORY_MODES,
                                                   "help": "last max_len items, all windows, random crops, or "
                                                           "simulated hidden sets (holdout)"})
    holdout_last: int = setting(5, "history holdout: next items hidden per example", ge=1)
    holdout_random: int = setting(5, "history holdout: earlier items dropped and hidden", ge=0)
    holdout_samples: int = setting(8, "history holdout: examples per user per epoch", ge=1)
    horizon: int = setting(1, "targets per position: the next K items (1: next item only)", ge=1)
    negatives: int = setting(1, "negatives per target (bce, bpr) or per batch (sampled)", ge=1)
    sampled_dist: str = field(default="uniform", metadata={"choices": ("uniform", "pop"),
                                                           "help": "sampled: draw shared negatives uniformly or by popularity"})
    logq: bool = field(default=False, metadata={"help": "sampled: subtract log q(item) from logits"})
    pack: bool = field(default=True, metadata={"help": "sasrec on --history last, windows or crops: windows shorter "
                                                       "than max_len share rows, each reading only itself (fewer "
                                                       "padded positions; the same outputs)"})
    bucket: bool = field(default=False, metadata={"help": "sasrec on --history last, windows or crops: batch windows "
                                                          "of similar length together, each batch as wide as its "
                                                          "longest (faster, but lower recall at equal epochs: see the "
                                                          "README); simulated hidden sets and the cloze model are "
                                                          "always batched by length"})


def train_loss(model: SASRec, batch: dict, loss_name: str) -> torch.Tensor:
    """Loss over the non-padded target positions of a batch {input, target, future?, exclude?,
    negatives | shared, log_q?, positions?, weight?, segment?, position?}; `segment` and `position` mark rows
    that hold several windows (`common.batches.pack_windows`). `exclude` [B, E] lists items a full softmax
    leaves out for row b's targets. `positions` [N] are the flat indices of the target positions (row * L +
    column), found on the host so that the step never waits for the device; without it they are found here.
    `weight` scales the loss (see `batch_weight`)."""
    loss = _train_loss(model, batch, loss_name)
    return loss * batch["weight"] if "weight" in batch else loss


def _train_loss(model: SASRec, batch: dict, loss_name: str) -> torch.Tensor:
    spec = LOSSES[loss_name]
    h = model(batch["input"], segment=batch.get("segment"), position=batch.get("position"))  # [B, L, H]
    B, L, H = h.shape
    positions = batch.get("positions")
    if positions is None:
        positions = (batch["target"] != 0).flatten().nonzero()[:, 0]
    h = h.reshape(B * L, H).index_select(0, positions)  # [N, H] (its backward adds rows; indexing's sorts first)
    target = batch["target"].reshape(B * L)[positions]  # [N]
    future = batch["future"].reshape(B * L, -1)[positions] if "future" in batch else None  # [N, K] next K, 0 = none
    if spec.kind == "full":
        logits = model.score_all(h)  # [N, V]
        logits[:, 0] = -math.inf  # padding is never an answer (the product's backward does not read it)
        exclude = batch["exclude"][positions // L] if "exclude" in batch else None  # the row's items, as at inference
        return spec.fn(logits, target if future is None else future, exclude)
    if future is not None:  # one (position, future item) pair per target, in row-major order
        rows, k = torch.nonzero(future, as_tuple=True)
        h, target = h[rows], future[rows, k]  # [P, H], [P]
    pos = model.score_items(h, target[:, None])[:, 0]  # [N]
    if spec.negatives == "shared":
        shared = batch["shared"]  # [M]
        neg = h @ model.output_embeddings()[shared].T  # [N, M]
        neg = neg.masked_fill(shared[None, :] == target[:, None], -math.inf)
        if "log_q" in batch:  # logQ correction for popularity-sampled negatives
            pos, neg = pos - batch["log_q"][target], neg - batch["log_q"][shared][None, :]
    else:
        neg = model.score_items(h, batch["negatives"])  # [N, M]
    return spec.fn(pos, neg)


def training_batches(ds: Dataset, cfg, rng: np.random.Generator) -> list[np.ndarray]:
    """This epoch's batches in random order: window ends, or cuts of simulated hidden sets (history
    holdout, batched by input length so that short histories are not padded to max_len; windows too with
    --bucket). `cfg` is a TrainConfig (objective, sasrec.max_len, trainer.batch_size)."""
    o, max_len, batch_size = cfg.objective, cfg.sasrec.max_len, cfg.trainer.batch_size
    if o.history == "holdout":
        users = np.repeat(holdout_users(ds.indptr, o.holdout_last, o.holdout_random), o.holdout_samples)
        cuts = holdout_cuts(ds.indptr, users, o.holdout_last, o.holdout_random, rng)
        return epoch_batches(ds.indptr, cuts, max_len, batch_size, rng)
    ends = window_ends(ds.indptr, max_len, o.history, rng)
    if o.bucket:
        return epoch_batches(ds.indptr, ends, max_len, batch_size, rng)
    ends = ends[rng.permutation(len(ends))]
    return [ends[s:s + batch_size] for s in range(0, len(ends), batch_size)]


def targets_per_window(ds: Dataset, ends: np.ndarray, max_len: int) -> np.ndarray:
    """Target positions of each window ending at `ends` [B]: its input items, at most max_len."""
    return np.minimum(ends - ds.indptr[owner_of(ds.indptr, ends - 1)] - 1, max_len)


def batch_weight(n_targets: int, n_windows: int, mean_targets: float) -> float:
    """The factor on a batch's mean loss that makes it the sum over its targets divided by what a batch of
    its size holds on average this epoch (`mean_targets` per window): every target then weighs the same in
    whichever batch it lands. Length-bucketed batches of short windows hold few targets; weighed by their
    mean alone, each of those would count up to max_len times as much as a target of a long window."""
    return n_targets / (n_windows * mean_targets)


def holdout_batch(ds: Dataset, cuts: np.ndarray, o: ObjectiveConfig, max_len: int, rng: np.random.Generator) -> dict:
    """Simulated hidden sets as a batch whose only target position is the last one, without the
    columns that are padding in every row (positions count from the end, so outputs are unchanged)."""
    inp, targets, user = holdout_examples(ds.indptr, ds.items, cuts, rng, max_len, o.holdout_last,
                                          o.holdout_random)  # [B, L], [B, K], [B]
    inp = inp[:, padded_columns(inp):]  # [B, L'] every column has an input item
    B, L = inp.shape
    target = np.zeros((B, L), dtype=np.int64)
    target[:, -1] = targets[:, 0]
    future = np.zeros((B, L, targets.shape[1]), dtype=np.int64)
    future[:, -1] = targets
    return {"input": inp, "target": target, "user": np.repeat(user[:, None], L, axis=1), "future": future,
            "exclude": inp}


def make_batch(ds: Dataset, examples: np.ndarray, sampler: NegativeSampler, cfg, device,
               mean_targets: float = 0.0) -> dict:
    """The tensors of one batch of `training_batches` on `device`; `cfg` is a TrainConfig. With `mean_targets`
    (target positions per window this epoch), windows get a loss `weight` (see `batch_weight`)."""
    o, max_len = cfg.objective, cfg.sasrec.max_len
    if o.history == "holdout":
        batch = holdout_batch(ds, examples, o, max_len, sampler.rng)
    else:
        inp, target, user = gather_windows(ds.indptr, ds.items, examples, max_len)
        batch = {"input": inp, "target": target, "user": np.repeat(user[:, None], max_len, axis=1)}  # [B, L] each
        if o.horizon > 1:
            batch["future"] = gather_future(ds.indptr, ds.items, examples, max_len, o.horizon)  # [B, L, K]
        if o.pack:
            layout = pack_windows(inp)
            batch = {key: gather_packed(value, layout["source"]) for key, value in batch.items()}  # [R, L, ...]
            batch.update(segment=layout["segment"], position=layout["position"])  # [R, L] each
        cut = padded_columns(batch["input"])  # a target needs an input item: the dropped columns hold none either
        batch = {key: value[:, cut:] for key, value in batch.items()}  # [B or R, L', ...]
    mask = batch["target"] != 0
    users_per_target = batch["user"][mask]  # [N]
    if "future" in batch:
        future = batch["future"][mask]  # [N, K]
        users_per_target = np.broadcast_to(users_per_target[:, None], future.shape)[future != 0]  # [P]
    kind = LOSSES[o.loss].negatives
    if kind == "per_position":
        batch["negatives"] = sampler.sample(users_per_target, (o.negatives,))  # [N or P, M]
    elif kind == "shared":
        batch["shared"] = sampler.shared(o.negatives, o.sampled_dist)  # [M]
    batch["positions"] = np.flatnonzero(mask)  # [N] row * L + column of each target
    if mean_targets:
        batch["weight"] = np.array(batch_weight(len(batch["positions"]), len(examples), mean_targets), np.float32)
    if kind == "shared" and o.logq:
        batch["log_q"] = sampler.log_q(o.sampled_dist)  # [V]
    return to_device(batch, device)


class NextItemTask(RecommenderTask):
    """SASRec trained to predict the next items of each window (or the items of a simulated hidden set)."""
    model_type, recommender_cls = "sasrec", SASRecRecommender

    def __init__(self, cfg, ds: Dataset, model: SASRec, rng: np.random.Generator, device: torch.device):
        self.cfg, self.ds, self.module, self.args, self.rng, self.device = cfg, ds, model, model.args, rng, device
        self.sampler = NegativeSampler(ds, rng)

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.module.parameters())
        return f"sasrec: {n_params:,} parameters, {self.ds.n_users:,} users, {self.ds.n_items:,} items"

    def batches(self, epoch: int) -> Lazy:
        batches = training_batches(self.ds, self.cfg, self.rng)
        mean_targets = 0.0  # random batches of windows hold about as many targets each: no weights
        if self.cfg.objective.history != "holdout" and self.cfg.objective.bucket and batches:
            mean_targets = float(targets_per_window(self.ds, np.concatenate(batches), self.args.max_len).mean())
        return Lazy(batches, lambda examples: make_batch(self.ds, examples, self.sampler, self.cfg, self.device,
                                                         mean_targets))

    def loss(self, batch: dict) -> torch.Tensor:
        return train_loss(self.module, batch, self.cfg.objective.loss)




def build_task(cfg, ds: Dataset, rng: np.random.Generator, device: torch.device) -> NextItemTask:
    """SASRec for `cfg` (a TrainConfig), its encoder taken from a pretraining run with --init-from."""
    model = SASRec(dataclasses.replace(cfg.sasrec, n_items=ds.n_items)).to(device)
    if cfg.init_from and not cfg.trainer.resume:
        path = Path(cfg.init_from)
        path = path if path.suffix == ".pt" else ds.root / "runs" / cfg.init_from / "checkpoint.pt"
        pre = load_pretrained_encoder(model, path, ds)
        print(f"encoder initialised from {path} (pretraining epoch {pre['epoch']}, objectives {pre['objectives']})")
    return NextItemTask(cfg, ds, model, rng, device)


def recommender(ckpt: dict, ds: Dataset, device: torch.device) -> SASRecRecommender:
    return SASRecRecommender(restored(SASRec(SASRecArgs(**ckpt["model_args"])), ckpt, device), ds, device)

"""A bidirectional cloze model on the SASRec encoder (BERT4Rec-style).

Training masks random items anywhere in a window of the user's history (each with probability
--cloze-prob, at least one per row; with probability --cloze-end the last item too) and predicts each
masked item with a softmax over all items, leaving out padding and the items the row still shows.
Every position attends to every other (causal=False). A masked position reads a learned mask vector
plus its position embedding; the masked item itself is never looked up, so the encoder cannot see it.
To recommend, the user's latest max_len - 1 items are followed by one masked position, whose hidden
state scores every item: the question the hidden set's randomly dropped items ask as well.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from common.config import setting
from common.batches import epoch_batches, gather_windows, padded_columns, window_ends
from common.data import PAD, Dataset, pad_rows
from common.losses import ce_loss
from common.model import SASRec, SASRecArgs
from common.recommend import RecommenderTask, SASRecRecommender, restored
from common.trainer import Lazy
from common.utils import to_device


@dataclass
class ClozeConfig:
    cloze_prob: float = setting(0.2, "cloze: share of a window's items masked", gt=0, le=1)
    cloze_end: float = setting(0.2, "cloze: share of windows whose last item is masked as well (the next-item "
                                    "question)", ge=0, le=1)


class ClozeModel(nn.Module):
    def __init__(self, args: SASRecArgs):
        super().__init__()
        self.args = args
        self.encoder = SASRec(args)
        self.mask_emb = nn.Parameter(torch.empty(args.hidden))
        nn.init.normal_(self.mask_emb, std=args.init_std)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor, last: bool = False) -> torch.Tensor:
        """Hidden states [B, L, H] of `seq` [B, L] (left-padded) with the positions `mask` [B, L] masked;
        with `last`, the last position's alone [B, 1, H] (the top block computes no other).

        Masked items are replaced by padding before the embedding lookup; `seq` itself only marks which
        positions are real (keys of the attention)."""
        x = self.encoder.embed(seq.masked_fill(mask, PAD))  # [B, L, H]
        x = torch.where(mask[..., None], x + self.mask_emb, x)
        return self.encoder.encode(x, seq.masked_fill(mask, 1), causal=False, last=last)  # a masked position stays a key

    def score_all(self, h: torch.Tensor) -> torch.Tensor:
        return self.encoder.score_all(h)

    def output_embeddings(self) -> torch.Tensor:
        return self.encoder.output_embeddings()


def cloze_masks(seq: np.ndarray, prob: float, end: float, rng: np.random.Generator) -> np.ndarray:
    """[B, L] bool: each real item masked with probability `prob`, at least one per row, and the last
    item of a row with probability `end`."""
    B, L = seq.shape
    real = seq != PAD
    mask = (rng.random((B, L)) < prob) & real
    mask[:, -1] |= (rng.random(B) < end) & real[:, -1]
    forced = np.where(real, rng.random((B, L)), -1.0).argmax(1)  # a random real position per row
    mask[np.arange(B), forced] |= ~mask.any(1)
    return mask


def cloze_loss(model: ClozeModel, batch: dict) -> torch.Tensor:
    """Softmax cross-entropy at the masked positions over every item except padding and the items the
    row still shows (they are never the answer, as at inference)."""
    seq, mask = batch["seq"], batch["mask"]
    h = model(seq, mask)[mask]  # [N, H]
    rows = mask.nonzero(as_tuple=True)[0]  # [N]
    visible = seq.masked_fill(mask, PAD)[rows]  # [N, L]
    return ce_loss(model.score_all(h), seq[mask], exclude=visible)  # padding (0) is among `visible`


class ClozeRecommender(SASRecRecommender):
    """Scores from a masked position after the user's latest max_len - 1 items."""

    def window(self) -> int:
        return self.model.args.max_len - 1  # the masked position takes the last

    def last_hidden(self, users: np.ndarray, width: int) -> torch.Tensor:
        hist = pad_rows(self.ds.indptr, self.ds.items, users, width, left=True)
        seq = torch.from_numpy(np.concatenate([hist, np.zeros((len(users), 1), hist.dtype)], axis=1)).to(self.device)
        mask = torch.zeros_like(seq, dtype=torch.bool)
        mask[:, -1] = True
        return self.model(seq, mask, last=True)[:, -1]  # [B, H]


class ClozeTask(RecommenderTask):
    model_type, recommender_cls = "cloze", ClozeRecommender

    def __init__(self, cfg, ds: Dataset, rng: np.random.Generator, device: torch.device):
        self.cfg, self.ds, self.rng, self.device = cfg, ds, rng, device
        self.args = dataclasses.replace(cfg.sasrec, n_items=ds.n_items)
        self.module = ClozeModel(self.args).to(device)

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.module.parameters())
        return f"cloze: {n_params:,} parameters, {self.ds.n_users:,} users, {self.ds.n_items:,} items"

    def batches(self, epoch: int) -> Lazy:
        max_len = self.args.max_len
        ends = window_ends(self.ds.indptr, max_len, self.cfg.objective.history, self.rng)
        return Lazy(epoch_batches(self.ds.indptr, ends, max_len, self.cfg.trainer.batch_size, self.rng), self._batch)

    def _batch(self, ends: np.ndarray) -> dict:
        _, seq, user = gather_windows(self.ds.indptr, self.ds.items, ends, self.args.max_len)  # seq = window items
        seq = seq[:, padded_columns(seq):]  # [B, L'] without the columns that are padding in every row
        mask = cloze_masks(seq, self.cfg.cloze.cloze_prob, self.cfg.cloze.cloze_end, self.rng)
        return to_device({"seq": seq, "mask": mask, "user": user}, self.device)

    def loss(self, batch: dict) -> torch.Tensor:
        return cloze_loss(self.module, batch)




def build_task(cfg, ds: Dataset, rng: np.random.Generator, device: torch.device) -> ClozeTask:
    return ClozeTask(cfg, ds, rng, device)


def recommender(ckpt: dict, ds: Dataset, device: torch.device) -> ClozeRecommender:
    return ClozeRecommender(restored(ClozeModel(SASRecArgs(**ckpt["model_args"])), ckpt, device), ds, device)

"""S3-Rec self-supervised pretraining (Zhou et al., CIKM 2020) of the SASRec encoder.

Four objectives train the encoder, an attribute table, a mask vector and four bilinear heads:
  AAP  associated attribute prediction: item embedding -> the item's attributes (multi-label BCE)
  MIP  masked item prediction: hidden state at a masked position -> the masked item vs a negative
  MAP  masked attribute prediction: hidden state at a masked position -> the masked item's attributes
  SP   segment prediction: masked-segment context -> the segment itself vs a segment of another sequence
The total loss is Σ weight · objective. Every encoder pass is bidirectional (causal=False).

Conventions:
  * A masked position gets the learned `mask_emb` plus its position embedding; the masked item is
    replaced by padding before the embedding lookup, so the encoder never sees it. The original
    sequence is only used for the padding mask.
  * Multi-label BCE is summed over the attributes and averaged over items (as S3-Rec sums over
    attributes); the pairwise objectives are -log σ(s+) - log(1 - σ(s-)), averaged over rows.
  * Windows are full windows of the training sequences (all of each user's history, `windows`
    mode), left-padded, trimmed to the batch's longest window: positions count from the end, so
    trimming leaves every output unchanged.
  * The checkpoint's `state_dict` is the encoder's alone (a plain SASRec), so fine-tuning starts
    from it with `load_pretrained_encoder`; `pretrain_state` holds the whole pretrainer.
  * Training runs in the one trainer (common.trainer) as `PretrainTask`; the objectives' losses live in
    common.losses.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from common.config import setting
from common.batches import NegativeSampler, epoch_batches, gather_windows, window_ends
from common.checkpoint import check_architecture, check_dataset_matches, load_checkpoint
from common.data import PAD, Dataset, row_owners
from common.io import InputError
from common.losses import attribute_loss, bilinear_bce_loss
from common.model import SASRec, SASRecArgs
from common.trainer import Lazy, Trainer, TrainerConfig
from common.utils import to_device

OBJECTIVES = ("aap", "mip", "map", "sp")


@dataclass
class PretrainConfig:
    aap_weight: float = setting(0.2, "pretrain: item -> attributes", ge=0)
    mip_weight: float = setting(1.0, "pretrain: masked item prediction", ge=0)
    map_weight: float = setting(1.0, "pretrain: masked attribute prediction", ge=0)
    sp_weight: float = setting(0.5, "pretrain: segment prediction", ge=0)
    mask_prob: float = setting(0.2, "pretrain: share of items masked (at least one per sequence)", gt=0, le=1)

    def weights(self) -> dict:
        return {name: float(getattr(self, f"{name}_weight")) for name in OBJECTIVES}


# ---------------------------------------------------------------- the model

class S3RecPretrainer(nn.Module):
    """A SASRec encoder plus S3-Rec's attribute table, mask vector and four bilinear heads."""

    def __init__(self, args: SASRecArgs, n_attributes: int):
        super().__init__()
        H = args.hidden
        self.encoder = SASRec(args)
        self.attr_emb = nn.Embedding(n_attributes + 1, H, padding_idx=PAD)  # row 0 is padding
        self.mask_emb = nn.Parameter(torch.empty(H))
        self.aap, self.mip, self.map, self.sp = (nn.Linear(H, H) for _ in OBJECTIVES)
        for m in (self.attr_emb, self.aap, self.mip, self.map, self.sp):
            self.encoder._init(m)
        nn.init.normal_(self.mask_emb, std=args.init_std)

    def attributes(self) -> torch.Tensor:
        return self.attr_emb.weight[1:]  # [A, H], attribute id a is row a - 1

    def masked_input(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder input [B, L, H]: item + position embeddings, mask_emb + position where `mask`."""
        x = self.encoder.embed(seq.masked_fill(mask, PAD))  # masked items are never looked up; PAD row is 0
        return torch.where(mask[..., None], x + self.mask_emb, x)  # [B, L, H]

    def masked_hidden(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Bidirectional hidden states [B, L, H] of `seq` [B, L] with positions `mask` [B, L] masked."""
        return self.encoder.encode(self.masked_input(seq, mask), seq, causal=False)

    def segment_hidden(self, seg: torch.Tensor) -> torch.Tensor:
        """Left-padded segments [B, S] encoded as sequences of their own -> last hidden state [B, H]."""
        return self.encoder(seg, causal=False)[:, -1]


# ---------------------------------------------------------------- the objectives

def pretrain_loss(pretrainer: S3RecPretrainer, batch: dict, weights: dict) -> tuple[torch.Tensor, dict]:
    """(Σ weight · objective, {objective: float value}) for a batch of `make_pretrain_batch`.

    An objective with weight 0 is not computed; its value is None.
    """
    P, enc = pretrainer, pretrainer.encoder
    w = {name: float(weights.get(name, 0.0)) for name in OBJECTIVES}
    unknown = set(weights) - set(OBJECTIVES)
    assert not unknown, f"unknown objectives {sorted(unknown)}; choose from {OBJECTIVES}"
    attrs = P.attributes()  # [A, H]
    losses = {}
    if w["aap"]:
        losses["aap"] = attribute_loss(enc.item_emb(batch["aap_items"]), attrs, batch["aap_target"].float(), P.aap)
    if w["mip"] or w["map"]:
        mask = batch["mip_mask"]  # [B, L]
        h = P.masked_hidden(batch["seq"], mask)[mask]  # [N, H], row-major like mip_pos
        if w["mip"]:
            losses["mip"] = bilinear_bce_loss(h, enc.item_emb(batch["mip_pos"]), enc.item_emb(batch["mip_neg"]), P.mip)
        if w["map"]:
            losses["map"] = attribute_loss(h, attrs, batch["map_target"].float(), P.map)
    if w["sp"]:
        ok = batch["sp_valid"]  # [B]
        ctx = P.masked_hidden(batch["seq"], batch["sp_mask"])[:, -1]  # [B, H]
        segs = P.segment_hidden(torch.cat([batch["sp_pos"], batch["sp_neg"]]))  # [2B, H]
        pos_seg, neg_seg = segs.chunk(2)  # [B, H] each
        losses["sp"] = bilinear_bce_loss(ctx[ok], pos_seg[ok], neg_seg[ok], P.sp)
    total = sum(w[name] * value for name, value in losses.items())
    if not torch.is_tensor(total):  # every weight 0
        total = P.mask_emb.sum() * 0.0
    return total, {name: (losses[name].item() if name in losses else None) for name in OBJECTIVES}


# ---------------------------------------------------------------- batches

def attribute_multi_hot(ds: Dataset) -> np.ndarray:
    """[n_items + 1, n_attributes] bool; column a - 1 marks attribute id a (row 0, padding, is empty)."""
    indptr, ids, names = ds.attributes()
    table = np.zeros((ds.n_items + 1, len(names)), dtype=bool)
    table[row_owners(indptr), ids - 1] = True
    return table


def _left_pad_spans(seq: np.ndarray, rows: np.ndarray, start: np.ndarray, length: np.ndarray, width: int) -> np.ndarray:
    """seq[rows[i], start[i] : start[i] + length[i]] right-aligned in a [len(rows), width] array padded with 0."""
    col = np.arange(width)[None, :]  # [1, S]
    offset = width - length[:, None]  # [B, 1] first filled column
    valid = col >= offset
    src = np.where(valid, start[:, None] + col - offset, 0)
    return np.where(valid, seq[rows[:, None], src], PAD)


def make_pretrain_batch(ds: Dataset, ends: np.ndarray, rng: np.random.Generator, max_len: int, mask_prob: float,
                        attr_multi_hot: np.ndarray, sampler: NegativeSampler | None = None) -> dict:
    """CPU tensors for the pretraining objectives of the full windows ending at `ends`.

    seq [B, L]            window items, left-padded (L = the batch's longest window, <= max_len)
    user [B]              dense user ids
    mip_mask [B, L]       masked positions: each real item with probability mask_prob, at least one per row
    mip_pos, mip_neg [N]  the masked items (row-major order of mip_mask) and negatives unseen by the user
    map_target [N, A]     the masked items' attributes (bool)
    aap_items [M]         the distinct items of the batch; aap_target [M, A] their attributes (bool)
    sp_mask [B, L]        one contiguous segment per row, length 1..len // 2
    sp_pos [B, S]         that segment, left-padded
    sp_neg [B, S]         a segment of the same length (shorter if no other row is long enough) of row sp_other
    sp_other [B]          the row the negative segment comes from (-1 without one)
    sp_valid [B]          the row has a negative (False only in a batch of one row)
    """
    sampler = sampler or NegativeSampler(ds, rng)
    inp, target, user = gather_windows(ds.indptr, ds.items, ends, max_len)
    seq = np.concatenate([inp[:, 1:], target[:, -1:]], axis=1)  # [B, max_len] = items[end - L : end]
    lengths = (seq != PAD).sum(1)  # [B]
    seq = seq[:, max_len - int(lengths.max()):]  # drop all-padding columns on the left
    B, L = seq.shape
    rows = np.arange(B)
    valid = seq != PAD  # [B, L]
    first = L - lengths  # [B] first real column

    # MIP / MAP: random positions, at least one per row
    mip_mask = (rng.random((B, L)) < mask_prob) & valid
    forced = np.where(valid, rng.random((B, L)), -1.0).argmax(1)  # a random real position per row
    mip_mask[rows, forced] |= ~mip_mask.any(1)
    mip_pos = seq[mip_mask]  # [N]
    mip_neg = sampler.sample(np.broadcast_to(user[:, None], (B, L))[mip_mask], ())  # [N]

    # AAP: every distinct item of the batch
    aap_items = np.unique(seq[valid])  # [M]

    # SP: one segment per row; the negative comes from another row long enough for it, if any
    seg_len = 1 + (rng.random(B) * (lengths // 2)).astype(np.int64)  # [B] in 1..len // 2
    seg_start = first + (rng.random(B) * (lengths - seg_len + 1)).astype(np.int64)  # [B] column
    col = np.arange(L)[None, :]
    sp_mask = (col >= seg_start[:, None]) & (col < (seg_start + seg_len)[:, None])  # [B, L]
    S = int(seg_len.max())
    sp_pos = _left_pad_spans(seq, rows, seg_start, seg_len, S)  # [B, S]
    keys = rng.random((B, B)) + (lengths[None, :] >= seg_len[:, None])  # long enough rows first
    keys[rows, rows] = -1.0  # never the row itself
    if B > 1:
        other = keys.argmax(1)  # [B]
        neg_len = np.minimum(seg_len, lengths[other])
        neg_start = first[other] + (rng.random(B) * (lengths[other] - neg_len + 1)).astype(np.int64)
        sp_neg = _left_pad_spans(seq, other, neg_start, neg_len, S)  # [B, S]
        sp_valid = np.ones(B, dtype=bool)
    else:
        other, sp_neg, sp_valid = np.full(B, -1), sp_pos.copy(), np.zeros(B, dtype=bool)

    arrays = {
        "seq": seq, "user": user, "mip_mask": mip_mask, "mip_pos": mip_pos, "mip_neg": mip_neg,
        "map_target": attr_multi_hot[mip_pos], "aap_items": aap_items, "aap_target": attr_multi_hot[aap_items],
        "sp_mask": sp_mask, "sp_pos": sp_pos, "sp_neg": sp_neg, "sp_other": other, "sp_valid": sp_valid,
    }
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


# ---------------------------------------------------------------- training

class PretrainTask:
    """The pretrainer as a task of the one trainer (common.trainer): full windows, no answers read."""
    stage, label = "pretrain", "pretraining "
    unused_parameters = True  # an objective weighted 0 leaves its head untrained

    def __init__(self, cfg: PretrainConfig, ds: Dataset, args: SASRecArgs, rng: np.random.Generator,
                 device: torch.device, history: str = "windows", batch_size: int = 256, bucket: bool = True):
        if args.n_items != ds.n_items:
            raise InputError(f"model has n_items={args.n_items} but {ds.root} has {ds.n_items} items")
        for name, weight in cfg.weights().items():
            if not (weight >= 0 and math.isfinite(weight)):
                raise InputError(f"{name}_weight must be a finite number >= 0, got {weight}")
        if not 0 < cfg.mask_prob <= 1:
            raise InputError(f"mask_prob must be in (0, 1], got {cfg.mask_prob}")
        self.cfg, self.ds, self.args, self.rng, self.device = cfg, ds, args, rng, device
        self.history, self.batch_size, self.bucket = history, batch_size, bucket
        self.multi_hot = attribute_multi_hot(ds)  # [V, A]
        self.weights = cfg.weights()
        self.module = S3RecPretrainer(args, self.multi_hot.shape[1]).to(device)
        self.sampler = NegativeSampler(ds, rng)
        if self.multi_hot.shape[1] == 0 and (self.weights["aap"] or self.weights["map"]):
            print(f"note: {ds.root} has no item attributes; AAP and MAP are 0")

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.module.parameters())
        return (f"s3rec pretraining: {n_params:,} parameters, {self.ds.n_users:,} users, {self.ds.n_items:,} items, "
                f"{self.multi_hot.shape[1]:,} attributes, objectives {json.dumps(self.weights)}")

    def batches(self, epoch: int) -> Lazy:
        ends = window_ends(self.ds.indptr, self.args.max_len, self.history, self.rng)
        return Lazy(epoch_batches(self.ds.indptr, ends, self.args.max_len, self.batch_size, self.rng, self.bucket),
                    self._batch)

    def _batch(self, ends: np.ndarray) -> dict:
        batch = make_pretrain_batch(self.ds, ends, self.rng, self.args.max_len, self.cfg.mask_prob, self.multi_hot,
                                    self.sampler)
        return to_device(batch, self.device)

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return pretrain_loss(self.module, batch, self.weights)

    def checkpoint(self, kept: S3RecPretrainer) -> dict:
        return {"model_type": "sasrec", "model_args": dataclasses.asdict(self.args),
                "state_dict": kept.encoder.state_dict(), "pretrain_state": kept.state_dict(),
                "objectives": self.weights, "mask_prob": self.cfg.mask_prob, "n_attributes": self.multi_hot.shape[1]}


def fit_pretrain(cfg: PretrainConfig, ds: Dataset, out: Path, device: torch.device, model_args: SASRecArgs,
                 epochs: int, batch_size: int = 256, lr: float = 1e-3, seed: int = 42, progress: bool = True,
                 resume: bool = False, *, history: str = "windows", bucket: bool = True,
                 config: dict | None = None) -> S3RecPretrainer:
    """Pretrain for `epochs` epochs with the one trainer (out/checkpoint.pt after each epoch, out/last.pt,
    out/metrics.jsonl). `config` is saved as the checkpoints' "config"; by default these settings.
    Returns the pretrainer."""
    torch.manual_seed(seed)  # initial weights and dropout
    rng = np.random.default_rng(seed)
    task = PretrainTask(cfg, ds, model_args, rng, device, history, batch_size, bucket)
    trainer_cfg = TrainerConfig(lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, resume=resume,
                                progress=progress)
    settings = {**dataclasses.asdict(cfg), **dataclasses.asdict(trainer_cfg), "history": history, "bucket": bucket}
    Trainer(trainer_cfg, ds, Path(out), device, config or settings).fit(task, rng)
    return task.module


def load_pretrained_encoder(model: SASRec, path: Path, ds: Dataset | None = None) -> dict:
    """Load a pretraining checkpoint's encoder weights into `model` (same architecture).

    With `ds`, also check that the checkpoint was made on the same id maps. Returns the checkpoint.
    """
    ckpt = load_checkpoint(path)
    if ckpt.get("stage") != "pretrain":
        raise InputError(f"{path}: not a pretraining checkpoint (made by the pretrain stage)")
    check_architecture(ckpt["model_args"], model.args, str(path), "use the same model settings as pretraining")
    if ds is not None:
        check_dataset_matches(ckpt, ds, str(path))
    model.load_state_dict(ckpt["state_dict"])
    return ckpt

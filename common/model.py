"""SASRec, the sequential model of S3-Rec's fine-tuning stage.

forward(seq) -> per-position hidden states [B, L, H]; scoring against item embeddings is separate.
Sequences are left-padded with item 0. Positions are counted from the end of the window (the last
item has position 0), so extra left padding leaves every real position's output unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.config import setting
from common.data import PAD

DROPOUT_FIELD_BITS = (1, 2, 4, 8)  # random bits per element where p allows (see `dropout`)


@dataclass
class SASRecArgs:
    # real items; embeddings have n_items + 1 rows, row 0 is padding. Set from the data, not a flag.
    n_items: int = setting(0, flag=False)
    hidden: int = setting(64, "width of the item embeddings and every layer", ge=1)
    layers: int = setting(2, ge=1)
    heads: int = setting(2, "attention heads; --hidden must be a multiple of it", ge=1)
    dropout_attn: float = setting(0.5, ge=0, lt=1)
    dropout_hidden: float = setting(0.5, ge=0, lt=1)
    max_len: int = setting(50, "items read per sequence (the latest ones)", ge=1)
    init_std: float = setting(0.02, gt=0)
    pre_ln: bool = field(default=False, metadata={"help": "LayerNorm before attention/feed-forward instead of "
                                                          "after the residual"})
    final_ln: bool = field(default=False, metadata={"help": "one more LayerNorm on the output"})
    tied: bool = field(default=True, metadata={"help": "score with the input item embeddings; --no-tied adds a "
                                                       "separate output table"})

    RULES = ((lambda c: c.hidden % c.heads == 0, "--hidden {c.hidden} must be a multiple of --heads {c.heads}"),)


def attention_mask(seq: torch.Tensor, causal: bool = True, segment: torch.Tensor | None = None) -> torch.Tensor:
    """Padding-and-causal mask [B, 1, L, L], True where query i may attend to key j.

    Key j is allowed when item j is not padding and, if `causal`, j <= i; with `segment` [B, L] (rows holding
    several sequences side by side, see common.batches.pack_windows) only when j is in i's sequence too.
    Each position may always attend to itself, so a fully padded row yields finite values instead of NaN.
    """
    L = seq.size(1)
    order = torch.ones(L, L, dtype=torch.bool, device=seq.device)  # [L, L]
    if causal:
        order = order.tril()
    keys = (seq != PAD)[:, None, None, :]  # [B, 1, 1, L]
    if segment is not None:
        keys = keys & (segment[:, None, :, None] == segment[:, None, None, :])  # [B, 1, L, L]
    diag = torch.eye(L, dtype=torch.bool, device=seq.device)  # [L, L]
    return (order & keys) | diag  # [B, 1, L, L]


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p). On a CPU the
    mask compares random bits with p: the fewest bits b in 1, 2, 4, 8 for which p is a multiple of 2^-b (one bit
    for p = 0.5, the default SASRec's; two for 0.25), else 16 bits with p rounded to a multiple of 2^-16, and
    the kept values are scaled by the rounded keep rate, so the result stays unbiased (in bf16 the scale is
    rounded to bf16: exact for p = 0.5, 0.25, 0.2). The mask, already scaled, is one factor of one product, so
    the backward is one product too. torch draws those bits far faster than F.dropout's per-element Bernoulli
    draws: for [256, 50, 64] on 2 threads, 1.9 (8 bits) against 14-15 ms; one bit each instead of eight took
    0.8 against 1.3-1.7 ms for [221, 2, 50, 50]. Elsewhere F.dropout's one fused kernel."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    bits = next((b for b in DROPOUT_FIELD_BITS if (p * (1 << b)).is_integer()), 16)
    levels = 1 << bits
    dropped = min(round(p * levels), levels - 1)
    n, per_draw = x.numel(), 64 // bits
    draws = torch.empty(-(-n // per_draw), dtype=torch.int64, device=x.device).random_(-2 ** 63, 2 ** 63 - 1)
    if bits == 16:  # uniform over [-levels/2, levels/2)
        keep = draws.view(torch.int16)[:n].view(x.shape) >= dropped - levels // 2
    else:  # 8 // bits fields of each byte, each uniform over [0, levels)
        fields = draws.view(torch.uint8)
        if bits < 8:
            shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=x.device)
            fields = (fields[:, None] >> shifts) & (levels - 1)  # [n_bytes, 8 // bits]
        fields = fields.view(-1)[:n].view(x.shape)
        keep = fields if bits == 1 else fields >= dropped  # one bit: 1 keeps (p = 1/2 drops 0)
    return x * keep.to(x.dtype).mul_(levels / (levels - dropped))  # 0 or 1 / keep rate


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """Scaled dot-product attention [B, nh, Lq, hs] of q [B, nh, Lq, hs] over k, v [B, nh, L, hs], with dropout
    p on its weights; mask [B, 1, Lq, L] is True where a query may read a key. F.scaled_dot_product_attention,
    except on a CPU with dropout: that fused kernel draws its dropout per element, which then costs more than
    the attention itself, so there the same arithmetic runs as batched products with `dropout`'s mask
    ([256, 2, 50, 32], p = 0.5, forward and backward on 2 threads: 23-28 against 42-45 ms). A single query
    ([512, 2, 1, 50] of bf16 under autocast) runs as plain products too: 0.55 against 2.97 ms."""
    if q.device.type != "cpu" or (p == 0 and q.size(2) > 1):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, -math.inf)
    w = torch.softmax(q @ k.transpose(-1, -2) * q.size(-1) ** -0.5 + bias, dim=-1)  # [B, nh, Lq, L]
    return dropout(w, p, True) @ v


class Dropout(nn.Module):
    """nn.Dropout through `dropout`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def rowwise(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) for one position per user, [B, 1, H], computed in float64 and rounded back: a product over as
    few rows as a batch has users rounds differently by that count, this one does not (the score product keeps
    the same rule another way: common.recommend.score_product)."""
    weights = {name: t.double() for name, t in module.state_dict().items()}
    return torch.func.functional_call(module, weights, (x.double(),)).float()


class SelfAttention(nn.Module):
    def __init__(self, a: SASRecArgs):
        super().__init__()
        assert a.hidden % a.heads == 0, "hidden must be divisible by heads"
        self.heads = a.heads
        self.qkv = nn.Linear(a.hidden, 3 * a.hidden)
        self.proj = nn.Linear(a.hidden, a.hidden)
        self.dropout_attn = a.dropout_attn

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last: bool = False) -> torch.Tensor:
        """x [B, L, H] -> [B, L, H]; with `last`, only the last position's output [B, 1, H]."""
        B, L, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=2)  # 3 x [B, L, H]
        if last:
            q, mask = q[:, -1:], mask[:, :, -1:]  # one query, every key
        q = q.reshape(B, q.size(1), self.heads, H // self.heads).transpose(1, 2)  # [B, nh, Lq, hs]
        k, v = (t.view(B, L, self.heads, H // self.heads).transpose(1, 2) for t in (k, v))  # [B, nh, L, hs]
        y = attend(q, k, v, mask, self.dropout_attn if self.training else 0.0)  # [B, nh, Lq, hs]
        y = y.transpose(1, 2).reshape(B, q.size(2), H)  # [B, Lq, H]
        return rowwise(self.proj, y) if last else self.proj(y)


class Block(nn.Module):
    def __init__(self, a: SASRecArgs):
        super().__init__()
        self.pre_ln = a.pre_ln
        self.attn = SelfAttention(a)
        self.ffn = nn.Sequential(nn.Linear(a.hidden, 4 * a.hidden), nn.GELU(), nn.Linear(4 * a.hidden, a.hidden))
        self.ln1, self.ln2 = nn.LayerNorm(a.hidden), nn.LayerNorm(a.hidden)
        self.drop = Dropout(a.dropout_hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last: bool = False) -> torch.Tensor:
        """[B, L, H] -> [B, L, H]; with `last`, only the last position [B, 1, H] (its keys still read all)."""
        y = x[:, -1:] if last else x
        ffn = (lambda t: rowwise(self.ffn, t)) if last else self.ffn
        if self.pre_ln:
            y = y + self.drop(self.attn(self.ln1(x), mask, last))
            return y + self.drop(ffn(self.ln2(y)))
        y = self.ln1(y + self.drop(self.attn(x, mask, last)))
        return self.ln2(y + self.drop(ffn(y)))  # [B, L or 1, H]


class SASRec(nn.Module):
    def __init__(self, a: SASRecArgs):
        super().__init__()
        self.args = a
        self.item_emb = nn.Embedding(a.n_items + 1, a.hidden, padding_idx=PAD)
        self.pos_emb = nn.Embedding(a.max_len, a.hidden)
        self.ln_in = nn.LayerNorm(a.hidden)
        self.drop = Dropout(a.dropout_hidden)
        self.blocks = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.ln_out = nn.LayerNorm(a.hidden) if a.final_ln else nn.Identity()
        self.out_emb = None if a.tied else nn.Embedding(a.n_items + 1, a.hidden, padding_idx=PAD)
        self.apply(self._init)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.args.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            nn.init.zeros_(m.weight[m.padding_idx])

    def embed(self, seq: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """Item plus position embeddings [B, L, H] of left-padded ids [B, L]; `position` [B, L] gives each
        column's distance to the end of its sequence where a row holds several (else the column's own)."""
        L = seq.size(1)
        assert L <= self.args.max_len, f"sequence length {L} exceeds max_len {self.args.max_len}"
        pos = torch.arange(L - 1, -1, -1, device=seq.device) if position is None else position  # last item: 0
        return self.item_emb(seq) + self.pos_emb(pos)  # [B, L, H]

    def encode(self, x: torch.Tensor, seq: torch.Tensor, causal: bool = True, last: bool = False,
               segment: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention stack over input vectors x [B, L, H]; `seq` [B, L] marks padding (0), `segment`
        [B, L] the sequence of each column in packed rows. With `last` the top block computes the last
        position alone: [B, 1, H] (what recommending reads)."""
        x = self.drop(self.ln_in(x))
        mask = attention_mask(seq, causal, segment)  # [B, 1, L, L]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last and i == len(self.blocks) - 1)  # [B, L, H]
        return self.ln_out(x)  # [B, L or 1, H]

    def forward(self, seq: torch.Tensor, causal: bool = True, last: bool = False,
                segment: torch.Tensor | None = None, position: torch.Tensor | None = None) -> torch.Tensor:
        """seq [B, L] item ids, left-padded with 0, L <= max_len -> hidden states [B, L, H] ([B, 1, H] of the
        last position with `last`). `causal=False` lets every position see the whole sequence (pretraining).
        Rows packed with several sequences (common.batches.pack_windows) pass `segment` and `position`."""
        return self.encode(self.embed(seq, position), seq, causal, last, segment)  # [B, L, H]

    def output_embeddings(self) -> torch.Tensor:
        return (self.item_emb if self.out_emb is None else self.out_emb).weight  # [V, H]

    def score_all(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., H] -> logits over every id [..., V] (id 0 is padding; callers mask it)."""
        return h @ self.output_embeddings().T

    def score_items(self, h: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """h [N, H], items [N, M] -> logits [N, M]. The rows are looked up through F.embedding, whose backward
        adds into the table without the sort that indexing's does ([11000, 1] of 6,807 rows: 1.3 against 2.2 ms
        forward and backward on 2 threads). One item a row (bce, bpr with one negative) is a product and a sum:
        as N products of 1 x H by H x 1 it took 4.0 against 0.9 ms for N = 11,000 under bf16 autocast."""
        e = F.embedding(items, self.output_embeddings())  # [N, M, H]
        if items.size(1) == 1:
            return (h * e[:, 0]).sum(-1, keepdim=True)  # [N, 1]
        return torch.einsum("nh,nmh->nm", h, e)

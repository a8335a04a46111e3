"""Training losses as small pure functions, and the registry that names them.

Sampled losses take pos [N] and neg [N, M] logits of N target positions; a negative that must not
count (it equals the target) has logit -inf. Full losses take logits [N, V] over every id (the
padding column at -inf) and targets [N]. Over no rows a loss is 0, not NaN.
To add a next-item loss: write the function, then add one `Loss` line to LOSSES.
The pretraining objectives (S3-Rec) are two shapes: a multi-label attribute loss (AAP from item
embeddings, MAP from hidden states) and a bilinear positive-vs-negative loss (MIP, SP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def bce_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """-log σ(s+) - Σ_m log(1 - σ(s-_m)), averaged over positions."""
    if pos.numel() == 0:
        return pos.sum()
    return -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(dim=1)).mean()


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """-log σ(s+ - s-), averaged over positions and negatives."""
    return -F.logsigmoid(pos[:, None] - neg).mean()


def ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over every item. target [N], or [N, K] with several targets per
    position (0 = none): the mean of -log softmax over the real ones."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    logp = F.log_softmax(logits, dim=1)  # [N, V]
    return -logp.gather(1, target)[target != 0].mean()


def sampled_softmax_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the positive against M sampled negatives."""
    logits = torch.cat([pos[:, None], neg], dim=1)  # [N, 1 + M]
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


def attribute_bce(q: torch.Tensor, attrs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE of scores q [N, H] · attrs [A, H] against 0/1 targets [N, A].

    loss = mean_n Σ_a -(t_na log σ(z_na) + (1 - t_na) log(1 - σ(z_na))),  z = q attrs^T
    """
    per_row = F.binary_cross_entropy_with_logits(q @ attrs.T, target, reduction="none").sum(dim=1)  # [N]
    return per_row.sum() / max(per_row.numel(), 1)


def attribute_loss(x: torch.Tensor, attrs: torch.Tensor, target: torch.Tensor, head: Callable) -> torch.Tensor:
    """x [N, H] (item embeddings: AAP; hidden states at masked positions: MAP) -> their items' attributes;
    z_na = (W x_n + b) · a_a."""
    return attribute_bce(head(x), attrs, target)


def bilinear_bce_loss(q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, head: Callable) -> torch.Tensor:
    """q [N, H] against a positive [N, H] and a negative [N, H] (MIP: the masked item vs another item;
    SP: the masked segment vs another sequence's segment).

    s± = (W q + b) · e±;  loss = mean -log σ(s+) - log(1 - σ(s-))
    """
    z = head(q)  # [N, H]
    return bce_loss((z * pos).sum(-1), (z * neg).sum(-1)[:, None])


@dataclass(frozen=True)
class Loss:
    fn: Callable
    kind: str  # "full": fn(logits [N, V], target [N]); otherwise fn(pos [N], neg [N, M])
    negatives: str = "none"  # "per_position": drawn per target, unseen by its user; "shared": per batch


LOSSES = {
    "bce": Loss(bce_loss, "sampled", "per_position"),
    "bpr": Loss(bpr_loss, "sampled", "per_position"),
    "ce": Loss(ce_loss, "full"),
    "sampled": Loss(sampled_softmax_loss, "sampled", "shared"),
}

"""Training losses as small pure functions, and the registry that names them.

Sampled losses take pos [N] and neg [N, M] logits of N target positions; a negative that must not
count (it equals the target) has logit -inf. Full losses take logits [N, V] over every id (the
padding column at -inf) and targets [N].
To add a loss: write the function, then add one `Loss` line to LOSSES.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def bce_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """-log σ(s+) - Σ_m log(1 - σ(s-_m)), averaged over positions."""
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

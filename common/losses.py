"""Training losses as small pure functions, and the registry that names them.

Sampled losses take pos [N] and neg [N, M] logits of N target positions.
Full losses take logits [N, V] over every id and targets [N].
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


@dataclass(frozen=True)
class Loss:
    fn: Callable
    kind: str  # "sampled": fn(pos [N], neg [N, M]); "full": fn(logits [N, V], target [N])


LOSSES = {
    "bce": Loss(bce_loss, "sampled"),
    "bpr": Loss(bpr_loss, "sampled"),
}

"""Training losses as small pure functions, and the registry that names them.

Sampled losses take pos [N] and neg [N, M] logits of N target positions; a negative that must not
count (it equals the target) has logit -inf. Full losses take logits [N, V] over every id (the
padding column at -inf), targets [N] (or [N, K]) and exclude [N, E] or None: ids left out of each
row's softmax. Over no rows a loss is 0, not NaN.
To add a next-item loss: write the function, then add one `Loss` line to LOSSES.
The pretraining objectives (S3-Rec) are two shapes: a multi-label attribute loss (AAP from item
embeddings, MAP from hidden states) and a bilinear positive-vs-negative loss (MIP, SP).
"""
from __future__ import annotations

import math
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


class _SoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy of logits [N, V] against target [N], fused: the forward pass keeps no
    [N, V] log-softmax, and the backward pass writes softmax - one-hot once. The ids in exclude [N, E]
    are set to -inf in `logits` itself: the caller's product is not read again."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
        if logits.dtype not in (torch.float32, torch.float64):  # reduced precision (autocast): sum in fp32
            logits = logits.float()
        if exclude is not None:
            logits.scatter_(1, exclude, -math.inf)
        lse = torch.logsumexp(logits, dim=1)  # [N]
        ctx.save_for_backward(logits, lse, target)
        return (lse - logits.gather(1, target[:, None])[:, 0]).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, lse, target = ctx.saved_tensors
        d = (logits - lse[:, None]).exp_()  # softmax; 0 at the excluded ids
        d[torch.arange(len(target), device=d.device), target] -= 1
        return d.mul_(grad / len(target)), None, None


def ce_loss(logits: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy over every item. target [N], or [N, K] with several targets per
    position (0 = none): the mean of -log softmax over the real ones. exclude [N, E]: ids left out of
    row n's softmax (never an answer); with one target per row they are set to -inf in `logits` in place."""
    if len(logits) == 0:
        return logits.sum()
    if target.dim() == 1:
        return _SoftmaxCE.apply(logits, target, exclude)
    if exclude is not None:
        logits = logits.scatter(1, exclude, -math.inf)
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
    kind: str  # "full": fn(logits [N, V], target [N], exclude [N, E] | None); otherwise fn(pos [N], neg [N, M])
    negatives: str = "none"  # "per_position": drawn per target, unseen by its user; "shared": per batch


LOSSES = {
    "bce": Loss(bce_loss, "sampled", "per_position"),
    "bpr": Loss(bpr_loss, "sampled", "per_position"),
    "ce": Loss(ce_loss, "full"),
    "sampled": Loss(sampled_softmax_loss, "sampled", "shared"),
}

"""Top-k metrics as pure vectorised functions of (topk_ids, truth).

topk_ids: [U, K] int array of recommended ids in rank order.
truth:    [U, T] int array of each user's relevant ids, right-padded with PAD (0).
Ids equal to PAD never count as hits. Each function returns the mean over the U users;
a user with no relevant id contributes 0 to the mean, so callers pass only users with answers.
"""
from __future__ import annotations

import numpy as np

from common.data import PAD


def hit_matrix(topk_ids: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[U, K] bool: is the item at rank r relevant for user u."""
    topk_ids, truth = np.asarray(topk_ids), np.asarray(truth)
    hits = (topk_ids[:, :, None] == truth[:, None, :]) & (truth[:, None, :] != PAD)  # [U, K, T]
    return hits.any(axis=2)


def n_relevant(truth: np.ndarray) -> np.ndarray:
    return (np.asarray(truth) != PAD).sum(axis=1)  # [U]


def recall_at_k(topk_ids, truth, k: int) -> float:
    """Normalized Recall@K, the competition metric: |top-K ∩ truth| / min(K, |truth|)."""
    hits = hit_matrix(topk_ids[:, :k], truth).sum(axis=1)  # [U]
    denom = np.minimum(k, n_relevant(truth))
    return float(np.mean(np.where(denom > 0, hits / np.maximum(denom, 1), 0.0)))


def ndcg_at_k(topk_ids, truth, k: int) -> float:
    """NDCG@K with binary gains: DCG = sum_r hit_r / log2(r + 2); IDCG uses min(K, |truth|) hits."""
    hits = hit_matrix(topk_ids[:, :k], truth)  # [U, k]
    discounts = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)  # [k]
    dcg = (hits * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)  # ideal[m-1] = IDCG with m relevant
    m = np.minimum(k, n_relevant(truth))
    idcg = np.where(m > 0, ideal[np.maximum(m, 1) - 1], 1.0)
    return float(np.mean(np.where(m > 0, dcg / idcg, 0.0)))


def hr_at_k(topk_ids, truth, k: int) -> float:
    """HR@K: share of users with at least one relevant item in the top K."""
    return float(np.mean(hit_matrix(topk_ids[:, :k], truth).any(axis=1)))


def all_metrics(topk_ids, truth, k: int = 10) -> dict:
    return {f"recall@{k}": recall_at_k(topk_ids, truth, k), f"ndcg@{k}": ndcg_at_k(topk_ids, truth, k),
            f"hr@{k}": hr_at_k(topk_ids, truth, k)}

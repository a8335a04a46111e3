"""Top-k metrics against values worked out by hand on a tiny case."""
from __future__ import annotations

import math

import numpy as np
import pytest

from common.metrics import all_metrics, hr_at_k, ndcg_at_k, recall_at_k

# Four users, 4 recommendations each (the metrics must only look at the first k), k = 3.
# Truth rows are right-padded with 0 (PAD).
TOPK = np.array([
    [5, 7, 9, 2],      # A
    [1, 2, 3, 4],      # B
    [4, 5, 6, 7],      # C
    [0, 11, 12, 0],    # D: pads in the recommendations
], dtype=np.int64)
TRUTH = np.array([
    [7, 2, 0, 0, 0],   # A: 2 answers
    [3, 1, 8, 9, 4],   # B: 5 answers, more than k
    [1, 2, 0, 0, 0],   # C: 2 answers, no hit
    [12, 0, 0, 0, 0],  # D: 1 answer
], dtype=np.int64)
K = 3

# Hand computation, k = 3, discount of rank r (1-based) = 1 / log2(r + 1):
#   A: top3 = 5,7,9; hits: 7 at rank 2 (2 is at rank 4, outside the top 3).
#      recall = 1 / min(3, 2) = 1/2
#      DCG = 1/log2(3) = 0.63093; IDCG (2 relevant) = 1 + 1/log2(3) = 1.63093; NDCG = 0.38685
#      HR = 1
#   B: top3 = 1,2,3; hits: 1 at rank 1, 3 at rank 3 (4 at rank 4 is outside).
#      recall = 2 / min(3, 5) = 2/3
#      DCG = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
#      IDCG (min(3,5) = 3 relevant) = 1 + 0.63093 + 0.5 = 2.13093; NDCG = 0.70392
#      HR = 1
#   C: no hit: recall 0, NDCG 0, HR 0
#   D: top3 = 0,11,12; 0 is padding and must not match the truth's padding; hit: 12 at rank 3.
#      recall = 1 / min(3, 1) = 1;  DCG = 1/log2(4) = 0.5; IDCG (1 relevant) = 1; NDCG = 0.5;  HR = 1
#      (counting the pad as a hit would give recall 2 and NDCG 1.5)
#   means: recall = (0.5 + 0.66667 + 0 + 1) / 4 = 0.54167
#          NDCG   = (0.38685 + 0.70392 + 0 + 0.5) / 4 = 0.39769
#          HR     = 3 / 4 = 0.75
L3 = 1 / math.log2(3)
PER_USER_RECALL = [1 / 2, 2 / 3, 0.0, 1.0]
PER_USER_NDCG = [L3 / (1 + L3), 1.5 / (1 + L3 + 0.5), 0.0, 0.5]
PER_USER_HR = [1.0, 1.0, 0.0, 1.0]


def test_hand_values_are_what_the_comment_says():
    """Guards the constants below against a typo: the rounded numbers in the comment."""
    assert np.mean(PER_USER_RECALL) == pytest.approx(0.54167, abs=1e-5)
    assert np.mean(PER_USER_NDCG) == pytest.approx(0.39769, abs=1e-5)


def test_recall_at_k_hand_case():
    assert recall_at_k(TOPK, TRUTH, K) == pytest.approx(0.5416667, abs=1e-6)


def test_ndcg_at_k_hand_case():
    assert ndcg_at_k(TOPK, TRUTH, K) == pytest.approx(0.3976927, abs=1e-6)


def test_hr_at_k_hand_case():
    assert hr_at_k(TOPK, TRUTH, K) == pytest.approx(0.75, abs=1e-12)


@pytest.mark.parametrize("u", range(4))
def test_each_user_alone(u):
    """Each user on its own gives its own hand value (locates a failure to one rule)."""
    t, y = TOPK[u:u + 1], TRUTH[u:u + 1]
    assert recall_at_k(t, y, K) == pytest.approx(PER_USER_RECALL[u], abs=1e-9)
    assert ndcg_at_k(t, y, K) == pytest.approx(PER_USER_NDCG[u], abs=1e-9)
    assert hr_at_k(t, y, K) == pytest.approx(PER_USER_HR[u], abs=1e-12)


def test_k_one():
    # k = 1: A top1 = 5 miss; B top1 = 1 hit -> 1 / min(1, 5) = 1; C miss; D top1 = 0 (pad) miss.
    # recall = NDCG = HR = 1/4 (with one slot, DCG = IDCG = 1 for a hit).
    assert recall_at_k(TOPK, TRUTH, 1) == pytest.approx(0.25)
    assert ndcg_at_k(TOPK, TRUTH, 1) == pytest.approx(0.25)
    assert hr_at_k(TOPK, TRUTH, 1) == pytest.approx(0.25)


def test_pad_in_truth_never_matches_pad_in_topk():
    # a user whose recommendations are all padding scores nothing, whatever the truth padding
    topk = np.zeros((1, 3), dtype=np.int64)
    truth = np.array([[4, 0, 0]])
    assert recall_at_k(topk, truth, 3) == 0.0
    assert ndcg_at_k(topk, truth, 3) == 0.0
    assert hr_at_k(topk, truth, 3) == 0.0


def test_perfect_ranking_scores_one_even_with_more_answers_than_k():
    # 5 answers, k = 3, the top 3 all relevant: normalized recall and NDCG are exactly 1
    topk = np.array([[9, 8, 7]])
    truth = np.array([[7, 8, 9, 10, 11]])
    assert recall_at_k(topk, truth, 3) == pytest.approx(1.0)
    assert ndcg_at_k(topk, truth, 3) == pytest.approx(1.0)


def test_all_metrics_keys_and_values():
    m = all_metrics(TOPK, TRUTH, K)
    assert set(m) == {"recall@3", "ndcg@3", "hr@3"}
    assert m["recall@3"] == pytest.approx(np.mean(PER_USER_RECALL))
    assert m["ndcg@3"] == pytest.approx(np.mean(PER_USER_NDCG))
    assert m["hr@3"] == pytest.approx(np.mean(PER_USER_HR))

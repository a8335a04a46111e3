"""A closed-form model of what comes next: ridge regression from a user's recent items to the items after them.

Every position t of a user's history (x_0 .. x_{n-1}, in time order) is one training row:
  input  s_t = sum_{d=1..context}  w_d e(x_{t-d}),   w_d = exp(-(d - 1) / context_tau)
  target y_t = sum_{h=0..ahead-1}  v_h e(x_{t+h}),   v_h = exp(-h / ahead_tau)
and B = argmin ||S B - Y||^2 + ridge ||B||^2 = (S^T S + ridge I)^-1 S^T Y, a [n_items, n_items] matrix.
A user is scored by the input of the position after their last item: their latest `context` items,
weighted as above, times B. EASE learns which items sit together in a history; this model learns which
come after which, the part of the hidden set that is the user's latest items.

S^T S and S^T Y are built from pairs of one user's positions k steps apart, one lag at a time
(vectorised over all users): S and Y themselves, with context x n rows of entries, are never formed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.config import setting
from common.data import Dataset, row_owners, same_row_pairs
from common.recommend import EASERecommender, check_dense_memory


@dataclass
class TransitionArgs:
    context: int = setting(50, "transition: a position's input is the items up to this many steps before it", ge=1)
    context_tau: float = setting(10.0, "transition: the input item d steps back weighs exp(-(d - 1) / context_tau)",
                                 gt=0)
    ahead: int = setting(10, "transition: a position's target is its item and the ahead - 1 items after it", ge=1)
    ahead_tau: float = setting(5.0, "transition: the target h steps ahead weighs exp(-h / ahead_tau)", gt=0)
    ridge: float = setting(1000.0, "transition: L2 weight on the item-item matrix", gt=0)

    def fit_args(self) -> dict:
        return {"context": self.context, "context_tau": self.context_tau, "ahead": self.ahead,
                "ahead_tau": self.ahead_tau, "ridge": self.ridge}

    def scoring(self) -> dict:
        return {"context": self.context, "context_tau": self.context_tau}


def input_weights(context: int, tau: float) -> np.ndarray:
    """w[d] for d = 0..context: w[0] = 0 (an item is not its own input), w[d] = exp(-(d - 1) / tau)."""
    return np.concatenate([[0.0], np.exp(-np.arange(context) / tau)])


def target_weights(ahead: int, tau: float) -> np.ndarray:
    """v[h] for h = 0..ahead - 1: exp(-h / tau)."""
    return np.exp(-np.arange(ahead) / tau)


def lag_weights(context: int, context_tau: float, ahead: int, ahead_tau: float) -> np.ndarray:
    """K[m], m = 0..context + ahead - 1: what a pair of items m steps apart adds to S^T Y, the sum of
    w_d v_h over d + h = m (d >= 1 back from the row's position, h >= 0 ahead of it)."""
    w, v = input_weights(context, context_tau), target_weights(ahead, ahead_tau)
    return np.convolve(w, v)


def gram_weights(context: int, tau: float) -> np.ndarray:
    """C[k, m] = sum_{d=1..m} w_d w_{d+k} for k, m = 0..context: what a pair of items k steps apart adds to
    S^T S when m rows take both as input (rows 1..m steps after the later item, within the context)."""
    w = np.concatenate([input_weights(context, tau), np.zeros(context + 1)])  # w_d = 0 beyond the context
    C = np.zeros((context + 1, context + 1))
    for k in range(context + 1):
        C[k, 1:] = np.cumsum(w[1:context + 1] * w[1 + k:context + 1 + k])
    return C


def transition_grams(ds: Dataset, context: int, context_tau: float, ahead: int, ahead_tau: float):
    """(S^T S, S^T Y) over real items, each [n_items, n_items] float32 (see the module's docstring).

    A pair of one user's positions a <= b = a + k (k < context) is input together to the rows b + 1 ..
    b + context - k that exist; the row count depends on how many items follow b, hence C[k, m]. A pair
    a < c = a + m (m < context + ahead) is an input and a target of rows a + 1 .. c wherever d + h = m;
    that weight, K[m], is the same for every pair."""
    n = ds.n_items
    owner = row_owners(ds.indptr)  # [N]
    items = torch.from_numpy(ds.items - 1)  # [N], 0-based real items
    after = torch.from_numpy(ds.indptr[owner + 1] - 1 - np.arange(len(owner)))  # [N] items that follow each
    C = torch.from_numpy(gram_weights(context, context_tau)).float()  # [context + 1, context + 1]
    K = lag_weights(context, context_tau, ahead, ahead_tau)
    longest = int(np.diff(ds.indptr).max(initial=1))
    G = torch.zeros(n * n)  # flat [n, n]
    R = torch.zeros(n * n)
    G.index_add_(0, items * n + items, C[0, after.clamp(max=context)])
    for k in range(1, min(context, longest)):
        a = torch.from_numpy(same_row_pairs(owner, k))  # [P] pairs k steps apart
        b = a + k
        w = C[k, after[b].clamp(max=context - k)]  # [P]
        G.index_add_(0, items[a] * n + items[b], w)
        G.index_add_(0, items[b] * n + items[a], w)
    for m in range(1, min(context + ahead, longest)):
        a = torch.from_numpy(same_row_pairs(owner, m))
        R.index_add_(0, items[a] * n + items[a + m], torch.full((len(a),), float(K[m])))
    return G.view(n, n), R.view(n, n)


class TransitionRecommender(EASERecommender):
    """Scores = s_u B, s_u the user's latest `context` items weighted exp(-steps back / context_tau)."""

    def __init__(self, B: torch.Tensor, ds: Dataset, context: int = 50, context_tau: float = 10.0):
        self.B = B  # [V, V], row and column 0 (padding) are zero
        self.X = ds.recent_matrix(context, context_tau)  # sparse [n_users, V]

    @staticmethod
    def fit(ds: Dataset, context: int, context_tau: float, ahead: int, ahead_tau: float, ridge: float,
            device: torch.device = torch.device("cpu")) -> dict:
        """B by a Cholesky solve on `device`; three dense item-item matrices are alive at most."""
        check_dense_memory(ds.n_items, device, 3, "--model transition")
        G, R = transition_grams(ds, context, context_tau, ahead, ahead_tau)
        G, R = G.to(device), R.to(device)
        G.diagonal().add_(ridge)
        L = torch.linalg.cholesky(G)  # S^T S is positive semi-definite: with ridge > 0, definite
        del G
        B = torch.cholesky_solve(R, L)
        del L, R
        full = torch.zeros(ds.n_items + 1, ds.n_items + 1)
        full[1:, 1:] = B.cpu()
        return {"B": full}


def fit_closed_form(model_type: str, cfg, ds: Dataset, device: torch.device):
    """(state, model_args, recommender) of a transition model fitted with cfg.transition."""
    t = cfg.transition
    state = TransitionRecommender.fit(ds, **t.fit_args(), device=device)
    return state, {**t.fit_args(), "scoring": t.scoring()}, TransitionRecommender(state["B"], ds, **t.scoring())


def recommender(ckpt: dict, ds: Dataset, device: torch.device) -> TransitionRecommender:
    """The transition recommender of a loaded checkpoint, scoring the sequences of `ds`."""
    return TransitionRecommender(ckpt["state_dict"]["B"], ds, **ckpt["model_args"]["scoring"])


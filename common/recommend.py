"""Every trained model behind one interface: score users against all items, then take the top k.

A recommender maps a batch of dense user ids to scores [B, V] over every dense item id
(V = n_items + 1, id 0 is padding). `top_k` masks padding and each user's seen items with -inf.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from common.config import setting
from common.data import Dataset, pad_rows, row_owners, row_positions, same_row_pairs
from common.io import InputError
from common.metrics import all_metrics
from common.model import SASRec
from common.registry import model_module
from common.utils import autocast, autocast_dtype


class PopRecommender:
    """Most popular items: the same scores for everyone."""

    def __init__(self, counts: torch.Tensor):
        self.counts = counts.float()  # [V]

    @staticmethod
    def fit(ds: Dataset) -> dict:
        return {"counts": torch.from_numpy(np.bincount(ds.items, minlength=ds.n_items + 1)).float()}

    def score(self, users: np.ndarray) -> torch.Tensor:
        return self.counts.repeat(len(users), 1)  # [B, V], a fresh tensor (top_k writes into it)


GRAM_BLOCK = 2048  # columns of X^T X computed at once


def cooccurrence(ds: Dataset, window: int = 0, tau: float = 20.0, pair_weight=None) -> torch.Tensor:
    """Item-item Gram matrix over real items, [n_items, n_items] float32.

    window 0: G = X^T X, the number of users who have both items. window w > 0: two items of a user count
    only when at most w steps apart in the user's time order, with weight exp(-(d - 1) / tau) at d steps;
    the diagonal keeps each item's count. A pair that sits together in time is what a randomly dropped item
    shares with its neighbours. With w >= the longest sequence and tau -> inf it is X^T X again.
    Unlike X^T X a windowed G can have slightly negative eigenvalues; the l2 of EASE covers them.
    `pair_weight(a, d)`, given the rows `a` [P] (a tensor) of ds.items whose item is d steps before another of its user,
    returns extra weights [P] for those pairs (a probe of other weightings, bench/time_window.py).
    """
    if window == 0:  # X^T X, a block of GRAM_BLOCK columns at a time: the sparse product never holds all pairs
        X = ds.seen_matrix()[:, 1:].astype(np.float32).tocsc()  # [U, n_items]
        XT = X.T.tocsr()
        G = np.empty((X.shape[1], X.shape[1]), dtype=np.float32)
        for lo in range(0, X.shape[1], GRAM_BLOCK):
            G[:, lo:lo + GRAM_BLOCK] = (XT @ X[:, lo:lo + GRAM_BLOCK]).toarray()
        return torch.from_numpy(G)
    n = ds.n_items
    owner = row_owners(ds.indptr)  # [N]
    items = torch.from_numpy(ds.items - 1)  # [N], 0-based real items
    G = torch.zeros(n * n)  # flat [n, n]
    for d in range(1, min(window, int(np.diff(ds.indptr).max(initial=1)) - 1) + 1):
        a = torch.from_numpy(same_row_pairs(owner, d))  # [P] pairs d steps apart
        w = torch.full((len(a),), math.exp(-(d - 1) / tau))  # [P]
        if pair_weight is not None:
            w = w * pair_weight(a, d)
        G.index_add_(0, items[a] * n + items[a + d], w)
        G.index_add_(0, items[a + d] * n + items[a], w)
    G = G.view(n, n)
    G.diagonal().add_(torch.from_numpy(np.bincount(ds.items - 1, minlength=n).astype(np.float32)))
    return G


@dataclass
class EASEArgs:
    l2: float = setting(500.0, "EASE: L2 weight on the item-item matrix", gt=0)
    window: int = setting(0, "EASE: count two items together only when at most this many steps apart in a "
                             "user's history (0: anywhere)", ge=0)
    window_tau: float = setting(20.0, "EASE: --window pairs d steps apart weigh exp(-(d - 1) / window_tau)", gt=0)
    diag_power: float = setting(1.0, "EASE: B = -P / diag(P)^diag_power; below 1 lifts rarer items", ge=0)
    recency: float = setting(0.0, "EASE: extra weight of recent items when scoring "
                                  "(1 + recency * exp(-steps back / recency_tau))", ge=0)
    recency_tau: float = setting(10.0, "EASE: decay of --recency, in items", gt=0)

    def fit_args(self) -> dict:
        return {"l2": self.l2, "window": self.window, "window_tau": self.window_tau, "diag_power": self.diag_power}

    def scoring(self) -> dict:
        return {"recency": self.recency, "recency_tau": self.recency_tau}


def ease_bytes(n_items: int, matrices: int = 2) -> int:
    """Peak memory of `matrices` dense float32 item-item matrices; EASE's fit holds two (the Gram matrix
    and its factor, the factor and the inverse, or the inverse and the padded copy that is saved)."""
    return matrices * 4 * (n_items + 1) ** 2


def free_bytes(device: torch.device) -> int:
    """Memory a new allocation can take: free GPU memory, or Linux's MemAvailable (free memory plus the
    page cache it can drop), else the free pages."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_dense_memory(n_items: int, device: torch.device, matrices: int = 2, model: str = "--model ease") -> None:
    """Refuse, before any work, a catalogue whose `matrices` dense item-item matrices would not fit in the
    memory that is free."""
    need, free = ease_bytes(n_items, matrices), free_bytes(device)
    if need > free:
        raise InputError(f"{model}: {n_items:,} items need {matrices} dense {n_items:,} x {n_items:,} matrices "
                         f"({need / 2**30:.1f} GiB), but {free / 2**30:.1f} GiB of {device.type} memory are free; "
                         "use --model multvae or sasrec (memory linear in the items), a machine or GPU with more "
                         "memory, or fewer items")


class EASERecommender:
    """EASE (Steck 2019): scores = X_u B with B = I - P / diag(P), P = (G + l2 I)^-1, diag(B) = 0.

    G is X^T X of the 0/1 matrix, or with `window` > 0 the co-occurrence of items near each other in
    time (see `cooccurrence`). `diag_power` g < 1 divides by diag(P)^g instead: against g = 1 it scales
    column j by diag(P)_j^(1 - g), which is smallest for frequent items (g = 0 ranks unseen items as the
    unconstrained ridge regression does). With `recency` > 0 the scoring input weighs the user's latest
    items more (see Dataset.seen_matrix): the hidden set favours what comes next.
    """

    def __init__(self, B: torch.Tensor, ds: Dataset, recency: float = 0.0, recency_tau: float = 10.0):
        self.B = B  # [V, V], row and column 0 (padding) are zero
        self.X = ds.seen_matrix(recency, recency_tau)  # sparse [n_users, V]

    @staticmethod
    def fit(ds: Dataset, l2: float, window: int = 0, window_tau: float = 20.0, diag_power: float = 1.0,
            device: torch.device = torch.device("cpu"), pair_weight=None) -> dict:
        """B, computed on `device` (torch.linalg: a GPU inverts a large catalogue's matrix in seconds).
        At most two dense item-item matrices are alive at a time (see `ease_bytes`). `pair_weight`: see
        `cooccurrence`."""
        check_dense_memory(ds.n_items, device)
        G = cooccurrence(ds, window, window_tau, pair_weight).to(device)  # [n, n]
        G.diagonal().add_(l2)
        L, info = torch.linalg.cholesky_ex(G)
        if info.item() == 0:
            del G
            P = torch.cholesky_inverse(L)
            del L
        else:  # a windowed G with a tiny l2 may not be positive definite: then a general inverse
            del L
            P = torch.linalg.inv(G)
            del G
        B = P.div_(P.diagonal().clone()[None, :] ** diag_power).neg_()  # B_ij = -P_ij / P_jj^g, in place
        B.diagonal().zero_()
        full = torch.zeros(ds.n_items + 1, ds.n_items + 1)
        full[1:, 1:] = B.cpu()
        return {"B": full}

    def score(self, users: np.ndarray) -> torch.Tensor:
        return sparse_times_dense(self.X[users], self.B)  # [B, V]


def sparse_times_dense(x, B: torch.Tensor) -> torch.Tensor:
    """x @ B for a scipy CSR matrix x of float32 and a dense B, as a float32 tensor on B's device.

    Torch's product runs on its threads: at full scale 2 threads take 0.39-0.42 s per 1,024 users against
    scipy's 0.60-0.65 s, but one thread takes 0.77-0.79 s, so a single CPU thread keeps scipy's. The two agree
    to float rounding (to the bit where x holds only ones, as plain EASE's does); torch's does not depend on
    its thread count."""
    if B.device.type == "cpu" and torch.get_num_threads() == 1:
        return torch.from_numpy(np.asarray(x @ B.numpy(), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        rows = torch.sparse_csr_tensor(torch.from_numpy(x.indptr).long(), torch.from_numpy(x.indices).long(),
                                       torch.from_numpy(x.data), size=x.shape, check_invariants=False)
    return rows.to(B.device) @ B


WIDTH_STEP = 8  # a user's history is padded to the next multiple of this many items (at most the window)
SCORE_BLOCK = 256  # rows of each score product on a CPU (see `score_product`)


def score_product(h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Scores h [B, H] @ table [V, H].T -> [B, V] float32 whose rows do not depend on the batch they come in.
    A product over as many rows as a batch has rounds a row differently with that count (a few rows take
    another kernel). On a CPU the product runs in float32 on blocks of exactly SCORE_BLOCK rows, the last one
    padded with zeros: one shape, so each row comes out the same wherever it sits (`tests/test_model.py`
    checks it bit for bit; 1,024 users by 6,807 items: 7 against 29 ms for a float64 product). Elsewhere in
    float64, rounded to float32. Outside autocast either way."""
    with torch.autocast(h.device.type, enabled=False):
        if h.device.type != "cpu":
            return (h.double() @ table.double().T).float()
        h, table = h.float(), table.float()
        B = h.size(0)
        padded = torch.nn.functional.pad(h, (0, 0, 0, -B % SCORE_BLOCK))  # [B', H]
        out = torch.empty(padded.size(0), table.size(0), device=h.device)  # [B', V]
        for s in range(0, padded.size(0), SCORE_BLOCK):
            torch.mm(padded[s:s + SCORE_BLOCK], table.T, out=out[s:s + SCORE_BLOCK])
        return out[:B]


class SASRecRecommender:
    """Scores from the hidden state at the last position of each user's latest max_len items.

    Each user's history is left-padded to a width that depends on its own length alone (the next multiple
    of WIDTH_STEP, at most the window), so short histories do not pay for max_len positions; `order` lets
    `top_k` batch users of one width together. Its encoder may run under bf16 autocast (encoder_autocast):
    the top block's last-position projections are float64, which autocast leaves alone, and the score product
    runs outside it (`score_product`), so the scores stay independent of the batch size."""
    encoder_autocast = True

    def __init__(self, model: SASRec, ds: Dataset, device: torch.device):
        self.model, self.ds, self.device = model, ds, device

    def window(self) -> int:
        """History items read per user."""
        return self.model.args.max_len

    def widths(self, users: np.ndarray) -> np.ndarray:
        """Padded history width of each user [B]."""
        n = np.maximum(self.ds.indptr[users + 1] - self.ds.indptr[users], 1)
        return np.minimum(-(-n // WIDTH_STEP) * WIDTH_STEP, self.window())

    def order(self, users: np.ndarray) -> np.ndarray:
        """A permutation of `users` that puts users of one width next to each other."""
        return np.argsort(self.widths(users), kind="stable")

    def last_hidden(self, users: np.ndarray, width: int) -> torch.Tensor:
        seq = pad_rows(self.ds.indptr, self.ds.items, users, width, left=True)
        return self.model(torch.from_numpy(seq).to(self.device), last=True)[:, -1]  # [B, H]

    @torch.no_grad()
    def score(self, users: np.ndarray) -> torch.Tensor:
        self.model.eval()
        widths = self.widths(users)
        h = torch.empty(len(users), self.model.args.hidden, device=self.device)  # [B, H]
        for width in np.unique(widths):  # one encoder pass per width in the batch
            rows = np.flatnonzero(widths == width)
            h[torch.from_numpy(rows).to(self.device)] = self.last_hidden(users[rows], int(width)).float()
        return score_product(h, self.model.output_embeddings())  # [B, V], independent of the batch


class RecommenderTask:
    """The part a trained task shares: its kept weights are scored on the local answers by its recommender
    class (evaluate) and saved with its model type and arguments (checkpoint). Subclasses set model_type,
    recommender_cls, cfg (a TrainConfig), ds, args and device."""
    stage, label = "finetune", ""
    model_type: str
    recommender_cls: type

    def evaluate(self, kept: torch.nn.Module) -> dict:
        """Metrics of `kept` on the local answers; a sequence encoder runs under the training's --amp."""
        rec = self.recommender_cls(kept, self.ds, self.device)
        amp = autocast_dtype(self.cfg.trainer.amp, self.device) if getattr(rec, "encoder_autocast", False) else None
        with autocast(amp, self.device):
            return evaluate(rec, self.ds, self.cfg.trainer.k, self.cfg.trainer.eval_batch_size)

    def checkpoint(self, kept: torch.nn.Module) -> dict:
        return {"model_type": self.model_type, "model_args": dataclasses.asdict(self.args),
                "state_dict": kept.state_dict()}


def restored(model: torch.nn.Module, ckpt: dict, device: torch.device) -> torch.nn.Module:
    """`model` with the checkpoint's weights, on `device`."""
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device)


def fit_closed_form(model_type: str, cfg, ds: Dataset, device: torch.device):
    """(state, model_args, recommender) of pop, or of EASE fitted with cfg.ease (its inverse on `device`)."""
    if model_type == "pop":
        state = PopRecommender.fit(ds)
        return state, {}, PopRecommender(state["counts"])
    e = cfg.ease
    state = EASERecommender.fit(ds, **e.fit_args(), device=device)
    return state, {**e.fit_args(), "scoring": e.scoring()}, EASERecommender(state["B"], ds, **e.scoring())


def recommender(ckpt: dict, ds: Dataset, device: torch.device):
    """The pop or EASE recommender of a loaded checkpoint."""
    if ckpt["model_type"] == "pop":
        return PopRecommender(ckpt["state_dict"]["counts"].to(device))
    return EASERecommender(ckpt["state_dict"]["B"], ds, **ckpt["model_args"].get("scoring", {}))


def build_recommender(ckpt: dict, ds: Dataset, device: torch.device):
    """The recommender stored in a loaded checkpoint, scoring the sequences of `ds`."""
    return model_module(ckpt["model_type"]).recommender(ckpt, ds, device)


def mask_seen(scores: torch.Tensor, ds: Dataset, users: np.ndarray) -> None:
    """Set -inf, in place, on each user's training items and on padding (item 0) in scores [B, V]: one write
    per seen pair through flat indices, so a batch's long histories cost nothing for its short ones."""
    pos, count = row_positions(ds.indptr, users)
    flat = np.repeat(np.arange(len(users), dtype=np.int64) * scores.size(1), count) + ds.items[pos]
    scores.view(-1)[torch.from_numpy(flat).to(scores.device)] = float("-inf")
    scores[:, 0] = float("-inf")


@torch.no_grad()
def top_k(rec, ds: Dataset, users: np.ndarray, k: int, batch_size: int = 1024, progress: bool = False):
    """Top-k dense item ids and scores per user, seen items and padding excluded.

    Returns (ids [U, k] int64, scores [U, k] float32), items in rank order. `rec.score` returns a fresh
    [B, V] tensor for each batch: the masking writes into it.
    """
    ids = np.zeros((len(users), k), dtype=np.int64)
    scores = np.zeros((len(users), k), dtype=np.float32)
    order = rec.order(users) if hasattr(rec, "order") else np.arange(len(users))  # batches of alike users
    starts = range(0, len(users), batch_size)
    for s in tqdm(starts, desc="scoring", disable=not progress, unit="batch"):
        rows = order[s:s + batch_size]
        batch = users[rows]
        sc = rec.score(batch).float().contiguous()  # [B, V]
        mask_seen(sc, ds, batch)
        top = torch.topk(sc, k, dim=1)
        ids[rows] = top.indices.cpu().numpy()
        scores[rows] = top.values.cpu().numpy()
    return ids, scores


def evaluate(rec, ds: Dataset, k: int = 10, batch_size: int = 1024) -> dict:
    """Metrics@k of `rec` against the local answers of every user who has some."""
    users = ds.eval_users()
    ids, _ = top_k(rec, ds, users, k, batch_size)
    return all_metrics(ids, ds.answers_padded(users), k)

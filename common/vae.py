"""Variational autoencoders of each user's whole history: Mult-VAE and RecVAE.

Both read a user's training items as a multi-hot row x [n_items] (column i - 1 is item i), normalised
to unit length and dropped out, encode it to a Gaussian posterior q(z|x) and decode z to a softmax over
all items; the loss is the multinomial log-likelihood of x plus a KL term. Scores are the decoder's
logits at the posterior mean, with the padding column 0 at -inf.

The rows stay sparse (`multihot`): about 2% of a row is set at competition size, so the first layer
sums the weight rows of the user's items (`ItemBag`, one embedding bag) instead of multiplying a dense
row, and the likelihood gathers the log-probabilities of those items only.

  multvae  Mult-VAE (Liang et al., WWW 2018): one tanh layer each way; KL weight annealed as
           min(beta, step / anneal_steps).
  recvae   RecVAE (Shenbin et al., WSDM 2020): a five-layer densely connected encoder (swish,
           LayerNorm), a linear decoder, a composite prior (standard normal, the previous epoch's
           posterior, a wide normal), KL weight gamma * |x_u|, and alternating updates: each epoch runs
           `enc_passes` passes that step the encoder only, then one pass that steps the decoder only.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common.config import setting
from common.data import Dataset
from common.model import dropout as drop_out
from common.recommend import RecommenderTask, restored
from common.trainer import Lazy
from common.utils import to_device

LOG_2PI = math.log(2 * math.pi)
PRIOR_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)  # RecVAE's mixture: standard normal, previous posterior, wide normal
WIDE_LOGVAR = 10.0
NORM_EPS = 1e-12  # as F.normalize: an empty row stays zero


@dataclass
class VAEArgs:
    n_items: int = setting(0, flag=False)
    vae_hidden: int = setting(600, "multvae/recvae: width of the hidden layers", ge=1)
    latent: int = setting(200, "multvae/recvae: size of z", ge=1)
    input_dropout: float = setting(0.5, "multvae/recvae: dropout on the input row", ge=0, lt=1)
    beta: float = setting(0.2, "multvae: largest KL weight", ge=0)
    anneal_steps: int = setting(200000, "multvae: KL weight = min(beta, step / anneal_steps)", ge=1)
    gamma: float = setting(0.005, "recvae: KL weight per item of the user", ge=0)
    enc_passes: int = setting(3, "recvae: encoder passes per decoder pass in an epoch", ge=1)

    ARCHITECTURE = ("n_items", "vae_hidden", "latent")  # what a resumed run must keep (common.checkpoint)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) per coordinate."""
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 / logvar.exp())


def multihot(X, users: np.ndarray) -> dict:
    """Rows `users` of the sparse [n_users, n_items + 1] matrix X as a batch: for each stored entry its
    row in the batch, its column (item i is column i - 1) and its value, plus each row's first entry."""
    rows = X[users][:, 1:].tocsr()  # column 0 is the padding item
    return {"row": np.repeat(np.arange(len(users), dtype=np.int64), np.diff(rows.indptr)),
            "item": rows.indices.astype(np.int64),
            "value": rows.data.astype(np.float32),
            "offsets": rows.indptr[:-1].astype(np.int64)}


def row_sums(x: dict, per_entry: torch.Tensor) -> torch.Tensor:
    """Σ over each row's entries of `per_entry` [nnz] -> [B]."""
    return per_entry.new_zeros(len(x["offsets"])).index_add_(0, x["row"], per_entry)


def multinomial_nll(logits: torch.Tensor, x: dict) -> torch.Tensor:
    """-Σ_i x_i log softmax(logits)_i per row [B], read at the row's stored items only."""
    return -row_sums(x, F.log_softmax(logits, dim=1)[x["row"], x["item"]] * x["value"])


class ItemBag(nn.Module):
    """A linear layer over sparse multi-hot rows: row u's output is bias + Σ_i w_ui · weight[i], where
    w_u is the row normalised to unit length and dropped out. The weight is stored [n_items, width], one
    row per item, so each row's sum is one embedding bag."""

    def __init__(self, n_items: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_items, width))
        self.bias = nn.Parameter(torch.empty(width))
        bound = 1 / math.sqrt(n_items)  # nn.Linear's default over n_items inputs
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: dict, dropout: float = 0.0) -> torch.Tensor:
        norm = row_sums(x, x["value"] ** 2).sqrt().clamp_min(NORM_EPS)
        w = x["value"] / norm[x["row"]]
        w = drop_out(w, dropout, self.training)
        return F.embedding_bag(x["item"], self.weight, x["offsets"], mode="sum", per_sample_weights=w) + self.bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"  # checkpoints from dense nn.Linear inputs hold the weight [width, n_items]
        if key in state_dict and state_dict[key].shape == self.weight.shape[::-1] != self.weight.shape:
            state_dict[key] = state_dict[key].t().contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row [B]."""
    return -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(dim=1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, sample: bool) -> torch.Tensor:
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu


class MultVAE(nn.Module):
    def __init__(self, a: VAEArgs):
        super().__init__()
        self.args = a
        self.encoder = ItemBag(a.n_items, a.vae_hidden)
        self.posterior = nn.Linear(a.vae_hidden, 2 * a.latent)  # mu, logvar
        self.decoder = nn.Sequential(nn.Linear(a.latent, a.vae_hidden), nn.Tanh(), nn.Linear(a.vae_hidden, a.n_items))
        self.register_buffer("steps", torch.zeros(()))  # optimizer steps taken: anneals the KL
        for m in self.modules():
            if isinstance(m, (nn.Linear, ItemBag)):
                nn.init.xavier_normal_(m.weight)
                nn.init.normal_(m.bias, std=0.001)

    def encode(self, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.posterior(torch.tanh(self.encoder(x, self.args.input_dropout))).chunk(2, dim=1)  # [B, Z] each

    def scores(self, x: dict) -> torch.Tensor:
        return self.decoder(self.encode(x)[0])  # [B, n_items]

    def loss(self, x: dict) -> tuple[torch.Tensor, dict]:
        mu, logvar = self.encode(x)
        logits = self.decoder(reparameterize(mu, logvar, self.training))
        beta = min(self.args.beta, float(self.steps) / self.args.anneal_steps)
        self.steps += 1
        nll, kl = multinomial_nll(logits, x).mean(), gaussian_kl(mu, logvar).mean()
        return nll + beta * kl, {"nll": nll.item(), "kl": kl.item(), "beta": beta}


class DenseEncoder(nn.Module):
    """RecVAE's encoder: five swish layers, each fed the sum of all earlier layers' outputs, LayerNorm'd."""
    LAYERS = 5

    def __init__(self, a: VAEArgs):
        super().__init__()
        self.args = a
        self.fc = nn.ModuleList([ItemBag(a.n_items, a.vae_hidden)]
                                + [nn.Linear(a.vae_hidden, a.vae_hidden) for _ in range(self.LAYERS - 1)])
        self.ln = nn.ModuleList(nn.LayerNorm(a.vae_hidden, eps=0.1) for _ in range(self.LAYERS))
        self.posterior = nn.Linear(a.vae_hidden, 2 * a.latent)

    def forward(self, x: dict, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.ln[0](F.silu(self.fc[0](x, dropout)))  # [B, H]
        earlier = h  # the sum of all earlier layers' outputs
        for fc, ln in zip(self.fc[1:], self.ln[1:]):
            h = ln(F.silu(fc(h) + earlier))  # [B, H]
            earlier = earlier + h
        return self.posterior(h).chunk(2, dim=1)  # [B, Z] each


class RecVAE(nn.Module):
    def __init__(self, a: VAEArgs):
        super().__init__()
        self.args = a
        self.encoder = DenseEncoder(a)
        self.previous = DenseEncoder(a).requires_grad_(False)  # the prior's copy of the last epoch's encoder
        self.decoder = nn.Linear(a.latent, a.n_items)

    def start_epoch(self) -> None:
        self.previous.load_state_dict(self.encoder.state_dict())

    def scores(self, x: dict) -> torch.Tensor:
        return self.decoder(self.encoder(x, 0.0)[0])  # [B, n_items]

    def log_prior(self, x: dict, z: torch.Tensor) -> torch.Tensor:
        """log of the composite prior at z [B, Z], per coordinate."""
        mu_prev, logvar_prev = self.previous(x, 0.0)
        zero = torch.zeros_like(z)
        parts = [gaussian_log_density(z, zero, zero), gaussian_log_density(z, mu_prev, logvar_prev),
                 gaussian_log_density(z, zero, zero + WIDE_LOGVAR)]
        return torch.logsumexp(torch.stack([p + math.log(w) for p, w in zip(parts, PRIOR_WEIGHTS)]), dim=0)

    def loss(self, x: dict, phase: str) -> tuple[torch.Tensor, dict]:
        """The negative ELBO of a batch. phase "encoder": gradients reach the encoder only;
        "decoder": the decoder only, read with the input not dropped out."""
        with torch.set_grad_enabled(phase == "encoder"):
            mu, logvar = self.encoder(x, self.args.input_dropout if phase == "encoder" else 0.0)
            z = reparameterize(mu, logvar, self.training)
            n_items = row_sums(x, torch.ones_like(x["value"]))  # |x_u|
            kl = (gaussian_log_density(z, mu, logvar) - self.log_prior(x, z)).sum(dim=1) * self.args.gamma * n_items
        if phase == "encoder":
            logits = F.linear(z, self.decoder.weight.detach(), self.decoder.bias.detach())
        else:
            logits = self.decoder(z.detach())
        nll = multinomial_nll(logits, x)
        return (nll + kl).mean(), {"nll": nll.mean().item(), "kl": kl.mean().item()}


MODELS = {"multvae": MultVAE, "recvae": RecVAE}


class VAERecommender:
    """Scores of each user's training items read as one multi-hot row."""

    def __init__(self, model: nn.Module, ds: Dataset, device: torch.device):
        self.model, self.device = model, device
        self.X = ds.seen_matrix()  # sparse [n_users, n_items + 1]

    @torch.no_grad()
    def score(self, users: np.ndarray) -> torch.Tensor:
        self.model.eval()
        s = self.model.scores(to_device(multihot(self.X, users), self.device))  # [B, n_items]
        return torch.cat([torch.full((len(users), 1), -math.inf, device=s.device), s], dim=1)  # [B, V]


class VAETask(RecommenderTask):
    """Mult-VAE or RecVAE on every user with a training item, in random batches of users."""
    recommender_cls = VAERecommender

    def __init__(self, cfg, ds: Dataset, kind: str, rng: np.random.Generator, device: torch.device):
        self.cfg, self.ds, self.kind, self.rng, self.device = cfg, ds, kind, rng, device
        self.model_type = kind
        self.unused_parameters = kind == "recvae"  # its encoder and decoder steps train one part each
        self.args = dataclasses.replace(cfg.vae, n_items=ds.n_items)
        self.module = MODELS[kind](self.args).to(device)
        self.X = ds.seen_matrix()  # sparse [n_users, n_items + 1]
        self.users = np.flatnonzero(np.diff(ds.indptr) > 0)

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        return f"{self.kind}: {n_params:,} parameters, {len(self.users):,} users, {self.ds.n_items:,} items"

    def _pass(self, phase: str) -> list:
        users, size = self.users[self.rng.permutation(len(self.users))], self.cfg.trainer.batch_size
        return [(phase, users[s:s + size]) for s in range(0, len(users), size)]

    def batches(self, epoch: int) -> Lazy:
        if self.kind == "recvae":
            self.module.start_epoch()
            steps = [b for _ in range(self.args.enc_passes) for b in self._pass("encoder")] + self._pass("decoder")
        else:
            steps = self._pass("all")
        return Lazy(steps, lambda step: (step[0], to_device(multihot(self.X, step[1]), self.device)))

    def loss(self, batch: tuple) -> tuple[torch.Tensor, dict]:
        phase, x = batch
        return self.module.loss(x, phase) if self.kind == "recvae" else self.module.loss(x)


def build_task(cfg, ds: Dataset, rng: np.random.Generator, device: torch.device) -> VAETask:
    return VAETask(cfg, ds, cfg.model, rng, device)


def recommender(ckpt: dict, ds: Dataset, device: torch.device) -> VAERecommender:
    return VAERecommender(restored(MODELS[ckpt["model_type"]](VAEArgs(**ckpt["model_args"])), ckpt, device), ds, device)

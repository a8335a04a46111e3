"""Fit a model on data/<dataset>/ and write data/<dataset>/runs/<run>/{checkpoint.pt,config.json,metrics.jsonl}.

Models: pop (most popular), ease (closed-form item-item, --l2, --recency, --window), sasrec (S3-Rec's fine-tuning
model) with --loss bce (the baseline), bpr, ce (softmax over all items) or sampled (shared negatives).
--history holdout trains on simulated hidden sets: the next items after a random cut plus randomly
dropped earlier ones, predicted together from the rest (--holdout-last, --holdout-random).
--preset names a recipe that measured best (ease-recent, ease-seq, ease-soft, bpr-full, ce-full, holdout-ce);
flags beside it win.
--stage pretrain trains the encoder with S3-Rec's self-supervised objectives (AAP, MIP, MAP, SP) on the
item-attribute table; --init-from <that run> starts fine-tuning from it.
With a local hold-out every epoch is scored (Recall@10, NDCG@10), the best epoch is kept and training
stops early. The answers that choose are the validation answers when the dataset has them (--split auto):
the model trains on the training part without them; --split test trains on the whole training part and
chooses on the test answers (printed as such). --select last trains exactly --epochs and reads no answers:
the mode for a refit with an epoch count chosen earlier. Without a hold-out, training runs a fixed --epochs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from common.batches import (HISTORY_MODES, MIN_INPUT, NegativeSampler, epoch_batches, gather_future, gather_windows,
                            holdout_cuts, holdout_examples, holdout_users, window_ends)
from common.config import config_dict, parse_config, save_config
from common.data import SPLITS, Dataset
from common.io import InputError, append_jsonl, keep_epochs_before, read_json, run_main
from common.losses import LOSSES
from common.model import SASRec, SASRecArgs
from common.pretrain import PretrainConfig, fit_pretrain, load_pretrained_encoder
from common.recommend import MODEL_TYPES, EASERecommender, PopRecommender, SASRecRecommender, evaluate, save_checkpoint
from common.utils import optimizer_step, pick_device, set_seed


# Named recipes that measured best (README, "Measured results"); flags given beside --preset override them.
PRESETS = {
    "bpr-full": {"model": "sasrec", "loss": "bpr", "history": "windows", "negatives": 16,
                 "dropout_attn": 0.2, "dropout_hidden": 0.2, "pre_ln": True, "final_ln": True},
    "ce-full": {"model": "sasrec", "loss": "ce", "history": "windows"},
    "holdout-ce": {"model": "sasrec", "loss": "ce", "history": "holdout", "dropout_attn": 0.2,
                   "dropout_hidden": 0.2, "pre_ln": True, "final_ln": True, "batch_size": 128, "max_len": 200},
    "ease-recent": {"model": "ease", "l2": 500.0, "recency": 2.0, "recency_tau": 10.0},
    "ease-seq": {"model": "ease", "l2": 50.0, "window": 50, "window_tau": 20.0, "recency": 2.0, "recency_tau": 10.0},
    "ease-soft": {"model": "ease", "l2": 200.0, "diag_power": 0.5, "recency": 2.0, "recency_tau": 10.0},
}


@dataclass
class TrainConfig:
    data: str = field(default="data/demo", metadata={"help": "preprocessed dataset folder"})
    preset: str = field(default="", metadata={"choices": ("", *PRESETS), "help": "a named recipe: " + "; ".join(
        f"{k}: " + " ".join(f"{f}={v}" for f, v in p.items()) for k, p in PRESETS.items())})
    model: str = field(default="sasrec", metadata={"choices": MODEL_TYPES})
    loss: str = field(default="bce", metadata={"choices": tuple(LOSSES)})
    history: str = field(default="last", metadata={"choices": HISTORY_MODES,
                                                   "help": "last max_len items, all windows, random crops, or "
                                                           "simulated hidden sets (holdout)"})
    holdout_last: int = field(default=5, metadata={"help": "history holdout: next items hidden per example"})
    holdout_random: int = field(default=5, metadata={"help": "history holdout: earlier items dropped and hidden"})
    holdout_samples: int = field(default=8, metadata={"help": "history holdout: examples per user per epoch"})
    horizon: int = field(default=1, metadata={"help": "targets per position: the next K items (1: next item only)"})
    negatives: int = field(default=1, metadata={"help": "negatives per target (bce, bpr) or per batch (sampled)"})
    sampled_dist: str = field(default="uniform", metadata={"choices": ("uniform", "pop"),
                                                           "help": "sampled: draw shared negatives uniformly or by popularity"})
    logq: bool = field(default=False, metadata={"help": "sampled: subtract log q(item) from logits"})
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout_attn: float = 0.5
    dropout_hidden: float = 0.5
    max_len: int = 50
    init_std: float = 0.02
    pre_ln: bool = False
    final_ln: bool = False
    tied: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema: float = field(default=0.0, metadata={"help": "evaluate and save an exponential moving average of the "
                                                      "weights with this decay per step (0: off)"})
    batch_size: int = 256
    epochs: int = field(default=200, metadata={"help": "maximum epochs (fixed count without a hold-out)"})
    split: str = field(default="auto", metadata={"choices": ("auto", *SPLITS), "help": "answers that score epochs: "
                                                 "valid (auto, when the dataset has them) or test"})
    select: str = field(default="best", metadata={"choices": ("best", "last"), "help": "best: keep the best-scoring "
                                                  "epoch and stop early; last: train --epochs, read no answers"})
    patience: int = field(default=10, metadata={"help": "epochs without a better Recall@k before stopping"})
    l2: float = field(default=500.0, metadata={"help": "EASE: L2 weight on the item-item matrix"})
    recency: float = field(default=0.0, metadata={"help": "EASE: extra weight of recent items when scoring "
                                                          "(1 + recency * exp(-steps back / recency_tau))"})
    recency_tau: float = field(default=10.0, metadata={"help": "EASE: decay of --recency, in items"})
    window: int = field(default=0, metadata={"help": "EASE: count two items together only when at most this many "
                                                     "steps apart in a user's history (0: anywhere)"})
    window_tau: float = field(default=20.0, metadata={"help": "EASE: --window pairs d steps apart weigh "
                                                              "exp(-(d - 1) / window_tau)"})
    diag_power: float = field(default=1.0, metadata={"help": "EASE: B = -P / diag(P)^diag_power; below 1 "
                                                             "lifts rarer items"})
    stage: str = field(default="finetune", metadata={"choices": ("finetune", "pretrain"),
                                                     "help": "pretrain: S3-Rec's self-supervised objectives"})
    init_from: str = field(default="", metadata={"help": "start from a pretraining run (its name or checkpoint path)"})
    aap_weight: float = field(default=0.2, metadata={"help": "pretrain: item -> attributes"})
    mip_weight: float = field(default=1.0, metadata={"help": "pretrain: masked item prediction"})
    map_weight: float = field(default=1.0, metadata={"help": "pretrain: masked attribute prediction"})
    sp_weight: float = field(default=0.5, metadata={"help": "pretrain: segment prediction"})
    mask_prob: float = field(default=0.2, metadata={"help": "pretrain: share of items masked"})
    k: int = 10
    eval_batch_size: int = 1024
    seed: int = 42
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0: one per core)"})
    run_name: str = field(default="", metadata={"help": "default: <dataset>-<model>[-<loss>][-<history>]-s<seed>"})
    resume: bool = field(default=False, metadata={"help": "continue the run from its last.pt"})
    progress: bool = field(default=True, metadata={"help": "show tqdm bars"})


def run_name(cfg: TrainConfig, ds: Dataset) -> str:
    if cfg.run_name:
        return cfg.run_name
    # a run that trains on the test split of data with validation answers has read them: name it apart
    tail = (["testsplit"] if ds.split == "test" and ds.has_validation else []) + [f"s{cfg.seed}"]
    if cfg.stage == "pretrain":
        return "-".join([ds.name, "s3rec-pretrain", *tail])
    if cfg.preset:
        return "-".join([ds.name, cfg.preset, *(["pt"] if cfg.init_from else []), *tail])
    parts = [ds.name, cfg.model]
    if cfg.model == "ease":
        parts.append(f"l{cfg.l2:g}")
        if cfg.window:
            parts.append(f"w{cfg.window}t{cfg.window_tau:g}")
        if cfg.diag_power != 1:
            parts.append(f"d{cfg.diag_power:g}")
        if cfg.recency:
            parts.append(f"r{cfg.recency:g}t{cfg.recency_tau:g}")
    if cfg.model == "sasrec":
        parts.append(cfg.loss)
        if cfg.history != "last":
            parts.append(cfg.history)
        if cfg.init_from:
            parts.append("pt")
    return "-".join(parts + tail)


def model_args(cfg: TrainConfig, ds: Dataset) -> SASRecArgs:
    names = {f.name for f in dataclasses.fields(SASRecArgs)} - {"n_items"}
    return SASRecArgs(n_items=ds.n_items, **{n: getattr(cfg, n) for n in names})


def train_loss(model: SASRec, batch: dict, loss_name: str) -> torch.Tensor:
    """Loss over the non-padded target positions of a batch {input, target, future?, exclude?,
    negatives | shared, log_q?}. `exclude` [B, E] lists items a full softmax leaves out for row b's targets."""
    spec = LOSSES[loss_name]
    h = model(batch["input"])  # [B, L, H]
    mask = batch["target"] != 0  # [B, L]
    h, target = h[mask], batch["target"][mask]  # [N, H], [N]
    future = batch["future"][mask] if "future" in batch else None  # [N, K] next K items, 0 = none
    if spec.kind == "full":
        logits = model.score_all(h)  # [N, V]
        logits = logits.index_fill(1, torch.tensor([0], device=h.device), -math.inf)
        if "exclude" in batch:  # the items the row reads: never an answer, as at inference
            rows = mask.nonzero(as_tuple=True)[0]  # [N] the row of each target position
            logits = logits.scatter(1, batch["exclude"][rows], -math.inf)
        return spec.fn(logits, target if future is None else future)
    if future is not None:  # one (position, future item) pair per target, in row-major order
        rows, k = torch.nonzero(future, as_tuple=True)
        h, target = h[rows], future[rows, k]  # [P, H], [P]
    pos = model.score_items(h, target[:, None])[:, 0]  # [N]
    if spec.negatives == "shared":
        shared = batch["shared"]  # [M]
        neg = h @ model.output_embeddings()[shared].T  # [N, M]
        neg = neg.masked_fill(shared[None, :] == target[:, None], -math.inf)
        if "log_q" in batch:  # logQ correction for popularity-sampled negatives
            pos, neg = pos - batch["log_q"][target], neg - batch["log_q"][shared][None, :]
    else:
        neg = model.score_items(h, batch["negatives"])  # [N, M]
    return spec.fn(pos, neg)


def training_batches(ds: Dataset, cfg: TrainConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """This epoch's batches in random order: window ends, or cuts of simulated hidden sets (history
    holdout, batched by input length so that short histories are not padded to max_len)."""
    if cfg.history == "holdout":
        users = np.repeat(holdout_users(ds.indptr, cfg.holdout_last, cfg.holdout_random), cfg.holdout_samples)
        cuts = holdout_cuts(ds.indptr, users, cfg.holdout_last, cfg.holdout_random, rng)
        return epoch_batches(ds.indptr, cuts, cfg.max_len, cfg.batch_size, rng)
    ends = window_ends(ds.indptr, cfg.max_len, cfg.history, rng)
    ends = ends[rng.permutation(len(ends))]
    return [ends[s:s + cfg.batch_size] for s in range(0, len(ends), cfg.batch_size)]


def holdout_batch(ds: Dataset, cuts: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> dict:
    """Simulated hidden sets as a batch whose only target position is the last one, without the
    columns that are padding in every row (positions count from the end, so outputs are unchanged)."""
    inp, targets, user = holdout_examples(ds.indptr, ds.items, cuts, rng, cfg.max_len, cfg.holdout_last,
                                          cfg.holdout_random)  # [B, L], [B, K], [B]
    inp = inp[:, int(np.argmax((inp != 0).any(axis=0))):]  # [B, L'] every row has an input item
    B, L = inp.shape
    target = np.zeros((B, L), dtype=np.int64)
    target[:, -1] = targets[:, 0]
    future = np.zeros((B, L, targets.shape[1]), dtype=np.int64)
    future[:, -1] = targets
    return {"input": inp, "target": target, "user": user, "future": future, "exclude": inp}


def make_batch(ds: Dataset, examples: np.ndarray, sampler: NegativeSampler, cfg: TrainConfig, device) -> dict:
    if cfg.history == "holdout":
        batch = holdout_batch(ds, examples, cfg, sampler.rng)
    else:
        inp, target, user = gather_windows(ds.indptr, ds.items, examples, cfg.max_len)
        batch = {"input": inp, "target": target, "user": user}
        if cfg.horizon > 1:
            batch["future"] = gather_future(ds.indptr, ds.items, examples, cfg.max_len, cfg.horizon)  # [B, L, K]
    mask = batch["target"] != 0
    users_per_target = np.broadcast_to(batch["user"][:, None], mask.shape)[mask]  # [N]
    if "future" in batch:
        future = batch["future"][mask]  # [N, K]
        users_per_target = np.broadcast_to(users_per_target[:, None], future.shape)[future != 0]  # [P]
    kind = LOSSES[cfg.loss].negatives
    if kind == "per_position":
        batch["negatives"] = sampler.sample(users_per_target, (cfg.negatives,))  # [N or P, M]
    elif kind == "shared":
        batch["shared"] = sampler.shared(cfg.negatives, cfg.sampled_dist)  # [M]
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}
    if kind == "shared" and cfg.logq:
        batch["log_q"] = torch.from_numpy(sampler.log_q(cfg.sampled_dist)).to(device)  # [V]
    return batch


def fit_closed_form(cfg: TrainConfig, ds: Dataset, out: Path) -> None:
    """Models fitted in one step (pop, ease): fit, score once, save."""
    t0 = time.time()
    if cfg.model == "pop":
        state, args = PopRecommender.fit(ds), {}
        rec = PopRecommender(state["counts"])
    else:
        scoring = {"recency": cfg.recency, "recency_tau": cfg.recency_tau}
        fit = {"l2": cfg.l2, "window": cfg.window, "window_tau": cfg.window_tau, "diag_power": cfg.diag_power}
        state, args = EASERecommender.fit(ds, **fit), {**fit, "scoring": scoring}
        rec = EASERecommender(state["B"], ds, **scoring)
    fit_seconds = time.time() - t0
    metrics = {"answers": ds.split, **evaluate(rec, ds, cfg.k, cfg.eval_batch_size)} if ds.has_holdout else {}
    score = metrics.get(f"recall@{cfg.k}")
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    append_jsonl(out / "metrics.jsonl", {"epoch": 0, **metrics, "fit_seconds": round(fit_seconds, 3),
                                         "seconds": round(time.time() - t0, 3)})
    save_checkpoint(out / "checkpoint.pt", model_type=cfg.model, model_args=args, state_dict=state,
                    config=config_dict(cfg), ds=ds, epoch=0, best_score=score)
    print(f"{cfg.model}: fitted in {fit_seconds:.1f}s " + (json.dumps(metrics) if metrics else "(no answers to score)"))


def fit_sasrec(cfg: TrainConfig, ds: Dataset, out: Path, device: torch.device) -> None:
    args = model_args(cfg, ds)
    model = SASRec(args).to(device)
    if cfg.init_from and not cfg.resume:
        path = Path(cfg.init_from)
        path = path if path.suffix == ".pt" else ds.root / "runs" / cfg.init_from / "checkpoint.pt"
        pre = load_pretrained_encoder(model, path, ds)
        print(f"encoder initialised from {path} (pretraining epoch {pre['epoch']}, objectives {pre['objectives']})")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # the weights that are scored and saved: the model itself, or the moving average of its steps
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    kept = ema.module if ema else model
    rng = np.random.default_rng(cfg.seed)
    start_epoch, best, best_epoch, bad_epochs = 0, -math.inf, -1, 0
    last_path, best_path = out / "last.pt", out / "checkpoint.pt"
    if cfg.resume:
        if not last_path.exists():
            raise InputError(f"{last_path}: nothing to resume; run without --resume first")
        st = torch.load(last_path, map_location="cpu", weights_only=True)
        if st.get("split") != ds.split or st.get("data_fingerprint") != ds.fingerprint:
            raise InputError(f"{last_path}: made on the {st.get('split')} split of data {st.get('data_fingerprint')}, "
                             f"not the {ds.split} split of {ds.root} ({ds.fingerprint}); start a new run")
        if bool(ema) != ("ema" in st):
            raise InputError(f"{last_path}: written {'with' if 'ema' in st else 'without'} --ema; resume with the "
                             "settings of the run")
        model.load_state_dict(st["train_state_dict"] if ema else st["state_dict"])
        if ema:
            ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["optimizer"])
        rng.bit_generator.state = st["numpy_rng"]
        torch.set_rng_state(st["torch_rng"])
        start_epoch, best, best_epoch, bad_epochs = st["epoch"] + 1, st["best_score"], st["best_epoch"], st["bad_epochs"]
        keep_epochs_before(out / "metrics.jsonl", start_epoch)
        print(f"resuming {out.name} at epoch {start_epoch} (best recall@{cfg.k} {best:.4f} at epoch {best_epoch})")
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    sampler = NegativeSampler(ds, rng)
    scored = ds.has_holdout and cfg.select == "best"  # answers choose the epoch kept

    def save(path: Path, epoch: int, best_score, extra=None):
        save_checkpoint(path, model_type="sasrec", model_args=dataclasses.asdict(args),
                        state_dict=kept.state_dict(), config=config_dict(cfg), ds=ds, epoch=epoch,
                        best_score=best_score, extra=extra)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"sasrec: {n_params:,} parameters, {ds.n_users:,} users, {ds.n_items:,} items, device {device}")

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        model.train()
        total, steps = 0.0, 0
        bar = tqdm(training_batches(ds, cfg, rng), desc=f"epoch {epoch}", disable=not cfg.progress, leave=False)
        for examples in bar:
            batch = make_batch(ds, examples, sampler, cfg, device)
            value = optimizer_step(opt, train_loss(model, batch, cfg.loss), f"epoch {epoch} step {steps}", best_path)
            if ema:
                ema.update_parameters(model)
            total, steps = total + value, steps + 1
            bar.set_postfix(loss=f"{total / steps:.4f}")
        record = {"epoch": epoch, "loss": total / max(steps, 1)}
        improved = not scored
        if scored:
            record["answers"] = ds.split
            record.update(evaluate(SASRecRecommender(kept, ds, device), ds, cfg.k, cfg.eval_batch_size))
            score = record[f"recall@{cfg.k}"]
            improved = score > best
            if improved:
                best, best_epoch, bad_epochs = score, epoch, 0
            else:
                bad_epochs += 1
        record["seconds"] = round(time.time() - t0, 3)
        append_jsonl(out / "metrics.jsonl", record)
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        if improved:
            save(best_path, epoch, best if scored else None)
        resume = {"optimizer": opt.state_dict(), "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                  "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        if ema:
            resume.update(train_state_dict=model.state_dict(), ema=ema.state_dict())
        save(last_path, epoch, best, resume)
        if scored and bad_epochs >= cfg.patience:
            print(f"no better recall@{cfg.k} for {cfg.patience} epochs: stopping")
            break
    if scored:
        print(f"best recall@{cfg.k} ({ds.answers_label} answers) {best:.4f} at epoch {best_epoch}")


def main():
    cfg = parse_config(TrainConfig, description=__doc__, presets=PRESETS)
    set_seed(cfg.seed)
    if cfg.split == "auto":
        cfg.split = "valid" if read_json(Path(cfg.data) / "meta.json").get("validation") else "test"
    ds = Dataset(Path(cfg.data), cfg.split)
    if cfg.stage == "pretrain" and (cfg.model != "sasrec" or cfg.init_from):
        raise InputError("--stage pretrain trains the sasrec encoder from scratch; drop --model/--init-from")
    if cfg.init_from and cfg.model != "sasrec":
        raise InputError(f"--init-from starts a sasrec model; --model {cfg.model} has no encoder to initialise")
    if not (cfg.recency >= 0 and cfg.recency_tau > 0):
        raise InputError(f"--recency must be >= 0 and --recency-tau > 0, got {cfg.recency} and {cfg.recency_tau}")
    if not 0 <= cfg.ema < 1:
        raise InputError(f"--ema must be in [0, 1), got {cfg.ema}")
    if not (cfg.l2 > 0 and cfg.window >= 0 and cfg.window_tau > 0 and cfg.diag_power >= 0):
        raise InputError(f"--l2 and --window-tau must be > 0, --window and --diag-power >= 0, got {cfg.l2}, "
                         f"{cfg.window_tau}, {cfg.window} and {cfg.diag_power}")
    if cfg.history == "holdout":
        own_targets = "--history holdout sets its own targets; it does not combine with"
        if cfg.stage == "pretrain":
            raise InputError(f"{own_targets} --stage pretrain (use last, windows or crops)")
        if cfg.horizon > 1:
            raise InputError(f"{own_targets} --horizon")
        if cfg.holdout_last < 1 or cfg.holdout_random < 0 or cfg.holdout_samples < 1:
            raise InputError(f"--holdout-last must be >= 1, --holdout-random >= 0 and --holdout-samples >= 1, got "
                             f"{cfg.holdout_last}, {cfg.holdout_random} and {cfg.holdout_samples}")
        if len(holdout_users(ds.indptr, cfg.holdout_last, cfg.holdout_random)) == 0:
            raise InputError(f"{ds.root}: no user has the {cfg.holdout_last + cfg.holdout_random + MIN_INPUT} training "
                             "items a simulated hidden set needs; lower --holdout-last/--holdout-random")
    if cfg.model == "sasrec" and cfg.k > ds.n_items:
        raise InputError(f"--k {cfg.k} exceeds the {ds.n_items} items of {ds.root}")
    device = pick_device(cfg.device, cfg.threads)
    name = run_name(cfg, ds)
    out = ds.root / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    if cfg.stage == "pretrain":
        pcfg = PretrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(PretrainConfig)})
        fit_pretrain(pcfg, ds, out, device, model_args(cfg, ds), cfg.epochs, cfg.batch_size, cfg.lr, cfg.seed,
                     cfg.progress, cfg.resume, history=cfg.history, config=config_dict(cfg))
    elif cfg.model in ("pop", "ease"):
        fit_closed_form(cfg, ds, out)
    else:
        fit_sasrec(cfg, ds, out, device)
    print(f"wrote {out}/ (checkpoint.pt, config.json, metrics.jsonl); trained on the {ds.split} split's training part")


if __name__ == "__main__":
    run_main(main)

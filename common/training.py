"""What 02_train.py fits: its config, its presets, its run names, and the registry of models.

TrainConfig nests one dataclass per part, each declared where that part lives:
  sasrec     the model's arguments (common.model.SASRecArgs)
  ease       EASE's settings (common.recommend.EASEArgs)
  objective  the next-item loss and history (common.next_item.ObjectiveConfig)
  pretrain   S3-Rec's objective weights (common.pretrain.PretrainConfig)
  vae        Mult-VAE's and RecVAE's settings (common.vae.VAEArgs)
  cloze      the cloze model's masking (common.cloze.ClozeConfig); its encoder is `sasrec`
  trainer    the training loop (common.trainer.TrainerConfig)
Flags stay flat (--hidden, --loss, --lr); config.json shows the nesting.

A gradient-trained model is a task of the one trainer (common.trainer); common.registry names the module
that builds it. To add one: its file, one line in the registry and, for settings of its own, one group here.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.batches import MIN_INPUT, holdout_users
from common.checkpoint import save_checkpoint
from common.cloze import ClozeConfig
from common.config import config_dict, from_flat
from common.data import SPLITS, Dataset
from common.io import InputError, append_jsonl
from common.model import SASRecArgs
from common.next_item import ObjectiveConfig
from common.pretrain import PretrainConfig, PretrainTask
from common.recommend import EASEArgs, EASERecommender, PopRecommender, evaluate
from common.registry import CLOSED_FORM, MODEL_TYPES, model_module
from common.trainer import Trainer, TrainerConfig
from common.vae import VAEArgs

# Named recipes that measured best (docs/results.md); flags given beside --preset override them.
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
    stage: str = field(default="finetune", metadata={"choices": ("finetune", "pretrain"),
                                                     "help": "pretrain: S3-Rec's self-supervised objectives"})
    init_from: str = field(default="", metadata={"help": "start from a pretraining run (its name or checkpoint path)"})
    split: str = field(default="auto", metadata={"choices": ("auto", *SPLITS), "help": "answers that score epochs: "
                                                 "valid (auto, when the dataset has them) or test"})
    run_name: str = field(default="", metadata={"help": "default: <dataset>-<model>[-<loss>][-<history>]-s<seed>"})
    sasrec: SASRecArgs = field(default_factory=SASRecArgs)
    ease: EASEArgs = field(default_factory=EASEArgs)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    vae: VAEArgs = field(default_factory=VAEArgs)
    cloze: ClozeConfig = field(default_factory=ClozeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def train_config(**settings) -> TrainConfig:
    """A TrainConfig from flat settings, named as the flags name them: train_config(hidden=8, loss="ce")."""
    return from_flat(TrainConfig, settings)


def model_args(cfg: TrainConfig, ds: Dataset) -> SASRecArgs:
    return dataclasses.replace(cfg.sasrec, n_items=ds.n_items)


def build_pretrain(cfg: TrainConfig, ds: Dataset, rng: np.random.Generator, device: torch.device) -> PretrainTask:
    return PretrainTask(cfg.pretrain, ds, model_args(cfg, ds), rng, device, cfg.objective.history,
                        cfg.trainer.batch_size)


def run_name(cfg: TrainConfig, ds: Dataset) -> str:
    if cfg.run_name:
        return cfg.run_name
    # a run that trains on the test split of data with validation answers has read them: name it apart
    tail = (["testsplit"] if ds.split == "test" and ds.has_validation else []) + [f"s{cfg.trainer.seed}"]
    if cfg.stage == "pretrain":
        return "-".join([ds.name, "s3rec-pretrain", *tail])
    if cfg.preset:
        return "-".join([ds.name, cfg.preset, *(["pt"] if cfg.init_from else []), *tail])
    parts = [ds.name, cfg.model]
    e, o = cfg.ease, cfg.objective
    if cfg.model == "ease":
        parts.append(f"l{e.l2:g}")
        if e.window:
            parts.append(f"w{e.window}t{e.window_tau:g}")
        if e.diag_power != 1:
            parts.append(f"d{e.diag_power:g}")
        if e.recency:
            parts.append(f"r{e.recency:g}t{e.recency_tau:g}")
    if cfg.model == "sasrec":
        parts.append(o.loss)
        if o.history != "last":
            parts.append(o.history)
        if cfg.init_from:
            parts.append("pt")
    return "-".join(parts + tail)


def check_config(cfg: TrainConfig, ds: Dataset) -> None:
    """Refuse settings that do not combine, or that this dataset cannot train, in one line."""
    e, o, t = cfg.ease, cfg.objective, cfg.trainer
    if cfg.stage == "pretrain" and (cfg.model != "sasrec" or cfg.init_from):
        raise InputError("--stage pretrain trains the sasrec encoder from scratch; drop --model/--init-from")
    if cfg.init_from and cfg.model != "sasrec":
        raise InputError(f"--init-from starts a sasrec model; --model {cfg.model} has no encoder to initialise")
    if not (e.recency >= 0 and e.recency_tau > 0):
        raise InputError(f"--recency must be >= 0 and --recency-tau > 0, got {e.recency} and {e.recency_tau}")
    if not 0 <= t.ema < 1:
        raise InputError(f"--ema must be in [0, 1), got {t.ema}")
    if not (e.l2 > 0 and e.window >= 0 and e.window_tau > 0 and e.diag_power >= 0):
        raise InputError(f"--l2 and --window-tau must be > 0, --window and --diag-power >= 0, got {e.l2}, "
                         f"{e.window_tau}, {e.window} and {e.diag_power}")
    if o.history == "holdout" and cfg.model != "sasrec":
        raise InputError(f"--history holdout trains sasrec; --model {cfg.model} reads last, windows or crops")
    if not (0 < cfg.cloze.cloze_prob <= 1 and 0 <= cfg.cloze.cloze_end <= 1):
        raise InputError(f"--cloze-prob must be in (0, 1] and --cloze-end in [0, 1], got {cfg.cloze.cloze_prob} "
                         f"and {cfg.cloze.cloze_end}")
    if o.history == "holdout":
        own_targets = "--history holdout sets its own targets; it does not combine with"
        if cfg.stage == "pretrain":
            raise InputError(f"{own_targets} --stage pretrain (use last, windows or crops)")
        if o.horizon > 1:
            raise InputError(f"{own_targets} --horizon")
        if o.holdout_last < 1 or o.holdout_random < 0 or o.holdout_samples < 1:
            raise InputError(f"--holdout-last must be >= 1, --holdout-random >= 0 and --holdout-samples >= 1, got "
                             f"{o.holdout_last}, {o.holdout_random} and {o.holdout_samples}")
        if len(holdout_users(ds.indptr, o.holdout_last, o.holdout_random)) == 0:
            raise InputError(f"{ds.root}: no user has the {o.holdout_last + o.holdout_random + MIN_INPUT} training "
                             "items a simulated hidden set needs; lower --holdout-last/--holdout-random")
    if cfg.model not in CLOSED_FORM and t.k > ds.n_items:
        raise InputError(f"--k {t.k} exceeds the {ds.n_items} items of {ds.root}")


def fit_closed_form(cfg: TrainConfig, ds: Dataset, out: Path) -> None:
    """Models fitted in one step (pop, ease): fit, score once, save."""
    t0 = time.time()
    if cfg.model == "pop":
        state, args = PopRecommender.fit(ds), {}
        rec = PopRecommender(state["counts"])
    else:
        state, args = EASERecommender.fit(ds, **cfg.ease.fit_args()), {**cfg.ease.fit_args(), "scoring": cfg.ease.scoring()}
        rec = EASERecommender(state["B"], ds, **cfg.ease.scoring())
    fit_seconds = time.time() - t0
    k = cfg.trainer.k
    metrics = {"answers": ds.split, **evaluate(rec, ds, k, cfg.trainer.eval_batch_size)} if ds.has_holdout else {}
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    append_jsonl(out / "metrics.jsonl", {"epoch": 0, **metrics, "fit_seconds": round(fit_seconds, 3),
                                         "seconds": round(time.time() - t0, 3)})
    save_checkpoint(out / "checkpoint.pt", model_type=cfg.model, model_args=args, state_dict=state,
                    config=config_dict(cfg), ds=ds, epoch=0, best_score=metrics.get(f"recall@{k}"))
    print(f"{cfg.model}: fitted in {fit_seconds:.1f}s " + (json.dumps(metrics) if metrics else "(no answers to score)"))


def fit(cfg: TrainConfig, ds: Dataset, out: Path, device: torch.device) -> None:
    """Fit the model `cfg` names on `ds`, writing checkpoint.pt and metrics.jsonl (and last.pt) to `out`."""
    if cfg.model in CLOSED_FORM:
        return fit_closed_form(cfg, ds, out)
    rng = np.random.default_rng(cfg.trainer.seed)
    build = build_pretrain if cfg.stage == "pretrain" else model_module(cfg.model).build_task
    task = build(cfg, ds, rng, device)
    Trainer(cfg.trainer, ds, out, device, config_dict(cfg)).fit(task, rng)

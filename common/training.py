"""What 02_train.py fits: its config, its presets, its run names, and the registry of models.

TrainConfig nests one dataclass per part, each declared where that part lives:
  sasrec     the model's arguments (common.model.SASRecArgs)
  ease       EASE's settings (common.recommend.EASEArgs)
  transition the transition model's settings (common.transition.TransitionArgs)
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
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.batches import MIN_INPUT, holdout_users
from common.checkpoint import save_checkpoint
from common.cloze import ClozeConfig
from common.config import config_dict, from_flat
from common.data import SPLITS, Dataset
from common.distributed import World
from common.io import InputError, append_jsonl
from common.model import SASRecArgs
from common.next_item import ObjectiveConfig
from common.pretrain import PretrainConfig, PretrainTask
from common.recommend import EASEArgs, evaluate
from common.registry import CLOSED_FORM, MODEL_TYPES, model_module
from common.trainer import Trainer, TrainerConfig
from common.transition import TransitionArgs
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
    "transition": {"model": "transition", "context": 50, "context_tau": 10.0, "ahead": 10, "ahead_tau": 5.0,
                   "ridge": 1000.0},
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
    transition: TransitionArgs = field(default_factory=TransitionArgs)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    vae: VAEArgs = field(default_factory=VAEArgs)
    cloze: ClozeConfig = field(default_factory=ClozeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    RULES = (
        (lambda c: c.stage != "pretrain" or (c.model == "sasrec" and not c.init_from),
         "--stage pretrain trains the sasrec encoder from scratch; drop --model/--init-from"),
        (lambda c: not c.init_from or c.model == "sasrec",
         "--init-from starts a sasrec model; --model {c.model} has no encoder to initialise"),
        (lambda c: c.objective.history != "holdout" or c.model == "sasrec",
         "--history holdout trains sasrec; --model {c.model} reads last, windows or crops"),
        (lambda c: c.objective.history != "holdout" or c.stage != "pretrain",
         "--history holdout sets its own targets; it does not combine with --stage pretrain (use last, windows "
         "or crops)"),
        (lambda c: c.objective.history != "holdout" or c.objective.horizon == 1,
         "--history holdout sets its own targets; it does not combine with --horizon"),
        (lambda c: c.stage != "pretrain" or any(c.pretrain.weights().values()),
         "--stage pretrain needs one objective weight above 0 (--aap-weight, --mip-weight, --map-weight, "
         "--sp-weight)"),
    )


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
    if cfg.model == "transition":
        t = cfg.transition
        parts += [f"c{t.context}t{t.context_tau:g}", f"a{t.ahead}t{t.ahead_tau:g}", f"r{t.ridge:g}"]
    if cfg.model == "sasrec":
        parts.append(o.loss)
        if o.history != "last":
            parts.append(o.history)
        if cfg.init_from:
            parts.append("pt")
    return "-".join(parts + tail)


@contextmanager
def run_folder(out: Path):
    """The run folder for the block that trains into it: files of writes that died (.*.tmp) are removed
    first, and a folder this block made is removed again if it fails before a checkpoint exists, so a
    run folder always holds a checkpoint (or last.pt, to --resume from)."""
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    for stray in out.glob(".*.tmp"):
        stray.unlink()
    try:
        yield out
    except BaseException:
        if fresh and not any((out / name).exists() for name in ("checkpoint.pt", "last.pt")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def check_config(cfg: TrainConfig, ds: Dataset) -> None:
    """Refuse settings that this dataset cannot train, in one line (bounds and relations between settings
    are declared with the settings and checked when the flags are read)."""
    o = cfg.objective
    if o.history == "holdout" and len(holdout_users(ds.indptr, o.holdout_last, o.holdout_random)) == 0:
        raise InputError(f"{ds.root}: no user has the {o.holdout_last + o.holdout_random + MIN_INPUT} training "
                         "items a simulated hidden set needs; lower --holdout-last/--holdout-random")
    if cfg.trainer.k > ds.n_items:
        raise InputError(f"--k {cfg.trainer.k} exceeds the {ds.n_items} items of {ds.root}")
    need = 1 if cfg.model in CLOSED_FORM else 2  # a sequence model learns from an item and the one after it
    if not np.any(np.diff(ds.indptr) >= need):
        raise InputError(f"{ds.root}: no user of the {ds.split} split's training part has {need} items; nothing to "
                         "learn from")


def fit_closed_form(cfg: TrainConfig, ds: Dataset, out: Path, device: torch.device = torch.device("cpu")) -> None:
    """Models fitted in one step (common.registry.CLOSED_FORM): fit (dense solves on `device`), score once, save."""
    t0 = time.time()
    state, args, rec = model_module(cfg.model).fit_closed_form(cfg.model, cfg, ds, device)
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


def fit(cfg: TrainConfig, ds: Dataset, out: Path, device: torch.device, world: World = World()) -> None:
    """Fit the model `cfg` names on `ds`, writing checkpoint.pt and metrics.jsonl (and last.pt) to `out`.
    Under torchrun a closed-form model is fitted by rank 0 alone."""
    if cfg.model in CLOSED_FORM:
        return fit_closed_form(cfg, ds, out, device) if world.main else None
    rng = np.random.default_rng(cfg.trainer.seed)
    build = build_pretrain if cfg.stage == "pretrain" else model_module(cfg.model).build_task
    task = build(cfg, ds, rng, device)
    Trainer(cfg.trainer, ds, out, device, config_dict(cfg), world).fit(task, rng)

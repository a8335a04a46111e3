"""Checkpoints: one self-describing file per saved model, and the checks that guard its reuse.

A checkpoint holds what inference needs (model type and arguments, weights, the dataset's id maps, its
fingerprint and split, the resolved config) and, when a trainer wrote it, what resuming needs (optimizer,
random states). `load_checkpoint` refuses files of another format version; `check_dataset_matches`
refuses other data; `check_architecture` refuses other model shapes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common.data import Dataset
from common.io import InputError, atomic_path
from common.registry import MODEL_TYPES

CHECKPOINT_VERSION = 2  # 2: nested config, and every file a trainer writes can be resumed from
READABLE_VERSIONS = (1, 2)  # what inference needs has not changed since version 1
ARCHITECTURE_FIELDS = ("n_items", "hidden", "layers", "heads", "max_len", "pre_ln", "final_ln", "tied")


def save_checkpoint(path: Path, *, model_type: str, model_args: dict, state_dict: dict, config: dict,
                    ds: Dataset, epoch: int, best_score: float | None, extra: dict | None = None) -> None:
    payload = {
        "version": CHECKPOINT_VERSION, "model_type": model_type, "model_args": model_args,
        "state_dict": state_dict, "config": config, "data_dir": str(ds.root.resolve()),
        "dataset": ds.name, "data_fingerprint": ds.fingerprint, "split": ds.split,
        "user_raw": torch.from_numpy(ds.user_raw), "item_raw": torch.from_numpy(ds.item_raw),
        "epoch": epoch, "best_score": best_score, **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("model_type") not in MODEL_TYPES:
        raise InputError(f"{path}: not a checkpoint of this project (model_type missing or unknown)")
    if ckpt.get("version") not in READABLE_VERSIONS:
        raise InputError(f"{path}: checkpoint format version {ckpt.get('version')}, this code reads versions "
                         f"{READABLE_VERSIONS}; train it again")
    return ckpt


def check_dataset_matches(ckpt: dict, ds: Dataset, where: str) -> None:
    """Refuse a checkpoint made on other data: other id maps, or the same ids with other splits."""
    if not (np.array_equal(ckpt["item_raw"].numpy(), ds.item_raw)
            and np.array_equal(ckpt["user_raw"].numpy(), ds.user_raw)):
        raise InputError(f"{where}: its id maps differ from {ds.root}; preprocess and train on the same data")
    if ckpt.get("data_fingerprint") != ds.fingerprint:
        raise InputError(f"{where}: trained on data with fingerprint {ckpt.get('data_fingerprint')}, but {ds.root} "
                         f"is now {ds.fingerprint} (preprocessed again?); train again on it")
    trained_on = ckpt.get("split")
    if ds.split != "test" and trained_on not in (None, ds.split):
        raise InputError(f"{where}: trained on the {trained_on} split's training part, which holds the "
                         f"{ds.answers_label} answers; score it on the {trained_on} split, or train with --split {ds.split}")


def check_architecture(saved: dict, args, where: str, hint: str) -> None:
    """Refuse saved model arguments whose shape differs from `args`: the fields its class names in
    `ARCHITECTURE` (the encoder's ARCHITECTURE_FIELDS where it names none)."""
    for name in getattr(type(args), "ARCHITECTURE", ARCHITECTURE_FIELDS):
        if saved.get(name) != getattr(args, name):
            raise InputError(f"{where}: saved {name}={saved.get(name)}, this model has {name}={getattr(args, name)}; "
                             f"{hint}")


def check_resumable(ckpt: dict, ds: Dataset, where: str, *, stage: str, args=None, ema: bool = False) -> None:
    """Refuse to resume from an older format, another stage, other data or split, shape, or --ema setting."""
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{where}: format version {ckpt.get('version')} cannot be resumed by this code "
                         f"(version {CHECKPOINT_VERSION}); start a new run")
    if ckpt.get("stage", "finetune") != stage:
        raise InputError(f"{where}: written by the {ckpt.get('stage', 'finetune')} stage; cannot resume the {stage} "
                         "stage from it")
    if ckpt.get("split") != ds.split or ckpt.get("data_fingerprint") != ds.fingerprint:
        raise InputError(f"{where}: made on the {ckpt.get('split')} split of data {ckpt.get('data_fingerprint')}, "
                         f"not the {ds.split} split of {ds.root} ({ds.fingerprint}); start a new run")
    check_dataset_matches(ckpt, ds, where)
    if args is not None:
        check_architecture(ckpt["model_args"], args, where, "resume with the same model settings")
    if ema != ("ema" in ckpt):
        raise InputError(f"{where}: written {'with' if 'ema' in ckpt else 'without'} --ema; resume with the "
                         "settings of the run")

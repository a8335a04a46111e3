"""Fit a model on data/<dataset>/ and write data/<dataset>/runs/<run>/{checkpoint.pt,config.json,metrics.jsonl}.

Models: pop (most popular), ease (closed-form item-item, --l2, --recency, --window), transition
(closed-form ridge regression from a user's latest items to the next ones, --context, --ahead, --ridge),
sasrec (S3-Rec's fine-tuning model) with --loss bce (the baseline), bpr, ce (softmax over all items) or
sampled (shared negatives).
--history holdout trains on simulated hidden sets: the next items after a random cut plus randomly
dropped earlier ones, predicted together from the rest (--holdout-last, --holdout-random).
--preset names a recipe that measured best (ease-recent, ease-seq, ease-soft, transition, bpr-full,
ce-full, holdout-ce); flags beside it win.
--stage pretrain trains the encoder with S3-Rec's self-supervised objectives (AAP, MIP, MAP, SP) on the
item-attribute table; --init-from <that run> starts fine-tuning from it.
With a local hold-out every epoch is scored (Recall@10, NDCG@10), the best epoch is kept and training
stops early. The answers that choose are the validation answers when the dataset has them (--split auto):
the model trains on the training part without them; --split test trains on the whole training part and
chooses on the test answers (printed as such). --select last trains exactly --epochs and reads no answers:
the mode for a refit with an epoch count chosen earlier. Without a hold-out, training runs a fixed --epochs.
config.json holds the resolved settings, one group per part (sasrec, ease, transition, objective, pretrain, trainer).
Data-parallel: `torchrun --nproc_per_node N 02_train.py ...` (NCCL on GPUs, gloo on CPU; see
common.distributed). --batch-size stays the global batch; rank 0 writes the run.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from common.config import parse_config, save_config
from common.data import Dataset
from common.distributed import local_device, setup, teardown
from common.io import read_json, run_main
from common.training import PRESETS, TrainConfig, check_config, fit, run_folder, run_name
from common.utils import pick_device, set_seed


def main():
    cfg = parse_config(TrainConfig, description=__doc__, presets=PRESETS)
    set_seed(cfg.trainer.seed)
    if cfg.split == "auto":
        cfg.split = "valid" if read_json(Path(cfg.data) / "meta.json").get("validation") else "test"
    ds = Dataset(Path(cfg.data), cfg.split)
    check_config(cfg, ds)
    device = pick_device(local_device(cfg.trainer.device), cfg.trainer.threads)
    world = setup(device)
    out = ds.root / "runs" / run_name(cfg, ds)
    with run_folder(out) if world.main else nullcontext(out):  # rank 0 alone writes
        if world.main:
            save_config(cfg, out / "config.json")
        fit(cfg, ds, out, device, world)
    teardown(world)
    print(f"wrote {out}/ (checkpoint.pt, config.json, metrics.jsonl); trained on the {ds.split} split's training part")


if __name__ == "__main__":
    run_main(main)

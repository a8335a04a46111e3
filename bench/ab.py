"""Alternated A/B timings in one process, for a machine whose load varies between runs.

    .venv/bin/python bench/ab.py dropout --amp bf16      # training steps: today's dropout against 16-bit masks
    .venv/bin/python bench/ab.py scoring --amp bf16      # one evaluation pass: own-width histories against max_len
    .venv/bin/python bench/ab.py packing --amp bf16      # training steps: packed rows against one window a row
    .venv/bin/python bench/ab.py product --amp bf16      # one evaluation pass: float32 blocks against float64

dropout: --steps training steps of the default SASRec on the same batches of --data, with
`common.model.dropout` and with the reference below (16 random bits per element, the mask applied as
`x * keep / (1 - p)`), in --rounds rounds that alternate which goes first.
scoring: one evaluation pass (`common.recommend.evaluate`) of --checkpoint, with each user's history padded
to its own width (today) and to max_len with the fused single-query attention (the reference).
product: one evaluation pass of --checkpoint with today's score product (float32 on blocks of fixed size,
`common.recommend.score_product`) and with the float64 product it replaced (the reference).
packing: --steps training steps of the default SASRec on the same windows of --data, packed (short windows
share rows, `common.batches.pack_windows`, today's default) and one window a row (--no-pack, the reference).
Each prints each round and the medians; a JSON line goes to bench/results/ab.jsonl.
"""
from __future__ import annotations

import argparse
import sys
from itertools import islice
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import ROOT, report  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common.model as model_mod  # noqa: E402
import common.recommend as recommend  # noqa: E402
from common.config import parse_config  # noqa: E402
from common.checkpoint import load_checkpoint  # noqa: E402
from common.data import Dataset  # noqa: E402
from common.registry import model_module  # noqa: E402
from common.trainer import adam  # noqa: E402
from common.training import PRESETS, TrainConfig  # noqa: E402
from common.utils import autocast, autocast_dtype, optimizer_step, pick_device, set_seed  # noqa: E402

REFERENCE_LEVELS = 1 << 16


def dropout_16bit(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """The reference: 16 random bits per element, the boolean mask applied, then divided by the keep rate."""
    if not training or p == 0:
        return x
    dropped = min(round(p * REFERENCE_LEVELS), REFERENCE_LEVELS - 1)
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, 2 ** 63 - 1)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= dropped - REFERENCE_LEVELS // 2
    return x * keep / (1 - dropped / REFERENCE_LEVELS)


ATTEND, DROPOUT, WIDTH_STEP = model_mod.attend, model_mod.dropout, recommend.WIDTH_STEP  # today's
SCORE_PRODUCT = recommend.score_product


def score_product_float64(h: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The reference score product: float64 over the whole batch, rounded to float32."""
    return (h.double() @ table.double().T).float()


def attend_fused(q, k, v, mask, p):
    """The reference attention: torch's fused kernel whenever there is no dropout, a single query included."""
    if p == 0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return ATTEND(q, k, v, mask, p)


def alternate(run, rounds: int) -> dict:
    """{"today": [...], "reference": [...]}: run(reference: bool) timed in `rounds` rounds, the first going
    first in even rounds."""
    run(False), run(True)  # warm-up
    out = {"today": [], "reference": []}
    for r in range(rounds):
        for ref in ((False, True) if r % 2 == 0 else (True, False)):
            out["reference" if ref else "today"].append(run(ref))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("dropout", "scoring", "product", "packing"))
    ap.add_argument("--data", default=str(ROOT / "data" / "bench-members"))
    ap.add_argument("--checkpoint", default=str(ROOT / "data" / "bench-members" / "runs" / "amp-off-s0" / "checkpoint.pt"))
    ap.add_argument("--amp", default="off", choices=("off", "bf16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    device = pick_device("cpu", args.threads)
    set_seed(0)
    extra = {}  # what the report carries besides the times
    if args.what in ("dropout", "packing"):
        cfg = parse_config(TrainConfig, ["--data", args.data, "--amp", args.amp], presets=PRESETS)
        ds = Dataset(Path(cfg.data), "valid")
        task = model_module(cfg.model).build_task(cfg, ds, np.random.default_rng(0), device)
        task.module.train()
        opt = adam(task.module, cfg.trainer.lr, cfg.trainer.weight_decay, device)
        amp = autocast_dtype(cfg.trainer.amp, device)
        batches = {False: list(islice(task.batches(0), args.steps))}
        if args.what == "packing":  # the same windows (the same seed draws them), one a row
            unpacked = parse_config(TrainConfig, ["--data", args.data, "--amp", args.amp, "--no-pack"], presets=PRESETS)
            plain = model_module(cfg.model).build_task(unpacked, ds, np.random.default_rng(0), device)
            batches[True] = list(islice(plain.batches(0), args.steps))
            extra["rows"] = {k: sum(len(b["input"]) for b in v) for k, v in (("today", batches[False]),
                                                                              ("reference", batches[True]))}

        def run(ref: bool) -> float:
            if args.what == "dropout":
                model_mod.dropout = dropout_16bit if ref else DROPOUT
            t0 = time.perf_counter()
            for batch in batches[ref and args.what == "packing"]:
                with autocast(amp, device):
                    loss = task.loss(batch)
                optimizer_step(opt, loss, "ab", None, check=False)
            return (time.perf_counter() - t0) / args.steps * 1000  # ms per step

        unit = "ms/step"
    else:
        ckpt = load_checkpoint(args.checkpoint)
        ds = Dataset(Path(args.data), "valid")
        rec = recommend.build_recommender(ckpt, ds, device)
        amp = autocast_dtype(args.amp, device)
        recalls = {}

        def run(ref: bool) -> float:
            if args.what == "scoring":
                recommend.WIDTH_STEP = rec.window() if ref else WIDTH_STEP
                model_mod.attend = attend_fused if ref else ATTEND
            else:
                recommend.score_product = score_product_float64 if ref else SCORE_PRODUCT
            t0 = time.perf_counter()
            with autocast(amp, device):
                recalls[ref] = recommend.evaluate(rec, ds)["recall@10"]
            return time.perf_counter() - t0

        unit = "s"
    times = alternate(run, args.rounds)
    model_mod.dropout, model_mod.attend, recommend.WIDTH_STEP = DROPOUT, ATTEND, WIDTH_STEP
    recommend.score_product = SCORE_PRODUCT
    if args.what in ("scoring", "product"):
        extra["recall@10"] = {"today": round(recalls[False], 6), "reference": round(recalls[True], 6)}
    medians = {k: round(float(np.median(v)), 2) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:9s} {' '.join(f'{t:.2f}' for t in v)} {unit} (median {medians[k]})")
    faster = sum(a < b for a, b in zip(times["today"], times["reference"]))
    print(f"today faster in {faster} of {args.rounds} rounds" + (f"; {extra}" if extra else ""))
    report("ab", {"what": args.what, "amp": args.amp, "threads": args.threads, "unit": unit,
                  "times": {k: [round(t, 2) for t in v] for k, v in times.items()}, "median": medians,
                  "today_faster": faster, "rounds": args.rounds, **extra})


if __name__ == "__main__":
    main()

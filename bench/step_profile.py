"""Where a training step's time goes, and how close it runs to this machine's arithmetic limit.

    .venv/bin/python bench/step_profile.py                                  # full-scale demo, default SASRec
    .venv/bin/python bench/step_profile.py -- --preset holdout-ce           # flags after -- go to 02_train.py's config
    .venv/bin/python bench/step_profile.py --data data/ml-latest-small -- --amp bf16
    python bench/step_profile.py --device cuda -- --preset holdout-ce       # a GPU
    .venv/bin/python bench/step_profile.py --compile                        # the forward through torch.compile

It prints, from one run:
  * the machine's matmul rate, measured here (a 2048^3 torch product, fp32 and bf16);
  * for --steps training steps of the model the flags describe: seconds per step, tokens, FLOPs counted
    analytically on the tensor shapes (forward + backward = 3 x forward; SASRec and the cloze model), the
    achieved GFLOP/s and its share of the fp32 rate (bf16 counted against the same rate);
  * the estimated epoch (steps x seconds per step) and one evaluation pass on the local answers;
  * torch.profiler's top operators by self time over --profile-steps steps.
A JSON line goes to bench/results/profile.jsonl, the profiler table to bench/results/profile-<tag>.txt.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import PY, ROOT, ensure_full_demo, measure, report  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.config import parse_config  # noqa: E402
from common.data import Dataset  # noqa: E402
from common.io import read_json  # noqa: E402
from common.losses import LOSSES  # noqa: E402
from common.registry import model_module  # noqa: E402
from common.trainer import adam  # noqa: E402
from common.training import PRESETS, TrainConfig  # noqa: E402
from common.utils import autocast, autocast_dtype, optimizer_step, pick_device, set_seed  # noqa: E402

MATMUL_N = 2048
BF16_CPU_N = 256


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = MATMUL_N, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def step_flops(cfg: TrainConfig, batch: dict, n_items: int) -> float:
    """Forward + backward FLOPs of one SASRec-encoder step on this batch's padded shapes (3 x forward):
    per token and layer 24 H^2 (projections and feed-forward) + 4 L H (attention), plus the scoring of
    targets (a full softmax: 2 H V each; sampled: 2 H per scored item)."""
    a = cfg.sasrec
    seq = batch.get("input", batch.get("seq"))
    B, L = seq.shape
    H = a.hidden
    forward = a.layers * B * L * (24 * H * H + 4 * L * H)
    if "positions" in batch or "target" in batch:  # next-item
        n = len(batch["positions"]) if "positions" in batch else int((batch["target"] != 0).sum())
        spec = LOSSES[cfg.objective.loss]
        if spec.kind == "full":
            forward += 2 * H * (n_items + 1) * n
        elif "negatives" in batch:
            forward += 2 * H * (batch["negatives"].numel() + n)
        else:
            forward += 2 * H * n * (1 + len(batch["shared"]))
    elif "mask" in batch:  # cloze: a full softmax at each masked position
        forward += 2 * H * (n_items + 1) * int(batch["mask"].sum())
    return 3.0 * forward


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="full", help="'full' (the full-scale demo) or a preprocessed folder")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model's forward first (a measurement; 02_train.py does not compile)")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.data == "full":
        raw = ROOT / "data" / "raw" / "demo-full"
        ensure_full_demo(raw)
        measure([PY, "01_preprocess.py", "--input", str(raw), "--name", "demo-full"])  # seconds; keeps it current
        args.data = str(ROOT / "data" / "demo-full")
    cfg = parse_config(TrainConfig, ["--data", args.data, *extra], presets=PRESETS)
    set_seed(cfg.trainer.seed)
    device = pick_device(args.device, args.threads)
    ds = Dataset(Path(cfg.data), "valid" if read_json(Path(cfg.data) / "meta.json").get("validation") else "test")
    threads = torch.get_num_threads()
    # a CPU without a bf16 matrix unit runs bf16 products hundreds of times slower: measured on a small one
    bf16_n = MATMUL_N if device.type == "cuda" else BF16_CPU_N
    rates = {"fp32": matmul_gflops(device, torch.float32),
             "bf16": matmul_gflops(device, torch.bfloat16, bf16_n, reps=3 if device.type == "cpu" else 10)}
    print(f"device {device}, {threads} threads: matmul fp32 ({MATMUL_N}^3) {rates['fp32']:.1f} GFLOP/s, "
          f"bf16 ({bf16_n}^3) {rates['bf16']:.1f} GFLOP/s")

    rng = np.random.default_rng(cfg.trainer.seed)
    task = model_module(cfg.model).build_task(cfg, ds, rng, device)
    model = task.module.train()
    if args.compile:
        model.forward = torch.compile(model.forward)  # compiled during the warm-up steps
    opt = adam(model, cfg.trainer.lr, cfg.trainer.weight_decay, device)
    amp = autocast_dtype(cfg.trainer.amp, device)
    batches = task.batches(0)
    n_steps = len(batches)
    it = iter(batches)

    def step(batch):
        with autocast(amp, device):
            loss = task.loss(batch)
        loss = loss[0] if isinstance(loss, tuple) else loss
        optimizer_step(opt, loss, "profile", None, check=False)

    for _ in range(args.warmup):
        step(next(it))
    sync(device)
    flops, tokens, real, t_batch, t0 = 0.0, 0, torch.zeros((), device=device), 0.0, time.perf_counter()
    for _ in range(args.steps):
        tb = time.perf_counter()
        batch = next(it)
        t_batch += time.perf_counter() - tb
        if isinstance(batch, dict):
            seq = batch.get("input", batch.get("seq"))
            flops += step_flops(cfg, batch, ds.n_items)
            tokens += seq.numel()
            real += (seq != 0).sum()  # read once at the end: no wait for the device inside the loop
        step(batch)
    sync(device)
    seconds = (time.perf_counter() - t0) / args.steps
    gflops = flops / args.steps / seconds / 1e9
    print(f"{cfg.model}: {seconds * 1000:.1f} ms/step ({t_batch / args.steps * 1000:.1f} ms of it building the "
          f"batch), {tokens // args.steps:,} tokens/step ({real.item() / max(tokens, 1):.0%} not padding), "
          f"{flops / args.steps / 1e9:.2f} GFLOP/step: {gflops:.1f} GFLOP/s = {gflops / rates['fp32']:.0%} of the "
          f"fp32 matmul rate")

    t0 = time.perf_counter()
    metrics = task.evaluate(model) if ds.has_holdout and hasattr(task, "evaluate") else {}
    sync(device)
    eval_seconds = time.perf_counter() - t0
    epoch = n_steps * seconds + eval_seconds
    model.train()  # the evaluation left it in eval mode: the profiled steps train, as the timed ones did
    print(f"epoch estimate: {n_steps} steps x {seconds:.3f} s + evaluation {eval_seconds:.1f} s = {epoch:.1f} s")

    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            step(next(it))
        sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=15)
    print(table)
    tag = args.tag or f"{Path(cfg.data).name}-{cfg.model}-{device.type}"
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"profile-{tag}.txt").write_text(table)
    report("profile", {"tag": tag, "data": Path(cfg.data).name, "args": " ".join(extra), "device": str(device),
                       "compile": args.compile,
                       "threads": threads, "matmul_gflops_fp32": round(rates["fp32"], 1),
                       "matmul_gflops_bf16": round(rates["bf16"], 1), "step_ms": round(seconds * 1000, 2),
                       "batch_ms": round(t_batch / args.steps * 1000, 2), "gflop_per_step": round(flops / args.steps / 1e9, 3),
                       "achieved_gflops": round(gflops, 1), "share_of_fp32": round(gflops / rates["fp32"], 3),
                       "steps_per_epoch": n_steps, "eval_seconds": round(eval_seconds, 2),
                       "epoch_estimate_seconds": round(epoch, 1),
                       **{k: round(v, 5) for k, v in metrics.items() if isinstance(v, float)}})


if __name__ == "__main__":
    main()

"""The one-command submission: tune a recipe on validation answers, report its test score, refit on all data.

Phases, each made of runs of the numbered scripts (02_train.py, 03_inference.py) in subprocesses:
  tune   on <name>-split with --split valid: every grid point of every member (first seed), then the other
         seeds at the chosen settings; a trained member keeps its best validation epoch
  blend  the weights marked "tune", chosen by coordinate ascent on the validation candidates
  test   every member refitted at its chosen settings on the split's whole training part (a trained member
         for a fixed number of epochs, `Recipe.refit_epochs` of its best validation epoch, reading no
         answers), scored on the test answers, and blended at the chosen weights: the honest test score
  final  the same refit on <name>-full (no hold-out), blended into the final submission
With blend = "rerank" (common/rerank.py) a classifier orders the union of the members' candidates instead
of the weights: learned on the validation candidates and answers, it orders the test candidates (the
honest score); learned the same way on the test candidates and answers, it orders the final ones.

A run is keyed by its arguments and its data set's fingerprint: <dataset>/runs/<member>-<phase>-s<seed>-<key>.
A finished run is reused (its step.json); an interrupted one resumes from its last.pt; a run made on other
data has another key, and its step.json must name the same fingerprint, so it is never reused. Where a run
runs (--threads, --device) is not part of its key: a run trained on a GPU machine is reused on a CPU one.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common.blend import blend_top_k, contribution_matrix, load_inputs, top_k_of_pairs
from common import rerank
from common.config import flat_dict
from common.data import Dataset, split_suffix
from common.io import InputError, read_json, write_json
from common.metrics import all_metrics
from common.recipe import TUNE, Member, Recipe, settings_flags
from common.registry import CLOSED_FORM
from common.rerank import Candidates, build_candidates

ROOT = Path(__file__).resolve().parents[1]  # the numbered scripts live here
STEP_FILE = "step.json"  # written when a run's training and inference are both done
TRAINED_FILE = "trained.json"  # written when a run's training is done
NORM = "zscore"  # per-user score normalisation of the blend
WEIGHTS_KEPT = ("all", "final", "none")  # whose checkpoints a finished run keeps (06_submission.py --keep-weights)


def run_child(argv: list[str], log: Path) -> dict:
    """Run `python argv` in the repository root with its output appended to `log`.

    Returns wall seconds and the child's own peak resident memory (started through common.launch, so that
    it does not inherit this process's); a failure is one line with the child's last message and the
    log's path."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    read, write = os.pipe()
    with open(log, "a") as f, os.fdopen(read, "rb") as peak:
        f.write(f"$ python {' '.join(map(str, argv))}\n")
        f.flush()
        try:
            p = subprocess.Popen([sys.executable, str(ROOT / "common" / "launch.py"), str(write), *map(str, argv)], cwd=ROOT,
                                 stdout=f, stderr=subprocess.STDOUT, pass_fds=(write,),
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            os.close(write)  # the launcher holds its own copy: the read ends when it exits
        p.wait()
        peak_kb = int(peak.read() or 0)
    if p.returncode != 0:
        lines = [x for x in log.read_text().splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("error:")]
        last = errors[-1] if errors else (lines[-1] if lines else "no output")
        raise InputError(f"{argv[0]} failed (exit {p.returncode}): {last.removeprefix('error: ')} [log: {log}]")
    return {"seconds": round(time.time() - t0, 2), "peak_mb": round(peak_kb / 1024, 1)}


def last_json(text: str) -> dict:
    """The last line of `text` that is a JSON object (what the scripts print with their scores)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def read_curve(run_dir: Path, k: int) -> list[dict]:
    """The run's metrics.jsonl records that carry a score: [{epoch, recall, ndcg}]."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return [{"epoch": r["epoch"], "recall": r[f"recall@{k}"], "ndcg": r[f"ndcg@{k}"]}
            for r in records if f"recall@{k}" in r]


class Runner:
    """Runs the members' fits and inferences, reusing what is done; `steps` logs every child process."""

    def __init__(self, recipe: Recipe, threads: int, device: str, keep_weights: str = "all"):
        self.recipe, self.keep_weights = recipe, keep_weights
        self.placement = ["--threads", str(threads), "--device", device]  # where a run runs, not what it is
        self.steps: list[dict] = []

    def child(self, what: str, argv: list[str], log: Path) -> dict:
        print(f"  {what} ...", flush=True)
        res = run_child(argv, log)
        self.steps.append({"step": what, **res, "reused": False})
        print(f"  {what}: {res['seconds']:.1f}s, peak {res['peak_mb']:.0f} MB", flush=True)
        return res

    def fit(self, ds_root: Path, fingerprint: str, phase: str, member: Member, seed: int, extra: list[str],
            split: str) -> dict:
        """Train member at `extra` flags on `split` of the data set, infer its candidates; reuse if done."""
        train = ["02_train.py", "--data", str(ds_root), *member.args, *self.recipe.train_args, *extra,
                 "--seed", str(seed), "--split", split, "--no-progress"]
        infer_opts = ["--split", split, "--k", str(self.recipe.k), "--candidates", str(self.recipe.candidates)]
        key = hashlib.sha256(json.dumps({"train": train, "infer": infer_opts, "fingerprint": fingerprint})
                             .encode()).hexdigest()[:10]
        run = f"{member.name}-{phase}-s{seed}-{key}"
        run_dir = ds_root / "runs" / run
        label = f"{phase} {member.name} s{seed}" + (f" {' '.join(extra)}" if extra else "")
        step_path = run_dir / STEP_FILE
        if step_path.exists():
            step = read_json(step_path)
            if step.get("fingerprint") == fingerprint and step.get("train_argv") == train:
                print(f"  {label}: reused {run_dir}", flush=True)
                self.steps += [{"step": f"{what} {label}", **step[what], "reused": True} for what in ("train", "infer")]
                return {**step, "reused": True}
        log = run_dir / "log.txt"
        weights, last = run_dir / "checkpoint.pt", run_dir / "last.pt"
        if (run_dir / TRAINED_FILE).exists() and weights.exists():  # trained by a call that stopped before inference
            trained = read_json(run_dir / TRAINED_FILE)
        else:
            resume = ["--resume"] if last.exists() else []
            trained = self.child(f"train {label}" + (" (resuming)" if resume else ""),
                                 [*train, *self.placement, "--run-name", run, *resume], log)
            write_json(run_dir / TRAINED_FILE, trained)
        before = log.read_text() if log.exists() else ""
        inferred = self.child(f"infer {label}", ["03_inference.py", weights, *infer_opts,
                                                 *self.placement, "--out-dir", run_dir], log)
        scores = last_json(log.read_text()[len(before):])
        config = flat_dict(read_json(run_dir / "config.json"))
        curve = read_curve(run_dir, self.recipe.k)
        closed_form = config["model"] in CLOSED_FORM
        best_epoch = None
        if not closed_form and curve and config.get("select") == "best":
            best_epoch = max(curve, key=lambda r: (r["recall"], -r["epoch"]))["epoch"]
        suffix = split_suffix(split)
        step = {"run": run, "phase": phase, "member": member.name, "seed": seed, "extra": extra,
                "fingerprint": fingerprint, "train_argv": train, "split": split, "closed_form": closed_form,
                "best_epoch": best_epoch, "curve": curve,
                "scores": {k: v for k, v in scores.items() if k.startswith(("recall", "ndcg", "hr"))},
                "candidates": str(run_dir / f"{run}{suffix}.top{self.recipe.candidates}.csv"),
                "train": trained, "infer": inferred}
        write_json(step_path, step)
        if self.keep_weights == "none" or (self.keep_weights == "final" and phase != "final"):
            for path in (weights, last):  # done with: step.json and the candidates are what a later call reuses
                path.unlink(missing_ok=True)
        return step


def tune_member(runner: Runner, member: Member, split_root: Path, fingerprint: str, k: int) -> dict:
    """Every grid point on the validation answers (first seed), then the other seeds at the best one."""
    points = member.grid_points()
    tried = [runner.fit(split_root, fingerprint, "tune", member, member.seeds[0], settings_flags(g), "valid")
             for g in points]
    scores = [t["scores"][f"recall@{k}"] for t in tried]
    best = int(np.argmax(scores))  # the first of equal scores
    runs = [tried[best]] + [runner.fit(split_root, fingerprint, "tune", member, s, settings_flags(points[best]),
                                       "valid") for s in member.seeds[1:]]
    return {"name": member.name, "chosen": points[best], "closed_form": tried[best]["closed_form"],
            "grid": [{"settings": g, f"recall@{k}": sc, "best_epoch": t["best_epoch"]}
                     for g, t, sc in zip(points, tried, scores)],
            "runs": runs}


def refit_flags(recipe: Recipe, tuned: dict, run: dict) -> list[str]:
    """Flags of a refit: the chosen settings and, for a trained member, the epochs that the rule gives."""
    flags = settings_flags(tuned["chosen"])
    if not tuned["closed_form"]:
        if run["best_epoch"] is None:
            raise InputError(f"{run['run']}: no validation score per epoch to choose the refit's epochs from "
                             f"(see its metrics.jsonl)")
        flags += ["--epochs", str(recipe.refit_epochs(run["best_epoch"])), "--select", "last"]
    return flags


def run_weights(members: list[Member], weights: dict[str, float]) -> np.ndarray:
    """One weight per seed run, in member order: each member's weight shared equally by its seeds."""
    return np.array([weights[m.name] / len(m.seeds) for m in members for _ in m.seeds])


def tune_weights(recipe: Recipe, runs: dict[str, list[dict]], ds: Dataset) -> tuple[dict, float, list]:
    """Coordinate ascent over the "tune" weights on the validation candidates of `runs` (member -> seed runs).

    Returns (weights per member, validation recall@k, trace of every weight vector tried)."""
    k = recipe.k
    paths = [Path(r["candidates"]) for m in recipe.members for r in runs[m.name]]
    pu, pi, C = contribution_matrix(load_inputs(paths, ds, "score"), "score", NORM)
    users = ds.eval_users()
    keep = np.isin(pu, users)
    pu, pi, C = pu[keep], pi[keep], C[:, keep]
    truth = ds.answers_padded(users)
    weights = {m.name: 1.0 if m.weight == TUNE else float(m.weight) for m in recipe.members}
    trace = []

    def score(w: dict) -> float:
        top, _ = top_k_of_pairs(pu, pi, run_weights(recipe.members, w) @ C, users, k)
        value = all_metrics(top, truth, k)[f"recall@{k}"]
        trace.append({"weights": dict(w), f"recall@{k}": value})
        return value

    best = score(weights)
    tuned = [m.name for m in recipe.members if m.weight == TUNE]
    for _ in range(recipe.tune_rounds if len(recipe.members) > 1 else 0):  # one member: its weight is moot
        changed = False
        for name in tuned:
            for v in recipe.weight_grid:
                w = {**weights, name: v}
                if v == weights[name] or sum(w.values()) == 0:
                    continue
                s = score(w)
                if s > best + 1e-12:
                    best, weights, changed = s, w, True
        if not changed:
            break
    return weights, best, trace


def blend_runs(recipe: Recipe, runs: dict[str, list[dict]], weights: dict[str, float], ds: Dataset,
               members: list[Member] | None = None):
    """Blend the candidate files of `runs` at `weights`; returns (users [U], items [U, k], metrics or {})."""
    members = members or recipe.members
    paths = [Path(r["candidates"]) for m in members for r in runs[m.name]]
    frames = load_inputs(paths, ds, "score")
    pu, pi, C = contribution_matrix(frames, "score", NORM)
    users = np.unique(frames[0]["user"].to_numpy())
    top = blend_top_k(pu, pi, run_weights(members, weights) @ C, ds, recipe.k, users)
    metrics = {}
    if ds.has_holdout:
        ev = ds.eval_users()
        metrics = all_metrics(top[np.searchsorted(users, ev)], ds.answers_padded(ev), recipe.k)
    return users, top, metrics


def candidate_groups(members: list[Member], runs: dict[str, list[dict]]) -> dict[str, list[Path]]:
    """Each member's candidate files, one per seed run."""
    return {m.name: [Path(r["candidates"]) for r in runs[m.name]] for m in members}


def rerank_candidates(recipe: Recipe, runs: dict[str, list[dict]], ds: Dataset, weights: dict) -> Candidates:
    """The reranker's candidate pairs and features for the candidate files of `runs`; `weights` are the
    linear blend's (a feature)."""
    return build_candidates(candidate_groups(recipe.members, runs), ds, recipe.candidates, recipe.rerank, weights)


def rerank_stage(recipe: Recipe, learning: tuple[Candidates, np.ndarray], apply: tuple[Candidates, Dataset]):
    """Learn the reranker on a learning set (`rerank.learning_set` of the candidates and answers it learns
    from), then order the candidates of `apply`. Returns (users [U], top-k [U, k], metrics on `apply`'s
    answers or {})."""
    target, ds = apply
    users, top = rerank.learn_and_order(learning, target, ds, recipe.rerank, recipe.k)
    return users, top, rerank.score(top, users, ds, recipe.k) if ds.has_holdout else {}

"""Raw data + a recipe -> an honest local test score and the final submission, in one command.

  1. preprocess the input twice: <name>-split (test hold-out, validation carved out of its training part)
     and <name>-full (everything, no hold-out)
  2. tune on the validation answers: every member's grid and best epoch, then the blend weights (with
     blend = "rerank" and `carves` > 1, the members are also fitted at their chosen settings on each extra
     validation carve, and each shifted carve, whose answers the reranker learns from as well)
  3. refit each member at its chosen settings on the split's training part and score it, and the blend,
     on the test answers, which no step chose on
  4. refit on the full data and blend into submissions/<name>-final.csv
  5. write submissions/<name>-report/ (report.md, report.json, a learning-curve PNG per member)

Runs are keyed by their settings and the fingerprint of their data: a second call reuses what is done,
resumes what was interrupted, and never reuses a run made on other data. See common/recipe.py for the
recipe file and common/pipeline.py for the rules.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.config import parse_config, save_config, setting
from common.data import Dataset
from common.io import InputError, read_json, run_main
from common import rerank
from common.pipeline import (WEIGHTS_KEPT, Runner, blend_runs, refit_flags, rerank_candidates, rerank_stage,
                             tune_member, tune_weights)
from common.readers import FORMATS
from common.recipe import TUNE, load_recipe
from common.report import write_report
from common.submission import data_source, write_ranked
from common.utils import set_seed


@dataclass
class SubmissionConfig:
    input: str = field(default="data/raw/demo", metadata={"help": "raw folder, or an S3-Rec <name>.txt"})
    recipe: str = field(default="recipes/default.toml", metadata={"help": "recipe TOML file"})
    name: str = field(default="", metadata={"help": "name of the data sets and files; default the input's name"})
    format: str = field(default="auto", metadata={"choices": FORMATS})
    holdout_last: int = setting(5, "test (and validation) hold-out: latest items per user", ge=0)
    holdout_random: int = setting(5, "hold-out: randomly dropped earlier items per user", ge=0)
    holdout_cutoff: float = setting(0.0, "hold out everything after this time quantile instead of the latest items "
                                         "(0: per user)", ge=0, lt=1)
    seed: int = setting(0, "seed of the hold-out draws (training seeds are the recipe's)", ge=0)
    data_dir: str = field(default="data", metadata={"help": "where <name>-split/ and <name>-full/ go"})
    out_dir: str = field(default="submissions", metadata={"help": "where the final file and the report go"})
    final: bool = field(default=True, metadata={"help": "refit on the full data and write the final file "
                                                        "(--no-final: stop after the test score)"})
    threads: int = setting(0, "CPU threads per run (0: one per core)", ge=0)
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    keep_weights: str = field(default="final", metadata={
        "choices": WEIGHTS_KEPT, "help": "whose checkpoints stay once this call finishes a run (its candidates "
                                         "written): all runs, the final refits alone (the default), or none; a "
                                         "later call reuses a finished run by its candidates, never its weights"})

    RULES = ((lambda c: c.holdout_cutoff > 0 or c.holdout_last + c.holdout_random > 0,
              "--holdout-last and --holdout-random are both 0: nothing to hold out"),)


def member_scores(recipe, runs: dict, ds: Dataset) -> dict:
    """Each member alone (its seeds blended equally) on the answers of `ds`."""
    return {m.name: blend_runs(recipe, runs, {m.name: 1.0}, ds, [m])[2] for m in recipe.members if m.name in runs}


def main():
    cfg = parse_config(SubmissionConfig, description=__doc__)
    set_seed(cfg.seed)
    t0 = time.time()
    recipe = load_recipe(Path(cfg.recipe))
    src = Path(cfg.input)
    if not src.exists():
        raise InputError(f"{src}: input not found")
    name = cfg.name or (src.stem if src.is_file() else src.name)
    data_dir, out_dir = Path(cfg.data_dir), Path(cfg.out_dir)
    split_root, full_root = data_dir / f"{name}-split", data_dir / f"{name}-full"
    report_dir = out_dir / f"{name}-report"
    runner = Runner(recipe, cfg.threads, cfg.device, cfg.keep_weights)
    rerank.fit_threads(cfg.threads)  # the reranker, the one model fitted in this process, uses the same threads
    k = recipe.k

    print(f"1/5 preprocess {src} -> {split_root} (test + validation answers)"
          + (f" and {full_root} (no hold-out)" if cfg.final else ""))
    holdout = ["--holdout-last", str(cfg.holdout_last), "--holdout-random", str(cfg.holdout_random),
               "--holdout-cutoff", str(cfg.holdout_cutoff), "--seed", str(cfg.seed)]
    base = ["01_preprocess.py", "--input", str(src), "--format", cfg.format]
    reranked = recipe.blend == "rerank"
    carves = recipe.rerank.carves if reranked else 1
    shifted = recipe.rerank.shifted_carves if reranked else 0
    runner.child("preprocess split", [*base, "--out", split_root, "--name", split_root.name, *holdout,
                                      "--validation", "--carves", str(carves), "--shifted-carves", str(shifted)],
                 report_dir / "logs" / "preprocess-split.txt")
    if cfg.final:
        runner.child("preprocess full", [*base, "--out", full_root, "--name", full_root.name, "--no-holdout"],
                     report_dir / "logs" / "preprocess-full.txt")
    valid_ds, test_ds = Dataset(split_root, "valid"), Dataset(split_root, "test")
    if not valid_ds.has_holdout:
        raise InputError(f"{split_root}: no user is long enough for validation answers; lower --holdout-last/"
                         "--holdout-random")

    print(f"2/5 tune {len(recipe.members)} members on the validation answers of {split_root}")
    tuned = {m.name: tune_member(runner, m, split_root, valid_ds.fingerprint, k) for m in recipe.members}
    tune_runs = {n: t["runs"] for n, t in tuned.items()}
    weights, _, trace = tune_weights(recipe, tune_runs, valid_ds)
    _, _, valid_blend = blend_runs(recipe, tune_runs, weights, valid_ds)  # scored like every other blend
    print(f"  weights {json.dumps(weights)}: validation recall@{k} {valid_blend[f'recall@{k}']:.4f}")
    rr, carve_sets, carve_runs = {}, [], []
    if reranked:
        for j in range(2, carves + shifted + 1):  # the members again, at their chosen settings, on each extra carve
            carve_ds = Dataset(split_root, f"valid{j}")
            print(f"  carve {j} of {carves + shifted}{' (shifted)' if j > carves else ''}: fit every member on "
                  f"{carve_ds.answers_label}")
            carve_runs.append({m.name: [runner.fit(split_root, carve_ds.fingerprint, f"carve{j}", m, r["seed"],
                                                   refit_flags(recipe, tuned[m.name], r), carve_ds.split)
                                        for r in tune_runs[m.name]] for m in recipe.members})
            carve_sets.append((rerank_candidates(recipe, carve_runs[-1], carve_ds, weights), carve_ds))
        t_rr = time.time()
        valid_c = rerank_candidates(recipe, tune_runs, valid_ds, weights)
        rr["valid"], rr["importance"] = rerank.cross_fit(valid_c, valid_ds, recipe.rerank, k,
                                                         extra=carve_sets[:carves - 1],
                                                         learn_only=carve_sets[carves - 1:])
        rr["valid_seconds"], rr["carves"], rr["shifted_carves"] = round(time.time() - t_rr, 1), carves, shifted
        rr["features"], rr["valid_pairs"] = valid_c.names, len(valid_c.users)
        print(f"  reranker over {len(valid_c.users):,} candidate pairs, cross-fitted on two halves of the "
              f"validation users: recall@{k} {rr['valid'][f'recall@{k}']:.4f} (linear blend "
              f"{valid_blend[f'recall@{k}']:.4f})"
              + (f"; over all {carves} carves {rr['valid'][f'recall@{k}, all carves']:.4f}" if carves > 1 else ""))

    print("3/5 refit each member on the split's training part; score on the test answers")
    test_runs = {m.name: [runner.fit(split_root, test_ds.fingerprint, "test", m, r["seed"],
                                     refit_flags(recipe, tuned[m.name], r), "test") for r in tune_runs[m.name]]
                 for m in recipe.members}
    _, _, test_blend = blend_runs(recipe, test_runs, weights, test_ds)
    test_members = member_scores(recipe, test_runs, test_ds)
    for m in recipe.members:
        print(f"  test recall@{k} of {m.name} alone: {test_members[m.name][f'recall@{k}']:.4f}")
    print(f"  honest test score of the blend: {json.dumps({a: round(v, 5) for a, v in test_blend.items()})}")
    if reranked:
        test_c = rerank_candidates(recipe, test_runs, test_ds, weights)
        t_rr = time.time()
        learning = rerank.learning_set([(valid_c, valid_ds), *carve_sets], recipe.rerank)
        _, _, rr["test"] = rerank_stage(recipe, learning, (test_c, test_ds))
        rr["test_seconds"] = round(time.time() - t_rr, 1)
        print(f"  honest test score of the reranker: {json.dumps({a: round(v, 5) for a, v in rr['test'].items()})}")
        t_rr = time.time()
        if cfg.final:  # what the final classifier learns from: the test candidates and answers, as the test one
            # learned from validation, and every validation carve; taken now, so that the candidate sets'
            # features (about 0.8 GB each at competition size) are let go before the final ones are built
            learning = rerank.learning_set([(test_c, test_ds), (valid_c, valid_ds), *carve_sets], recipe.rerank)
        learn_seconds = time.time() - t_rr
        del test_c, valid_c, carve_sets
    final_score = rr["test"] if reranked else test_blend

    final_file, final_runs = None, {}
    if cfg.final:
        print(f"4/5 refit {'every member' if reranked else 'the members with weight > 0'} on {full_root} and "
              + ("rerank" if reranked else "blend"))
        full_ds = Dataset(full_root)
        kept = recipe.members if reranked else [m for m in recipe.members if weights[m.name] > 0]
        final_runs = {m.name: [runner.fit(full_root, full_ds.fingerprint, "final", m, r["seed"],
                                          refit_flags(recipe, tuned[m.name], r), "test") for r in tune_runs[m.name]]
                      for m in kept}
        if reranked:
            final_c = rerank_candidates(recipe, final_runs, full_ds, weights)
            t_rr = time.time()
            users, top, _ = rerank_stage(recipe, learning, (final_c, full_ds))
            rr["final_seconds"] = round(learn_seconds + time.time() - t_rr, 1)
        else:
            users, top, _ = blend_runs(recipe, final_runs, weights, full_ds, kept)
        final_file = out_dir / f"{name}-final.csv"
        write_ranked(final_file, full_ds.user_raw[users], full_ds.item_raw[top],
                     source=data_source(full_ds, "06_submission.py"))
    else:
        print("4/5 skipped (--no-final)")

    print(f"5/5 report -> {report_dir}/")
    valid_members = member_scores(recipe, tune_runs, valid_ds)
    members = []
    for m in recipe.members:
        t = tuned[m.name]
        seeds = [{"seed": r["seed"], "best_epoch": r["best_epoch"],
                  "refit_epochs": None if t["closed_form"] else recipe.refit_epochs(r["best_epoch"]),
                  "valid": r["scores"][f"recall@{k}"], "test": tr["scores"].get(f"recall@{k}"),
                  "runs": {"tune": r["run"], "test": tr["run"],
                           "final": final_runs[m.name][i]["run"] if m.name in final_runs else None,
                           "carves": [c[m.name][i]["run"] for c in carve_runs]}}
                 for i, (r, tr) in enumerate(zip(t["runs"], test_runs[m.name]))]
        members.append({"name": m.name, "args": m.args, "seeds": m.seeds, "weight_rule": m.weight,
                        "weight": weights[m.name], "closed_form": t["closed_form"], "chosen": t["chosen"],
                        "grid": t["grid"], "seeds_detail": seeds, "tune_runs": t["runs"],
                        "valid": valid_members[m.name], "test": test_members[m.name],
                        "curve_png": f"{m.name}.png"})
    steps = runner.steps
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "name": name, "input": str(src), "recipe": recipe.path, "recipe_text": recipe.text,
        "k": k, "config": vars(cfg),
        "holdout": read_json(split_root / "meta.json")["holdout"],
        "data": {"split": str(split_root), "split_fingerprint": test_ds.fingerprint,
                 "full": str(full_root) if cfg.final else None},
        "epoch_rule": f"refit epochs = max(1, round({recipe.epoch_scale:g} x (best validation epoch + 1)))",
        "members": members,
        "blend": {"weights": weights, "tuned": [m.name for m in recipe.members if m.weight == TUNE],
                  "valid": valid_blend, "test": test_blend, "trace": trace},
        "method": recipe.blend, "rerank": {"config": vars(recipe.rerank), **rr} if reranked else None,
        "final_file": str(final_file) if final_file else None,
        "steps": steps, "seconds": round(time.time() - t0, 1),
        "work_seconds": round(sum(s["seconds"] for s in steps), 1),  # reused steps at their first cost
        "peak_mb": round(max([s["peak_mb"] for s in steps] + [own_peak]), 1),
        "orchestrator_peak_mb": round(own_peak, 1),
    }
    written = write_report(report_dir, report)
    save_config(cfg, report_dir / "config.json")
    print(json.dumps({"blend": name, "method": recipe.blend, "answers": "test", "weights": weights,
                      **{a: round(v, 5) for a, v in final_score.items()}}))
    print(f"wrote {', '.join(map(str, ([final_file] if final_file else []) + written))} "
          f"in {report['seconds']:.0f}s")


def interruptible():
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue where it stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_main(interruptible)

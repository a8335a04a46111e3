"""The submission report: report.json (everything), report.md (for people) and one learning-curve PNG per member."""
from __future__ import annotations

import json
from pathlib import Path

from common.io import atomic_path, atomic_write_text, write_json



def _carves(n: int, shifted: int = 0) -> str:
    """How many draws of the validation answers the reranker learned from, as the report says it."""
    more = f", and {shifted} carved one hold-out earlier each" if shifted else ""
    return f" ({n} draws of them{more}, the members fitted on each)" if n > 1 or shifted else ""

def plot_member(path: Path, member: dict, k: int) -> None:
    """Validation Recall@k per epoch of every tune run of a trained member (best epochs marked), or per
    grid point of a closed-form member."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    if member["closed_form"]:
        labels = [" ".join(f"{a}={v}" for a, v in g["settings"].items()) or "fit" for g in member["grid"]]
        ax.bar(range(len(labels)), [g[f"recall@{k}"] for g in member["grid"]], color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"validation Recall@{k}")
    else:
        for run in member["tune_runs"]:
            curve = run["curve"]
            ax.plot([c["epoch"] for c in curve], [c["recall"] for c in curve], label=f"seed {run['seed']}")
            best = [c for c in curve if c["epoch"] == run["best_epoch"]]
            if best:
                ax.plot([best[0]["epoch"]], [best[0]["recall"]], "o", color="black", markersize=4)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation Recall@{k}")
        ax.legend(fontsize=7)
    ax.set_title(f"{member['name']}: chosen {json.dumps(member['chosen'])}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _fmt(v) -> str:
    return "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def markdown(report: dict) -> str:
    k = report["k"]
    r, nd = f"recall@{k}", f"ndcg@{k}"
    lines = [f"# Submission report: {report['name']}", "",
             f"Input `{report['input']}`, recipe `{report['recipe']}`, hold-out {json.dumps(report['holdout'])}.",
             f"Final file: `{report.get('final_file') or 'not written (--no-final)'}`.", "",
             "Every choice (grid settings, epochs, weights) read the **validation** answers; the **test** scores "
             "below read answers that no step chose on.", "",
             "## Scores", "",
             f"| what | weight | validation Recall@{k} | test Recall@{k} | test NDCG@{k} |", "| --- | --- | --- | --- | --- |"]
    for m in report["members"]:
        lines.append(f"| {m['name']} | {_fmt(m['weight'])} | {_fmt(m['valid'].get(r))} | {_fmt(m['test'].get(r))} "
                     f"| {_fmt(m['test'].get(nd))} |")
    b = report["blend"]
    rr = report.get("rerank")
    if rr:  # the linear blend beside the reranker, which orders the submission
        lines.append(f"| linear blend | | {_fmt(b['valid'].get(r))} | {_fmt(b['test'].get(r))} | "
                     f"{_fmt(b['test'].get(nd))} |")
    else:
        lines.append(f"| **blend** | | **{_fmt(b['valid'].get(r))}** | **{_fmt(b['test'].get(r))}** | "
                     f"**{_fmt(b['test'].get(nd))}** |")
    if rr:
        lines += [f"| **reranker** (the submitted order) | | **{_fmt(rr['valid'].get(r))}** (cross-fitted) | "
                  f"**{_fmt(rr['test'].get(r))}** | **{_fmt(rr['test'].get(nd))}** |", "",
                  f"The reranker ({len(rr['features'])} features, {rr['valid_pairs']:,} validation candidate pairs) "
                  f"learned on validation answers{_carves(rr.get('carves', 1), rr.get('shifted_carves', 0))} to order the test candidates; its "
                  "validation score is cross-fitted "
                  f"over two halves of the users. Permutation importance (drop in validation Recall@{k} when the "
                  "feature is shuffled):", "", "| feature | drop |", "| --- | --- |"]
        lines += [f"| {row['feature']} | {row[f'recall@{k} drop']:+.4f} |" for row in rr["importance"]]
    lines += ["", "## Members", ""]
    for m in report["members"]:
        lines += [f"### {m['name']}", "", f"`02_train.py {' '.join(m['args'])}`, seeds {m['seeds']}, weight "
                  f"{m['weight_rule']} → {_fmt(m['weight'])}; chosen settings `{json.dumps(m['chosen'])}`.", ""]
        if len(m["grid"]) > 1:
            lines += [f"| settings | validation Recall@{k} | best epoch |", "| --- | --- | --- |"]
            lines += [f"| `{json.dumps(g['settings'])}` | {_fmt(g[r])} | {_fmt(g['best_epoch'])} |" for g in m["grid"]]
            lines.append("")
        lines += ["| seed | best validation epoch | refit epochs | validation | test |", "| --- | --- | --- | --- | --- |"]
        for s in m["seeds_detail"]:
            lines.append(f"| {s['seed']} | {_fmt(s['best_epoch'])} | {_fmt(s['refit_epochs'])} | {_fmt(s['valid'])} "
                         f"| {_fmt(s['test'])} |")
        lines += ["", f"![{m['name']}]({m['curve_png']})", ""]
    lines += ["## Steps", "", "| step | seconds | peak MB |", "| --- | --- | --- |"]
    lines += [f"| {s['step']}{' (reused)' if s.get('reused') else ''} | {s['seconds']:.1f} | {s['peak_mb']:.0f} |"
              for s in report["steps"]]
    lines += ["", f"This call took {report['seconds']:.0f} s; all steps, reused ones at the cost of their first run, "
              f"{report['work_seconds']:.0f} s. The largest peak of one step: {report['peak_mb']:.0f} MB.", ""]
    return "\n".join(lines)


def write_report(folder: Path, report: dict) -> list[Path]:
    """Write the report's curves, JSON and Markdown into `folder`; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for m in report["members"]:
        png = folder / m["curve_png"]
        plot_member(png, m, report["k"])
        written.append(png)
    write_json(folder / "report.json", report)
    atomic_write_text(folder / "report.md", markdown(report))
    return written + [folder / "report.json", folder / "report.md"]

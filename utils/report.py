"""Results of a run: results.json / results.csv (per fold, mean, std), the printed
table, and the confusion-matrix picture."""
import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from utils.files import atomic_path, atomic_write_text
from utils.labels import CLASS_NAMES
from utils.metrics import summarize_folds

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

METRIC_KEYS = ("wa", "ua", "macro_f1")


def results_frame(fold_metrics: dict) -> pd.DataFrame:
    """Rows: one per fold, then mean and std; columns wa, ua, macro_f1 (fractions)."""
    mean, std = summarize_folds(fold_metrics)
    rows = {f"session {s}": {k: m[k] for k in METRIC_KEYS} for s, m in sorted(fold_metrics.items())}
    rows["mean"], rows["std"] = mean, std
    return pd.DataFrame.from_dict(rows, orient="index")[list(METRIC_KEYS)]


def write_results(run_dir, fold_metrics: dict, info: dict) -> dict:
    """Write results.json, results.csv and confusion_matrix.png into run_dir; return the json."""
    mean, std = summarize_folds(fold_metrics)
    results = {
        "folds": {str(s): m for s, m in sorted(fold_metrics.items())},
        "mean": mean, "std": std, **info,
    }
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    frame = results_frame(fold_metrics)
    with atomic_path(run_dir / "results.csv", suffix=".csv") as tmp:
        frame.to_csv(tmp, index_label="fold", float_format="%.4f")
    pooled = np.sum([np.array(m["confusion"]) for m in fold_metrics.values()], axis=0)
    plot_confusion(pooled, run_dir / "confusion_matrix.png", title=f"{info.get('run', '')} pooled over folds")
    return results


def format_table(fold_metrics: dict, title: str) -> str:
    frame = results_frame(fold_metrics) * 100
    return f"{title}\n" + frame.to_string(float_format=lambda v: f"{v:6.2f}") + "\n(percent; WA = accuracy, UA = mean per-class recall)"


def plot_confusion(matrix, path, title: str = "") -> None:
    """Counts and row-normalised recall side by side (rows = true class)."""
    matrix = np.asarray(matrix, dtype=float)
    normalised = matrix / np.clip(matrix.sum(axis=1, keepdims=True), 1, None)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, values, name, fmt in ((axes[0], matrix, "counts", "{:.0f}"), (axes[1], normalised, "row-normalised", "{:.2f}")):
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(CLASS_NAMES)), CLASS_NAMES)
        ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, fmt.format(v), ha="center", va="center",
                    color="white" if normalised[r, c] > 0.5 else "black")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- comparing runs
def find_results(paths) -> list:
    """results.json files under the given run folders or save folders."""
    found = []
    for path in map(Path, paths):
        if (path / "results.json").is_file():
            found.append(path / "results.json")
        else:
            found += sorted(path.glob("*/results.json"))
    if not found:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, paths))}; pass run folders "
                                "(<save_path>/<run>) or save folders written by run.py")
    return found


def comparison_frame(result_files) -> pd.DataFrame:
    """One row per run: mean and std over folds of WA, UA and macro-F1 (percent)."""
    rows = []
    for path in result_files:
        results = json.loads(Path(path).read_text())
        row = {"run": results.get("run", path.parent.name), "alpha": results.get("alpha"),
               "folds": len(results["folds"]), "path": str(path.parent)}
        for key in METRIC_KEYS:
            row[key] = 100 * results["mean"][key]
            row[f"{key}_std"] = 100 * results["std"][key]
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| run | alpha | folds | WA (%) | UA (%) | macro-F1 (%) |\n|---|---|---|---|---|---|\n"
    lines = [f"| {r.run} | {r.alpha} | {r.folds} | {r.wa:.2f} ± {r.wa_std:.2f} | {r.ua:.2f} ± {r.ua_std:.2f} "
             f"| {r.macro_f1:.2f} ± {r.macro_f1_std:.2f} |" for r in frame.itertuples()]
    return header + "\n".join(lines) + "\n"


def plot_comparison(frame: pd.DataFrame, path) -> None:
    labels = [f"{r.run}\nα={r.alpha}" if r.run != "unimodal_baseline" else r.run for r in frame.itertuples()]
    x = np.arange(len(frame))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(frame)), 3.8))
    for offset, key in ((-0.2, "wa"), (0.2, "ua")):
        ax.bar(x + offset, frame[key], 0.4, yerr=frame[f"{key}_std"], capsize=3, label=key.upper())
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("percent (mean ± std over folds)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def compare(paths, out_dir) -> pd.DataFrame:
    """Write comparison.csv, comparison.md and comparison.png for the runs under `paths`."""
    frame = comparison_frame(find_results(paths))
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "comparison.csv", suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.4f")
    atomic_write_text(out_dir / "comparison.md", markdown_table(frame))
    plot_comparison(frame, out_dir / "comparison.png")
    return frame


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description="Compare runs side by side: one table and one bar chart.")
    parser.add_argument("paths", nargs="+", help="run folders (<save_path>/<run>) or save folders")
    parser.add_argument("--out", default=".", help="folder for comparison.{csv,md,png}")
    args = parser.parse_args(argv)
    frame = compare(args.paths, args.out)
    print(markdown_table(frame))


if __name__ == "__main__":
    main()

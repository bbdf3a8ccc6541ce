"""Results of a run: results.json / results.csv (per fold, mean, std), the printed
table, and the confusion-matrix picture."""
import json

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

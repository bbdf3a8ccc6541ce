"""The run's and the comparison's pictures, drawn with matplotlib (headless): confusion matrices
(counts and recall side by side), the reliability diagram, the layer weights of a frozen encoder,
learning curves per fold (losses, dev/test UA, the selected
epoch) and the comparison's bar chart. training/report.py and training/comparison.py choose the files."""
import math
import textwrap

import matplotlib
import numpy as np
import pandas as pd

from dataio.labels import CLASS_NAMES
from utils.files import save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402


def session_key(session: str):
    """Fold names in numeric order ('2' before '10'), then the others by name."""
    return (0, int(session)) if str(session).isdigit() else (1, str(session))


def optimistic(frame: pd.DataFrame) -> pd.Series:
    """The runs whose best epoch was chosen on the test session: hatched in the chart, never bold in the tables."""
    return frame["selection"].str.contains("OPTIMISTIC")


# ---------------------------------------------------------------- confusion matrices
def plot_confusion(matrix, path, classes=CLASS_NAMES, title: str = "") -> None:
    """Counts and row-normalised recall side by side (rows = true class); both coloured by
    recall, so the two panels read alike whatever the class sizes."""
    matrix = np.asarray(matrix, dtype=float)
    row_totals = matrix.sum(axis=1, keepdims=True)
    normalised = matrix / np.clip(row_totals, 1, None)
    classes = list(classes)
    true_labels = [f"{name}\n(n={total:.0f})" for name, total in zip(classes, row_totals[:, 0])]
    grow = max(0, len(classes) - 4) * 0.9  # room for more classes
    fig, axes = plt.subplots(1, 2, figsize=(9.5 + 2 * grow, 4.4 + grow))
    for ax, values, name, fmt in ((axes[0], matrix, "counts", "{:.0f}"),
                                  (axes[1], normalised, "row-normalised (recall)", "{:.2f}")):
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 4 else 0)
        ax.set_yticks(range(len(classes)), true_labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=11,
                    color="white" if normalised[r, c] > 0.6 else "black")  # dark cells only
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- reliability
def plot_reliability(panels: list, path, title: str = "") -> None:
    """One column per set of probabilities (label, its ECE, NLL and Brier with the `reliability`
    bins training/calibration.py sums): each bin's accuracy as a bar, the gap to its mean
    confidence shaded, the diagonal of perfect calibration; the utterances per bin below."""
    fig, axes = plt.subplots(2, len(panels), figsize=(0.6 + 4.2 * len(panels), 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True, layout="constrained")
    for col, (label, summary) in enumerate(panels):
        bins = summary["reliability"]
        count = np.asarray(bins["count"], dtype=float)
        edges = np.linspace(0, 1, len(count) + 1)
        centres, width = (edges[:-1] + edges[1:]) / 2, 1 / len(count)
        seen = count > 0
        accuracy = np.divide(bins["correct"], count, out=np.zeros_like(count), where=seen)
        confidence = np.divide(bins["confidence"], count, out=np.zeros_like(count), where=seen)
        top = axes[0, col]
        top.bar(centres[seen], accuracy[seen], width, color="C0", edgecolor="black", lw=0.5, label="accuracy")
        top.bar(centres[seen], (confidence - accuracy)[seen], width, bottom=accuracy[seen], color="C3", alpha=0.3,
                edgecolor="C3", hatch="//", lw=0.5, label="gap to mean confidence")
        top.plot([0, 1], [0, 1], ls="--", color="gray", label="perfect calibration")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy" if col == 0 else None)
        top.set_title(f"{label}\nECE {100 * summary['ece']:.2f}%, NLL {summary['nll']:.3f}, "
                      f"Brier {summary['brier']:.3f}")
        top.grid(alpha=0.3)
        bottom = axes[1, col]
        bottom.bar(centres, count, width, color="gray", edgecolor="black", lw=0.5)
        bottom.set(xlabel="confidence (top probability)", ylabel="utterances" if col == 0 else None)
        bottom.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=3))
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)


# ---------------------------------------------------------------- layer weights
def plot_layer_weights(weights: dict, states: list, path, title: str = "", unit: str = "fold") -> None:
    """The weight of each cached hidden state (x) per fold (one bar each), and their mean as a
    line: which of the frozen encoder's layers the model reads."""
    folds = sorted(weights, key=session_key)
    matrix = np.array([weights[fold] for fold in folds], dtype=float)       # [folds, states]
    x = np.arange(len(states))
    width = 0.8 / max(len(folds), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(states) + 2), 3.6), layout="constrained")
    for k, fold in enumerate(folds):
        ax.bar(x - 0.4 + width * (k + 0.5), matrix[k], width, label=f"{unit} {fold}", alpha=0.8)
    ax.plot(x, matrix.mean(axis=0), "k.-", label="mean")
    ax.axhline(1 / len(states), ls="--", color="gray", lw=0.8, label="equal weights")
    ax.set(xticks=x, xticklabels=[str(s) for s in states], xlabel="hidden state (0 = embedding output)",
           ylabel="weight (softmax)", ylim=(0, max(1 / len(states), float(matrix.max())) * 1.15))
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    save_figure(fig, path)


# ---------------------------------------------------------------- learning curves
def plot_learning_curves(stats: dict, selected: dict, path, title: str = "", unit: str = "session") -> None:
    """One column per fold: training losses on top, dev/test UA below, the selected epoch marked."""
    sessions = sorted(stats, key=session_key)
    fig, axes = plt.subplots(2, len(sessions), figsize=(0.6 + 3.4 * len(sessions), 6.4), sharex="col",
                             sharey="row", squeeze=False, layout="constrained")
    for col, session in enumerate(sessions):
        records, epoch = stats[session], selected.get(session)
        plot_losses(axes[0, col], records, epoch)
        plot_ua(axes[1, col], records, epoch)
        axes[0, col].set_title(f"test {unit} {session}" + (f"\nselected epoch {epoch}" if epoch else ""))
        axes[1, col].set_xlabel("epoch")
        axes[1, col].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].set_ylabel("training loss (log scale)")
    axes[1, 0].set_ylabel("UA (%)")
    handles = {}
    for ax in axes.flat:  # one legend for the figure: folds may lack a series (no dev split, no CTC)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    ncol = min(len(handles), max(3, int(fig.get_figwidth() / 1.7)))  # wrap rather than run off a narrow figure
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=ncol)
    fig.suptitle(title)
    save_figure(fig, path)


def series(records, get) -> np.ndarray:
    """Values per epoch, NaN where a record lacks them (a fold without dev split, an old file)."""
    values = []
    for record in records:
        try:
            values.append(float(get(record)))
        except (KeyError, TypeError, ValueError):
            values.append(math.nan)
    return np.array(values)


class PlainLogFormatter(LogFormatter):
    """Matplotlib's choice of which log ticks to label, written as plain numbers (0.1, 2, 30)
    rather than 1e-01 or 2 x 10^0."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def plot_losses(ax, records, selected_epoch) -> None:
    epochs = [r["epoch"] for r in records]
    marker = "o" if len(epochs) <= 30 else None
    styles = (("loss", "total loss", dict(color="black", lw=3, alpha=0.35)),  # wide: CE may lie on it (alpha 0)
              ("ce_loss", "CE loss", dict(color="C0")), ("ctc_loss", "CTC loss", dict(color="C1")))
    for key, label, style in styles:
        values = series(records, lambda r: r[key])
        if np.all(np.isnan(values) | (values == 0)):  # a loss the variant does not have (CTC of the baseline)
            continue
        ax.plot(epochs, np.where(values > 0, values, np.nan), marker=marker, ms=3, label=label, **style)
    ax.set_yscale("log")  # CE (about 1) and CTC (tens at first) differ by orders of magnitude
    ax.yaxis.set_major_formatter(PlainLogFormatter())
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1.5, 0.5)))
    if selected_epoch:
        ax.axvline(selected_epoch, color="gray", ls=":", label="selected epoch")
    ax.grid(alpha=0.3, which="both")


def plot_ua(ax, records, selected_epoch) -> None:
    epochs = [r["epoch"] for r in records]
    marker = "o" if len(epochs) <= 30 else None
    curves = {"dev": series(records, lambda r: 100 * r["dev"]["ua"]),
              "test": series(records, lambda r: 100 * r["test"]["ua"])}
    for split, color in (("dev", "C2"), ("test", "C3")):
        if not np.all(np.isnan(curves[split])):
            ax.plot(epochs, curves[split], marker=marker, ms=3, color=color, label=f"{split} UA")
    ax.margins(y=0.1)  # room for the star at the top or bottom of the curve
    if selected_epoch:
        ax.axvline(selected_epoch, color="gray", ls=":", label="selected epoch")
        on = records[-1].get("selected_on", "dev")
        if on in curves and selected_epoch in epochs:
            ax.plot(selected_epoch, curves[on][epochs.index(selected_epoch)], "*", ms=14, color="gold",
                    markeredgecolor="black", label=f"selected on {on} UA", zorder=5)
    ax.grid(alpha=0.3)


# ---------------------------------------------------------------- comparing runs
def tick_label(label: str, width: int = 22) -> str:
    """The folder on its own line, long names wrapped, so neighbouring labels do not overlap."""
    return "\n".join(textwrap.fill(part, width) for part in label.replace(" [", "\n[").split("\n"))


def plot_comparison(frame: pd.DataFrame, path) -> None:
    """WA and UA side by side per run, mean with std over folds as error bars, values written
    above the bars; runs whose best epoch was chosen on the test session hatched and named so."""
    x = np.arange(len(frame))
    flagged = optimistic(frame).to_numpy()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.45 * len(frame) + 1.5), 5.0), layout="constrained")
    for offset, key, color in ((-0.2, "wa", "C0"), (0.2, "ua", "C1")):
        means, stds = frame[key].to_numpy(), np.nan_to_num(frame[f"{key}_std"].to_numpy())
        bars = ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, color=color)
        for bar, flag in zip(bars, flagged):
            bar.set_hatch("//" if flag else None)
        for xi, mean, std in zip(x + offset, means, stds):
            ax.text(xi, mean + std + 1, f"{mean:.1f}", ha="center", va="bottom", fontsize=8)
    top = float(np.nanmax(frame[["wa", "ua"]].to_numpy() + np.nan_to_num(frame[["wa_std", "ua_std"]].to_numpy())))
    ax.set_ylim(0, top + 8)
    labels = [tick_label(label) + ("\nOPTIMISTIC (test-selected)" if flag else "")
              for label, flag in zip(frame["label"], flagged)]
    ax.set_xticks(x, labels, fontsize=9)
    for tick, flag in zip(ax.get_xticklabels(), flagged):
        tick.set_color("firebrick" if flag else "black")
    ax.set_ylabel("percent (mean ± std over folds)")
    fig.suptitle("Leave-one-session-out results")  # above the legend, so the two never collide
    handles = [Patch(color="C0", label="WA"), Patch(color="C1", label="UA")]  # plain, whatever bar comes first
    if flagged.any():
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="test-selected"))
    ax.legend(handles=handles, ncol=len(handles), loc="lower right", bbox_to_anchor=(1, 1), frameon=False,
              borderaxespad=0.2)  # above the axes, never over a bar
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    save_figure(fig, path)

"""Results of a run, and runs side by side. In a run folder: results.json / results.csv (per
fold, mean, std), results.md (a table to paste into a paper), confusion matrices (pooled and
per fold) and learning curves. `python compare.py SAVE_DIR ... --out DIR` compares runs."""
import json
import logging
import math
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from utils.files import atomic_path, atomic_write_text, save_figure
from dataio.labels import CLASS_NAMES
from training.metrics import summarize_by_type, summarize_folds

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator  # noqa: E402
from models.errors import MMERError  # noqa: E402

log = logging.getLogger(__name__)
METRIC_KEYS = ("wa", "ua", "macro_f1")
METRIC_NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1"}
RUN_ORDER = ("unimodal_baseline", "cai_sota", "mmer")  # baselines first, as in the paper's tables
NO_CTC_RUNS = {"unimodal_baseline"}  # alpha is recorded for these but weighs nothing
LEGEND = "WA = overall accuracy, UA = mean of the per-class recalls; std = population std over the folds."
TYPE_NAMES = {"impro": "improvised", "script": "scripted"}


class ReportError(MMERError, RuntimeError):
    """A results file is missing or is not one written by run.py."""


def run_label(run: str, alpha, objectives: dict | None = None) -> str:
    """'mmer α=0.1', with the 2023 options that are on ('+SupCon 0.1 +Aug 0.1 max-pool'); the
    baseline without a CTC loss has no alpha worth naming."""
    if run in NO_CTC_RUNS or alpha is None or (isinstance(alpha, float) and math.isnan(alpha)):
        label = str(run)
    else:
        label = f"{run} α={alpha:g}" if isinstance(alpha, (int, float)) else f"{run} α={alpha}"
    objectives = objectives if isinstance(objectives, dict) else {}
    for key, name in (("supcon_weight", "+SupCon"), ("aug_weight", "+Aug")):
        if objectives.get(key):
            label += f" {name} {objectives[key]:g}"
    if objectives.get("pooling", "mean") != "mean":
        label += f" {objectives['pooling']}-pool"
    if objectives.get("text_pooling", "mean") != "mean":
        label += f" text-{objectives['text_pooling']}-pool"
    if objectives.get("contrastive") == "normalised" and (objectives.get("supcon_weight") or objectives.get("aug_weight")):
        label += " (normalised)"
    if objectives.get("utterance_types", "all") != "all":
        label += f" [{objectives['utterance_types']} only]"
    return label


def percent(value) -> str:
    return f"{100 * value:.2f}"


# ---------------------------------------------------------------- one run
def in_order(fold_metrics: dict) -> list:
    """(fold, metrics) with numeric fold names in numeric order ('2' before '10')."""
    return sorted(fold_metrics.items(), key=lambda item: _session_key(item[0]))


def results_frame(fold_metrics: dict, unit: str = "session") -> pd.DataFrame:
    """Rows: one per fold, then mean and std; columns wa, ua, macro_f1 (fractions) and, where
    the test utterances are typed (IEMOCAP), the same for each type (wa_impro, ..., n_impro)."""
    mean, std = summarize_folds(fold_metrics)
    by_type = summarize_by_type(fold_metrics)
    rows = {}
    for s, m in in_order(fold_metrics):
        row = {k: m[k] for k in METRIC_KEYS}
        for kind, typed in m.get("by_type", {}).items():
            row.update({f"{k}_{kind}": typed[k] for k in METRIC_KEYS}, **{f"n_{kind}": typed.get("n")})
        rows[f"{unit} {s}"] = row
    rows["mean"], rows["std"] = dict(mean), dict(std)
    for kind, summary in by_type.items():
        rows["mean"].update({f"{k}_{kind}": summary["mean"][k] for k in METRIC_KEYS}, **{f"n_{kind}": summary["n"]})
        rows["std"].update({f"{k}_{kind}": summary["std"][k] for k in METRIC_KEYS})
    columns = list(METRIC_KEYS) + [f"{k}_{kind}" for kind in by_type for k in (*METRIC_KEYS, "n")]
    return pd.DataFrame.from_dict(rows, orient="index")[columns]


def write_results(run_dir, fold_metrics: dict, info: dict) -> dict:
    """Write results.json, results.csv, results.md, the confusion matrices (pooled and per fold)
    and the learning curves into run_dir; return the json."""
    run_dir = Path(run_dir)
    mean, std = summarize_folds(fold_metrics)
    results = {
        "folds": {str(s): m for s, m in in_order(fold_metrics)},
        "mean": mean, "std": std, **info,
    }
    by_type = summarize_by_type(fold_metrics)
    if by_type:
        results["by_type"] = by_type
    unit, classes = info.get("fold_unit", "session"), info.get("classes", CLASS_NAMES)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    frame = results_frame(fold_metrics, unit)
    with atomic_path(run_dir / "results.csv", suffix=".csv") as tmp:
        frame.to_csv(tmp, index_label="fold", float_format="%.4f")
    atomic_write_text(run_dir / "results.md", results_markdown(results))
    name = run_label(info.get("run", run_dir.name), info.get("alpha"), info.get("objectives"))
    pooled = np.sum([np.array(m["confusion"]) for m in fold_metrics.values()], axis=0)
    plot_confusion(pooled, run_dir / "confusion_matrix.png", classes,
                   title=f"{name}: pooled over test {unit}s {', '.join(str(s) for s, _ in in_order(fold_metrics))}")
    write_fold_confusions(run_dir, fold_metrics, name, unit, classes)
    write_learning_curves(run_dir, fold_metrics, info, name)
    return results


def format_table(fold_metrics: dict, title: str, unit: str = "session") -> str:
    frame = results_frame(fold_metrics, unit)[list(METRIC_KEYS)] * 100
    text = f"{title}\n" + frame.to_string(float_format=lambda v: f"{v:6.2f}")
    for kind, summary in summarize_by_type(fold_metrics).items():
        text += (f"\n{TYPE_NAMES.get(kind, kind)} test utterances ({summary['n']}): "
                 + ", ".join(f"{METRIC_NAMES[k]} {percent(summary['mean'][k])} ± {percent(summary['std'][k])}"
                             for k in METRIC_KEYS))
    return text + "\n(percent; WA = accuracy, UA = mean per-class recall)"


def results_markdown(results: dict) -> str:
    """One row per fold, then mean and std, in percent; the header says what was run and how
    the best epoch was chosen (in bold when it was chosen on the test session)."""
    selection = results.get("selection") or "not recorded"
    if "OPTIMISTIC" in selection:
        selection = f"**{selection}**"
    run = results.get("run", "?")
    alpha = "not used (no CTC loss)" if run in NO_CTC_RUNS else results.get("alpha")
    folds = results["folds"]
    classes = results.get("classes", CLASS_NAMES)
    lines = [f"**{run}**, alpha {alpha}: {results.get('folds_from', 'leave-one-session-out')}, {len(classes)} "
             f"classes, {len(folds)} folds; best epoch selected on: {selection}", "",
             f"| test {results.get('fold_unit', 'session')} | utterances | WA (%) | UA (%) | macro-F1 (%) |",
             "|---|---:|---:|---:|---:|"]
    for session, m in folds.items():
        lines.append(f"| {session} | {m.get('n', '')} | " + " | ".join(percent(m[k]) for k in METRIC_KEYS) + " |")
    total = sum(m.get("n", 0) for m in folds.values())
    for row, values, n in (("mean", results["mean"], total or ""), ("std", results["std"], "")):
        lines.append(f"| {row} | {n} | " + " | ".join(percent(values[k]) for k in METRIC_KEYS) + " |")
    return "\n".join(lines + ["", *type_lines(results), *transcript_lines(results.get("transcripts")), LEGEND]) + "\n"


def type_lines(results: dict) -> list[str]:
    """The fold table again for each utterance type (IEMOCAP: improvised, scripted)."""
    by_type = results.get("by_type")
    if not by_type:
        return []
    lines = ["Improvised and scripted test utterances apart (IEMOCAP's scripted dialogues repeat the same lines "
             "in every session, so the text can be recognised from training):", "",
             f"| test {results.get('fold_unit', 'session')} | type | utterances | WA (%) | UA (%) | macro-F1 (%) |",
             "|---|---|---:|---:|---:|---:|"]
    for session, m in results["folds"].items():
        for kind, typed in m.get("by_type", {}).items():
            lines.append(f"| {session} | {kind} | {typed.get('n', '')} | "
                         + " | ".join(percent(typed[k]) for k in METRIC_KEYS) + " |")
    for kind, summary in by_type.items():
        lines.append(f"| mean ± std | {kind} | {summary['n']} | "
                     + " | ".join(f"{percent(summary['mean'][k])} ± {percent(summary['std'][k])}" for k in METRIC_KEYS)
                     + " |")
    return lines + [""]


def transcript_lines(record: dict | None) -> list[str]:
    """Which transcripts the CTC targets and text features came from, and the ASR's WER."""
    if not record or not any(record.values()):
        return []
    parts = [f"{what}: `{record[key]}`" for key, what in (("ctc_targets", "CTC targets"),
                                                            ("text_features", "text features")) if record.get(key)]
    asr = record.get("asr")
    if asr:
        wer = f", WER {100 * asr['wer']:.1f} % against the reference transcripts" if asr.get("wer") is not None else ""
        parts.append(f"`transcript` by {asr['model']}{wer}")
    return ["Transcripts: " + "; ".join(parts) + ".", ""]


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


def write_fold_confusions(run_dir: Path, fold_metrics: dict, name: str, unit: str = "session",
                          classes=CLASS_NAMES) -> None:
    """confusion_matrix_<unit><k>.png per fold (IEMOCAP: confusion_matrix_session1.png); pictures
    of folds this run no longer holds are removed, so the folder never shows a fold that
    results.json does not."""
    for session, metrics in in_order(fold_metrics):
        plot_confusion(metrics["confusion"], run_dir / f"confusion_matrix_{unit}{session}.png", classes,
                       title=f"{name}: test {unit} {session} (n={metrics.get('n', '?')}), "
                             f"WA {percent(metrics['wa'])}%, UA {percent(metrics['ua'])}%")
    keep = {f"confusion_matrix_{unit}{s}.png" for s in fold_metrics}
    for stale in sorted(p for p in run_dir.glob("confusion_matrix_*.png")):
        if stale.name not in keep:
            log.info("removing %s: its fold is not in this run's results", stale)
            stale.unlink()


# ---------------------------------------------------------------- learning curves
def read_fold_stats(run_dir: Path, sessions) -> dict:
    """{session: epoch records, in epoch order} from `<session>_stats.txt`. Complete lines only
    (a kill may cut the last one); a repeated epoch keeps its latest line; folds without any
    record are left out."""
    from training.runinfo import read_stats  # here: runinfo pulls in torch, the comparison CLI needs none
    stats = {}
    for session in sorted(sessions, key=_session_key):
        by_epoch = {r["epoch"]: r for r in read_stats(run_dir / f"{session}_stats.txt")
                    if isinstance(r, dict) and isinstance(r.get("epoch"), int)}
        if by_epoch:
            stats[session] = [by_epoch[e] for e in sorted(by_epoch)]
    return stats


def write_learning_curves(run_dir: Path, fold_metrics: dict, info: dict, name: str) -> None:
    """learning_curves.png from the stats files; none when there are none to read (--eval_only),
    and then an older picture is removed rather than left to describe other checkpoints."""
    path = run_dir / "learning_curves.png"
    stats = {} if info.get("eval_only") else read_fold_stats(run_dir, fold_metrics)
    if not stats:
        if path.is_file():
            log.info("removing %s: no training statistics in this run", path)
            path.unlink()
        return
    selected = {s: fold_metrics[s].get("epoch") or stats[s][-1].get("best_epoch") for s in stats}
    plot_learning_curves(stats, selected, path, title=f"{name}: training loss and UA per epoch",
                         unit=info.get("fold_unit", "session"))


def plot_learning_curves(stats: dict, selected: dict, path, title: str = "", unit: str = "session") -> None:
    """One column per fold: training losses on top, dev/test UA below, the selected epoch marked."""
    sessions = sorted(stats, key=_session_key)
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
def find_results(paths) -> list:
    """results.json files given directly, in run folders (<save>/<run>), in save folders, or one
    level further (a folder of save folders); each file once."""
    found = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_file():
            candidates = [path]
        elif (path / "results.json").is_file():
            candidates = [path / "results.json"]
        else:
            candidates = sorted(path.glob("*/results.json")) or sorted(path.glob("*/*/results.json"))
        found += [c for c in candidates if c.resolve() not in {f.resolve() for f in found}]
    if not found:
        raise FileNotFoundError(f"no results.json under {', '.join(map(str, paths))}; pass run folders "
                                "(<save_path>/<run>) or save folders written by run.py")
    return found


def load_results(path: Path) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: cannot read it as JSON ({err}); is it a results.json written by run.py?") from err
    missing = [k for k in ("folds", "mean", "std") if k not in results] + \
              [f"mean.{k}" for k in METRIC_KEYS if k not in results.get("mean", {})]
    if missing:
        raise ReportError(f"{path}: lacks {', '.join(missing)}; not a results.json written by run.py")
    return results


def selection_tag(results: dict) -> str:
    """A short 'how was the best epoch chosen' for a table cell."""
    selection = results.get("selection") or ""
    if "OPTIMISTIC" in selection:
        return "test (OPTIMISTIC)"
    tag = "dev" if selection.startswith("dev") else selection or "?"
    return f"{tag}, re-evaluated" if results.get("eval_only") else tag


def comparison_frame(result_files) -> pd.DataFrame:
    """One row per run: mean and std over folds of WA, UA and macro-F1 (percent), sorted
    baselines first then by alpha, each with a label that tells it from the others."""
    rows = []
    for path in map(Path, result_files):
        results = load_results(path)
        row = {"run": results.get("run", path.parent.name), "alpha": results.get("alpha"),
               "objectives": results.get("objectives"), "seed": results.get("seed"),
               "selection": selection_tag(results), "folds": len(results["folds"]),
               "unit": results.get("fold_unit", "session"),
               "sessions": " ".join(sorted(results["folds"], key=_session_key)), "path": str(path.parent),
               "settings": recorded_settings(path.parent)}
        for key in METRIC_KEYS:
            row[key] = 100 * results["mean"][key]
            row[f"{key}_std"] = 100 * results["std"].get(key, math.nan)
        for kind in TYPE_NAMES:
            typed = results.get("by_type", {}).get(kind)
            row[f"ua_{kind}"] = 100 * typed["mean"]["ua"] if typed else math.nan
            row[f"wa_{kind}"] = 100 * typed["mean"]["wa"] if typed else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    order = frame["run"].map(lambda r: RUN_ORDER.index(r) if r in RUN_ORDER else len(RUN_ORDER))
    alpha = pd.to_numeric(frame["alpha"], errors="coerce")
    frame = frame.assign(_order=order, _alpha=alpha).sort_values(["_order", "run", "_alpha", "path"], kind="stable")
    frame = frame.drop(columns=["_order", "_alpha"]).reset_index(drop=True)
    frame.insert(0, "label", unique_labels(frame))
    return frame


def _session_key(session: str):
    return (0, int(session)) if str(session).isdigit() else (1, str(session))


def unique_labels(frame: pd.DataFrame) -> list:
    """run + alpha; where two runs share that, the save folder (<save>/<run>) is added, and
    where that is not enough either, the run folder's whole path."""
    base = [run_label(r.run, r.alpha, r.objectives) for r in frame.itertuples()]
    labels = [f"{label} [{Path(path).parent.name}]" if base.count(label) > 1 else label
              for label, path in zip(base, frame["path"])]
    return [f"{label} [{path}]" if labels.count(short) > 1 else short
            for label, short, path in zip(base, labels, frame["path"])]


def test_units(frame: pd.DataFrame) -> str:
    """'sessions' (IEMOCAP), 'speakers', 'splits', ... as the runs' folds are named; 'folds' when they differ."""
    units = set(frame["unit"]) if "unit" in frame else {"session"}
    return f"{units.pop()}s" if len(units) == 1 else "folds"


def optimistic(frame: pd.DataFrame) -> pd.Series:
    return frame["selection"].str.contains("OPTIMISTIC")


def markdown_table(frame: pd.DataFrame) -> str:
    """mean ± std in percent; the best mean of each metric in bold, among the runs whose best
    epoch was not chosen on the test session."""
    fair = frame[~optimistic(frame)]
    best = {k: fair[k].max() for k in METRIC_KEYS}
    typed = typed_columns(frame)
    header = (f"| run | WA (%) | UA (%) | macro-F1 (%) |{''.join(f' {name} (%) |' for _, name in typed)} "
              f"best epoch on | test {test_units(frame)} |\n|---|---:|---:|---:|{'---:|' * len(typed)}---|---|\n")
    lines = []
    for r in frame.itertuples():
        cells = []
        for key in METRIC_KEYS:
            text = f"{getattr(r, key):.2f} ± {getattr(r, key + '_std'):.2f}"
            is_best = getattr(r, key) == best[key] and len(frame) > 1 and "OPTIMISTIC" not in r.selection
            cells.append(f"**{text}**" if is_best else text)
        cells += ["-" if math.isnan(getattr(r, column)) else f"{getattr(r, column):.2f}" for column, _ in typed]
        selection = f"**{r.selection}**" if "OPTIMISTIC" in r.selection else r.selection
        lines.append(f"| {r.label} | {' | '.join(cells)} | {selection} | {r.sessions} |")
    notes = ["", "Mean ± population std over the folds. WA = overall accuracy, UA = mean of the per-class recalls."]
    if typed:
        notes.append("UA impro / UA script: mean over the folds of the UA of the improvised and of the scripted test "
                     "utterances (IEMOCAP's scripted lines recur in every session).")
    if frame["sessions"].nunique() > 1:
        notes.append("**Note: these runs were tested on different sessions; their means are not comparable.**")
    return header + "\n".join(lines + notes) + "\n"


# Recorded settings that do not make a different configuration when comparing seeds.
NOT_CONFIGURATION = {"seed", "save_path", "device", "threads", "num_workers", "overwrite", "resume", "eval_only",
                     "checkpoint_dir", "log_every", "tensorboard", "world_size", "eval_batch_size", "compile",
                     "gradient_checkpointing"}


def recorded_settings(run_dir: Path) -> dict:
    """The flags recorded in run_dir/config.json (model and run settings in one dict), less the
    ones that only say where or how fast it ran; {} without a config.json."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    flat = {**config.get("model", {}), **config.get("run", {})}
    return {k: v for k, v in flat.items() if k not in NOT_CONFIGURATION}


def configurations(frame: pd.DataFrame) -> list[str]:
    """run + alpha (+ objectives), and where runs that share that were recorded with different
    settings (--precision, --learning_rate, ...), those settings, so they never share a row."""
    base = [run_label(r.run, r.alpha, r.objectives) for r in frame.itertuples()]
    names = list(base)
    for label in set(base):
        rows = [i for i, b in enumerate(base) if b == label]
        settings = [frame["settings"].iloc[i] for i in rows]
        keys = sorted({k for s in settings for k in s})
        differing = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1]
        for i, s in zip(rows, settings):
            if differing:
                names[i] = label + " " + " ".join(f"--{k} {s.get(k)}" for k in differing)
    return names


def over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs of one configuration with different seeds as one row: the mean and (population)
    std over the seeds of each run's mean over its folds, in percent. Runs recorded with
    different settings are different configurations."""
    configuration = configurations(frame)
    grouped = frame.assign(configuration=configuration).groupby("configuration", sort=False)
    rows = []
    for name, group in grouped:
        row = {"configuration": name, "seeds": " ".join(str(s) for s in group["seed"]), "runs": len(group),
               "sessions": " ".join(sorted(set(group["sessions"]))), "selection": " / ".join(sorted(set(group["selection"]))),
               "unit": group["unit"].iloc[0] if group["unit"].nunique() == 1 else "fold"}
        for key in METRIC_KEYS:
            row[key], row[f"{key}_std"] = group[key].mean(), group[key].std(ddof=0)
        for column, _ in typed_columns(frame):
            row[column], row[f"{column}_std"] = group[column].mean(), group[column].std(ddof=0)
        rows.append(row)
    return pd.DataFrame(rows)


def seeds_markdown(table: pd.DataFrame) -> str:
    best = {k: table[k].max() for k in METRIC_KEYS}
    typed = typed_columns(table)
    lines = [f"| configuration | seeds | WA (%) | UA (%) | macro-F1 (%) |{''.join(f' {name} (%) |' for _, name in typed)}",
             f"|---|---|---:|---:|---:|{'---:|' * len(typed)}"]
    for r in table.itertuples():
        cells = [f"{getattr(r, k):.2f} ± {getattr(r, k + '_std'):.2f}" for k in METRIC_KEYS]
        cells = [f"**{c}**" if getattr(r, k) == best[k] and len(table) > 1 else c for c, k in zip(cells, METRIC_KEYS)]
        cells += [f"{getattr(r, c):.2f} ± {getattr(r, c + '_std'):.2f}" for c, _ in typed]
        lines.append(f"| {r.configuration} | {r.seeds} | {' | '.join(cells)} |")
    return "\n".join(lines + ["", "Mean ± population std over the seeds of each run's mean over its folds "
                              f"(test {test_units(table)} {' ; '.join(sorted(set(table['sessions'])))}). WA = overall accuracy, "
                              "UA = mean of the per-class recalls."]) + "\n"


def typed_columns(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The per-type UA columns some run of the frame has: [(column, header), ...]."""
    return [(f"ua_{kind}", f"UA {kind}") for kind in TYPE_NAMES
            if f"ua_{kind}" in frame and frame[f"ua_{kind}"].notna().any()]


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


def compare(paths, out_dir, seeds: bool = False) -> pd.DataFrame:
    """Write comparison.csv, comparison.md and comparison.png for the runs under `paths`; with
    `seeds`, also seeds.csv and seeds.md: one row per configuration over its seeds."""
    frame = comparison_frame(find_results(paths))
    if seeds:
        table = over_seeds(frame)
        with atomic_path(Path(out_dir) / "seeds.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.4f")
        atomic_write_text(Path(out_dir) / "seeds.md", seeds_markdown(table))
    if frame["sessions"].nunique() > 1:
        log.warning("the runs were tested on different sessions (%s); their means are not comparable",
                    "; ".join(f"{label}: {s}" for label, s in zip(frame["label"], frame["sessions"])))
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "comparison.csv", suffix=".csv") as tmp:
        frame.drop(columns="settings").to_csv(tmp, index=False, float_format="%.4f")
    atomic_write_text(out_dir / "comparison.md", markdown_table(frame))
    plot_comparison(frame, out_dir / "comparison.png")
    return frame


def default_out(first) -> Path:
    """`comparison/` in the save folder of the first run given (a run folder's parent, the
    folder of a results.json's run, or a save folder itself), never the working directory."""
    first = Path(first)
    if first.is_file():
        first = first.parent
    return (first.parent if (first / "results.json").is_file() else first) / "comparison"

"""One run's results, in its run folder: results.json / results.csv (per fold, mean, std),
results.md (a table to paste into a paper), the confusion matrices (pooled and per fold) and
learning curves that training/figures.py draws, and the table run.py prints."""
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dataio.labels import CLASS_NAMES
from models.errors import MMERError
from training.figures import plot_confusion, plot_learning_curves, session_key
from training.metrics import summarize_by_type, summarize_folds
from utils.files import atomic_path, atomic_write_text

log = logging.getLogger(__name__)
METRIC_KEYS = ("wa", "ua", "macro_f1")
METRIC_NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1"}
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
    return sorted(fold_metrics.items(), key=lambda item: session_key(item[0]))


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
    for session in sorted(sessions, key=session_key):
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

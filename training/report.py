"""One run's results, in its run folder: results.json / results.csv (per fold, mean, std and,
for the calibration metrics, pooled), results.md (a table to paste into a paper), the confusion
matrices (pooled and per fold), the reliability diagram and learning curves that
training/figures.py draws, and the table run.py prints."""
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dataio.labels import CLASS_NAMES
from models.errors import MMERError
from training.calibration import (CALIBRATION_KEYS, calibrated, calibration_summary, pooled_calibration,
                                 summary_values)
from training.figures import (plot_confusion, plot_layer_weights, plot_learning_curves, plot_reliability,
                              session_key)
from training.metrics import attribute_keys, categorical_keys, summarize_by_type, summarize_folds
from utils.files import atomic_path, atomic_write_text

log = logging.getLogger(__name__)
METRIC_KEYS = ("wa", "ua", "macro_f1")
METRIC_NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1"}
NO_CTC_RUNS = {"unimodal_baseline", "probe"}  # alpha is recorded for these but weighs nothing
LEGEND = "WA = overall accuracy, UA = mean of the per-class recalls; std = population std over the folds."
CALIBRATION_LEGEND = ("ECE: expected calibration error over 15 equal-width bins of the top probability; NLL: mean "
                      "-ln p(true class), in nats; Brier: mean over utterances of the sum over classes of "
                      "(p - one-hot)^2; lower is better; pooled: over every test utterance of every fold "
                      "(docs/CALIBRATION.md).")
RELIABILITY = "reliability_diagram.png"
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
    if objectives.get("frozen"):   # on a frozen encoder's cached hidden states
        label += f" ({objectives['frozen']})"
    return label


def percent(value) -> str:
    return f"{100 * value:.2f}"


# ---------------------------------------------------------------- one run
def in_order(fold_metrics: dict) -> list:
    """(fold, metrics) with numeric fold names in numeric order ('2' before '10')."""
    return sorted(fold_metrics.items(), key=lambda item: session_key(item[0]))


def results_frame(fold_metrics: dict, unit: str = "session") -> pd.DataFrame:
    """Rows: one per fold, then mean and std (and pooled, where the folds have calibration
    metrics); columns wa, ua, macro_f1 (fractions), ece, nll, brier (with a temperature: also the
    temperature and the same before it, ece_uncalibrated, ...) and, where the test utterances are
    typed (IEMOCAP), wa, ua, macro_f1 for each type (wa_impro, ..., n_impro)."""
    mean, std = summarize_folds(fold_metrics)
    by_type = summarize_by_type(fold_metrics)
    calibration = calibration_columns(fold_metrics)
    categorical, attributes = categorical_keys(fold_metrics), attribute_keys(fold_metrics)
    rows = {}
    for s, m in in_order(fold_metrics):
        row = {k: m[k] for k in categorical}
        row.update(calibration_row(m, calibration))
        row.update({k: m[k] for k in attributes})
        for kind, typed in m.get("by_type", {}).items():
            row.update({f"{k}_{kind}": typed[k] for k in METRIC_KEYS}, **{f"n_{kind}": typed.get("n")})
        rows[f"{unit} {s}"] = row
    rows["mean"], rows["std"] = dict(mean), dict(std)
    if "temperature" in calibration:
        before = calibration_summary(fold_metrics)["uncalibrated"]
        for row in ("mean", "std"):
            rows[row].update({f"{k}_uncalibrated": before[row][k] for k in CALIBRATION_KEYS})
    if calibration:
        rows["pooled"] = pooled_row(fold_metrics, calibration)
    for kind, summary in by_type.items():
        rows["mean"].update({f"{k}_{kind}": summary["mean"][k] for k in METRIC_KEYS}, **{f"n_{kind}": summary["n"]})
        rows["std"].update({f"{k}_{kind}": summary["std"][k] for k in METRIC_KEYS})
    columns = (list(categorical) + calibration + [f"{k}_{kind}" for kind in by_type for k in (*METRIC_KEYS, "n")]
               + list(attributes))
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)


def calibration_columns(fold_metrics: dict) -> list[str]:
    """ece, nll, brier where every fold has them (not in results of older code); with a
    temperature, the temperature and the three before it."""
    if pooled_calibration(fold_metrics) is None:
        return []
    columns = list(CALIBRATION_KEYS)
    if calibrated(fold_metrics):
        columns += ["temperature", *(f"{k}_uncalibrated" for k in CALIBRATION_KEYS)]
    return columns


def calibration_row(m: dict, columns: list[str]) -> dict:
    before = m.get("uncalibrated") or m   # a fold without a temperature: the same before and after
    row = {k: m[k] for k in CALIBRATION_KEYS if k in columns}
    if "temperature" in columns:
        row["temperature"] = m.get("temperature", 1.0)
        row.update({f"{k}_uncalibrated": before[k] for k in CALIBRATION_KEYS})
    return row


def pooled_row(fold_metrics: dict, columns: list[str]) -> dict:
    row = {k: v for k, v in pooled_calibration(fold_metrics).items() if k in CALIBRATION_KEYS}
    if "temperature" in columns:
        row.update({f"{k}_uncalibrated": v for k, v in pooled_calibration(fold_metrics, "uncalibrated").items()
                    if k in CALIBRATION_KEYS})
    return row


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
    if pooled_calibration(fold_metrics) is not None:
        results["pooled"] = summary_values(pooled_calibration(fold_metrics))
        results["calibration"] = calibration_summary(fold_metrics)
    unit, classes = info.get("fold_unit", "session"), info.get("classes", CLASS_NAMES)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    frame = results_frame(fold_metrics, unit)
    with atomic_path(run_dir / "results.csv", suffix=".csv") as tmp:
        frame.to_csv(tmp, index_label="fold", float_format="%.4f")
    atomic_write_text(run_dir / "results.md", results_markdown(results))
    name = run_label(info.get("run", run_dir.name), info.get("alpha"), info.get("objectives"))
    if categorical_keys(fold_metrics):   # --task dimensional predicts no class
        pooled = np.sum([np.array(m["confusion"]) for m in fold_metrics.values()], axis=0)
        plot_confusion(pooled, run_dir / "confusion_matrix.png", classes,
                       title=f"{name}: pooled over test {unit}s {', '.join(str(s) for s, _ in in_order(fold_metrics))}")
        write_fold_confusions(run_dir, fold_metrics, name, unit, classes)
    write_reliability(run_dir, fold_metrics, name, unit)
    write_learning_curves(run_dir, fold_metrics, info, name)
    write_layer_weights_figure(run_dir, fold_metrics, name, unit)
    return results


def write_layer_weights_figure(run_dir: Path, fold_metrics: dict, name: str, unit: str) -> None:
    """layer_weights.png from the folds' `<fold>_layer_weights.json` (runs on cached hidden states)."""
    records = {}
    for session in fold_metrics:
        path = run_dir / f"{session}_layer_weights.json"
        if path.is_file():
            records[session] = json.loads(path.read_text())
    if records:
        states = next(iter(records.values()))["hidden_states"]
        plot_layer_weights({s: r["weights"] for s, r in records.items()}, states, run_dir / "layer_weights.png",
                           title=f"{name}: weight of each hidden state", unit=unit)


def format_table(fold_metrics: dict, title: str, unit: str = "session") -> str:
    full = results_frame(fold_metrics, unit).drop(index="pooled", errors="ignore")
    text = title
    if categorical_keys(fold_metrics):
        text += "\n" + (full[list(METRIC_KEYS)] * 100).to_string(float_format=lambda v: f"{v:6.2f}")
    attributes = [k for k in attribute_keys(fold_metrics) if not k.startswith("pearson_")]
    if attributes:
        text += "\nattributes (CCC; MSE in the corpus's units):\n" + full[attributes].to_string(
            float_format=lambda v: f"{v:7.4f}")
    for kind, summary in summarize_by_type(fold_metrics).items():
        text += (f"\n{TYPE_NAMES.get(kind, kind)} test utterances ({summary['n']}): "
                 + ", ".join(f"{METRIC_NAMES[k]} {percent(summary['mean'][k])} ± {percent(summary['std'][k])}"
                             for k in METRIC_KEYS))
    now = pooled_calibration(fold_metrics)
    if now is not None:
        before = pooled_calibration(fold_metrics, "uncalibrated") if calibrated(fold_metrics) else None
        text += (f"\ncalibration, pooled over {now['n']} test utterances: "
                 + ", ".join(f"{name} {calibration_value(k, now[k])}"
                             + (f" (plain softmax: {calibration_value(k, before[k])})" if before else "")
                             for k, name in CALIBRATION_NAMES.items()))
    return text + ("\n(percent; WA = accuracy, UA = mean per-class recall)" if categorical_keys(fold_metrics) else "")


CALIBRATION_NAMES = {"ece": "ECE", "nll": "NLL", "brier": "Brier"}


def calibration_value(key: str, value, sign: str = "%") -> str:
    """ECE in percent (as the accuracies), NLL and Brier as they are."""
    return f"{percent(value)}{sign}" if key == "ece" else f"{value:.4f}"


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
             f"classes, {len(folds)} folds; best epoch selected on: {selection}", ""]
    total = sum(m.get("n", 0) for m in folds.values())
    if categorical_keys(folds):
        lines += [f"| test {results.get('fold_unit', 'session')} | utterances | WA (%) | UA (%) | macro-F1 (%) |",
                  "|---|---:|---:|---:|---:|"]
        for session, m in folds.items():
            lines.append(f"| {session} | {m.get('n', '')} | " + " | ".join(percent(m[k]) for k in METRIC_KEYS) + " |")
        for row, values, n in (("mean", results["mean"], total or ""), ("std", results["std"], "")):
            lines.append(f"| {row} | {n} | " + " | ".join(percent(values[k]) for k in METRIC_KEYS) + " |")
        lines.append("")
    return "\n".join(lines + [*attribute_lines(results, total), *type_lines(results), *calibration_lines(results),
                              *transcript_lines(results.get("transcripts")), LEGEND]) + "\n"


def attribute_lines(results: dict, total) -> list[str]:
    """The attributes' CCC, Pearson and MSE per fold, mean and std (--task dimensional or both)."""
    folds = results["folds"]
    keys = attribute_keys(folds)
    if not keys:
        return []
    header = " | ".join(key.replace("_", " ") for key in keys)
    lines = [f"Attributes: CCC and Pearson, and MSE in the corpus's units{attribute_scale(folds)}:", "",
             f"| test {results.get('fold_unit', 'session')} | utterances | {header} |",
             "|---|---:|" + "---:|" * len(keys)]
    for session, m in folds.items():
        lines.append(f"| {session} | {m.get('n', '')} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    for row, values, n in (("mean", results["mean"], total or ""), ("std", results["std"], "")):
        lines.append(f"| {row} | {n} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |")
    return lines + [""]


def attribute_scale(folds: dict) -> str:
    """' (rating scale 1-5)': the corpus's scale the folds recorded; '' where none did."""
    scales = sorted({tuple(m["attribute_range"]) for m in folds.values() if m.get("attribute_range")})
    return " (rating scale " + ", ".join(f"{low:g}-{high:g}" for low, high in scales) + ")" if scales else ""


def calibration_lines(results: dict) -> list[str]:
    """ECE, NLL and Brier per fold, mean ± std and pooled; with temperatures, beside those of the
    plain softmax. None for results of older code."""
    calibration = results.get("calibration")
    if not calibration or not results.get("pooled"):
        return []
    before = calibration.get("uncalibrated")
    heads = ["ECE (%)", "NLL", "Brier"]
    header = f"| test {results.get('fold_unit', 'session')} | utterances | " + (
        "temperature | " + " | ".join(heads) + " | " + " | ".join(f"{h} before" for h in heads) if before
        else " | ".join(heads)) + " |"
    lines = [(f"Calibration of the test probabilities, {calibration['method']}; 'before': the plain softmax. The "
              "predicted classes, hence WA and UA, are the same." if before else
              "Calibration of the test probabilities (the plain softmax):"), "",
             header, "|---|" + "---:|" * (header.count("|") - 2)]

    def cells(values: dict, spread: dict | None = None) -> list[str]:
        return [calibration_value(k, values[k], "") + (f" ± {calibration_value(k, spread[k], '')}" if spread else "")
                for k in CALIBRATION_KEYS]

    for fold, m in results["folds"].items():
        extra = [f"{m.get('temperature', 1.0):.3f}", *cells(m), *cells(m.get("uncalibrated") or m)] if before \
            else cells(m)
        lines.append(f"| {fold} | {m.get('n', '')} | " + " | ".join(extra) + " |")
    mean, std = results["mean"], results["std"]
    summary = [*cells(mean, std), *cells(before["mean"], before["std"])] if before else cells(mean, std)
    lines.append("| mean ± std | | " + ("| " if before else "") + " | ".join(summary) + " |")
    pooled_cells = [*cells(results["pooled"]), *cells(before["pooled"])] if before else cells(results["pooled"])
    lines.append(f"| pooled | {results['pooled']['n']} | " + ("| " if before else "") + " | ".join(pooled_cells)
                 + " |")
    return lines + ["", CALIBRATION_LEGEND, ""]


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


def write_reliability(run_dir: Path, fold_metrics: dict, name: str, unit: str = "session") -> None:
    """reliability_diagram.png: accuracy against confidence in ECE's 15 bins, pooled over the
    folds (with temperatures: the plain softmax beside the scaled one); none for results without
    the bins (older code), and then an older picture is removed."""
    path = run_dir / RELIABILITY
    now = pooled_calibration(fold_metrics)
    if now is None:
        path.unlink(missing_ok=True)
        return
    panels = [("temperature-scaled" if calibrated(fold_metrics) else "plain softmax", now)]
    if calibrated(fold_metrics):
        panels.insert(0, ("plain softmax (before)", pooled_calibration(fold_metrics, "uncalibrated")))
    folds = ", ".join(str(s) for s, _ in in_order(fold_metrics))
    plot_reliability(panels, path, title=f"{name}: pooled over test {unit}s {folds} (n={now['n']})")


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

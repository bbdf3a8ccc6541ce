"""Emotion metrics, named as in the field: WA = overall accuracy, UA = mean of the
per-class recalls, macro-F1, and the confusion matrix (rows = true class)."""
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from training.calibration import CALIBRATION_KEYS


def emotion_metrics(y_true, y_pred, num_classes: int = 4) -> dict:
    """UA over the classes present in y_true, macro-F1 over those in y_true or y_pred
    (scikit-learn's conventions; a real fold always holds every class); the confusion matrix
    over all num_classes classes (4 for IEMOCAP)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = sorted(set(y_true.tolist()))
    return {
        "wa": float(accuracy_score(y_true, y_pred)),
        "ua": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "confusion": confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist(),
        "n": int(len(y_true)),
    }


def summarize_folds(fold_metrics: dict) -> tuple[dict, dict]:
    """Mean and (population) std over folds of wa, ua and macro_f1, and of ece, nll and brier
    where every fold has them (results of older code have not)."""
    keys = ("wa", "ua", "macro_f1") + tuple(key for key in CALIBRATION_KEYS
                                            if fold_metrics and all(key in m for m in fold_metrics.values()))
    values = {k: np.array([m[k] for m in fold_metrics.values()]) for k in keys}
    return ({k: float(v.mean()) for k, v in values.items()},
            {k: float(v.std()) for k, v in values.items()})


def metrics_by_group(groups, y_true, y_pred, num_classes: int = 4) -> dict:
    """emotion_metrics of each group's utterances ({group: metrics}, groups in sorted order),
    e.g. IEMOCAP's improvised and scripted test utterances."""
    groups, y_true, y_pred = np.asarray(groups), np.asarray(y_true), np.asarray(y_pred)
    return {str(g): emotion_metrics(y_true[groups == g], y_pred[groups == g], num_classes)
            for g in sorted(set(groups.tolist()))}


def summarize_by_type(fold_metrics: dict) -> dict:
    """{type: {"mean": ..., "std": ..., "n": ...}} over the folds whose metrics are broken down by
    utterance type (IEMOCAP's impro / script); {} when none is."""
    types = sorted({t for m in fold_metrics.values() for t in m.get("by_type", {})})
    summary = {}
    for kind in types:
        folds = {f: m["by_type"][kind] for f, m in fold_metrics.items() if kind in m.get("by_type", {})}
        mean, std = summarize_folds(folds)
        summary[kind] = {"mean": mean, "std": std, "n": int(sum(m.get("n", 0) for m in folds.values())),
                         "folds": len(folds)}
    return summary

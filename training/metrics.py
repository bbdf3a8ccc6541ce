"""Emotion metrics, named as in the field: WA = overall accuracy, UA = mean of the
per-class recalls, macro-F1, and the confusion matrix (rows = true class); for dimensional
emotion, CCC, Pearson and MSE of each attribute (attribute_metrics)."""
import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from models.settings import ATTRIBUTES
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


def attribute_keys(fold_metrics: dict) -> tuple[str, ...]:
    """The attribute metrics every fold has (ccc_<attribute>, pearson_..., mse_..., ccc_mean; a
    run with --task dimensional or both), in ATTRIBUTES order; () for a categorical run."""
    keys = [f"{stat}_{name}" for stat in ("ccc", "pearson", "mse") for name in ATTRIBUTES] + ["ccc_mean"]
    return tuple(key for key in keys if fold_metrics and all(key in m for m in fold_metrics.values()))


def categorical_keys(fold_metrics: dict) -> tuple[str, ...]:
    """wa, ua and macro_f1, unless the folds predict no class (--task dimensional)."""
    keys = ("wa", "ua", "macro_f1")
    return keys if not fold_metrics or all("ua" in m for m in fold_metrics.values()) else ()


def summarize_folds(fold_metrics: dict) -> tuple[dict, dict]:
    """Mean and (population) std over folds of wa, ua and macro_f1 (not under --task
    dimensional), of ece, nll and brier where every fold has them (results of older code have
    not), and of the attribute metrics where every fold has them."""
    keys = categorical_keys(fold_metrics) + tuple(key for key in CALIBRATION_KEYS
                                                  if fold_metrics and all(key in m for m in fold_metrics.values()))
    keys += attribute_keys(fold_metrics)
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


def attribute_metrics(true: dict, pred: dict) -> dict:
    """Dimensional-emotion metrics of each attribute in `true` ({name: ratings}, NaN where a
    rating is missing; `pred` the predictions under the same names, on the same scale):
    ccc_<name> (Lin's concordance correlation coefficient, population moments), pearson_<name>,
    mse_<name> and n_<name> (rows scored) over the rows with a rating, and ccc_mean over the
    attributes that have one. A statistic that is undefined (no row; Pearson of a constant) is NaN."""
    missing = [name for name in true if name not in pred]
    if missing:
        raise ValueError(f"no predictions of {', '.join(missing)} (predicted: {', '.join(pred) or 'nothing'}): "
                         "predict every rated attribute, under the ratings' names")
    metrics, cccs = {}, []
    for name, ratings in true.items():
        t = np.asarray(ratings, dtype=np.float64)
        p = np.asarray(pred[name], dtype=np.float64)
        if t.shape != p.shape:
            raise ValueError(f"{name}: predictions of shape {p.shape} for ratings of shape {t.shape}")
        rated = ~np.isnan(t)
        t, p = t[rated], p[rated]
        metrics.update({f"ccc_{name}": _ccc(t, p), f"pearson_{name}": _pearson(t, p),
                        f"mse_{name}": float(np.mean((p - t) ** 2)) if len(t) else float("nan"), f"n_{name}": int(len(t))})
        if len(t):
            cccs.append(metrics[f"ccc_{name}"])
    metrics["ccc_mean"] = float(np.mean(cccs)) if cccs else float("nan")
    return metrics


def _ccc(t: np.ndarray, p: np.ndarray) -> float:
    if not len(t):
        return float("nan")
    denominator = t.var() + p.var() + (t.mean() - p.mean()) ** 2
    covariance = np.mean((t - t.mean()) * (p - p.mean()))
    return float(2 * covariance / denominator) if denominator > 0 else float("nan")


def _pearson(t: np.ndarray, p: np.ndarray) -> float:
    if len(t) < 2 or t.std() == 0 or p.std() == 0:
        return float("nan")
    return float(np.corrcoef(t, p)[0, 1])

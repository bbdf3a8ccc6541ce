"""How well a run's probabilities are calibrated, and temperature scaling (--calibrate dev):
ECE (15 equal-width bins on the top probability), NLL and the multi-class Brier score of the
test predictions, per fold and pooled over folds; one temperature per fold fitted on its dev
split's logits (docs/CALIBRATION.md). numpy and scipy only: the comparison CLI reads reports
without torch."""
import logging
import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

log = logging.getLogger("mmer")
ECE_BINS = 15
CALIBRATION_KEYS = ("ece", "nll", "brier")
# NLL reads a probability below this as this (float64's eps, as scikit-learn's log_loss clips):
# a true class given probability 0 costs 36 nats rather than infinity.
PROBABILITY_FLOOR = float(np.finfo(np.float64).eps)
# The temperatures searched (T < 1 sharpens, T > 1 softens); a fit at either end is said.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def one_hot(y_true, num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[np.asarray(y_true, dtype=int)]


def reliability_bins(y_true, probs, bins: int = ECE_BINS) -> dict:
    """The top probability (confidence) of each utterance binned into `bins` equal-width bins of
    (0, 1], bin b holding (b/bins, (b+1)/bins]: per bin the utterances, the sum of their
    confidences and how many were right. Sums, so the bins of several folds add up."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == np.asarray(y_true, dtype=int)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return {"count": np.bincount(which, minlength=bins).tolist(),
            "confidence": np.bincount(which, weights=confidence, minlength=bins).tolist(),
            "correct": np.bincount(which, weights=correct, minlength=bins).astype(int).tolist()}


def ece_of_bins(bins: dict) -> float:
    """sum over bins of |confidences - right answers| / utterances: the count-weighted gap
    between each bin's mean confidence and its accuracy."""
    total = sum(bins["count"])
    gaps = np.abs(np.asarray(bins["confidence"], dtype=np.float64) - np.asarray(bins["correct"], dtype=np.float64))
    return float(gaps.sum() / total) if total else math.nan


def expected_calibration_error(y_true, probs, bins: int = ECE_BINS) -> float:
    return ece_of_bins(reliability_bins(y_true, probs, bins))


def negative_log_likelihood(y_true, probs) -> float:
    """Mean over utterances of -ln p(true class), in nats."""
    probs = np.asarray(probs, dtype=np.float64)
    p_true = probs[np.arange(len(probs)), np.asarray(y_true, dtype=int)]
    return float(-np.log(np.maximum(p_true, PROBABILITY_FLOOR)).mean())


def brier_score(y_true, probs) -> float:
    """The multi-class Brier score: mean over utterances of sum over classes of (p - one-hot)^2
    (0 is perfect, 2 the worst; scikit-learn's brier_score_loss of several classes)."""
    probs = np.asarray(probs, dtype=np.float64)
    return float(((probs - one_hot(y_true, probs.shape[1])) ** 2).sum(axis=1).mean())


def calibration_metrics(y_true, probs, bins: int = ECE_BINS) -> dict:
    """ECE, NLL and Brier of one set of predictions, with the reliability bins that pool them."""
    reliability = reliability_bins(y_true, probs, bins)
    return {"ece": ece_of_bins(reliability), "nll": negative_log_likelihood(y_true, probs),
            "brier": brier_score(y_true, probs), "reliability": reliability}


def pooled_calibration(fold_metrics: dict, which: str | None = None) -> dict | None:
    """ECE, NLL and Brier over every test utterance of every fold, from each fold's metrics
    (NLL and Brier: means weighted by the folds' utterances; ECE: from the summed bins).
    which='uncalibrated': of the probabilities before temperature scaling (a fold without a
    temperature counts as it is). None when a fold lacks them (results of older code)."""
    parts = []
    for metrics in fold_metrics.values():
        part = metrics.get(which) if which and metrics.get(which) else metrics
        if not all(key in part for key in (*CALIBRATION_KEYS, "reliability")) or not metrics.get("n"):
            return None
        parts.append((metrics["n"], part))
    if not parts:
        return None
    n = sum(count for count, _ in parts)
    bins = {key: np.sum([part["reliability"][key] for _, part in parts], axis=0).tolist()
            for key in ("count", "confidence", "correct")}
    return {"n": int(n), "ece": ece_of_bins(bins),
            **{key: float(sum(count * part[key] for count, part in parts) / n) for key in ("nll", "brier")},
            "reliability": bins}


def calibrated(fold_metrics: dict) -> bool:
    """Whether any fold's checkpoint was calibrated (its metrics hold the plain softmax's beside)."""
    return any(m.get("uncalibrated") for m in fold_metrics.values())


def summary_values(summary: dict | None) -> dict | None:
    """A pooled summary without its reliability bins (what results.json and the tables show)."""
    return None if summary is None else {key: value for key, value in summary.items() if key != "reliability"}


def calibration_summary(fold_metrics: dict) -> dict:
    """results.json's `calibration`: how the probabilities were made and, where folds were
    calibrated, each fold's temperature and the plain softmax's ECE, NLL and Brier (pooled,
    mean and population std over folds); {} for results without calibration metrics."""
    if pooled_calibration(fold_metrics) is None:
        return {}
    summary = {"method": "none (the plain softmax)", "ece_bins": ECE_BINS}
    if not calibrated(fold_metrics):
        return summary
    fitted_on = sorted({str((m.get("calibration") or {}).get("fitted_on", "?")) for m in fold_metrics.values()
                        if m.get("calibration")})
    before = {key: np.array([(m.get("uncalibrated") or m)[key] for m in fold_metrics.values()])
              for key in CALIBRATION_KEYS}
    return {**summary,
            "method": f"temperature scaling: softmax(logits / T), one T per fold fitted on its {'/'.join(fitted_on)} "
                      "split (minimum NLL)",
            "temperatures": {str(fold): float(m.get("temperature", 1.0)) for fold, m in fold_metrics.items()},
            "uncalibrated": {"pooled": summary_values(pooled_calibration(fold_metrics, "uncalibrated")),
                             "mean": {key: float(v.mean()) for key, v in before.items()},
                             "std": {key: float(v.std()) for key, v in before.items()}}}


# ---------------------------------------------------------------- temperature scaling
def nll_of_logits(logits, labels, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / T), exact from the logits (no floor), in nats."""
    logits = np.asarray(logits, dtype=np.float64)
    scores = log_softmax(logits / temperature, axis=1)
    return float(-scores[np.arange(len(scores)), np.asarray(labels, dtype=int)].mean())


def fit_temperature(logits, labels, bounds=TEMPERATURE_BOUNDS) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) (Guo et al., 2017), searched over
    log T within `bounds` (the NLL is convex in 1/T, so the search finds its one minimum);
    T = 1 where nothing fits better. Dividing by T > 0 keeps every row's order: the argmax,
    hence WA and UA, never changes."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=int)
    if not len(logits):
        raise ValueError("no utterances to fit a temperature on")
    low, high = np.log(bounds[0]), np.log(bounds[1])
    fit = minimize_scalar(lambda log_t: nll_of_logits(logits, labels, math.exp(log_t)), bounds=(low, high),
                          method="bounded", options={"xatol": 1e-5})
    temperature = float(math.exp(fit.x))
    if nll_of_logits(logits, labels, temperature) >= nll_of_logits(logits, labels, 1.0):
        return 1.0
    if min(abs(fit.x - low), abs(fit.x - high)) < 1e-3:
        log.warning("the fitted temperature %.3g is at the end of the range searched %s: the dev split's NLL falls "
                    "still further beyond it (a small or perfectly separated dev split?)", temperature, bounds)
    return temperature


def temperature_record(logits, labels, split: str = "dev") -> dict:
    """What a checkpoint stores of its calibration: the temperature, where it was fitted, on how
    many utterances, and that split's NLL before and after."""
    temperature = fit_temperature(logits, labels)
    return {"temperature": temperature, "fitted_on": split, "utterances": int(len(labels)),
            "nll_before": nll_of_logits(logits, labels), "nll_after": nll_of_logits(logits, labels, temperature)}

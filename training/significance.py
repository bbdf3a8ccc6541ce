"""Is a difference between runs real? Bootstrap intervals and paired permutation tests over the
test utterances of finished runs (their <fold>_predictions.csv), and Welch's t-test over seeds;
docs/SIGNIFICANCE.md says what each figure means. compare.py --paired writes significance.csv/.md;
training/comparison.py adds each run's intervals and the seed-level test."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from models.errors import MMERError
from training.report import METRIC_KEYS, METRIC_NAMES

COLUMNS = ["run_a", "run_b", "metric", "difference", "ci_low", "ci_high", "p_value"]
LEVEL = 0.05          # p below it: "evidence of a difference"
MIN_SEEDS = 3         # seeds of each configuration a seed-level test needs
BATCH = 100           # resamples per vectorised call: memory ~ BATCH x utterances
NAMES = {**METRIC_NAMES, "mean_ccc": "mean CCC"}


class SignificanceError(MMERError, ValueError):
    """Runs whose predictions cannot be compared utterance by utterance."""


# ---------------------------------------------------------------- metrics of many resamples at once
def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts [..., K, K] (rows = true class) over the last axis; leading axes are resamples."""
    y_true, y_pred = np.broadcast_arrays(np.asarray(y_true), np.asarray(y_pred))
    lead = y_true.shape[:-1]
    rows = int(np.prod(lead))
    codes = (np.arange(rows)[:, None] * num_classes + y_true.reshape(rows, -1)) * num_classes + y_pred.reshape(rows, -1)
    counts = np.bincount(codes.ravel(), minlength=rows * num_classes * num_classes)
    return counts.reshape(*lead, num_classes, num_classes)


def class_scores(y_true, y_pred, num_classes: int) -> dict:
    """WA, UA and macro-F1 (fractions) over the last axis, with training/metrics.py's conventions:
    UA over the classes present in y_true, macro-F1 over those in y_true or y_pred."""
    counts = confusion(y_true, y_pred, num_classes)
    true_n, pred_n = counts.sum(-1), counts.sum(-2)
    hits = np.diagonal(counts, axis1=-2, axis2=-1)
    present, seen = true_n > 0, (true_n > 0) | (pred_n > 0)
    recall = np.divide(hits, true_n, out=np.zeros(hits.shape), where=present)
    f1 = np.divide(2 * hits, true_n + pred_n, out=np.zeros(hits.shape), where=seen)
    return {"wa": hits.sum(-1) / true_n.sum(-1), "ua": recall.sum(-1) / present.sum(-1),
            "macro_f1": f1.sum(-1) / seen.sum(-1)}


def mean_ccc(truth, pred) -> np.ndarray:
    """Lin's concordance correlation over the utterance axis (-2), averaged over the attributes (-1)."""
    mean_t, mean_p = truth.mean(-2), pred.mean(-2)
    covariance = ((truth - mean_t[..., None, :]) * (pred - mean_p[..., None, :])).mean(-2)
    ccc = 2 * covariance / (truth.var(-2) + pred.var(-2) + (mean_t - mean_p) ** 2)
    return ccc.mean(-1)


# ---------------------------------------------------------------- a run's predictions
@dataclass
class Predictions:
    """One run's test predictions over all its folds, one entry per utterance."""
    run_dir: Path
    names: np.ndarray
    folds: np.ndarray
    true: np.ndarray          # class names
    predicted: np.ndarray
    attributes: dict          # {attribute: (true values, predicted values)}: true_<a>/pred_<a> columns

    def codes(self, classes) -> tuple[np.ndarray, np.ndarray]:
        index = {name: i for i, name in enumerate(classes)}
        return np.array([index[c] for c in self.true]), np.array([index[c] for c in self.predicted])


def read_predictions(run_dir, results: dict) -> Predictions:
    """The <fold>_predictions.csv of every fold results.json lists, checked against the fold's
    recorded metrics (a stale file from another evaluation would compare the wrong thing)."""
    run_dir, frames = Path(run_dir), []
    for fold, record in results["folds"].items():
        path = run_dir / f"{fold}_predictions.csv"
        if not path.is_file():
            raise SignificanceError(f"{path}: missing; run.py writes one per finished fold. Evaluate the fold's "
                                    f"checkpoint again (run.py --eval_only --checkpoint_dir {run_dir}) to write it")
        frame = pd.read_csv(path, dtype={"FileName": str, "true_label": str, "predicted_label": str})
        missing = {"FileName", "true_label", "predicted_label"} - set(frame.columns)
        if missing:
            raise SignificanceError(f"{path}: lacks the column(s) {', '.join(sorted(missing))}; "
                                    "not a predictions file written by run.py")
        check_against_results(path, frame, record)
        frames.append(frame.assign(fold=str(fold)))
    frame = pd.concat(frames, ignore_index=True)
    attributes = sorted(c[len("pred_"):] for c in frame.columns
                        if c.startswith("pred_") and f"true_{c[len('pred_'):]}" in frame.columns)
    return Predictions(run_dir, frame["FileName"].to_numpy(), frame["fold"].to_numpy(),
                       frame["true_label"].to_numpy(), frame["predicted_label"].to_numpy(),
                       {a: (frame[f"true_{a}"].to_numpy(float), frame[f"pred_{a}"].to_numpy(float))
                        for a in attributes})


def check_against_results(path: Path, frame: pd.DataFrame, record: dict) -> None:
    classes = sorted(set(frame["true_label"]) | set(frame["predicted_label"]))
    index = {name: i for i, name in enumerate(classes)}
    scores = class_scores(frame["true_label"].map(index).to_numpy(), frame["predicted_label"].map(index).to_numpy(),
                          len(classes))
    for key in METRIC_KEYS:
        if key in record and abs(float(scores[key]) - record[key]) > 1e-6:
            raise SignificanceError(f"{path}: its predictions give {NAMES[key]} {100 * scores[key]:.2f} % but "
                                    f"results.json records {100 * record[key]:.2f} % for this fold; they come from "
                                    "different evaluations. Evaluate the fold again to write both")


# ---------------------------------------------------------------- one run's intervals
def run_intervals(preds: Predictions, resamples: int, seed: int) -> dict:
    """95 % percentile-bootstrap intervals (percent) of the mean over folds of WA, UA and macro-F1,
    the figure comparison.md shows: utterances resampled within each fold, each fold keeping its size."""
    classes = sorted(set(preds.true) | set(preds.predicted))
    truth, guess = preds.codes(classes)
    folds = tuple(np.flatnonzero(preds.folds == f) for f in dict.fromkeys(preds.folds))
    if min(len(f) for f in folds) < 2:
        raise SignificanceError(f"{preds.run_dir}: a fold with fewer than 2 test utterances has no bootstrap interval")

    def fold_mean(*samples, axis=-1):  # samples: each fold's resampled utterance indices [batch, n_fold]
        per_fold = [class_scores(truth[s], guess[s], len(classes)) for s in samples]
        return np.stack([np.mean([scores[key] for scores in per_fold], axis=0) for key in METRIC_KEYS])

    result = stats.bootstrap(folds, fold_mean, n_resamples=resamples, method="percentile", vectorized=True,
                             axis=-1, batch=BATCH, rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return {**{f"{key}_ci_low": 100 * float(low) for key, low in zip(METRIC_KEYS, interval.low)},
            **{f"{key}_ci_high": 100 * float(high) for key, high in zip(METRIC_KEYS, interval.high)}}


# ---------------------------------------------------------------- two runs, utterance by utterance
@dataclass
class Pair:
    """Two runs' predictions of the same utterances, in one order (sorted by name)."""
    names: np.ndarray
    truth: np.ndarray         # class indices [n]
    first: np.ndarray         # run a's predicted class indices [n]
    second: np.ndarray        # run b's
    num_classes: int
    attributes: tuple | None  # (truth, run a, run b), each [n, attributes]; None unless both runs have them


def align(a: Predictions, b: Predictions, label_a: str, label_b: str) -> Pair:
    """Match the two runs' utterances by name; refuse runs that did not predict the same ones."""
    for label, preds in ((label_a, a), (label_b, b)):
        names, counts = np.unique(preds.names, return_counts=True)
        if (counts > 1).any():
            raise SignificanceError(f"{label} ({preds.run_dir}): utterances predicted more than once, in several "
                                    f"folds: {', '.join(names[counts > 1][:5])}; its folds overlap")
    only_a, only_b = sorted(set(a.names) - set(b.names)), sorted(set(b.names) - set(a.names))
    if only_a or only_b:
        raise SignificanceError(
            f"{label_a} ({a.run_dir}) and {label_b} ({b.run_dir}) did not predict the same test utterances: "
            f"{len(only_a)} only in {label_a} ({', '.join(only_a[:5]) or '-'}), {len(only_b)} only in {label_b} "
            f"({', '.join(only_b[:5]) or '-'}). Compare runs tested on the same folds of the same table")
    order_a, order_b = np.argsort(a.names, kind="stable"), np.argsort(b.names, kind="stable")
    names = a.names[order_a]
    differ = names[a.true[order_a] != b.true[order_b]]
    if len(differ):
        raise SignificanceError(f"{label_a} ({a.run_dir}) and {label_b} ({b.run_dir}) give {len(differ)} utterances "
                                f"different true labels ({', '.join(differ[:5])}); were they run with different "
                                "label maps?")
    classes = sorted(set(a.true) | set(a.predicted) | set(b.predicted))
    (truth, first), (_, second) = a.codes(classes), b.codes(classes)
    common = sorted(set(a.attributes) & set(b.attributes))
    attributes = None
    if common:
        columns = [np.stack([preds.attributes[k][i][order] for k in common], axis=-1)
                   for preds, order, i in ((a, order_a, 0), (a, order_a, 1), (b, order_b, 1))]
        attributes = tuple(columns)
    return Pair(names, truth[order_a], first[order_a], second[order_b], len(classes), attributes)


def paired_test(metric, truth, first, second, resamples: int, seed: int) -> tuple:
    """metric(first) - metric(second) on the same utterances, with a 95 % percentile-bootstrap
    interval (utterances resampled, both runs' predictions together) and a two-sided paired
    permutation test (each utterance's two predictions swapped at random): (difference, low, high, p)."""
    if np.array_equal(first, second):  # nothing to resample: scipy's tests degenerate; the answer is exact
        return 0.0, 0.0, 0.0, 1.0
    n = len(truth)
    both = np.concatenate([first, second])  # index i: run a's prediction of utterance i, n + i: run b's
    everyone = np.arange(n)

    def difference(utterances, a_rows, b_rows):
        return metric(truth[utterances], both[a_rows]) - metric(truth[utterances], both[b_rows])

    observed = float(difference(everyone, everyone, everyone + n))
    boot = stats.bootstrap((everyone,), lambda i, axis: difference(i, i, i + n), n_resamples=resamples,
                           method="percentile", vectorized=True, axis=-1, batch=BATCH,
                           rng=np.random.default_rng(seed))
    perm = stats.permutation_test((everyone, everyone + n), lambda x, y, axis: difference(everyone, x, y),
                                  permutation_type="samples", n_resamples=resamples, vectorized=True, axis=-1,
                                  batch=BATCH, rng=np.random.default_rng(seed))
    interval = boot.confidence_interval
    return observed, float(interval.low), float(interval.high), float(perm.pvalue)


def pair_rows(pair: Pair, label_a: str, label_b: str, resamples: int, seed: int) -> list[dict]:
    """One row per metric: WA, UA, macro-F1 in points (percent), mean CCC (where both runs have
    attributes) as a CCC; difference = run a - run b."""
    tests = [(key, 100, lambda t, p, key=key: class_scores(t, p, pair.num_classes)[key],
              (pair.truth, pair.first, pair.second)) for key in METRIC_KEYS]
    if pair.attributes is not None:
        tests.append(("mean_ccc", 1, mean_ccc, pair.attributes))
    rows = []
    for key, scale, metric, (truth, first, second) in tests:
        difference, low, high, p = paired_test(metric, truth, first, second, resamples, seed)
        rows.append({"run_a": label_a, "run_b": label_b, "metric": key, "difference": scale * difference,
                     "ci_low": scale * low, "ci_high": scale * high, "p_value": p,
                     "value_a": scale * float(metric(truth, first)), "value_b": scale * float(metric(truth, second))})
    return rows


def later_against_earlier(count: int) -> list[tuple[int, int]]:
    """Every pair (a, b) of rows, a below b in the table: each run against those above it."""
    return [(j, i) for i in range(count) for j in range(i + 1, count)]


def significance_table(runs: list, resamples: int, seed: int) -> tuple[pd.DataFrame, int]:
    """runs: [(label, Predictions)] in the table's order (baselines first). Every pair, later run
    as run_a; -> (one row per pair and metric, with each run's own value beside the COLUMNS that
    significance.csv holds; the number of utterances compared)."""
    if len(runs) < 2:
        raise SignificanceError("--paired compares runs with one another: give two or more runs")
    rows, utterances = [], 0
    for j, i in later_against_earlier(len(runs)):
        (label_a, a), (label_b, b) = runs[j], runs[i]
        pair = align(a, b, label_a, label_b)
        utterances = len(pair.names)
        rows += pair_rows(pair, label_a, label_b, resamples, seed)
    return pd.DataFrame(rows, columns=COLUMNS + ["value_a", "value_b"]), utterances


# ---------------------------------------------------------------- in words
def verdict(p: float) -> str:
    if np.isnan(p):
        return "no test"
    return "evidence of a difference" if p < LEVEL else "no evidence of a difference"


def sentence(row) -> str:
    """'mmer α=0.1 vs unimodal_baseline: UA +0.2 points (45.0 vs 44.8), 95 % CI [-3.1, 3.4], p = 0.91: no
    evidence of a difference' (the two values where the row has them)."""
    values = ""
    if hasattr(row, "value_a"):
        values = f" ({row.value_a:.3f} vs {row.value_b:.3f})" if row.metric == "mean_ccc" else \
            f" ({row.value_a:.1f} vs {row.value_b:.1f})"
    if np.isnan(row.p_value):
        return (f"{row.run_a} vs {row.run_b}: {NAMES[row.metric]} {row.difference:+.1f} points{values}; the runs do "
                "not vary over the seeds: no test")
    if row.metric == "mean_ccc":
        amount = f"{row.difference:+.3f}{values}, 95 % CI [{row.ci_low:.3f}, {row.ci_high:.3f}]"
    else:
        amount = f"{row.difference:+.1f} points{values}, 95 % CI [{row.ci_low:.1f}, {row.ci_high:.1f}]"
    return f"{row.run_a} vs {row.run_b}: {NAMES[row.metric]} {amount}, p = {row.p_value:.3g}: {verdict(row.p_value)}"


def significance_markdown(table: pd.DataFrame, utterances: int, resamples: int, seed: int) -> str:
    lines = ["# Is the difference real?", "",
             f"Each pair of runs on the {utterances} test utterances both predicted, pooled over their folds. "
             "Difference = the first run minus the second, in points (percent) of WA, UA and macro-F1 computed on "
             "all those utterances at once (it can differ a little from the difference of the means over folds in "
             "comparison.md); mean CCC as a CCC. 95 % CI: percentile bootstrap over the utterances "
             f"({resamples} resamples, seed {seed}). p: two-sided paired permutation test, each utterance's two "
             f"predictions swapped at random ({resamples} permutations; p cannot fall below 2 / ({resamples} + 1) = "
             f"{2 / (resamples + 1):.2g} unless there are fewer possible swaps). p < {LEVEL} is called evidence of a "
             f"difference, p ≥ {LEVEL} no evidence; the {len(table)} p-values are not corrected for multiple "
             "comparisons (docs/SIGNIFICANCE.md).", ""]
    for (_, _), rows in table.groupby(["run_a", "run_b"], sort=False):
        lines += [f"- {sentence(r)}" for r in rows.itertuples()] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------- over seeds
def seed_tests(groups: dict) -> pd.DataFrame:
    """Welch's t-test between configurations on their runs' means over folds (percent), for every
    pair of configurations with MIN_SEEDS or more seeds each: groups = {configuration: frame of
    its runs with wa/ua/macro_f1 columns}, in the table's order."""
    names, rows = list(groups), []
    for j, i in later_against_earlier(len(names)):
        a, b = groups[names[j]], groups[names[i]]
        if min(len(a), len(b)) < MIN_SEEDS:
            continue
        for key in METRIC_KEYS:
            difference = float(a[key].mean() - b[key].mean())
            if a[key].std() == 0 and b[key].std() == 0:  # no spread: Welch's statistic is undefined
                low = high = p = float("nan")
            else:
                test = stats.ttest_ind(a[key], b[key], equal_var=False)
                low, high = test.confidence_interval(1 - LEVEL)
                p = float(test.pvalue)
            rows.append({"run_a": names[j], "run_b": names[i], "metric": key, "difference": difference,
                         "ci_low": float(low), "ci_high": float(high), "p_value": p,
                         "seeds_a": len(a), "seeds_b": len(b)})
    return pd.DataFrame(rows, columns=COLUMNS + ["seeds_a", "seeds_b"])


def seeds_section(table: pd.DataFrame, counts: dict) -> str:
    """seeds.md's words on the seed-level tests, and on the pairs that have too few seeds for one."""
    lines = ["", "## Is the difference real? Over the seeds", "",
             "Welch's t-test (scipy.stats.ttest_ind, equal_var=False) on each run's mean over its folds, between two "
             f"configurations with {MIN_SEEDS} or more seeds each; difference = the first minus the second in points, "
             f"95 % CI of the difference of the means. p < {LEVEL}: evidence of a difference; not corrected for "
             "multiple comparisons. The utterance-level test between runs: compare.py --paired (significance.md).", ""]
    lines += [f"- {sentence(r)} ({r.seeds_a} and {r.seeds_b} seeds)" for r in table.itertuples()]
    names = list(counts)
    for j, i in later_against_earlier(len(names)):
        few = [f"{names[k]}: {counts[names[k]]}" for k in (j, i) if counts[names[k]] < MIN_SEEDS]
        if few:
            lines.append(f"- {names[j]} vs {names[i]}: no seed-level test; it needs {MIN_SEEDS} or more seeds of "
                         f"each ({', '.join(few)})")
    return "\n".join(lines) + "\n"

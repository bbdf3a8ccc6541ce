"""Is a difference between runs real? compare.py --paired (significance.csv/.md), the 95 %
intervals of comparison.csv/.md and the seed-level test of --over_seeds, on run folders written
here as run.py leaves them (<fold>_predictions.csv + results.json), without training."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t
from sklearn.metrics import accuracy_score, f1_score, recall_score

from compare import main
from training.comparison import compare
from training.significance import SignificanceError, class_scores, paired_test

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["ang", "hap", "neu", "sad"]
COLUMNS = ["run_a", "run_b", "metric", "difference", "ci_low", "ci_high", "p_value"]


def sk_scores(y_true, y_pred) -> dict:
    """WA, UA, macro-F1 by scikit-learn, as training/metrics.py defines them (fractions)."""
    present = sorted(set(y_true))
    return {"wa": accuracy_score(y_true, y_pred),
            "ua": recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0),
            "macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0)}


def write_run(run_dir: Path, folds: dict, run="mmer", alpha=0.1, seed=0, attributes=None) -> Path:
    """A finished run folder: <fold>_predictions.csv (the columns training/loop.write_predictions
    writes) and results.json whose fold metrics scikit-learn computed from those predictions.
    folds: {fold: (names, true labels, predicted labels)}; attributes: {fold: {name: (true, pred)}}."""
    run_dir.mkdir(parents=True)
    fold_metrics = {}
    for fold, (names, true, predicted) in folds.items():
        frame = pd.DataFrame({"FileName": names, "true_label": true, "predicted_label": predicted})
        for name in CLASSES:
            frame[f"prob_{name}"] = np.where(frame["predicted_label"] == name, 0.7, 0.1)
        for attribute, (truth, guess) in (attributes or {}).get(fold, {}).items():
            frame[f"true_{attribute}"], frame[f"pred_{attribute}"] = truth, guess
        frame.to_csv(run_dir / f"{fold}_predictions.csv", index=False, float_format="%.6f")
        fold_metrics[str(fold)] = {**sk_scores(list(true), list(predicted)), "n": len(names)}
    values = {k: np.array([m[k] for m in fold_metrics.values()]) for k in ("wa", "ua", "macro_f1")}
    results = {"folds": fold_metrics, "mean": {k: float(v.mean()) for k, v in values.items()},
               "std": {k: float(v.std()) for k, v in values.items()}, "run": run, "alpha": alpha, "seed": seed,
               "selection": "dev split of the training sessions", "eval_only": False}
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def random_folds(seed: int, per_fold=(60, 50), accuracy=0.6) -> dict:
    """Two folds of utterances with random true labels, each predicted right with `accuracy`
    (one for all folds, or one per fold)."""
    rng = np.random.default_rng(seed)
    folds = {}
    for fold, n in enumerate(per_fold, start=1):
        right = accuracy[fold - 1] if isinstance(accuracy, tuple) else accuracy
        names = [f"Ses0{fold}F_utt{i:03d}" for i in range(n)]
        true = rng.choice(CLASSES, n)
        predicted = np.where(rng.random(n) < right, true, rng.choice(CLASSES, n))
        folds[fold] = (names, list(true), list(predicted))
    return folds


def all_wrong(folds: dict) -> dict:
    """The same utterances, each predicted as the next class after its true one."""
    return {fold: (names, true, [CLASSES[(CLASSES.index(c) + 1) % len(CLASSES)] for c in true])
            for fold, (names, true, _) in folds.items()}


def pooled(folds: dict) -> tuple[list, list]:
    return ([c for _, true, _ in folds.values() for c in true], [c for _, _, pred in folds.values() for c in pred])


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "compare.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


# ---------------------------------------------------------------- the metrics of many resamples
def test_the_resampled_metrics_are_scikit_learns_for_every_resample():
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 4, (6, 40)), rng.integers(0, 4, (6, 40))
    y_true[0] = np.where(y_true[0] == 3, 0, y_true[0])   # a class missing from the truth
    y_pred[1] = np.where(y_pred[1] == 2, 1, y_pred[1])   # a class never predicted
    y_pred[2] = y_true[2]                                # all right
    scores = class_scores(y_true, y_pred, 4)
    for row in range(6):
        expected = sk_scores(list(y_true[row]), list(y_pred[row]))
        for key, value in expected.items():
            assert scores[key][row] == pytest.approx(value, abs=1e-12), (key, row)


# ---------------------------------------------------------------- the three tests
def test_a_run_against_an_identical_copy_differs_by_zero_with_p_one(tmp_path):
    folds = random_folds(0)
    write_run(tmp_path / "a" / "mmer", folds)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for shuffle, copy in enumerate("ab"):  # the same rows, in another order in each copy
        for path in (tmp_path / copy / "mmer").glob("*_predictions.csv"):
            pd.read_csv(path).sample(frac=1, random_state=shuffle).to_csv(path, index=False)
    compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out", paired=True, resamples=200)
    table = pd.read_csv(tmp_path / "out" / "significance.csv")
    assert list(table["metric"]) == ["wa", "ua", "macro_f1"]
    assert (table[["difference", "ci_low", "ci_high"]] == 0).all().all()
    assert (table["p_value"] == 1).all()
    text = (tmp_path / "out" / "significance.md").read_text()
    assert "mmer α=0.1 [b] vs mmer α=0.1 [a]: UA +0.0 points" in text and "p = 1: no evidence of a difference" in text


def test_a_copy_whose_predictions_are_all_wrong_differs_with_p_below_one_percent(tmp_path):
    folds = random_folds(1)
    write_run(tmp_path / "right" / "mmer", folds)
    write_run(tmp_path / "wrong" / "mmer", all_wrong(folds))
    compare([tmp_path / "right", tmp_path / "wrong"], tmp_path / "out", paired=True, resamples=500, seed=3)
    table = pd.read_csv(tmp_path / "out" / "significance.csv").set_index("metric")
    assert set(table["run_a"]) == {"mmer α=0.1 [wrong]"} and set(table["run_b"]) == {"mmer α=0.1 [right]"}
    expected = sk_scores(*pooled(folds))   # the wrong copy scores 0 on every metric
    for key in ("wa", "ua", "macro_f1"):
        assert table.loc[key, "difference"] == pytest.approx(-100 * expected[key], abs=1e-3)
        assert table.loc[key, "ci_high"] < 0
        assert table.loc[key, "p_value"] < 0.01
    assert re.search(r"WA -\d+\.\d points \(0\.0 vs \d+\.\d\), 95 % CI \[-\d+\.\d, -\d+\.\d\], p = 0\.00\d+: "
                     "evidence of a difference", (tmp_path / "out" / "significance.md").read_text())


@pytest.mark.parametrize("seed", range(6))
def test_every_interval_holds_its_difference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 300))
    truth = rng.integers(0, 4, n)
    first = np.where(rng.random(n) < rng.uniform(0.3, 0.8), truth, rng.integers(0, 4, n))
    second = np.where(rng.random(n) < rng.uniform(0.3, 0.8), truth, rng.integers(0, 4, n))
    for key in ("wa", "ua", "macro_f1"):
        difference, low, high, p = paired_test(lambda t, p, key=key: class_scores(t, p, 4)[key], truth, first,
                                               second, 300, seed)
        expected = sk_scores(list(truth), list(first))[key] - sk_scores(list(truth), list(second))[key]
        assert difference == pytest.approx(expected, abs=1e-12)
        assert low <= difference <= high and low < high, (key, low, difference, high)
        assert 0 < p <= 1


def test_each_runs_interval_in_the_table_holds_its_mean_over_folds(tmp_path):
    # folds far apart: an interval of one fold's score, or of the pooled score, would miss the mean
    for i, (name, accuracy) in enumerate((("low", (0.2, 0.7)), ("high", (0.9, 0.4)))):
        write_run(tmp_path / name / "mmer", random_folds(10 + i, per_fold=(150, 40), accuracy=accuracy))
    frame = compare([tmp_path / "low", tmp_path / "high"], tmp_path / "out", resamples=300)
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    for key in ("wa", "ua", "macro_f1"):
        assert (table[f"{key}_ci_low"] < table[key]).all() and (table[key] < table[f"{key}_ci_high"]).all()
        assert (table[f"{key}_ci_high"] - table[f"{key}_ci_low"] < 40).all()
    text = (tmp_path / "out" / "comparison.md").read_text()
    row = frame.set_index("label").loc["mmer α=0.1 [high]"]
    ua = f"{row['ua']:.2f} ± {row['ua_std']:.2f} [{row['ua_ci_low']:.1f}, {row['ua_ci_high']:.1f}]"
    assert f"| {ua} |" in text or f"| **{ua}** |" in text
    assert "95 % percentile-bootstrap interval of the mean over the folds" in text


# ---------------------------------------------------------------- a case computed by hand
def hand_runs(tmp_path: Path) -> None:
    """10 utterances; run a is wrong on 1, run b on 5 (the same one and 4 more): WA 90 % vs 50 %."""
    names = [f"u{i}" for i in range(10)]
    true = ["ang", "ang", "hap", "hap", "neu", "neu", "neu", "sad", "sad", "sad"]
    run_a = ["ang", "ang", "hap", "hap", "neu", "neu", "neu", "sad", "sad", "neu"]
    run_b = ["ang", "hap", "hap", "ang", "neu", "sad", "neu", "sad", "neu", "neu"]
    write_run(tmp_path / "a" / "mmer", {1: (names[:5], true[:5], run_a[:5]), 2: (names[5:], true[5:], run_a[5:])})
    write_run(tmp_path / "b" / "unimodal_baseline",
              {1: (names[:5], true[:5], run_b[:5]), 2: (names[5:], true[5:], run_b[5:])}, run="unimodal_baseline")


def test_a_case_computed_by_hand(tmp_path):
    hand_runs(tmp_path)
    # 2 ** 10 = 1024 swaps: with as many resamples the permutation test is exact
    compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out", paired=True, resamples=1024)
    table = pd.read_csv(tmp_path / "out" / "significance.csv").set_index("metric")
    assert set(table["run_a"]) == {"mmer α=0.1"} and set(table["run_b"]) == {"unimodal_baseline"}
    assert table.loc["wa", "difference"] == pytest.approx(40.0)              # 9/10 - 5/10
    # UA: a: (1 + 1 + 1 + 2/3) / 4; b: (1/2 + 1/2 + 2/3 + 1/3) / 4
    assert table.loc["ua", "difference"] == pytest.approx(100 * ((11 / 3) / 4 - 2 / 4), abs=1e-3)
    # the 4 utterances only a got right each move WA by ±10 points when swapped: the null
    # distribution is 10 x (a sum of 4 random signs); P(sum >= 4) = 1/16, two-sided 2/16
    assert table.loc["wa", "p_value"] == pytest.approx(0.125)
    text = (tmp_path / "out" / "significance.md").read_text()
    assert "- mmer α=0.1 vs unimodal_baseline: WA +40.0 points (90.0 vs 50.0), 95 % CI [" in text
    assert "p = 0.125: no evidence of a difference" in text


# ---------------------------------------------------------------- refusals
def test_runs_that_predicted_different_utterances_are_refused_by_name(tmp_path):
    folds = random_folds(2)
    write_run(tmp_path / "a" / "mmer", folds)
    names, true, predicted = folds[2]
    other = {1: folds[1], 2: (names[:-1] + ["Ses05M_elsewhere"], true, predicted)}
    write_run(tmp_path / "b" / "cai_sota", other, run="cai_sota")
    done = run_cli(tmp_path / "a", tmp_path / "b", "--paired", "--out", tmp_path / "out")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "did not predict the same test utterances" in done.stderr
    assert "mmer α=0.1" in done.stderr and "cai_sota α=0.1" in done.stderr
    assert names[-1] in done.stderr and "Ses05M_elsewhere" in done.stderr
    assert not (tmp_path / "out").exists()   # refused before anything was written


def test_runs_that_give_an_utterance_another_true_label_are_refused(tmp_path):
    folds = random_folds(8)
    write_run(tmp_path / "a" / "mmer", folds)
    names, true, predicted = folds[1]
    relabelled = {1: (names, ["sad" if c == "ang" else c for c in true], predicted), 2: folds[2]}
    write_run(tmp_path / "b" / "cai_sota", relabelled, run="cai_sota")
    first = names[true.index("ang")]
    with pytest.raises(SignificanceError, match=rf"different true labels \({first}, "):
        compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out", paired=True, resamples=50)


def test_a_run_without_predictions_is_refused_by_paired_but_compared_without_intervals(tmp_path):
    write_run(tmp_path / "a" / "mmer", random_folds(4))
    write_run(tmp_path / "b" / "cai_sota", random_folds(4), run="cai_sota")
    (tmp_path / "b" / "cai_sota" / "2_predictions.csv").unlink()
    with pytest.raises(SignificanceError, match=r"cai_sota/2_predictions.csv: missing"):
        compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out", paired=True, resamples=50)
    with pytest.raises(SignificanceError, match=r"give two or more runs"):
        compare([tmp_path / "a"], tmp_path / "out", paired=True, resamples=50)
    table = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out", resamples=50).set_index("run")
    assert np.isnan(table.loc["cai_sota", "ua_ci_low"]) and not np.isnan(table.loc["mmer", "ua_ci_low"])


def test_predictions_that_disagree_with_results_json_are_refused(tmp_path):
    run_dir = write_run(tmp_path / "a" / "mmer", random_folds(5))
    write_run(tmp_path / "b" / "cai_sota", random_folds(5), run="cai_sota")
    stale = pd.read_csv(run_dir / "1_predictions.csv")
    stale["predicted_label"] = stale["true_label"]   # another evaluation's predictions
    stale.to_csv(run_dir / "1_predictions.csv", index=False)
    with pytest.raises(SignificanceError, match=r"mmer/1_predictions.csv: its predictions give WA 100.00 %"):
        compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out", paired=True, resamples=50)


# ---------------------------------------------------------------- the command line
def test_compare_paired_writes_both_files_with_the_exact_columns(tmp_path):
    folds = random_folds(6)
    write_run(tmp_path / "runs" / "unimodal_baseline", folds, run="unimodal_baseline")
    write_run(tmp_path / "runs" / "cai_sota", random_folds(6, accuracy=0.5), run="cai_sota")
    write_run(tmp_path / "runs" / "mmer", all_wrong(folds))
    done = run_cli(tmp_path / "runs", "--paired", "--resamples", 200, "--seed", 1, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "out" / "significance.csv")
    assert list(table.columns) == COLUMNS
    pairs = list(dict.fromkeys(zip(table["run_a"], table["run_b"])))
    assert pairs == [("cai_sota α=0.1", "unimodal_baseline"), ("mmer α=0.1", "unimodal_baseline"),
                     ("mmer α=0.1", "cai_sota α=0.1")]
    assert len(table) == 9
    text = (tmp_path / "out" / "significance.md").read_text()
    assert text.count("\n- ") == 9 and "200 resamples, seed 1" in text
    assert "# Is the difference real?" in done.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"comparison.csv", "comparison.md", "comparison.png",
                                                              "significance.csv", "significance.md"}
    main([str(tmp_path / "runs"), "--paired", "--resamples", "200", "--seed", "1", "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "significance.csv").read_text() == (tmp_path / "out" / "significance.csv").read_text()


# ---------------------------------------------------------------- attributes
def test_mean_ccc_is_compared_where_both_runs_have_attributes(tmp_path):
    folds = random_folds(7, per_fold=(20, 20))
    rng = np.random.default_rng(7)
    truth = {fold: rng.uniform(1, 5, len(names)) for fold, (names, _, _) in folds.items()}
    exact = {fold: {"valence": (truth[fold], truth[fold])} for fold in folds}        # CCC 1
    shifted = {fold: {"valence": (truth[fold], truth[fold] + 1.0)} for fold in folds}
    write_run(tmp_path / "a" / "mmer", folds, attributes=exact)
    write_run(tmp_path / "b" / "mmer", folds, attributes=shifted)
    compare([tmp_path / "a", tmp_path / "b"], tmp_path / "out", paired=True, resamples=200)
    table = pd.read_csv(tmp_path / "out" / "significance.csv").set_index("metric")
    values = np.concatenate([truth[1], truth[2]])
    # CCC of x against x + 1: 2 var / (2 var + 1)
    ccc_b = 2 * values.var() / (2 * values.var() + 1)
    assert table.loc["mean_ccc", "difference"] == pytest.approx(ccc_b - 1, abs=1e-4)   # b - a: b is lower
    assert table.loc["mean_ccc", "ci_low"] <= table.loc["mean_ccc", "difference"] <= table.loc["mean_ccc", "ci_high"]
    assert (table.loc[["wa", "ua", "macro_f1"], "difference"] == 0).all()
    assert "mean CCC" in (tmp_path / "out" / "significance.md").read_text()


# ---------------------------------------------------------------- over seeds
def welch(a, b) -> tuple[float, float]:
    """Welch's t-test by hand: (difference of the means, two-sided p)."""
    a, b = np.asarray(a), np.asarray(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return a.mean() - b.mean(), 2 * student_t.sf(abs(t), df)


def test_three_seeds_per_configuration_get_a_seed_level_test_and_two_do_not(tmp_path):
    accuracies = {"mmer": (0.80, 0.70, 0.75), "cai_sota": (0.55, 0.60, 0.50), "unimodal_baseline": (0.5, 0.45)}
    seed_means = {}
    for run, levels in accuracies.items():
        for seed, accuracy in enumerate(levels):
            folds = random_folds(20 + seed, accuracy=accuracy)
            write_run(tmp_path / f"seed{seed}" / run, folds, run=run, seed=seed)
            seed_means.setdefault(run, []).append(100 * np.mean([sk_scores(t, p)["ua"] for _, t, p in folds.values()]))
    compare([tmp_path], tmp_path / "out", seeds=True, resamples=50)
    table = pd.read_csv(tmp_path / "out" / "seeds_significance.csv").set_index("metric")
    assert list(table.columns[:6]) == COLUMNS[:2] + COLUMNS[3:7] and set(table["run_a"]) == {"mmer α=0.1"}
    difference, p = welch(seed_means["mmer"], seed_means["cai_sota"])
    assert table.loc["ua", "difference"] == pytest.approx(difference, abs=1e-3)
    assert table.loc["ua", "p_value"] == pytest.approx(p, abs=1e-4)
    assert table.loc["ua", "ci_low"] <= difference <= table.loc["ua", "ci_high"]
    text = (tmp_path / "out" / "seeds.md").read_text()
    assert "- mmer α=0.1 vs cai_sota α=0.1: UA " in text and "(3 and 3 seeds)" in text
    assert "- cai_sota α=0.1 vs unimodal_baseline: no seed-level test; it needs 3 or more seeds of each " \
           "(unimodal_baseline: 2)" in text

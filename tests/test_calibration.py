"""Calibration (docs/CALIBRATION.md): ECE, NLL and Brier against independent computations (a hand
calculation, scikit-learn, a numpy loop written here), pooling over folds, temperature scaling,
and a run with --calibrate dev whose temperature its checkpoint stores and predict.py, the
recognizer and the exports apply."""
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

import predict
import run
from inference.recognizer import EmotionRecognizer
from models import ModelConfig, build_model
from models.checkpoint import CheckpointError, load_checkpoint, restore_model, save_checkpoint, store_calibration
from training.calibration import (brier_score, calibration_metrics, expected_calibration_error, fit_temperature,
                                  negative_log_likelihood, pooled_calibration, reliability_bins)
from training.report import write_results

CLASSES = ["hap", "ang", "neu", "sad"]


# ---------------------------------------------------------------- independent computations
def softmax(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def ece_by_loop(y_true, probs, bins=15):
    """Guo et al.'s ECE written out: bin b holds the top probabilities in (b/bins, (b+1)/bins]."""
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        confidence, right = 0.0, 0
        for p, y in zip(probs, y_true):
            if low < max(p) <= high:
                confidence += max(p)
                right += int(np.argmax(p) == y)
        total += abs(confidence - right)
    return total / len(y_true)


def random_predictions(n, seed, classes=4):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(classes, 0.7), size=n)
    y = np.array([rng.choice(classes, p=0.5 * p + 0.5 / classes) for p in probs])   # right more often than chance
    return y, probs


# ---------------------------------------------------------------- the metrics
def test_ece_nll_and_brier_match_a_hand_calculation():
    probs = np.array([[0.7, 0.2, 0.1],      # true 0: right, top 0.7 (bin 11 of 15)
                      [0.08, 0.3, 0.62],    # true 1: wrong, top 0.62 (bin 10)
                      [0.05, 0.05, 0.9],    # true 2: right, top 0.9 (bin 14)
                      [0.2, 0.65, 0.15]])   # true 1: right, top 0.65 (bin 10)
    y = [0, 1, 2, 1]
    # bins: 10 -> |0.62 + 0.65 - 1| = 0.27; 11 -> |0.7 - 1| = 0.3; 14 -> |0.9 - 1| = 0.1; / 4 utterances
    assert expected_calibration_error(y, probs) == pytest.approx((0.27 + 0.3 + 0.1) / 4)
    assert negative_log_likelihood(y, probs) == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.9)
                                                                 + math.log(0.65)) / 4)
    # (0.3² + 0.2² + 0.1²) + (0.08² + 0.7² + 0.62²) + (0.05² + 0.05² + 0.1²) + (0.2² + 0.35² + 0.15²), / 4
    assert brier_score(y, probs) == pytest.approx((0.14 + 0.8808 + 0.015 + 0.185) / 4)


def test_a_top_probability_on_a_bin_edge_counts_in_the_bin_below():
    """Bins are (b/15, (b+1)/15]: 0.6 = 9/15 closes bin 8 (counted from 0), 1.0 closes the last."""
    bins = reliability_bins([0, 1], np.array([[0.6, 0.4], [0.0, 1.0]]))
    assert bins["count"][8] == 1 and bins["count"][14] == 1 and sum(bins["count"]) == 2


def test_ece_nll_and_brier_agree_with_scikit_learn_and_a_loop():
    y, probs = random_predictions(500, seed=1)
    metrics = calibration_metrics(y, probs)
    assert metrics["nll"] == pytest.approx(log_loss(y, probs, labels=range(4)), rel=1e-12)
    assert metrics["brier"] == pytest.approx(brier_score_loss(y, probs, labels=range(4)), rel=1e-12)
    assert metrics["ece"] == pytest.approx(ece_by_loop(y, probs), rel=1e-12)
    assert sum(metrics["reliability"]["count"]) == 500


def test_pooled_metrics_are_those_of_every_test_utterance_together():
    folds, ys, all_probs = {}, [], []
    for fold, n in (("1", 130), ("2", 70), ("3", 200)):
        y, probs = random_predictions(n, seed=int(fold))
        folds[fold] = {"n": n, **calibration_metrics(y, probs)}
        ys.append(y)
        all_probs.append(probs)
    y, probs = np.concatenate(ys), np.concatenate(all_probs)
    pooled = pooled_calibration(folds)
    assert pooled["n"] == 400
    assert pooled["ece"] == pytest.approx(ece_by_loop(y, probs), rel=1e-12)
    assert pooled["nll"] == pytest.approx(log_loss(y, probs, labels=range(4)), rel=1e-12)
    assert pooled["brier"] == pytest.approx(brier_score_loss(y, probs, labels=range(4)), rel=1e-12)
    assert pooled["ece"] != pytest.approx(np.mean([m["ece"] for m in folds.values()]), rel=1e-3)  # not a mean


@pytest.mark.parametrize("scale", [3.0, 1 / 3])
def test_temperature_scaling_lowers_the_dev_nll_and_keeps_the_argmax(scale):
    """Labels drawn from softmax(z); the model says z x scale (over- or underconfident): the
    temperature fitted on dev undoes the scale, and the test split's NLL falls with it."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 4)) * 1.5
    y = (rng.random((4000, 1)) > softmax(z).cumsum(axis=1)).sum(axis=1)   # a draw from each row's softmax
    logits = z * scale
    dev, test = slice(0, 2000), slice(2000, None)
    temperature = fit_temperature(logits[dev], y[dev])
    grid = np.geomspace(0.05, 20, 1500)
    rows = np.arange(2000)
    best = grid[np.argmin([-np.log(softmax(logits[dev], t)[rows, y[dev]]).mean() for t in grid])]
    assert temperature == pytest.approx(best, rel=0.01)
    assert temperature == pytest.approx(scale, rel=0.1)
    for split in (dev, test):
        before = log_loss(y[split], softmax(logits[split]), labels=range(4))
        after = log_loss(y[split], softmax(logits[split], temperature), labels=range(4))
        assert after < before - 0.01
    np.testing.assert_array_equal(softmax(logits, temperature).argmax(axis=1), logits.argmax(axis=1))


def test_write_results_reports_calibration_per_fold_pooled_and_before_after(tmp_path):
    folds, ys, raw, scaled = {}, [], [], []
    for fold, n in ((1, 60), (2, 90)):
        y, probs = random_predictions(n, seed=10 + fold)
        sharper = softmax(np.log(probs), 0.5)   # the same argmax, temperature 0.5
        folds[fold] = {"wa": 0.5, "ua": 0.5, "macro_f1": 0.5, "confusion": np.eye(4, dtype=int).tolist(), "n": n,
                       **calibration_metrics(y, sharper), "temperature": 0.5,
                       "uncalibrated": calibration_metrics(y, probs),
                       "calibration": {"temperature": 0.5, "fitted_on": "dev"}}
        ys.append(y)
        raw.append(probs)
        scaled.append(sharper)
    y, raw, scaled = np.concatenate(ys), np.concatenate(raw), np.concatenate(scaled)
    results = write_results(tmp_path, folds, {"run": "cai_sota", "alpha": 0.1, "selection": "dev"})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["pooled"] == results["pooled"]
    assert saved["pooled"]["ece"] == pytest.approx(ece_by_loop(y, scaled))
    assert saved["pooled"]["nll"] == pytest.approx(log_loss(y, scaled, labels=range(4)))
    before = saved["calibration"]["uncalibrated"]
    assert before["pooled"]["brier"] == pytest.approx(brier_score_loss(y, raw, labels=range(4)))
    assert saved["calibration"]["temperatures"] == {"1": 0.5, "2": 0.5}
    assert saved["mean"]["ece"] == pytest.approx(np.mean([ece_by_loop(a, b) for a, b in zip(ys, (
        scaled[:60], scaled[60:]))]))
    table = pd.read_csv(tmp_path / "results.csv").set_index("fold")
    assert list(table.index) == ["session 1", "session 2", "mean", "std", "pooled"]
    assert table.loc["pooled", "nll_uncalibrated"] == pytest.approx(log_loss(y, raw, labels=range(4)), abs=1e-4)
    assert math.isnan(table.loc["pooled", "wa"])
    markdown = (tmp_path / "results.md").read_text()
    pooled_row = next(line for line in markdown.splitlines() if line.startswith("| pooled | 150 |"))
    assert f"{100 * ece_by_loop(y, scaled):.2f}" in pooled_row and f"{100 * ece_by_loop(y, raw):.2f}" in pooled_row
    assert (tmp_path / "reliability_diagram.png").stat().st_size > 10_000


def test_results_of_older_code_get_no_calibration_and_no_diagram(tmp_path):
    (tmp_path / "reliability_diagram.png").write_bytes(b"stale")
    folds = {1: {"wa": 0.5, "ua": 0.5, "macro_f1": 0.5, "confusion": np.eye(4, dtype=int).tolist(), "n": 4}}
    results = write_results(tmp_path, folds, {"run": "cai_sota", "alpha": 0.1, "selection": "dev"})
    assert "pooled" not in results and "calibration" not in results and set(results["mean"]) == {"wa", "ua", "macro_f1"}
    assert not (tmp_path / "reliability_diagram.png").exists()
    assert list(pd.read_csv(tmp_path / "results.csv")["fold"]) == ["session 1", "mean", "std"]


# ---------------------------------------------------------------- checkpoints
def test_an_old_checkpoint_loads_with_temperature_1_and_a_stored_one_keeps_its_weights(demo, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(run="unimodal_baseline", wav2vec2=str(demo.wav2vec2_model))).eval()
    path = tmp_path / "1_model.pt"
    save_checkpoint(path, model, model_config=model.config.to_dict(), session="1", epoch=1)
    assert restore_model(path)[0].calibration_temperature == 1.0
    weights = path.read_bytes()
    store_calibration(path, {"temperature": 1.7, "fitted_on": "dev"})
    restored, payload = restore_model(path)
    assert restored.calibration_temperature == 1.7 and payload["epoch"] == 1
    for key, value in model.state_dict().items():
        assert torch.equal(payload["state_dict"][key], value), key
    assert len(weights) > 0
    with pytest.raises(CheckpointError, match="not a positive number"):
        store_calibration(path, {"temperature": -1.0})
    assert load_checkpoint(path)["calibration"]["temperature"] == 1.7   # a refused record is not written


def test_calibrate_dev_is_refused_where_there_is_no_dev_split(demo, capsys):
    for flags in ({"select_on": "test"}, {"eval_only": True, "checkpoint_dir": str(demo.root)}):
        with pytest.raises(SystemExit) as exit_:
            run.parse_args(demo.flags(calibrate="dev", **flags))
        assert exit_.value.code == 2
        assert "--calibrate dev" in capsys.readouterr().err


# ---------------------------------------------------------------- a run with --calibrate dev
@pytest.fixture(scope="module")
def calibrated(demo, tmp_path_factory):
    """cai_sota on fold 1, one step, --calibrate dev; and its checkpoint without the temperature
    (what the model's plain softmax gives, the test's reference)."""
    root = tmp_path_factory.mktemp("calibrated")
    results = run.main(demo.flags(run="cai_sota", sessions="1", epochs=1, max_steps=1, accum_grad=1, calibrate="dev",
                                  save_path=root / "runs"))
    run_dir = root / "runs" / "cai_sota"
    plain = root / "plain"
    plain.mkdir()
    payload = load_checkpoint(run_dir / "1_model.pt")
    torch.save({k: v for k, v in payload.items() if k != "calibration"}, plain / "1_model.pt")
    shutil.copy(run_dir / "config.json", plain / "config.json")
    predictions = pd.read_csv(run_dir / "1_predictions.csv")
    files = [str(demo.audio / f"{name}.wav") for name in predictions["FileName"]]
    return {"run_dir": run_dir, "plain": plain, "results": results, "predictions": predictions, "files": files,
            "temperature": payload["calibration"]["temperature"], "record": payload["calibration"]}


def probabilities_of(table: pd.DataFrame) -> np.ndarray:
    return table[[f"prob_{c}" for c in CLASSES]].to_numpy()


def test_the_checkpoint_stores_a_temperature_fitted_on_dev(calibrated):
    record = calibrated["record"]
    assert record["fitted_on"] == "dev" and record["utterances"] > 0
    assert record["temperature"] > 0 and record["temperature"] != 1.0
    assert record["nll_after"] < record["nll_before"]
    fold = calibrated["results"]["folds"]["1"]
    assert fold["temperature"] == record["temperature"] and fold["calibration"] == record


def test_the_run_reports_the_calibration_of_its_predictions_file(calibrated):
    """The predictions file holds the calibrated probabilities; results.json's ECE, NLL and Brier
    are theirs (within the file's 6 decimals), the ones before are the plain softmax's."""
    predictions, fold = calibrated["predictions"], calibrated["results"]["folds"]["1"]
    y = [CLASSES.index(label) for label in predictions["true_label"]]
    probs = probabilities_of(predictions)
    probs = probs / probs.sum(axis=1, keepdims=True)   # written with 6 decimals
    assert fold["ece"] == pytest.approx(ece_by_loop(y, probs), abs=1e-5)
    assert fold["nll"] == pytest.approx(log_loss(y, probs, labels=range(4)), abs=1e-5)
    assert fold["brier"] == pytest.approx(brier_score_loss(y, probs, labels=range(4)), abs=1e-5)
    raw = softmax(np.log(probs), 1 / calibrated["temperature"])     # softmax(log p x T) undoes the scaling
    assert fold["uncalibrated"]["nll"] == pytest.approx(log_loss(y, raw, labels=range(4)), abs=1e-4)
    results = calibrated["results"]
    assert results["pooled"]["nll"] == pytest.approx(fold["nll"])
    assert results["calibration"]["uncalibrated"]["pooled"]["ece"] == pytest.approx(fold["uncalibrated"]["ece"])
    assert (calibrated["run_dir"] / "reliability_diagram.png").stat().st_size > 10_000


def test_the_recognizer_and_predict_py_apply_the_stored_temperature(calibrated, tmp_path):
    plain = EmotionRecognizer.from_run(calibrated["plain"], device="cpu", precision="fp32")
    scaled = EmotionRecognizer.from_run(calibrated["run_dir"], device="cpu", precision="fp32")
    assert plain.first.calibration_temperature == 1.0
    raw = np.array([[p.probabilities[c] for c in CLASSES] for p in plain.predict_many(calibrated["files"])])
    got = np.array([[p.probabilities[c] for c in CLASSES] for p in scaled.predict_many(calibrated["files"])])
    expected = softmax(np.log(raw), calibrated["temperature"])   # = softmax(logits / T): log p = logits - const
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got, probabilities_of(calibrated["predictions"]), atol=2e-6)
    np.testing.assert_array_equal(got.argmax(axis=1), raw.argmax(axis=1))
    table = predict.main(["--checkpoint_dir", str(calibrated["run_dir"]), *calibrated["files"][:2], "--device", "cpu",
                          "--output", str(tmp_path / "out.csv")])
    np.testing.assert_allclose(probabilities_of(table), expected[:2], atol=1e-6)


def test_the_onnx_export_applies_the_temperature(calibrated, tmp_path):
    """The manifest records T (version 2: a version-1 runtime would ignore it); the runtime gives the
    run's calibrated probabilities, and the graph's own `probabilities` output is softmax(logits / T)."""
    import onnxruntime
    import soundfile as sf

    import export
    out = tmp_path / "onnx"
    export.main([str(calibrated["run_dir"]), "--format", "onnx", "--out", str(out)])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["manifest_version"] == 2
    assert manifest["folds"]["1"]["calibration_temperature"] == calibrated["temperature"]
    recognizer = EmotionRecognizer.from_onnx(out)
    got = np.array([[p.probabilities[c] for c in CLASSES] for p in recognizer.predict_many(calibrated["files"])])
    np.testing.assert_allclose(got, probabilities_of(calibrated["predictions"]), atol=1e-5)
    samples, _ = sf.read(calibrated["files"][0], dtype="float32")
    audio = ((samples - samples.mean()) / np.sqrt(samples.var() + 1e-7))[None].astype(np.float32)
    graph = onnxruntime.InferenceSession(str(out / "1_model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_values": audio}
    if manifest["audio"]["attention_mask"]:
        feeds["attention_mask"] = np.ones_like(audio, dtype=np.int64)
    probabilities, logits = graph.run(["probabilities", "logits"], feeds)
    np.testing.assert_allclose(probabilities, softmax(logits, calibrated["temperature"]), atol=1e-6)


def test_the_shared_model_folder_applies_the_temperature(calibrated, tmp_path):
    """config.json records T (format 2); the folder's model, its pipeline and the Python API give
    the run's calibrated probabilities."""
    from transformers import pipeline

    import export
    out = tmp_path / "hf"
    export.main([str(calibrated["run_dir"]), "--format", "hf", "--out", str(out)])
    config = json.loads((out / "config.json").read_text())
    assert config["calibration_temperatures"] == [calibrated["temperature"]] and config["mmer_format"] == 2
    expected = probabilities_of(calibrated["predictions"])
    recognizer = EmotionRecognizer.from_pretrained(out, device="cpu", precision="fp32")
    got = np.array([[p.probabilities[c] for c in CLASSES] for p in recognizer.predict_many(calibrated["files"])])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    pipe = pipeline("audio-classification", model=str(out), trust_remote_code=True, device="cpu")
    scores = {s["label"]: s["score"] for s in pipe(calibrated["files"][0])}
    np.testing.assert_allclose([scores[c] for c in CLASSES], expected[0], atol=2e-6)

"""Attributes on the prediction side (issue 30): a run trained with --task both gives, through the
Python API, predict.py, its ONNX export, its Hugging Face folder and pipeline, the service and
the page, the same attributes in the corpus's units as the pred_<attribute> columns run.py wrote
for its test utterances (the independent reference); a long recording's timeline carries them
per window; under --task dimensional no class is reported; a categorical run's outputs keep
their old shape. One tiny --task both run (and one categorical run) shared by all tests."""
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

import predict
import run
from inference import EmotionRecognizer
from inference.hf_export import export_hf
from inference.onnx_export import export_run
from inference.prediction import predictions_table
from inference.runs import load_models
from inference.service import create_app
from inference.windows import Windows, timeline_table

ATTRIBUTES = ["arousal", "valence", "dominance"]
ATOL = 1e-4


@pytest.fixture(scope="module")
def both(demo, tmp_path_factory):
    """(run folder, its test predictions indexed by FileName, those utterances' audio paths)."""
    save = tmp_path_factory.mktemp("both_predict")
    run.main(demo.flags(run="cai_sota", task="both", epochs=1, sessions="1", save_path=save))
    run_dir = save / "cai_sota"
    reference = pd.read_csv(run_dir / "1_predictions.csv").set_index("FileName")
    return run_dir, reference, [demo.audio / f"{name}.wav" for name in reference.index]


@pytest.fixture(scope="module")
def recognizer(both):
    return EmotionRecognizer.from_run(both[0], device="cpu")


def attribute_rows(predictions, names=ATTRIBUTES) -> np.ndarray:
    return np.array([[p.attributes[name] for name in names] for p in predictions])


def reference_rows(reference: pd.DataFrame, names=ATTRIBUTES) -> np.ndarray:
    return reference[[f"pred_{name}" for name in names]].to_numpy()


def test_recognizer_attributes_equal_the_runs_own_predictions(both, recognizer):
    run_dir, reference, paths = both
    assert recognizer.attributes == ATTRIBUTES and recognizer.predicts_classes
    low, high = json.loads((run_dir / "config.json").read_text())["model"]["attribute_range"]
    assert recognizer.attribute_range == [low, high]
    predictions = recognizer.predict_many(paths)
    np.testing.assert_allclose(attribute_rows(predictions), reference_rows(reference), atol=ATOL)
    probabilities = np.array([[p.probabilities[c] for c in recognizer.classes] for p in predictions])
    np.testing.assert_allclose(probabilities, reference[[f"prob_{c}" for c in recognizer.classes]], atol=ATOL)
    assert [p.label for p in predictions] == list(reference["predicted_label"])
    # in corpus units, not the head's normalised scale: the ratings' scale is well away from [0, 1]
    assert high - low > 1


def test_under_task_dimensional_no_class_is_reported(both, recognizer):
    run_dir, reference, paths = both
    models = load_models(run_dir, device="cpu")
    for model in models.values():
        model.config.task = "dimensional"   # the same head; what --task dimensional's checkpoint records
    dimensional = EmotionRecognizer(models, device="cpu")
    predictions = dimensional.predict_many(paths[:2])
    assert not dimensional.predicts_classes
    assert all(p.label is None and p.probabilities == {} for p in predictions)
    np.testing.assert_allclose(attribute_rows(predictions), reference_rows(reference)[:2], atol=ATOL)
    table = predictions_table(predictions)
    assert "predicted_label" not in table and not any(c.startswith("prob_") for c in table)
    assert set(ATTRIBUTES) <= set(table)


def test_an_ensemble_averages_the_folds_attributes(both, recognizer):
    run_dir, reference, paths = both
    first = next(iter(load_models(run_dir, device="cpu").values()))
    second = next(iter(load_models(run_dir, device="cpu").values()))
    with np.errstate(all="ignore"):
        second.attribute_head.out.bias.data += 0.25   # on the normalised scale: + 0.25 (high - low) in units
    ensemble = EmotionRecognizer({"a": first, "b": second}, device="cpu")
    low, high = recognizer.attribute_range
    got = attribute_rows(ensemble.predict_many(paths[:2]))
    np.testing.assert_allclose(got, reference_rows(reference)[:2] + 0.125 * (high - low), atol=ATOL)


def test_a_long_recordings_timeline_carries_the_attributes(both, recognizer, tmp_path):
    _, _, paths = both
    audio = np.concatenate([sf.read(path, dtype="float32")[0] for path in paths[:3]])
    long = EmotionRecognizer(recognizer.models, device="cpu")
    long.windows = Windows(seconds=1.0, hop_seconds=0.5, long_seconds=1.5)
    result = long.predict(audio, sample_rate=16000)
    assert result.windows and len(result.windows) > 2
    table = timeline_table(result)
    for k, window in enumerate(result.windows):   # each window as the model scores it alone
        alone = recognizer.predict(audio[window.span.start:window.span.end], sample_rate=16000)
        np.testing.assert_allclose(table.loc[k, ATTRIBUTES].to_numpy(float),
                                   [alone.attributes[a] for a in ATTRIBUTES], atol=ATOL)
    owned = (table["own_end_s"] - table["own_start_s"]).to_numpy()
    expected = owned @ table[ATTRIBUTES].to_numpy(float) / owned.sum()
    np.testing.assert_allclose([result.attributes[a] for a in ATTRIBUTES], expected, atol=1e-9)


def test_onnx_export_gives_torchs_attributes(both, recognizer, tmp_path):
    run_dir, reference, paths = both
    manifest = export_run(run_dir, tmp_path / "onnx")
    assert manifest["attributes"]["names"] == ATTRIBUTES
    assert manifest["attributes"]["range"] == recognizer.attribute_range
    assert manifest["task"] == "both" and manifest["manifest_version"] == 1
    onnx = EmotionRecognizer.from_onnx(tmp_path / "onnx")
    np.testing.assert_allclose(attribute_rows(onnx.predict_many(paths)), reference_rows(reference), atol=ATOL)


def test_hf_folder_and_its_pipeline_give_torchs_attributes(both, recognizer, tmp_path):
    from transformers import pipeline
    run_dir, reference, paths = both
    export_hf(run_dir, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_config"]["attributes"] == ATTRIBUTES
    assert config["model_config"]["attribute_range"] == recognizer.attribute_range
    shared = EmotionRecognizer.from_pretrained(tmp_path / "hf", device="cpu")
    np.testing.assert_allclose(attribute_rows(shared.predict_many(paths)), reference_rows(reference), atol=ATOL)
    pipe = pipeline("audio-classification", model=str(tmp_path / "hf"), trust_remote_code=True)
    answer = pipe(str(paths[0]))
    assert list(answer["attributes"]) == ATTRIBUTES
    np.testing.assert_allclose([answer["attributes"][a] for a in ATTRIBUTES], reference_rows(reference)[0], atol=ATOL)
    assert answer["scores"][0]["label"] == reference["predicted_label"].iloc[0]
    assert isinstance(pipe(str(paths[0]), return_attributes=False), list)   # the task's own list, on request


def test_predict_py_writes_attribute_columns(both, tmp_path, capsys):
    run_dir, reference, paths = both
    predict.main([*map(str, paths[:3]), "--checkpoint_dir", str(run_dir), "--output", str(tmp_path / "p.csv")])
    written = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(written[ATTRIBUTES].to_numpy(), reference_rows(reference)[:3], atol=ATOL)
    assert "valence" in capsys.readouterr().out
    predict.main([str(paths[0]), "--checkpoint_dir", str(run_dir), "--output", str(tmp_path / "p.json")])
    payload = json.loads((tmp_path / "p.json").read_text())
    assert payload["attributes"] == ATTRIBUTES and len(payload["attribute_range"]) == 2
    assert payload["predictions"][0]["valence"] == pytest.approx(reference["pred_valence"].iloc[0], abs=ATOL)


def test_service_answers_the_attributes(both, recognizer):
    run_dir, reference, paths = both
    with TestClient(create_app(recognizer, run_dir)) as client:
        answer = client.post("/predict", files={"file": (paths[0].name, paths[0].read_bytes())}).json()
        health = client.get("/health").json()
    assert answer["label"] == reference["predicted_label"].iloc[0]
    assert list(answer["attributes"]) == ATTRIBUTES
    np.testing.assert_allclose([answer["attributes"][a] for a in ATTRIBUTES], reference_rows(reference)[0], atol=ATOL)
    assert answer["attribute_range"] == recognizer.attribute_range
    assert health["attributes"] == ATTRIBUTES and health["attribute_range"] == recognizer.attribute_range


def test_a_categorical_runs_outputs_keep_their_shape(demo, tmp_path):
    run.main(demo.flags(run="cai_sota", epochs=1, sessions="1", save_path=tmp_path))
    run_dir = tmp_path / "cai_sota"
    reference = pd.read_csv(run_dir / "1_predictions.csv")
    path = demo.audio / f"{reference['FileName'].iloc[0]}.wav"
    categorical = EmotionRecognizer.from_run(run_dir, device="cpu")
    result = categorical.predict(path)
    assert categorical.attributes is None and result.attributes is None
    assert result.label == reference["predicted_label"].iloc[0]
    assert list(predictions_table([result])) == ["file", "predicted_label", *[f"prob_{c}" for c in categorical.classes],
                                                 "transcript", "transcript_source", "ctc_transcript", "windows"]
    with TestClient(create_app(categorical, run_dir)) as client:
        answer = client.post("/predict", files={"file": (path.name, path.read_bytes())}).json()
    assert "attributes" not in answer and "attribute_range" not in answer
    assert answer["classes"] == categorical.classes


def test_the_page_draws_the_valence_arousal_plane(both, recognizer):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")
    from tests.test_web_page import CHROMIUM, CHROMIUM_ARGS
    from inference.service import BackgroundServer
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    run_dir, _, paths = both
    with sync_api.sync_playwright() as playwright, BackgroundServer(create_app(recognizer, run_dir)) as url:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{url}/")
        page.set_input_files("#file", str(paths[0]))
        page.click("#predict-button")
        page.locator("#result").wait_for(state="visible")
        sync_api.expect(page.locator("#va-plane")).to_be_visible()
        sync_api.expect(page.locator("#va-point")).to_have_count(1)
        assert "valence" in page.inner_text("#attribute-values")
        low, high = recognizer.attribute_range
        axes = page.locator("#va-plane").text_content()
        assert "valence" in axes and "arousal" in axes and f"{low:g}" in axes and f"{high:g}" in axes
        browser.close()
    assert not errors, errors

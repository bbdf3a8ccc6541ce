"""The frozen-encoder protocol (issue 29): the learnable weighted sum of cached hidden states
against a hand computation, the probe heads against hand-written numpy, padding, a probe that
must find the one hidden state carrying the label, and mmer / cai_sota on cached states of the
demo. Expected values come from numpy written here, never from the code under test."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

import export
import predict
import run
from dataio.ssl_features import extract
from dataio.validate import InputProblems
from inference import EmotionRecognizer, service
from inference.runs import load_models
from models import ModelConfig
from models.checkpoint import CheckpointError
from models.probe import LayerFeaturizer, Probe

LIMITS = service.Limits(max_seconds=8.0, max_mb=1.0)

def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def layer_norm(x, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


@pytest.mark.parametrize("normed", [False, True])
def test_featurizer_is_the_softmax_weighted_sum(normed):
    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 7, 5, 3)).astype(np.float16).astype(np.float32)   # [B, T, states, D]
    raw = np.array([0.3, -1.0, 2.0, 0.0, 0.5], dtype=np.float32)
    featurizer = LayerFeaturizer(5, "learnable", layer_norm=normed)
    np.testing.assert_allclose(featurizer.layer_weights().detach().numpy(), np.full(5, 0.2), atol=1e-7)  # equal
    with torch.no_grad():
        featurizer.weights.copy_(torch.from_numpy(raw))
    x = layer_norm(states) if normed else states
    expected = sum(softmax(raw)[k] * x[:, :, k] for k in range(5))
    for given in (torch.from_numpy(states), torch.from_numpy(states).half()):   # the cache may hold float16
        np.testing.assert_allclose(featurizer(given).detach().numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(featurizer.layer_weights().sum().item(), 1.0, atol=1e-6)


def test_fixed_state_takes_that_state_alone():
    states = np.random.default_rng(1).normal(size=(1, 4, 3, 2)).astype(np.float32)
    np.testing.assert_array_equal(LayerFeaturizer(3, "last")(torch.from_numpy(states)).numpy(), states[:, :, 2])
    np.testing.assert_array_equal(LayerFeaturizer(3, "1", index=1)(torch.from_numpy(states)).numpy(), states[:, :, 1])
    assert LayerFeaturizer(3, "last").layer_weights().tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="0 to 2"):
        LayerFeaturizer(3, "5", index=5)


def probe_config(head: str) -> ModelConfig:
    return ModelConfig(run="probe", ssl_states=3, ssl_width=6, ssl_layers=[0, 1, 2], probe_head=head, dropout=0.0)


@pytest.mark.parametrize("head", ["superb", "linear"])
def test_probe_heads_by_hand_and_padding_changes_nothing(head):
    torch.manual_seed(0)
    model = Probe(probe_config(head)).eval()
    rng = np.random.default_rng(2)
    short = rng.normal(size=(4, 3, 6)).astype(np.float32)                # [T, states, D]
    long = rng.normal(size=(9, 3, 6)).astype(np.float32)
    batch = np.zeros((2, 9, 3, 6), np.float32)
    batch[0, :4], batch[1] = short, long
    with torch.no_grad():
        logits = model(ssl_states=torch.from_numpy(batch), sample_lengths=torch.tensor([4, 9])).logits.numpy()
        alone = model(ssl_states=torch.from_numpy(short[None]), sample_lengths=torch.tensor([4])).logits.numpy()
    p = {k: v.detach().numpy() for k, v in model.named_parameters()}
    frames = short.mean(axis=1)                                           # equal weights: the states' mean
    if head == "superb":
        hidden = np.maximum(frames @ p["projector.weight"].T + p["projector.bias"], 0.0)   # Linear -> ReLU
        expected = hidden.mean(0) @ p["classifier.weight"].T + p["classifier.bias"]       # mean -> Linear
    else:
        expected = frames.mean(0) @ p["classifier.weight"].T + p["classifier.bias"]
    np.testing.assert_allclose(logits[0], expected, atol=1e-5)
    np.testing.assert_allclose(alone[0], expected, atol=1e-5)
    assert not hasattr(model, "ctc_linear") and model.wav2vec2 is None


# ---------------------------------------------------------------- a probe that must find the label
CLASSES = ("ang", "hap", "neu", "sad")


def write_signal_corpus(root: Path, carrier: int, states: int = 5, width: int = 8, per_fold: int = 24,
                        folds: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """A table and its cached states (no audio): noise in every state, and in state `carrier`
    alone a bump on the dimension of the utterance's class."""
    rng = np.random.default_rng(seed)
    ssl = root / "ssl"
    ssl.mkdir(parents=True)
    rows = []
    for fold in range(1, folds + 1):
        for i in range(per_fold):
            name, label = f"f{fold}_u{i:03d}", i % len(CLASSES)
            x = rng.normal(size=(states, int(rng.integers(5, 30)), width)).astype(np.float16)
            x[carrier, :, label] += 1.0
            np.save(ssl / f"{name}.npy", x)
            rows.append({"FileName": name, "Label": CLASSES[label], "fold": str(fold), "speaker": f"s{fold}"})
    pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
    return root / "table.csv", ssl


@pytest.mark.parametrize("carrier", [3, 1])
def test_probe_learns_to_weight_the_state_that_carries_the_label(tmp_path, carrier):
    csv, ssl = write_signal_corpus(tmp_path, carrier)
    results = run.main(["--run", "probe", "--csv_path", str(csv), "--data_path_ssl", str(ssl), "--save_path",
                        str(tmp_path / "runs"), "--epochs", "15", "--batch_size", "8", "--learning_rate", "2e-2",
                        "--device", "cpu", "--seed", "0"])
    run_dir = tmp_path / "runs" / "probe"
    for fold in ("1", "2", "3"):
        record = json.loads((run_dir / f"{fold}_layer_weights.json").read_text())
        weights = np.array(record["weights"])
        assert record["layer_weights"] == "learnable" and record["hidden_states"] == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-5)
        assert int(weights.argmax()) == carrier, weights
    assert (run_dir / "layer_weights.png").stat().st_size > 1000
    assert results["mean"]["ua"] > 0.6       # the label is there to be found; chance is 0.25
    info = json.loads((run_dir / "results.json").read_text())
    assert info["frozen_encoder"]["states"] == 5 and info["frozen_encoder"]["head"] == "superb"
    assert info["frozen_encoder"]["encoder"] == "unknown"     # no encoder.json: not taken for the default encoder
    with pytest.raises(CheckpointError, match="named no encoder"):
        load_models(run_dir)


def refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as caught:
        run.parse_args(argv)
    assert caught.value.code == 2
    return capsys.readouterr().err


def test_probe_refusals(tmp_path, capsys):
    csv, ssl = write_signal_corpus(tmp_path, 2, per_fold=4, folds=2)
    base = ["--csv_path", str(csv), "--save_path", str(tmp_path / "runs"), "--device", "cpu", "--epochs", "1"]
    assert "give --data_path_ssl" in refused(["--run", "probe", *base], capsys)
    assert "cached hidden states are the encoder's 0 1 2 3 4" in refused(
        ["--run", "probe", "--data_path_ssl", str(ssl), "--layer_weights", "7", *base], capsys)
    assert "drop --compile" in refused(["--run", "probe", "--data_path_ssl", str(ssl), "--compile", *base], capsys)
    assert "no such folder" in refused(["--run", "probe", "--data_path_ssl", str(tmp_path / "nope"), *base], capsys)
    (ssl / "encoder.json").write_text(json.dumps({"encoder": "some/encoder", "layers": [0, 1, 2, 3, 4]}))
    assert "encoder.json" in refused(["--run", "probe", "--data_path_ssl", str(ssl), "--wav2vec2", "other/encoder",
                                      *base], capsys)
    (ssl / "encoder.json").unlink()
    np.save(ssl / "f1_u000.npy", np.zeros((4, 3, 8), np.float16))       # one state short
    (ssl / "f2_u001.npy").unlink()
    with pytest.raises(InputProblems) as caught:
        run.main(["--run", "probe", "--data_path_ssl", str(ssl), *base])
    assert "f1_u000.npy" in str(caught.value) and "f2_u001" in str(caught.value)   # every problem named at once


# ---------------------------------------------------------------- the demo on cached states
@pytest.fixture(scope="module")
def demo_states(demo, tmp_path_factory):
    """The demo's hidden states by its tiny wav2vec2, every one, in float16, as
    data_prep/extract_ssl.py writes them."""
    folder = tmp_path_factory.mktemp("ssl")
    extract(demo.csv, demo.audio, folder, str(demo.wav2vec2_model), device="cpu")
    return folder, json.loads((folder / "encoder.json").read_text())["states"]


@pytest.mark.parametrize("variant", ["mmer", "cai_sota"])
def test_variants_train_on_cached_states(demo, demo_states, tmp_path, variant):
    folder, count = demo_states
    results = run.main(demo.flags(run=variant, data_path_ssl=folder, save_path=tmp_path, wav2vec2=None,
                                  epochs=1, sessions="1"))
    run_dir = tmp_path / variant
    stats = json.loads((run_dir / "1_stats.txt").read_text().splitlines()[0])
    assert np.isfinite(stats["ctc_loss"]) and stats["ctc_loss"] > 0      # the CTC head trains on the weighted sum
    weights = json.loads((run_dir / "1_layer_weights.json").read_text())["weights"]
    assert len(weights) == count and not np.allclose(weights, 1 / count)  # learnt, not left equal
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["ssl_states"] == count and config["model"]["wav2vec2"] == str(demo.wav2vec2_model)
    again = run.main(demo.flags(run=variant, data_path_ssl=folder, save_path=tmp_path / "again", wav2vec2=None,
                                sessions="1", eval_only=True, checkpoint_dir=run_dir))
    assert again["folds"]["1"]["wa"] == results["folds"]["1"]["wa"]


# ---------------------------------------------------------------- using and sharing a probe run
@pytest.fixture(scope="module")
def probe_run(demo, demo_states, tmp_path_factory):
    """A probe trained on the demo's cached states: it reads no audio and no transcript."""
    folder, _ = demo_states
    save = tmp_path_factory.mktemp("probe_runs")
    run.main(demo.flags(run="probe", data_path_ssl=folder, save_path=save, wav2vec2=None, data_path_audio=None,
                        data_path_roberta=None, roberta=None, sessions="1", epochs=3, batch_size=8, accum_grad=1,
                        learning_rate=1e-2, layer_weights="last"))   # one state: their order matters
    return save / "probe"


def probabilities(predictions, classes) -> np.ndarray:
    return np.array([[p.probabilities[c] for c in classes] for p in predictions])


def test_prediction_and_both_exports_of_a_probe_run_agree_with_run_py(demo, probe_run, tmp_path):
    """run.py scored the cached (float16) states; prediction computes them from the audio with the
    recorded encoder, the ONNX graph and the shared folder carry that encoder in them."""
    expected = pd.read_csv(probe_run / "1_predictions.csv")
    classes = [c.removeprefix("prob_") for c in expected.columns if c.startswith("prob_")]
    wavs = [str(demo.audio / f"{name}.wav") for name in expected["FileName"]]
    from_run = EmotionRecognizer.from_run(probe_run, device="cpu", batch_size=1).predict_many(wavs)
    np.testing.assert_allclose(probabilities(from_run, classes), expected.filter(like="prob_").to_numpy(), atol=5e-5)
    assert [p.label for p in from_run] == list(expected["predicted_label"])
    export.main([str(probe_run), "--format", "onnx", "--out", str(tmp_path / "onnx")])
    from_onnx = EmotionRecognizer.from_onnx(tmp_path / "onnx", batch_size=1).predict_many(wavs)
    np.testing.assert_allclose(probabilities(from_onnx, classes), probabilities(from_run, classes), atol=1e-4)
    export.main([str(probe_run), "--format", "hf", "--out", str(tmp_path / "hf")])
    from_folder = EmotionRecognizer.from_pretrained(tmp_path / "hf", device="cpu", batch_size=1).predict_many(wavs)
    np.testing.assert_allclose(probabilities(from_folder, classes), probabilities(from_run, classes), atol=1e-5)
    table = predict.main([*wavs[:2], "--checkpoint_dir", str(probe_run), "--device", "cpu"])
    np.testing.assert_allclose(table[[f"prob_{c}" for c in classes]].to_numpy(),
                               probabilities(from_run[:2], classes), atol=1e-5)
    recognizer = EmotionRecognizer.from_run(probe_run, device="cpu")
    with TestClient(service.create_app(recognizer, probe_run, LIMITS)) as client:
        answer = client.post("/predict", files={"file": ("a.wav", Path(wavs[0]).read_bytes())})
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose([answer.json()["probabilities"][c] for c in classes],
                               probabilities(from_run[:1], classes)[0], atol=1e-5)


def test_a_dimensional_probe_records_its_layer_weights_too(tmp_path):
    csv, ssl = write_signal_corpus(tmp_path, 2, per_fold=8, folds=2)
    table = pd.read_csv(csv)
    rng = np.random.default_rng(0)
    for name in ("valence", "arousal", "dominance"):
        table[name] = rng.uniform(1, 5, len(table)).round(4)
    table.to_csv(csv, index=False)
    results = run.main(["--run", "probe", "--task", "dimensional", "--csv_path", str(csv), "--data_path_ssl", str(ssl),
                        "--save_path", str(tmp_path / "runs"), "--epochs", "2", "--device", "cpu"])
    assert "ccc_mean" in results["mean"] and "ua" not in results["mean"]
    for fold in ("1", "2"):
        weights = json.loads((tmp_path / "runs" / "probe" / f"{fold}_layer_weights.json").read_text())["weights"]
        np.testing.assert_allclose(sum(weights), 1.0, atol=1e-5)

"""export.py and the onnxruntime backend on tiny encoders: every variant's exported graphs give
PyTorch's probabilities and CTC logits through onnxruntime, at any batch and length; the manifest
names the classes and the inputs and records no path of the exporting machine; predict.py
--backend onnxruntime prints what the torch backend prints; bad inputs are refused by name."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import soundfile as sf
import torch

import export
from inference import recognizer as inference
import predict
from dataio.text_features import embed_texts, load_text_encoder
from synthetic.tiny_models import make_tiny_models, save_speech_encoder, tiny_speech_encoder
from dataio.labels import CLASS_NAMES, LabelSet
from models import ModelConfig, build_model
from dataio.audio import normalize
from models.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRANSCRIPTS = ["I think we should talk about it tomorrow.", "Oh no, not again!"]
OWN_CLASSES = ("calm", "angry", "sad")  # unimodal_baseline's: the manifest must name the run's own classes
# Each variant's folds; unimodal_baseline on a layer-norm encoder that takes an attention mask.
FOLDS = {"mmer": ("1",), "cai_sota": ("1", "2"), "unimodal_baseline": ("1",)}


def tone(seconds: float, pitch: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * (1 + 0.5 * np.sin(2 * np.pi * 1.5 * t)) * np.sin(2 * np.pi * pitch * t)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Checkpoints of the three variants saved like run.py does (with a config.json naming the
    tiny RoBERTa and, as run.py's does, the corpus), each run exported by export.export_run, and
    two wavs of different lengths."""
    root = tmp_path_factory.mktemp("export")
    tiny = make_tiny_models(root / "tiny", seed=0)
    torch.manual_seed(0)
    masked = save_speech_encoder(tiny_speech_encoder("wav2vec2", feat_extract_norm="layer", do_stable_layer_norm=True),
                                 root / "tiny" / "wav2vec2_layer_norm")
    own = LabelSet.from_mapping({name: name for name in OWN_CLASSES}, OWN_CLASSES)
    settings = {"mmer": {"wav2vec2": str(tiny["wav2vec2"]), "text_dim": 128},
                "cai_sota": {"wav2vec2": str(tiny["wav2vec2"])},
                "unimodal_baseline": {"wav2vec2": str(masked), "labels": own.to_dict(),
                                      "num_classes": len(OWN_CLASSES)}}
    models, manifests = {}, {}
    for run, folds in FOLDS.items():
        for k, fold in enumerate(folds):
            torch.manual_seed(10 + k)
            model = build_model(ModelConfig(run=run, **settings[run])).eval()
            save_checkpoint(root / run / f"{fold}_model.pt", model, model_config=model.config.to_dict(),
                            session=fold, epoch=1)
            models[run, fold] = model
        (root / run / "config.json").write_text(json.dumps({"run": {
            "roberta": str(tiny["roberta"]), "csv_path": str(root / "corpus" / "iemocap.csv"),
            "data_path_audio": str(root / "corpus" / "audio"), "save_path": str(root)}}))
        manifests[run] = export.export_run(root / run, root / "onnx" / run)
    audio = root / "audio"
    audio.mkdir()
    sf.write(audio / "long.wav", tone(0.9, 150), 16000)
    sf.write(audio / "short.wav", tone(0.45, 260), 16000)
    return {"root": root, "tiny": tiny, "models": models, "manifests": manifests,
            "wavs": [str(audio / "long.wav"), str(audio / "short.wav")]}


def onnx_dir(exported, run) -> Path:
    return exported["root"] / "onnx" / run


def both_backends(exported, run, **kwargs):
    torch_side = inference.EmotionRecognizer.from_run(exported["root"] / run, device="cpu", **kwargs)
    onnx_side = inference.EmotionRecognizer.from_onnx(onnx_dir(exported, run), **kwargs)
    return torch_side, onnx_side


def probabilities(predictions) -> np.ndarray:
    return np.array([list(p.probabilities.values()) for p in predictions])


def torch_output(model, samples: np.ndarray, text=None):
    """The model's forward on one recording alone, normalised as the recognizer does."""
    wave = torch.from_numpy(normalize(samples))[None]
    with torch.inference_mode():
        return model(wave, torch.tensor([wave.shape[1]]), text=text, text_lengths=None if text is None else
                     torch.tensor([text.shape[1]]))


# ---------------------------------------------------------------- parity with PyTorch
@pytest.mark.parametrize("run, transcripts", [("mmer", TRANSCRIPTS), ("mmer", None), ("cai_sota", None),
                                              ("unimodal_baseline", None)])
def test_onnxruntime_gives_torchs_predictions_for_every_variant(exported, run, transcripts):
    """Batches of 2: unimodal_baseline's encoder takes a mask, so its two lengths share a padded batch."""
    torch_side, onnx_side = both_backends(exported, run, session="1", batch_size=2)
    expected = torch_side.predict_many(exported["wavs"], transcripts)
    got = onnx_side.predict_many(exported["wavs"], transcripts)
    np.testing.assert_allclose(probabilities(got), probabilities(expected), atol=1e-4)
    assert [p.label for p in got] == [p.label for p in expected]
    assert [p.transcript_source for p in got] == [p.transcript_source for p in expected]
    assert [p.transcript for p in got] == [p.transcript for p in expected]          # mmer without: the CTC's
    assert [p.ctc_transcript for p in got] == [p.ctc_transcript for p in expected]
    assert all(str(path).endswith("_model.onnx") for path in onnx_side.models)


def test_an_ensemble_of_exported_folds_is_the_mean_of_its_folds(exported):
    torch_side, onnx_side = both_backends(exported, "cai_sota", ensemble=True)
    assert len(onnx_side.models) == 2
    np.testing.assert_allclose(probabilities(onnx_side.predict_many(exported["wavs"])),
                               probabilities(torch_side.predict_many(exported["wavs"])), atol=1e-4)


@pytest.mark.parametrize("run", ["mmer", "cai_sota"])
def test_the_graphs_ctc_logits_are_torchs(exported, run):
    session = onnxruntime.InferenceSession(str(onnx_dir(exported, run) / "1_model.onnx"))
    model = exported["models"][run, "1"]
    for seconds in (0.9, 0.45):
        samples = tone(seconds, 200)
        text = torch.randn(1, 5, 128) if model.uses_text else None
        feeds = {"input_values": normalize(samples)[None]}
        if text is not None:
            feeds.update(text_features=text.numpy(), text_lengths=np.array([5]))
        ctc_logits, frame_lengths = session.run(["ctc_logits", "frame_lengths"], feeds)
        expected = torch_output(model, samples, text)
        np.testing.assert_allclose(ctc_logits, expected.ctc_logits.numpy(), atol=1e-4)
        assert frame_lengths.tolist() == expected.frame_lengths.tolist()


def test_one_exported_file_takes_any_batch_and_length(exported):
    """Dynamic axes: recordings of two lengths through one file, alone and three at a time."""
    session = onnxruntime.InferenceSession(str(onnx_dir(exported, "cai_sota") / "1_model.onnx"))
    model = exported["models"]["cai_sota", "1"]
    for seconds in (1.3, 0.45):
        samples = tone(seconds, 180)
        probs, ctc_logits = session.run(["probabilities", "ctc_logits"], {"input_values": normalize(samples)[None]})
        expected = torch_output(model, samples)
        np.testing.assert_allclose(probs, torch.softmax(expected.logits, -1).numpy(), atol=1e-5)
        assert ctc_logits.shape == (1, int(expected.frame_lengths[0]), 32)
    three = np.stack([normalize(tone(0.6, pitch)) for pitch in (120, 180, 240)])
    probs = session.run(["probabilities"], {"input_values": three})[0]
    alone = [session.run(["probabilities"], {"input_values": row[None]})[0][0] for row in three]
    np.testing.assert_allclose(probs, alone, atol=1e-6)


def test_an_encoder_with_an_attention_mask_is_padding_exact_in_the_graph(exported):
    session = onnxruntime.InferenceSession(str(onnx_dir(exported, "unimodal_baseline") / "1_model.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input_values", "attention_mask"]
    waves = [normalize(tone(1.1, 150)), normalize(tone(0.5, 260))]
    batch = np.zeros((2, len(waves[0])), np.float32)
    mask = np.zeros((2, len(waves[0])), np.int64)
    for row, wave in enumerate(waves):
        batch[row, :len(wave)], mask[row, :len(wave)] = wave, 1
    padded = session.run(["probabilities"], {"input_values": batch, "attention_mask": mask})[0]
    alone = [session.run(["probabilities"], {"input_values": w[None], "attention_mask": np.ones((1, len(w)), np.int64)})
             [0][0] for w in waves]
    np.testing.assert_allclose(padded, alone, atol=1e-5)


def test_the_exported_text_encoder_gives_extract_robertas_features(exported):
    manifest = exported["manifests"]["mmer"]
    encoder = inference.OnnxTextEncoder(onnx_dir(exported, "mmer"), manifest["text_encoder"])
    texts = [*TRANSCRIPTS, ""]
    expected = embed_texts(texts, *load_text_encoder(exported["tiny"]["roberta"], "cpu"))
    for got, want in zip(encoder(texts), expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4)


# ---------------------------------------------------------------- the manifest
def test_the_manifest_names_the_classes_inputs_and_files(exported):
    for run, manifest in exported["manifests"].items():
        written = json.loads((onnx_dir(exported, run) / "manifest.json").read_text())
        assert written == json.loads(json.dumps(manifest))
        assert written["run"] == run and list(written["folds"]) == list(FOLDS[run])
        assert written["sample_rate"] == 16000 and written["normalisation"]["where"] == "before the graph"
        for fold in written["folds"].values():
            assert (onnx_dir(exported, run) / fold["model"]).is_file()
            assert fold["max_abs_diff_vs_torch"]["model"]["probabilities"] < 1e-4
    manifests = exported["manifests"]
    assert manifests["mmer"]["classes"] == manifests["cai_sota"]["classes"] == list(CLASS_NAMES)
    assert manifests["unimodal_baseline"]["classes"] == list(OWN_CLASSES)
    names = {run: [i["name"] for i in m["inputs"]["model"]] for run, m in manifests.items()}
    assert names == {"mmer": ["input_values", "text_features", "text_lengths"], "cai_sota": ["input_values"],
                     "unimodal_baseline": ["input_values", "attention_mask"]}
    outputs = {o["name"]: o["shape"] for o in manifests["mmer"]["outputs"]["model"]}
    assert outputs["probabilities"] == ["batch", 4] and outputs["ctc_logits"] == ["batch", "frames", 32]
    assert [o["name"] for o in manifests["unimodal_baseline"]["outputs"]["model"]] == \
        ["probabilities", "logits", "frame_lengths"]
    assert {i["name"]: i["shape"] for i in manifests["mmer"]["inputs"]["text_encoder"]} == \
        {"input_ids": ["batch", "tokens"], "attention_mask": ["batch", "tokens"]}
    assert [i["shape"] for i in manifests["mmer"]["inputs"]["fusion"]] == \
        [["batch", "frames", 64], ["batch"], ["batch", "tokens", 128], ["batch"]]
    text = manifests["mmer"]["text_encoder"]
    assert text["name"] == "local:roberta" and text["hidden_size"] == manifests["mmer"]["text_dim"]
    assert (onnx_dir(exported, "mmer") / text["tokenizer"] / "tokenizer.json").is_file()
    assert manifests["cai_sota"]["text_encoder"] is None and manifests["mmer"]["audio"]["padding_exact"] is False
    assert manifests["unimodal_baseline"]["audio"]["attention_mask"] is True


def test_no_exported_file_records_a_path_of_the_exporting_machine(exported, tmp_path_factory):
    """Every file of the three exports, text (json, txt) and binary (the graphs' node metadata
    included), against the tmp tree holding the encoders, the run folders, their corpus and the
    exports, the repository, the working directory and the home folder (as given and resolved);
    local encoders are named `local:<folder name>`, checkpoints by their file name.
    tests/test_share.py checks the HF folders of run.py's runs alike."""
    paths = {tmp_path_factory.getbasetemp(), exported["root"], *exported["tiny"].values(),
             *(exported["root"] / run for run in FOLDS), exported["root"] / "corpus", REPO, Path.cwd(), Path.home()}
    needles = {str(p) for path in paths for p in (Path(path), Path(path).resolve()) if len(str(p)) > 4}
    files = [p for run in FOLDS for p in sorted(onnx_dir(exported, run).rglob("*")) if p.is_file()]
    assert {".json", ".onnx"} <= {p.suffix for p in files}
    leaks = {f"{p.relative_to(exported['root'])}: {needle}" for p in files for content in [p.read_bytes()]
             for needle in needles if needle.encode() in content}
    assert not leaks
    mmer = exported["manifests"]["mmer"]
    assert mmer["text_encoder"]["name"] == mmer["text_encoder"]["stamp"]["roberta"] == "local:roberta"
    assert mmer["speech_encoder"] == mmer["folds"]["1"]["model_config"]["wav2vec2"] == "local:wav2vec2"
    assert exported["manifests"]["unimodal_baseline"]["speech_encoder"] == "local:wav2vec2_layer_norm"
    assert [fold["checkpoint"] for fold in exported["manifests"]["cai_sota"]["folds"].values()] == \
        ["1_model.pt", "2_model.pt"]


def test_predictions_of_an_export_name_the_runs_own_classes(exported):
    recognizer = inference.EmotionRecognizer.from_onnx(onnx_dir(exported, "unimodal_baseline"))
    assert recognizer.classes == list(OWN_CLASSES)
    assert recognizer.predict(exported["wavs"][0]).label in OWN_CLASSES


# ---------------------------------------------------------------- predict.py --backend onnxruntime
@pytest.mark.parametrize("run, flags", [("mmer", ["--session", "1"]), ("cai_sota", ["--ensemble"])])
def test_predict_cli_onnxruntime_backend_prints_the_torch_backends_results(exported, tmp_path, run, flags):
    written = {}
    for backend, source in (("torch", ["--checkpoint_dir", str(exported["root"] / run)]),
                            ("onnxruntime", ["--backend", "onnxruntime", "--onnx_dir", str(onnx_dir(exported, run))])):
        out = tmp_path / f"{backend}.json"
        predict.main([*source, *exported["wavs"], *flags, "--output", str(out)])
        written[backend] = json.loads(out.read_text())
    assert written["onnxruntime"]["backend"] == "onnxruntime" and written["torch"]["backend"] == "torch"
    assert all(path.endswith(".onnx") for path in written["onnxruntime"]["checkpoints"])
    tables = {backend: pd.DataFrame(w["predictions"]) for backend, w in written.items()}
    columns = [f"prob_{name}" for name in CLASS_NAMES]
    np.testing.assert_allclose(tables["onnxruntime"][columns].to_numpy(), tables["torch"][columns].to_numpy(),
                               atol=1e-4)
    for column in ("file", "predicted_label", "transcript", "transcript_source", "ctc_transcript"):
        assert list(tables["onnxruntime"][column]) == list(tables["torch"][column])


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("case, message", [
    ("missing_run_dir", "run folder not found"),
    ("no_checkpoints", r"no <session>_model.pt \(or .safetensors\) checkpoints"),
    ("unknown_format", "invalid choice: 'tflite'"),
    ("unknown_session", "7_model.pt not found; folds there: 1, 2"),
    ("export_there_already", "holds an export already.*--overwrite"),
])
def test_export_refuses_bad_inputs_by_name_with_exit_code_2(exported, tmp_path, capsys, case, message):
    (tmp_path / "empty").mkdir()
    argv = {
        "missing_run_dir": [str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
        "no_checkpoints": [str(tmp_path / "empty"), "--out", str(tmp_path / "out")],
        "unknown_format": [str(exported["root"] / "cai_sota"), "--format", "tflite", "--out", str(tmp_path / "out")],
        "unknown_session": [str(exported["root"] / "cai_sota"), "--session", "7", "--out", str(tmp_path / "out")],
        "export_there_already": [str(exported["root"] / "cai_sota"), "--out", str(onnx_dir(exported, "cai_sota"))],
    }[case]
    with pytest.raises(SystemExit) as error:
        export.main(argv)
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("export.py: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_export_cli_error_is_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "export.py"), str(tmp_path / "nowhere"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"export.py: error: {tmp_path / 'nowhere'}: run folder not found; pass the folder "
                                   "run.py wrote (<save_path>/<run>) holding <fold>_model.pt")


@pytest.mark.parametrize("case, message", [
    ("no_onnx_dir", "--backend onnxruntime needs --onnx_dir"),
    ("checkpoint_dir_too", "reads everything from --onnx_dir's manifest.json; drop --checkpoint_dir"),
    ("onnx_dir_with_torch", "--onnx_dir is read by --backend onnxruntime"),
    ("missing_folder", "ONNX export folder not found; write one with python export.py"),
    ("no_manifest", "manifest.json: not found"),
    ("missing_graph", r"broken/1_model.onnx, .*: listed in .*manifest.json but missing; re-export"),
])
def test_predict_refuses_a_wrong_onnx_backend_setup_by_name(exported, tmp_path, capsys, case, message):
    (tmp_path / "half").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text((onnx_dir(exported, "cai_sota") / "manifest.json").read_text())
    onnx = ["--backend", "onnxruntime", "--onnx_dir"]
    argv = {
        "no_onnx_dir": ["--backend", "onnxruntime"],
        "checkpoint_dir_too": [*onnx, str(onnx_dir(exported, "cai_sota")), "--checkpoint_dir", str(tmp_path)],
        "onnx_dir_with_torch": ["--onnx_dir", str(onnx_dir(exported, "cai_sota"))],
        "missing_folder": [*onnx, str(tmp_path / "nowhere")],
        "no_manifest": [*onnx, str(tmp_path / "half")],
        "missing_graph": [*onnx, str(tmp_path / "broken")],
    }[case]
    with pytest.raises(SystemExit) as error:
        predict.main([*argv, exported["wavs"][0]])
    # flag mismatches: argparse's one line and exit code 2; a bad folder: predict.py's "error: ..." line
    said = error.value.code if isinstance(error.value.code, str) else capsys.readouterr().err
    assert re.search(message, said), said
    assert error.value.code == 2 or said.startswith("error: ")

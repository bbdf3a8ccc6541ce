"""predict.py on tiny encoders: the same numbers as the training forward, any sample rate and
channel count, the CTC transcript when none is given, single-session and ensemble
checkpoints, wav/folder/csv inputs, json/csv outputs, and one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from inference import recognizer as inference
import predict
from dataio.text_features import embed_texts, load_text_encoder
from synthetic.tiny_models import make_tiny_models
from models import ModelConfig, build_model
from models.encoders import audio_input_spec
from models.checkpoint import save_checkpoint
from dataio.dataset import Collator, EmotionDataset, load_waves
from dataio.labels import CLASS_NAMES
from dataio.text import sentence_case

REPO = Path(__file__).resolve().parents[1]
PROB_COLUMNS = [f"prob_{name}" for name in CLASS_NAMES]
TRANSCRIPTS = {"calm": "I think we should talk about it tomorrow.", "loud": "Oh no, not again!"}


def tone(seconds: float, sr: int, pitch: float) -> np.ndarray:
    """A band-limited voiced sound (harmonics under 4 kHz, slow loudness contour): the same
    continuous signal whatever the sample rate it is sampled at."""
    t = np.arange(int(seconds * sr)) / sr
    harmonics = sum(np.sin(2 * np.pi * k * pitch * t) / k for k in range(1, int(4000 // pitch)))
    return (0.3 * (1 + 0.5 * np.sin(2 * np.pi * 1.5 * t)) * harmonics / 3).astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny encoders, two mmer sessions and one cai_sota session saved like run.py does, and wavs."""
    root = tmp_path_factory.mktemp("predict")
    tiny = make_tiny_models(root / "tiny", seed=0)
    models = {}
    for run, session in (("mmer", 1), ("mmer", 2), ("cai_sota", 1)):
        torch.manual_seed(10 * session)
        model = build_model(ModelConfig(run=run, wav2vec2=str(tiny["wav2vec2"]), text_dim=128)).eval()
        save_checkpoint(root / run / f"{session}_model.pt", model, model_config=model.config.to_dict(),
                        session=session, epoch=1)
        models[run, session] = model
    (root / "mmer" / "config.json").write_text(json.dumps({"run": {"roberta": str(tiny["roberta"])}}))
    audio = root / "audio"
    audio.mkdir()
    sf.write(audio / "calm.wav", tone(0.7, 16000, 150), 16000)
    sf.write(audio / "loud.wav", tone(0.45, 16000, 260), 16000)
    return {"root": root, "tiny": tiny, "models": models, "audio": audio}


def inputs_of(setup, names, with_transcripts=True) -> pd.DataFrame:
    return pd.DataFrame({"path": [str(setup["audio"] / f"{n}.wav") for n in names],
                         "transcript": [TRANSCRIPTS[n] if with_transcripts else None for n in names]})


def recognizer(setup, run="mmer", folder=None, batch_size=None, roberta=None, **kwargs):
    models = inference.load_models(folder or setup["root"] / run, **kwargs)
    return inference.EmotionRecognizer(models, roberta=roberta or str(setup["tiny"]["roberta"]), batch_size=batch_size)


def predict_with(setup, inputs, run="cai_sota", batch_size=None, **kwargs) -> pd.DataFrame:
    return predict.predict_files(inputs, recognizer(setup, run, batch_size=batch_size, **kwargs))


def run_predict(setup, inputs, run="mmer", **kwargs) -> pd.DataFrame:
    return predict_with(setup, inputs, run, batch_size=4, **kwargs)


def training_output(setup, model, names, transcripts=None):
    """The model's output as run.py computes it: dataio.dataset's loading, features and Collator."""
    spec = audio_input_spec(model.config.wav2vec2)
    waves = load_waves([setup["audio"] / f"{name}.wav" for name in names], spec, show_progress=False)
    text = None
    if transcripts is not None:
        tokenizer, encoder = load_text_encoder(setup["tiny"]["roberta"], "cpu")
        text = embed_texts(transcripts, tokenizer, encoder)
    dataset = EmotionDataset(names, waves, [0] * len(names), transcripts or [""] * len(names), text)
    batch = Collator(spec)([dataset[i] for i in range(len(names))])
    with torch.no_grad():
        return model(**batch.model_inputs())


def training_forward(setup, model, names, transcripts=None) -> np.ndarray:
    """Each recording's probabilities as the training forward gives them to it alone (unpadded:
    the reference every evaluation and prediction must reproduce)."""
    return np.concatenate([
        torch.softmax(training_output(setup, model, [name], None if transcripts is None else [text]).logits,
                      dim=-1).numpy()
        for name, text in zip(names, transcripts or [None] * len(names))])


def test_prediction_with_transcript_equals_training_forward(setup):
    names = ["calm", "loud"]
    result = run_predict(setup, inputs_of(setup, names), session="1")
    expected = training_forward(setup, setup["models"]["mmer", 1], names, [TRANSCRIPTS[n] for n in names])
    np.testing.assert_allclose(result[PROB_COLUMNS].to_numpy(), expected, atol=1e-5)
    assert list(result["predicted_label"]) == [CLASS_NAMES[i] for i in expected.argmax(axis=1)]
    assert list(result["transcript_source"]) == ["given", "given"]


def test_44k_stereo_recording_predicts_like_its_16k_mono_version(setup, tmp_path):
    mono = tone(0.6, 16000, 180)
    wide = tone(0.6, 44100, 180)
    difference = 0.05 * np.sin(2 * np.pi * 500 * np.arange(len(wide)) / 44100).astype(np.float32)
    sf.write(tmp_path / "mono16k.wav", mono, 16000, subtype="FLOAT")
    sf.write(tmp_path / "stereo44k.wav", np.stack([wide + difference, wide - difference], axis=1), 44100,
             subtype="FLOAT")
    inputs = pd.DataFrame({"path": [str(tmp_path / "mono16k.wav"), str(tmp_path / "stereo44k.wav")],
                           "transcript": ["Oh no, not again!"] * 2})
    result = run_predict(setup, inputs, session="1")
    assert result["predicted_label"].nunique() == 1
    np.testing.assert_allclose(result[PROB_COLUMNS].iloc[1], result[PROB_COLUMNS].iloc[0], atol=2e-3)


def test_missing_transcript_comes_from_the_models_ctc_head(setup):
    names = ["calm", "loud"]
    result = run_predict(setup, inputs_of(setup, names, with_transcripts=False), session="1")
    assert list(result["transcript_source"]) == ["ctc", "ctc"]
    assert list(result["transcript"]) == [sentence_case(t) for t in result["ctc_transcript"]]
    expected = training_forward(setup, setup["models"]["mmer", 1], names, list(result["transcript"]))
    np.testing.assert_allclose(result[PROB_COLUMNS].to_numpy(), expected, atol=1e-5)


def test_ctc_decoding_merges_repeats_and_reads_special_tokens_as_blanks():
    # frames: blank A A blank A | <s> O </s> <unk> blank, then one frame past the valid length
    frame_ids = [0, 7, 7, 0, 7, 4, 1, 8, 2, 3, 0, 9]
    logits = torch.nn.functional.one_hot(torch.tensor([frame_ids]), 32).float()
    assert inference.decode_ctc(logits, torch.tensor([11])) == ["AA O"]


def test_audio_only_model_needs_no_text_and_reports_its_ctc_transcript(setup):
    names = ["calm", "loud"]
    result = predict.predict_files(inputs_of(setup, names), recognizer(
        setup, "cai_sota", batch_size=2, roberta=str(setup["root"] / "no_text_encoder_here")))
    assert list(result["transcript_source"]) == ["none", "none"]
    for row, name in enumerate(names):
        expected = training_output(setup, setup["models"]["cai_sota", 1], [name])
        np.testing.assert_allclose(result[PROB_COLUMNS].to_numpy()[row], torch.softmax(expected.logits, -1)[0],
                                   atol=1e-5)
        assert result["ctc_transcript"][row] == inference.decode_ctc(expected.ctc_logits, expected.frame_lengths)[0]


def test_session_flag_picks_that_checkpoint_and_default_is_the_first(setup):
    folder = setup["root"] / "mmer"
    assert list(inference.load_models(folder, session="2")) == [folder / "2_model.pt"]
    assert list(inference.load_models(folder)) == [folder / "1_model.pt"]
    restored = inference.load_models(folder, session="2")[folder / "2_model.pt"]
    torch.testing.assert_close(restored.classifier.weight, setup["models"]["mmer", 2].classifier.weight)


def test_ensemble_is_the_mean_of_the_session_probabilities(setup):
    inputs = inputs_of(setup, ["loud"])
    per_session = [run_predict(setup, inputs, session=s)[PROB_COLUMNS].to_numpy() for s in ("1", "2")]
    assert not np.allclose(per_session[0], per_session[1])
    ensemble = run_predict(setup, inputs, ensemble=True)[PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(ensemble, np.mean(per_session, axis=0), atol=1e-6)


def test_every_file_is_scored_as_if_alone_whatever_the_batch_size(setup, tmp_path):
    """wav2vec2-base takes no attention mask, so padding would move a file's result: only
    recordings of equal length share a batch, and those need no padding."""
    sf.write(tmp_path / "twin.wav", tone(0.45, 16000, 200), 16000)  # as long as loud.wav, another sound
    inputs = pd.concat([inputs_of(setup, ["calm", "loud"]), pd.DataFrame({"path": [str(tmp_path / "twin.wav")]})],
                       ignore_index=True)
    alone = [predict_with(setup, inputs.iloc[[i]].reset_index(drop=True), batch_size=1) for i in range(3)]
    alone = np.concatenate([a[PROB_COLUMNS].to_numpy() for a in alone])
    for batch_size in (1, 2, 8):
        batched = predict_with(setup, inputs, batch_size=batch_size)
        np.testing.assert_allclose(batched[PROB_COLUMNS].to_numpy(), alone, atol=1e-6)


def test_on_a_cpu_each_file_is_scored_alone_by_default(setup):
    by_default = predict_with(setup, inputs_of(setup, ["calm", "loud"]))
    alone = predict_with(setup, inputs_of(setup, ["calm", "loud"]), batch_size=1)
    pd.testing.assert_frame_equal(by_default, alone)
    assert inference.default_batch_size(torch.device("cpu")) == 1
    assert inference.default_batch_size(torch.device("cuda")) == 8


def test_folder_input_lists_its_wavs_sorted(setup, tmp_path):
    for name in ("b.wav", "a.wav"):
        sf.write(tmp_path / name, tone(0.2, 16000, 200), 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    inputs = predict.collect_inputs([tmp_path])
    assert list(inputs["path"]) == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    assert inputs["transcript"].isna().all()


def test_csv_input_resolves_filenames_and_reads_transcripts(setup, tmp_path):
    iemocap_like = tmp_path / "utterances.csv"
    pd.DataFrame({"FileName": ["calm", "loud"], "Sentences": [TRANSCRIPTS["calm"], ""]}).to_csv(iemocap_like)
    inputs = predict.collect_inputs([iemocap_like], audio_dir=setup["audio"])
    assert list(inputs["path"]) == [str(setup["audio"] / "calm.wav"), str(setup["audio"] / "loud.wav")]
    assert list(inputs["transcript"]) == [TRANSCRIPTS["calm"], None]  # an empty cell: transcribe it

    (tmp_path / "clips").mkdir()
    sf.write(tmp_path / "clips" / "x.wav", tone(0.2, 16000, 200), 16000)
    listed = tmp_path / "listed.csv"
    pd.DataFrame({"path": ["clips/x.wav"], "transcript": ["hello"]}).to_csv(listed, index=False)
    inputs = predict.collect_inputs([listed])  # relative to the csv's own folder
    assert list(inputs["path"]) == [str(tmp_path / "clips" / "x.wav")]
    assert list(inputs["transcript"]) == ["hello"]


def test_cli_subprocess_writes_json_with_the_recorded_text_encoder(setup, tmp_path):
    """No --roberta: the text encoder recorded in the run's config.json is used."""
    out = tmp_path / "predictions.json"
    command = [sys.executable, str(REPO / "predict.py"), "--checkpoint_dir", str(setup["root"] / "mmer"),
               str(setup["audio"] / "calm.wav"), "--transcript", TRANSCRIPTS["calm"], "--output", str(out),
               "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "calm.wav" in done.stdout
    written = json.loads(out.read_text())
    assert written["run"] == "mmer" and written["checkpoints"][0].endswith("1_model.pt")
    assert written["class_names"] == list(CLASS_NAMES)
    row = written["predictions"][0]
    assert row["transcript_source"] == "given" and row["transcript"] == TRANSCRIPTS["calm"]
    assert sum(row[c] for c in PROB_COLUMNS) == pytest.approx(1.0, abs=1e-5)
    expected = training_forward(setup, setup["models"]["mmer", 1], ["calm"], [TRANSCRIPTS["calm"]])[0]
    assert [row[c] for c in PROB_COLUMNS] == pytest.approx(expected.tolist(), abs=1e-5)


def test_cli_writes_csv_for_a_folder_with_the_ensemble(setup, tmp_path):
    out = tmp_path / "predictions.csv"
    predict.main(["--checkpoint_dir", str(setup["root"] / "cai_sota"), "--ensemble", str(setup["audio"]),
                  "--output", str(out), "--device", "cpu"])
    written = pd.read_csv(out, keep_default_na=False)
    assert list(written["file"]) == [str(setup["audio"] / "calm.wav"), str(setup["audio"] / "loud.wav")]
    assert set(written["predicted_label"]) <= set(CLASS_NAMES)
    np.testing.assert_allclose(written[PROB_COLUMNS].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("case, message", [
    ("missing_dir", "checkpoint folder not found"),
    ("empty_dir", r"no <session>_model.pt \(or .safetensors\) checkpoints"),
    ("csv_without_path", "no path column"),
    ("missing_audio", "audio not found"),
    ("wrong_run", "pass --run mmer"),
    ("unknown_session", "sessions there: 1, 2"),
])
def test_bad_inputs_get_a_one_line_error_naming_the_fix(setup, tmp_path, case, message):
    wav = str(setup["audio"] / "calm.wav")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.csv").write_text("name,words\ncalm,hello\n")
    pd.DataFrame({"path": ["gone.wav"]}).to_csv(tmp_path / "listed.csv", index=False)
    argv = {
        "missing_dir": ["--checkpoint_dir", str(tmp_path / "nowhere"), wav],
        "empty_dir": ["--checkpoint_dir", str(tmp_path / "empty"), wav],
        "csv_without_path": ["--checkpoint_dir", str(setup["root"] / "mmer"), str(tmp_path / "bad.csv")],
        "missing_audio": ["--checkpoint_dir", str(setup["root"] / "mmer"), str(tmp_path / "listed.csv")],
        "wrong_run": ["--checkpoint_dir", str(setup["root"] / "mmer"), "--run", "cai_sota", wav],
        "unknown_session": ["--checkpoint_dir", str(setup["root"] / "mmer"), "--session", "7", wav],
    }[case]
    with pytest.raises(SystemExit, match=message) as error:
        predict.main(argv)
    assert str(error.value).startswith("error: ")


def test_a_model_trained_with_alpha_zero_refuses_the_ctc_fallback(setup, tmp_path):
    torch.manual_seed(3)
    model = build_model(ModelConfig(run="mmer", wav2vec2=str(setup["tiny"]["wav2vec2"]), text_dim=128, alpha=0.0))
    save_checkpoint(tmp_path / "1_model.pt", model, model_config=model.config.to_dict(), session=1, epoch=1)
    alpha_zero = recognizer(setup, folder=tmp_path)
    with pytest.raises(inference.PredictError, match="alpha 0.*untrained.*--transcript"):
        predict.predict_files(inputs_of(setup, ["calm"], with_transcripts=False), alpha_zero)
    given = predict.predict_files(inputs_of(setup, ["calm"]), alpha_zero)
    assert list(given["transcript_source"]) == ["given"]


def test_transcripts_for_an_audio_only_model_and_the_default_fold_are_said(setup, caplog):
    with caplog.at_level("WARNING"):
        inference.load_models(setup["root"] / "mmer")
        predict_with(setup, inputs_of(setup, ["calm"]))
    assert "session 1's model" in caplog.text and "--ensemble" in caplog.text
    assert "reads no text: the transcripts given are not used" in caplog.text


def test_safetensors_checkpoints_are_found(setup, tmp_path):
    from safetensors.torch import save_file
    save_file(setup["models"]["cai_sota", 1].state_dict(), tmp_path / "3_model.safetensors")
    models = inference.load_models(tmp_path, run="cai_sota", wav2vec2=str(setup["tiny"]["wav2vec2"]))
    assert list(models) == [tmp_path / "3_model.safetensors"]


def test_clips_shorter_than_the_receptive_field_are_refused_by_name(setup, tmp_path):
    sf.write(tmp_path / "click.wav", tone(0.02, 16000, 200), 16000)  # 20 ms < 25 ms
    with pytest.raises(inference.PredictError, match=r"click.wav: 20.0 ms .*receptive field \(400 samples, 25 ms\)"):
        predict_with(setup, pd.DataFrame({"path": [str(tmp_path / "click.wav")]}))


def test_folders_are_searched_for_every_format_soundfile_reads(setup, tmp_path):
    sf.write(tmp_path / "a.flac", tone(0.3, 16000, 200), 16000)
    sf.write(tmp_path / "b.ogg", tone(0.3, 16000, 200), 16000, format="OGG")
    sf.write(tmp_path / "c.wav", tone(0.3, 16000, 200), 16000)
    inputs = predict.collect_inputs([tmp_path])
    assert [Path(p).name for p in inputs["path"]] == ["a.flac", "b.ogg", "c.wav"]
    assert len(predict_with(setup, inputs)) == 3


def test_mmer_without_a_transcript_encodes_the_audio_once(setup, monkeypatch):
    encoded = []
    model_class = type(setup["models"]["mmer", 1])
    encode = model_class.encode_audio

    def counting(self, input_values, *args, **kwargs):
        encoded.append(input_values.shape[0])
        return encode(self, input_values, *args, **kwargs)
    monkeypatch.setattr(model_class, "encode_audio", counting)
    result = run_predict(setup, inputs_of(setup, ["calm", "loud"], with_transcripts=False), session="1")
    assert list(result["transcript_source"]) == ["ctc", "ctc"]
    assert sum(encoded) == 2  # each recording once: its CTC transcript and its emotion from one pass


def test_an_impossible_output_path_fails_before_any_model_is_loaded(setup, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(inference.EmotionRecognizer, "from_run", lambda *a, **k: pytest.fail("models were loaded"))
    with pytest.raises(SystemExit, match="cannot write there"):
        predict.main(["--checkpoint_dir", str(setup["root"] / "mmer"), str(setup["audio"] / "calm.wav"),
                      "--output", str(tmp_path / "file" / "out.json")])


def test_a_labelled_csv_gets_its_wa_ua_and_confusion_matrix(setup, tmp_path, capsys):
    listed = tmp_path / "labelled.csv"
    pd.DataFrame({"path": [str(setup["audio"] / "calm.wav"), str(setup["audio"] / "loud.wav")],
                  "Label": ["neu", "exc"]}).to_csv(listed, index=False)
    out = tmp_path / "out.json"
    table = predict.main(["--checkpoint_dir", str(setup["root"] / "cai_sota"), str(listed), "--output", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    y_true, y_pred = [2, 0], [CLASS_NAMES.index(label) for label in table["predicted_label"]]
    assert metrics["wa"] == pytest.approx(np.mean(np.array(y_true) == np.array(y_pred)))
    assert np.array(metrics["confusion"]).sum() == 2 and "UA" in capsys.readouterr().out


def test_the_python_api_docstring_example_runs(setup):
    import doctest
    globs = {"RUN_DIR": setup["root"] / "mmer", "AUDIO": str(setup["audio"] / "calm.wav")}
    runner = doctest.DocTestRunner()
    for example in doctest.DocTestFinder(recurse=False).find(inference, globs=globs):
        runner.run(example)
    assert runner.tries >= 4 and runner.failures == 0


# ---------------------------------------------------------------- long recordings
def test_windows_of_a_long_recording_cover_it_exactly_once():
    windows = inference.Windows(seconds=6, hop_seconds=3, long_seconds=30)
    for seconds in (6.5, 31, 64.33, 600):
        samples = round(seconds * 16000)
        spans = windows.spans(samples, 16000)
        assert spans[0].start == 0 and spans[-1].end == samples
        assert all(s.end - s.start == 96000 for s in spans)                      # every window 6 s
        assert [s.own_start for s in spans[1:]] == [s.own_end for s in spans[:-1]]  # owned parts tile it
        assert spans[0].own_start == 0 and spans[-1].own_end == samples
        assert all(s.start <= s.own_start < s.own_end <= s.end for s in spans)   # each owns part of itself


def test_a_long_recording_gets_a_timeline_and_a_duration_weighted_summary(setup, tmp_path):
    long = tmp_path / "long.wav"
    sf.write(long, np.concatenate([tone(20, 16000, 150), tone(21.5, 16000, 260)]), 16000)
    out = tmp_path / "out.json"
    table = predict.main(["--checkpoint_dir", str(setup["root"] / "cai_sota"), str(long), "--output", str(out)])
    timeline = pd.read_csv(tmp_path / "out_timelines" / "long.csv")
    assert (tmp_path / "out_timelines" / "long.png").stat().st_size > 1000
    assert table["windows"].iloc[0] == len(timeline) == 13
    owned = (timeline["own_end_s"] - timeline["own_start_s"]).to_numpy()
    assert owned.sum() == pytest.approx(41.5) and timeline["own_start_s"].iloc[0] == 0
    summary = (timeline[PROB_COLUMNS].to_numpy() * owned[:, None]).sum(axis=0) / owned.sum()
    np.testing.assert_allclose(table[PROB_COLUMNS].to_numpy()[0], summary, atol=1e-6)
    models = inference.load_models(setup["root"] / "cai_sota")
    alone = inference.EmotionRecognizer(models).predict(tone(6, 16000, 150), sample_rate=16000)
    assert timeline[PROB_COLUMNS].iloc[0].to_numpy() == pytest.approx(list(alone.probabilities.values()), abs=1e-5)


PEAK_DURING_PREDICTION = """
import sys
from pathlib import Path
import numpy as np
from inference import recognizer as inference
recognizer = inference.EmotionRecognizer(inference.load_models(sys.argv[1]))
recognizer.predict_windows(np.zeros(31 * 16000, np.float32), sample_rate=16000)  # warm up the windowed path
Path("/proc/self/clear_refs").write_text("5")      # reset the peak resident size (Linux)
recognizer.predict(sys.argv[2])
peak = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
print("PEAK", int(peak.split()[1]) / 1024)
"""


def peak_rss_mb(setup, path: Path) -> float:
    """Peak resident memory (MB) while a fresh process predicts one recording."""
    done = subprocess.run([sys.executable, "-c", PEAK_DURING_PREDICTION, str(setup["root"] / "cai_sota"), str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split("PEAK")[-1])


def test_peak_memory_of_a_long_recording_does_not_grow_with_its_length(setup, tmp_path):
    for seconds in (40, 240):  # 44.1 kHz stereo: the whole 240 s would be 85 MB as float32
        audio = tone(seconds, 44100, 180)
        sf.write(tmp_path / f"{seconds}.wav", np.stack([audio, audio], axis=1), 44100)
    short, long = (peak_rss_mb(setup, tmp_path / f"{s}.wav") for s in (40, 240))
    assert long - short < 30, (short, long)


def test_the_python_api_gives_predict_pys_output(setup, tmp_path):
    wavs = [str(setup["audio"] / f"{name}.wav") for name in ("calm", "loud")]
    table = predict.main(["--checkpoint_dir", str(setup["root"] / "mmer"), *wavs, "--ensemble",
                          "--output", str(tmp_path / "out.json")])
    recognizer = inference.EmotionRecognizer.from_run(setup["root"] / "mmer", ensemble=True)
    results = recognizer.predict_many(wavs)
    assert [r.label for r in results] == list(table["predicted_label"])
    np.testing.assert_allclose([list(r.probabilities.values()) for r in results], table[PROB_COLUMNS], atol=1e-6)
    assert [r.transcript_source for r in results] == list(table["transcript_source"]) == ["ctc", "ctc"]

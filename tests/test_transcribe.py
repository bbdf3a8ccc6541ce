"""ASR transcripts of a corpus table: the `transcript` column is filled and nothing else moves,
the model and its WER are recorded, a killed run resumes without redoing finished batches,
transcripts of two models are never mixed, bad inputs are named; and the tiny Whisper that
stands in for openai/whisper-small loads like it."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, Wav2Vec2ForCTC, WhisperForConditionalGeneration, pipeline

from dataio import transcripts as transcribe
from synthetic.tiny_models import (
    char_ctc_tokenizer,
    make_tiny_models,
    save_speech_encoder,
    save_tiny_whisper,
    tiny_wav2vec2_config,
)
from dataio.asr import TranscribeError, normalise_words, word_error_rate
from dataio.corpus import audio_paths
from dataio.transcripts import transcribe_table
from dataio.audio import write_wav

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["Hello there.", "I'm angry [LAUGHTER]", "so sad", "Yes, it's fine!"]
SECONDS = [0.5, 0.9, 1.3, 1.7]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops gain nothing from a second thread, and on a busy machine (pytest -n 2) two
    spinning OpenMP threads per process slow each decoding step tens of times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny models, and a tiny wav2vec2 with a CTC head: a second, non-Whisper recogniser."""
    root = tmp_path_factory.mktemp("tiny")
    paths = make_tiny_models(root, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ctc = Wav2Vec2ForCTC(tiny_wav2vec2_config())
    save_speech_encoder(ctc, root / "ctc")
    char_ctc_tokenizer().save_pretrained(root / "ctc")
    return {**paths, "ctc": root / "ctc"}


def make_corpus(folder: Path, sentences=True, extra_seconds=(), index=False) -> Path:
    """Four short wavs (sines in noise) in folder/audio and a table beside them (`index`: with
    upstream's unnamed leading index column)."""
    rng = np.random.default_rng(0)
    names = [f"utt{k}" for k in range(len(SECONDS) + len(extra_seconds))]
    for k, (name, seconds) in enumerate(zip(names, [*SECONDS, *extra_seconds])):
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * 180 * (k + 1) * t) + 0.05 * rng.standard_normal(len(t))
        write_wav(folder / "audio" / f"{name}.wav", wave.astype(np.float32))
    table = pd.DataFrame({"FileName": names, "Label": ["neu", "ang", "sad", "hap", "neu"][: len(names)],
                          "duration": [f"{s:.2f}" for s in [*SECONDS, *extra_seconds]]})
    if sentences:
        table.insert(1, "Sentences", [*SENTENCES, "and a long one"][: len(names)])
    table.to_csv(folder / "corpus.csv", index=index)
    return folder / "corpus.csv"


def read(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, dtype=str, keep_default_na=False)


def sidecar_lines(csv: Path) -> list[dict]:
    return [json.loads(line) for line in (csv.parent / "corpus.transcribe.jsonl").read_text().splitlines()]


@pytest.fixture
def counted(monkeypatch):
    """Count the utterances that reach the recogniser."""
    calls = []
    real = transcribe.recognise

    def counting(recogniser, waves, *args, **kwargs):
        calls.append(len(waves))
        return real(recogniser, waves, *args, **kwargs)

    monkeypatch.setattr(transcribe, "recognise", counting)
    return calls


def test_transcript_column_is_added_with_one_string_per_row_and_other_columns_unchanged(tmp_path, models):
    csv = make_corpus(tmp_path, index=True)
    before = read(csv)
    transcribe_table(csv, models["whisper"], language="en", batch_size=3, device="cpu")
    after = read(csv)
    assert csv.read_text().startswith(",FileName,")  # the unnamed index column keeps its empty name
    assert list(after.columns) == [*before.columns, "transcript"]
    pd.testing.assert_frame_equal(after[before.columns], before)  # values as written, rows in order
    raw = pd.read_csv(csv, keep_default_na=False)
    assert len(raw) == len(before) and all(isinstance(text, str) for text in raw["transcript"])


def test_asr_record_names_the_model_language_and_wer_against_sentences(tmp_path, models):
    csv = make_corpus(tmp_path)
    summary = transcribe_table(csv, models["whisper"], language="en", device="cpu")
    record = json.loads((tmp_path / "corpus.asr.json").read_text())
    assert record == summary
    assert record["model"] == str(Path(models["whisper"]).resolve()) and record["language"] == "en"
    assert record["utterances"] == 4 and record["audio_seconds"] == pytest.approx(sum(SECONDS), abs=1e-3)
    table = read(csv)
    expected, scored = word_error_rate(SENTENCES, table["transcript"])
    assert record["wer"] == pytest.approx(expected, abs=1e-4) and record["wer_utterances"] == scored == 4
    assert record["time_per_audio_hour_s"] > 0


def test_without_reference_sentences_the_wer_is_none(tmp_path, models):
    summary = transcribe_table(make_corpus(tmp_path, sentences=False), models["whisper"], device="cpu")
    assert summary["wer"] is None and summary["wer_utterances"] == 0


def test_wer_normalisation_drops_case_punctuation_and_non_speech_tags():
    assert normalise_words("I'm ANGRY, [LAUGHTER] really?!  {LG} Well-done") == "im angry really well done"
    assert word_error_rate(["Hello there.", "[BREATHING]"], ["hello", "anything"]) == (0.5, 1)
    assert word_error_rate(["[GARBAGE]"], ["x"]) == (None, 0)


def test_killed_run_resumes_with_only_the_unfinished_utterances(tmp_path, models, monkeypatch):
    csv = make_corpus(tmp_path)
    real = transcribe.recognise
    batches = []

    def killed_after_one_batch(recogniser, waves, *args, **kwargs):
        if batches:
            raise KeyboardInterrupt
        batches.append(len(waves))
        return real(recogniser, waves, *args, **kwargs)

    monkeypatch.setattr(transcribe, "recognise", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        transcribe_table(csv, models["whisper"], language="en", batch_size=2, device="cpu")
    assert "transcript" not in read(csv).columns  # the table is only written at the end
    assert [entry["FileName"] for entry in sidecar_lines(csv)[1:]] == ["utt3", "utt2"]  # longest first

    batches.clear()
    monkeypatch.setattr(transcribe, "recognise", lambda recogniser, waves, *args, **kwargs: (
        batches.append(len(waves)) or real(recogniser, waves, *args, **kwargs)))
    summary = transcribe_table(csv, models["whisper"], language="en", batch_size=2, device="cpu")
    assert batches == [2] and summary["transcribed"] == 2
    finished = {entry["FileName"]: entry["transcript"] for entry in sidecar_lines(csv)[1:]}
    assert read(csv)["transcript"].tolist() == [finished[name] for name in read(csv)["FileName"]]


def test_rerun_transcribes_only_what_the_sidecar_lacks(tmp_path, models, counted):
    csv = make_corpus(tmp_path)
    transcribe_table(csv, models["whisper"], language="en", device="cpu")
    first = read(csv)["transcript"].tolist()
    sidecar = tmp_path / "corpus.transcribe.jsonl"
    sidecar.write_text("\n".join(line for line in sidecar.read_text().splitlines() if '"utt1"' not in line) + "\n")
    counted.clear()
    transcribe_table(csv, models["whisper"], language="en", device="cpu")
    assert counted == [1] and read(csv)["transcript"].tolist() == first
    counted.clear()
    assert transcribe_table(csv, models["whisper"], language="en", device="cpu")["transcribed"] == 0
    assert counted == []


def test_another_model_or_language_is_refused_not_mixed_and_overwrite_redoes_all(tmp_path, models, counted, caplog):
    csv = make_corpus(tmp_path)
    transcribe_table(csv, models["whisper"], language="en", batch_size=2, device="cpu")
    table = read(csv)
    for asr, language in ((models["ctc"], None), (models["whisper"], "de")):
        with pytest.raises(TranscribeError, match="--overwrite"):
            transcribe_table(csv, asr, language=language, device="cpu")
    pd.testing.assert_frame_equal(read(csv), table)
    counted.clear()
    with caplog.at_level(logging.WARNING):
        summary = transcribe_table(csv, models["ctc"], language="en", batch_size=2, device="cpu", overwrite=True)
    assert "--language en ignored" in caplog.text  # a CTC model takes no language
    assert sum(counted) == 4 and summary["model"] == str(Path(models["ctc"]).resolve())
    assert summary["language"] is None and summary["num_beams"] is None
    header, *entries = sidecar_lines(csv)
    assert header["model"] == summary["model"] and len(entries) == 4  # the Whisper transcripts are gone


def test_language_and_task_reach_whisper_generation(tmp_path, models, monkeypatch):
    seen = []
    real = WhisperForConditionalGeneration.generate

    def spy(self, *args, **kwargs):
        seen.append({key: kwargs.get(key) for key in ("language", "task", "num_beams")})
        return real(self, *args, **kwargs)

    monkeypatch.setattr(WhisperForConditionalGeneration, "generate", spy)
    transcribe_table(make_corpus(tmp_path), models["whisper"], language="fr", batch_size=4, device="cpu")
    assert seen == [{"language": "fr", "task": "transcribe", "num_beams": 1}]


def test_language_names_become_whisper_codes_and_unknown_ones_are_refused(tmp_path, models, counted):
    csv = make_corpus(tmp_path)
    with pytest.raises(TranscribeError, match="--language klingon: not a language of"):
        transcribe_table(csv, models["whisper"], language="klingon", device="cpu")
    assert counted == []  # refused before anything was transcribed
    assert transcribe_table(csv, models["whisper"], language="French", device="cpu")["language"] == "fr"


def test_clips_longer_than_whisper_window_are_decoded_alone_by_long_form(tmp_path, models, counted):
    csv = make_corpus(tmp_path, extra_seconds=[31.0])
    summary = transcribe_table(csv, models["whisper"], language="en", batch_size=8, device="cpu")
    assert counted == [5] and summary["utterances"] == 5
    assert all(isinstance(text, str) for text in read(csv)["transcript"])


def test_audio_paths_follow_the_path_column_relative_or_absolute(tmp_path):
    table = pd.DataFrame({"FileName": ["a", "b", "c"], "path": ["sub/a.flac", str(tmp_path / "abs.wav"), ""]})
    assert audio_paths(table, tmp_path / "audio") == [
        tmp_path / "audio" / "sub" / "a.flac", tmp_path / "abs.wav", tmp_path / "audio" / "c.wav"]
    assert audio_paths(table.drop(columns="path"), tmp_path) == [tmp_path / f"{n}.wav" for n in "abc"]


def test_missing_audio_is_named_with_exit_code_2_before_any_model_is_loaded(tmp_path):
    csv = make_corpus(tmp_path)
    (tmp_path / "audio" / "utt1.wav").unlink()
    (tmp_path / "audio" / "utt3.wav").write_bytes(b"not a wav")
    result = subprocess.run(
        [sys.executable, "data_prep/transcribe.py", "--csv", str(csv), "--asr", str(tmp_path / "no_such_model")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "utt1.wav (missing)" in result.stderr and "utt3.wav (unreadable" in result.stderr
    assert "no_such_model" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("problem", ["no table", "no FileName", "roberta", "wav2vec2 without CTC head"])
def test_bad_inputs_are_refused_naming_the_file(tmp_path, models, problem):
    csv = make_corpus(tmp_path)
    asr = models["whisper"]
    if problem == "no table":
        csv, expected = tmp_path / "nothing.csv", "nothing.csv: table not found"
    elif problem == "no FileName":
        read(csv).rename(columns={"FileName": "name"}).to_csv(csv, index=False)
        expected = "corpus.csv: no FileName column"
    else:
        asr = models["roberta" if problem == "roberta" else "wav2vec2"]
        expected = "is not a speech recogniser"
    with pytest.raises(TranscribeError, match=expected):
        transcribe_table(csv, asr, device="cpu")


def test_tiny_whisper_loads_through_the_asr_pipeline_and_generates_with_a_language(models):
    recogniser = pipeline("automatic-speech-recognition", model=str(models["whisper"]), device="cpu")
    assert recogniser.type == "seq2seq_whisper"
    waves = [np.zeros(16000, np.float32), 0.1 * np.ones(24000, np.float32)]
    outputs = recogniser(waves, batch_size=2, generate_kwargs={"language": "en", "num_beams": 1})
    assert [type(output["text"]) for output in outputs] == [str, str]
    processor = AutoProcessor.from_pretrained(models["whisper"])
    features = processor(waves, sampling_rate=16000, return_tensors="pt").input_features
    assert features.shape == (2, 80, 3000)  # every clip padded to 30 s
    model = WhisperForConditionalGeneration.from_pretrained(models["whisper"])
    tokens = model.generate(features, language="en", task="transcribe")
    assert tokens.shape[0] == 2 and tokens.shape[1] <= 40
    token_id = processor.tokenizer.convert_tokens_to_ids
    generation = model.generation_config
    assert generation.max_length == 40  # random weights seldom end a transcript: cap it
    assert generation.decoder_start_token_id == token_id("<|startoftranscript|>")
    assert {"<|en|>", "<|fr|>", "<|de|>"} <= set(generation.lang_to_id)
    assert generation.lang_to_id["<|en|>"] == token_id("<|en|>")
    assert generation.task_to_id == {"translate": token_id("<|translate|>"), "transcribe": token_id("<|transcribe|>")}
    assert generation.no_timestamps_token_id == token_id("<|notimestamps|>")


def test_tiny_whisper_same_seed_gives_identical_weights_and_another_seed_different_ones(models, tmp_path):
    first = load_file(models["whisper"] / "model.safetensors")
    again = load_file(save_tiny_whisper(tmp_path / "again", seed=0) / "model.safetensors")
    other = load_file(save_tiny_whisper(tmp_path / "other", seed=1) / "model.safetensors")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_two_torchrun_processes_write_what_one_process_writes(tmp_path, models):
    """Disjoint shards (the single process's batches, dealt out whole), one merged table and
    sidecar, no shard left behind; the CTC model, whose padding matters, in batches of 2."""
    one, two = make_corpus(tmp_path / "one", extra_seconds=(1.3,)), make_corpus(tmp_path / "two", extra_seconds=(1.3,))
    transcribe_table(one, models["ctc"], batch_size=2, device="cpu")
    launch = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "data_prep/transcribe.py", "--csv", str(two), "--asr", str(models["ctc"]),
                             "--batch_size", "2", "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert read(two).equals(read(one)) and read(one)["transcript"].str.len().sum() > 0
    assert sorted(map(json.dumps, sidecar_lines(two)[1:])) == sorted(map(json.dumps, sidecar_lines(one)[1:]))
    assert not list(two.parent.glob("*.rank*.jsonl")) and launch.stdout.count("utterances (") == 1
    shares = json.loads((two.parent / "corpus.asr.json").read_text())["transcribed_per_process"]
    assert sum(shares) == 5 and min(shares) > 0

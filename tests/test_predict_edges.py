"""predict.py at its edges (issue 28): a csv's transcripts come from the column the run's text
features were made from, and a contradiction is said; every bad input and a bad --output are named
at once before any compute, or --skip_bad predicts the rest and lists the others; an empty
transcript is said once per recording, naming it and the fix. The run folders are
tests/test_predict.py's (`setup`, tiny encoders)."""
import json
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

import predict
from dataio.text_features import extract, recorded_encoder
from inference import recognizer as inference
from tests.test_predict import TRANSCRIPTS, setup, tone  # noqa: F401  (setup: the module's run folders)

SENTENCES = {"calm": "We could talk about it tomorrow.", "loud": "Not again, please!"}


def never_scored(monkeypatch):
    """Make any model compute fail the test: checks must come first."""
    monkeypatch.setattr(inference.EmotionRecognizer, "_score", lambda *a, **k: pytest.fail("the model was run"))


def bad_clips(folder):
    """A missing file, a 0-byte one and one shorter than the receptive field (20 ms < 25 ms)."""
    (folder / "empty.wav").write_bytes(b"")
    sf.write(folder / "click.wav", tone(0.02, 16000, 200), 16000)
    return {"missing": folder / "missing.wav", "empty": folder / "empty.wav", "short": folder / "click.wav"}


# ---------------------------------------------------------------- which transcript column
@pytest.fixture(scope="module")
def sentences_run(setup, tmp_path_factory):
    """An mmer run whose text features came from Sentences: extract_roberta's encoder.json, copied
    into config.json as run.py's record_config copies it."""
    root = tmp_path_factory.mktemp("sentences_run")
    table = root / "utterances.csv"
    pd.DataFrame({"FileName": ["calm", "loud"], "Sentences": [SENTENCES["calm"], SENTENCES["loud"]]}).to_csv(
        table, index=False)
    extract(table, root / "roberta", roberta=setup["tiny"]["roberta"], device="cpu")
    run_dir = root / "mmer"
    run_dir.mkdir()
    shutil.copy(setup["root"] / "mmer" / "1_model.pt", run_dir / "1_model.pt")
    (run_dir / "config.json").write_text(json.dumps({"run": {"roberta": str(setup["tiny"]["roberta"])},
                                                     "text_encoder": recorded_encoder(root / "roberta")}))
    return run_dir


def both_columns_csv(setup, folder):
    listed = folder / "both.csv"
    pd.DataFrame({"path": [str(setup["audio"] / f"{n}.wav") for n in ("calm", "loud")],
                  "transcript": [TRANSCRIPTS["calm"], TRANSCRIPTS["loud"]],
                  "Sentences": [SENTENCES["calm"], SENTENCES["loud"]]}).to_csv(listed, index=False)
    return listed


def test_a_csv_is_read_from_the_column_the_runs_features_were_made_from(setup, sentences_run, tmp_path, caplog):
    assert json.loads((sentences_run / "config.json").read_text())["text_encoder"]["text_column"] == "Sentences"
    out = tmp_path / "out.json"
    with caplog.at_level(logging.INFO):
        predict.main(["--checkpoint_dir", str(sentences_run), str(both_columns_csv(setup, tmp_path)),
                      "--output", str(out), "--device", "cpu"])
    rows = json.loads(out.read_text())["predictions"]
    assert [row["transcript"] for row in rows] == [SENTENCES["calm"], SENTENCES["loud"]]
    assert {row["transcript_source"] for row in rows} == {"given"}
    assert "Sentences column, the one the run's text features were made from" in caplog.text


def test_an_asked_column_other_than_the_recorded_one_is_read_and_the_contradiction_said(tmp_path, caplog):
    csv = tmp_path / "both.csv"
    with caplog.at_level(logging.WARNING):
        chosen = predict.transcript_column(csv, ["path", "transcript", "Sentences"], "Sentences", "transcript")
    assert chosen == "transcript"
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and "transcript column (--text_column)" in said[0] and "made from the Sentences" in said[0]


def test_an_asked_column_the_csv_lacks_is_refused_by_name(setup, sentences_run, tmp_path):
    listed = tmp_path / "only_transcript.csv"
    pd.DataFrame({"path": [str(setup["audio"] / "calm.wav")], "transcript": ["hello"]}).to_csv(listed, index=False)
    with pytest.raises(SystemExit, match=r"only_transcript.csv: no Sentences column \(--text_column Sentences\)"):
        predict.main(["--checkpoint_dir", str(sentences_run), str(listed), "--text_column", "Sentences"])


def test_a_csv_without_the_recorded_column_reads_another_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        chosen = predict.transcript_column(tmp_path / "x.csv", ["path", "transcript"], "Sentences", None)
    assert chosen == "transcript"
    assert "no Sentences column, the one the run's text features were made from" in caplog.text


def test_without_a_record_transcript_comes_before_sentences_and_is_said(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        chosen = predict.transcript_column(tmp_path / "x.csv", ["path", "Sentences", "transcript"], None, None)
    assert chosen == "transcript" and "the run records no text column" in caplog.text


# ---------------------------------------------------------------- every problem at once
def test_every_bad_input_is_named_at_once_and_nothing_is_computed(setup, tmp_path, monkeypatch):
    bad = bad_clips(tmp_path)
    never_scored(monkeypatch)
    out = tmp_path / "out.json"
    good = str(setup["audio"] / "calm.wav")
    with pytest.raises(SystemExit) as error:
        predict.main(["--checkpoint_dir", str(setup["root"] / "mmer"), good, *map(str, bad.values()),
                      "--output", str(out), "--device", "cpu"])
    message = str(error.value)
    assert message.startswith("error: 3 problems, nothing predicted")
    assert all(str(path) in message for path in bad.values()) and good not in message
    assert "no such file or folder" in message and "unreadable audio" in message and "receptive field" in message
    assert "--skip_bad" in message and not out.exists()


def test_bad_labels_are_named_before_any_compute(setup, tmp_path, monkeypatch):
    listed = tmp_path / "labelled.csv"
    pd.DataFrame({"path": [str(setup["audio"] / n) for n in ("calm.wav", "loud.wav", "calm.wav")],
                  "Label": ["neu", "bored", ""]}).to_csv(listed, index=False)
    never_scored(monkeypatch)
    with pytest.raises(SystemExit) as error:
        predict.main(["--checkpoint_dir", str(setup["root"] / "cai_sota"), str(listed)])
    message = str(error.value)
    assert "2 problems" in message and "Label 'bored' is not a class of the run" in message
    assert "no Label, while other recordings have one" in message


@pytest.mark.parametrize("where, words", [("a_folder", "cannot write there (it is a folder)"),
                                          ("under_a_file", "cannot write there"),
                                          ("timelines_taken", "{folder}/out_timelines, where long recordings' "
                                                              "timelines go, is a file")])
def test_an_unwritable_output_is_named_with_the_bad_inputs_before_any_model_is_loaded(setup, tmp_path, monkeypatch,
                                                                                       where, words):
    (tmp_path / "taken.json").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "out_timelines").write_text("")
    output = {"a_folder": tmp_path / "taken.json", "under_a_file": tmp_path / "file" / "out.json",
              "timelines_taken": tmp_path / "out.json"}[where]
    monkeypatch.setattr(inference.EmotionRecognizer, "from_run", lambda *a, **k: pytest.fail("models were loaded"))
    with pytest.raises(SystemExit) as error:
        predict.main(["--checkpoint_dir", str(setup["root"] / "mmer"), str(setup["audio"] / "calm.wav"),
                      str(tmp_path / "gone.wav"), "--output", str(output)])
    message = str(error.value)
    assert f"--output {output}: {words.format(folder=tmp_path)}" in message
    assert "gone.wav: no such file or folder" in message  # named with it


def test_skip_bad_predicts_the_good_ones_and_lists_the_skipped(setup, tmp_path, caplog, capsys):
    bad = bad_clips(tmp_path)
    listed = tmp_path / "listed.csv"  # a csv row whose audio is missing is skipped too
    pd.DataFrame({"path": [str(setup["audio"] / "loud.wav"), "nowhere.wav"]}).to_csv(listed, index=False)
    good = str(setup["audio"] / "calm.wav")
    out = tmp_path / "out.json"
    with caplog.at_level(logging.WARNING):
        table = predict.main(["--checkpoint_dir", str(setup["root"] / "cai_sota"), good, str(bad["empty"]),
                              str(listed), str(bad["short"]), str(bad["missing"]), "--skip_bad", "--output", str(out)])
    written = json.loads(out.read_text())
    loud, nowhere = str(setup["audio"] / "loud.wav"), str(tmp_path / "nowhere.wav")
    assert [row["file"] for row in written["predictions"]] == list(table["file"]) == [good, loud]
    skipped = {item["input"]: item["problem"] for item in written["skipped"]}
    assert set(skipped) == {str(bad["empty"]), nowhere, str(bad["short"]), str(bad["missing"])}
    assert "receptive field" in skipped[str(bad["short"])] and "audio not found" in skipped[nowhere]
    printed = capsys.readouterr().out
    assert "skipped 4 input(s)" in printed and all(path in printed for path in skipped)
    assert "--skip_bad: skipping 4 input(s), predicting the other 2" in caplog.text


def test_the_python_api_names_every_unreadable_recording_at_once(setup, tmp_path, monkeypatch):
    """Headers fine, decoding fails (as a truncated or corrupt file's does): both named, after all were read."""
    recognizer = inference.EmotionRecognizer(inference.load_models(setup["root"] / "cai_sota"))
    read = inference.read_audio
    tried = []

    def failing(path, *args):
        tried.append(path)
        if "loud" in str(path) or "copy" in str(path):
            raise inference.AudioError(f"{path}: truncated or corrupt audio; copy it again")
        return read(path, *args)
    monkeypatch.setattr(inference, "read_audio", failing)
    never_scored(monkeypatch)
    shutil.copy(setup["audio"] / "calm.wav", tmp_path / "copy.wav")
    paths = [str(setup["audio"] / "loud.wav"), str(setup["audio"] / "calm.wav"), str(tmp_path / "copy.wav")]
    with pytest.raises(inference.UnusableInputs) as error:
        recognizer.predict_many(paths)
    assert tried == paths
    assert error.value.problems == [f"{paths[0]}: truncated or corrupt audio; copy it again",
                                    f"{paths[2]}: truncated or corrupt audio; copy it again"]


# ---------------------------------------------------------------- an empty transcript
def test_an_empty_transcript_is_said_once_per_recording_with_its_name_and_the_fix(setup, tmp_path, monkeypatch,
                                                                                  caplog):
    monkeypatch.setattr(inference, "decode_ctc", lambda logits, lengths: [""] * len(lengths))  # it heard no words
    long = tmp_path / "long.wav"
    sf.write(long, tone(6, 16000, 170), 16000)
    short = str(setup["audio"] / "calm.wav")
    with caplog.at_level(logging.WARNING):
        table = predict.main(["--checkpoint_dir", str(setup["root"] / "mmer"), str(long), short, "--device", "cpu",
                              "--long_seconds", "3", "--window_seconds", "1.5", "--hop_seconds", "0.75"])
    assert table["windows"].iloc[0] == 7 and list(table["transcript_source"]) == ["ctc", "ctc"]
    said = [r.getMessage() for r in caplog.records if "empty" in r.getMessage() or "no words" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith(f"{long}: the model's CTC head heard no words in 7 of its 7 windows")
    assert "--asr" in said[0] and "windows are each transcribed" in said[0]  # a whole transcript is not split
    assert said[1].startswith(f"{short}: the model's CTC head heard no words,")
    assert "--transcript" in said[1] and "--asr" in said[1]

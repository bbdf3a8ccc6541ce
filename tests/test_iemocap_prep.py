"""data_prep/iemocap_prep.py: the parsers on literal snippets of the release formats,
then the whole script on fake releases built from the upstream csv's 5531 utterances."""
import contextlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data_prep.iemocap_prep import main
from dataio.iemocap import (COLUMNS, LabelRecord, ReleaseError, count_differences, join_dialog, parse_emo_evaluation,
                            parse_transcriptions, prepare, with_augmented_text)
from dataio.corpus import read_table
from tests.fake_release import UPSTREAM_CSV, FakeRelease, build_fake_release, vad_of, write_noise_wav

REPO = Path(__file__).resolve().parents[1]
LOGGER = "dataio.iemocap"

EMO_SNIPPET = """% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E2:\tNeutral;\t()
C-E3:\tNeutral;\t()
A-E3:\tval 3; act 2; dom  2;\t()

[10.0100 - 11.3925]\tSes01F_impro01_M001\tfru\t[2.0000, 3.5000, 3.0000]
C-E2:\tFrustration;\tAnger;\t()
A-E3:\tval 2; act 3; dom  3;\t()

[12.5 - 14.0]\tSes01F_impro01_F002\texc\t[4.0000, 4.0000, 3.5000]
"""
TRANSCRIPT_SNIPPET = """Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.
Ses01F_impro01_MXX0 [009.0000-009.5000]: [BREATHING]
Ses01F_impro01_M001 [010.0100-011.3925]: Do you have your forms?
Ses01F_impro01_F002 [012.5000-014.0000]: Yes: I do [LAUGHTER] right here.  
"""


@contextlib.contextmanager
def warnings_logged():
    """The WARNING records of the prep module (caplog is per test; fixtures here are per module)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


def first_utterance(release: FakeRelease, session: int) -> str:
    return release.rows.FileName[release.rows.FileName.str[4] == str(session)].iloc[0]


@pytest.fixture(scope="module")
def full_release(tmp_path_factory) -> FakeRelease:
    return build_fake_release(tmp_path_factory.mktemp("full") / "IEMOCAP_full_release")


@pytest.fixture(scope="module")
def prepared(full_release, tmp_path_factory):
    """(out_dir, warning records) of one prepare() over the full fake release."""
    out_dir = tmp_path_factory.mktemp("prepared")
    with warnings_logged() as records:
        prepare(full_release.root, out_dir)
    return out_dir, records


@pytest.fixture
def small_release(tmp_path) -> FakeRelease:
    return build_fake_release(tmp_path / "IEMOCAP_full_release", per_session=4)


# ---------------------------------------------------------------- pure parsers


def test_emo_evaluation_parser_reads_every_utterance_line_and_skips_annotator_lines():
    assert parse_emo_evaluation(EMO_SNIPPET) == [
        LabelRecord("Ses01F_impro01_F000", "neu", 6.2901, 8.2357, 2.5, 2.5, 2.5),
        LabelRecord("Ses01F_impro01_M001", "fru", 10.01, 11.3925, 2.0, 3.5, 3.0),
        LabelRecord("Ses01F_impro01_F002", "exc", 12.5, 14.0, 4.0, 4.0, 3.5),
    ]


def test_emo_evaluation_parser_keeps_v_a_d_in_thirds_and_sixths_as_the_release_gives_them():
    text = ("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            "[15.8100 - 19.2300]\tSes03M_script02_2_F012\tsad\t[1.6667, 2.1667, 3.3333]\n"
            "C-E1:\tSadness;\t()\nA-E1:\tval 2; act 2; dom  3;\t()\n\n"
            "[20.0000 - 21.5000]\tSes03M_script02_2_M013\tang\t[2.8333, 4.6667, 4.1667]\n")
    assert [(r.valence, r.arousal, r.dominance) for r in parse_emo_evaluation(text)] == [
        (1.6667, 2.1667, 3.3333), (2.8333, 4.6667, 4.1667)]


def test_emo_evaluation_parser_names_a_label_line_whose_v_a_d_is_not_three_numbers():
    with pytest.raises(ValueError, match="line 2: cannot read label line"):
        parse_emo_evaluation("% header\n[1.0 - 2.0]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000]\n")


def test_emo_evaluation_parser_names_the_line_of_a_malformed_label_line():
    with pytest.raises(ValueError, match="line 3: cannot read label line"):
        parse_emo_evaluation("% header\n\n[6.2901 - ]\tSes01F_impro01_F000\tneu\n")


def test_transcription_parser_keeps_text_as_written_including_brackets_and_colons():
    transcripts = parse_transcriptions(TRANSCRIPT_SNIPPET)
    assert transcripts["Ses01F_impro01_F000"] == "Excuse me."
    assert transcripts["Ses01F_impro01_F002"] == "Yes: I do [LAUGHTER] right here."
    assert transcripts["Ses01F_impro01_MXX0"] == "[BREATHING]"  # dropped later: no label names it


def test_transcription_parser_refuses_two_different_transcripts_for_one_utterance():
    with pytest.raises(ValueError, match="line 2: second, different transcript for Ses01F_impro01_F000"):
        parse_transcriptions("Ses01F_impro01_F000 [1-2]: Hello.\nSes01F_impro01_F000 [1-2]: Bye.\n")


def test_join_keeps_the_4class_labels_exc_unmerged_and_drops_unlabelled_turns():
    rows, problems = join_dialog(parse_emo_evaluation(EMO_SNIPPET), parse_transcriptions(TRANSCRIPT_SNIPPET),
                                 "labels.txt", "transcripts.txt")
    assert problems == []
    assert [(r["FileName"], r["Label"]) for r in rows] == [("Ses01F_impro01_F000", "neu"),
                                                           ("Ses01F_impro01_F002", "exc")]
    assert rows[1]["text"] == "YES: I DO [LAUGHTER] RIGHT HERE."
    assert (rows[1]["valence"], rows[1]["arousal"], rows[1]["dominance"]) == (4.0, 4.0, 3.5)
    assert (rows[1]["session"], rows[1]["speaker"], rows[1]["gender"]) == (1, "Ses01_F", "F")
    assert (rows[1]["start"], rows[1]["end"]) == (12.5, 14.0)


def test_join_reports_a_labelled_utterance_without_transcript_naming_the_transcript_file():
    records = [LabelRecord("Ses02M_script01_1_M003", "sad", 1.0, 2.0, 2.0, 2.0, 2.0)]
    rows, problems = join_dialog(records, {}, "labels.txt", "Session2/transcripts.txt")
    assert rows == []
    assert str(problems[0]).startswith("ERROR Session2/transcripts.txt: no transcript for labelled "
                                       "utterance Ses02M_script01_1_M003; ")


# ---------------------------------------------------------------- the full release


def test_full_release_yields_exactly_the_upstream_4class_rows(prepared):
    out_dir, _ = prepared
    table = pd.read_csv(out_dir / "iemocap.csv", keep_default_na=False)
    upstream = pd.read_csv(UPSTREAM_CSV, keep_default_na=False).sort_values("FileName", ignore_index=True)
    assert list(table.columns) == COLUMNS
    assert table.FileName.tolist() == upstream.FileName.tolist()  # same 5531 ids, sorted
    assert table.Label.tolist() == upstream.Label.tolist()
    assert table.Sentences.tolist() == upstream.Sentences.tolist()
    assert table.text.tolist() == upstream.Sentences.str.upper().tolist()
    assert table.session.tolist() == upstream.FileName.str[4].astype(int).tolist()
    assert table.speaker.tolist() == (upstream.FileName.str[:5] + "_" + upstream.FileName.str[-4]).tolist()
    assert set(table.gender) == {"F", "M"}
    # The fake release writes each label line's span as its wav's length.
    assert np.allclose(table.duration, table.end - table.start, atol=1e-4)


def test_full_release_writes_each_label_lines_v_a_d_unrounded(prepared, full_release):
    out_dir, _ = prepared
    text = (out_dir / "iemocap.csv").read_text()
    table = pd.read_csv(out_dir / "iemocap.csv", keep_default_na=False)
    given = [vad_of(name) for name in table.FileName]  # what each label line of the fake release says
    assert table[["valence", "arousal", "dominance"]].to_numpy().tolist() == [[float(x) for x in v] for v in given]
    assert ",3.3333,2.1667,4.0," in text and ",1.6667,4.8333,3.5," in text  # thirds and sixths, not rounded


def test_the_corpus_reader_keeps_the_v_a_d_columns_of_a_prepared_table(prepared):
    out_dir, _ = prepared
    table, label_set = read_table(out_dir / "iemocap.csv")
    assert label_set.classes == ("hap", "ang", "neu", "sad") and len(table) == 5531
    assert set(table.valence) | set(table.arousal) | set(table.dominance) == {
        1.6667, 2.1667, 2.5, 3.3333, 3.5, 4.0, 4.8333}


def test_full_release_writes_one_wav_per_row(prepared, full_release):
    out_dir, _ = prepared
    wavs = sorted(p.stem for p in (out_dir / "audio").iterdir())
    assert wavs == sorted(full_release.rows.FileName)
    name = wavs[0]
    assert (out_dir / "audio" / f"{name}.wav").read_bytes() == full_release.wav(name).read_bytes()


def test_real_release_counts_raise_no_warning(prepared):
    _, records = prepared
    assert [r.getMessage() for r in records] == []


def test_identical_rerun_skips_audio_and_csv_already_written(prepared, full_release):
    out_dir, _ = prepared
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files_under(out_dir)}
    prepare(full_release.root, out_dir)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files_under(out_dir)} == stamp


# ---------------------------------------------------------------- options and output folder


def test_reduced_release_warns_loudly_that_counts_differ(small_release, tmp_path, caplog):
    prepare(small_release.root, tmp_path / "out")
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "THE 4-CLASS COUNTS DIFFER FROM THE REAL IEMOCAP RELEASE'S" in warning
    assert "total: 20 (real release: 5531)" in warning
    assert "EXPECTED FOR THE SYNTHETIC DEMO CORPUS" in warning
    assert len(count_differences(pd.read_csv(tmp_path / "out/iemocap.csv"))) == 11  # 5 labels, 5 sessions, total


def test_link_makes_symlinks_to_the_release_wavs(small_release, tmp_path):
    table = prepare(small_release.root, tmp_path / "out", link=True)
    for name in table.FileName:
        dest = tmp_path / "out/audio" / f"{name}.wav"
        assert dest.is_symlink() and dest.resolve() == small_release.wav(name).resolve()


def test_stereo_and_other_rates_are_written_as_16k_mono_pcm16_copies(small_release, tmp_path):
    rng = np.random.default_rng(1)
    stereo, narrowband = first_utterance(small_release, 1), first_utterance(small_release, 2)
    write_noise_wav(small_release.wav(stereo), 4410, rng, sample_rate=44100, channels=2)
    write_noise_wav(small_release.wav(narrowband), 800, rng, sample_rate=8000)
    table = prepare(small_release.root, tmp_path / "out", link=True).set_index("FileName")
    for name in (stereo, narrowband):
        dest = tmp_path / "out/audio" / f"{name}.wav"
        info = sf.info(str(dest))
        assert not dest.is_symlink()
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == pytest.approx(1600, abs=2)
        assert table.loc[name, "duration"] == pytest.approx(0.1)


def test_a_different_csv_in_the_output_folder_is_refused_unless_overwrite(small_release, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "iemocap.csv").write_text("FileName\nSes09X_other\n")
    with pytest.raises(ReleaseError, match=f"ERROR {out_dir / 'iemocap.csv'}: already holds a different csv"):
        prepare(small_release.root, out_dir)
    assert [p.name for p in files_under(out_dir)] == ["iemocap.csv"]
    prepare(small_release.root, out_dir, overwrite=True)
    assert len(pd.read_csv(out_dir / "iemocap.csv")) == 20


def test_run_stopped_before_its_csv_resumes_without_rewriting_present_audio(small_release, tmp_path):
    out_dir = tmp_path / "out"
    table = prepare(small_release.root, out_dir)
    (out_dir / "iemocap.csv").unlink()
    (out_dir / "audio" / f"{table.FileName[0]}.wav").unlink()
    kept = {p: p.stat().st_ino for p in files_under(out_dir)}
    prepare(small_release.root, out_dir)
    assert all(p.stat().st_ino == ino for p, ino in kept.items())
    assert (out_dir / "audio" / f"{table.FileName[0]}.wav").is_file()
    assert (out_dir / "iemocap.csv").is_file()


# ---------------------------------------------------------------- bad releases


def remove_session(release):
    shutil.rmtree(release.root / "Session3")
    return release.root / "Session3"


def remove_label_folder(release):
    folder = release.label_file(first_utterance(release, 2)).parent
    shutil.rmtree(folder)
    return folder


def remove_label_file(release):
    release.label_file(first_utterance(release, 4)).unlink()
    return release.label_file(first_utterance(release, 4))


def remove_wav(release):
    release.wav(first_utterance(release, 5)).unlink()
    return release.wav(first_utterance(release, 5))


def garble_wav(release):
    release.wav(first_utterance(release, 1)).write_bytes(b"RIFF garbage, not a wav")
    return release.wav(first_utterance(release, 1))


def empty_wav(release):
    sf.write(str(release.wav(first_utterance(release, 3))), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    return release.wav(first_utterance(release, 3))


def drop_transcript_line(release):
    name, path = first_utterance(release, 2), release.transcript_file(first_utterance(release, 2))
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith(name)))
    return f"{path}: no transcript for labelled utterance {name}"


def remove_transcript_file(release):
    release.transcript_file(first_utterance(release, 1)).unlink()
    return release.transcript_file(first_utterance(release, 1))


def break_label_line(release):
    path = release.label_file(first_utterance(release, 4))
    lines = path.read_text().splitlines(True)
    lines[2] = lines[2].replace(" - ", " to ")  # line 1 is the header, line 3 the first label line
    path.write_text("".join(lines))
    return f"{path}: line 3: cannot read label line"


@pytest.mark.parametrize("inject", [remove_session, remove_label_folder, remove_label_file, remove_wav, garble_wav,
                                    empty_wav, drop_transcript_line, remove_transcript_file, break_label_line],
                         ids=lambda f: f.__name__)
def test_bad_release_is_reported_naming_the_file_and_writes_nothing(small_release, tmp_path, inject):
    named = inject(small_release)
    out_dir = tmp_path / "out"
    with pytest.raises(ReleaseError) as err:
        prepare(small_release.root, out_dir)
    assert f"ERROR {named}" in str(err.value)
    assert files_under(out_dir) == []


def test_every_problem_is_reported_at_once_with_exit_code_2(small_release, tmp_path, capsys):
    named = [remove_wav(small_release), garble_wav(small_release), drop_transcript_line(small_release)]
    out_dir = tmp_path / "out"
    assert main(["--iemocap_root", str(small_release.root), "--out_dir", str(out_dir)]) == 2
    stderr = capsys.readouterr().err
    assert all(f"ERROR {n}" in stderr for n in named)
    assert "3 problem(s); no csv written" in stderr
    assert files_under(out_dir) == []


def test_cli_runs_as_a_script_from_the_repo_root(small_release, tmp_path):
    result = subprocess.run([sys.executable, "data_prep/iemocap_prep.py", "--iemocap_root", str(small_release.root),
                             "--out_dir", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "total:    20" in result.stderr
    assert len(pd.read_csv(tmp_path / "out/iemocap.csv")) == 20


def test_root_one_level_above_the_release_suggests_the_release_folder(small_release, tmp_path):
    with pytest.raises(ReleaseError, match=f"ERROR {tmp_path}: holds none of the folders Session1..Session5; "
                                           f"pass {small_release.root} as --iemocap_root"):
        prepare(tmp_path, tmp_path / "out")


def test_upstreams_augmented_text_is_kept_when_its_csv_is_given(full_release, prepared, tmp_path):
    """The 2023 MMER's text views: upstream's back-translated transcripts, per utterance."""
    out_dir, _ = prepared
    table = with_augmented_text(pd.read_csv(out_dir / "iemocap.csv", keep_default_na=False), UPSTREAM_CSV)
    upstream = pd.read_csv(UPSTREAM_CSV, keep_default_na=False).set_index("FileName")
    assert table["AugmentedText"].tolist() == upstream.loc[table["FileName"], "AugmentedText"].tolist()
    with pytest.raises(ReleaseError, match="AugmentedText"):
        with_augmented_text(table, out_dir / "iemocap.csv")  # our csv has no such column

"""data_prep/import_msppodcast.py on a tiny release in MSP-Podcast's layout (synthetic/msppodcast.py):
codes to class names, O and X kept but left out, Split_Set to the folds with Test2 and Test3 as
tables of their own, Unknown speakers never one speaker, attributes as given, annotators' votes as
fractions, and every defect named at once before anything is written. The expected values are read
off the release's literal rows by hand."""
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf

from data_prep.import_msppodcast import main
from dataio.corpus import fold_scheme, make_fold, read_table
from dataio.msppodcast import ReleaseError, build_tables, import_msppodcast, parse_consensus_csv, parse_detailed
from synthetic.msppodcast import make_msppodcast_release

REPO = Path(__file__).resolve().parents[1]

# FileName -> (table, Label, EmoClass, split, Split_Set), from synthetic/msppodcast.py's CONSENSUS by hand.
EXPECTED = {
    "MSP-PODCAST_0001_0001": ("corpus.csv", "angry", "A", "train", "Train"),
    "MSP-PODCAST_0001_0002": ("corpus.csv", "sad", "S", "train", "Train"),
    "MSP-PODCAST_0002_0001": ("corpus.csv", "happy", "H", "train", "Train"),
    "MSP-PODCAST_0002_0002": ("corpus.csv", "surprise", "U", "train", "Train"),
    "MSP-PODCAST_0003_0001": ("corpus.csv", "fear", "F", "train", "Train"),
    "MSP-PODCAST_0003_0002": ("corpus.csv", "disgust", "D", "dev", "Development"),
    "MSP-PODCAST_0004_0001": ("corpus.csv", "contempt", "C", "dev", "Development"),
    "MSP-PODCAST_0004_0002": ("corpus.csv", "neutral", "N", "train", "Train"),
    "MSP-PODCAST_0005_0001": ("corpus.csv", "other", "O", "test", "Test1"),
    "MSP-PODCAST_0008_0001": ("corpus.csv", "neutral", "N", "test", "Test1"),
    "MSP-PODCAST_0008_0002": ("corpus.csv", "sad", "S", "test", "Test1"),
    "MSP-PODCAST_0005_0002": ("test2.csv", "no_agreement", "X", "test", "Test2"),
    "MSP-PODCAST_0006_0001": ("test2.csv", "neutral", "N", "test", "Test2"),
    "MSP-PODCAST_0007_0001": ("test3.csv", "angry", "A", "test", "Test3"),
}
CLASSES = ("angry", "sad", "happy", "surprise", "fear", "disgust", "contempt", "neutral")


def read(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv, keep_default_na=False, dtype={"speaker": str})


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(release, out_dir) of one import of the csv release."""
    root = tmp_path_factory.mktemp("msp")
    release = make_msppodcast_release(root / "MSP-PODCAST-Publish-1.12")
    import_msppodcast(release, root / "out")
    return release, root / "out"


@pytest.fixture
def release(tmp_path) -> Path:
    return make_msppodcast_release(tmp_path / "release")


def edit_consensus(release: Path, name: str, **changes) -> None:
    path = release / "Labels" / "labels_consensus.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column, value in changes.items():
        table.loc[table["FileName"] == name, column] = value
    table.to_csv(path, index=False)


# ---------------------------------------------------------------- the tables


def test_every_code_and_split_lands_in_its_table_as_its_class_name(imported):
    _, out_dir = imported
    found = {}
    for table in ("corpus.csv", "test2.csv", "test3.csv"):
        for row in read(out_dir / table).itertuples():
            found[row.FileName] = (table, row.Label, row.EmoClass, row.split, row.Split_Set)
    assert found == EXPECTED
    assert sorted(p.name for p in (out_dir / "audio").iterdir()) == sorted(f"{name}.wav" for name in EXPECTED)


def test_label_map_keeps_the_eight_classes_in_order_and_maps_other_and_no_agreement_to_null(imported):
    _, out_dir = imported
    assert json.loads((out_dir / "label_map.json").read_text()) == {
        "angry": "angry", "sad": "sad", "happy": "happy", "surprise": "surprise", "fear": "fear",
        "disgust": "disgust", "contempt": "contempt", "neutral": "neutral", "other": None, "no_agreement": None}


def test_attributes_are_written_as_the_release_gives_them(imported):
    _, out_dir = imported
    table = read(out_dir / "corpus.csv").set_index("FileName")
    # EmoVal -> valence, EmoAct -> arousal, EmoDom -> dominance; O keeps its attributes.
    assert table.loc["MSP-PODCAST_0001_0002", ["valence", "arousal", "dominance"]].tolist() == [
        1.8333333333333333, 2.1666666666666665, 2.6]
    assert table.loc["MSP-PODCAST_0005_0001", ["valence", "arousal", "dominance"]].tolist() == [3.2, 3.8, 4.6]
    assert ",1.8333333333333333,2.1666666666666665,2.6," in (out_dir / "corpus.csv").read_text()
    test2 = read(out_dir / "test2.csv").set_index("FileName")
    assert test2.loc["MSP-PODCAST_0006_0001", ["valence", "arousal"]].tolist() == [7.0, 1.0]  # the scale's ends


def test_unknown_speakers_are_each_their_own_speaker(imported):
    _, out_dir = imported
    speakers = read(out_dir / "corpus.csv").set_index("FileName")["speaker"]
    assert speakers["MSP-PODCAST_0003_0001"] == "unknown_MSP-PODCAST_0003_0001"
    assert speakers["MSP-PODCAST_0003_0002"] == "unknown_MSP-PODCAST_0003_0002"
    assert speakers["MSP-PODCAST_0001_0001"] == speakers["MSP-PODCAST_0001_0002"] == "12"


def test_annotator_votes_become_fractions_of_the_votes_for_the_eight_classes(imported):
    _, out_dir = imported
    columns = ["annotators", *(f"votes_{c}" for c in CLASSES)]
    corpus = pd.read_csv(out_dir / "corpus.csv", dtype=str, keep_default_na=False).set_index("FileName")
    # Angry, Angry, Contempt, Other-Annoyed, A: 3 of the 4 class votes angry, the Other vote not counted.
    assert corpus.loc["MSP-PODCAST_0001_0001", columns].tolist() == ["5", "0.75", *["0.0"] * 5, "0.25", "0.0"]
    # Sad, Sad, Neutral.
    assert corpus.loc["MSP-PODCAST_0001_0002", columns].tolist() == [
        "3", "0.0", "0.6666666666666666", *["0.0"] * 5, "0.3333333333333333"]
    # Every annotator chose Other: no class vote, no fractions. No annotation at all: none either.
    assert corpus.loc["MSP-PODCAST_0005_0001", columns].tolist() == ["3", *[""] * 8]
    assert corpus.loc["MSP-PODCAST_0002_0001", columns].tolist() == ["0", *[""] * 8]
    test2 = pd.read_csv(out_dir / "test2.csv", dtype=str, keep_default_na=False).set_index("FileName")
    assert test2.loc["MSP-PODCAST_0005_0002", columns].tolist() == ["4", "0.0", "0.0", *["0.25"] * 4, "0.0", "0.0"]


def test_emodetail_rows_of_some_releases_give_the_same_votes():
    text = ("FileName,EmoDetail\n"
            'MSP-PODCAST_0001_0001.wav,"WORKER00001; Angry; Annoyed,Frustrated; A:5.0; V:2.0; D:4.0;"\n'
            "MSP-PODCAST_0001_0001.wav,WORKER00002; Other-Concerned; ; A:4.0; V:3.0; D:4.0;\n"
            "MSP-PODCAST_0001_0001.wav,WORKER00003; Sad; ; A:2.0; V:2.0; D:3.0;\n")
    votes, problems = parse_detailed(text, "labels_detailed.csv")
    assert problems == []
    assert votes == {"MSP-PODCAST_0001_0001": {"angry": 1, "other": 1, "sad": 1}}


def test_validation_of_earlier_releases_is_the_dev_split():
    text = ("FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
            "MSP-PODCAST_0001_0003.wav,N,4.2,3.8,4.0,12,Male,Validation\n")
    turns, problems = parse_consensus_csv(text, "labels_consensus.csv")
    assert problems == []
    table = build_tables(turns, {"MSP-PODCAST_0001_0003": 1.5}, None)["corpus.csv"]
    assert table[["FileName", "Label", "valence", "arousal", "split", "Split_Set"]].values.tolist() == [
        ["MSP-PODCAST_0001_0003", "neutral", 3.8, 4.2, "dev", "Validation"]]


def test_json_consensus_of_newer_releases_gives_the_same_tables(imported, tmp_path):
    _, out_dir = imported
    release = make_msppodcast_release(tmp_path / "release", consensus="json")
    import_msppodcast(release, tmp_path / "out")
    for table in ("corpus.csv", "test2.csv", "test3.csv"):
        assert (tmp_path / "out" / table).read_text() == (out_dir / table).read_text()


def test_audio_not_16k_mono_is_converted_and_the_rest_copied(imported):
    release, out_dir = imported
    info = sf.info(str(out_dir / "audio" / "MSP-PODCAST_0004_0001.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.frames == pytest.approx(4000, abs=2)  # 0.25 s
    name = "MSP-PODCAST_0001_0001.wav"
    assert (out_dir / "audio" / name).read_bytes() == (release / "Audios" / name).read_bytes()


# ---------------------------------------------------------------- read by the corpus reader


def test_the_corpus_reader_trains_on_the_classes_and_leaves_other_and_no_agreement_out(imported, caplog):
    _, out_dir = imported
    with caplog.at_level(logging.INFO, logger="dataio.corpus"):
        table, label_set = read_table(out_dir / "corpus.csv")
    assert label_set.classes == CLASSES
    assert "other" not in set(table["Label"]) and len(table) == 10
    assert "1 utterance(s) with labels the label set leaves out (other) are not used" in caplog.text
    fold = make_fold(table, fold_scheme(table), "1", dev_fraction=0.1, seed=0)
    names = table["FileName"].to_numpy()
    assert sorted(names[fold.dev]) == ["MSP-PODCAST_0003_0002", "MSP-PODCAST_0004_0001"]
    assert sorted(names[fold.test]) == ["MSP-PODCAST_0008_0001", "MSP-PODCAST_0008_0002"]
    assert len(fold.train) == 6
    test2, _ = read_table(out_dir / "test2.csv", label_set=label_set)  # a trained model's label set
    assert test2["FileName"].tolist() == ["MSP-PODCAST_0006_0001"]


# ---------------------------------------------------------------- reruns and bad releases


def test_identical_rerun_writes_nothing_and_a_different_table_is_refused_unless_overwrite(release, tmp_path):
    out_dir = tmp_path / "out"
    import_msppodcast(release, out_dir)
    stamp = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files_under(out_dir)}
    import_msppodcast(release, out_dir)
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files_under(out_dir)} == stamp
    edit_consensus(release, "MSP-PODCAST_0007_0001.wav", Split_Set="Test2")  # no Test3 left
    with pytest.raises(ReleaseError, match=re.escape(f"ERROR {out_dir / 'test2.csv'}: already holds a different "
                                                     "corpus table")):
        import_msppodcast(release, out_dir)
    import_msppodcast(release, out_dir, overwrite=True)
    assert not (out_dir / "test3.csv").exists()
    assert read(out_dir / "test2.csv")["FileName"].tolist()[-1] == "MSP-PODCAST_0007_0001"


def test_every_problem_is_named_at_once_with_exit_code_2_and_nothing_written(release, tmp_path, capsys):
    edit_consensus(release, "MSP-PODCAST_0001_0001.wav", EmoClass="Q")
    edit_consensus(release, "MSP-PODCAST_0002_0001.wav", Split_Set="Test4")
    edit_consensus(release, "MSP-PODCAST_0002_0002.wav", EmoVal="7.5")
    edit_consensus(release, "MSP-PODCAST_0003_0001.wav", EmoDom="n/a")
    out_dir = tmp_path / "out"
    assert main(["--msp_dir", str(release), "--out_dir", str(out_dir)]) == 2
    stderr = capsys.readouterr().err
    consensus = release / "Labels" / "labels_consensus.csv"
    assert f"ERROR {consensus}: EmoClass 'Q' is none of the release's codes A S H U F D C N O X: line 2;" in stderr
    assert (f"ERROR {consensus}: Split_Set 'Test4' is none of Train, Development, Validation, Test1, Test2, "
            "Test3: line 4;") in stderr
    assert f"ERROR {consensus}: EmoVal lies outside the scale 1-7: line 5 (7.5);" in stderr
    assert f"ERROR {consensus}: EmoDom is not a number: line 6 ('n/a');" in stderr
    assert "4 problem(s); no table written" in stderr
    assert files_under(out_dir) == []


def test_a_file_listed_twice_is_named_with_both_lines(release, tmp_path):
    consensus = release / "Labels" / "labels_consensus.csv"
    consensus.write_text(consensus.read_text() + "MSP-PODCAST_0002_0001.wav,H,4.6,6.2,4.4,31,Female,Test1\n")
    with pytest.raises(ReleaseError, match=re.escape(f"ERROR {consensus}: a FileName listed more than once: "
                                                     "MSP-PODCAST_0002_0001 (line 4, line 16); keep one row per file")):
        import_msppodcast(release, tmp_path / "out")
    assert files_under(tmp_path / "out") == []


def test_missing_audio_and_unknown_annotator_choices_are_named_together(release, tmp_path):
    (release / "Audios" / "MSP-PODCAST_0006_0001.wav").unlink()
    detailed = release / "Labels" / "labels_detailed.csv"
    detailed.write_text(detailed.read_text().replace("Contempt", "Bored"))
    with pytest.raises(ReleaseError) as err:
        import_msppodcast(release, tmp_path / "out")
    assert str(err.value).splitlines() == [
        f"ERROR {detailed}: an annotator's emotion 'Bored' is none of {', '.join(CLASSES)}, Other or their codes: "
        "line 4; restore Labels/ from the MSP-Podcast release as distributed",
        f"ERROR {release / 'Audios' / 'MSP-PODCAST_0006_0001.wav'}: missing, but labels_consensus.csv line 14 labels "
        "it; restore it from the release's Audios/ folder"]
    assert files_under(tmp_path / "out") == []


def test_a_folder_without_the_consensus_labels_names_the_release_folder_inside_it(release, tmp_path):
    with pytest.raises(ReleaseError, match=re.escape(f"ERROR {tmp_path / 'Labels' / 'labels_consensus.csv'}: missing, "
                                                     f"and so is labels_consensus.json; pass {release} as --msp_dir")):
        import_msppodcast(tmp_path, tmp_path / "out")
    shutil.rmtree(release / "Labels")
    with pytest.raises(ReleaseError, match="missing, and so is labels_consensus.json; pass the release folder"):
        import_msppodcast(release, tmp_path / "out")


def test_cli_runs_as_a_script_from_the_repo_root(release, tmp_path):
    done = subprocess.run([sys.executable, "data_prep/import_msppodcast.py", "--msp_dir", str(release),
                           "--out_dir", str(tmp_path / "out"), "--link"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 turn(s) of SpkrID Unknown: each is its own speaker" in done.stderr
    assert (tmp_path / "out" / "audio" / "MSP-PODCAST_0001_0001.wav").is_symlink()
    assert len(read(tmp_path / "out" / "corpus.csv")) == 11

"""EmoBox corpora: the synthetic corpus in EmoBox's layout (data_prep/make_synthetic_emobox.py) and
its import into the corpus table (data_prep/import_emobox.py): folds reproduced exactly, 16 kHz mono
audio, label map and speakers carried over, every defect of the input named at once with exit code 2
and nothing written, identical reruns doing nothing."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr

from dataio.emobox import ReleaseError, import_emobox, parse_jsonl, safe_name
from synthetic.emobox import LABEL_MAP, make_emobox_corpus
from synthetic.iemocap import CorpusError
from dataio.labels import ALL_RELEASE_LABELS

REPO = Path(__file__).resolve().parents[1]
CORPUS = "synth6"
FIELDS = ["key", "dataset", "wav", "type", "sample_rate", "num_frame", "task", "length", "emo", "channel"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, entries: list[dict]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


def fold_file(emobox_dir: Path, k: int, split: str) -> Path:
    return emobox_dir / f"fold_{k}" / f"{emobox_dir.name}_{split}_fold_{k}.jsonl"


def fold_keys(emobox_dir: Path) -> dict[tuple[int, str], set]:
    """(fold, csv split) -> keys, read from the fold files."""
    keys = {}
    for path in sorted(emobox_dir.glob("fold_*/*.jsonl")):
        k = int(path.parent.name.split("_")[1])
        split = {"train": "train", "valid": "dev", "test": "test"}[path.stem.split("_")[-3]]
        keys[k, split] = {e["key"] for e in read_jsonl(path)}
    return keys


def table_keys(table: pd.DataFrame) -> dict[tuple[int, str], set]:
    keys = {}
    for column in [c for c in table if c.startswith("split_")]:
        for split, group in table.groupby(column):
            if split:
                keys[int(column[6:]), split] = set(group["key"])
    return keys


def read_table(csv: Path) -> pd.DataFrame:
    # Empty split cells mean "not in this fold": read them as "", not NaN.
    return pd.read_csv(csv, keep_default_na=False, dtype={"speaker": str})


def edit_entries(emobox_dir: Path, which: str, **changes) -> None:
    """Change the fields of key `which` in every fold file that lists it."""
    for path in emobox_dir.glob("fold_*/*.jsonl"):
        entries = read_jsonl(path)
        write_jsonl(path, [{**e, **changes} if e["key"] == which else e for e in entries])


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "data_prep/import_emobox.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return make_emobox_corpus(tmp_path_factory.mktemp("emobox"), CORPUS, per_class=3, speakers=4, folds=4, seed=0)


@pytest.fixture(scope="module")
def imported(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported")
    import_emobox(corpus["emobox_dir"], corpus["wav_root"], out)
    return out


def editable_copy(corpus: dict, root: Path) -> tuple[Path, Path]:
    """(emobox_dir, wav_root) of a copy under root: the metadata copied, the audio linked, and an
    empty downloads/broken/ folder for bad files."""
    emobox_dir = root / "data" / CORPUS
    shutil.copytree(corpus["emobox_dir"], emobox_dir)
    (root / "downloads" / "broken").mkdir(parents=True)
    (root / "downloads" / CORPUS).symlink_to(corpus["audio_dir"])
    return emobox_dir, root


@pytest.fixture
def broken(corpus, tmp_path) -> tuple[Path, Path]:
    return editable_copy(corpus, tmp_path / "root")


# ---------------------------------------------------------------- the synthetic EmoBox corpus


def test_generator_is_deterministic_by_seed(tmp_path):
    settings = dict(per_class=1, speakers=3, folds=3)
    first = files_under(make_emobox_corpus(tmp_path / "a", seed=5, **settings)["root"])
    again = files_under(make_emobox_corpus(tmp_path / "b", seed=5, **settings)["root"])
    other = files_under(make_emobox_corpus(tmp_path / "c", seed=6, **settings)["root"])
    assert first == again
    wavs = [name for name in first if name.endswith(".wav")]
    assert len(wavs) == 3 * len(LABEL_MAP)
    assert all(first[name] != other[name] for name in wavs)


def test_generator_writes_emobox_files_and_jsonl_fields(corpus):
    root, emobox_dir = corpus["root"], corpus["emobox_dir"]
    assert emobox_dir == root / "data" / CORPUS
    assert json.loads(corpus["label_map"].read_text()) == LABEL_MAP
    assert sorted(corpus["fold_files"]) == [1, 2, 3, 4]
    everything = read_jsonl(emobox_dir / f"{CORPUS}.jsonl")
    assert len(everything) == 4 * len(LABEL_MAP) * 3
    for k, files in corpus["fold_files"].items():
        assert files == {"train": fold_file(emobox_dir, k, "train"), "test": fold_file(emobox_dir, k, "test")}
    channels = []
    for entry in everything:
        assert list(entry) == FIELDS  # EmoBox's fields in EmoBox's order; no transcript
        assert entry["key"].startswith(f"{CORPUS}-") and entry["dataset"] == CORPUS
        assert entry["wav"].startswith(f"downloads/{CORPUS}/") and entry["emo"] in LABEL_MAP
        assert (entry["type"], entry["task"], entry["channel"]) == ("raw", "category", 1)
        info = sf.info(str(root / entry["wav"]))
        assert entry["sample_rate"] == info.samplerate == 22050
        assert entry["num_frame"] == float(info.frames) and entry["length"] == pytest.approx(info.duration)
        channels.append(info.channels)
    assert set(channels) == {1, 2}
    # Class names are not IEMOCAP's, so nothing can lean on its label set by accident.
    assert not set(LABEL_MAP) & set(ALL_RELEASE_LABELS)
    assert set(LABEL_MAP.values()) == {"Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness"}


def test_generator_folds_are_speaker_independent(corpus):
    emobox_dir = corpus["emobox_dir"]
    speaker = {line.split()[0]: line.split()[2] for line in corpus["stm"].read_text().splitlines()}
    all_keys = set(speaker)
    tested = []
    for k in corpus["fold_files"]:
        train = {e["key"] for e in read_jsonl(fold_file(emobox_dir, k, "train"))}
        test = {e["key"] for e in read_jsonl(fold_file(emobox_dir, k, "test"))}
        assert train | test == all_keys and not train & test
        assert not {speaker[key] for key in train} & {speaker[key] for key in test}
        tested += test
    assert sorted(tested) == sorted(all_keys)  # every utterance is tested exactly once


def test_generator_split_layout_has_one_fold_with_train_valid_test(tmp_path):
    script = [sys.executable, "data_prep/make_synthetic_emobox.py", "--out", str(tmp_path), "--per_class", "1"]
    refused = subprocess.run(script + ["--speakers", "2", "--layout", "split"], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "at least 3 speakers" in refused.stderr
    made = subprocess.run(script + ["--layout", "split"], cwd=REPO, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    emobox_dir = tmp_path / "data" / CORPUS
    assert [p.name for p in emobox_dir.glob("fold_*")] == ["fold_1"]
    files = {p.name.split("_")[1]: p for p in (emobox_dir / "fold_1").iterdir()}
    assert sorted(files) == ["test", "train", "valid"]
    speaker = {line.split()[0]: line.split()[2] for line in (emobox_dir / "data.seg.wrd.stm").read_text().splitlines()}
    groups = {split: {speaker[e["key"]] for e in read_jsonl(path)} for split, path in files.items()}
    assert [len(groups[s]) for s in ("train", "valid", "test")] == [2, 1, 1]
    assert set.union(*groups.values()) == set(speaker.values())


def test_generator_replaces_only_its_own_corpus(tmp_path):
    small = dict(per_class=1, speakers=3, folds=3)
    make_emobox_corpus(tmp_path, **small)
    make_emobox_corpus(tmp_path, **small)  # the same corpus again: rewritten as it was
    with pytest.raises(CorpusError, match="--overwrite"):
        make_emobox_corpus(tmp_path, **{**small, "folds": 2})
    make_emobox_corpus(tmp_path, **{**small, "folds": 2}, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "data" / CORPUS).glob("fold_*")) == ["fold_1", "fold_2"]
    foreign = tmp_path / "checkout"
    (foreign / "data" / CORPUS).mkdir(parents=True)
    (foreign / "data" / CORPUS / "label_map.json").write_text("{}")
    with pytest.raises(CorpusError, match="holds no synthetic corpus"):
        make_emobox_corpus(foreign, **small, overwrite=True)
    assert (foreign / "data" / CORPUS / "label_map.json").read_text() == "{}"


def test_generator_audio_carries_the_class_in_its_prosody(corpus):
    """Two plain features (speech level, spectral centroid) and a nearest-centroid rule, trained on
    three speakers and tested on the fourth, beat chance (1/6) by far."""
    entries = read_jsonl(corpus["emobox_dir"] / f"{CORPUS}.jsonl")
    features, labels, speakers = [], [], []
    for entry in entries:
        samples, rate = sf.read(str(corpus["root"] / entry["wav"]), dtype="float32", always_2d=True)
        frames = soxr.resample(samples.mean(axis=1), rate, 16000)
        frames = frames[:len(frames) // 400 * 400].reshape(-1, 400)
        energy = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-10)
        spectrum = np.abs(np.fft.rfft(frames[energy > np.median(energy)], axis=1))
        centroid = (spectrum * np.fft.rfftfreq(400, 1 / 16000)).sum(axis=1) / spectrum.sum(axis=1)
        features.append([np.percentile(energy, 90), np.median(centroid) / 1000])
        labels.append(entry["emo"])
        speakers.append(entry["key"].split("-")[1])
    features, labels, speakers = np.array(features), np.array(labels), np.array(speakers)
    level = {emo: features[labels == emo, 0].mean() for emo in LABEL_MAP}
    assert level["ANG"] - level["SAD"] > 8  # the styles' levels are 13 dB apart
    hits = 0
    for held_out in set(speakers):
        train = speakers != held_out
        scaled = (features - features[train].mean(axis=0)) / features[train].std(axis=0)
        centres = {emo: scaled[train & (labels == emo)].mean(axis=0) for emo in LABEL_MAP}
        for x, y in zip(scaled[~train], labels[~train]):
            hits += min(centres, key=lambda emo: ((x - centres[emo]) ** 2).sum()) == y
    assert hits / len(labels) > 0.3


# ---------------------------------------------------------------- the import


def test_import_reproduces_the_emobox_folds_exactly(corpus, imported):
    table = read_table(imported / "corpus.csv")
    assert [c for c in table if c.startswith("split_")] == ["split_1", "split_2", "split_3", "split_4"]
    assert set(table.filter(like="split_").to_numpy().ravel()) <= {"train", "dev", "test", ""}
    assert table_keys(table) == fold_keys(corpus["emobox_dir"])
    labels = {e["key"]: e["emo"] for e in read_jsonl(corpus["emobox_dir"] / f"{CORPUS}.jsonl")}
    assert dict(zip(table["key"], table["Label"])) == labels
    assert list(table["FileName"]) == sorted(labels) and (table["FileName"] == table["key"]).all()
    assert (table["dataset"] == CORPUS).all()


def test_import_writes_16k_mono_pcm16_audio_of_the_source_duration(corpus, imported):
    table = read_table(imported / "corpus.csv")
    lengths = {e["key"]: e["length"] for e in read_jsonl(corpus["emobox_dir"] / f"{CORPUS}.jsonl")}
    assert list(table["path"]) == [f"{name}.wav" for name in table["FileName"]]
    for row in table.itertuples():
        info = sf.info(str(imported / "audio" / row.path))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert row.duration == pytest.approx(lengths[row.key], abs=1e-5)
        assert info.duration == pytest.approx(row.duration, abs=1e-3)


def test_import_copies_the_label_map_and_takes_speakers_from_the_stm(corpus, imported):
    assert (imported / "label_map.json").read_bytes() == corpus["label_map"].read_bytes()
    table = read_table(imported / "corpus.csv")
    speaker = {line.split()[0]: line.split()[2] for line in corpus["stm"].read_text().splitlines()}
    assert dict(zip(table["key"], table["speaker"])) == speaker


def test_import_without_stm_has_no_speaker_column(broken, tmp_path):
    emobox_dir, wav_root = broken
    (emobox_dir / "data.seg.wrd.stm").unlink()
    table = read_table(import_emobox(emobox_dir, wav_root, tmp_path / "out"))
    assert "speaker" not in table


def test_import_of_a_split_layout_maps_valid_to_dev(tmp_path):
    paths = make_emobox_corpus(tmp_path / "root", CORPUS, per_class=1, speakers=4, layout="split")
    table = read_table(import_emobox(paths["emobox_dir"], paths["wav_root"], tmp_path / "out"))
    assert [c for c in table if c.startswith("split_")] == ["split_1"]
    assert set(table["split_1"]) == {"train", "dev", "test"}
    assert table_keys(table) == fold_keys(paths["emobox_dir"])


def test_segments_are_cut_as_emodataset_cuts_them_and_keys_made_safe(broken, tmp_path):
    """A PAVOQUE-style entry (start_time/end_time in a long flac) becomes its own 16 kHz file, and a
    key with a slash and a space gets a file name without them; the key column keeps it as it was."""
    emobox_dir, wav_root = broken
    rate, seconds = 44100, 3.0
    recording = np.sin(2 * np.pi * 3 * np.arange(int(rate * seconds)) / rate).astype(np.float32) * 0.5
    sf.write(str(wav_root / "downloads" / "broken" / "long.flac"), np.stack([recording, recording], 1), rate)
    key = read_jsonl(fold_file(emobox_dir, 1, "test"))[0]["key"]
    edit_entries(emobox_dir, key, key="synth6 odd/key", wav="downloads/broken/long.flac", start_time=1.25,
                 end_time=2.5)
    (emobox_dir / "data.seg.wrd.stm").unlink()
    table = read_table(import_emobox(emobox_dir, wav_root, tmp_path / "out"))
    row = table[table["key"] == "synth6 odd/key"].iloc[0]
    assert row["FileName"] == safe_name("synth6 odd/key") == "synth6_odd_key"
    assert row["duration"] == pytest.approx(1.25)
    samples, written_rate = sf.read(str(tmp_path / "out" / "audio" / row["path"]), dtype="float32")
    expected = soxr.resample(recording[int(1.25 * rate):int(2.5 * rate)], rate, 16000)
    assert written_rate == 16000 and len(samples) == len(expected)
    assert np.abs(samples - expected).max() < 1e-3


def test_identical_rerun_skips_work(corpus, imported, caplog):
    before = {p: p.stat().st_mtime_ns for p in imported.rglob("*")}
    with caplog.at_level("INFO"):
        import_emobox(corpus["emobox_dir"], corpus["wav_root"], imported)
    assert {p: p.stat().st_mtime_ns for p in imported.rglob("*")} == before
    assert f"{len(before) - 3} already present" in caplog.text  # all but corpus.csv, label_map.json, audio/
    assert "already up to date" in caplog.text


def test_link_symlinks_only_files_already_16k_mono_pcm16_and_reruns_keep_them(tmp_path, caplog):
    paths = make_emobox_corpus(tmp_path / "root", CORPUS, per_class=1, speakers=2, folds=2, sample_rate=16000)
    table = read_table(import_emobox(paths["emobox_dir"], paths["wav_root"], tmp_path / "out", link=True))
    before = {p: p.lstat().st_mtime_ns for p in (tmp_path / "out" / "audio").iterdir()}
    with caplog.at_level("INFO"):
        import_emobox(paths["emobox_dir"], paths["wav_root"], tmp_path / "out", link=True)
    assert {p: p.lstat().st_mtime_ns for p in (tmp_path / "out" / "audio").iterdir()} == before
    assert f"{len(table)} already present" in caplog.text
    wav_of = {e["key"]: paths["root"] / e["wav"] for e in read_jsonl(paths["emobox_dir"] / f"{CORPUS}.jsonl")}
    linked = 0
    for row in table.itertuples():
        dest, source = tmp_path / "out" / "audio" / row.path, wav_of[row.key]
        assert dest.is_symlink() == (sf.info(str(source)).channels == 1)
        linked += dest.is_symlink()
        if dest.is_symlink():
            assert os.readlink(dest) == str(source.absolute())
        else:
            assert sf.info(str(dest)).channels == 1
    assert 0 < linked < len(table)


def test_a_different_table_is_refused_unless_overwrite(corpus, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(corpus["emobox_dir"], tmp_path / "other" / "data" / CORPUS)
    (tmp_path / "other" / "downloads").mkdir()
    (tmp_path / "other" / "downloads" / CORPUS).symlink_to(corpus["audio_dir"])
    import_emobox(corpus["emobox_dir"], corpus["wav_root"], out)
    fold = fold_file(tmp_path / "other" / "data" / CORPUS, 1, "train")
    write_jsonl(fold, read_jsonl(fold)[1:])  # one utterance fewer in fold 1: another table
    csv_before = (out / "corpus.csv").read_bytes()
    refused = run_cli("--emobox_dir", tmp_path / "other" / "data" / CORPUS, "--wav_root", tmp_path / "other",
                      "--out_dir", out)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and "corpus.csv" in refused.stderr
    assert (out / "corpus.csv").read_bytes() == csv_before
    replaced = run_cli("--emobox_dir", tmp_path / "other" / "data" / CORPUS, "--wav_root", tmp_path / "other",
                       "--out_dir", out, "--overwrite")
    assert replaced.returncode == 0 and (out / "corpus.csv").read_bytes() != csv_before


def test_parse_jsonl_names_the_line_and_skips_blank_lines():
    good = json.dumps({"key": "c-1", "wav": "downloads/c/1.wav", "emo": "ANG"})
    text = "\n".join([good, "", "[1, 2]", json.dumps({"key": "c-2", "emo": "ANG"}),
                      json.dumps({"key": "c-3", "wav": "w", "emo": "A", "start_time": 2.0, "end_time": 1.0})])
    entries, problems = parse_jsonl(text, "x.jsonl", "c")
    assert [e.key for e in entries] == ["c-1"] and entries[0].dataset == "c" and entries[0].where == "x.jsonl:1"
    assert [str(p).split(":", 2)[1:] for p in problems] == [
        [" line 3", " not a JSON object but list; restore it from EmoBox's data/ folder"],
        [" line 4", " field 'wav' missing or not a non-empty string; restore it from EmoBox's data/ folder"],
        [" line 5", " start_time 2.0 and end_time 1.0 must be numbers with 0 <= start_time < end_time; "
                    "restore it from EmoBox's data/ folder"]]


# ---------------------------------------------------------------- defects, through the command line


def missing_label_map(emobox_dir, wav_root):
    (emobox_dir / "label_map.json").unlink()
    return [f"{emobox_dir / 'label_map.json'}: missing"]


def missing_fold_file(emobox_dir, wav_root):
    fold_file(emobox_dir, 2, "test").unlink()
    return [f"{fold_file(emobox_dir, 2, 'test')}: missing: fold 2 needs a test file"]


def malformed_line(emobox_dir, wav_root):
    path = fold_file(emobox_dir, 1, "train")
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = '{"key": "synth6-broken", "wav": \n'
    path.write_text("".join(lines))
    return [f"{path}: line 3: not valid JSON"]


def line_without_wav(emobox_dir, wav_root):
    path = fold_file(emobox_dir, 1, "test")
    entries = read_jsonl(path)
    del entries[1]["wav"]
    write_jsonl(path, entries)
    return [f"{path}: line 2: field 'wav' missing"]


def missing_wav(emobox_dir, wav_root):
    key = read_jsonl(fold_file(emobox_dir, 1, "test"))[0]["key"]
    edit_entries(emobox_dir, key, wav="downloads/broken/not_there.wav")
    return [f"{wav_root / 'downloads/broken/not_there.wav'}: missing", key]


def unreadable_wav(emobox_dir, wav_root):
    key = read_jsonl(fold_file(emobox_dir, 1, "test"))[1]["key"]
    (wav_root / "downloads/broken/garbage.wav").write_bytes(b"this is not a wav file" * 10)
    edit_entries(emobox_dir, key, wav="downloads/broken/garbage.wav")
    return [f"{wav_root / 'downloads/broken/garbage.wav'}: unreadable audio"]


def empty_wav(emobox_dir, wav_root):
    key = read_jsonl(fold_file(emobox_dir, 1, "test"))[2]["key"]
    sf.write(str(wav_root / "downloads/broken/empty.wav"), np.zeros(0, dtype=np.float32), 22050)
    edit_entries(emobox_dir, key, wav="downloads/broken/empty.wav")
    return [f"{wav_root / 'downloads/broken/empty.wav'}: the file holds no samples"]


def unknown_emo(emobox_dir, wav_root):
    key = read_jsonl(fold_file(emobox_dir, 1, "test"))[0]["key"]
    edit_entries(emobox_dir, key, emo="XYZ")
    return ["emo 'XYZ' is not in label_map.json", str(fold_file(emobox_dir, 1, "test"))]


def two_labels(emobox_dir, wav_root):
    path = fold_file(emobox_dir, 4, "test")
    entries = read_jsonl(path)
    entries[0]["emo"] = "SAD" if entries[0]["emo"] != "SAD" else "ANG"
    write_jsonl(path, entries)
    return [f"key {entries[0]['key']} is labelled '{entries[0]['emo']}' at {path}:1 but"]


def empty_fold(emobox_dir, wav_root):
    fold_file(emobox_dir, 3, "test").write_text("")
    return [f"{fold_file(emobox_dir, 3, 'test')}: fold 3 has no test utterances"]


def label_unseen_in_training(emobox_dir, wav_root):
    path = fold_file(emobox_dir, 4, "train")
    write_jsonl(path, [e for e in read_jsonl(path) if e["emo"] != "FEA"])
    return [f"fold 4: test label(s) FEA never occur in its training set ({path})"]


def key_in_train_and_test(emobox_dir, wav_root):
    line = fold_file(emobox_dir, 1, "test").read_text().splitlines(keepends=True)[0]
    train = fold_file(emobox_dir, 1, "train")
    train.write_text(train.read_text() + line)
    return [f"fold 1: 1 key(s) in both test and train: {json.loads(line)['key']}"]


DEFECTS = [missing_label_map, missing_fold_file, malformed_line, line_without_wav, missing_wav, unreadable_wav,
           empty_wav, unknown_emo, two_labels, empty_fold, label_unseen_in_training, key_in_train_and_test]


def assert_refused(emobox_dir: Path, wav_root: Path, out: Path, expected: list[str]) -> str:
    result = run_cli("--emobox_dir", emobox_dir, "--wav_root", wav_root, "--out_dir", out)
    assert result.returncode == 2, result.stdout + result.stderr
    for text in expected:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"
    assert all(line.startswith("ERROR ") for line in result.stderr.splitlines()[:-1]), result.stderr
    assert not out.exists()  # nothing written, not even the folder
    return result.stderr


@pytest.mark.parametrize("defect", DEFECTS, ids=[d.__name__ for d in DEFECTS])
def test_each_defect_is_named_with_exit_code_2_and_nothing_written(defect, broken, tmp_path):
    emobox_dir, wav_root = broken
    assert_refused(emobox_dir, wav_root, tmp_path / "out", defect(emobox_dir, wav_root))


def test_all_defects_of_a_kind_are_reported_at_once(corpus, tmp_path):
    """The metadata's defects come in one report; the audio is probed once the metadata is sound,
    and its defects come in one report too."""
    for kind, defects in {"metadata": [malformed_line, missing_fold_file, two_labels, empty_fold,
                                       key_in_train_and_test],
                          "audio": [missing_wav, unreadable_wav, empty_wav]}.items():
        emobox_dir, wav_root = editable_copy(corpus, tmp_path / kind)
        expected = [text for defect in defects for text in defect(emobox_dir, wav_root)]
        stderr = assert_refused(emobox_dir, wav_root, tmp_path / f"out_{kind}", expected)
        assert stderr.splitlines()[-1] == f"{len(defects)} problem(s); no csv written"


def test_wrong_wav_root_gets_one_hint_instead_of_a_line_per_file(corpus, tmp_path):
    stderr = assert_refused(corpus["emobox_dir"], corpus["audio_dir"], tmp_path / "out",
                            [f"none of the {4 * 6 * 3} audio files is there", "downloads/<corpus>/ as --wav_root"])
    assert stderr.count("ERROR ") == 1


# ---------------------------------------------------------------- corpora in audio-video containers
def test_corpora_in_video_and_streaming_containers_import(broken, tmp_path, caplog):
    """MELD's mp4 (with video), MER2023's avi, EMNS's webm and MEAD's m4a: each entry's file replaced
    by that container holding the same audio; each imports as 16 kHz mono wav of its source (to the
    codec's tolerance, tests/test_containers.py). Older jsonl files beside the fold files (EmoDB's,
    MER2023's) are listed once as ignored and never merged."""
    from tests.containers import KINDS, align, delay, snr_db, write_container
    emobox_dir, wav_root = broken
    keys = [entry["key"] for entry in read_jsonl(fold_file(emobox_dir, 1, "test"))][:4]
    sources = {}
    for key, suffix in zip(keys, (".mp4", ".avi", ".webm", ".m4a")):
        entry = next(e for e in read_jsonl(fold_file(emobox_dir, 1, "test")) if e["key"] == key)
        samples, rate = sf.read(str(wav_root / entry["wav"]), dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
        fmt, codec, kind_rate, channels, video = KINDS[suffix]
        samples = soxr.resample(samples, rate, kind_rate).astype(np.float32)   # opus takes 48 kHz, not 22.05
        wav = f"downloads/broken/{key}{suffix}"
        write_container(wav_root / wav, samples, kind_rate, fmt, codec, channels, video)
        edit_entries(emobox_dir, key, wav=wav)
        sources[key] = soxr.resample(samples, kind_rate, 16000)
    expected = fold_keys(emobox_dir)
    extra = {**read_jsonl(fold_file(emobox_dir, 1, "test"))[-1], "key": f"{CORPUS}-extra"}
    write_jsonl(emobox_dir / "fold_1" / f"{CORPUS}_train_fold1.jsonl", [{"audio": "x.wav", "label": "ANG"}])
    write_jsonl(emobox_dir / "fold_1" / f"{CORPUS}_test2_fold_1.jsonl", [extra])
    with caplog.at_level("WARNING"):
        table = read_table(import_emobox(emobox_dir, wav_root, tmp_path / "out"))
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(ignored) == 1 and f"{CORPUS}_train_fold1.jsonl" in ignored[0] and f"{CORPUS}_test2_fold_1.jsonl" in ignored[0]
    assert table_keys(table) == expected and f"{CORPUS}-extra" not in set(table["key"])   # nothing merged
    for key, reference in sources.items():
        row = table[table["key"] == key].iloc[0]
        samples, written_rate = sf.read(str(tmp_path / "out" / "audio" / row["path"]), dtype="float32")
        assert written_rate == 16000 and samples.ndim == 1
        assert abs(len(samples) - len(reference)) <= 0.06 * 16000   # avi's mp3: encoder delay and padding
        assert snr_db(reference, align(samples, delay(reference, samples, 800))) > 12, key


def test_a_stream_much_shorter_than_its_jsonl_length_is_refused(broken, tmp_path):
    emobox_dir, wav_root = broken
    entry = read_jsonl(fold_file(emobox_dir, 1, "test"))[0]
    seconds = sf.info(str(wav_root / entry["wav"])).duration
    edit_entries(emobox_dir, entry["key"], length=seconds * 1.10)
    with pytest.raises(ReleaseError) as err:
        import_emobox(emobox_dir, wav_root, tmp_path / "out")
    assert "shorter than" in str(err.value) and entry["key"] in str(err.value) and "download it again" in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.wav"))


def test_containers_truncated_past_a_sound_header_are_named_and_nothing_is_written(broken, tmp_path):
    """An mkv or webm cut short keeps a header that reads as whole, so only decoding finds it: every
    such file is named with the fix, and neither a wav nor the csv is left in the output."""
    from tests.containers import KINDS, write_container
    emobox_dir, wav_root = broken
    entries = read_jsonl(fold_file(emobox_dir, 1, "test"))
    cut = {}
    for entry, suffix in zip(entries[-2:], (".mkv", ".webm")):
        samples, rate = sf.read(str(wav_root / entry["wav"]), dtype="float32", always_2d=True)
        fmt, codec, kind_rate, channels, video = KINDS[suffix]
        wav = f"downloads/broken/{entry['key']}{suffix}"
        write_container(wav_root / wav, soxr.resample(samples.mean(axis=1), rate, kind_rate).astype(np.float32),
                        kind_rate, fmt, codec, channels, video)
        whole = (wav_root / wav).read_bytes()
        (wav_root / wav).write_bytes(whole[: len(whole) * 6 // 10])
        edit_entries(emobox_dir, entry["key"], wav=wav, length=None)
        cut[entry["key"]] = wav_root / wav
    with pytest.raises(ReleaseError) as err:
        import_emobox(emobox_dir, wav_root, tmp_path / "out")
    for path in cut.values():
        assert str(path) in str(err.value) and "restore the file" in str(err.value)
    assert not (tmp_path / "out" / "corpus.csv").exists()
    assert not list((tmp_path / "out").rglob("*.wav")), "a wav was written before the bad files were named"

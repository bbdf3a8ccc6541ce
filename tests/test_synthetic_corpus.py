"""The synthetic IEMOCAP release: layout and file formats of the real one, label counts,
determinism, audible speakers and emotions, transcripts in the CTC vocabulary, durations,
refusal to overwrite, and the command line."""
import hashlib
import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view

from synthetic import iemocap as synth
from synthetic import vocoder
from synthetic.lexicon import EMOTION_WORDS, all_words
from dataio.labels import ALL_RELEASE_LABELS, KEPT_LABELS, LABEL_TO_INDEX

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data_prep" / "make_synthetic_iemocap.py"
VOCAB = json.loads((REPO / "dataio" / "wav2vec2_char_vocab.json").read_text())
PER_SESSION = 20

LABEL_LINE = re.compile(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(Ses0([1-5])[FM]_\w+_([FM])\d{3})\t([a-z]{3})\t"
                        r"\[\d\.\d{4}, \d\.\d{4}, \d\.\d{4}\]$")
ANNOTATOR_LINE = re.compile(r"^(C-[EFM]\d:\t[A-Z][a-z]+;\t\(\)|A-[EFM]\d:\tval \d; act \d; dom  \d;\t\(\))$")
TRANSCRIPT_LINE = re.compile(r"^(Ses0\d[FM]_\w+?_(?:[FM]\d{3}|[FM]XX0)) \[(\d{3}\.\d{4})-(\d{3}\.\d{4})\]: (.+)$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    return root, synth.make_corpus(root, per_session=PER_SESSION, seed=0)


def parse_labels(path: Path) -> list[tuple]:
    """(start, end, utterance, session, gender, label) of every block; asserts the block layout."""
    lines = path.read_text().split("\n")
    assert lines[0].startswith("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]") and lines[1] == ""
    records, block = [], []
    for line in lines[2:]:
        if line:
            block.append(line)
            continue
        if block:
            match = LABEL_LINE.match(block[0])
            assert match, f"{path}: bad label line {block[0]!r}"
            assert all(ANNOTATOR_LINE.match(line) for line in block[1:]), f"{path}: bad annotator lines {block}"
            records.append((float(match[1]), float(match[2]), match[3], int(match[4]), match[5], match[6]))
        block = []
    assert not block, f"{path}: last block not closed by a blank line"
    return records


def parse_transcripts(path: Path) -> list[tuple]:
    """(utterance, start, end, text) of every line; every line must match the format."""
    rows = []
    for line in path.read_text().splitlines():
        match = TRANSCRIPT_LINE.match(line)
        assert match, f"{path}: bad transcription line {line!r}"
        rows.append((match[1], float(match[2]), float(match[3]), match[4]))
    return rows


def file_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def median_pitch_st(samples: np.ndarray, frame: int = 640, hop: int = 160) -> float:
    """Median f0 (semitones above 100 Hz) of the strongly periodic loud frames (autocorrelation)."""
    frames = sliding_window_view(samples, frame)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames ** 2).mean(axis=1)
    frames = frames[energy > 0.1 * energy.max()]
    autocorr = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame)) ** 2)[:, :frame]
    low, high = synth.SR // 400, synth.SR // 70
    lag = low + autocorr[:, low:high].argmax(axis=1)
    strength = autocorr[np.arange(len(lag)), lag] / autocorr[:, 0]
    return float(np.median(12 * np.log2(synth.SR / lag[strength > 0.5] / 100)))


def prosody_features(table) -> np.ndarray:
    """[RMS dB, pitch in semitones relative to the speaker's median] per utterance."""
    rms, pitch = [], []
    for path in table["wav"]:
        samples, _ = sf.read(path)
        rms.append(10 * np.log10(np.mean(samples ** 2)))
        pitch.append(median_pitch_st(samples))
    pitch = np.array(pitch)
    for speaker in table["speaker"].unique():
        mine = (table["speaker"] == speaker).to_numpy()
        pitch[mine] -= np.median(pitch[mine])
    return np.stack([rms, pitch], axis=1)


def test_release_has_iemocap_layout_and_file_formats(corpus):
    root, table = corpus
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [f"Session{s}" for s in synth.SESSIONS]
    dialogs = set()
    for label_file in sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt")):
        session_dir, dialog = label_file.parents[2], label_file.stem
        dialogs.add(dialog)
        labels = parse_labels(label_file)
        transcripts = parse_transcripts(session_dir / "dialog" / "transcriptions" / label_file.name)
        spoken = {utt: (start, end, text) for utt, start, end, text in transcripts}
        assert len(spoken) == len(transcripts), f"{label_file}: an utterance has two transcript lines"
        for start, end, utt, session, gender, label in labels:
            assert utt.startswith(dialog + "_") and session_dir.name == f"Session{session}"
            assert spoken[utt][:2] == (start, end)
            info = sf.info(str(session_dir / "sentences" / "wav" / dialog / f"{utt}.wav"))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert end - start == pytest.approx(info.duration, abs=2e-4)
        assert [r[0] for r in labels] == sorted(r[0] for r in labels)
        assert [r[1] for r in transcripts] == sorted(r[1] for r in transcripts)
        assert all(a[2] <= b[1] for a, b in zip(transcripts, transcripts[1:])), "turns overlap"
    skipped = [u for p in root.glob("Session*/dialog/transcriptions/*.txt") for u, *_ in parse_transcripts(p)
               if u.endswith("XX0")]
    assert skipped, "no transcription line outside the labelled set"
    assert not any(root.glob("Session*/sentences/wav/*/*XX0.wav"))
    assert any(re.fullmatch(r"Ses0\dF_impro\d\d", d) for d in dialogs)
    assert any(re.fullmatch(r"Ses0\dM_script\d\d_\d", d) for d in dialogs)
    assert len(table) == sum(len(parse_labels(p)) for p in root.glob("Session*/dialog/EmoEvaluation/*.txt"))


def test_label_counts_per_session_are_per_session_plus_distractors(corpus):
    _, table = corpus
    for session, group in table.groupby("session"):
        kept = group["label"].isin(KEPT_LABELS)
        assert kept.sum() == PER_SESSION
        assert (~kept).sum() == round(synth.DISTRACTOR_FRACTION * PER_SESSION)
        assert set(group["label"]) <= set(ALL_RELEASE_LABELS)
    default = synth.session_labels(100)
    counts = {label: default.count(label) for label in set(default)}
    assert {k: counts[k] for k in ("neu", "hap", "exc", "ang", "sad")} == \
        {"neu": 31, "hap": 11, "exc": 19, "ang": 20, "sad": 19}
    assert set(counts) == set(ALL_RELEASE_LABELS) and len(default) == 125


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synth.make_corpus(tmp_path / name, per_session=3, seed=seed)
    first, again, other = (file_hashes(tmp_path / name) for name in "abc")
    assert first == again
    assert first != other


def test_rerun_with_same_settings_rewrites_identical_files(tmp_path):
    synth.make_corpus(tmp_path, per_session=2, seed=1)
    before = file_hashes(tmp_path)
    synth.make_corpus(tmp_path, per_session=2, seed=1)
    assert file_hashes(tmp_path) == before


def test_each_session_has_one_female_and_one_male_speaker_with_distinct_pitch(corpus):
    _, table = corpus
    for session, group in table.groupby("session"):
        assert sorted(group["speaker"].unique()) == [f"Ses{session:02d}_F", f"Ses{session:02d}_M"]
        assert (group["gender"] == group["id"].str[-4]).all()
        pitch = {g: np.median([median_pitch_st(sf.read(p)[0]) for p in group.loc[group["gender"] == g, "wav"]])
                 for g in "FM"}
        assert pitch["F"] - pitch["M"] > 5, f"session {session}: speakers' pitch too close ({pitch})"


def test_prosody_differs_by_class_on_average(corpus):
    _, table = corpus
    kept = table[table["label"].isin(KEPT_LABELS)].reset_index(drop=True)
    features = prosody_features(kept)
    mean = {label: features[(kept["label"] == label).to_numpy()].mean(axis=0) for label in KEPT_LABELS}
    rms, pitch = {k: v[0] for k, v in mean.items()}, {k: v[1] for k, v in mean.items()}
    assert rms["ang"] > rms["neu"] + 3 and rms["neu"] > rms["sad"] + 2, rms
    assert min(pitch["hap"], pitch["exc"]) > pitch["sad"] + 2, pitch


def test_prosody_alone_leaves_classes_overlapping(corpus):
    """A nearest-class-mean on loudness and pitch, tested on unseen sessions: well above
    chance, far from perfect, so the words have something left to add."""
    _, table = corpus
    kept = table[table["label"].isin(KEPT_LABELS)].reset_index(drop=True)
    features = prosody_features(kept)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    classes = kept["label"].map(LABEL_TO_INDEX).to_numpy()
    correct = 0
    for session in synth.SESSIONS:
        test = (kept["session"] == session).to_numpy()
        means = np.stack([features[~test & (classes == c)].mean(axis=0) for c in range(4)])
        guess = np.linalg.norm(features[test, None] - means[None], axis=2).argmin(axis=1)
        correct += (guess == classes[test]).sum()
    assert 0.45 < correct / len(kept) < 0.75


def test_transcripts_use_only_the_ctc_vocabulary_and_the_lexicon(corpus):
    _, table = corpus
    letters = {symbol for symbol in VOCAB if len(symbol) == 1 and symbol != "|"}
    for text in table["transcript"]:
        assert text[0].isupper() and text[-1] in ".?!"
        spoken = re.sub(r"[.,?!]", "", text)
        assert set(spoken.upper()) <= letters | {" "}, text
        assert set(spoken.lower().split()) <= set(all_words()), text


def test_about_half_of_the_4class_utterances_name_their_emotion_in_words(corpus):
    _, table = corpus
    word_class = {word: LABEL_TO_INDEX[label] for label, words in EMOTION_WORDS.items() for word in words}
    revealing, kept = 0, 0
    for text, label in zip(table["transcript"], table["label"]):
        classes = {word_class[w] for w in re.sub(r"[.,?!]", "", text).lower().split() if w in word_class}
        if label not in KEPT_LABELS:
            assert not classes, f"distractor {label} uses emotion words: {text}"
            continue
        assert classes <= {LABEL_TO_INDEX[label]}, f"{label} utterance names another emotion: {text}"
        revealing += bool(classes)
        kept += 1
    assert 0.3 < revealing / kept < 0.7


def test_every_letter_has_its_own_sound():
    """Each letter, spoken alone on a flat pitch, differs from every other in its average spectrum."""
    speaker = vocoder.Speaker("Ses01_F", "F", 150.0, 1.0, 1.0, 0.0)
    prosody = vocoder.Prosody(0.0, 0.0, 1.0, -20.0, 0.93, 0.05, -90.0)
    edges = np.geomspace(80, 8000, 25)
    spectra = {}
    for letter in vocoder.LETTERS:
        turn = vocoder.Turn("x", speaker, "neu", ((letter.lower(), "."),), prosody, 0.1, 0.0, 0.0, seed=0)
        sound = vocoder.synthesize(turn)[1600:1600 + round(vocoder.word_seconds(letter) * vocoder.SR)]
        power = np.abs(np.fft.rfft(sound, 4096)) ** 2
        freqs = np.fft.rfftfreq(4096, 1 / vocoder.SR)
        bands = np.array([power[(freqs >= a) & (freqs < b)].sum() for a, b in zip(edges[:-1], edges[1:])])
        spectra[letter] = 10 * np.log10(bands / bands.sum() + 1e-12)
    assert set(spectra) == {symbol for symbol in VOCAB if len(symbol) == 1 and symbol != "|"}
    for a, b in combinations(spectra, 2):
        assert np.sqrt(np.mean((spectra[a] - spectra[b]) ** 2)) > 2.0, f"{a} and {b} sound alike"


def test_short_durations_lie_between_1_and_3_5_seconds(corpus):
    _, table = corpus
    assert table["duration"].between(1.0, 3.6).all()
    assert 2.0 < table["duration"].mean() < 2.5


def test_iemocap_durations_have_iemocap_mean_and_a_long_tail(tmp_path):
    table = synth.make_corpus(tmp_path, per_session=16, seed=0, durations="iemocap")
    assert 4.0 < table["duration"].mean() < 5.0
    assert 3.0 < table["duration"].median() < 4.2
    assert table["duration"].max() > 15
    letters = table["transcript"].str.count(r"[A-Za-z']")
    assert np.corrcoef(letters, table["duration"])[0, 1] > 0.8, "speech length does not follow the words"


def test_refuses_a_folder_holding_a_different_corpus_unless_overwrite(tmp_path):
    synth.make_corpus(tmp_path, per_session=2, seed=0)
    with pytest.raises(synth.CorpusError, match=re.escape(str(tmp_path)) + ".*--overwrite"):
        synth.make_corpus(tmp_path, per_session=2, seed=1)
    replaced = synth.make_corpus(tmp_path, per_session=1, seed=1, overwrite=True)
    wavs = sorted(p.stem for p in tmp_path.rglob("*.wav"))
    assert wavs == sorted(replaced["id"]), "files of the replaced corpus were left behind"


def test_never_writes_into_a_folder_it_did_not_create(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(synth.CorpusError, match="not empty"):
        synth.make_corpus(tmp_path, per_session=2, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_cli_writes_the_corpus_and_prints_one_summary_line(tmp_path):
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "release"), "--per_session", "4", "--seed", "3"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote 25 utterances (20 in the 4-class set"), done.stdout
    assert len(list((tmp_path / "release").rglob("*.wav"))) == 25
    command[command.index("--seed") + 1] = "4"
    refused = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr and refused.stderr.count("\n") == 1

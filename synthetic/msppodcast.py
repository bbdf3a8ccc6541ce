"""A tiny MSP-Podcast release in the layout the corpus is distributed in (Labels/labels_consensus.csv
or .json, Labels/labels_detailed.csv, Audios/*.wav), for the importer's tests: every EmoClass code,
every Split_Set, a speaker the release calls Unknown, a file that is not 16 kHz mono, and annotators'
votes written as words, free-text Other choices and a code. The audio is noise: only the labels matter."""
import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

CONSENSUS_FIELDS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
# As labels_consensus.csv writes them: attributes are means of the annotators' 1-7 ratings.
CONSENSUS = (
    ("MSP-PODCAST_0001_0001.wav", "A", "5.8", "2.2", "5.4", "12", "Male", "Train"),
    ("MSP-PODCAST_0001_0002.wav", "S", "2.1666666666666665", "1.8333333333333333", "2.6", "12", "Male", "Train"),
    ("MSP-PODCAST_0002_0001.wav", "H", "4.6", "6.2", "4.4", "31", "Female", "Train"),
    ("MSP-PODCAST_0002_0002.wav", "U", "5.0", "4.0", "3.8", "31", "Female", "Train"),
    ("MSP-PODCAST_0003_0001.wav", "F", "4.4", "2.6", "2.8", "Unknown", "Unknown", "Train"),
    ("MSP-PODCAST_0003_0002.wav", "D", "3.6", "2.4", "4.2", "Unknown", "Unknown", "Development"),
    ("MSP-PODCAST_0004_0001.wav", "C", "3.4", "2.8", "5.2", "44", "Female", "Development"),
    ("MSP-PODCAST_0004_0002.wav", "N", "3.0", "4.0", "4.0", "44", "Female", "Train"),
    ("MSP-PODCAST_0005_0001.wav", "O", "3.8", "3.2", "4.6", "58", "Male", "Test1"),
    ("MSP-PODCAST_0008_0001.wav", "N", "4.0", "4.2", "3.8", "81", "Female", "Test1"),
    ("MSP-PODCAST_0008_0002.wav", "S", "2.4", "2.0", "3.0", "81", "Female", "Test1"),
    ("MSP-PODCAST_0005_0002.wav", "X", "4.2", "3.6", "4.0", "58", "Male", "Test2"),
    ("MSP-PODCAST_0006_0001.wav", "N", "1.0", "7.0", "4.0", "63", "Female", "Test2"),
    ("MSP-PODCAST_0007_0001.wav", "A", "6.0", "1.6666666666666667", "5.5", "70", "Male", "Test3"),
)
DETAILED_FIELDS = ("FileName", "WorkerID", "EmoClass_Major", "EmoClass_Second", "EmoAct", "EmoVal", "EmoDom")
# One row per annotation: (file, [(worker, primary choice, secondary choices), ...]); ratings are filled in.
VOTES = (
    ("MSP-PODCAST_0001_0001.wav", [("WORKER00001", "Angry", "Annoyed,Frustrated"), ("WORKER00002", "Angry", ""),
                                   ("WORKER00003", "Contempt", "Angry"), ("WORKER00004", "Other-Annoyed", ""),
                                   ("WORKER00005", "A", "")]),
    ("MSP-PODCAST_0001_0002.wav", [("WORKER00001", "Sad", ""), ("WORKER00006", "Sad", "Concerned"),
                                   ("WORKER00007", "Neutral", "")]),
    ("MSP-PODCAST_0005_0001.wav", [("WORKER00002", "Other-Concerned", ""), ("WORKER00008", "Other", ""),
                                   ("WORKER00009", "Other-Bored", "")]),
    ("MSP-PODCAST_0005_0002.wav", [("WORKER00003", "Happy", ""), ("WORKER00004", "Surprise", ""),
                                   ("WORKER00005", "Fear", ""), ("WORKER00010", "Disgust", "")]),
    ("MSP-PODCAST_0999_0001.wav", [("WORKER00001", "Happy", "")]),  # not in the consensus file (a later release's)
)
CONVERTED = "MSP-PODCAST_0004_0001.wav"  # 22.05 kHz stereo: the importer writes it as 16 kHz mono
SECONDS = 0.25


def make_msppodcast_release(root, consensus: str = "csv", detailed: bool = True, seed: int = 0) -> Path:
    """Write the release under root and return root. consensus: the labels as `csv` or `json`."""
    root = Path(root)
    labels = root / "Labels"
    labels.mkdir(parents=True, exist_ok=True)
    if consensus == "csv":
        write_csv(labels / "labels_consensus.csv", CONSENSUS_FIELDS, CONSENSUS)
    elif consensus == "json":
        entries = {row[0]: {field: value for field, value in zip(CONSENSUS_FIELDS[1:], row[1:])} for row in CONSENSUS}
        (labels / "labels_consensus.json").write_text(json.dumps(entries, indent=1))
    else:
        raise ValueError(f"consensus must be 'csv' or 'json', got {consensus!r}")
    if detailed:
        rows = [(name, worker, major, second, "4.0", "4.0", "4.0")
                for name, annotations in VOTES for worker, major, second in annotations]
        write_csv(labels / "labels_detailed.csv", DETAILED_FIELDS, rows)
    rng = np.random.default_rng(seed)
    for name, *_ in CONSENSUS:
        rate, channels = (22050, 2) if name == CONVERTED else (16000, 1)
        noise = rng.normal(0.0, 0.01, size=(int(SECONDS * rate), channels)).astype(np.float32)
        (root / "Audios").mkdir(exist_ok=True)
        sf.write(str(root / "Audios" / name), noise, rate, subtype="PCM_16", format="WAV")
    return root


def write_csv(path: Path, fields, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        writer.writerows(rows)

"""A fake IEMOCAP_full_release built from the upstream 4-class csv: its real ids,
labels and transcripts, plus the distractors a real release holds (other labels,
transcript lines of no labelled utterance), with tiny noise wavs, for data_prep tests."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

UPSTREAM_CSV = Path(__file__).resolve().parent / "reference" / "iemocap_4class_upstream.csv"
DISTRACTOR_LABELS = ("fru", "sur", "xxx", "fea", "dis", "oth")
CATEGORY = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger", "sad": "Sadness",
            "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other",
            "xxx": "Frustration"}
LABEL_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
# [V, A, D] as the release writes them: means of several annotators' 1-5 ratings, in thirds and sixths.
VADS = (("2.5000", "2.5000", "2.5000"), ("3.3333", "2.1667", "4.0000"), ("1.6667", "4.8333", "3.5000"))


@dataclass
class FakeRelease:
    """Paths into a fake release, so tests can break one file on purpose."""
    root: Path
    rows: pd.DataFrame  # the upstream rows it holds: FileName, Sentences, Label

    def session(self, utterance: str) -> Path:
        return self.root / f"Session{utterance[4]}"

    def wav(self, utterance: str) -> Path:
        return self.session(utterance) / "sentences/wav" / dialog_of(utterance) / f"{utterance}.wav"

    def label_file(self, utterance: str) -> Path:
        return self.session(utterance) / "dialog/EmoEvaluation" / f"{dialog_of(utterance)}.txt"

    def transcript_file(self, utterance: str) -> Path:
        return self.session(utterance) / "dialog/transcriptions" / f"{dialog_of(utterance)}.txt"


def dialog_of(utterance: str) -> str:
    return utterance.rsplit("_", 1)[0]


def write_noise_wav(path, n_samples: int, rng, sample_rate: int = 16000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.normal(0.0, 0.01, size=(n_samples, channels)).astype(np.float32)
    sf.write(str(path), noise, sample_rate, subtype="PCM_16", format="WAV")


def vad_of(utterance: str) -> tuple[str, str, str]:
    """The [V, A, D] the fake release writes for an utterance, one of VADS chosen by its id."""
    return VADS[sum(map(ord, utterance)) % len(VADS)]


def label_block(utt: str, label: str, start: float, end: float) -> str:
    return (f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[{', '.join(vad_of(utt))}]\n"
            f"C-E1:\t{CATEGORY[label]};\t()\nC-E2:\t{CATEGORY[label]};\t()\nC-F1:\tNeutral;\t()\n"
            f"A-E1:\tval 3; act 2; dom  2;\t()\nA-F1:\tval 2; act 3; dom  3;\t(tired)\n\n")


def dialog_turns(dialog: str, rows: pd.DataFrame, rng) -> list[tuple[str, str, str]]:
    """(utterance, label, transcript) of a dialog in spoken order: the upstream rows
    and two utterances with labels outside the 4-class set (indices >= 900, unused upstream)."""
    turns = list(zip(rows.FileName, rows.Label, rows.Sentences))
    for k in range(2):
        label = DISTRACTOR_LABELS[rng.integers(len(DISTRACTOR_LABELS))]
        turns.append((f"{dialog}_{'FM'[k]}9{k:02d}", label, "Oh, come on. [LAUGHTER]"))
    return [turns[i] for i in rng.permutation(len(turns))]


def write_dialog(root: Path, dialog: str, rows: pd.DataFrame, rng) -> None:
    session = root / f"Session{dialog[4]}"
    labels, transcripts, clock = [LABEL_HEADER], [], 1.0
    for utt, label, sentence in dialog_turns(dialog, rows, rng):
        n_samples = int(rng.integers(800, 3200))  # 0.05-0.2 s at 16 kHz
        write_noise_wav(session / "sentences/wav" / dialog / f"{utt}.wav", n_samples, rng)
        start, end = round(clock, 4), round(clock + n_samples / 16000, 4)
        labels.append(label_block(utt, label, start, end))
        transcripts.append(f"{utt} [{start:08.4f}-{end:08.4f}]: {sentence}\n")
        clock = end + 0.5
    # Turns of no labelled utterance, as the real transcriptions hold them.
    transcripts.insert(1, f"{dialog}_MXX0 [000.1000-000.9000]: [BREATHING]\n")
    transcripts.append(f"{dialog}_FXX1 [{clock:08.4f}-{clock + 1:08.4f}]: Mm-hmm.\n")
    (session / "dialog/EmoEvaluation/Categorical").mkdir(parents=True, exist_ok=True)
    (session / "dialog/EmoEvaluation/Categorical" / f"{dialog}_e1_cat.txt").write_text(
        "".join(f"{utt} :{CATEGORY[label]}; ()\n" for utt, label in zip(rows.FileName, rows.Label)))
    (session / "dialog/EmoEvaluation" / f"{dialog}.txt").write_text("".join(labels))
    (session / "dialog/transcriptions").mkdir(parents=True, exist_ok=True)
    (session / "dialog/transcriptions" / f"{dialog}.txt").write_text("".join(transcripts))


def build_fake_release(root, csv_path=UPSTREAM_CSV, per_session: int | None = None, seed: int = 0) -> FakeRelease:
    """Write a fake release under root (root/Session1..5). per_session keeps only the
    first n upstream utterances of each session, for fast tests and reduced counts."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: upstream csv missing; tests/reference/ holds a copy of shared/reference/iemocap_4class_upstream.csv")
    rows = pd.read_csv(csv_path, keep_default_na=False)[["FileName", "Sentences", "Label"]]
    if per_session is not None:
        rows = rows.groupby(rows.FileName.str[4], sort=False).head(per_session)
    root, rng = Path(root), np.random.default_rng(seed)
    for dialog, dialog_rows in rows.groupby(rows.FileName.map(dialog_of), sort=True):
        write_dialog(root, dialog, dialog_rows, rng)
    return FakeRelease(root, rows.reset_index(drop=True))

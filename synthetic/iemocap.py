"""A synthetic IEMOCAP release (the folders and file formats of IEMOCAP_full_release) for the
offline demo and the tests: `make_corpus` plans the sessions and dialogs from one seed, has the
letter vocoder (synthetic/vocoder.py) speak each transcript and writes the wavs, label and
transcription files. The emotion is audible in the prosody and, for about half of the utterances,
visible in the words. data_prep/make_synthetic_iemocap.py is its command line."""
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special
from tqdm import tqdm

from dataio.audio import write_wav
from dataio.labels import KEPT_LABELS, REFERENCE_LABEL_COUNTS
from models.errors import MMERError
from synthetic.lexicon import EMOTION_WORDS, NEUTRAL_WORDS
from synthetic.vocoder import MIN_TRAIL_S, SENTENCE_END, SR, Prosody, Speaker, Turn, spoken_seconds, synthesize
from utils.files import atomic_write_text

SESSIONS = (1, 2, 3, 4, 5)
MANIFEST = "synthetic_corpus.json"
# Bump when the generator's output changes, so an older corpus counts as a different one.
GENERATOR_VERSION = 1

# ---------------------------------------------------------------- corpus design

DISTRACTOR_FRACTION = 0.25  # utterances with filtered labels, on top of --per_session
DISTRACTOR_SHARE = {"fru": 0.40, "xxx": 0.36, "sur": 0.08, "fea": 0.08, "dis": 0.04, "oth": 0.04}
EMOTION_WORD_SHARE = 0.5  # 4-class utterances whose words reveal their class
WORDS_OF = {"hap": EMOTION_WORDS["hap"], "exc": EMOTION_WORDS["hap"] + EMOTION_WORDS["exc"],
            "ang": EMOTION_WORDS["ang"], "sad": EMOTION_WORDS["sad"], "neu": EMOTION_WORDS["neu"]}
EXCLAIMING = ("hap", "exc", "ang", "sur")
TURNS_PER_DIALOG = 20
FILLER_TEXTS = ("Mm-hmm.", "Yeah.", "[LAUGHTER]", "Oh.", "Hmm.")
# IEMOCAP's utterance durations are roughly log-normal: median 3.6 s, mean 4.5 s.
IEMOCAP_LOG_MEDIAN, IEMOCAP_LOG_SD = math.log(3.6), math.sqrt(2 * math.log(4.5 / 3.6))

CATEGORY = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger", "sad": "Sadness",
            "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other"}
# Typical valence, activation, dominance (1-5) given by IEMOCAP's annotators.
VAD = {"neu": (3.0, 2.5, 2.8), "hap": (4.0, 3.2, 3.2), "exc": (4.0, 3.8, 3.4), "ang": (1.8, 3.8, 3.9),
       "sad": (2.0, 2.2, 2.3), "fru": (2.0, 3.3, 3.2), "sur": (3.3, 3.8, 2.8), "fea": (2.0, 3.5, 2.2),
       "dis": (2.0, 3.1, 3.3), "oth": (3.0, 3.0, 3.0), "xxx": (2.8, 3.0, 3.0)}


@dataclass(frozen=True)
class Style:
    """How an emotion sounds, relative to the speaker's own voice."""
    pitch_st: float  # shift of the pitch level, semitones
    range_st: float  # spread of the word accents, semitones
    tempo: float     # speech-rate factor
    level_db: float  # speech loudness, dB full scale
    tilt: float      # glottal low-pass pole: higher is a softer, darker voice
    breath: float    # aspiration noise mixed into the voice


STYLES = {
    "neu": Style(0.0, 1.5, 1.00, -30, 0.93, 0.05),
    "hap": Style(3.0, 3.0, 1.08, -27, 0.92, 0.05),
    "exc": Style(4.5, 4.0, 1.15, -24, 0.91, 0.05),
    "ang": Style(2.0, 2.5, 1.12, -22, 0.86, 0.02),
    "sad": Style(-2.0, 1.0, 0.85, -35, 0.96, 0.20),
    "fru": Style(1.0, 2.0, 1.05, -25, 0.89, 0.04),
    "sur": Style(5.0, 4.5, 1.05, -26, 0.92, 0.05),
    "fea": Style(4.0, 1.5, 1.15, -30, 0.94, 0.15),
    "dis": Style(-1.0, 2.0, 0.90, -28, 0.90, 0.08),
    "oth": Style(1.0, 2.0, 1.00, -28, 0.92, 0.06),
    "xxx": Style(1.0, 2.0, 1.00, -28, 0.92, 0.06),
}


@dataclass(frozen=True)
class Filler:
    """A turn outside the labelled set (`..._MXX0`): a transcript line without label or wav."""
    id: str
    text: str
    seconds: float
    before_turn: int


@dataclass(frozen=True)
class Dialog:
    name: str
    session: int
    start_s: float
    turns: tuple
    fillers: tuple
    seed: int  # of the annotator lines


# ---------------------------------------------------------------- planning (pure, driven by one rng)


def apportion(total: int, shares: dict) -> dict:
    """Split total into integer counts proportional to shares (largest remainder)."""
    scale = total / sum(shares.values())
    counts = {key: int(share * scale) for key, share in shares.items()}
    by_remainder = sorted(shares, key=lambda key: shares[key] * scale - counts[key], reverse=True)
    for key in by_remainder[:total - sum(counts.values())]:
        counts[key] += 1
    return counts


def session_labels(per_session: int) -> list[str]:
    """The labels of one session: per_session in the 4-class set in IEMOCAP's proportions,
    plus DISTRACTOR_FRACTION more with labels that data_prep must filter out."""
    counts = apportion(per_session, REFERENCE_LABEL_COUNTS)
    counts.update(apportion(round(DISTRACTOR_FRACTION * per_session), DISTRACTOR_SHARE))
    return [label for label, count in counts.items() for _ in range(count)]


def target_durations(n: int, durations: str, rng) -> np.ndarray:
    """One draw per n-quantile, shuffled, so that even a small corpus spans the whole
    distribution: the mean sits on target and the longest utterance is in the far tail."""
    quantiles = (rng.permutation(n) + rng.random(n)) / n
    if durations == "short":
        return 1.0 + 2.5 * quantiles
    return np.clip(np.exp(IEMOCAP_LOG_MEDIAN + IEMOCAP_LOG_SD * special.ndtri(quantiles)), 0.8, 32.0)


def draw_speaker(session: int, gender: str, rng) -> Speaker:
    female = gender == "F"
    return Speaker(name=f"Ses{session:02d}_{gender}", gender=gender,
                   f0_hz=rng.uniform(185, 235) if female else rng.uniform(95, 135),
                   formant_scale=rng.uniform(1.10, 1.22) if female else rng.uniform(0.90, 1.00),
                   tempo=rng.uniform(0.9, 1.1), level_db=rng.uniform(-2, 2))


def draw_prosody(label: str, speaker: Speaker, rng) -> Prosody:
    """The label's style, moved by the speaker's habits and per-utterance jitter large enough
    that prosody alone leaves the classes overlapping."""
    style = STYLES[label]
    return Prosody(pitch_st=style.pitch_st + rng.normal(0, 2.0),
                   range_st=style.range_st * rng.lognormal(0, 0.3),
                   tempo=style.tempo * speaker.tempo * rng.lognormal(0, 0.08),
                   level_db=style.level_db + speaker.level_db + rng.normal(0, 3.0),
                   tilt=float(np.clip(style.tilt + rng.normal(0, 0.01), 0.80, 0.98)),
                   breath=style.breath * rng.lognormal(0, 0.3),
                   noise_db=rng.uniform(-63, -48))


def draw_words(label: str, budget_s: float, tempo: float, rng) -> list[str]:
    """Neutral words filling about budget_s of speech; in about half of the 4-class
    utterances one or two words of the label's own class are mixed in."""
    emotional = []
    if label in WORDS_OF and rng.random() < EMOTION_WORD_SHARE:
        emotional = [str(w) for w in rng.choice(WORDS_OF[label], size=rng.integers(1, 3), replace=False)]
    spent = sum(spoken_seconds(word, tempo) for word in emotional)
    words = []
    while True:
        word = str(rng.choice(NEUTRAL_WORDS))
        spent += spoken_seconds(word, tempo)
        if (words or emotional) and spent > budget_s:
            break
        words.append(word)
    for word in emotional:
        words.insert(rng.integers(0, len(words) + 1), word)
    return words


def punctuate(words: list[str], label: str, rng) -> tuple:
    """(word, mark) pairs: sentences of 3-9 words, a few commas, end marks that suit the label."""
    tokens, run = [], 0
    for index, word in enumerate(words):
        run += 1
        left = len(words) - index - 1
        if left == 0 or (run >= 3 and left >= 3 and (run >= 9 or rng.random() < 0.2)):
            roll = rng.random()
            mark = "?" if roll < 0.15 else "!" if label in EXCLAIMING and roll > 0.75 else "."
            run = 0
        else:
            mark = "," if run >= 2 and rng.random() < 0.1 else ""
        tokens.append((word, mark))
    return tuple(tokens)


def transcript(tokens) -> str:
    """Written form: `I know, it's okay.`"""
    out, capital = [], True
    for word, mark in tokens:
        text = "I" if word == "i" else word
        out.append((text[0].upper() + text[1:] if capital else text) + mark)
        capital = mark in SENTENCE_END
    return " ".join(out)


def draw_turn(dialog: str, index: int, speaker: Speaker, label: str, target_s: float, rng) -> Turn:
    prosody = draw_prosody(label, speaker, rng)
    lead = rng.uniform(0.12, 0.4)
    words = draw_words(label, target_s - lead - MIN_TRAIL_S, prosody.tempo, rng)
    return Turn(id=f"{dialog}_{speaker.gender}{index:03d}", speaker=speaker, label=label,
                tokens=punctuate(words, label, rng), prosody=prosody, lead_s=lead, target_s=float(target_s),
                gap_s=rng.uniform(0.2, 1.8), seed=int(rng.integers(2 ** 63)))


def dialog_names(session: int, n: int) -> list[str]:
    """`Ses01F_impro01`, `Ses01M_script01_1`, `Ses01M_impro01`, `Ses01F_script01_1`...: improvised
    and scripted dialogs alternate and, as in IEMOCAP, each scenario is played twice, once with
    each actor wearing the motion-capture markers (the letter after the session)."""
    names = []
    for k in range(n):
        number, lead = k // 4, "FM"[(k + k // 2) % 2]
        stem = f"script{number // 3 + 1:02d}_{number % 3 + 1}" if k % 2 else f"impro{number + 1:02d}"
        names.append(f"Ses{session:02d}{lead}_{stem}")
    return names


def draw_fillers(name: str, n_turns: int, rng) -> tuple:
    """At most one `XX0` line per actor and dialog, placed before random turns."""
    return tuple(Filler(id=f"{name}_{gender}XX0", text=str(rng.choice(FILLER_TEXTS)),
                        seconds=rng.uniform(0.4, 1.2), before_turn=int(rng.integers(n_turns)))
                 for gender in "FM" if rng.random() < 0.7)


def plan_session(session: int, labels: list[str], targets: np.ndarray, rng) -> list[Dialog]:
    """Shuffled labels cut into dialogs; within a dialog the two actors mostly alternate."""
    speakers = {gender: draw_speaker(session, gender, rng) for gender in "FM"}
    labels = [labels[i] for i in rng.permutation(len(labels))]
    n_dialogs = min(len(labels), max(2, round(len(labels) / TURNS_PER_DIALOG)))
    dialogs, done = [], 0
    for name, chunk in zip(dialog_names(session, n_dialogs), np.array_split(np.arange(len(labels)), n_dialogs)):
        turns, counts, gender = [], {"F": 0, "M": 0}, str(rng.choice(["F", "M"]))
        for position in chunk:
            turns.append(draw_turn(name, counts[gender], speakers[gender], labels[position], targets[done], rng))
            counts[gender] += 1
            done += 1
            gender = {"F": "M", "M": "F"}[gender] if rng.random() < 0.75 else gender
        dialogs.append(Dialog(name, session, rng.uniform(1.0, 6.0), tuple(turns),
                              draw_fillers(name, len(turns), rng), int(rng.integers(2 ** 63))))
    return dialogs


def plan_corpus(per_session: int, seed: int, durations: str) -> list[Dialog]:
    rng = np.random.default_rng(seed)
    labels = session_labels(per_session)
    targets = target_durations(len(labels) * len(SESSIONS), durations, rng)
    dialogs = []
    for k, session in enumerate(SESSIONS):
        dialogs += plan_session(session, labels, targets[k * len(labels):(k + 1) * len(labels)], rng)
    return dialogs


# ---------------------------------------------------------------- the release's text files (pure)


def timeline(dialog: Dialog, seconds: list[float]) -> tuple[list, list]:
    """(start, end) of every turn and every filler of a dialog, one after the other."""
    fillers = {filler.before_turn: filler for filler in dialog.fillers}
    turn_spans, filler_spans, clock = [], [], dialog.start_s
    for index, (turn, length) in enumerate(zip(dialog.turns, seconds)):
        if index in fillers:
            filler_spans.append((clock + turn.gap_s, clock + turn.gap_s + fillers[index].seconds))
            clock = filler_spans[-1][1]
        turn_spans.append((clock + turn.gap_s, clock + turn.gap_s + length))
        clock = turn_spans[-1][1]
    return turn_spans, filler_spans


def annotations(label: str, gender: str, rng) -> tuple[tuple, list[str]]:
    """The mean (valence, activation, dominance) and the annotator lines of one utterance: three
    evaluators whose categorical votes give the majority label (none for xxx), plus the actor."""
    others = [name for name in CATEGORY.values() if name != CATEGORY.get(label)]
    if label == "xxx":
        votes = list(rng.choice(others, size=3, replace=False))
    else:
        votes = [CATEGORY[label]] * 2 + [CATEGORY[label] if rng.random() < 0.5 else str(rng.choice(others))]
    evaluators = [f"E{k}" for k in sorted(rng.choice(np.arange(1, 7), size=3, replace=False))]
    actor = f"{gender}1"
    self_vote = CATEGORY.get(label, "Other") if rng.random() < 0.6 else str(rng.choice(others))
    lines = [f"C-{who}:\t{vote};\t()" for who, vote in zip(evaluators + [actor], votes + [self_vote])]
    scores = np.clip(np.rint(np.array(VAD[label]) + rng.normal(0, 0.7, size=(4, 3))), 1, 5).astype(int)
    lines += [f"A-{who}:\tval {v}; act {a}; dom  {d};\t()" for who, (v, a, d) in zip(evaluators + [actor], scores)]
    return tuple(scores[:3].mean(axis=0)), lines


def emo_evaluation_text(dialog: Dialog, spans: list, rng) -> str:
    blocks = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n"]
    for turn, (start, end) in zip(dialog.turns, spans):
        (v, a, d), lines = annotations(turn.label, turn.speaker.gender, rng)
        head = f"[{start:.4f} - {end:.4f}]\t{turn.id}\t{turn.label}\t[{v:.4f}, {a:.4f}, {d:.4f}]"
        blocks.append("\n".join([head, *lines]) + "\n")
    return "\n".join(blocks) + "\n"


def transcription_text(dialog: Dialog, turn_spans: list, filler_spans: list) -> str:
    lines = [(start, f"{turn.id} [{start:08.4f}-{end:08.4f}]: {transcript(turn.tokens)}")
             for turn, (start, end) in zip(dialog.turns, turn_spans)]
    lines += [(start, f"{filler.id} [{start:08.4f}-{end:08.4f}]: {filler.text}")
              for filler, (start, end) in zip(dialog.fillers, filler_spans)]
    return "".join(line + "\n" for _, line in sorted(lines))


# ---------------------------------------------------------------- writing


class CorpusError(MMERError):
    """The output folder cannot take this corpus; the message names it and the fix."""


def read_manifest(path: Path) -> dict | None:
    """The settings of the corpus in a folder; None if there is none, {} if it is unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def describe(settings: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in settings.items()) or "unreadable settings"


def prepare_out_dir(out_dir: Path, settings: dict, overwrite: bool) -> None:
    """Accept an empty folder or one holding the same corpus (rewritten identically); replace a
    different synthetic corpus only with overwrite; never touch a folder we did not write."""
    manifest = out_dir / MANIFEST
    if out_dir.is_dir() and any(out_dir.iterdir()):
        found = read_manifest(manifest)
        if found is None:
            raise CorpusError(f"{out_dir} is not empty and holds no synthetic corpus (no {MANIFEST}); "
                              "pass an empty or new folder")
        if found != settings and not overwrite:
            raise CorpusError(f"{out_dir} already holds a different synthetic corpus ({describe(found)}); "
                              "pass an empty folder or --overwrite to replace it")
        if found != settings:
            for session in SESSIONS:
                shutil.rmtree(out_dir / f"Session{session}", ignore_errors=True)
    # Written first: a run that stops half-way is completed by the same command.
    atomic_write_text(manifest, json.dumps(settings, indent=1) + "\n")


def write_dialog(out_dir: Path, dialog: Dialog, progress) -> list[dict]:
    """Synthesise and write one dialog's wavs, then its label and transcription files."""
    session_dir = out_dir / f"Session{dialog.session}"
    wav_dir = session_dir / "sentences" / "wav" / dialog.name
    seconds = []
    for turn in dialog.turns:
        samples = synthesize(turn)
        write_wav(wav_dir / f"{turn.id}.wav", samples)
        seconds.append(len(samples) / SR)
        progress.update()
    turn_spans, filler_spans = timeline(dialog, seconds)
    atomic_write_text(session_dir / "dialog" / "EmoEvaluation" / f"{dialog.name}.txt",
                      emo_evaluation_text(dialog, turn_spans, np.random.default_rng(dialog.seed)))
    atomic_write_text(session_dir / "dialog" / "transcriptions" / f"{dialog.name}.txt",
                      transcription_text(dialog, turn_spans, filler_spans))
    return [{"id": turn.id, "dialog": dialog.name, "session": dialog.session, "speaker": turn.speaker.name,
             "gender": turn.speaker.gender, "label": turn.label, "transcript": transcript(turn.tokens),
             "start": round(start, 4), "end": round(end, 4), "duration": length,
             "wav": str(wav_dir / f"{turn.id}.wav")}
            for turn, (start, end), length in zip(dialog.turns, turn_spans, seconds)]


def make_corpus(out_dir, per_session: int = 100, seed: int = 0, durations: str = "short",
                overwrite: bool = False) -> pd.DataFrame:
    """Write the corpus into out_dir (which plays IEMOCAP_full_release/) and return one row per
    utterance: id, dialog, session, speaker, gender, label, transcript, start, end, duration, wav."""
    if per_session < 1:
        raise ValueError(f"per_session must be at least 1, got {per_session}")
    if durations not in ("short", "iemocap"):
        raise ValueError(f"durations must be 'short' or 'iemocap', got {durations!r}")
    out_dir = Path(out_dir)
    settings = {"generator_version": GENERATOR_VERSION, "per_session": per_session, "seed": seed,
                "durations": durations}
    prepare_out_dir(out_dir, settings, overwrite)
    dialogs = plan_corpus(per_session, seed, durations)
    rows = []
    with tqdm(total=sum(len(d.turns) for d in dialogs), desc="synthesising", unit="utt") as progress:
        for dialog in dialogs:
            rows += write_dialog(out_dir, dialog, progress)
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame, out_dir, seconds: float) -> str:
    kept = table[table["label"].isin(KEPT_LABELS)]
    counts = ", ".join(f"{label} {n}" for label, n in kept["label"].value_counts().sort_index().items())
    return (f"wrote {len(table)} utterances ({len(kept)} in the 4-class set: {counts}; "
            f"{len(table) - len(kept)} to be filtered), {table['duration'].sum() / 60:.1f} min of audio, "
            f"{table['speaker'].nunique()} speakers, to {out_dir} in {seconds:.1f} s")

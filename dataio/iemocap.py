"""The IEMOCAP importer: `prepare` turns an IEMOCAP_full_release into the corpus table of the
4-class task, `iemocap.csv` + `audio/<FileName>.wav` (data_prep/iemocap_prep.py is its command line).
One file for the one release format: its pure parsers of the release's label and transcript files
and its thin layer that validates the whole release, copies (or links) the audio and writes the csv
last read the same layout. Each utterance keeps its label line's `[V, A, D]`, IEMOCAP's 1-5 means of
the annotators' valence, activation and dominance ratings, as given: columns valence, arousal,
dominance. Problem, ReleaseError and write_audio serve the EmoBox and MSP-Podcast importers too."""
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import soundfile as sf
from tqdm import tqdm

from dataio.audio import TARGET_SR, AudioError, audio_info, read_audio, write_wav
from utils.files import atomic_path, atomic_write_text
from dataio.labels import (KEPT_LABELS, REFERENCE_LABEL_COUNTS, REFERENCE_SESSION_COUNTS, REFERENCE_TOTAL,
                          utterance_fields)
from models.errors import MMERError

log = logging.getLogger(__name__)

COLUMNS = ["FileName", "Sentences", "Label", "valence", "arousal", "dominance", "text", "session", "speaker", "gender",
           "start", "end", "duration"]
CSV_NAME = "iemocap.csv"
SESSIONS = (1, 2, 3, 4, 5)
RESTORE = "restore it from the IEMOCAP_full_release archive"

# `[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`: [V, A, D] last
_NUMBER = r"\d+(?:\.\d+)?"
_LABEL_LINE = re.compile(
    rf"^\[(?P<start>{_NUMBER})\s*-\s*(?P<end>{_NUMBER})\]\s+(?P<utt>\S+)\s+(?P<label>\S+)\s+"
    rf"\[\s*(?P<valence>{_NUMBER})\s*,\s*(?P<arousal>{_NUMBER})\s*,\s*(?P<dominance>{_NUMBER})\s*\]\s*$")
# `Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.`; only the first `]:` ends the
# time stamp, so transcripts may hold brackets of their own (`[LAUGHTER]`).
_TRANSCRIPT_LINE = re.compile(r"^(?P<utt>\S+)\s+\[[^\]]*\]:\s*(?P<text>.*?)\s*$")
# `Ses01F_impro01_F000`: session digit at index 4, speaker gender just before the turn index.


@dataclass(frozen=True)
class Problem:
    """One defect of the release or the output folder, printed as one line."""
    path: Path | str
    what: str
    todo: str

    def __str__(self) -> str:
        return f"ERROR {self.path}: {self.what}; {self.todo}"


class ReleaseError(MMERError):
    """The release (or the output folder) cannot be prepared; holds every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


@dataclass(frozen=True)
class LabelRecord:
    utterance: str
    label: str
    start: float
    end: float
    valence: float    # the line's [V, A, D]: means of the annotators' 1-5 ratings
    arousal: float
    dominance: float


class Source(NamedTuple):
    """Where an output wav comes from, and whether it must be converted to 16 kHz mono PCM16."""
    name: str
    path: Path
    convert: bool


# ---------------------------------------------------------------- pure parsing


def parse_emo_evaluation(text: str) -> list[LabelRecord]:
    """Every utterance line of an EmoEvaluation file, all labels included. Header,
    annotator and blank lines are skipped; a malformed utterance line raises ValueError."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("["):
            continue
        match = _LABEL_LINE.match(line)
        if match is None:
            raise ValueError(f"line {number}: cannot read label line {line!r} "
                             "(expected '[start - end]<TAB>utterance<TAB>label<TAB>[v, a, d]')")
        records.append(LabelRecord(match["utt"], match["label"], float(match["start"]), float(match["end"]),
                                   float(match["valence"]), float(match["arousal"]), float(match["dominance"])))
    return records


def parse_transcriptions(text: str) -> dict[str, str]:
    """Utterance id -> transcript as written. Lines without an id and time stamp are
    skipped; the same id with two different transcripts raises ValueError."""
    transcripts: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _TRANSCRIPT_LINE.match(line)
        if match is None:
            continue
        utt, sentence = match["utt"], match["text"]
        if transcripts.get(utt, sentence) != sentence:
            raise ValueError(f"line {number}: second, different transcript for {utt}")
        transcripts[utt] = sentence
    return transcripts


def join_dialog(records: list[LabelRecord], transcripts: dict[str, str],
                label_file: str, transcript_file: str) -> tuple[list[dict], list[Problem]]:
    """csv rows (all columns but duration) for the 4-class utterances of one dialog,
    and a problem for each one whose id or transcript is unusable."""
    rows, problems = [], []
    for record in records:
        if record.label not in KEPT_LABELS:
            continue
        fields = utterance_fields(record.utterance)
        sentence = transcripts.get(record.utterance, "")
        if fields is None:
            problems.append(Problem(label_file, f"utterance id {record.utterance!r} is not like "
                                    "'Ses01F_impro01_F000'", RESTORE))
        elif not sentence:
            problems.append(Problem(transcript_file, f"no transcript for labelled utterance "
                                    f"{record.utterance}", RESTORE))
        else:
            rows.append({"FileName": record.utterance, "Sentences": sentence, "Label": record.label,
                         "valence": record.valence, "arousal": record.arousal, "dominance": record.dominance,
                         "text": sentence.upper(), **fields, "start": record.start, "end": record.end})
    return rows, problems


def count_differences(table: pd.DataFrame) -> list[str]:
    """One line per count (label, session, total) that differs from the real release's."""
    lines = []
    labels = table["Label"].value_counts()
    for label, expected in REFERENCE_LABEL_COUNTS.items():
        if labels.get(label, 0) != expected:
            lines.append(f"label {label}: {labels.get(label, 0)} (real release: {expected})")
    sessions = table["session"].value_counts()
    for session, expected in REFERENCE_SESSION_COUNTS.items():
        if sessions.get(session, 0) != expected:
            lines.append(f"session {session}: {sessions.get(session, 0)} (real release: {expected})")
    if len(table) != REFERENCE_TOTAL:
        lines.append(f"total: {len(table)} (real release: {REFERENCE_TOTAL})")
    return lines


def format_counts(table: pd.DataFrame) -> str:
    labels = table["Label"].value_counts()
    sessions = table["session"].value_counts()
    return "\n".join([
        "labels:   " + "  ".join(f"{name} {labels.get(name, 0)}" for name in REFERENCE_LABEL_COUNTS),
        "sessions: " + "  ".join(f"{s}: {sessions.get(s, 0)}" for s in REFERENCE_SESSION_COUNTS),
        f"total:    {len(table)}",
    ])


def boxed_warning(differences: list[str]) -> str:
    lines = ["WARNING: THE 4-CLASS COUNTS DIFFER FROM THE REAL IEMOCAP RELEASE'S", "",
             *(f"  {line}" for line in differences), "",
             "THIS IS EXPECTED FOR THE SYNTHETIC DEMO CORPUS.",
             "FOR THE REAL RELEASE IT MEANS AN INCOMPLETE OR MODIFIED COPY:",
             "RESULTS WILL NOT BE COMPARABLE WITH PUBLISHED ONES."]
    width = max(map(len, lines))
    border = "#" * (width + 4)
    return "\n".join([border, *(f"# {line.ljust(width)} #" for line in lines), border])


# ---------------------------------------------------------------- reading the release


def read_text(path: Path) -> str:
    """The release is ASCII; a file that is not UTF-8 is read anyway but named."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        log.warning("%s: not UTF-8, undecodable bytes are replaced by U+FFFD", path)
        return path.read_text(encoding="utf-8", errors="replace")


def visible_txt_files(folder: Path) -> list[Path]:
    # Top level only: EmoEvaluation also holds Categorical/, Attribute/... subfolders,
    # and copies made on macOS carry `._*.txt` resource forks.
    return sorted(p for p in folder.glob("*.txt") if p.is_file() and not p.name.startswith("."))


def session_dirs(root: Path, problems: list[Problem]) -> list[Path]:
    if not root.is_dir():
        problems.append(Problem(root, "no such folder", "pass the IEMOCAP_full_release folder as --iemocap_root"))
        return []
    found = [root / f"Session{s}" for s in SESSIONS if (root / f"Session{s}").is_dir()]
    if not found:
        nested = root / "IEMOCAP_full_release"
        hint = f"pass {nested} as --iemocap_root" if nested.is_dir() else "pass the IEMOCAP_full_release folder"
        problems.append(Problem(root, "holds none of the folders Session1..Session5", hint))
        return []
    for missing in sorted({root / f"Session{s}" for s in SESSIONS} - set(found)):
        problems.append(Problem(missing, "folder missing (the release holds Session1..Session5)", RESTORE))
    return found


def probe_wav(path: Path, record: LabelRecord, label_file: Path, problems: list[Problem]):
    """(duration in seconds, needs conversion) of a labelled wav, or None with a problem."""
    if not path.is_file():
        labelled = f"{label_file} labels {record.utterance} as {record.label}"
        problems.append(Problem(path, f"missing, but {labelled}", RESTORE))
        return None
    try:
        info = audio_info(path)
    except AudioError as err:
        problems.append(Problem(path, f"unreadable wav ({err.reason})", RESTORE))
        return None
    if info.frames == 0:
        problems.append(Problem(path, "the wav holds no samples", RESTORE))
        return None
    convert = (info.samplerate, info.channels, info.subtype, info.format) != (TARGET_SR, 1, "PCM_16", "WAV")
    return info.frames / info.samplerate, convert


def scan_dialog(label_file: Path, transcript_dir: Path, wav_dir: Path,
                rows: list[dict], sources: list[Source], problems: list[Problem]) -> None:
    try:
        records = parse_emo_evaluation(read_text(label_file))
    except ValueError as err:
        problems.append(Problem(label_file, str(err), RESTORE))
        return
    kept = [r for r in records if r.label in KEPT_LABELS]
    if not kept:
        return
    transcript_file = transcript_dir / label_file.name
    dialog_wavs = wav_dir / label_file.stem
    labelled = f"{label_file} labels {len(kept)} utterances"
    if not transcript_file.is_file():
        problems.append(Problem(transcript_file, f"missing, but {labelled}", RESTORE))
        return
    if not dialog_wavs.is_dir():
        problems.append(Problem(dialog_wavs, f"folder missing, but {labelled}", RESTORE))
        return
    try:
        transcripts = parse_transcriptions(read_text(transcript_file))
    except ValueError as err:
        problems.append(Problem(transcript_file, str(err), RESTORE))
        return
    joined, join_problems = join_dialog(kept, transcripts, str(label_file), str(transcript_file))
    problems.extend(join_problems)
    by_id = {r.utterance: r for r in kept}
    for row in joined:
        wav = dialog_wavs / f"{row['FileName']}.wav"
        probed = probe_wav(wav, by_id[row["FileName"]], label_file, problems)
        if probed is not None:
            rows.append({**row, "duration": round(probed[0], 6)})
            sources.append(Source(row["FileName"], wav, probed[1]))


def scan_session(session_dir: Path, rows: list[dict], sources: list[Source], problems: list[Problem]) -> None:
    label_dir = session_dir / "dialog" / "EmoEvaluation"
    transcript_dir = session_dir / "dialog" / "transcriptions"
    wav_dir = session_dir / "sentences" / "wav"
    missing = [d for d in (label_dir, transcript_dir, wav_dir) if not d.is_dir()]
    problems.extend(Problem(d, "folder missing", RESTORE) for d in missing)
    if missing:
        return
    label_files = visible_txt_files(label_dir)
    if not label_files:
        problems.append(Problem(label_dir, "holds no label files (<dialog>.txt)", RESTORE))
    # A dialog with a transcript but no label file would vanish silently from the csv.
    for orphan in sorted({p.name for p in visible_txt_files(transcript_dir)} - {p.name for p in label_files}):
        what = f"label file missing, but {transcript_dir / orphan} exists"
        problems.append(Problem(label_dir / orphan, what, RESTORE))
    for label_file in label_files:
        scan_dialog(label_file, transcript_dir, wav_dir, rows, sources, problems)


def scan_release(root) -> tuple[pd.DataFrame, list[Source]]:
    """The csv table and the audio sources of a release; raises ReleaseError listing
    every problem found, so one run shows the user all that needs fixing."""
    root = Path(root)
    rows: list[dict] = []
    sources: list[Source] = []
    problems: list[Problem] = []
    for session_dir in session_dirs(root, problems):
        scan_session(session_dir, rows, sources, problems)
    for name, n in Counter(row["FileName"] for row in rows).items():
        if n > 1:
            problems.append(Problem(root, f"utterance {name} is labelled {n} times", "keep one label line for it"))
    if not problems and not rows:
        problems.append(Problem(root, "no utterance labelled neu/hap/exc/ang/sad",
                                "check that this is IEMOCAP_full_release"))
    if problems:
        raise ReleaseError(problems)
    table = pd.DataFrame(rows, columns=COLUMNS).sort_values("FileName", ignore_index=True)
    return table, sorted(sources)


# ---------------------------------------------------------------- writing the output


def existing_audio_reusable(csv_path: Path, csv_text: str, overwrite: bool) -> bool:
    """Whether audio already in the output folder may be kept: yes for an identical
    rerun or a run that stopped before its csv; a different csv is refused unless
    --overwrite, which then rewrites all audio."""
    if not csv_path.exists() or csv_path.read_text() == csv_text:
        return True
    if not overwrite:
        raise ReleaseError([Problem(csv_path, "already holds a different csv (another release or a modified one)",
                                    "choose another --out_dir, or pass --overwrite to replace it")])
    log.warning("%s differs from this release's csv; --overwrite: rewriting it and all audio", csv_path)
    return False


def audio_done(source, dest: Path, link: bool) -> bool:
    """Whether dest already holds what this run would write: the same link, a copy of the same
    size, or a 16 kHz mono conversion of the source's duration (a cut segment's `seconds`
    where the source has them, as the EmoBox importer's do)."""
    if link and not source.convert:
        return dest.is_symlink() and os.readlink(dest) == str(source.path.absolute())
    if dest.is_symlink() or not dest.is_file():
        return False
    if not source.convert:
        return dest.stat().st_size == source.path.stat().st_size
    try:
        written = sf.info(str(dest))
        seconds = source.seconds if hasattr(source, "seconds") else sf.info(str(source.path)).duration
    except (sf.LibsndfileError, RuntimeError):
        return False
    return (written.samplerate, written.channels) == (TARGET_SR, 1) and abs(written.duration - seconds) < 1e-3


def place_audio(source: Source, dest: Path, link: bool, todo: str = RESTORE) -> None:
    """Convert, link or copy one wav; always under a temporary name, then renamed. todo: the fix
    named for a file that cannot be converted (the release's own)."""
    if source.convert:
        try:
            write_wav(dest, read_audio(source.path))
        except AudioError as err:
            # Only a body corrupt past a valid header gets here: the scan read every header.
            what = f"could not be converted to 16 kHz mono ({err.__cause__ or err})"
            raise ReleaseError([Problem(source.path, what, todo)]) from err
        return
    link_or_copy(source.path, dest, link)


def link_or_copy(path: Path, dest: Path, link: bool) -> None:
    """dest becomes a symlink to path, or a copy of it; under a temporary name, then renamed."""
    with atomic_path(dest, suffix=".wav") as tmp:
        if link:
            tmp.unlink()
            os.symlink(path.absolute(), tmp)
        else:
            shutil.copyfile(path, tmp)


def write_audio(sources: list, audio_dir: Path, link: bool, reuse: bool, place=place_audio, done=audio_done) -> None:
    """Every source's `<name>.wav` in audio_dir (with `reuse`, those already there as this run
    would write them are kept), by `place(source, dest, link)`; `done(source, dest, link)`
    says whether dest already holds it. Two phases, so bad input leaves the folder as it was:
    every file is first written into a staging folder beside them, and a source whose body
    cannot be decoded (a header can look sound over a truncated or corrupt body) is collected;
    then either all are moved into place or, naming every such file, none. The counts of what
    was done are logged."""
    created = not audio_dir.exists()
    audio_dir.mkdir(parents=True, exist_ok=True)
    staging = audio_dir / f".staging-{os.getpid()}"
    written, problems, staged = Counter(), [], []
    try:
        for source in tqdm(sources, desc="audio", unit="file"):
            dest = audio_dir / f"{source.name}.wav"
            if reuse and done(source, dest, link):
                written["already present"] += 1
                continue
            staging.mkdir(exist_ok=True)
            try:
                place(source, staging / dest.name, link)
            except ReleaseError as err:
                problems += err.problems
                continue
            staged.append(dest)
            written["converted to 16 kHz mono PCM16" if source.convert else "linked" if link else "copied"] += 1
        if problems:
            raise ReleaseError(problems)
        for dest in staged:
            os.replace(staging / dest.name, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and problems and not any(audio_dir.iterdir()):
            audio_dir.rmdir()
    log.info("audio in %s: %s", audio_dir, ", ".join(f"{n} {how}" for how, n in sorted(written.items())))


def report_counts(table: pd.DataFrame) -> None:
    log.info("4-class utterances:\n%s", format_counts(table))
    differences = count_differences(table)
    if differences:
        log.warning("\n%s", boxed_warning(differences))


def prepare(iemocap_root, out_dir, link: bool = False, overwrite: bool = False,
            augmented_text=None) -> pd.DataFrame:
    """Write out_dir/iemocap.csv and out_dir/audio/; return the csv's table. Raises
    ReleaseError (no csv written) if the release or the output folder is unusable.
    augmented_text: upstream's csv, whose AugmentedText column (back-translated transcripts,
    the 2023 MMER's text views) is kept for the utterances it names."""
    out_dir = Path(out_dir)
    table, sources = scan_release(iemocap_root)
    if augmented_text is not None:
        table = with_augmented_text(table, Path(augmented_text))
    report_counts(table)
    csv_text = table.to_csv(index=False)
    csv_path = out_dir / CSV_NAME
    reuse = existing_audio_reusable(csv_path, csv_text, overwrite)
    write_audio(sources, out_dir / "audio", link, reuse)
    # The csv goes last: its presence means the audio folder is complete.
    if csv_path.exists() and csv_path.read_text() == csv_text:
        log.info("%s already up to date (%d utterances)", csv_path, len(table))
    else:
        atomic_write_text(csv_path, csv_text)
        log.info("wrote %s (%d utterances)", csv_path, len(table))
    return table


def with_augmented_text(table: pd.DataFrame, csv: Path) -> pd.DataFrame:
    """The table with upstream's AugmentedText column (empty where upstream's csv has no row)."""
    if not csv.is_file():
        raise ReleaseError([Problem(str(csv), "not found", "pass upstream's 4-class csv (with AugmentedText)")])
    upstream = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if not {"FileName", "AugmentedText"} <= set(upstream.columns):
        raise ReleaseError([Problem(str(csv), f"no FileName and AugmentedText columns ({list(upstream.columns)})",
                                    "pass upstream's 4-class csv, which has them")])
    augmented = dict(zip(upstream["FileName"], upstream["AugmentedText"]))
    missing = int((~table["FileName"].isin(augmented)).sum())
    if missing:
        log.warning("%s: no AugmentedText for %d utterance(s); their cells stay empty", csv, missing)
    return table.assign(AugmentedText=table["FileName"].map(augmented).fillna(""))
